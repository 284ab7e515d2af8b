//! Parsing a descriptor chain into a [`Request`] (VIRTIO 1.x, 5.2.6 "Device Operation").
//!
//! # Accepted layouts
//!
//! Following 2.6.4 "Message Framing", buffer boundaries carry no meaning:
//! - the non-empty device-readable buffers all come before the non-empty device-writable
//!   ones (2.7.4.2); empty buffers are ignored wherever they are;
//! - the header is the first 16 bytes of the readable buffers, and may span several;
//! - the status byte is the last byte of the last non-empty writable buffer;
//! - the data is what lies between: readable bytes after the header (OUT, DISCARD,
//!   WRITE_ZEROES), writable bytes before the status byte (IN, GET_ID). A data segment may
//!   therefore start inside the header's buffer or end inside the status byte's buffer.
//!
//! Only `VIRTQ_DESC_F_WRITE` is consulted: indirect tables must already be resolved by the
//! caller's chain walk.
//!
//! # Per type
//!
//! | type | data | checks |
//! | --- | --- | --- |
//! | IN | writable only | multiple of 512, `sector + len/512 <= capacity` |
//! | OUT | readable only | as IN; IOERR on a read-only device |
//! | FLUSH | none | `VIRTIO_BLK_F_FLUSH` negotiated; `sector` is ignored |
//! | GET_ID | writable only, >= 20 bytes | the first 20 become the data segments |
//! | DISCARD, WRITE_ZEROES | readable only, 1.. segments of 16 bytes | feature negotiated, not read-only, segment count, flags, `num_sectors`, range |
//!
//! IN and OUT with no data are accepted (with `sector <= capacity`). Errors map to statuses
//! as [`ParseErrorKind::status`] says.

use virtqueue_core::{Descriptor, GuestMemory, MemoryError};

use crate::error::{ParseError, ParseErrorKind};
use crate::framing::{pieces, read_stream, Framing};
use crate::header::{OutHdr, SECTOR_SIZE, VIRTIO_BLK_OUTHDR_SIZE};
use crate::id::VIRTIO_BLK_ID_BYTES;
use crate::inline_vec::InlineVec;
use crate::limits::DeviceLimits;
use crate::request_type::RequestType;
use crate::segment::{
    DiscardRange, DiscardWriteZeroes, VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use crate::status::Status;

// Defined beside the discard ranges (framing and limits need them too); kept reachable here.
pub use crate::segment::{DataSegment, MAX_DISCARD_SEGMENTS, MAX_SEGMENTS};

/// A validated request, independent of the descriptor slice it came from; no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    request_type: RequestType,
    sector: u64,
    status_addr: u64,
    data_len: u32,
    segments: InlineVec<DataSegment, MAX_SEGMENTS>,
    ranges: InlineVec<DiscardRange, MAX_DISCARD_SEGMENTS>,
}

impl Request {
    /// The request type; never [`RequestType::Unsupported`].
    pub fn request_type(&self) -> RequestType {
        self.request_type
    }

    /// The header's `sector` field: the first sector for IN and OUT, unused otherwise.
    pub fn sector(&self) -> u64 {
        self.sector
    }

    /// Guest address of the status byte.
    pub fn status_addr(&self) -> u64 {
        self.status_addr
    }

    /// The data buffers: where IN reads land, where OUT takes its bytes from, where GET_ID
    /// writes the 20 ID bytes. Empty for FLUSH, DISCARD and WRITE_ZEROES.
    pub fn segments(&self) -> &[DataSegment] {
        self.segments.as_slice()
    }

    /// Total bytes in [`Self::segments`].
    pub fn data_len(&self) -> u32 {
        self.data_len
    }

    /// Sectors covered by an IN or OUT request (`data_len / 512`).
    pub fn num_sectors(&self) -> u32 {
        self.data_len / SECTOR_SIZE as u32
    }

    /// The validated ranges of a DISCARD or WRITE_ZEROES request; empty for other types.
    pub fn ranges(&self) -> &[DiscardRange] {
        self.ranges.as_slice()
    }

    /// Bytes the device has written into the chain once it completes with `status`: the
    /// used ring's `len` (2.7.8 "The Virtqueue Used Ring").
    pub fn used_len(&self, status: Status) -> u32 {
        let data = match (status, self.request_type) {
            (Status::Ok, RequestType::In | RequestType::GetId) => self.data_len,
            _ => 0,
        };
        data.saturating_add(1)
    }

