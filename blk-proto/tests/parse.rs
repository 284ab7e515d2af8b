//! Property tests of `parse_request` against a byte-level model of the chain.

use blk_proto::*;
use proptest::prelude::*;
use virtqueue_core::descriptor::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use virtqueue_core::{Descriptor, SliceMemory};

/// How the two byte streams are cut into buffers and spread over memory.
#[derive(Debug, Clone)]
struct Layout {
    cuts_r: Vec<usize>,
    cuts_w: Vec<usize>,
    gaps: Vec<u8>,
    /// Insert an empty device-readable descriptor at this position of the writable part.
    stray_empty: Option<usize>,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        prop::collection::vec(any::<usize>(), 0..5),
        prop::collection::vec(any::<usize>(), 0..5),
        prop::collection::vec(0u8..8, 1..6),
        prop::option::of(any::<usize>()),
    )
        .prop_map(|(cuts_r, cuts_w, gaps, stray_empty)| Layout {
            cuts_r,
            cuts_w,
            gaps,
            stray_empty,
        })
}

/// A chain in memory, with the guest address of every byte of each stream.
struct Built {
    mem: Vec<u8>,
    descs: Vec<Descriptor>,
    readable_addrs: Vec<u64>,
    writable_addrs: Vec<u64>,
}

fn pieces(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.windows(2).map(|w| w[1] - w[0]).collect()
}

fn build(readable: &[u8], writable_len: usize, l: &Layout) -> Built {
    let mut b = Built {
        mem: Vec::new(),
        descs: Vec::new(),
        readable_addrs: Vec::new(),
        writable_addrs: Vec::new(),
    };
    let mut cursor = 64usize;
    let mut gap = l.gaps.iter().cycle();
    let mut place = |len: usize, flags: u16, b: &mut Built| -> u64 {
        cursor += usize::from(*gap.next().unwrap());
        let addr = cursor as u64;
        cursor += len;
        b.descs.push(Descriptor {
            addr,
            len: len as u32,
            flags: flags | VIRTQ_DESC_F_NEXT,
            next: 0,
        });
        addr
    };
    for len in pieces(readable.len(), &l.cuts_r) {
        let addr = place(len, 0, &mut b);
        b.readable_addrs.extend(addr..addr + len as u64);
    }
    let first_w = b.descs.len();
    for len in pieces(writable_len, &l.cuts_w) {
        let addr = place(len, VIRTQ_DESC_F_WRITE, &mut b);
        b.writable_addrs.extend(addr..addr + len as u64);
    }
    if let Some(pos) = l.stray_empty {
        let at = first_w + pos % (b.descs.len() - first_w + 1);
        b.descs.insert(
            at,
            Descriptor {
                addr: 8,
                len: 0,
                flags: VIRTQ_DESC_F_NEXT,
                next: 0,
            },
        );
    }
    if let Some(last) = b.descs.last_mut() {
        last.flags &= !VIRTQ_DESC_F_NEXT;
    }
    b.mem = vec![0xAA; cursor + 64];
    for (byte, addr) in readable.iter().zip(&b.readable_addrs) {
        b.mem[*addr as usize] = *byte;
    }
    b
}

impl Built {
    fn parse(&mut self, limits: &DeviceLimits) -> Result<Request, ParseError> {
        let mem = SliceMemory::new(&mut self.mem);
        parse_request(&mem, &self.descs, limits)
    }
}

fn flatten(req: &Request) -> Vec<u64> {
    assert!(
        req.segments().iter().all(|s| s.len > 0),
        "empty segment in {req:?}"
    );
    req.segments()
        .iter()
        .flat_map(|s| s.addr..s.addr + u64::from(s.len))
        .collect()
}

fn all_features(capacity: u64) -> DeviceLimits {
    DeviceLimits {
        flush: true,
        discard: true,
        write_zeroes: true,
        ..DeviceLimits::new(capacity)
    }
}

fn header(t: u32, sector: u64) -> Vec<u8> {
    OutHdr {
        type_: t.into(),
        ioprio: 0.into(),
        sector: sector.into(),
    }
    .to_bytes()
    .to_vec()
}

