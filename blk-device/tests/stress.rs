//! Many requests in flight on several queues at once, in every mode: a driver per queue (the
//! test thread) keeps reads and writes of random sizes and 1 to 4 segments going through the
//! real serving threads (and pool workers) on io_uring engines, while another thread keeps
//! evicting the image from the page cache so that completions arrive late and out of order,
//! and checks every completion: used length, status byte, data against a model image, and
//! that each head comes back exactly once.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_device::mode::IoMode;
use blk_proto::{OutHdr, VIRTIO_BLK_S_OK};
use common::{Harness, Setup};
use virtqueue_core::GuestMemory;
use vm_memory::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
/// Requests each queue keeps in flight (each owns a disk region and a data buffer).
const SLOTS: u64 = 48;
/// Sectors per slot region (and data buffer size / 512).
const REGION_SECTORS: u64 = 256;
const REGION_BYTES: u64 = REGION_SECTORS * 512;
const HDRS: u64 = 0x20_0000;
const BUFS: u64 = 0x40_0000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: u64,
    write: bool,
    sector: u64,
    len: u64,
}

fn buf_addr(q: u64, slot: u64) -> u64 {
    BUFS + (q * SLOTS + slot) * REGION_BYTES
}

fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read(addr, &mut v).expect("read");
    v
}

/// Runs `total` requests spread over `queues` queues served in `mode` (`workers` pool threads).
fn run(mode: IoMode, queues: u16, workers: usize, poll_us: u32, total: usize, seed: u64) {
    run_with(mode, queues, (workers, 0), poll_us, total, seed)
}

