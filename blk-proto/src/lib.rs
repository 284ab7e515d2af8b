#![doc = include_str!("../README.md")]
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod error;
pub mod features;
mod framing;
pub mod header;
pub mod id;
mod inline_vec;
pub mod limits;
pub mod request;
pub mod request_type;
pub mod segment;
pub mod status;

pub use config::VirtioBlkConfig;
pub use error::{ParseError, ParseErrorKind};
pub use features::{validate_ack, FeatureError, Features};
pub use header::{OutHdr, SECTOR_SIZE, VIRTIO_BLK_OUTHDR_SIZE};
pub use id::{check_id_response, encode_id, IdError, VIRTIO_BLK_ID_BYTES};
pub use limits::DeviceLimits;
pub use request::{parse_request, Request};
pub use request_type::RequestType;
pub use segment::{
    DataSegment, DiscardRange, DiscardWriteZeroes, MAX_DISCARD_SEGMENTS, MAX_SEGMENTS,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
pub use status::{Status, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
