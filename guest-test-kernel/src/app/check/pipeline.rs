//! Many pattern writes or verified reads in flight at once: the engine of the data tests.
//!
//! Every written sector holds `pattern::fill(seed, sector)`, which depends on the sector only,
//! so overlapping writes in flight still agree on the data; reads verify every byte.

use blk_proto::{RequestType, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, Rng, SECTOR_SIZE};

use super::report::{fail, Why};
use crate::app::driver::blk::{Blk, Done, Request, MAX_SEGS};
use crate::app::driver::dma;

/// A run of sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First sector.
    pub sector: u64,
    /// Number of sectors (at least 1).
    pub sectors: u32,
}

/// What to do with each extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write the pattern of `seed`.
    Write,
    /// Read and check the pattern of `seed`.
    Verify,
    /// Read and check for zeros.
    VerifyZero,
    /// Read and hand the data to [`run_reads`]' sink.
    Read,
}

/// How each request's buffer is cut into data segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// As few segments as the device's `size_max` allows.
    Whole,
    /// A random number of random-length segments (any byte length), from this seed.
    Random(u64),
}

/// Parameters of one [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Operation.
    pub op: Op,
    /// Pattern seed.
    pub seed: u64,
    /// Requests kept in flight (capped by the rings).
    pub qd: usize,
    /// Largest extent, in sectors (sizes the buffers).
    pub max_sectors: u32,
    /// Segment cutting.
    pub split: Split,
    /// Use indirect descriptor tables.
    pub indirect: bool,
}

/// What [`run`] observed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Requests completed.
    pub requests: usize,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Bytes moved.
    pub bytes: u64,
}

const MAX_SLOTS: usize = 256;

/// Receives each [`Op::Read`]: `(request number, extent, data)`.
pub type Sink<'a> = dyn FnMut(usize, Extent, &[u8]) -> Result<(), Why> + 'a;

/// Runs `pass.op` over `count` extents produced by `next`, `pass.qd` at a time.
pub fn run(
    blk: &mut Blk,
    pass: Pass,
    count: usize,
    next: &mut dyn FnMut() -> Extent,
) -> Result<Stats, Why> {
    run_reads(blk, pass, count, next, &mut |_, _, _| Ok(()))
}

/// Like [`run`]; with [`Op::Read`], `sink(request number, extent, data)` checks each read.
pub fn run_reads(
    blk: &mut Blk,
    pass: Pass,
    count: usize,
    next: &mut dyn FnMut() -> Extent,
    sink: &mut Sink<'_>,
) -> Result<Stats, Why> {
    let mark = dma::mark();
    let r = run_inner(blk, pass, count, next, sink);
    dma::release(mark);
    r
}

