//! Why a request chain was rejected, and which status the device answers with.

use core::fmt;

use virtqueue_core::MemoryError;

use crate::request_type::RequestType;
use crate::status::Status;

/// The rule of 5.2.6 (or of 2.7.4.2 framing) a request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The chain has no non-empty device-writable buffer, so there is no status byte.
    NoStatusByte,
    /// The buffer holding the status byte lies outside guest memory.
    StatusNotInMemory {
        /// Address of the would-be status byte.
        addr: u64,
    },
    /// A device-readable buffer follows a device-writable one (2.7.4.2: the driver MUST
    /// place writable buffers after readable ones).
    ReadableAfterWritable,
    /// A buffer lies outside guest memory.
    BufferNotInMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// Fewer than 16 device-readable bytes: no complete `virtio_blk_outhdr`.
    HeaderTooShort {
        /// Readable bytes in the chain.
        len: u64,
    },
    /// Guest memory could not be read.
    Memory(MemoryError),
    /// The `type` field is not one this device implements.
    UnsupportedType(u32),
    /// FLUSH, DISCARD or WRITE_ZEROES without its feature negotiated.
    FeatureNotNegotiated(RequestType),
    /// A write (OUT, DISCARD, WRITE_ZEROES) to a read-only device.
    ReadOnly,
    /// Device-readable data where the request type allows none.
    UnexpectedReadableData {
        /// Readable bytes after the header.
        len: u64,
    },
    /// Device-writable data (besides the status byte) where the request type allows none.
    UnexpectedWritableData {
        /// Writable bytes before the status byte.
        len: u64,
    },
    /// IN/OUT data is not a multiple of 512 bytes.
    DataNotSectorMultiple {
        /// Data length.
        len: u64,
    },
    /// The data is longer than `u32::MAX` bytes (the used ring could not report it).
    DataTooLong {
        /// Data length.
        len: u64,
    },
    /// More data buffers than `seg_max` (or [`crate::MAX_SEGMENTS`]).
    TooManySegments {
        /// The limit that was exceeded.
        max: u32,
    },
    /// The sectors touched run past `capacity` (or overflow).
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        num_sectors: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// GET_ID with fewer than 20 writable data bytes.
    IdBufferTooShort {
        /// Writable data bytes.
        len: u64,
    },
    /// DISCARD/WRITE_ZEROES data is empty or not a multiple of 16 bytes.
    BadSegmentData {
        /// Data length.
        len: u64,
    },
    /// More DISCARD/WRITE_ZEROES segments than `max_discard_seg` / `max_write_zeroes_seg`
    /// (or [`crate::MAX_DISCARD_SEGMENTS`]).
    TooManyDiscardSegments {
        /// Segments in the request.
        count: u64,
        /// The limit that was exceeded.
        max: u32,
    },
    /// A segment sets reserved flag bits.
    UnknownSegmentFlags {
        /// The segment's `flags`.
        flags: u32,
    },
    /// A DISCARD segment sets `unmap`.
    UnmapOnDiscard,
    /// A segment covers more than `max_discard_sectors` / `max_write_zeroes_sectors`.
    TooManySectors {
        /// The segment's `num_sectors`.
        num_sectors: u32,
        /// The limit.
        max: u32,
    },
}

impl ParseErrorKind {
    /// The status the device answers with: UNSUPP for requests it does not support
    /// (unknown types, features not negotiated, and the flag rules of 5.2.6.2), IOERR for
    /// everything else ("device or driver error").
    pub const fn status(self) -> Status {
        match self {
            ParseErrorKind::UnsupportedType(_)
            | ParseErrorKind::FeatureNotNegotiated(_)
            | ParseErrorKind::UnknownSegmentFlags { .. }
            | ParseErrorKind::UnmapOnDiscard => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParseErrorKind as K;
        match *self {
            K::NoStatusByte => f.write_str("no device-writable byte for the status"),
            K::StatusNotInMemory { addr } => {
                write!(f, "status byte at {addr:#x} is outside guest memory")
            }
            K::ReadableAfterWritable => {
                f.write_str("device-readable buffer after a device-writable one")
            }
            K::BufferNotInMemory { addr, len } => write!(
                f,
                "buffer of {len} bytes at {addr:#x} is outside guest memory"
            ),
            K::HeaderTooShort { len } => {
                write!(f, "only {len} device-readable bytes, the header needs 16")
            }
            K::Memory(e) => write!(f, "{e}"),
            K::UnsupportedType(t) => write!(f, "unsupported request type {t}"),
            K::FeatureNotNegotiated(t) => write!(f, "{t} without its feature negotiated"),
            K::ReadOnly => f.write_str("write to a read-only device"),
            K::UnexpectedReadableData { len } => {
                write!(f, "{len} unexpected device-readable data bytes")
            }
            K::UnexpectedWritableData { len } => {
                write!(f, "{len} unexpected device-writable data bytes")
            }
            K::DataNotSectorMultiple { len } => {
                write!(f, "data length {len} is not a multiple of 512")
            }
            K::DataTooLong { len } => write!(f, "data length {len} does not fit in 32 bits"),
            K::TooManySegments { max } => write!(f, "more than {max} data buffers"),
            K::OutOfRange {
                sector,
                num_sectors,
                capacity,
            } => {
                write!(
                    f,
                    "{num_sectors} sectors at {sector} exceed the capacity of {capacity} sectors"
                )
            }
            K::IdBufferTooShort { len } => write!(f, "GET_ID buffer of {len} bytes, 20 needed"),
            K::BadSegmentData { len } => write!(
                f,
                "segment data of {len} bytes is not a non-zero multiple of 16"
            ),
            K::TooManyDiscardSegments { count, max } => {
                write!(f, "{count} segments, at most {max} allowed")
            }
            K::UnknownSegmentFlags { flags } => {
                write!(f, "segment flags {flags:#x} set reserved bits")
            }
            K::UnmapOnDiscard => f.write_str("unmap flag set on a discard segment"),
            K::TooManySectors { num_sectors, max } => {
                write!(f, "segment of {num_sectors} sectors, at most {max} allowed")
            }
        }
    }
}

/// A rejected request: the rule it broke and where its status byte is, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    kind: ParseErrorKind,
    status_addr: Option<u64>,
}

impl ParseError {
    pub(crate) const fn new(kind: ParseErrorKind, status_addr: Option<u64>) -> Self {
        ParseError { kind, status_addr }
    }

    /// The rule the request broke.
    pub const fn kind(&self) -> ParseErrorKind {
        self.kind
    }

    /// Guest address of the status byte, when the chain has a usable one.
    pub const fn status_addr(&self) -> Option<u64> {
        self.status_addr
    }

    /// The status byte to write at [`Self::status_addr`]; `None` when there is nowhere to
    /// write it (the caller then returns the chain with used length 0).
    pub const fn status(&self) -> Option<u8> {
        match self.status_addr {
            Some(_) => Some(self.kind.status().raw()),
            None => None,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid virtio-blk request: {}", self.kind)
    }
}

impl core::error::Error for ParseError {}
