//! Notification suppression with `VIRTIO_F_EVENT_IDX` (VIRTIO 1.x, 2.7.7 and 2.7.10).

/// `vring_need_event`: whether moving an index from `old_idx` to `new_idx` crossed
/// `event_idx`, i.e. whether `event_idx` is one of `old_idx, old_idx + 1, .., new_idx - 1`
/// in wrapping 16-bit arithmetic.
///
/// Both sides use it: the device with `used_event` and the used `idx` it published since
/// its last notification, the driver with `avail_event` and the avail `idx`.
///
/// ```
/// use virtqueue_core::event::vring_need_event;
/// assert!(vring_need_event(0, 1, 0));
/// assert!(!vring_need_event(1, 1, 0));
/// assert!(vring_need_event(65535, 2, 65534)); // wraps
/// ```
pub const fn vring_need_event(event_idx: u16, new_idx: u16, old_idx: u16) -> bool {
    new_idx.wrapping_sub(event_idx).wrapping_sub(1) < new_idx.wrapping_sub(old_idx)
}
