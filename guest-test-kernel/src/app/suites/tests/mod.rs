//! The self-tests. Each prints `TEST <name> PASS` or `TEST <name> FAIL <why>`.

use blk_proto::features::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use blk_proto::{
    check_id_response, DiscardWriteZeroes, RequestType, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use guest_test_kernel::pattern::{self, mix64, SECTOR_SIZE};

use crate::app::check::pipeline::{self, Extent, Op, Pass, Split};
use crate::app::check::report::{fail, skip, Tally, Why};
use crate::app::check::Env;
use crate::app::driver::blk::{Blk, Request};
use crate::app::driver::dma;

mod foreign;

type TestFn = fn(&mut Blk, &Env<'_>) -> Result<(), Why>;

/// `(name, writes the disk, test)`, in running order.
const TESTS: [(&str, bool, TestFn); 16] = [
    ("first_last", true, first_last),
    ("random_sizes", true, random_sizes),
    ("whole_disk", true, whole_disk),
    ("multi_segment", true, multi_segment),
    ("indirect", true, indirect),
    ("queue_depth", true, queue_depth),
    ("read_consistency", false, read_consistency),
    ("flush", false, flush),
    ("get_id", false, get_id),
    ("discard", true, discard),
    ("write_zeroes", true, write_zeroes),
    ("out_of_range", false, out_of_range),
    ("unsupported", false, unsupported),
    ("read_only", false, read_only),
    ("virtio_drivers", false, virtio_drivers),
    ("seed_stale", true, seed_stale),
];

/// Runs the selected tests on `blk` (which `virtio_drivers` re-initializes).
pub fn run_all(blk: &mut Blk, env: &Env<'_>) -> Tally {
    let mut tally = Tally::default();
    let ro = blk.has(VIRTIO_BLK_F_RO);
    for (i, (name, writes, test)) in TESTS.iter().enumerate() {
        if !env.opts.test_enabled(name) {
            continue;
        }
        if *writes && ro {
            crate::println!("# {name} skipped: the disk is read-only");
            continue;
        }
        let sub = Env {
            seed: mix64(env.seed ^ i as u64),
            ..*env
        };
        let mark = dma::mark();
        let start = crate::arch::tsc::rdtsc();
        let outcome = test(blk, &sub);
        let ms = (crate::arch::tsc::rdtsc() - start) / (crate::arch::tsc::hz() / 1000).max(1);
        // `virtio_drivers` re-initializes the driver, whose new rings live past the mark.
        if *name != "virtio_drivers" {
            dma::release(mark);
        }
        crate::println!("# {name}: {ms} ms");
        tally.record(name, outcome);
    }
    tally
}

/// Writes then verifies the extents `make()` yields (called once per phase, so both phases
/// see the same sequence).
fn round_trip<G: FnMut() -> Extent>(
    blk: &mut Blk,
    pass: Pass,
    count: usize,
    make: &dyn Fn() -> G,
) -> Result<pipeline::Stats, Why> {
    let mut w = make();
    pipeline::run(
        blk,
        Pass {
            op: Op::Write,
            ..pass
        },
        count,
        &mut w,
    )?;
    let mut r = make();
    pipeline::run(
        blk,
        Pass {
            op: Op::Verify,
            ..pass
        },
        count,
        &mut r,
    )
}

fn from_list(list: &[Extent]) -> impl FnMut() -> Extent + '_ {
    let mut i = 0;
    move || {
        let e = list.get(i % list.len().max(1)).copied().unwrap_or(Extent {
            sector: 0,
            sectors: 1,
        });
        i += 1;
        e
    }
}

fn pass(seed: u64, qd: usize, max_sectors: u32) -> Pass {
    Pass {
        op: Op::Write,
        seed,
        qd,
        max_sectors,
        split: Split::Whole,
        indirect: false,
    }
}

fn first_last(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    let cap = blk.capacity();
    let big = 2048u64.min(cap);
    let list = [
        Extent {
            sector: 0,
            sectors: 1,
        },
        Extent {
            sector: cap - 1,
            sectors: 1,
        },
        Extent {
            sector: 0,
            sectors: big as u32,
        },
        Extent {
            sector: cap - big,
            sectors: big as u32,
        },
        Extent {
            sector: cap / 2,
            sectors: 9.min(cap as u32),
        },
    ];
    round_trip(blk, pass(env.seed, 4, 2048), list.len(), &|| {
        from_list(&list)
    })?;
    Ok(())
}

fn random_sizes(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    let cap = blk.capacity();
    let seed = env.seed;
    round_trip(blk, pass(seed, 32, 2048), 256, &|| {
        pipeline::random_extents(seed, cap, 2048)
    })?;
    Ok(())
}

fn whole_disk(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    const CHUNK: u64 = 2048; // 1 MiB
    let cap = blk.capacity();
    let chunks = cap.div_ceil(CHUNK);
    // Beyond 1024 chunks, sample evenly (always including the last one).
    let count = chunks.min(1024);
    let make = || {
        let mut i = 0u64;
        move || {
            let chunk = if count == chunks {
                i
            } else {
                i * (chunks - 1) / (count - 1).max(1)
            };
            i += 1;
            let sector = chunk * CHUNK;
            Extent {
                sector,
                sectors: (cap - sector).min(CHUNK) as u32,
            }
        }
    };
    let stats = round_trip(blk, pass(env.seed, 32, CHUNK as u32), count as usize, &make)?;
    crate::println!(
        "# whole_disk: {} MiB verified, up to {} in flight",
        stats.bytes >> 20,
        stats.max_in_flight
    );
    Ok(())
}

fn multi_segment(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    if blk.max_segments() < 2 {
        fail!(
            "device allows only {} segment(s) per request",
            blk.max_segments()
        );
    }
    let cap = blk.capacity();
    let seed = env.seed;
    let make = || pipeline::random_extents(seed, cap, 512);
    let base = Pass {
        split: Split::Random(mix64(seed ^ 1)),
        ..pass(seed, 16, 512)
    };
    pipeline::run(blk, base, 128, &mut make())?;
    let read = Pass {
        op: Op::Verify,
        split: Split::Random(mix64(seed ^ 2)),
        ..base
    };
    pipeline::run(blk, read, 128, &mut make())?;
    Ok(())
}

fn indirect(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    if !blk.has(VIRTIO_RING_F_INDIRECT_DESC) {
        skip!("VIRTIO_RING_F_INDIRECT_DESC not offered");
    }
    let cap = blk.capacity();
    for (round, write_indirect) in [true, false].into_iter().enumerate() {
        let seed = mix64(env.seed ^ round as u64);
        let make = || pipeline::random_extents(seed, cap, 256);
        let random = Split::Random(mix64(seed ^ 3));
        let w = Pass {
            indirect: write_indirect,
            split: if write_indirect { random } else { Split::Whole },
            ..pass(seed, 48, 256)
        };
        pipeline::run(blk, w, 192, &mut make())?;
        let r = Pass {
            op: Op::Verify,
            indirect: !write_indirect,
            split: if write_indirect { Split::Whole } else { random },
            ..w
        };
        pipeline::run(blk, r, 192, &mut make())?;
    }
    Ok(())
}

fn queue_depth(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    let cap = blk.capacity();
    let seed = env.seed;
    let qd = (env.opts.qd as usize).max(64);
    let stats = round_trip(blk, pass(seed, qd, 8), 2048, &|| {
        pipeline::random_extents(seed, cap, 8)
    })?;
    let ring_room: usize = (0..blk.num_queues())
        .map(|q| usize::from(blk.queue_size(q)) / 3)
        .sum();
    let want = 32.min(ring_room);
    if stats.max_in_flight < want {
        fail!(
            "only {} requests were in flight at once, wanted {want}",
            stats.max_in_flight
        );
    }
    crate::println!(
        "# queue_depth: {} requests, up to {} in flight",
        stats.requests,
        stats.max_in_flight
    );
    Ok(())
}

/// Reads the same extents three ways (whole buffers; random segments, indirect if offered;
/// then the whole disk): every read succeeds and the data agrees. Needs no writes, so it
/// also covers the data path of a read-only disk.
fn read_consistency(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    const COUNT: usize = 128;
    let cap = blk.capacity();
    let seed = env.seed;
    let make = || pipeline::random_extents(seed, cap, 256);
    let mut hashes = [0u64; COUNT];
    let first = Pass {
        op: Op::Read,
        ..pass(seed, 32, 256)
    };
    pipeline::run_reads(blk, first, COUNT, &mut make(), &mut |i, _, data| {
        if let Some(h) = hashes.get_mut(i) {
            *h = hash(data);
        }
        Ok(())
    })?;
    let indirect = blk.has(VIRTIO_RING_F_INDIRECT_DESC);
    let second = Pass {
        split: Split::Random(mix64(seed)),
        indirect,
        ..first
    };
    pipeline::run_reads(blk, second, COUNT, &mut make(), &mut |i, e, data| {
        if hashes.get(i).copied() != Some(hash(data)) {
            fail!(
                "sectors {}+{} read differently the second time",
                e.sector,
                e.sectors
            );
        }
        Ok(())
    })?;
    let chunks = cap.div_ceil(2048);
    let mut i = 0;
    let mut whole = move || {
        let sector = i * 2048;
        i += 1;
        Extent {
            sector,
            sectors: (cap - sector).min(2048) as u32,
        }
    };
    let all = Pass {
        op: Op::Read,
        ..pass(seed, 32, 2048)
    };
    pipeline::run(blk, all, chunks.min(4096) as usize, &mut whole)?;
    Ok(())
}

fn hash(data: &[u8]) -> u64 {
    data.chunks(8).fold(data.len() as u64, |h, w| {
        let mut b = [0u8; 8];
        b[..w.len()].copy_from_slice(w);
        mix64(h ^ u64::from_le_bytes(b))
    })
}

/// Sends a request whose data is `sectors` sectors at a fresh buffer; returns (status, buffer).
fn single(blk: &mut Blk, kind: RequestType, sector: u64, bytes: usize) -> Result<(u8, u64), Why> {
    let buf =
        dma::alloc(bytes.max(1) as u64, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
    let seg = [(buf, bytes as u32)];
    let data: &[(u64, u32)] = if bytes == 0 { &[] } else { &seg };
    let status = blk.execute(&Request {
        kind,
        sector,
        data,
        indirect: false,
        tag: 0x5eed,
    })?;
    Ok((status, buf))
}

fn expect_status(what: &str, got: u8, want: u8) -> Result<(), Why> {
    if got != want {
        fail!("{what}: status {got}, expected {want}");
    }
    Ok(())
}

fn flush(blk: &mut Blk, _env: &Env<'_>) -> Result<(), Why> {
    let (status, _) = single(blk, RequestType::Flush, 0, 0)?;
    if blk.has(VIRTIO_BLK_F_FLUSH) {
        expect_status("FLUSH", status, VIRTIO_BLK_S_OK)
    } else {
        crate::println!("# flush: VIRTIO_BLK_F_FLUSH not offered, device answered {status}");
        Ok(())
    }
}

fn get_id(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    let (status, buf) = single(blk, RequestType::GetId, 0, VIRTIO_BLK_ID_BYTES)?;
    expect_status("GET_ID", status, VIRTIO_BLK_S_OK)?;
    // SAFETY: the request completed; the buffer is ours again.
    let raw = unsafe { dma::bytes(buf, VIRTIO_BLK_ID_BYTES) };
    let id = check_id_response(raw)?;
    let id = core::str::from_utf8(id).unwrap_or("?");
    crate::println!("# get_id: \"{id}\"");
    match env.opts.serial {
        // The ID is truncated to 20 bytes when the serial is longer.
        Some(want)
            if !want.as_bytes().starts_with(id.as_bytes())
                || id.len() != want.len().min(VIRTIO_BLK_ID_BYTES) =>
        {
            fail!("device ID \"{id}\" differs from serial={want}")
        }
        _ => Ok(()),
    }
}

/// Writes a pattern around `[at, at + n)`, applies `kind` to that range, and checks the
/// neighbours keep their data while the range reads as zeros (WRITE_ZEROES), or as zeros or
/// its old data sector by sector (DISCARD: only a hint, 5.2.6 "the device MAY deallocate";
/// QEMU ignores it unless the drive has `discard=unmap`).
fn zeroing(
    blk: &mut Blk,
    env: &Env<'_>,
    kind: RequestType,
    unmap: bool,
    at: u64,
    n: u32,
) -> Result<(), Why> {
    let around = [Extent {
        sector: at - 8,
        sectors: n + 16,
    }];
    pipeline::run(blk, pass(env.seed, 1, n + 16), 1, &mut from_list(&around))?;
    let status = range_request(blk, kind, at, n, unmap)?;
    expect_status(kind_name(kind), status, VIRTIO_BLK_S_OK)?;
    let range = [Extent {
        sector: at,
        sectors: n,
    }];
    if kind == RequestType::WriteZeroes {
        let zero = Pass {
            op: Op::VerifyZero,
            ..pass(env.seed, 1, n)
        };
        pipeline::run(blk, zero, 1, &mut from_list(&range))?;
    } else {
        let mut zeroed = 0;
        let read = Pass {
            op: Op::Read,
            ..pass(env.seed, 1, n)
        };
        pipeline::run_reads(blk, read, 1, &mut from_list(&range), &mut |_, e, data| {
            for (i, sector) in data.chunks(SECTOR_SIZE).enumerate() {
                let s = e.sector + i as u64;
                if pattern::verify_zero(sector, s).is_ok() {
                    zeroed += 1;
                } else if let Err(m) = pattern::verify(sector, s, env.seed) {
                    fail!("discarded sector is neither zero nor its old data: {m}");
                }
            }
            Ok(())
        })?;
        crate::println!("# discard: {zeroed} of {n} discarded sectors read back as zeros");
    }
    let edges = [
        Extent {
            sector: at - 8,
            sectors: 8,
        },
        Extent {
            sector: at + u64::from(n),
            sectors: 8,
        },
    ];
    pipeline::run(
        blk,
        Pass {
            op: Op::Verify,
            ..pass(env.seed, 2, 8)
        },
        2,
        &mut from_list(&edges),
    )?;
    Ok(())
}

/// Sends a DISCARD or WRITE_ZEROES of one range; returns the status.
fn range_request(
    blk: &mut Blk,
    kind: RequestType,
    sector: u64,
    n: u32,
    unmap: bool,
) -> Result<u8, Why> {
    let seg = DiscardWriteZeroes::new(sector, n, unmap).to_bytes();
    let buf =
        dma::alloc(seg.len() as u64, 16).ok_or(Why::new(format_args!("out of DMA memory")))?;
    // SAFETY: freshly allocated, not in any request yet.
    unsafe { dma::bytes(buf, seg.len()) }.copy_from_slice(&seg);
    let req = Request {
        kind,
        sector: 0,
        data: &[(buf, seg.len() as u32)],
        indirect: false,
        tag: 1,
    };
    Ok(blk.execute(&req)?)
}

fn kind_name(kind: RequestType) -> &'static str {
    match kind {
        RequestType::Discard => "DISCARD",
        RequestType::WriteZeroes => "WRITE_ZEROES",
        _ => "request",
    }
}

/// A sector inside the disk, away from its edges, aligned to `align` sectors.
fn middle_sector(blk: &Blk, env: &Env<'_>, align: u64, n: u32) -> u64 {
    let cap = blk.capacity();
    let span = cap.saturating_sub(u64::from(n) + 2 * align + 64).max(1);
    let s = 32 + pattern::Rng::new(env.seed).below(span);
    s.div_ceil(align) * align
}

fn discard(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    if !blk.has(VIRTIO_BLK_F_DISCARD) {
        skip!("VIRTIO_BLK_F_DISCARD not offered");
    }
    let cfg = blk.config();
    let align = u64::from(cfg.discard_sector_alignment.get()).clamp(8, 1 << 16);
    let n = cfg.max_discard_sectors.get().clamp(1, 256);
    let n = (n / align as u32).max(1) * align as u32;
    let at = middle_sector(blk, env, align, n);
    zeroing(blk, env, RequestType::Discard, false, at, n)
}

fn write_zeroes(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    if !blk.has(VIRTIO_BLK_F_WRITE_ZEROES) {
        skip!("VIRTIO_BLK_F_WRITE_ZEROES not offered");
    }
    let n = blk.config().max_write_zeroes_sectors.get().clamp(1, 256);
    for unmap in [false, true] {
        let at = middle_sector(blk, env, 8, n);
        let env = Env {
            seed: mix64(env.seed ^ u64::from(unmap)),
            ..*env
        };
        zeroing(blk, &env, RequestType::WriteZeroes, unmap, at, n)?;
    }
    Ok(())
}

fn out_of_range(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    let cap = blk.capacity();
    let reads = [
        (cap, 1usize),
        (cap - 1, 2),
        (u64::MAX, 1),
        (u64::MAX / 512, 8),
    ];
    for (sector, sectors) in reads {
        let (status, _) = single(blk, RequestType::In, sector, sectors * SECTOR_SIZE)?;
        if status != VIRTIO_BLK_S_IOERR {
            fail!("read of {sectors} sector(s) at {sector} (capacity {cap}): status {status}, expected IOERR");
        }
    }
    if blk.has(VIRTIO_BLK_F_RO) {
        return Ok(());
    }
    // A write straddling the end fails and leaves the last sector alone.
    let last = [Extent {
        sector: cap - 1,
        sectors: 1,
    }];
    pipeline::run(blk, pass(env.seed, 1, 1), 1, &mut from_list(&last))?;
    let (status, _) = single(blk, RequestType::Out, cap - 1, 2 * SECTOR_SIZE)?;
    expect_status("write straddling the end", status, VIRTIO_BLK_S_IOERR)?;
    pipeline::run(
        blk,
        Pass {
            op: Op::Verify,
            ..pass(env.seed, 1, 1)
        },
        1,
        &mut from_list(&last),
    )?;
    Ok(())
}

fn unsupported(blk: &mut Blk, _env: &Env<'_>) -> Result<(), Why> {
    let (status, _) = single(blk, RequestType::Unsupported(0x7f), 0, 0)?;
    expect_status("request type 0x7f", status, VIRTIO_BLK_S_UNSUPP)
}

fn read_only(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    match (env.opts.expect_ro, blk.offered(VIRTIO_BLK_F_RO)) {
        (true, false) => fail!("expect_ro=1 but the device does not offer VIRTIO_BLK_F_RO"),
        (false, true) => fail!("the device offers VIRTIO_BLK_F_RO but expect_ro=0"),
        (false, false) => {
            crate::println!("# read_only: the disk is writable, as expected");
            return Ok(());
        }
        (true, true) => {}
    }
    const N: usize = 16;
    let cap = blk.capacity();
    for sector in [
        0,
        cap.saturating_sub(N as u64),
        middle_sector(blk, env, 1, N as u32),
    ] {
        let (status, before) = single(blk, RequestType::In, sector, N * SECTOR_SIZE)?;
        expect_status("read", status, VIRTIO_BLK_S_OK)?;
        let (_, data) = single(blk, RequestType::In, sector, N * SECTOR_SIZE)?;
        // SAFETY: both requests completed; the buffers are ours.
        let new = unsafe { dma::bytes(data, N * SECTOR_SIZE) };
        pattern::fill(new, sector, env.seed);
        let status = blk.execute(&Request {
            kind: RequestType::Out,
            sector,
            data: &[(data, (N * SECTOR_SIZE) as u32)],
            indirect: false,
            tag: 2,
        })?;
        expect_status("write to a read-only disk", status, VIRTIO_BLK_S_IOERR)?;
        // WRITE_ZEROES must fail (UNSUPP without the feature, else IOERR). DISCARD is only
        // a hint (5.2.6: the device may ignore it, QEMU does with discard=ignore), so it may
        // succeed; the comparison below checks it changed nothing either way.
        if range_request(blk, RequestType::WriteZeroes, sector, N as u32, false)? == VIRTIO_BLK_S_OK
        {
            fail!("WRITE_ZEROES on a read-only disk succeeded");
        }
        let discard = range_request(blk, RequestType::Discard, sector, N as u32, false)?;
        if discard == VIRTIO_BLK_S_OK {
            crate::println!("# read_only: DISCARD answered OK (ignored, data must be intact)");
        }
        let (status, after) = single(blk, RequestType::In, sector, N * SECTOR_SIZE)?;
        expect_status("read", status, VIRTIO_BLK_S_OK)?;
        // SAFETY: the requests completed.
        let (a, b) = unsafe {
            (
                dma::bytes(before, N * SECTOR_SIZE),
                dma::bytes(after, N * SECTOR_SIZE),
            )
        };
        if let Some(i) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
            fail!(
                "sector {} byte {} changed on a read-only disk",
                sector + (i / SECTOR_SIZE) as u64,
                i % SECTOR_SIZE
            );
        }
    }
    Ok(())
}

fn virtio_drivers(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    foreign::cross_check(blk, env.cam, env.bdf, env.ram_end, env.seed)
}

/// Data from an earlier pattern generation must not pass as the current one.
fn seed_stale(blk: &mut Blk, env: &Env<'_>) -> Result<(), Why> {
    let at = middle_sector(blk, env, 8, 16);
    let list = [Extent {
        sector: at,
        sectors: 16,
    }];
    pipeline::run(blk, pass(env.seed, 1, 16), 1, &mut from_list(&list))?;
    let other = Pass {
        op: Op::Verify,
        ..pass(mix64(env.seed), 1, 16)
    };
    if pipeline::run(blk, other, 1, &mut from_list(&list)).is_ok() {
        fail!("data written with one seed verified under another");
    }
    Ok(())
}
