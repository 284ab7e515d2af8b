//! virtio-blk request parsing (VIRTIO 1.x, 5.2.6 "Device Operation") over arbitrary guest
//! memory, arbitrary descriptor lists and arbitrary device limits.
//!
//! [`run`] checks what `parse_request` returns against the rules `blk-proto/src/request.rs`
//! documents: a request is only accepted inside the disk, inside memory, within the
//! negotiated features and limits, and its data segments are exactly the chain's data bytes.
//! Shared by the fuzz target `blk_parse_request` and `blk-proto/tests/fuzz_entry_points.rs`.

use blk_proto::{
    parse_request, DeviceLimits, RequestType, Status, MAX_DISCARD_SEGMENTS, MAX_SEGMENTS,
    SECTOR_SIZE, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_OUTHDR_SIZE,
};
use virtqueue_core::{Descriptor, GuestMemory, SliceMemory};

/// One chain to parse.
#[derive(Debug, Clone)]
pub struct BlkCase {
    /// Guest memory contents.
    pub memory: Vec<u8>,
    /// The chain as the virtqueue handed it over (only `VIRTQ_DESC_F_WRITE` matters).
    pub descs: Vec<Descriptor>,
    /// What the device accepts.
    pub limits: DeviceLimits,
}

fn inside(mem_len: u64, addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= mem_len)
}

/// Stream bytes `[start, end)` of the non-empty buffers in `part`, as `(addr, len)` pieces.
fn stream_pieces(part: &[Descriptor], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for d in part.iter().filter(|d| d.len != 0) {
        let (lo, hi) = (pos, pos + u64::from(d.len));
        pos = hi;
        let (a, b) = (lo.max(start), hi.min(end));
        if a < b {
            out.push((d.addr + (a - lo), b - a));
        }
    }
    out
}