fn run_inner(
    blk: &mut Blk,
    pass: Pass,
    count: usize,
    next: &mut dyn FnMut() -> Extent,
    sink: &mut Sink<'_>,
) -> Result<Stats, Why> {
    // Each direct request takes its segments plus header and status descriptors.
    let max_bytes = u64::from(pass.max_sectors) * SECTOR_SIZE as u64;
    let segs = match pass.split {
        Split::Whole => max_bytes.div_ceil(u64::from(blk.max_segment_bytes())) as usize,
        Split::Random(_) => blk.max_segments(),
    };
    let per_req = if pass.indirect { 1 } else { segs + 2 };
    let ring_room = (0..blk.num_queues())
        .map(|q| usize::from(blk.queue_size(q)) / per_req.min(usize::from(blk.queue_size(q))))
        .sum::<usize>();
    let slots = pass
        .qd
        .min(MAX_SLOTS)
        .min(ring_room.max(1))
        .min(count.max(1));
    let buf_bytes = u64::from(pass.max_sectors) * SECTOR_SIZE as u64;
    if dma::available() < buf_bytes * slots as u64 + (1 << 20) {
        fail!("not enough DMA memory for {slots} buffers of {buf_bytes} bytes");
    }
    let mut bufs = [0u64; MAX_SLOTS];
    for b in bufs.iter_mut().take(slots) {
        *b = dma::alloc(buf_bytes, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
    }
    let mut seq_of_slot = [0usize; MAX_SLOTS];
    let mut extents = [Extent {
        sector: 0,
        sectors: 0,
    }; MAX_SLOTS];
    let mut split_rng = match pass.split {
        Split::Whole => None,
        Split::Random(seed) => Some(Rng::new(seed)),
    };
    let mut stats = Stats::default();
    let mut issued = 0;
    let mut free = [0usize; MAX_SLOTS];
    let mut nfree = 0;
    for s in (0..slots).rev() {
        free[nfree] = s;
        nfree += 1;
    }
    let mut done = [(
        0usize,
        Done {
            tag: 0,
            status: 0,
            len: 0,
        },
    ); MAX_SLOTS];
    while stats.requests < count {
        // Fill every free slot, then kick each queue once.
        while issued < count && nfree > 0 {
            nfree -= 1;
            let slot = free[nfree];
            let ext = next();
            if ext.sectors == 0 || ext.sectors > pass.max_sectors {
                fail!("extent of {} sectors does not fit the buffers", ext.sectors);
            }
            extents[slot] = ext;
            seq_of_slot[slot] = issued;
            let bytes = ext.sectors as usize * SECTOR_SIZE;
            // SAFETY: slot buffers are ours while the slot is not in flight (it is free here).
            let buf = unsafe { dma::bytes(bufs[slot], bytes) };
            match pass.op {
                Op::Write => pattern::fill(buf, ext.sector, pass.seed),
                // Poison, so a read that transfers nothing cannot pass.
                Op::Verify | Op::VerifyZero | Op::Read => buf.fill(0xa5),
            }
            let mut segs = [(0u64, 0u32); MAX_SEGS];
            let nsegs = cut(
                bufs[slot],
                bytes as u64,
                blk.max_segments(),
                blk.max_segment_bytes(),
                split_rng.as_mut(),
                &mut segs,
            );
            if nsegs > MAX_SEGS {
                fail!(
                    "{bytes} bytes need {nsegs} segments of at most {} bytes",
                    blk.max_segment_bytes()
                );
            }
            let kind = if pass.op == Op::Write {
                RequestType::Out
            } else {
                RequestType::In
            };
            let req = Request {
                kind,
                sector: ext.sector,
                data: &segs[..nsegs],
                indirect: pass.indirect,
                tag: slot as u64,
            };
            blk.submit(slot % blk.num_queues(), &req)?;
            issued += 1;
        }
        stats.max_in_flight = stats.max_in_flight.max(blk.total_in_flight());
        for q in 0..blk.num_queues() {
            blk.kick(q);
        }
        let mut n = 0;
        blk.wait_any(&mut |q, d| {
            if let Some(e) = done.get_mut(n) {
                *e = (q, d);
                n += 1;
            }
        })?;
        if n == 0 {
            fail!("{} requests never completed", issued - stats.requests);
        }
        for &(_, d) in done.iter().take(n) {
            let slot = d.tag as usize;
            let Some(ext) = extents.get(slot).copied() else {
                fail!("completion with unknown tag {}", d.tag)
            };
            if d.status != VIRTIO_BLK_S_OK {
                fail!(
                    "{:?} of sectors {}+{} returned status {}",
                    pass.op,
                    ext.sector,
                    ext.sectors,
                    d.status
                );
            }
            let bytes = ext.sectors as usize * SECTOR_SIZE;
            // 2.7.8: `len` counts the bytes the device wrote: the data of a read plus the
            // status byte, and only the status byte of a write.
            let written = if pass.op == Op::Write {
                1
            } else {
                bytes as u64 + 1
            };
            if u64::from(d.len) != written {
                fail!(
                    "{:?} of {}+{}: used len {}, expected {written}",
                    pass.op,
                    ext.sector,
                    ext.sectors,
                    d.len
                );
            }
            // SAFETY: the request using this buffer has completed.
            let buf = unsafe { dma::bytes(bufs[slot], bytes) };
            let checked = match pass.op {
                Op::Write => Ok(()),
                Op::Verify => pattern::verify(buf, ext.sector, pass.seed),
                Op::VerifyZero => pattern::verify_zero(buf, ext.sector),
                Op::Read => {
                    sink(seq_of_slot[slot], ext, buf)?;
                    Ok(())
                }
            };
            if let Err(m) = checked {
                fail!("{:?} of {}+{}: {m}", pass.op, ext.sector, ext.sectors);
            }
            stats.requests += 1;
            stats.bytes += bytes as u64;
            free[nfree] = slot;
            nfree += 1;
        }
    }
    Ok(stats)
}

/// Cuts `[addr, addr + len)` into at most `max_segs` segments of at most `max_seg` bytes;
/// returns how many were written to `out`.
pub fn cut(
    addr: u64,
    len: u64,
    max_segs: usize,
    max_seg: u32,
    rng: Option<&mut Rng>,
    out: &mut [(u64, u32); MAX_SEGS],
) -> usize {
    let max_segs = max_segs.clamp(1, MAX_SEGS);
    let max_seg = u64::from(max_seg);
    let whole_pieces = len.div_ceil(max_seg) as usize;
    let pieces = match rng {
        Some(rng) if len > 1 => {
            let want = 1 + rng.below(max_segs.min(len as usize) as u64) as usize;
            let k = want.max(whole_pieces).min(max_segs);
            let mut off = 0u64;
            for (i, o) in out.iter_mut().enumerate().take(k) {
                let left = len - off;
                let others = (k - i - 1) as u64;
                let seg = if others == 0 {
                    left
                } else {
                    let most = (left - others)
                        .min(max_seg)
                        .min(2 * left / (others + 1) + 1);
                    1 + rng.below(most)
                };
                *o = (addr + off, seg as u32);
                off += seg;
            }
            if off == len && out.iter().take(k).all(|s| u64::from(s.1) <= max_seg) {
                return k;
            }
            whole_pieces
        }
        _ => whole_pieces,
    };
    let mut off = 0;
    for o in out.iter_mut().take(pieces) {
        let seg = (len - off).min(max_seg);
        *o = (addr + off, seg as u32);
        off += seg;
    }
    pieces
}

/// `count` random extents of 1..=`max_sectors` sectors inside `capacity`.
pub fn random_extents(seed: u64, capacity: u64, max_sectors: u32) -> impl FnMut() -> Extent {
    let mut rng = Rng::new(seed);
    move || {
        let sectors = 1 + rng.below(u64::from(max_sectors).min(capacity)) as u32;
        let sector = rng.below(capacity - u64::from(sectors) + 1);
        Extent { sector, sectors }
    }
}
