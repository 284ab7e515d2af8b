//! The pieces a request's payload is made of, and how many a request holds: data buffers
//! ([`DataSegment`]) and discard / write-zeroes ranges, `struct virtio_blk_discard_write_zeroes`
//! (VIRTIO 1.x, 5.2.6 "Device Operation").

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Most data buffers a [`Request`](crate::Request) holds; `seg_max` above this acts as this.
pub const MAX_SEGMENTS: usize = 256;

/// Most discard / write-zeroes ranges a [`Request`](crate::Request) holds. Linux asks for at
/// most `max_discard_seg` and defaults to 1; 16 keeps a request small while letting a driver
/// batch. Offer `max_discard_seg` / `max_write_zeroes_seg` no larger than this.
pub const MAX_DISCARD_SEGMENTS: usize = 16;

/// One guest buffer of a request's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataSegment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes (never 0 in a parsed request).
    pub len: u32,
}

/// The `unmap` flag: on write-zeroes, the device may deallocate the range. Must be clear on discard.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Size of one [`DiscardWriteZeroes`] segment in bytes.
pub const VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE: usize = 16;

/// `struct virtio_blk_discard_write_zeroes` as it lies in the request's data, little-endian.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct DiscardWriteZeroes {
    /// First sector of the range.
    pub sector: U64,
    /// Number of sectors in the range.
    pub num_sectors: U32,
    /// Bit 0 is `unmap`; bits 1..31 are reserved.
    pub flags: U32,
}

impl DiscardWriteZeroes {
    /// A segment covering `num_sectors` sectors from `sector`, with `unmap` as given.
    pub fn new(sector: u64, num_sectors: u32, unmap: bool) -> Self {
        let flags = if unmap {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        DiscardWriteZeroes {
            sector: sector.into(),
            num_sectors: num_sectors.into(),
            flags: flags.into(),
        }
    }

    /// The segment as the 16 bytes the driver writes.
    pub fn to_bytes(&self) -> [u8; VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE] {
        zerocopy::transmute!(*self)
    }

    /// Decodes 16 segment bytes.
    pub fn from_array(bytes: [u8; VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE]) -> Self {
        zerocopy::transmute!(bytes)
    }
}

/// One validated discard or write-zeroes range, decoded by the request parser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardRange {
    /// First sector of the range.
    pub sector: u64,
    /// Number of sectors in the range; `sector + num_sectors <= capacity`.
    pub num_sectors: u32,
    /// Whether the driver allowed deallocation (write-zeroes only; always false for discard).
    pub unmap: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_spec_one() {
        assert_eq!(
            core::mem::size_of::<DiscardWriteZeroes>(),
            VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE
        );
        let bytes = DiscardWriteZeroes::new(0x1122, 0x33, true).to_bytes();
        assert_eq!(
            bytes,
            [0x22, 0x11, 0, 0, 0, 0, 0, 0, 0x33, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            DiscardWriteZeroes::from_array(bytes).num_sectors.get(),
            0x33
        );
    }

    #[test]
    fn matches_linux_headers() {
        use virtio_bindings::virtio_blk as b;
        assert_eq!(
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            b::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        );
        assert_eq!(
            core::mem::size_of::<b::virtio_blk_discard_write_zeroes>(),
            VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE
        );
    }
}
