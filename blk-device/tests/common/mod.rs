//! A driver for the device model without KVM: `DriverQueue`s publish chains into a
//! `GuestMemoryMmap`, a [`BlockDevice`] serves them in the I/O mode under test against a
//! temporary raw image, and the test plays the transport (kicks, notifications).

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blk_device::config::DiskConfig;
use blk_device::device::{Active, BlockDevice};
use blk_device::event_loop::{EventLoop, LoopOptions};
use blk_device::interrupt::Interrupt;
use blk_device::metrics::DeviceMetrics;
use blk_device::mode::{IoMode, QueueSetup, ServeOptions};
use blk_device::trace::{QueueTrace, StampRing};
use blk_proto::features::VIRTIO_RING_F_EVENT_IDX;
use blk_proto::{Features, OutHdr};
use virtqueue_core::{DriverQueue, GuestMemory, Queue, RingLayout};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const RING: u64 = 0x1000;
pub const HDR: u64 = 0x8000;
pub const STATUS: u64 = 0x8100;
pub const DATA: u64 = 0x10000;
pub const SERIAL: &str = "vblk-test-serial";

/// Every mode with the engine its table row runs (vcpu always uses the sync engine).
pub const MODES: [IoMode; 4] = IoMode::ALL;

/// Counts the notifications the device model asked for.
#[derive(Debug, Default)]
pub struct Counted {
    pub queue: [AtomicU64; 8],
    pub config: AtomicU64,
}