    /// Writes `status` into the request's status byte and returns [`Self::used_len`].
    pub fn complete<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        status: Status,
    ) -> Result<u32, MemoryError> {
        status.write_to(mem, self.status_addr)?;
        Ok(self.used_len(status))
    }

    /// Adds the stream bytes `[start, end)` of `descs` as data, at most `max` buffers.
    fn take_data(
        &mut self,
        descs: &[Descriptor],
        start: u64,
        end: u64,
        max: u32,
    ) -> Result<(), ParseErrorKind> {
        let len = end.saturating_sub(start);
        self.data_len = u32::try_from(len).map_err(|_| ParseErrorKind::DataTooLong { len })?;
        for (i, piece) in pieces(descs, start, end).enumerate() {
            if i >= max as usize || !self.segments.push(piece) {
                return Err(ParseErrorKind::TooManySegments { max });
            }
        }
        Ok(())
    }
}

/// Parses and validates the request in the chain `descs` (already walked, indirect tables
/// resolved) against `limits`.
///
/// On error, [`ParseError::status`] is the status the device answers with and
/// [`ParseError::status_addr`] where to write it; with no status address the caller returns
/// the chain with used length 0.
pub fn parse_request<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    limits: &DeviceLimits,
) -> Result<Request, ParseError> {
    let framing = Framing::new(mem, descs)?;
    let status_addr = framing.status_addr;
    parse_framed(mem, &framing, limits).map_err(|kind| ParseError::new(kind, Some(status_addr)))
}

fn parse_framed<M: GuestMemory + ?Sized>(
    mem: &M,
    f: &Framing<'_>,
    limits: &DeviceLimits,
) -> Result<Request, ParseErrorKind> {
    const HDR: u64 = VIRTIO_BLK_OUTHDR_SIZE as u64;
    if f.readable_len < HDR {
        return Err(ParseErrorKind::HeaderTooShort {
            len: f.readable_len,
        });
    }
    let mut hdr = [0; VIRTIO_BLK_OUTHDR_SIZE];
    read_stream(mem, f.readable, 0, &mut hdr).map_err(ParseErrorKind::Memory)?;
    let hdr = OutHdr::from_array(hdr);
    let request_type = hdr.request_type();
    if let RequestType::Unsupported(raw) = request_type {
        return Err(ParseErrorKind::UnsupportedType(raw));
    }
    if !limits.supports(request_type) {
        return Err(ParseErrorKind::FeatureNotNegotiated(request_type));
    }
    if request_type.is_write() && limits.read_only {
        return Err(ParseErrorKind::ReadOnly);
    }
    let mut req = Request {
        request_type,
        sector: hdr.sector.get(),
        status_addr: f.status_addr,
        data_len: 0,
        segments: InlineVec::new(),
        ranges: InlineVec::new(),
    };
    let readable_data = f.readable_len - HDR;
    // The status byte exists (Framing checked it), so writable_len >= 1.
    let writable_data = f.writable_len.saturating_sub(1);
    let seg_limit = limits.data_segment_limit();
    match request_type {
        RequestType::In => {
            no_data(readable_data, 0)?;
            check_sectors(req.sector, writable_data, limits.capacity)?;
            req.take_data(f.writable, 0, writable_data, seg_limit)?;
        }
        RequestType::Out => {
            no_data(0, writable_data)?;
            check_sectors(req.sector, readable_data, limits.capacity)?;
            req.take_data(f.readable, HDR, f.readable_len, seg_limit)?;
        }
        RequestType::Flush => no_data(readable_data, writable_data)?,
        RequestType::GetId => {
            no_data(readable_data, 0)?;
            if writable_data < VIRTIO_BLK_ID_BYTES as u64 {
                return Err(ParseErrorKind::IdBufferTooShort { len: writable_data });
            }
            req.take_data(f.writable, 0, VIRTIO_BLK_ID_BYTES as u64, seg_limit)?;
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            no_data(0, writable_data)?;
            parse_ranges(mem, f, limits, &mut req)?;
        }
        RequestType::Unsupported(raw) => return Err(ParseErrorKind::UnsupportedType(raw)),
    }
    Ok(req)
}

