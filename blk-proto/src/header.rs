//! The request header `struct virtio_blk_outhdr` (VIRTIO 1.x, 5.2.6 "Device Operation").

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::request_type::RequestType;

/// Size of [`OutHdr`] in bytes: the first 16 device-readable bytes of every request.
pub const VIRTIO_BLK_OUTHDR_SIZE: usize = 16;

/// Size of a sector: the unit of `sector`, `capacity` and data lengths, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;

/// `struct virtio_blk_outhdr`: `type`, `reserved` (`ioprio` in Linux) and `sector`, little-endian.
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
pub struct OutHdr {
    /// `VIRTIO_BLK_T_*` request type.
    pub type_: U32,
    /// `reserved`; Linux puts an I/O priority here. Ignored by the device.
    pub ioprio: U32,
    /// First sector (512-byte units) of a read or write; 0 for other types.
    pub sector: U64,
}

impl OutHdr {
    /// A header for a request of type `request_type` at `sector`.
    pub fn new(request_type: RequestType, sector: u64) -> Self {
        OutHdr {
            type_: request_type.raw().into(),
            ioprio: 0.into(),
            sector: sector.into(),
        }
    }

    /// A `VIRTIO_BLK_T_IN` (read) header.
    pub fn read(sector: u64) -> Self {
        Self::new(RequestType::In, sector)
    }

    /// A `VIRTIO_BLK_T_OUT` (write) header.
    pub fn write(sector: u64) -> Self {
        Self::new(RequestType::Out, sector)
    }

    /// A `VIRTIO_BLK_T_FLUSH` header (sector 0, as 5.2.6.1 requires of the driver).
    pub fn flush() -> Self {
        Self::new(RequestType::Flush, 0)
    }

    /// A `VIRTIO_BLK_T_GET_ID` header.
    pub fn get_id() -> Self {
        Self::new(RequestType::GetId, 0)
    }

    /// A `VIRTIO_BLK_T_DISCARD` header; the ranges follow as segments.
    pub fn discard() -> Self {
        Self::new(RequestType::Discard, 0)
    }

    /// A `VIRTIO_BLK_T_WRITE_ZEROES` header; the ranges follow as segments.
    pub fn write_zeroes() -> Self {
        Self::new(RequestType::WriteZeroes, 0)
    }

    /// The decoded request type.
    pub fn request_type(&self) -> RequestType {
        RequestType::from_raw(self.type_.get())
    }

    /// The header as the 16 bytes the driver places in the first readable buffer.
    pub fn to_bytes(&self) -> [u8; VIRTIO_BLK_OUTHDR_SIZE] {
        let mut out = [0; VIRTIO_BLK_OUTHDR_SIZE];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// Decodes the 16 header bytes.
    pub fn from_array(bytes: [u8; VIRTIO_BLK_OUTHDR_SIZE]) -> Self {
        zerocopy::transmute!(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_spec_one() {
        assert_eq!(core::mem::size_of::<OutHdr>(), VIRTIO_BLK_OUTHDR_SIZE);
        let bytes = OutHdr::write(0x0102_0304_0506_0708).to_bytes();
        assert_eq!(bytes, [1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(OutHdr::from_array(bytes).request_type(), RequestType::Out);
        assert_eq!(
            OutHdr::from_array(bytes).sector.get(),
            0x0102_0304_0506_0708
        );
    }
}