fn ranges_bytes(ranges: &[(u64, u32, u32)]) -> Vec<u8> {
    ranges
        .iter()
        .flat_map(|&(s, n, flags)| {
            let mut seg = DiscardWriteZeroes::new(s, n, false);
            seg.flags = flags.into();
            seg.to_bytes()
        })
        .collect()
}

/// A valid request as the model sees it.
#[derive(Debug, Clone)]
enum Model {
    In {
        sector: u64,
        sectors: u64,
    },
    Out {
        sector: u64,
        sectors: u64,
    },
    Flush,
    GetId {
        extra: usize,
    },
    Ranges {
        write_zeroes: bool,
        ranges: Vec<(u64, u32, bool)>,
    },
}

fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        (any::<u64>(), 0u64..9).prop_map(|(sector, sectors)| Model::In { sector, sectors }),
        (any::<u64>(), 0u64..9).prop_map(|(sector, sectors)| Model::Out { sector, sectors }),
        Just(Model::Flush),
        (0usize..40).prop_map(|extra| Model::GetId { extra }),
        (
            any::<bool>(),
            prop::collection::vec(
                (any::<u64>(), any::<u32>(), any::<bool>()),
                1..=MAX_DISCARD_SEGMENTS
            )
        )
            .prop_map(|(write_zeroes, ranges)| Model::Ranges {
                write_zeroes,
                ranges
            }),
    ]
}

/// Brings the model's sectors inside `capacity` (and drops `unmap` from discards).
fn fit(m: Model, capacity: u64) -> Model {
    let fit_range = |sector: u64, n: u64| {
        let n = n.min(capacity);
        // One time in four, end exactly at the last sector.
        let sector = if sector % 4 == 0 {
            capacity - n
        } else {
            sector % (capacity - n + 1)
        };
        (sector, n)
    };
    match m {
        Model::In { sector, sectors } => {
            let (sector, sectors) = fit_range(sector, sectors);
            Model::In { sector, sectors }
        }
        Model::Out { sector, sectors } => {
            let (sector, sectors) = fit_range(sector, sectors);
            Model::Out { sector, sectors }
        }
        Model::Ranges {
            write_zeroes,
            ranges,
        } => Model::Ranges {
            write_zeroes,
            ranges: ranges
                .into_iter()
                .map(|(s, n, unmap)| {
                    let (s, n) = fit_range(s, u64::from(n));
                    (s, n as u32, unmap && write_zeroes)
                })
                .collect(),
        },
        other => other,
    }
}

