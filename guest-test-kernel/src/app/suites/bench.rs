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
/// Disks one benchmark drives at once (`disks=`).
pub const MAX_DISKS: usize = 2;

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

/// Runs the benchmark the options ask for on every disk of `blks` at once (`qd` requests in
/// flight on each) and prints a `RESULT` line per disk, tagged with its index. More than one
/// disk needs `completion=poll`: the loop polls every disk's rings in turn.
pub fn run(
    blks: &mut [Blk],
    opts: &Options<'_>,
    workload: Workload,
    seed: u64,
    tsc_hz: u64,
) -> Result<(), Why> {
    let ndisks = blks.len();
    let Some(first) = blks.first() else {
        fail!("no disk to run the benchmark on");
    };
    if ndisks > MAX_DISKS {
        fail!("disks={ndisks}: at most {MAX_DISKS}");
    }
    if ndisks > 1 && first.completion() != guest_test_kernel::Completion::Poll {
        fail!("disks={ndisks} needs completion=poll");
    }
    let bs = u64::from(opts.bs);
    let sectors = bs / SECTOR_SIZE as u64;
    if let Some(small) = blks.iter().find(|b| sectors == 0 || sectors > b.capacity()) {
        fail!(
            "bs={bs} does not fit a disk of {} sectors",
            small.capacity()
        );
    }
    let mut segs = [(0u64, 0u32); MAX_SEGS];
    let nsegs = cut(
        0,
        bs,
        first.max_segments(),
        first.max_segment_bytes(),
        None,
        &mut segs,
    );
    if nsegs > first.max_segments() {
        fail!(
            "bs={bs} needs {nsegs} segments, the device allows {}",
            first.max_segments()
        );
    }
    // Direct chains take nsegs + 2 descriptors; use indirect tables when that limits qd.
    let direct_room: usize = (0..first.num_queues())
        .map(|q| usize::from(first.queue_size(q)) / (nsegs + 2))
        .sum();
    let want = (opts.qd as usize).min(MAX_SLOTS / ndisks);
    let indirect = want > direct_room && first.has(VIRTIO_RING_F_INDIRECT_DESC);
    let room = if indirect {
        (0..first.num_queues())
            .map(|q| usize::from(first.queue_size(q)))
            .sum()
    } else {
        direct_room
    };
    let qd = want.min(room).max(1);
    if qd < opts.qd as usize {
        crate::println!("# bench: qd {} capped to {qd} by the rings", opts.qd);
    }
    let slots = qd * ndisks;
    let mut bufs = [0u64; MAX_SLOTS];
    for (i, b) in bufs.iter_mut().take(slots).enumerate() {
        *b = dma::alloc(bs, 4096).ok_or(Why::new(format_args!(
            "out of DMA memory for {slots} x {bs} bytes"
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
    let mut offsets: [Offsets; MAX_DISKS] = core::array::from_fn(|d| Offsets {
        workload,
        rng: Rng::new(seed ^ d as u64),
        next_seq: 0,
        sectors,
        capacity: blks.get(d).map_or(0, Blk::capacity),
    });
    let mut submitted_at = [0u64; MAX_SLOTS];
    let mut hists: [Histogram; MAX_DISKS] = core::array::from_fn(|_| Histogram::new());
    let mut first_sec = [0u64; MAX_DISKS];
    let mut last = [0u64; MAX_DISKS];
    let mut errors = 0u64;

    // Slot `s` belongs to disk `s / qd`.
    let mut submit = |blks: &mut [Blk],
                      slot: usize,
                      now: u64,
                      submitted_at: &mut [u64; MAX_SLOTS]|
     -> Result<(), Why> {
        let disk = slot / qd;
        let Some(blk) = blks.get_mut(disk) else {
            fail!("slot {slot} has no disk");
        };
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
            sector: offsets[disk].next(),
            data: &s[..n.min(MAX_SEGS)],
            indirect,
            tag: slot as u64,
        };
        let nq = blk.num_queues();
        blk.submit(slot % qd % nq, &req)?;
        submitted_at[slot] = now;
        Ok(())
    };
    let kick_all = |blks: &mut [Blk]| {
        for blk in blks.iter_mut() {
            for q in 0..blk.num_queues() {
                blk.kick(q);
            }
        }
    };

    // The host measures its CPU time between this line and the RESULT line.
    crate::println!("# bench: start");
    let start = rdtsc();
    let end = start + u64::from(opts.secs) * tsc_hz;
    for slot in 0..slots {
        submit(blks, slot, rdtsc(), &mut submitted_at)?;
    }
    kick_all(blks);
    let mut done = [Done {
        tag: 0,
        status: 0,
        len: 0,
    }; MAX_SLOTS];
    let deadline_secs = u64::from(opts.secs) + 30;
    loop {
        let mut n = 0;
        let mut collect = |_, d| {
            if let Some(e) = done.get_mut(n) {
                *e = d;
                n += 1;
            }
        };
        if let [blk] = blks {
            blk.wait_any(&mut collect)?;
        } else {
            let mut in_flight = 0;
            for blk in blks.iter_mut() {
                for q in 0..blk.num_queues() {
                    blk.poll(q, &mut |d| collect(q, d))?;
                }
                in_flight += blk.total_in_flight();
            }
            if n == 0 && in_flight > 0 {
                if rdtsc() > start + deadline_secs * tsc_hz {
                    fail!("{in_flight} requests never completed");
                }
                core::hint::spin_loop();
                continue;
            }
        }
        if n == 0 {
            break; // nothing in flight: drained
        }
        let now = rdtsc();
        for d in done.iter().take(n) {
            let slot = d.tag as usize;
            let Some(t) = submitted_at.get(slot) else {
                fail!("completion with unknown tag {}", d.tag)
            };
            let disk = slot / qd;
            hists[disk].record(now.saturating_sub(*t));
            last[disk] = now;
            if now < start + tsc_hz {
                first_sec[disk] += 1;
            }
            if d.status != VIRTIO_BLK_S_OK {
                errors += 1;
            }
            if now < end {
                submit(blks, slot, now, &mut submitted_at)?;
            }
        }
        kick_all(blks);
    }
    let us = |ticks: u64| ticks as f64 * 1e6 / tsc_hz as f64;
    let mut total = 0;
    for (disk, blk) in blks.iter().enumerate() {
        let hist = &hists[disk];
        total += hist.count();
        let secs = last[disk].saturating_sub(start).max(1) as f64 / tsc_hz as f64;
        let iops = hist.count() as f64 / secs;
        crate::println!(
            "RESULT {{\"workload\":\"{}\",\"bs\":{},\"qd\":{},\"secs\":{},\"ios\":{},\"iops\":{:.0},\"mib_s\":{:.1},\"lat_p50_us\":{:.1},\"lat_p99_us\":{:.1},\"lat_max_us\":{:.1},\"completion\":\"{}\",\"features\":\"{}\",\"kick\":\"{}\",\"disk\":{disk},\"ios_1s\":{},\"elapsed_s\":{:.3}}}",
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
            first_sec[disk],
            secs,
        );
    }
    if errors > 0 {
        fail!("{errors} of {total} requests failed");
    }
    Ok(())
}
