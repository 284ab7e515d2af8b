//! Events: what a guest access did that the owner of the function may have to act on.
//!
//! The crate owns no threads, eventfds or interrupt lines. Every guest access returns an
//! [`Events`] list instead, and the owner (a VMM) reacts: moves an ioeventfd when a BAR is
//! reprogrammed, builds its virtqueues on [`Event::DriverOk`], injects an interrupt on
//! [`Event::MsixPendingDelivered`], and so on.

use crate::msi::{MsixMessage, MAX_MSIX_VECTORS};

/// One thing that happened because of a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The PCI command register changed (memory space / bus master / INTx disable).
    CommandChanged {
        /// Value before the write.
        old: u16,
        /// Value after the write.
        new: u16,
    },
    /// The address a BAR decodes at changed. Reported only while memory space decoding is
    /// enabled: moves made with decoding off (BAR sizing, a driver updating both halves of a
    /// 64-bit BAR) are reported once, with the final address, when decoding is turned on.
    /// A guest that rewrites a 64-bit BAR with decoding on produces one event per half.
    BarReprogrammed {
        /// BAR index (the low index of a 64-bit pair).
        index: u8,
        /// Decoded address before the write.
        old_addr: u64,
        /// Decoded address after the write.
        new_addr: u64,
    },
    /// The MSI-X enable or function-mask bit changed.
    MsixEnableChanged {
        /// MSI-X Enable bit after the write.
        enabled: bool,
        /// Function Mask bit after the write.
        function_masked: bool,
    },
    /// An MSI-X table entry (address, data or mask bit) changed.
    MsixEntryChanged(u16),
    /// A pending MSI-X message became deliverable (the vector or the function was unmasked);
    /// its pending bit has been cleared and the owner must now send `message`.
    MsixPendingDelivered {
        /// The vector whose message is to be sent.
        vector: u16,
        /// What to send.
        message: MsixMessage,
    },
    /// `device_status` changed (not emitted for a write that leaves it unchanged).
    StatusChanged {
        /// Status before the write.
        old: u8,
        /// Status after the write.
        new: u8,
    },
    /// The driver set FEATURES_OK and the device accepted these driver features.
    FeaturesAccepted(u64),
    /// The driver set DRIVER_OK: the device is live (VIRTIO 1.x, 3.1 "Device Initialization").
    DriverOk,
    /// The driver wrote 0 to `device_status`: the device has been reset.
    Reset,
    /// The driver wrote 1 to `queue_enable` for this queue.
    QueueEnabled(u16),
    /// The driver reset one queue through `queue_reset` (VIRTIO_F_RING_RESET).
    QueueReset(u16),
    /// The driver changed `queue_msix_vector` of a queue.
    QueueMsixVectorChanged {
        /// The queue.
        queue: u16,
        /// The vector now mapped (`VIRTIO_MSI_NO_VECTOR` if unmapped or rejected).
        vector: u16,
    },
    /// The driver changed `config_msix_vector` (the value now mapped).
    ConfigMsixVectorChanged(u16),
    /// The driver wrote the notification address of this queue (an MMIO exit, no ioeventfd).
    QueueNotify(u16),
    /// The driver wrote to the device-specific configuration; the write was not applied, the
    /// owner decides what it means (e.g. virtio-blk `writeback`).
    DeviceConfigWritten {
        /// Offset inside the device-specific configuration.
        offset: u32,
        /// Access width in bytes (1, 2 or 4).
        len: u8,
        /// The value written, little-endian, zero-extended.
        value: u32,
    },
}

/// How many events one guest access can produce at most: a handful of ordinary events plus one
/// [`Event::MsixPendingDelivered`] per MSI-X vector (clearing the function mask releases all).
pub const EVENTS_CAPACITY: usize = 8 + MAX_MSIX_VECTORS;

/// A fixed-capacity list of [`Event`]s (no allocation).
#[derive(Clone, Debug)]
pub struct Events {
    buf: [Event; EVENTS_CAPACITY],
    len: usize,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Events {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Events {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            buf: [Event::Reset; EVENTS_CAPACITY],
            len: 0,
        }
    }

    /// Appends an event. The capacity covers every access this crate handles; should it ever be
    /// exceeded, the event is dropped rather than panicking (and a debug build asserts).
    pub fn push(&mut self, event: Event) {
        debug_assert!(self.len < EVENTS_CAPACITY, "event list overflow");
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = event;
            self.len += 1;
        }
    }

    /// Appends all events of `other`.
    pub fn extend_from(&mut self, other: &Events) {
        for e in other {
            self.push(*e);
        }
    }

    /// The events, oldest first.
    pub fn as_slice(&self) -> &[Event] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Iterates over the events, oldest first.
    pub fn iter(&self) -> core::slice::Iter<'_, Event> {
        self.as_slice().iter()
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `event` is in the list.
    pub fn contains(&self, event: &Event) -> bool {
        self.as_slice().contains(event)
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = core::slice::Iter<'a, Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