/// Fails unless there are no readable data bytes (`readable`) and no writable ones (`writable`).
fn no_data(readable: u64, writable: u64) -> Result<(), ParseErrorKind> {
    if readable != 0 {
        return Err(ParseErrorKind::UnexpectedReadableData { len: readable });
    }
    if writable != 0 {
        return Err(ParseErrorKind::UnexpectedWritableData { len: writable });
    }
    Ok(())
}

/// IN/OUT data: whole sectors, all below `capacity` (5.2.6.1), with no overflow.
fn check_sectors(sector: u64, len: u64, capacity: u64) -> Result<(), ParseErrorKind> {
    if len % SECTOR_SIZE != 0 {
        return Err(ParseErrorKind::DataNotSectorMultiple { len });
    }
    check_range(sector, len / SECTOR_SIZE, capacity)
}

fn check_range(sector: u64, num_sectors: u64, capacity: u64) -> Result<(), ParseErrorKind> {
    match sector.checked_add(num_sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(ParseErrorKind::OutOfRange {
            sector,
            num_sectors,
            capacity,
        }),
    }
}

/// Reads and checks the `virtio_blk_discard_write_zeroes` segments after the header. Flags
/// are checked over all segments before sizes, so UNSUPP wins over IOERR as 5.2.6.2 asks.
fn parse_ranges<M: GuestMemory + ?Sized>(
    mem: &M,
    f: &Framing<'_>,
    limits: &DeviceLimits,
    req: &mut Request,
) -> Result<(), ParseErrorKind> {
    const SEG: u64 = VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE as u64;
    const HDR: u64 = VIRTIO_BLK_OUTHDR_SIZE as u64;
    let len = f.readable_len - HDR;
    if len == 0 || len % SEG != 0 {
        return Err(ParseErrorKind::BadSegmentData { len });
    }
    let (max_seg, max_sectors) = limits.range_limits(req.request_type);
    let count = len / SEG;
    if count > u64::from(max_seg) {
        return Err(ParseErrorKind::TooManyDiscardSegments {
            count,
            max: max_seg,
        });
    }
    let mut raw = [DiscardWriteZeroes::default(); MAX_DISCARD_SEGMENTS];
    for (i, seg) in raw.iter_mut().take(count as usize).enumerate() {
        let mut bytes = [0; VIRTIO_BLK_DISCARD_WRITE_ZEROES_SIZE];
        read_stream(mem, f.readable, HDR + i as u64 * SEG, &mut bytes)
            .map_err(ParseErrorKind::Memory)?;
        *seg = DiscardWriteZeroes::from_array(bytes);
    }
    let raw = raw.get(..count as usize).unwrap_or(&[]);
    let discard = req.request_type == RequestType::Discard;
    for seg in raw {
        let flags = seg.flags.get();
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(ParseErrorKind::UnknownSegmentFlags { flags });
        }
        if discard && flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(ParseErrorKind::UnmapOnDiscard);
        }
    }
    for seg in raw {
        let (sector, num_sectors) = (seg.sector.get(), seg.num_sectors.get());
        if num_sectors > max_sectors {
            return Err(ParseErrorKind::TooManySectors {
                num_sectors,
                max: max_sectors,
            });
        }
        check_range(sector, u64::from(num_sectors), limits.capacity)?;
        let unmap = seg.flags.get() & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Cannot fail: count <= MAX_DISCARD_SEGMENTS was checked above.
        req.ranges.push(DiscardRange {
            sector,
            num_sectors,
            unmap,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::*;
    use crate::features::{Features, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO};
    use crate::VirtioBlkConfig;
    use virtqueue_core::descriptor::VIRTQ_DESC_F_WRITE;
    use virtqueue_core::SliceMemory;

    fn desc(addr: u64, len: u32, write: bool) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags: if write { VIRTQ_DESC_F_WRITE } else { 0 },
            next: 0,
        }
    }

    #[test]
    fn request_stays_small() {
        assert!(
            core::mem::size_of::<Request>() <= 4 * 1024 + 512,
            "{}",
            core::mem::size_of::<Request>()
        );
    }

    #[test]
    fn header_and_data_share_a_buffer() {
        // One readable buffer holding header + 2 sectors, one writable byte.
        let mut bytes = vec![0u8; 4096];
        let mem = SliceMemory::new(&mut bytes);
        mem.write(0x100, &OutHdr::write(3).to_bytes()).unwrap();
        let chain = [desc(0x100, 16 + 1024, false), desc(0x800, 1, true)];
        let req = parse_request(&mem, &chain, &DeviceLimits::new(5)).unwrap();
        assert_eq!(
            req.segments(),
            &[DataSegment {
                addr: 0x110,
                len: 1024
            }]
        );
        assert_eq!((req.num_sectors(), req.status_addr()), (2, 0x800));
        assert_eq!(req.complete(&mem, Status::Ok), Ok(1));
        let mut status = [9];
        mem.read(0x800, &mut status).unwrap();
        assert_eq!(status, [crate::status::VIRTIO_BLK_S_OK]);
    }

    #[test]
    fn header_split_and_status_after_data() {
        // Header split 10 + 6 bytes; data and status in one writable buffer.
        let mut bytes = vec![0u8; 4096];
        let mem = SliceMemory::new(&mut bytes);
        let hdr = OutHdr::read(0).to_bytes();
        mem.write(0x100, &hdr[..10]).unwrap();
        mem.write(0x200, &hdr[10..]).unwrap();
        let chain = [
            desc(0x100, 10, false),
            desc(0x200, 6, false),
            desc(0x400, 513, true),
        ];
        let req = parse_request(&mem, &chain, &DeviceLimits::new(1)).unwrap();
        assert_eq!(
            req.segments(),
            &[DataSegment {
                addr: 0x400,
                len: 512
            }]
        );
        assert_eq!(req.status_addr(), 0x400 + 512);
        assert_eq!(req.used_len(Status::Ok), 513);
    }

    #[test]
    fn flush_is_accepted_by_default_and_refused_when_turned_off() {
        let mut b = vec![0u8; 0x1000];
        let mem = SliceMemory::new(&mut b);
        mem.write(0x100, &OutHdr::flush().to_bytes()).unwrap();
        let chain = [desc(0x100, 16, false), desc(0x200, 1, true)];
        let req = parse_request(&mem, &chain, &DeviceLimits::new(8)).unwrap();
        assert_eq!(req.request_type(), RequestType::Flush);
        let off = DeviceLimits {
            flush: false,
            ..DeviceLimits::new(8)
        };
        let err = parse_request(&mem, &chain, &off).unwrap_err();
        assert_eq!(
            err.kind(),
            ParseErrorKind::FeatureNotNegotiated(RequestType::Flush)
        );
        assert_eq!(err.status(), Some(crate::VIRTIO_BLK_S_UNSUPP));
    }

    #[test]
    fn parse_request_takes_dyn_memory() {
        let mut b = vec![0u8; 0x1000];
        let mem = SliceMemory::new(&mut b);
        let dyn_mem: &dyn GuestMemory = &mem;
        dyn_mem.write(0x100, &OutHdr::read(1).to_bytes()).unwrap();
        let chain = [desc(0x100, 16, false), desc(0x200, 513, true)];
        let req = parse_request(dyn_mem, &chain, &DeviceLimits::new(8)).unwrap();
        assert_eq!(req.complete(dyn_mem, Status::Ok), Ok(513));
    }

    #[test]
    fn limits_from_config() {
        let cfg = VirtioBlkConfig::new(100)
            .with_seg_max(3)
            .with_discard(8, 2, 1);
        let offered = Features::EMPTY
            .with(VIRTIO_BLK_F_RO)
            .with(VIRTIO_BLK_F_DISCARD);
        let l = DeviceLimits::from_config(&cfg, offered, Features::bit(VIRTIO_BLK_F_DISCARD));
        assert!(l.read_only && l.discard && !l.flush && !l.write_zeroes);
        assert_eq!(
            (
                l.capacity,
                l.seg_max,
                l.max_discard_sectors,
                l.max_discard_seg
            ),
            (100, MAX_SEGMENTS as u32, 8, 2)
        );
        let l = DeviceLimits::from_config(
            &cfg,
            offered,
            Features::bit(crate::features::VIRTIO_BLK_F_SEG_MAX),
        );
        assert_eq!(l.seg_max, 3);
    }
}