/// Runs `case`, panicking on any broken rule. Returns the type of the accepted request,
/// `None` if it was rejected.
pub fn run(case: &mut BlkCase) -> Option<RequestType> {
    let limits = case.limits;
    let descs = case.descs.clone();
    let mem = SliceMemory::new(&mut case.memory);
    let mem_len = mem.len() as u64;
    let result = parse_request(&mem, &descs, &limits);

    let status = descs
        .iter()
        .rev()
        .find(|d| d.len != 0 && d.is_device_writable());
    let status_addr = status.and_then(|d| d.addr.checked_add(u64::from(d.len) - 1));
    let status_ok = status_addr.is_some_and(|a| a < mem_len);

    let req = match result {
        Err(e) => {
            // A status is answered exactly when the chain has a status byte inside memory.
            if let Some(addr) = e.status_addr() {
                assert_eq!(Some(addr), status_addr, "error status address");
                assert!(addr < mem_len, "error status byte outside memory");
                assert!(e.status().is_some());
            } else {
                assert!(e.status().is_none());
            }
            if status_ok {
                assert!(
                    e.status_addr().is_some(),
                    "usable status byte not used: {e:?}"
                );
            }
            return None;
        }
        Ok(req) => req,
    };

    // Framing: status byte is the last byte of the last non-empty writable buffer.
    assert!(status_ok, "accepted without a status byte in memory");
    assert_eq!(Some(req.status_addr()), status_addr, "status address");
    let split = descs
        .iter()
        .position(|d| d.len != 0 && d.is_device_writable())
        .unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(split);
    for d in descs.iter().filter(|d| d.len != 0) {
        assert!(
            inside(mem_len, d.addr, u64::from(d.len)),
            "accepted a buffer outside memory"
        );
    }
    assert!(
        writable
            .iter()
            .all(|d| d.len == 0 || d.is_device_writable()),
        "accepted a readable buffer after a writable one"
    );
    let readable_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    let writable_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
    let hdr = VIRTIO_BLK_OUTHDR_SIZE as u64;
    assert!(readable_len >= hdr, "accepted without a full header");

    // The type: supported, negotiated, and no writes to a read-only disk.
    let t = req.request_type();
    assert!(!matches!(t, RequestType::Unsupported(_)));
    assert!(limits.supports(t), "{t:?} accepted without its feature");
    if matches!(
        t,
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
    ) {
        assert!(!limits.read_only, "{t:?} accepted on a read-only disk");
    }

    // The data segments are exactly the request's data bytes of the stream.
    let expected: Vec<(u64, u64)> = match t {
        RequestType::In => stream_pieces(writable, 0, writable_len - 1),
        RequestType::Out => stream_pieces(readable, hdr, readable_len),
        RequestType::GetId => stream_pieces(writable, 0, VIRTIO_BLK_ID_BYTES as u64),
        _ => Vec::new(),
    };
    let got: Vec<(u64, u64)> = req
        .segments()
        .iter()
        .map(|s| (s.addr, u64::from(s.len)))
        .collect();
    assert_eq!(got, expected, "data segments of {t:?}");
    let total: u64 = got.iter().map(|p| p.1).sum();
    assert_eq!(u64::from(req.data_len()), total, "data_len");
    assert!(
        got.len() <= (limits.seg_max as usize).min(MAX_SEGMENTS),
        "too many segments"
    );
    for &(addr, len) in &got {
        assert!(
            len != 0 && inside(mem_len, addr, len),
            "segment outside memory"
        );
    }

    match t {
        RequestType::In | RequestType::Out => {
            // 5.2.6.1: whole sectors, all of them inside the disk.
            assert_eq!(u64::from(req.data_len()) % SECTOR_SIZE, 0, "partial sector");
            let end = req.sector().checked_add(u64::from(req.num_sectors()));
            assert!(
                end.is_some_and(|e| e <= limits.capacity),
                "sectors past capacity"
            );
            if t == RequestType::In {
                assert_eq!(readable_len, hdr, "IN with readable data");
            } else {
                assert_eq!(writable_len, 1, "OUT with writable data");
            }
        }
        RequestType::Flush => {
            assert_eq!((readable_len, writable_len), (hdr, 1), "FLUSH with data");
        }
        RequestType::GetId => {
            assert_eq!(req.data_len() as usize, VIRTIO_BLK_ID_BYTES);
            assert_eq!(readable_len, hdr, "GET_ID with readable data");
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            assert_eq!(writable_len, 1, "{t:?} with writable data");
            let ranges = req.ranges();
            assert_eq!(
                (readable_len - hdr),
                16 * ranges.len() as u64,
                "segment count"
            );
            let (max_seg, max_sectors) = if t == RequestType::Discard {
                (limits.max_discard_seg, limits.max_discard_sectors)
            } else {
                (limits.max_write_zeroes_seg, limits.max_write_zeroes_sectors)
            };
            assert!(!ranges.is_empty());
            assert!(ranges.len() <= (max_seg as usize).min(MAX_DISCARD_SEGMENTS));
            for r in ranges {
                assert!(r.num_sectors <= max_sectors, "range too long");
                let end = r.sector.checked_add(u64::from(r.num_sectors));
                assert!(
                    end.is_some_and(|e| e <= limits.capacity),
                    "range past capacity"
                );
                assert!(!(t == RequestType::Discard && r.unmap), "unmap on discard");
            }
        }
        RequestType::Unsupported(_) => unreachable!(),
    }
    if !matches!(t, RequestType::Discard | RequestType::WriteZeroes) {
        assert!(req.ranges().is_empty());
    }

    // Completion writes the status byte where the driver expects it.
    let used = req
        .complete(&mem, Status::Ok)
        .expect("status byte is in memory");
    let mut byte = [0xaa];
    mem.read(req.status_addr(), &mut byte)
        .expect("status byte is in memory");
    assert_eq!(byte[0], Status::Ok.raw());
    let data = if matches!(t, RequestType::In | RequestType::GetId) {
        req.data_len()
    } else {
        0
    };
    assert_eq!(used, data + 1, "used length");
    assert_eq!(req.used_len(Status::IoErr), 1);
    Some(t)
}
