//! The virtio-blk protocol (VIRTIO 1.x, 5.2 "Block Device"), `no_std`, no allocation.
//!
//! - [`header`]: `struct virtio_blk_outhdr`; [`request_type`]: `VIRTIO_BLK_T_*`;
//!   [`status`]: `VIRTIO_BLK_S_*`; [`segment`]: data buffers and discard / write-zeroes ranges;
//!   [`id`]: the GET_ID string.
//! - [`config`]: `struct virtio_blk_config`; [`features`]: feature bits and the ack check.
//! - [`request`]: [`parse_request`], the device side, turning a descriptor chain into a
//!   validated [`Request`] or a [`ParseError`] that says which status to answer with.
//!
//! # Example
//!
//! A driver places a one-sector read in guest memory as three buffers (header, data, status);
//! the device parses it.
//!
//! ```
//! use blk_proto::{parse_request, DeviceLimits, OutHdr, RequestType, Status};
//! use virtqueue_core::descriptor::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
//! use virtqueue_core::{Descriptor, GuestMemory, SliceMemory};
//!
//! let mut bytes = vec![0u8; 4096];
//! let mem = SliceMemory::new(&mut bytes);
//! mem.write(0x100, &OutHdr::read(7).to_bytes()).unwrap();
//! let chain = [
//!     Descriptor { addr: 0x100, len: 16, flags: VIRTQ_DESC_F_NEXT, next: 1 },
//!     Descriptor { addr: 0x200, len: 512, flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, next: 2 },
//!     Descriptor { addr: 0x400, len: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 },
//! ];
//!
//! let req = parse_request(&mem, &chain, &DeviceLimits::new(1024)).unwrap();
//! assert_eq!(req.request_type(), RequestType::In);
//! assert_eq!((req.sector(), req.num_sectors(), req.status_addr()), (7, 1, 0x400));
//! assert_eq!(req.segments().len(), 1);
//! assert_eq!((req.segments()[0].addr, req.segments()[0].len), (0x200, 512));
//!
//! // ... the device reads sector 7 into 0x200, then completes:
//! let used_len = req.complete(&mem, Status::Ok).unwrap();
//! assert_eq!(used_len, 513);
//!
//! // Past the end of a 7-sector disk: IOERR, written at the same status byte.
//! let err = parse_request(&mem, &chain, &DeviceLimits::new(7)).unwrap_err();
//! assert_eq!(err.status(), Some(blk_proto::VIRTIO_BLK_S_IOERR));
//! assert_eq!(err.status_addr(), Some(0x400));
//! ```
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
