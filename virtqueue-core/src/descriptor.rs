//! The descriptor table entry (VIRTIO 1.x, 2.7.5 "The Virtqueue Descriptor Table").

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VIRTQ_DESC_F_NEXT`: the buffer continues via the `next` field.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the buffer is device write-only (otherwise device read-only).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer contains a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;

/// `struct virtq_desc` exactly as it lies in memory (16 bytes, little-endian).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VirtqDesc {
    /// Guest physical address of the buffer.
    pub addr: U64,
    /// Length of the buffer in bytes.
    pub len: U32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: U16,
    /// Index of the next descriptor when `VIRTQ_DESC_F_NEXT` is set.
    pub next: U16,
}

/// A descriptor decoded into native integers: one buffer of a chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor when `VIRTQ_DESC_F_NEXT` is set.
    pub next: u16,
}

impl Descriptor {
    /// Whether the buffer is device-writable: `VIRTQ_DESC_F_WRITE`, which the spec calls
    /// "device write-only" (the device writes it, the driver reads it). Otherwise the buffer
    /// is device-readable.
    #[doc(alias = "is_write_only")]
    #[doc(alias = "VIRTQ_DESC_F_WRITE")]
    pub fn is_device_writable(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }

    /// Whether the chain continues (`VIRTQ_DESC_F_NEXT`).
    pub fn has_next(&self) -> bool {
        self.flags & VIRTQ_DESC_F_NEXT != 0
    }

    /// Whether this descriptor points at an indirect table (`VIRTQ_DESC_F_INDIRECT`).
    pub fn is_indirect(&self) -> bool {
        self.flags & VIRTQ_DESC_F_INDIRECT != 0
    }
}

impl From<VirtqDesc> for Descriptor {
    fn from(d: VirtqDesc) -> Self {
        Descriptor {
            addr: d.addr.get(),
            len: d.len.get(),
            flags: d.flags.get(),
            next: d.next.get(),
        }
    }
}

impl From<Descriptor> for VirtqDesc {
    fn from(d: Descriptor) -> Self {
        VirtqDesc {
            addr: d.addr.into(),
            len: d.len.into(),
            flags: d.flags.into(),
            next: d.next.into(),
        }
    }
}