impl Interrupt for Counted {
    fn notify_queue(&self, queue: u16) {
        if let Some(c) = self.queue.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn notify_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

/// How to build a harness.
#[derive(Debug, Clone)]
pub struct Setup {
    pub mode: IoMode,
    pub engine: &'static str,
    pub readonly: bool,
    pub event_idx: bool,
    pub queues: u16,
    pub queue_size: u16,
    pub mem_size: usize,
    /// The image's bytes.
    pub image: Vec<u8>,
    pub workers: usize,
    /// 0: every request of the `workers` mode goes to the pool.
    pub handoff_depth: usize,
    pub poll_us: u32,
    /// More `--disk` keys (`,key=value...`), e.g. limits.
    pub extra: &'static str,
    /// The throttle group the disk joins (with `group=` in `extra`).
    pub group: Option<Arc<blk_device::throttle::ThrottleGroup>>,
    /// Record the queues' trace stamps into [`Harness::stamps`].
    pub trace: bool,
}

impl Setup {
    /// One queue of 16 over a 64 KiB image whose sector `i` holds the byte `i`.
    pub fn new(mode: IoMode) -> Self {
        Setup {
            mode,
            engine: "io_uring",
            readonly: false,
            event_idx: false,
            queues: 1,
            queue_size: 16,
            mem_size: 1 << 20,
            image: (0..64 * 1024u64).map(|i| (i / 512) as u8).collect(),
            workers: 2,
            handoff_depth: 0,
            poll_us: 20,
            extra: "",
            group: None,
            trace: false,
        }
    }
}

pub struct Harness {
    _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
    pub mem: GuestMemoryMmap,
    pub drivers: Vec<DriverQueue>,
    pub kicks: Vec<EventFd>,
    pub irq: Arc<Counted>,
    pub dev: BlockDevice,
    pub active: Option<Active>,
    pub mode: IoMode,
    /// Every queue's trace stamps, with [`Setup::trace`].
    pub stamps: Option<Arc<StampRing>>,
    _shared: Option<Arc<EventLoop>>,
}

impl Harness {
    pub fn new(s: Setup) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        std::fs::write(&path, &s.image).expect("image");
        let mut opts = format!(
            "path={},engine={},queues={},queue-size={},serial={SERIAL}",
            path.display(),
            s.engine,
            s.queues,
            s.queue_size
        );
        if s.readonly {
            opts.push_str(",readonly=on");
        }
        opts.push_str(s.extra);
        let cfg = DiskConfig::parse(&opts).expect("--disk");
        let shared = s.mode.properties().shared_loop.then(|| {
            Arc::new(
                EventLoop::start(LoopOptions {
                    name: "test-iothread".into(),
                    poll_us: 0,
                    lock: Some(Arc::new(Mutex::new(()))),
                    ..LoopOptions::default()
                })
                .expect("shared loop"),
            )
        });
        let stamps = s.trace.then(|| Arc::new(StampRing::new(1 << 14)));
        let serve = ServeOptions {
            traces: stamps
                .iter()
                .flat_map(|r| (0..s.queues).map(|_| QueueTrace::new(r.clone())))
                .collect(),
            poll_us: s.poll_us,
            workers: s.workers,
            handoff_depth: s.handoff_depth,
            shared_loop: shared.clone(),
            throttle_group: s.group.clone(),
            ..ServeOptions::new(s.mode)
        };
        let dev =
            BlockDevice::open(&cfg, serve, Arc::new(DeviceMetrics::new("test"))).expect("device");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), s.mem_size)]).expect("memory");
        let layout = RingLayout::new(s.queue_size).expect("layout");
        let mut drivers = Vec::new();
        let mut kicks = Vec::new();
        let mut setups = Vec::new();
        for q in 0..s.queues {
            let addrs = layout.addresses(RING + 0x1_0000 * u64::from(q));
            drivers.push(
                DriverQueue::new(&mem, s.queue_size, addrs, s.event_idx).expect("driver queue"),
            );
            let mut queue = Queue::new(s.queue_size);
            queue.set_desc_table_address(addrs.desc_table);
            queue.set_avail_ring_address(addrs.avail_ring);
            queue.set_used_ring_address(addrs.used_ring);
            queue.set_event_idx(s.event_idx);
            queue.set_ready(true);
            assert!(queue.is_valid(&mem));
            let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
            setups.push(QueueSetup {
                index: q,
                queue,
                kick: kick.try_clone().expect("kick"),
            });
            kicks.push(kick);
        }
        let mut negotiated = dev.offered_features();
        if !s.event_idx {
            negotiated = Features(negotiated.bits() & !(1 << VIRTIO_RING_F_EVENT_IDX));
        }
        let irq = Arc::new(Counted::default());
        let active = dev
            .activate(negotiated, mem.clone(), setups, irq.clone())
            .expect("activate");
        Harness {
            _dir: dir,
            path,
            mem,
            drivers,
            kicks,
            irq,
            dev,
            active: Some(active),
            mode: s.mode,
            stamps,
            _shared: shared,
        }
    }

    /// Kicks queue `q` the way its mode receives kicks.
    pub fn kick(&mut self, q: u16) {
        let served = self.active.as_mut().expect("active").notify(q);
        if !served {
            self.kicks[usize::from(q)].write(1).expect("kick");
        }
    }

    pub fn header(&self, hdr: OutHdr) -> (u64, u32) {
        self.mem.write(HDR, &hdr.to_bytes()).expect("header");
        (HDR, 16)
    }

    pub fn status(&self) -> u8 {
        self.bytes(STATUS, 1)[0]
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(addr, &mut v).expect("read");
        v
    }

    /// Waits up to 5 s for a used element of queue `q`.
    pub fn wait_used(&mut self, q: u16) -> (u16, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(u) = self.drivers[usize::from(q)]
                .pop_used(&self.mem)
                .expect("used ring")
            {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: no completion within 5 s",
                self.mode
            );
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Publishes a chain on queue 0, kicks, returns its used element (and checks it is the
    /// only one).
    pub fn roundtrip(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> (u16, u32) {
        self.mem.write(STATUS, &[0xee]).expect("status");
        let head = self.drivers[0]
            .add(&self.mem, readable, writable)
            .expect("add");
        self.kick(0);
        let used = self.wait_used(0);
        assert_eq!(used.0, head, "{:?}", self.mode);
        assert_eq!(
            self.drivers[0].pop_used(&self.mem).expect("used ring"),
            None
        );
        used
    }

    pub fn image(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("image")
    }

    /// Waits up to 5 s for `cond`.
    pub fn eventually(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "{:?}: {what}", self.mode);
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Stops serving (in-flight requests complete).
    pub fn stop(&mut self) {
        if let Some(a) = self.active.take() {
            a.stop();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}