/// As [`run`], the `workers` mode's queue threads keeping `handoff` requests in flight
/// themselves before handing more to the pool.
fn run_with(
    mode: IoMode,
    queues: u16,
    (workers, handoff): (usize, usize),
    poll_us: u32,
    total: usize,
    seed: u64,
) {
    let nq = u64::from(queues);
    let disk_bytes = nq * SLOTS * REGION_BYTES;
    let mut rng = Rng(seed | 1);
    let mut model: Vec<u8> = (0..disk_bytes).map(|_| rng.next() as u8).collect();
    let mut h = Harness::new(Setup {
        mode,
        queues,
        queue_size: QUEUE_SIZE,
        event_idx: true,
        mem_size: (BUFS + disk_bytes + 0x10_0000) as usize,
        image: model.clone(),
        workers,
        handoff_depth: handoff,
        poll_us,
        ..Setup::new(mode)
    });
    let mem = h.mem.clone();
    let path = h.path.clone();
    // Keeps evicting the image from the page cache, so that reads miss it and io_uring
    // completes them late and out of order from its async workers, as under the memory
    // pressure of a loaded machine.
    let evicting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let evictor = {
        let file = std::fs::File::open(&path).expect("image");
        let evicting = evicting.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            while evicting.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = file.sync_data();
                // SAFETY: advice on our own descriptor; no memory is passed.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };

    // Per queue: free slots, and the request of each head in flight.
    let mut free: Vec<Vec<u64>> = (0..nq).map(|_| (0..SLOTS).collect()).collect();
    let mut flight: Vec<HashMap<u16, Pending>> = (0..nq).map(|_| HashMap::new()).collect();
    let (mut issued, mut done) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    let mut failures = Vec::new();
    while done < total && failures.len() < 8 {
        for q in 0..nq as usize {
            let mut added = false;
            while issued < total {
                let Some(slot) = free[q].pop() else { break };
                let write = rng.below(2) == 0;
                let sectors = 1 + rng.below(REGION_SECTORS);
                let first = rng.below(REGION_SECTORS - sectors + 1);
                let sector = (q as u64 * SLOTS + slot) * REGION_SECTORS + first;
                let len = sectors * 512;
                let buf = buf_addr(q as u64, slot);
                if write {
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    mem.write(buf, &data).expect("data");
                } else {
                    mem.write(buf, &vec![0xa5; len as usize]).expect("poison");
                }
                // 1 to 4 segments.
                let nseg = 1 + rng.below(4.min(sectors));
                let mut segs = Vec::new();
                let mut at = 0;
                for i in 0..nseg {
                    let left = len - at;
                    let seg = if i + 1 == nseg {
                        left
                    } else {
                        512 * (1 + rng.below(left / 512 - (nseg - i - 1)))
                    };
                    segs.push((buf + at, seg as u32));
                    at += seg;
                }
                let hdr = HDRS + (q as u64 * SLOTS + slot) * 32;
                let status = hdr + 16;
                let out = if write {
                    OutHdr::write(sector)
                } else {
                    OutHdr::read(sector)
                };
                mem.write(hdr, &out.to_bytes()).expect("header");
                mem.write(status, &[0xee]).expect("status");
                let mut readable = vec![(hdr, 16)];
                let mut writable = Vec::new();
                if write {
                    readable.extend_from_slice(&segs);
                } else {
                    writable.extend_from_slice(&segs);
                }
                writable.push((status, 1));
                let head = h.drivers[q].add(&mem, &readable, &writable).expect("add");
                let p = Pending {
                    slot,
                    write,
                    sector,
                    len,
                };
                if let Some(old) = flight[q].insert(head, p) {
                    failures.push(format!("q{q}: head {head} reused while {old:?} in flight"));
                }
                if write {
                    let at = sector as usize * 512;
                    let data = guest_bytes(&mem, buf, len as usize);
                    model[at..at + len as usize].copy_from_slice(&data);
                }
                issued += 1;
                added = true;
            }
            if added && h.drivers[q].should_kick(&mem) {
                h.kick(q as u16);
            }
        }
        let mut progress = false;
        for q in 0..nq as usize {
            while let Some((head, used_len)) = h.drivers[q].pop_used(&mem).expect("used ring") {
                progress = true;
                done += 1;
                let Some(p) = flight[q].remove(&head) else {
                    failures.push(format!(
                        "q{q}: head {head} completed but not in flight (len {used_len})"
                    ));
                    continue;
                };
                let status = guest_bytes(&mem, HDRS + (q as u64 * SLOTS + p.slot) * 32 + 16, 1)[0];
                let want_len = if p.write { 1 } else { p.len + 1 };
                if u64::from(used_len) != want_len || status != VIRTIO_BLK_S_OK {
                    failures.push(format!(
                        "q{q}: {p:?} head {head}: used len {used_len} (want {want_len}), status {status}"
                    ));
                } else if !p.write {
                    let at = p.sector as usize * 512;
                    let got = guest_bytes(&mem, buf_addr(q as u64, p.slot), p.len as usize);
                    if got[..] != model[at..at + p.len as usize] {
                        failures.push(format!("q{q}: {p:?} head {head}: wrong data"));
                    }
                }
                free[q].push(p.slot);
            }
        }
        if progress {
            last_progress = Instant::now();
        } else {
            if last_progress.elapsed() > Duration::from_secs(10) {
                let left: Vec<usize> = flight.iter().map(HashMap::len).collect();
                failures.push(format!(
                    "no completion for 10 s; in flight per queue {left:?}"
                ));
                break;
            }
            std::thread::yield_now();
        }
    }
    evicting.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = evictor.join();
    h.stop();
    assert!(
        failures.is_empty(),
        "{mode:?}, {queues} queues, {workers} workers, poll {poll_us} us, seed {seed:#x}: {} of {total} done; failures:\n{}",
        done,
        failures.join("\n")
    );
    assert!(!h.dev.health().take_needs_reset(), "no ring failure");
    assert_eq!(
        std::fs::read(&path).expect("image"),
        model,
        "image matches the model"
    );
}

#[test]
fn workers_two_queues_one_worker_complete_every_request_correctly() {
    run(IoMode::Workers, 2, 1, 0, 10_000, 0x5eed_0001);
}

#[test]
fn workers_two_queues_two_workers_complete_every_request_correctly() {
    run(IoMode::Workers, 2, 2, 10, 10_000, 0x5eed_0002);
}

#[test]
fn workers_one_queue_two_workers_complete_every_request_correctly() {
    run(IoMode::Workers, 1, 2, 10, 5_000, 0x5eed_0003);
}

#[test]
fn workers_handing_off_beyond_four_in_flight_complete_every_request_correctly() {
    run_with(IoMode::Workers, 2, (2, 4), 10, 8_000, 0x5eed_0007);
}

#[test]
fn workers_with_no_pool_complete_every_request_correctly() {
    run_with(IoMode::Workers, 2, (0, 0), 10, 5_000, 0x5eed_0008);
}

#[test]
fn dataplane_two_queues_complete_every_request_correctly() {
    run(IoMode::Dataplane, 2, 0, 10, 5_000, 0x5eed_0004);
}

#[test]
fn iothread_two_queues_complete_every_request_correctly() {
    run(IoMode::Iothread, 2, 0, 0, 5_000, 0x5eed_0005);
}

#[test]
fn vcpu_two_queues_complete_every_request_correctly() {
    run(IoMode::Vcpu, 2, 0, 0, 2_000, 0x5eed_0006);
}
