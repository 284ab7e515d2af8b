//! Request types (VIRTIO 1.x, 5.2.6 "Device Operation").

use core::fmt;

/// `VIRTIO_BLK_T_IN`: read sectors into the driver's buffers.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write the driver's buffers to sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`: commit volatile writes to stable storage.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`: fetch the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`: deallocate ranges of sectors.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`: zero ranges of sectors.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// The `type` field of a request header, decoded.
///
/// Types this crate does not implement (GET_LIFETIME, SECURE_ERASE, zoned commands, legacy
/// SCSI and barriers) decode to [`RequestType::Unsupported`]; the device answers them with
/// `VIRTIO_BLK_S_UNSUPP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestType {
    /// [`VIRTIO_BLK_T_IN`].
    In,
    /// [`VIRTIO_BLK_T_OUT`].
    Out,
    /// [`VIRTIO_BLK_T_FLUSH`].
    Flush,
    /// [`VIRTIO_BLK_T_GET_ID`].
    GetId,
    /// [`VIRTIO_BLK_T_DISCARD`].
    Discard,
    /// [`VIRTIO_BLK_T_WRITE_ZEROES`].
    WriteZeroes,
    /// Any other value of the `type` field.
    Unsupported(u32),
}

impl RequestType {
    /// The value of the header's `type` field for this request type.
    pub const fn raw(self) -> u32 {
        match self {
            RequestType::In => VIRTIO_BLK_T_IN,
            RequestType::Out => VIRTIO_BLK_T_OUT,
            RequestType::Flush => VIRTIO_BLK_T_FLUSH,
            RequestType::GetId => VIRTIO_BLK_T_GET_ID,
            RequestType::Discard => VIRTIO_BLK_T_DISCARD,
            RequestType::WriteZeroes => VIRTIO_BLK_T_WRITE_ZEROES,
            RequestType::Unsupported(raw) => raw,
        }
    }

    /// Decodes a header's `type` field.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }

    /// Whether the request modifies the disk (refused with IOERR on a read-only device,
    /// 5.2.6.2 "Device Requirements: Device Operation").
    pub const fn is_write(self) -> bool {
        matches!(
            self,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        )
    }
}

impl From<u32> for RequestType {
    fn from(raw: u32) -> Self {
        RequestType::from_raw(raw)
    }
}

impl From<RequestType> for u32 {
    fn from(t: RequestType) -> Self {
        t.raw()
    }
}

impl fmt::Display for RequestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestType::In => f.write_str("VIRTIO_BLK_T_IN"),
            RequestType::Out => f.write_str("VIRTIO_BLK_T_OUT"),
            RequestType::Flush => f.write_str("VIRTIO_BLK_T_FLUSH"),
            RequestType::GetId => f.write_str("VIRTIO_BLK_T_GET_ID"),
            RequestType::Discard => f.write_str("VIRTIO_BLK_T_DISCARD"),
            RequestType::WriteZeroes => f.write_str("VIRTIO_BLK_T_WRITE_ZEROES"),
            RequestType::Unsupported(raw) => write!(f, "unsupported request type {raw}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trips() {
        for raw in 0..64 {
            assert_eq!(RequestType::from_raw(raw).raw(), raw);
        }
        assert_eq!(
            RequestType::from(u32::MAX),
            RequestType::Unsupported(u32::MAX)
        );
    }

    #[test]
    fn matches_linux_headers() {
        use virtio_bindings::virtio_blk as b;
        assert_eq!(VIRTIO_BLK_T_IN, b::VIRTIO_BLK_T_IN);
        assert_eq!(VIRTIO_BLK_T_OUT, b::VIRTIO_BLK_T_OUT);
        assert_eq!(VIRTIO_BLK_T_FLUSH, b::VIRTIO_BLK_T_FLUSH);
        assert_eq!(VIRTIO_BLK_T_GET_ID, b::VIRTIO_BLK_T_GET_ID);
        assert_eq!(VIRTIO_BLK_T_DISCARD, b::VIRTIO_BLK_T_DISCARD);
        assert_eq!(VIRTIO_BLK_T_WRITE_ZEROES, b::VIRTIO_BLK_T_WRITE_ZEROES);
        // Types the spec defines but we answer with UNSUPP.
        for raw in [
            b::VIRTIO_BLK_T_SECURE_ERASE,
            b::VIRTIO_BLK_T_ZONE_APPEND,
            b::VIRTIO_BLK_T_SCSI_CMD,
        ] {
            assert_eq!(RequestType::from_raw(raw), RequestType::Unsupported(raw));
        }
    }
}
