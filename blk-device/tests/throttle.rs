//! Throttled queues in every I/O mode, on real (short) limits: requests wait in the ring, none
//! is lost or let past a FLUSH, and the rate holds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_device::throttle::{Clock, Limits, MonotonicClock, ThrottleGroup};
use blk_device::trace::Stage;
use blk_proto::{OutHdr, VIRTIO_BLK_S_OK};
use common::{Harness, Setup, DATA, HDR, MODES, STATUS};
use virtqueue_core::GuestMemory;

const IOPS: u64 = 200;
const REQUESTS: u64 = 21;

/// Publishes `REQUESTS` one-sector reads with a FLUSH in the middle, kicks once, and returns
/// the used heads in completion order with the time they took.
fn run_batch(h: &mut Harness) -> (Vec<u16>, Vec<u16>, Duration) {
    let read = HDR;
    h.mem
        .write(read, &OutHdr::read(1).to_bytes())
        .expect("header");
    let flush = HDR + 0x40;
    h.mem
        .write(flush, &OutHdr::flush().to_bytes())
        .expect("header");
    let mut heads = Vec::new();
    for i in 0..REQUESTS {
        let hdr = if i == REQUESTS / 2 { flush } else { read };
        let data: &[(u64, u32)] = if i == REQUESTS / 2 {
            &[(STATUS + i, 1)]
        } else {
            &[(DATA + i * 0x1000, 512), (STATUS + i, 1)]
        };
        heads.push(h.drivers[0].add(&h.mem, &[(hdr, 16)], data).expect("add"));
    }
    let start = Instant::now();
    h.kick(0);
    std::thread::sleep(Duration::from_millis(1));
    // Waiting requests stay in the ring: at most one admitted and one parked were parsed.
    let parsed = h.dev.metrics().requests();
    assert!(
        parsed <= 3,
        "{:?}: {parsed} requests taken from the ring",
        h.mode
    );
    let mut got = Vec::new();
    while got.len() < heads.len() {
        got.push(h.wait_used(0).0);
    }
    let took = start.elapsed();
    for i in 0..REQUESTS {
        assert_eq!(h.bytes(STATUS + i, 1)[0], VIRTIO_BLK_S_OK);
    }
    (heads, got, took)
}

/// The heads in the order the serving thread let them go: handed to a worker or submitted to
/// the engine, whichever it stamped first.
fn admitted(h: &Harness) -> Vec<u16> {
    let mut seen = std::collections::HashSet::new();
    h.stamps
        .as_ref()
        .expect("trace on")
        .snapshot()
        .into_iter()
        .filter(|s| {
            [Stage::HandedToWorker as u8, Stage::BackendSubmit as u8].contains(&s.stage)
                && seen.insert(s.head)
        })
        .map(|s| s.head)
        .collect()
}

#[test]
fn throttled_queue_holds_its_rate_in_every_mode() {
    for mode in MODES {
        let mut h = Harness::new(Setup {
            queue_size: 64,
            extra: ",iops=200,iops-burst=1",
            trace: true,
            ..Setup::new(mode)
        });
        let (heads, got, took) = run_batch(&mut h);
        // One token at the start, then one every 1/IOPS s.
        let floor = Duration::from_millis((REQUESTS - 1) * 1000 / IOPS);
        assert!(
            took + Duration::from_millis(2) >= floor,
            "{mode:?}: {took:?} < {floor:?}"
        );
        assert!(took < floor * 4, "{mode:?}: {took:?}, far above {floor:?}");
        // Every request completed, once.
        let mut done = got.clone();
        done.sort_unstable();
        let mut want = heads.clone();
        want.sort_unstable();
        assert_eq!(done, want, "{mode:?}: lost or doubled");
        // The throttle admits in ring order, so nothing passes the FLUSH on its way to the
        // backend. Completions may still cross it: a FLUSH orders nothing that completes
        // after it ("Block Device / Device Operation", device requirements: it makes stable
        // the writes that completed before it), and a slow fdatasync lets the next read
        // finish first.
        assert_eq!(admitted(&h), heads, "{mode:?}: admitted out of ring order");
        let (n, ns) = h.dev.metrics().throttled();
        assert!(
            (REQUESTS - 2..=REQUESTS).contains(&n) && ns > 0,
            "{mode:?}: throttled {n} for {ns} ns"
        );
    }
}

#[test]
fn unlimited_disk_is_not_held_back() {
    for mode in MODES {
        let mut h = Harness::new(Setup {
            queue_size: 64,
            ..Setup::new(mode)
        });
        let read = h.header(OutHdr::read(1));
        for i in 0..REQUESTS {
            h.drivers[0]
                .add(
                    &h.mem,
                    &[read],
                    &[(DATA + i * 0x1000, 512), (STATUS + i, 1)],
                )
                .expect("add");
        }
        h.kick(0);
        for _ in 0..REQUESTS {
            h.wait_used(0);
        }
        assert_eq!(h.dev.metrics().throttled(), (0, 0), "{mode:?}");
    }
}

#[test]
fn two_disks_of_a_group_share_its_rate() {
    for mode in MODES {
        let limits = Limits {
            iops: Some(IOPS),
            iops_burst: Some(1),
            ..Limits::default()
        };
        let group = Arc::new(ThrottleGroup::new("g", &limits, MonotonicClock.now_ns()));
        let setup = || Setup {
            queue_size: 64,
            extra: ",group=g",
            group: Some(group.clone()),
            ..Setup::new(mode)
        };
        let (mut a, mut b) = (Harness::new(setup()), Harness::new(setup()));
        let (tx, rx) = std::sync::mpsc::channel();
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(run_batch(&mut b).2).expect("send"));
            run_batch(&mut a);
        });
        let took = start.elapsed().max(rx.recv().expect("b"));
        // Both batches through one bucket: twice the time of one.
        let floor = Duration::from_millis((2 * REQUESTS - 1) * 1000 / IOPS);
        assert!(
            took + Duration::from_millis(2) >= floor,
            "{mode:?}: {took:?} < {floor:?}"
        );
    }
}
