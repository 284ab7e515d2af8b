//! Memory layout of the split virtqueue rings (VIRTIO 1.x, 2.7 "Split Virtqueues").
//!
//! A split virtqueue has three areas, each of which may live anywhere in guest memory
//! (2.7.2 "Legacy Interfaces" aside):
//!
//! | area             | alignment | size in bytes      |
//! |------------------|-----------|--------------------|
//! | Descriptor Table | 16        | `16 * size`        |
//! | Available Ring   | 2         | `6 + 2 * size`     |
//! | Used Ring        | 4         | `6 + 8 * size`     |
//!
//! The `used_event` and `avail_event` trailers are always counted: they only matter with
//! `VIRTIO_F_EVENT_IDX`, but reserving them costs two bytes.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::MemoryError;

/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver asks the device not to interrupt (2.7.7).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VIRTQ_USED_F_NO_NOTIFY`: the device asks the driver not to kick (2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Required alignment of the Descriptor Table (2.7 "Split Virtqueues").
pub const DESC_TABLE_ALIGN: u64 = 16;
/// Required alignment of the Available Ring.
pub const AVAIL_RING_ALIGN: u64 = 2;
/// Required alignment of the Used Ring.
pub const USED_RING_ALIGN: u64 = 4;

/// Largest queue size a split virtqueue may have (2.7 "Split Virtqueues").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Size of one descriptor table entry (`struct virtq_desc`).
pub const DESC_SIZE: u64 = 16;

/// Header of `struct virtq_avail`: `flags` and `idx` (2.7.6).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VirtqAvailHeader {
    /// `VIRTQ_AVAIL_F_*` flags.
    pub flags: U16,
    /// Where the driver will put the next ring entry (modulo the queue size).
    pub idx: U16,
}

/// One entry of the avail ring: the head index of a descriptor chain (2.7.6).
pub type VirtqAvailElem = U16;

/// Header of `struct virtq_used`: `flags` and `idx` (2.7.8).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VirtqUsedHeader {
    /// `VIRTQ_USED_F_*` flags.
    pub flags: U16,
    /// Where the device will put the next ring entry (modulo the queue size).
    pub idx: U16,
}

/// `struct virtq_used_elem` (2.7.8).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VirtqUsedElem {
    /// Head index of the completed descriptor chain (`u32` for padding reasons).
    pub id: U32,
    /// Bytes written into the device-writable part of the chain.
    pub len: U32,
}

/// Byte offset of the avail `flags` field from the start of the avail ring.
pub const AVAIL_FLAGS_OFFSET: u64 = 0;
/// Byte offset of the avail `idx` field from the start of the avail ring.
pub const AVAIL_IDX_OFFSET: u64 = 2;
/// Byte offset of the used `flags` field from the start of the used ring.
pub const USED_FLAGS_OFFSET: u64 = 0;
/// Byte offset of the used `idx` field from the start of the used ring.
pub const USED_IDX_OFFSET: u64 = 2;

/// Byte size of a Descriptor Table for `size` entries.
pub const fn desc_table_size(size: u16) -> u64 {
    DESC_SIZE * size as u64
}

/// Byte size of an Available Ring for `size` entries, `used_event` included.
pub const fn avail_ring_size(size: u16) -> u64 {
    4 + 2 * size as u64 + 2
}

/// Byte size of a Used Ring for `size` entries, `avail_event` included.
pub const fn used_ring_size(size: u16) -> u64 {
    4 + 8 * size as u64 + 2
}

/// Byte offset of avail `ring[slot]` from the start of the avail ring.
pub const fn avail_elem_offset(slot: u16) -> u64 {
    4 + 2 * slot as u64
}

/// Byte offset of `used_event` from the start of the avail ring (2.7.10).
pub const fn used_event_offset(size: u16) -> u64 {
    avail_elem_offset(size)
}

/// Byte offset of used `ring[slot]` from the start of the used ring.
pub const fn used_elem_offset(slot: u16) -> u64 {
    4 + 8 * slot as u64
}

/// Byte offset of `avail_event` from the start of the used ring (2.7.10).
pub const fn avail_event_offset(size: u16) -> u64 {
    used_elem_offset(size)
}

/// Address of a field `offset` bytes into an area at `base`, failing instead of wrapping
/// (ring addresses come from the driver and may be anything).
pub fn field_addr(base: u64, offset: u64) -> Result<u64, MemoryError> {
    base.checked_add(offset).ok_or(MemoryError {
        addr: base,
        len: offset,
    })
}

/// Guest physical addresses of the three areas of one split virtqueue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingAddresses {
    /// Start of the Descriptor Table (`queue_desc` in virtio-pci).
    pub desc_table: u64,
    /// Start of the Available Ring (`queue_driver` in virtio-pci).
    pub avail_ring: u64,
    /// Start of the Used Ring (`queue_device` in virtio-pci).
    pub used_ring: u64,
}

/// Offsets of the three areas when they are packed into one allocation, for drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Queue size the layout is for.
    pub size: u16,
    /// Offset of the Descriptor Table (always 0).
    pub desc_table: u64,
    /// Offset of the Available Ring.
    pub avail_ring: u64,
    /// Offset of the Used Ring (4-aligned).
    pub used_ring: u64,
    /// Total bytes needed, starting at a 16-aligned base.
    pub total_size: u64,
}

impl RingLayout {
    /// Packs the areas of a queue of `size` entries: desc table, then avail ring, then the
    /// used ring rounded up to its alignment. `None` if `size` is zero, not a power of two or
    /// above [`MAX_QUEUE_SIZE`].
    pub const fn new(size: u16) -> Option<Self> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return None;
        }
        let avail_ring = desc_table_size(size);
        let avail_end = avail_ring + avail_ring_size(size);
        let used_ring = avail_end.next_multiple_of(USED_RING_ALIGN);
        Some(RingLayout {
            size,
            desc_table: 0,
            avail_ring,
            used_ring,
            total_size: used_ring + used_ring_size(size),
        })
    }

    /// Addresses of the areas for an allocation starting at `base`, unchecked.
    ///
    /// `base` must be 16-aligned (the Descriptor Table's alignment) and `base + total_size`
    /// must not overflow; neither is checked here, so a misaligned base yields addresses that
    /// only [`Queue::is_valid`](crate::Queue::is_valid) rejects, when the device is
    /// configured. [`RingLayout::checked_addresses`] refuses such a base up front. This one
    /// stays unchecked because it is `const` and its callers place rings at constant,
    /// aligned addresses.
    pub const fn addresses(&self, base: u64) -> RingAddresses {
        RingAddresses {
            desc_table: base + self.desc_table,
            avail_ring: base + self.avail_ring,
            used_ring: base + self.used_ring,
        }
    }

    /// [`RingLayout::addresses`], or `None` if `base` is not 16-aligned or the rings would
    /// run past the end of the address space.
    pub const fn checked_addresses(&self, base: u64) -> Option<RingAddresses> {
        if base % DESC_TABLE_ALIGN != 0 {
            return None;
        }
        match base.checked_add(self.total_size) {
            Some(_) => Some(self.addresses(base)),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_spec() {
        assert_eq!(size_of::<VirtqAvailHeader>(), 4);
        assert_eq!(size_of::<VirtqUsedHeader>(), 4);
        assert_eq!(size_of::<VirtqUsedElem>(), 8);
        assert_eq!(size_of::<crate::descriptor::VirtqDesc>() as u64, DESC_SIZE);
    }

    #[test]
    fn layout_of_256_entries() {
        let l = RingLayout::new(256).unwrap();
        assert_eq!(l.avail_ring, 4096);
        assert_eq!(l.used_ring, 4096 + 6 + 512 + 2);
        assert_eq!(l.used_ring % USED_RING_ALIGN, 0);
        assert_eq!(l.total_size, l.used_ring + 6 + 8 * 256);
        assert_eq!(used_event_offset(256), 4 + 512);
        assert_eq!(avail_event_offset(256), 4 + 2048);
    }

    #[test]
    fn checked_addresses_refuse_misaligned_or_wrapping_bases() {
        let l = RingLayout::new(16).unwrap();
        assert_eq!(l.checked_addresses(0x1000), Some(l.addresses(0x1000)));
        assert_eq!(l.checked_addresses(0x1008), None);
        assert_eq!(l.checked_addresses(u64::MAX - 15), None);
        let last = (u64::MAX - l.total_size) / 16 * 16;
        assert_eq!(l.checked_addresses(last), Some(l.addresses(last)));
    }

    #[test]
    fn layout_rejects_bad_sizes() {
        assert!(RingLayout::new(0).is_none());
        assert!(RingLayout::new(3).is_none());
        assert!(RingLayout::new(1).is_some());
        assert!(RingLayout::new(32768).is_some());
    }
}