/// The streams of a model request: readable bytes and writable length (status included).
fn streams(m: &Model) -> (Vec<u8>, usize) {
    match m {
        Model::In { sector, sectors } => (header(0, *sector), *sectors as usize * 512 + 1),
        Model::Out { sector, sectors } => {
            let mut r = header(1, *sector);
            r.extend((0..*sectors as usize * 512).map(|i| i as u8));
            (r, 1)
        }
        Model::Flush => (header(4, 0), 1),
        Model::GetId { extra } => (header(8, 0), 21 + extra),
        Model::Ranges {
            write_zeroes,
            ranges,
        } => {
            let mut r = header(if *write_zeroes { 13 } else { 11 }, 0);
            let raw: Vec<_> = ranges
                .iter()
                .map(|&(s, n, u)| (s, n, u32::from(u)))
                .collect();
            r.extend(ranges_bytes(&raw));
            (r, 1)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_requests_parse_to_the_model(m in model(), capacity in prop_oneof![1u64..20, 1u64..(1 << 42)], l in layout()) {
        let m = fit(m, capacity);
        let (readable, writable_len) = streams(&m);
        let mut b = build(&readable, writable_len, &l);
        let req = b.parse(&all_features(capacity)).map_err(|e| TestCaseError::fail(format!("{e} for {m:?}")))?;
        prop_assert_eq!(req.status_addr(), *b.writable_addrs.last().unwrap());
        let data = flatten(&req);
        prop_assert_eq!(u64::from(req.data_len()), data.len() as u64);
        prop_assert!(req.segments().len() <= b.descs.len());
        let (t, sector, want_data, want_ranges): (RequestType, Option<u64>, Vec<u64>, Vec<DiscardRange>) = match &m {
            Model::In { sector, .. } => (RequestType::In, Some(*sector), b.writable_addrs[..writable_len - 1].to_vec(), vec![]),
            Model::Out { sector, .. } => (RequestType::Out, Some(*sector), b.readable_addrs[16..].to_vec(), vec![]),
            Model::Flush => (RequestType::Flush, Some(0), vec![], vec![]),
            Model::GetId { .. } => (RequestType::GetId, Some(0), b.writable_addrs[..20].to_vec(), vec![]),
            Model::Ranges { write_zeroes, ranges } => (
                if *write_zeroes { RequestType::WriteZeroes } else { RequestType::Discard },
                Some(0),
                vec![],
                ranges.iter().map(|&(sector, num_sectors, unmap)| DiscardRange { sector, num_sectors, unmap }).collect(),
            ),
        };
        prop_assert_eq!(req.request_type(), t);
        prop_assert_eq!(Some(req.sector()), sector);
        prop_assert_eq!(data, want_data);
        prop_assert_eq!(req.ranges(), &want_ranges[..]);
        let used = req.used_len(Status::Ok);
        let expect_used = match t { RequestType::In | RequestType::GetId => req.data_len() + 1, _ => 1 };
        prop_assert_eq!(used, expect_used);
        prop_assert_eq!(req.used_len(Status::IoErr), 1);
    }
}

/// Checks that `b` fails with `kind` and answers with `status` at the last writable byte.
fn expect_err(
    b: &mut Built,
    limits: &DeviceLimits,
    kind: ParseErrorKind,
    status: u8,
) -> Result<(), TestCaseError> {
    let err = match b.parse(limits) {
        Ok(req) => {
            return Err(TestCaseError::fail(format!(
                "accepted {req:?}, expected {kind:?}"
            )))
        }
        Err(e) => e,
    };
    prop_assert_eq!(err.kind(), kind);
    prop_assert_eq!(err.status(), Some(status));
    prop_assert_eq!(err.status_addr(), b.writable_addrs.last().copied());
    Ok(())
}

const IOERR: u8 = VIRTIO_BLK_S_IOERR;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_writable_byte_means_no_status(readable in prop::collection::vec(any::<u8>(), 0..64), l in layout()) {
        let mut b = build(&readable, 0, &l);
        let err = b.parse(&all_features(100)).unwrap_err();
        prop_assert_eq!(err.kind(), ParseErrorKind::NoStatusByte);
        prop_assert_eq!(err.status(), None);
        prop_assert_eq!(err.status_addr(), None);
    }

    #[test]
    fn short_header(len in 0usize..16, w in 1usize..600, l in layout()) {
        let mut b = build(&header(0, 0)[..len], w, &l);
        expect_err(&mut b, &all_features(100), ParseErrorKind::HeaderTooShort { len: len as u64 }, IOERR)?;
    }

    #[test]
    fn unknown_type(t in any::<u32>().prop_filter("known", |t| ![0, 1, 4, 8, 11, 13].contains(t)),
                    extra in prop::collection::vec(any::<u8>(), 0..40), w in 1usize..40, l in layout()) {
        let mut r = header(t, 0);
        r.extend(extra);
        let mut b = build(&r, w, &l);
        expect_err(&mut b, &all_features(100), ParseErrorKind::UnsupportedType(t), UNSUPP)?;
    }

    #[test]
    fn writes_to_read_only(m in model(), l in layout()) {
        let m = fit(m, 1000);
        let (r, w) = streams(&m);
        let mut b = build(&r, w, &l);
        let limits = DeviceLimits { read_only: true, ..all_features(1000) };
        if matches!(m, Model::Out { .. } | Model::Ranges { .. }) {
            expect_err(&mut b, &limits, ParseErrorKind::ReadOnly, IOERR)?;
        } else {
            prop_assert!(b.parse(&limits).is_ok());
        }
    }

    #[test]
    fn types_without_their_feature(m in model(), l in layout()) {
        let m = fit(m, 1000);
        let (r, w) = streams(&m);
        let mut b = build(&r, w, &l);
        let t = match &m {
            Model::Flush => RequestType::Flush,
            Model::Ranges { write_zeroes: true, .. } => RequestType::WriteZeroes,
            Model::Ranges { write_zeroes: false, .. } => RequestType::Discard,
            _ => return Ok(()),
        };
        // Read-only too: the feature check comes first, so UNSUPP wins.
        let limits = DeviceLimits { read_only: true, flush: false, ..DeviceLimits::new(1000) };
        expect_err(&mut b, &limits, ParseErrorKind::FeatureNotNegotiated(t), UNSUPP)?;
    }

    #[test]
    fn partial_sectors(out in any::<bool>(), sector in 0u64..10, len in 1usize..3000, l in layout()) {
        prop_assume!(len % 512 != 0);
        let (r, w) = if out {
            let mut r = header(1, sector);
            r.resize(16 + len, 7);
            (r, 1)
        } else {
            (header(0, sector), len + 1)
        };
        let mut b = build(&r, w, &l);
        expect_err(&mut b, &all_features(100), ParseErrorKind::DataNotSectorMultiple { len: len as u64 }, IOERR)?;
    }

    #[test]
    fn beyond_capacity(out in any::<bool>(), capacity in 0u64..(1 << 40), over in 0u64..(1 << 20),
                       sectors in 0u64..9, wrap in any::<bool>(), l in layout()) {
        // Either just past the end, or so far that sector + sectors overflows u64.
        let sector = if wrap { u64::MAX - over % 4 } else { capacity.saturating_sub(sectors) + 1 + over };
        prop_assume!(sector.checked_add(sectors).is_none_or(|end| end > capacity));
        let len = sectors as usize * 512;
        let (r, w) = if out {
            let mut r = header(1, sector);
            r.resize(16 + len, 7);
            (r, 1)
        } else {
            (header(0, sector), len + 1)
        };
        let mut b = build(&r, w, &l);
        let kind = ParseErrorKind::OutOfRange { sector, num_sectors: sectors, capacity };
        expect_err(&mut b, &all_features(capacity), kind, IOERR)?;
    }

    #[test]
    fn data_in_the_wrong_direction(t in prop::sample::select(vec![0u32, 1, 4, 8, 11, 13]), extra_r in 0usize..1100,
                                   extra_w in 0usize..1100, l in layout()) {
        // IN and GET_ID take writable data only, OUT/DISCARD/WRITE_ZEROES readable only,
        // FLUSH none: add data on the forbidden side.
        let (extra_r, extra_w) = match t {
            0 | 8 => (extra_r.max(1), if t == 8 { 20 } else { 0 }),
            1 => (0, extra_w.max(1)),
            11 | 13 => (16, extra_w.max(1)),
            _ => (extra_r, if extra_r == 0 { extra_w.max(1) } else { extra_w }),
        };
        let mut r = header(t, 0);
        r.resize(16 + extra_r, 0);
        let mut b = build(&r, extra_w + 1, &l);
        let kind = if matches!(t, 0 | 8) || (t == 4 && extra_r > 0) {
            ParseErrorKind::UnexpectedReadableData { len: extra_r as u64 }
        } else {
            ParseErrorKind::UnexpectedWritableData { len: extra_w as u64 }
        };
        expect_err(&mut b, &all_features(100), kind, IOERR)?;
    }

    #[test]
    fn get_id_buffer_too_short(w in 0usize..20, l in layout()) {
        let mut b = build(&header(8, 0), w + 1, &l);
        expect_err(&mut b, &all_features(100), ParseErrorKind::IdBufferTooShort { len: w as u64 }, IOERR)?;
    }

    #[test]
    fn ranges_not_whole_segments(t in prop::sample::select(vec![11u32, 13]), len in 0usize..100, l in layout()) {
        prop_assume!(len % 16 != 0 || len == 0);
        let mut r = header(t, 0);
        r.resize(16 + len, 0);
        let mut b = build(&r, 1, &l);
        expect_err(&mut b, &all_features(100), ParseErrorKind::BadSegmentData { len: len as u64 }, IOERR)?;
    }

    #[test]
    fn too_many_ranges(t in prop::sample::select(vec![11u32, 13]), max in 1u32..=16, over in 1u32..4, l in layout()) {
        let count = max + over;
        let mut r = header(t, 0);
        r.extend(ranges_bytes(&vec![(0, 1, 0); count as usize]));
        let mut b = build(&r, 1, &l);
        let limits = DeviceLimits { max_discard_seg: max, max_write_zeroes_seg: max, ..all_features(100) };
        expect_err(&mut b, &limits, ParseErrorKind::TooManyDiscardSegments { count: u64::from(count), max }, IOERR)?;
        // Above MAX_DISCARD_SEGMENTS the crate's own limit applies.
        let limits = all_features(100);
        if count as usize > MAX_DISCARD_SEGMENTS {
            let max = MAX_DISCARD_SEGMENTS as u32;
            expect_err(&mut b, &limits, ParseErrorKind::TooManyDiscardSegments { count: u64::from(count), max }, IOERR)?;
        }
    }

    #[test]
    fn bad_range_flags(t in prop::sample::select(vec![11u32, 13]), n in 1usize..=16, bad in any::<usize>(),
                       flags in 2u32.., unmap_only in any::<bool>(), l in layout()) {
        // Every other segment is out of range: the flag error (UNSUPP) must still win.
        let bad = bad % n;
        // `unmap` alone is only an error on DISCARD.
        let unmap_only = unmap_only && t == 11;
        let flags = if unmap_only { VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP } else { flags };
        let segs: Vec<_> = (0..n).map(|i| if i == bad { (0, 1, flags) } else { (1000, 1, 0) }).collect();
        let mut r = header(t, 0);
        r.extend(ranges_bytes(&segs));
        let mut b = build(&r, 1, &l);
        let kind = if unmap_only { ParseErrorKind::UnmapOnDiscard } else { ParseErrorKind::UnknownSegmentFlags { flags } };
        expect_err(&mut b, &all_features(100), kind, UNSUPP)?;
    }

    #[test]
    fn bad_range_sizes(t in prop::sample::select(vec![11u32, 13]), n in 1usize..=16, bad in any::<usize>(),
                       max in 1u32..1000, capacity in 1u64..5000, too_long in any::<bool>(), l in layout()) {
        let bad = bad % n;
        let bad_seg = if too_long { (0, max + 1, 0) } else { (capacity, 1, 0) };
        let segs: Vec<_> = (0..n).map(|i| if i == bad { bad_seg } else { (0, 1, 0) }).collect();
        let mut r = header(t, 0);
        r.extend(ranges_bytes(&segs));
        let mut b = build(&r, 1, &l);
        let limits = DeviceLimits { max_discard_sectors: max, max_write_zeroes_sectors: max, ..all_features(capacity) };
        let kind = if too_long {
            ParseErrorKind::TooManySectors { num_sectors: max + 1, max }
        } else {
            ParseErrorKind::OutOfRange { sector: capacity, num_sectors: 1, capacity }
        };
        expect_err(&mut b, &limits, kind, IOERR)?;
    }

    #[test]
    fn more_buffers_than_seg_max(out in any::<bool>(), seg_max in 1u32..4, l in layout()) {
        // One buffer per sector, each followed by a gap so they cannot merge.
        let sectors = seg_max as usize + 1;
        let (r, w) = if out {
            let mut r = header(1, 0);
            r.resize(16 + sectors * 512, 1);
            (r, 1)
        } else {
            (header(0, 0), sectors * 512 + 1)
        };
        let cuts: Vec<usize> = (1..=sectors).map(|i| if out { 16 + i * 512 } else { i * 512 }).collect();
        let l = if out { Layout { cuts_r: cuts, ..l } } else { Layout { cuts_w: cuts, ..l } };
        let mut b = build(&r, w, &l);
        let limits = DeviceLimits { seg_max, ..all_features(100) };
        expect_err(&mut b, &limits, ParseErrorKind::TooManySegments { max: seg_max }, IOERR)?;
    }

    #[test]
    fn readable_after_writable(m in model(), l in layout(), at in any::<usize>()) {
        let m = fit(m, 1000);
        let (r, w) = streams(&m);
        let mut b = build(&r, w, &l);
        let first_w = b.descs.iter().position(|d| d.is_device_writable() && d.len > 0).unwrap();
        let at = first_w + 1 + at % (b.descs.len() - first_w);
        // The status byte stays the last writable byte wherever this lands.
        b.descs.insert(at, Descriptor { addr: 0, len: 1, flags: VIRTQ_DESC_F_NEXT, next: 0 });
        expect_err(&mut b, &all_features(1000), ParseErrorKind::ReadableAfterWritable, IOERR)?;
    }

    #[test]
    fn buffers_outside_memory(m in model(), l in layout(), which in any::<usize>(), far in any::<u64>()) {
        let m = fit(m, 1000);
        let (r, w) = streams(&m);
        let mut b = build(&r, w, &l);
        let mem_len = b.mem.len() as u64;
        let non_empty: Vec<usize> = (0..b.descs.len()).filter(|&i| b.descs[i].len > 0).collect();
        let i = non_empty[which % non_empty.len()];
        let addr = mem_len + far % (u64::MAX - mem_len);
        b.descs[i].addr = addr;
        let is_status = i == *non_empty.last().unwrap();
        let err = b.parse(&all_features(1000)).unwrap_err();
        if is_status {
            let status = addr.wrapping_add(u64::from(b.descs[i].len) - 1);
            prop_assert_eq!(err.kind(), ParseErrorKind::StatusNotInMemory { addr: status });
            prop_assert_eq!(err.status(), None);
        } else {
            prop_assert_eq!(err.kind(), ParseErrorKind::BufferNotInMemory { addr, len: b.descs[i].len });
            prop_assert_eq!(err.status(), Some(IOERR));
            prop_assert_eq!(err.status_addr(), b.writable_addrs.last().copied());
        }
    }
}

fn any_descriptor() -> impl Strategy<Value = Descriptor> {
    let addr = prop_oneof![0u64..700, any::<u64>()];
    let len = prop_oneof![0u32..700, any::<u32>()];
    (addr, len, any::<u16>()).prop_map(|(addr, len, flags)| Descriptor {
        addr,
        len,
        flags,
        next: 0,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_chains_never_panic(
        mut mem in prop::collection::vec(any::<u8>(), 0..700),
        t in prop::sample::select(vec![0u32, 1, 4, 8, 11, 13, 2, u32::MAX]),
        descs in prop::collection::vec(any_descriptor(), 0..8),
        capacity in prop_oneof![0u64..64, any::<u64>()],
        read_only in any::<bool>(),
        seg_max in 0u32..300,
    ) {
        // Plant a plausible header where the first descriptor points, to get past the type check.
        if let Some(d) = descs.first() {
            if let Some(dst) = usize::try_from(d.addr).ok().and_then(|a| mem.get_mut(a..a.checked_add(4)?)) {
                dst.copy_from_slice(&t.to_le_bytes());
            }
        }
        let limits = DeviceLimits { read_only, seg_max, ..all_features(capacity) };
        let mem_len = mem.len() as u64;
        let m = SliceMemory::new(&mut mem);
        match parse_request(&m, &descs, &limits) {
            Ok(req) => {
                prop_assert!(req.status_addr() < mem_len);
                let total: u64 = req.segments().iter().map(|s| u64::from(s.len)).sum();
                prop_assert_eq!(total, u64::from(req.data_len()));
                prop_assert!(req.segments().iter().all(|s| s.addr + u64::from(s.len) <= mem_len));
                prop_assert!(req.ranges().iter().all(|r| r.sector + u64::from(r.num_sectors) <= capacity));
            }
            Err(e) => {
                prop_assert_eq!(e.status().is_some(), e.status_addr().is_some());
                if let Some(a) = e.status_addr() {
                    prop_assert!(a < mem_len);
                }
            }
        }
    }
}
