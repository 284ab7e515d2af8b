//! The benchmark: `qd` requests of `bs` bytes kept in flight for `secs` seconds, with
//! per-request latency from the TSC, ending in one `RESULT {json}` line.

use blk_proto::features::VIRTIO_RING_F_INDIRECT_DESC;
use blk_proto::{RequestType, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, Rng, SECTOR_SIZE};
use guest_test_kernel::{Histogram, Options, Workload};

use crate::app::check::pipeline::cut;
use crate::app::check::report::{fail, Why};
use crate::app::driver::blk::{Blk, Done, Request, MAX_SEGS};
use crate::app::driver::dma;
use crate::arch::tsc::rdtsc;

const MAX_SLOTS: usize = 256;

/// Where the next request goes.
struct Offsets {
    workload: Workload,
    rng: Rng,
    next_seq: u64,
    sectors: u64,
    capacity: u64,
}

impl Offsets {
    fn next(&mut self) -> u64 {
        if self.workload.is_random() {
            return self.rng.below(self.capacity / self.sectors) * self.sectors;
        }
        if self.next_seq + self.sectors > self.capacity {
            self.next_seq = 0;
        }
        let s = self.next_seq;
        self.next_seq += self.sectors;
        s
    }
}

/// Runs the benchmark the options ask for and prints its `RESULT` line.
pub fn run(
    blk: &mut Blk,
    opts: &Options<'_>,
    workload: Workload,
    seed: u64,
    tsc_hz: u64,
) -> Result<(), Why> {
    let bs = u64::from(opts.bs);
    let sectors = bs / SECTOR_SIZE as u64;
    if sectors == 0 || sectors > blk.capacity() {
        fail!("bs={bs} does not fit a disk of {} sectors", blk.capacity());
    }
    let mut segs = [(0u64, 0u32); MAX_SEGS];
    let nsegs = cut(
        0,
        bs,
        blk.max_segments(),
        blk.max_segment_bytes(),
        None,
        &mut segs,
    );
    if nsegs > blk.max_segments() {
        fail!(
            "bs={bs} needs {nsegs} segments, the device allows {}",
            blk.max_segments()
        );
    }
    // Direct chains take nsegs + 2 descriptors; use indirect tables when that limits qd.
    let direct_room: usize = (0..blk.num_queues())
        .map(|q| usize::from(blk.queue_size(q)) / (nsegs + 2))
        .sum();
    let want = (opts.qd as usize).min(MAX_SLOTS);
    let indirect = want > direct_room && blk.has(VIRTIO_RING_F_INDIRECT_DESC);
    let room = if indirect {
        (0..blk.num_queues())
            .map(|q| usize::from(blk.queue_size(q)))
            .sum()
    } else {
        direct_room
    };
    let qd = want.min(room).max(1);
    if qd < opts.qd as usize {
        crate::println!("# bench: qd {} capped to {qd} by the rings", opts.qd);
    }
    let mut bufs = [0u64; MAX_SLOTS];
    for (i, b) in bufs.iter_mut().take(qd).enumerate() {
        *b = dma::alloc(bs, 4096).ok_or(Why::new(format_args!(
            "out of DMA memory for {qd} x {bs} bytes"
        )))?;
        if workload.is_write() {
            // SAFETY: freshly allocated; no request uses it yet.
            pattern::fill(unsafe { dma::bytes(*b, bs as usize) }, i as u64, seed);
        }
    }
    let kind = if workload.is_write() {
        RequestType::Out
    } else {
        RequestType::In
    };
    let mut offsets = Offsets {
        workload,
        rng: Rng::new(seed),
        next_seq: 0,
        sectors,
        capacity: blk.capacity(),
    };
    let mut submitted_at = [0u64; MAX_SLOTS];
    let mut hist = Histogram::new();
    let mut errors = 0u64;
    let nq = blk.num_queues();

    let mut submit = |blk: &mut Blk,
                      slot: usize,
                      now: u64,
                      submitted_at: &mut [u64; MAX_SLOTS]|
     -> Result<(), Why> {
        let mut s = [(0u64, 0u32); MAX_SEGS];
        let n = cut(
            bufs[slot],
            bs,
            blk.max_segments(),
            blk.max_segment_bytes(),
            None,
            &mut s,
        );
        let req = Request {
            kind,
            sector: offsets.next(),
            data: &s[..n.min(MAX_SEGS)],
            indirect,
            tag: slot as u64,
        };
        blk.submit(slot % nq, &req)?;
        submitted_at[slot] = now;
        Ok(())
    };

    // The host measures its CPU time between this line and the RESULT line.
    crate::println!("# bench: start");
    let start = rdtsc();
    let end = start + u64::from(opts.secs) * tsc_hz;
    for slot in 0..qd {
        submit(blk, slot, rdtsc(), &mut submitted_at)?;
    }
    for q in 0..nq {
        blk.kick(q);
    }
    let mut done = [Done {
        tag: 0,
        status: 0,
        len: 0,
    }; MAX_SLOTS];
    let mut last = start;
    loop {
        let mut n = 0;
        blk.wait_any(&mut |_, d| {
            if let Some(e) = done.get_mut(n) {
                *e = d;
                n += 1;
            }
        })?;
        if n == 0 {
            break; // nothing in flight: drained
        }
        let now = rdtsc();
        last = now;
        for d in done.iter().take(n) {
            let slot = d.tag as usize;
            let Some(t) = submitted_at.get(slot) else {
                fail!("completion with unknown tag {}", d.tag)
            };
            hist.record(now.saturating_sub(*t));
            if d.status != VIRTIO_BLK_S_OK {
                errors += 1;
            }
            if now < end {
                submit(blk, slot, now, &mut submitted_at)?;
            }
        }
        for q in 0..nq {
            blk.kick(q);
        }
    }
    let secs = (last - start) as f64 / tsc_hz as f64;
    let iops = hist.count() as f64 / secs;
    let us = |ticks: u64| ticks as f64 * 1e6 / tsc_hz as f64;
    crate::println!(
        "RESULT {{\"workload\":\"{}\",\"bs\":{},\"qd\":{},\"secs\":{},\"ios\":{},\"iops\":{:.0},\"mib_s\":{:.1},\"lat_p50_us\":{:.1},\"lat_p99_us\":{:.1},\"lat_max_us\":{:.1},\"completion\":\"{}\",\"features\":\"{}\",\"kick\":\"{}\"}}",
        workload.name(),
        bs,
        qd,
        opts.secs,
        hist.count(),
        iops,
        iops * bs as f64 / (1024.0 * 1024.0),
        us(hist.percentile(50.0)),
        us(hist.percentile(99.0)),
        us(hist.max()),
        blk.completion().name(),
        blk.driver().features.name(),
        blk.driver().kick.name(),
    );
    if errors > 0 {
        fail!("{errors} of {} requests failed", hist.count());
    }
    Ok(())
}
