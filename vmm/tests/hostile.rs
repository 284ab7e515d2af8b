//! A hostile driver against the virtio-blk device, through the VMM library's public API:
//! a real KVM VM (ioeventfds, irqfds, MSI routes), a `GuestMemoryMmap` with two adjacent
//! regions and a gap, the PCI/virtio handshake through `PciDevice::config_write`/`bar_write`,
//! raw descriptors written into guest memory, and doorbells rung on the notify register.
//!
//! Every case must end with an error status, `DEVICE_NEEDS_RESET`, or the chain returned
//! unused (used length 0), as the spec allows (a request never returned counts as a failure);
//! never a panic, a hang (each case runs under a watchdog), a leaked fd or thread, a byte written outside the buffers the
//! driver gave, or a byte of the image changed by a rejected request. After each case the
//! device must still serve correct I/O (after a reset where the spec requires one).
//!
//! Every case runs in each io mode ([`MODES`]): the vcpu thread (sync engine), a polling
//! dataplane thread, a dataplane thread with a worker pool, and the shared I/O thread.
//!
//! Needs /dev/kvm: fails loudly without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use blk_device::event_loop::EventLoop;
use blk_proto::{OutHdr, VIRTIO_BLK_S_OK};
use pci_transport::virtio_pci::common_cfg::offset as common;
use pci_transport::virtio_pci::device_status as status;
use pci_transport::virtio_pci::layout::{MSIX_TABLE_OFFSET, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER};
use virtqueue_core::{GuestMemory, RingAddresses, RingLayout};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::config::{DiskConfig, EngineKind, IoMode};
use vmm::interrupts::MsiRouter;
use vmm::pci_device::PciDevice;
use vmm::virtio_blk::{DeviceContext, VirtioBlkPci};

mod real_guest;
use real_guest::{guest, report, require_kvm};

// --- guest memory map -------------------------------------------------------------------
/// Region A: [0, 1 MiB); region B: [1 MiB, 2 MiB), adjacent to A; gap; region C: [3, 4) MiB.
const MIB: u64 = 1 << 20;
const REGIONS: [(u64, u64); 3] = [(0, MIB), (MIB, MIB), (3 * MIB, MIB)];
/// Rings of queue 0 and queue 1.
const RING: [u64; 2] = [0x1000, 0x3000];
/// Request header (device-readable).
const HDR: u64 = 0x8000;
/// Status bytes (device-writable), one per slot.
const STATUS: u64 = 0x8100;
/// Indirect tables.
const TABLE: u64 = 0x9000;
/// Data the device reads (OUT).
const DATA_OUT: u64 = 0x10000;
/// Where the device writes read data (IN).
const DATA_IN: u64 = 0x20000;
/// Filled with [`CANARY`] and never given to the device as writable, except as stated.
const CANARY_ZONES: [(u64, u64); 3] = [(0x30000, 2 * MIB), (3 * MIB, 4 * MIB), (0xa000, 0x10000)];
const CANARY: u8 = 0xc5;

const QSIZE: u16 = 16;
/// 256 sectors.
const DISK_SIZE: u64 = 128 * 1024;
const SECTORS: u64 = DISK_SIZE / 512;
const BAR0: u64 = 0xe000_0000;
const MSIX_CAP_ID: u8 = 0x11;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

const VERSION_1: u64 = 1 << 32;
const INDIRECT_DESC: u64 = 1 << 28;
const MQ: u64 = 1 << 12;
const DISCARD: u64 = 1 << 13;
const WRITE_ZEROES: u64 = 1 << 14;

/// How long a completion may take before the request counts as ignored.
const IGNORED_AFTER: Duration = Duration::from_secs(1);
/// A case taking longer than this is a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every case runs in each io mode: requests served in the caller (sync engine), by a
/// polling dataplane thread, by a dataplane thread with a worker pool, and by the shared
/// I/O thread (io_uring).
const MODES: [IoMode; 4] = [
    IoMode::Vcpu,
    IoMode::Dataplane,
    IoMode::Workers,
    IoMode::Iothread,
];

/// Serializes the tests of this file so the fd and thread counts of the process are stable.
static SERIAL: Mutex<()> = Mutex::new(());

/// What became of one hostile request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Returned in the used ring with this length and status byte.
    Used { len: u32, status: u8 },
    /// The device set DEVICE_NEEDS_RESET.
    NeedsReset,
    /// Neither, within [`IGNORED_AFTER`].
    Ignored,
}

impl Outcome {
    /// The request was refused: returned with an error status or unused (length 0), or the
    /// device asked for a reset. A request never returned is not refused: the driver would
    /// wait for it forever.
    fn refused(self) -> bool {
        match self {
            Outcome::Used { len: 0, .. } => true,
            Outcome::Used { status, .. } => status != VIRTIO_BLK_S_OK,
            Outcome::NeedsReset => true,
            Outcome::Ignored => false,
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    dev: VirtioBlkPci,
    mem: GuestMemoryMmap,
    rings: Vec<RingAddresses>,
    avail_idx: Vec<u16>,
    used_idx: Vec<u16>,
    /// What the image must hold.
    model: Vec<u8>,
    features: u64,
    mode: IoMode,
    seq: u8,
    iothread: Option<Arc<EventLoop>>,
}

fn sector_fill(sector: u64, gen: u8) -> Vec<u8> {
    (0..512u64)
        .map(|i| (sector.wrapping_mul(7) ^ i ^ u64::from(gen) << 3) as u8)
        .collect()
}

impl Rig {
    fn new(mode: IoMode, queues: u16) -> Rig {
        require_kvm();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let model: Vec<u8> = (0..SECTORS).flat_map(|s| sector_fill(s, 0)).collect();
        std::fs::write(&path, &model).expect("image");
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().expect("create_vm"));
        vm.create_irq_chip().expect("irqchip");
        let ranges: Vec<(GuestAddress, usize)> = REGIONS
            .iter()
            .map(|(a, l)| (GuestAddress(*a), *l as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest memory");
        for (a, l) in REGIONS {
            mem.write(a, &vec![CANARY; l as usize])
                .expect("canary fill");
        }
        let iothread = (mode == IoMode::Iothread).then(|| {
            Arc::new(
                vmm::virtio_blk::shared_loop(Arc::new(Mutex::new(())), None).expect("I/O thread"),
            )
        });
        let ctx = DeviceContext {
            vm: vm.clone(),
            mem: mem.clone(),
            msi: Arc::new(MsiRouter::new(vm)),
            bar0_addr: BAR0,
            io_mode: mode,
            poll_us: 50,
            poll_in_flight: true,
            workers: 2,
            handoff_depth: 0,
            iothread: iothread.clone(),
            tracer: None,
            device_index: 0,
            metrics: Arc::new(vmm::metrics::DeviceMetrics::new("hostile")),
            io_cpus: None,
            throttle_group: None,
        };
        let engine = match mode {
            IoMode::Vcpu => EngineKind::Sync,
            _ => EngineKind::IoUring,
        };
        let cfg = DiskConfig {
            path: path.clone(),
            readonly: false,
            direct: false,
            engine,
            queues,
            queue_size: QSIZE,
            serial: "hostile".into(),
            fault: None,
            merge: true,
            fixed_buffers: true,
            write_log: None,
            limits: Default::default(),
            group: None,
            uri: None,
            reconnect_timeout: std::time::Duration::from_secs(5),
        };
        let dev = VirtioBlkPci::new(&cfg, ctx).expect("device");
        let layout = RingLayout::new(QSIZE).expect("layout");
        let rings = (0..usize::from(queues))
            .map(|q| layout.addresses(RING[q]))
            .collect();
        let mut rig = Rig {
            _dir: dir,
            path,
            dev,
            mem,
            rings,
            avail_idx: vec![0; usize::from(queues)],
            used_idx: vec![0; usize::from(queues)],
            model,
            features: VERSION_1
                | INDIRECT_DESC
                | DISCARD
                | WRITE_ZEROES
                | if queues > 1 { MQ } else { 0 },
            mode,
            seq: 0,
            iothread,
        };
        rig.clear_rings();
        rig.init();
        rig
    }

    // --- register access -------------------------------------------------------------

    fn w(&mut self, off: u64, data: &[u8]) {
        self.dev.bar_write(0, off, data);
    }
    fn w16(&mut self, off: u64, v: u16) {
        self.w(off, &v.to_le_bytes());
    }
    fn w32(&mut self, off: u64, v: u32) {
        self.w(off, &v.to_le_bytes());
    }
    fn w64(&mut self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0; 1];
        self.dev.bar_read(0, off, &mut b);
        b[0]
    }
    fn r16(&mut self, off: u64) -> u16 {
        let mut b = [0; 2];
        self.dev.bar_read(0, off, &mut b);
        u16::from_le_bytes(b)
    }
    fn r64(&mut self, off: u64) -> u64 {
        let mut lo = [0; 4];
        let mut hi = [0; 4];
        self.dev.bar_read(0, off, &mut lo);
        self.dev.bar_read(0, off + 4, &mut hi);
        u64::from(u32::from_le_bytes(lo)) | u64::from(u32::from_le_bytes(hi)) << 32
    }
    fn status(&mut self) -> u8 {
        self.r8(common::DEVICE_STATUS)
    }
    fn set_status(&mut self, s: u8) {
        self.w(common::DEVICE_STATUS, &[s]);
    }
    fn kick(&mut self, q: u16) {
        self.w16(
            NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * u64::from(q),
            q,
        );
    }

    fn enable_msix(&mut self) {
        let mut ptr = [0u8; 1];
        self.dev.config_read(0x34, &mut ptr);
        let mut at = ptr[0];
        while at != 0 {
            let mut hdr = [0u8; 2];
            self.dev.config_read(u16::from(at), &mut hdr);
            if hdr[0] == MSIX_CAP_ID {
                self.dev
                    .config_write(u16::from(at) + 2, &(1u16 << 15).to_le_bytes());
                return;
            }
            at = hdr[1];
        }
        panic!("no MSI-X capability");
    }

    /// 3.1.1 "Driver Requirements: Device Initialization", every queue enabled.
    fn init(&mut self) {
        self.init_until_queues();
        for q in 0..self.rings.len() {
            self.setup_queue(q as u16, QSIZE, self.rings[q]);
            self.w16(common::QUEUE_ENABLE, 1);
        }
        self.driver_ok();
    }

    fn init_until_queues(&mut self) {
        // Memory space and bus mastering on.
        self.dev.config_write(4, &6u16.to_le_bytes());
        self.enable_msix();
        for v in 0..=self.rings.len() as u64 {
            self.w32(MSIX_TABLE_OFFSET + 16 * v, 0xfee0_0000);
            self.w32(MSIX_TABLE_OFFSET + 16 * v + 8, 0x30 + v as u32);
            self.w32(MSIX_TABLE_OFFSET + 16 * v + 12, 0);
        }
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.w32(common::DEVICE_FEATURE_SELECT, sel);
            let mut b = [0; 4];
            self.dev.bar_read(0, common::DEVICE_FEATURE, &mut b);
            offered |= u64::from(u32::from_le_bytes(b)) << (32 * sel);
        }
        self.features &= offered;
        let f = self.features;
        for (sel, word) in [(0u32, f as u32), (1, (f >> 32) as u32)] {
            self.w32(common::DRIVER_FEATURE_SELECT, sel);
            self.w32(common::DRIVER_FEATURE, word);
        }
        self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        assert_ne!(self.status() & status::FEATURES_OK, 0, "features refused");
        let n = self.rings.len() as u16;
        self.w16(common::CONFIG_MSIX_VECTOR, n);
    }

    fn setup_queue(&mut self, q: u16, size: u16, a: RingAddresses) {
        self.w16(common::QUEUE_SELECT, q);
        self.w16(common::QUEUE_SIZE, size);
        self.w16(common::QUEUE_MSIX_VECTOR, q);
        self.w64(common::QUEUE_DESC, a.desc_table);
        self.w64(common::QUEUE_DRIVER, a.avail_ring);
        self.w64(common::QUEUE_DEVICE, a.used_ring);
    }

    fn driver_ok(&mut self) {
        self.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// Writes 0 to `device_status` and waits until it reads 0 (4.1.4.3.2).
    fn reset(&mut self) {
        self.set_status(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.status() != 0 {
            assert!(Instant::now() < deadline, "reset did not complete");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn clear_rings(&mut self) {
        for (q, ring) in RING.iter().enumerate().take(self.rings.len()) {
            self.mem.write(*ring, &[0u8; 0x2000]).expect("rings");
            self.avail_idx[q] = 0;
            self.used_idx[q] = 0;
        }
    }

    fn reinit(&mut self) {
        self.reset();
        self.clear_rings();
        self.init();
    }

    // --- raw rings ---------------------------------------------------------------------

    fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write(table + 16 * u64::from(i), &d)
            .expect("descriptor");
    }

    fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(self.rings[q].desc_table, i, addr, len, flags, next);
    }

    /// Makes `head` available on queue `q` (avail idx += 1).
    fn publish(&mut self, q: usize, head: u16) {
        let a = self.rings[q].avail_ring;
        let slot = self.avail_idx[q] % QSIZE;
        self.mem
            .store_u16(a + 4 + 2 * u64::from(slot), head, Ordering::Relaxed)
            .expect("avail");
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .store_u16(a + 2, self.avail_idx[q], Ordering::Release)
            .expect("avail idx");
    }

    fn header(&mut self, hdr: OutHdr) {
        self.mem.write(HDR, &hdr.to_bytes()).expect("header");
        self.mem.write(STATUS, &[0xee]).expect("status");
    }

    fn status_byte(&self) -> u8 {
        let mut b = [0u8];
        self.mem.read(STATUS, &mut b).expect("status");
        b[0]
    }

    /// Waits for queue `q`'s next used element; `Ignored` after [`IGNORED_AFTER`].
    fn outcome(&mut self, q: usize) -> Outcome {
        let deadline = Instant::now() + IGNORED_AFTER;
        let u = self.rings[q].used_ring;
        loop {
            let idx = self
                .mem
                .load_u16(u + 2, Ordering::Acquire)
                .expect("used idx");
            if idx != self.used_idx[q] {
                let slot = self.used_idx[q] % QSIZE;
                let mut e = [0u8; 8];
                self.mem
                    .read(u + 4 + 8 * u64::from(slot), &mut e)
                    .expect("used elem");
                self.used_idx[q] = self.used_idx[q].wrapping_add(1);
                let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                return Outcome::Used {
                    len,
                    status: self.status_byte(),
                };
            }
            if self.status() & status::DEVICE_NEEDS_RESET != 0 {
                return Outcome::NeedsReset;
            }
            if Instant::now() > deadline {
                return Outcome::Ignored;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Publishes `head` on queue 0, kicks, and waits for the outcome.
    fn submit(&mut self, head: u16) -> Outcome {
        self.publish(0, head);
        self.kick(0);
        self.outcome(0)
    }

    // --- checks -------------------------------------------------------------------------

    /// Correct I/O still works (resetting first when the device asks for it or the case
    /// left the rings in a state only a reset clears): a 3-sector write through an indirect
    /// table then a direct read of the same sectors, compared byte for byte.
    fn check_serves_io(&mut self, force_reset: bool) {
        if force_reset || self.status() & status::DEVICE_NEEDS_RESET != 0 {
            self.reinit();
        }
        self.seq = self.seq.wrapping_add(1);
        let sector = (u64::from(self.seq) * 37) % (SECTORS - 3);
        let data: Vec<u8> = (0..3)
            .flat_map(|i| sector_fill(sector + i, self.seq))
            .collect();
        self.mem.write(DATA_OUT, &data).expect("data");
        self.header(OutHdr::write(sector));
        self.desc_at(TABLE, 0, HDR, 16, F_NEXT, 1);
        self.desc_at(TABLE, 1, DATA_OUT, 1536, F_NEXT, 2);
        self.desc_at(TABLE, 2, STATUS, 1, F_WRITE, 0);
        self.desc(0, 5, TABLE, 48, F_INDIRECT, 0);
        let o = self.submit(5);
        assert_eq!(
            o,
            Outcome::Used {
                len: 1,
                status: VIRTIO_BLK_S_OK
            },
            "write after the case ({:?})",
            self.mode
        );
        let at = sector as usize * 512;
        self.model[at..at + 1536].copy_from_slice(&data);
        self.mem.write(DATA_IN, &[0x5a; 1536]).expect("poison");
        self.header(OutHdr::read(sector));
        self.desc(0, 0, HDR, 16, F_NEXT, 1);
        self.desc(0, 1, DATA_IN, 1536, F_NEXT | F_WRITE, 2);
        self.desc(0, 2, STATUS, 1, F_WRITE, 0);
        let o = self.submit(0);
        assert_eq!(
            o,
            Outcome::Used {
                len: 1537,
                status: VIRTIO_BLK_S_OK
            },
            "read after the case ({:?})",
            self.mode
        );
        let mut back = vec![0u8; 1536];
        self.mem.read(DATA_IN, &mut back).expect("read back");
        assert!(
            back == data,
            "data read back differs from data written ({:?})",
            self.mode
        );
    }

    /// The image holds exactly the model (size included).
    fn check_image(&self) {
        let img = std::fs::read(&self.path).expect("image");
        assert_eq!(img.len() as u64, DISK_SIZE, "image size changed");
        if let Some(i) = img.iter().zip(&self.model).position(|(a, b)| a != b) {
            panic!(
                "image byte {i} (sector {}) changed by a refused request ({:?})",
                i / 512,
                self.mode
            );
        }
    }

    /// The canary zones hold [`CANARY`], except `allowed` (buffers the case gave as writable).
    fn check_canaries(&self, allowed: &[(u64, u64)]) {
        for (start, end) in CANARY_ZONES {
            let mut buf = vec![0u8; (end - start) as usize];
            self.mem.read(start, &mut buf).expect("canary read");
            for (i, b) in buf.iter().enumerate() {
                let a = start + i as u64;
                if *b != CANARY && !allowed.iter().any(|(s, e)| (*s..*e).contains(&a)) {
                    panic!(
                        "guest memory {a:#x} outside every writable buffer was written ({:?})",
                        self.mode
                    );
                }
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.dev.shutdown();
        if let Some(io) = &self.iothread {
            io.stop();
        }
    }
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Threads of this process other than the test binary's own (whose names all start with
/// `hostile`: the main thread and libtest's threads, named after the tests): the device's.
fn device_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|name| !name.starts_with("hostile"))
        .count()
}

/// Runs `case` in both io modes under a watchdog, then checks nothing leaked.
fn run_case(name: &str, queues: u16, case: fn(&mut Rig) -> Vec<(u64, u64)>) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_kvm();
    for mode in MODES {
        let (fds, threads) = (count_dir("/proc/self/fd"), device_threads());
        let (tx, rx) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut rig = Rig::new(mode, queues);
            let allowed = case(&mut rig);
            rig.check_canaries(&allowed);
            rig.check_image();
            rig.check_serves_io(false);
            rig.check_image();
            rig.check_canaries(&allowed);
            drop(rig);
            let _ = tx.send(());
        });
        match rx.recv_timeout(CASE_TIMEOUT) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let e = worker.join().err();
                let why = e
                    .as_ref()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_default();
                panic!("hostile_{name} ({mode:?}) failed: {why}");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("hostile_{name} ({mode:?}) hung for {CASE_TIMEOUT:?}")
            }
        }
        worker.join().expect("worker");
        // Dataplane threads and their fds must be gone once the device is dropped.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (f, t) = (count_dir("/proc/self/fd"), device_threads());
            if f <= fds && t <= threads {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hostile_{name} ({mode:?}) leaked: fds {fds} -> {f}, threads {threads} -> {t}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A write of sector 0 whose data descriptor is `(addr, len)`; returns the descriptor flags
/// helper for cases that only change one descriptor.
fn write_chain(r: &mut Rig, data: (u64, u32), data_flags: u16) {
    r.header(OutHdr::write(0));
    r.desc(0, 0, HDR, 16, F_NEXT, 1);
    r.desc(0, 1, data.0, data.1, F_NEXT | data_flags, 2);
    r.desc(0, 2, STATUS, 1, F_WRITE, 0);
}

fn read_chain(r: &mut Rig, sector: u64, data: (u64, u32)) {
    r.header(OutHdr::read(sector));
    r.desc(0, 0, HDR, 16, F_NEXT, 1);
    r.desc(0, 1, data.0, data.1, F_NEXT | F_WRITE, 2);
    r.desc(0, 2, STATUS, 1, F_WRITE, 0);
}

fn assert_refused(o: Outcome, what: &str) {
    assert!(o.refused(), "{what}: neither refused nor a reset: {o:?}");
}

// --- the cases ------------------------------------------------------------------------------

#[test]
fn hostile_descriptor_loop() {
    run_case("descriptor_loop", 1, |r| {
        r.header(OutHdr::write(1));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, DATA_OUT, 512, F_NEXT, 0); // back to 0
        assert_refused(r.submit(0), "next loop");
        // A self-loop on a writable descriptor.
        r.desc(0, 3, DATA_IN, 512, F_NEXT | F_WRITE, 3);
        assert_refused(r.submit(3), "self loop");
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_chain_longer_than_queue() {
    run_case("chain_longer_than_queue", 1, |r| {
        // Direct: every descriptor chained in order, the last back to the first.
        r.header(OutHdr::write(2));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        for i in 1..QSIZE {
            r.desc(0, i, DATA_OUT, 512, F_NEXT, (i + 1) % QSIZE);
        }
        assert_refused(r.submit(0), "direct chain longer than the queue");
        // Indirect: a table of QSIZE + 4 entries.
        let n = QSIZE + 4;
        r.desc_at(TABLE, 0, HDR, 16, F_NEXT, 1);
        for i in 1..n - 1 {
            r.desc_at(TABLE, i, DATA_OUT, 512, F_NEXT, i + 1);
        }
        r.desc_at(TABLE, n - 1, STATUS, 1, F_WRITE, 0);
        r.desc(0, 4, TABLE, 16 * u32::from(n), F_INDIRECT, 0);
        let o = r.submit(4);
        assert_refused(o, "indirect chain longer than the queue");
        vec![]
    });
}

#[test]
fn hostile_indirect_inside_indirect() {
    run_case("indirect_inside_indirect", 1, |r| {
        r.header(OutHdr::write(3));
        let inner = TABLE + 0x400;
        r.desc_at(inner, 0, HDR, 16, F_NEXT, 1);
        r.desc_at(inner, 1, DATA_OUT, 512, F_NEXT, 2);
        r.desc_at(inner, 2, STATUS, 1, F_WRITE, 0);
        r.desc_at(TABLE, 0, inner, 48, F_INDIRECT, 0);
        r.desc(0, 0, TABLE, 16, F_INDIRECT, 0);
        assert_refused(r.submit(0), "nested indirect table");
        vec![]
    });
}

#[test]
fn hostile_indirect_with_next() {
    run_case("indirect_with_next", 1, |r| {
        r.header(OutHdr::write(4));
        r.desc_at(TABLE, 0, HDR, 16, F_NEXT, 1);
        r.desc_at(TABLE, 1, DATA_OUT, 512, 0, 0);
        r.desc(0, 0, TABLE, 32, F_INDIRECT | F_NEXT, 1);
        r.desc(0, 1, STATUS, 1, F_WRITE, 0);
        assert_refused(r.submit(0), "INDIRECT | NEXT");
        vec![]
    });
}

#[test]
fn hostile_indirect_table_bad_length() {
    run_case("indirect_table_bad_length", 1, |r| {
        r.header(OutHdr::write(5));
        r.desc_at(TABLE, 0, HDR, 16, F_NEXT, 1);
        r.desc_at(TABLE, 1, DATA_OUT, 512, F_NEXT, 2);
        r.desc_at(TABLE, 2, STATUS, 1, F_WRITE, 0);
        for len in [0u32, 8, 47, 49, 0xffff_fff0, u32::MAX] {
            r.desc(0, 0, TABLE, len, F_INDIRECT, 0);
            assert_refused(r.submit(0), &format!("indirect table of {len} bytes"));
            r.check_image();
        }
        // A table that leaves guest RAM.
        r.desc(0, 0, 2 * MIB - 16, 48, F_INDIRECT, 0);
        assert_refused(r.submit(0), "indirect table straddling the gap");
        vec![]
    });
}

#[test]
fn hostile_addresses_outside_ram_or_wrapping() {
    run_case("addresses_outside_ram_or_wrapping", 1, |r| {
        let bad = [
            (2 * MIB + 0x1000, 512),    // in the gap
            (4 * MIB, 512),             // past the end
            (u64::MAX - 255, 512),      // wraps around
            (u64::MAX, 1),              // last byte of the address space
            (0x1_0000_0000_0000, 4096), // far away
        ];
        for (addr, len) in bad {
            write_chain(r, (addr, len), 0);
            assert_refused(r.submit(0), &format!("OUT data at {addr:#x}"));
            read_chain(r, 7, (addr, len));
            assert_refused(r.submit(0), &format!("IN data at {addr:#x}"));
        }
        // Header and status outside RAM.
        r.desc(0, 0, u64::MAX - 7, 16, F_NEXT, 1);
        r.desc(0, 1, STATUS, 1, F_WRITE, 0);
        assert_refused(r.submit(0), "header wrapping around");
        r.header(OutHdr::flush());
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, 2 * MIB + 5, 1, F_WRITE, 0);
        match r.submit(0) {
            Outcome::Used { len, .. } => assert_eq!(len, 0, "status byte in the gap"),
            o => assert!(o.refused()),
        }
        // Descriptor table / rings outside RAM: refused at DRIVER_OK.
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        let a = RingAddresses {
            desc_table: 2 * MIB + 0x100,
            ..r.rings[0]
        };
        r.setup_queue(0, QSIZE, a);
        r.w16(common::QUEUE_ENABLE, 1);
        r.driver_ok();
        r.publish(0, 0);
        r.kick(0);
        assert_refused(r.outcome(0), "descriptor table in the gap");
        r.reinit();
        vec![]
    });
}

#[test]
fn hostile_buffers_straddling_region_ends() {
    run_case("buffers_straddling_region_ends", 1, |r| {
        // Across the boundary of two adjacent regions: valid guest RAM, must work.
        let across = MIB - 1024;
        let data: Vec<u8> = (0..4).flat_map(|s| sector_fill(100 + s, 9)).collect();
        r.mem.write(across, &data).expect("data");
        r.header(OutHdr::write(100));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, across, 2048, F_NEXT, 2);
        r.desc(0, 2, STATUS, 1, F_WRITE, 0);
        assert_eq!(
            r.submit(0),
            Outcome::Used {
                len: 1,
                status: VIRTIO_BLK_S_OK
            },
            "write across adjacent regions"
        );
        r.model[100 * 512..104 * 512].copy_from_slice(&data);
        r.mem.write(across, &vec![0u8; 2048]).expect("clear");
        read_chain(r, 100, (across, 2048));
        assert_eq!(
            r.submit(0),
            Outcome::Used {
                len: 2049,
                status: VIRTIO_BLK_S_OK
            },
            "read across adjacent regions"
        );
        let mut back = vec![0u8; 2048];
        r.mem.read(across, &mut back).expect("back");
        assert!(
            back == data,
            "read across adjacent regions returned wrong data"
        );
        // Into the gap after region B: refused, nothing written before the gap.
        let end = 2 * MIB - 512;
        r.mem.write(end, &[CANARY; 512]).expect("canary");
        write_chain(r, (end, 1024), 0);
        assert_refused(r.submit(0), "OUT across the gap");
        read_chain(r, 10, (end, 1024));
        assert_refused(r.submit(0), "IN across the gap");
        // Into region C from the gap side.
        read_chain(r, 10, (3 * MIB - 512, 1024));
        assert_refused(r.submit(0), "IN from the gap into region C");
        vec![
            (across, across + 2048),
            (end, 2 * MIB),
            (3 * MIB, 3 * MIB + 512),
        ]
    });
}

#[test]
fn hostile_zero_length_and_oversized_buffers() {
    run_case("zero_length_and_oversized_buffers", 1, |r| {
        // Zero-length data descriptor in a write: nothing to write; any status, no change.
        write_chain(r, (DATA_OUT, 0), 0);
        let o = r.submit(0);
        assert!(
            matches!(o, Outcome::Used { .. } | Outcome::NeedsReset),
            "zero-length write: {o:?}"
        );
        r.check_serves_io(false);
        // Zero-length status descriptor.
        r.header(OutHdr::flush());
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, STATUS, 0, F_WRITE, 0);
        match r.submit(0) {
            Outcome::Used { len, status } => assert!(
                len == 0 && status == 0xee,
                "status written into a 0-byte buffer: len {len}, status {status}"
            ),
            o => assert!(o.refused()),
        }
        // Oversized: 4 GiB - 1 bytes, 1 MiB + 512 (past the disk end), a length not a
        // multiple of 512.
        for (addr, len) in [
            (DATA_OUT, u32::MAX),
            (0, (MIB as u32) + 512),
            (DATA_OUT, 700),
        ] {
            write_chain(r, (addr, len), 0);
            assert_refused(r.submit(0), &format!("OUT of {len} bytes"));
            r.check_image();
        }
        read_chain(r, 0, (DATA_IN, 700));
        assert_refused(r.submit(0), "IN of 700 bytes");
        // A read of the whole disk plus one sector.
        read_chain(r, 0, (0x30000, DISK_SIZE as u32 + 512));
        assert_refused(r.submit(0), "IN past the disk end");
        vec![
            (DATA_IN, DATA_IN + 700),
            (0x30000, 0x30000 + DISK_SIZE + 512),
        ]
    });
}

#[test]
fn hostile_read_only_status_descriptor() {
    run_case("read_only_status_descriptor", 1, |r| {
        let data = sector_fill(20, 0xaa);
        r.mem.write(DATA_OUT, &data).expect("data");
        r.header(OutHdr::write(20));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, DATA_OUT, 512, F_NEXT, 2);
        r.desc(0, 2, STATUS, 1, 0, 0); // not WRITE
        let o = r.submit(0);
        if let Outcome::Used { len, status } = o {
            assert_eq!(
                status, 0xee,
                "status written into a device-readable descriptor"
            );
            assert_eq!(len, 0, "used length of a chain without a status byte");
        }
        // The write may or may not have happened (the spec leaves it open); record either.
        let img = std::fs::read(&r.path).expect("image");
        if img[20 * 512..21 * 512] == data[..] {
            r.model[20 * 512..21 * 512].copy_from_slice(&data);
        }
        // Same for a read.
        read_chain(r, 21, (DATA_IN, 512));
        r.desc(0, 2, STATUS, 1, 0, 0);
        if let Outcome::Used { status, .. } = r.submit(0) {
            assert_eq!(
                status, 0xee,
                "status written into a device-readable descriptor"
            );
        }
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_short_header() {
    run_case("short_header", 1, |r| {
        for len in [0u32, 1, 8, 15] {
            r.header(OutHdr::write(30));
            r.desc(0, 0, HDR, len, F_NEXT, 1);
            r.desc(0, 1, DATA_OUT, 512, F_NEXT, 2);
            r.desc(0, 2, STATUS, 1, F_WRITE, 0);
            assert_refused(r.submit(0), &format!("header of {len} bytes"));
            r.check_image();
        }
        // A header split 8 + 8 over two descriptors is legal (2.6.4 "Message Framing").
        let data = sector_fill(30, 0x31);
        r.mem.write(DATA_OUT, &data).expect("data");
        r.header(OutHdr::write(30));
        r.desc(0, 0, HDR, 8, F_NEXT, 1);
        r.desc(0, 1, HDR + 8, 8, F_NEXT, 2);
        r.desc(0, 2, DATA_OUT, 512, F_NEXT, 3);
        r.desc(0, 3, STATUS, 1, F_WRITE, 0);
        let o = r.submit(0);
        assert_eq!(
            o,
            Outcome::Used {
                len: 1,
                status: VIRTIO_BLK_S_OK
            },
            "header split over two descriptors"
        );
        r.model[30 * 512..31 * 512].copy_from_slice(&data);
        vec![]
    });
}

#[test]
fn hostile_avail_idx_jump() {
    run_case("avail_idx_jump", 1, |r| {
        let a = r.rings[0].avail_ring;
        r.mem
            .store_u16(a + 2, QSIZE + 3, Ordering::Release)
            .expect("idx");
        r.kick(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.status() & status::DEVICE_NEEDS_RESET == 0 {
            assert!(
                Instant::now() < deadline,
                "avail idx jump by more than the queue size: no DEVICE_NEEDS_RESET"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // The device must not have consumed garbage.
        let used = r
            .mem
            .load_u16(r.rings[0].used_ring + 2, Ordering::Acquire)
            .expect("used");
        assert_eq!(
            used, 0,
            "device returned chains after an impossible avail idx"
        );
        vec![]
    });
}

#[test]
fn hostile_queue_size_invalid() {
    run_case("queue_size_invalid", 1, |r| {
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        r.w16(common::QUEUE_SELECT, 0);
        let max = r.r16(common::QUEUE_SIZE);
        for bad in [12u16, 3, max + 1, 1024, u16::MAX, 0] {
            r.w16(common::QUEUE_SIZE, bad);
            let now = r.r16(common::QUEUE_SIZE);
            assert!(
                now.is_power_of_two() && now <= max,
                "queue_size {bad} accepted as {now} (max {max})"
            );
        }
        r.setup_queue(0, QSIZE, r.rings[0]);
        r.w16(common::QUEUE_ENABLE, 1);
        r.driver_ok();
        vec![]
    });
}

#[test]
fn hostile_notify_disabled_or_missing_queue() {
    run_case("notify_disabled_or_missing_queue", 2, |r| {
        // Two-queue device, only queue 0 enabled.
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        let a = r.rings[0];
        r.setup_queue(0, QSIZE, a);
        r.w16(common::QUEUE_ENABLE, 1);
        r.driver_ok();
        // Something available on queue 1's (disabled) ring.
        read_chain(r, 0, (DATA_IN, 512));
        r.publish(1, 0);
        r.kick(1);
        for q in [2u16, 7, 63, 64, 1000, u16::MAX] {
            r.kick(q);
        }
        // Notify writes of odd sizes and offsets.
        r.w(NOTIFY_OFFSET + 1, &[1]);
        r.w(NOTIFY_OFFSET + 0x800, &[0xff; 8]);
        std::thread::sleep(Duration::from_millis(50));
        let used1 = r
            .mem
            .load_u16(r.rings[1].used_ring + 2, Ordering::Acquire)
            .expect("used");
        assert_eq!(used1, 0, "a disabled queue was served");
        assert_eq!(
            r.status() & status::DEVICE_NEEDS_RESET,
            0,
            "notify of a missing queue broke the device"
        );
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_ring_addresses_changed_while_enabled() {
    run_case("ring_addresses_changed_while_enabled", 1, |r| {
        r.w16(common::QUEUE_SELECT, 0);
        let before = r.r64(common::QUEUE_DESC);
        r.w64(common::QUEUE_DESC, 2 * MIB + 0x1000);
        r.w64(common::QUEUE_DRIVER, u64::MAX - 1);
        r.w64(common::QUEUE_DEVICE, 0x30000);
        r.w16(common::QUEUE_SIZE, 2);
        assert_eq!(
            r.r64(common::QUEUE_DESC),
            before,
            "queue_desc changed while enabled"
        );
        assert_eq!(
            r.r16(common::QUEUE_SIZE),
            QSIZE,
            "queue_size changed while enabled"
        );
        // Disabling by writing 0 is not allowed either (4.1.4.3.2); the queue keeps working.
        r.w16(common::QUEUE_ENABLE, 0);
        vec![]
    });
}

#[test]
fn hostile_device_status_out_of_order() {
    run_case("device_status_out_of_order", 1, |r| {
        // DRIVER_OK before FEATURES_OK.
        r.reset();
        r.clear_rings();
        r.set_status(status::ACKNOWLEDGE);
        r.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
        let a = r.rings[0];
        r.setup_queue(0, QSIZE, a);
        r.w16(common::QUEUE_ENABLE, 1);
        read_chain(r, 0, (DATA_IN, 512));
        r.publish(0, 0);
        r.kick(0);
        let o = r.outcome(0);
        // 3.1.1: DRIVER_OK only after FEATURES_OK; a device that never accepted features is
        // not live and must not use the buffers.
        assert_eq!(
            r.status() & status::DRIVER_OK,
            0,
            "DRIVER_OK accepted before FEATURES_OK"
        );
        assert_eq!(
            o,
            Outcome::Ignored,
            "a device that is not live served a request"
        );
        // FEATURES_OK after DRIVER_OK, then clearing bits (only reset clears status).
        r.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK | status::FEATURES_OK,
        );
        r.set_status(status::ACKNOWLEDGE);
        r.set_status(status::FAILED);
        r.set_status(0xff);
        let s = r.status();
        // The driver wrote no features (no VERSION_1): FEATURES_OK can never be accepted, so
        // neither can DRIVER_OK (2.2.2).
        assert_eq!(
            s & (status::FEATURES_OK | status::DRIVER_OK),
            0,
            "status after out-of-order writes: {s:#x}"
        );
        // Features changed after FEATURES_OK must not take effect.
        r.reinit();
        r.w32(common::DRIVER_FEATURE_SELECT, 1);
        r.w32(common::DRIVER_FEATURE, 0);
        r.set_status(
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        assert_ne!(
            r.status() & status::DRIVER_OK,
            0,
            "device stopped after a late feature write"
        );
        // The next check resets: status writes went out of order.
        r.reinit();
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_reset_with_requests_in_flight() {
    run_case("reset_with_requests_in_flight", 1, |r| {
        // Fill the ring with reads of 8 sectors each (3 descriptors per chain, 5 chains).
        for i in 0..5u16 {
            let d = 3 * i;
            let hdr = HDR + 0x10 * u64::from(i) + 0x40;
            r.mem
                .write(hdr, &OutHdr::read(8 * u64::from(i)).to_bytes())
                .expect("hdr");
            r.desc(0, d, hdr, 16, F_NEXT, d + 1);
            r.desc(
                0,
                d + 1,
                DATA_IN + 0x1000 * u64::from(i),
                4096,
                F_NEXT | F_WRITE,
                d + 2,
            );
            r.desc(0, d + 2, STATUS + 1 + u64::from(i), 1, F_WRITE, 0);
            r.publish(0, d);
        }
        r.kick(0);
        r.set_status(0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.status() != 0 {
            assert!(Instant::now() < deadline, "reset did not complete");
            std::thread::sleep(Duration::from_millis(1));
        }
        // After reset completes, the device must not touch the rings or buffers (2.1.1 /
        // 4.1.4.3.2): snapshot, wait, compare.
        let mut snap = vec![0u8; 0x40000];
        r.mem.read(0, &mut snap).expect("snapshot");
        std::thread::sleep(Duration::from_millis(100));
        let mut later = vec![0u8; 0x40000];
        r.mem.read(0, &mut later).expect("snapshot");
        if let Some(i) = snap.iter().zip(&later).position(|(a, b)| a != b) {
            panic!("guest memory {i:#x} written after reset completed");
        }
        r.clear_rings();
        r.init();
        vec![(DATA_IN, DATA_IN + 0x5000)]
    });
}

#[test]
fn hostile_notify_before_driver_ok_and_after_reset() {
    run_case("notify_before_driver_ok_and_after_reset", 1, |r| {
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        let a = r.rings[0];
        r.setup_queue(0, QSIZE, a);
        r.w16(common::QUEUE_ENABLE, 1);
        read_chain(r, 0, (DATA_IN, 512));
        r.publish(0, 0);
        r.kick(0);
        std::thread::sleep(Duration::from_millis(50));
        let used = r
            .mem
            .load_u16(r.rings[0].used_ring + 2, Ordering::Acquire)
            .expect("used");
        assert_eq!(used, 0, "queue served before DRIVER_OK");
        r.reset();
        r.kick(0);
        std::thread::sleep(Duration::from_millis(20));
        let used = r
            .mem
            .load_u16(r.rings[0].used_ring + 2, Ordering::Acquire)
            .expect("used");
        assert_eq!(used, 0, "queue served after reset");
        r.reinit();
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_writable_before_readable() {
    run_case("writable_before_readable", 1, |r| {
        r.header(OutHdr::write(40));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, DATA_IN, 512, F_NEXT | F_WRITE, 2);
        r.desc(0, 2, DATA_OUT, 512, F_NEXT, 3);
        r.desc(0, 3, STATUS, 1, F_WRITE, 0);
        assert_refused(
            r.submit(0),
            "device-readable descriptor after a device-writable one",
        );
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

/// One `struct virtio_blk_discard_write_zeroes` (5.2.6).
fn range_seg(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&num.to_le_bytes());
    b[12..].copy_from_slice(&flags.to_le_bytes());
    b
}

#[test]
fn hostile_bad_discard_and_write_zeroes() {
    run_case("bad_discard_and_write_zeroes", 1, |r| {
        assert_ne!(r.features & WRITE_ZEROES, 0, "WRITE_ZEROES not offered");
        let kinds: Vec<(&str, OutHdr)> = [
            ("discard", DISCARD, OutHdr::discard()),
            ("write_zeroes", WRITE_ZEROES, OutHdr::write_zeroes()),
        ]
        .into_iter()
        .filter(|(_, f, _)| r.features & f != 0)
        .map(|(n, _, h)| (n, h))
        .collect();
        for (name, hdr) in kinds {
            let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
                ("past the end", range_seg(SECTORS - 1, 2, 0).to_vec(), None),
                (
                    "sector overflow",
                    range_seg(u64::MAX - 1, 4, 0).to_vec(),
                    None,
                ),
                ("u32::MAX sectors", range_seg(8, u32::MAX, 0).to_vec(), None),
                ("15-byte segment", range_seg(8, 1, 0)[..15].to_vec(), None),
                ("no segment", Vec::new(), None),
                // 5.2.6.2: unknown flags => UNSUPP.
                (
                    "reserved flag",
                    range_seg(8, 1, 2).to_vec(),
                    Some(blk_proto::VIRTIO_BLK_S_UNSUPP),
                ),
                (
                    "many segments",
                    (0..300u64).flat_map(|i| range_seg(i % 8, 1, 0)).collect(),
                    None,
                ),
            ];
            for (what, seg, want) in cases {
                r.header(hdr);
                r.mem.write(DATA_OUT, &seg).expect("segments");
                r.desc(0, 0, HDR, 16, F_NEXT, 1);
                if seg.is_empty() {
                    r.desc(0, 1, STATUS, 1, F_WRITE, 0);
                } else {
                    r.desc(0, 1, DATA_OUT, seg.len() as u32, F_NEXT, 2);
                    r.desc(0, 2, STATUS, 1, F_WRITE, 0);
                }
                let o = r.submit(0);
                match want {
                    Some(st) => assert_eq!(
                        o,
                        Outcome::Used { len: 1, status: st },
                        "{name} with {what}"
                    ),
                    None => assert_refused(o, &format!("{name} with {what}")),
                }
                r.check_image();
            }
        }
        // 5.2.6.2: the unmap flag on a DISCARD => UNSUPP.
        if r.features & DISCARD != 0 {
            r.header(OutHdr::discard());
            r.mem.write(DATA_OUT, &range_seg(8, 1, 1)).expect("segment");
            r.desc(0, 0, HDR, 16, F_NEXT, 1);
            r.desc(0, 1, DATA_OUT, 16, F_NEXT, 2);
            r.desc(0, 2, STATUS, 1, F_WRITE, 0);
            assert_eq!(
                r.submit(0),
                Outcome::Used {
                    len: 1,
                    status: blk_proto::VIRTIO_BLK_S_UNSUPP
                },
                "discard with unmap"
            );
        }
        vec![]
    });
}

#[test]
fn hostile_get_id_short_buffer() {
    run_case("get_id_short_buffer", 1, |r| {
        // 10 bytes at the start of a canary zone: nothing past them may change.
        for len in [0u32, 10] {
            r.header(OutHdr::get_id());
            r.desc(0, 0, HDR, 16, F_NEXT, 1);
            r.desc(0, 1, 0x30000, len, F_NEXT | F_WRITE, 2);
            r.desc(0, 2, STATUS, 1, F_WRITE, 0);
            let o = r.submit(0);
            assert!(
                matches!(o, Outcome::Used { .. }),
                "GET_ID into {len} bytes: {o:?}"
            );
            r.check_canaries(&[(0x30000, 0x3000a)]);
        }
        vec![(0x30000, 0x3000a)]
    });
}

#[test]
fn hostile_msix_vector_out_of_range() {
    run_case("msix_vector_out_of_range", 1, |r| {
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        let a = r.rings[0];
        r.setup_queue(0, QSIZE, a);
        for bad in [2u16, 5, 0x7ff, 0x1234] {
            r.w16(common::QUEUE_MSIX_VECTOR, bad);
            // 4.1.5.1.2: a vector the device cannot map reads back as NO_VECTOR.
            assert_eq!(
                r.r16(common::QUEUE_MSIX_VECTOR),
                0xffff,
                "queue vector {bad} accepted"
            );
            r.w16(common::CONFIG_MSIX_VECTOR, bad);
            assert_eq!(
                r.r16(common::CONFIG_MSIX_VECTOR),
                0xffff,
                "config vector {bad} accepted"
            );
        }
        r.w16(common::QUEUE_MSIX_VECTOR, 0);
        r.w16(common::QUEUE_ENABLE, 1);
        r.driver_ok();
        vec![]
    });
}

/// xorshift64*: the fuzz case's own generator.
struct Xs(u64);

impl Xs {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn hostile_register_fuzz() {
    run_case("register_fuzz", 1, |r| {
        // Random accesses of every size at every offset of BAR0 and config space. Rings may
        // point anywhere afterwards and be served, so guest memory and the image are not
        // checked here: only no panic, no hang, no leak, and recovery after a reset.
        let seed = std::env::var("HOSTILE_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0x5eed_f00d_u64);
        let mut x = Xs(seed | 1);
        for _ in 0..20_000 {
            let v = x.next();
            let size = [0usize, 1, 2, 3, 4, 8, 16][(v % 7) as usize];
            let data = x.next().to_le_bytes().repeat(2);
            match (v >> 8) % 4 {
                0 => {
                    // Mostly the common configuration and notify area.
                    let off = if v & 0x1000 != 0 {
                        (v >> 16) % 0x40
                    } else {
                        (v >> 16) % 0x1_0100
                    };
                    r.dev.bar_write(0, off, &data[..size]);
                }
                1 => {
                    let mut b = vec![0u8; size];
                    r.dev.bar_read(0, (v >> 16) % 0x1_0100, &mut b);
                }
                2 => {
                    let off = ((v >> 16) % 0x1100) as u16;
                    r.dev.config_write(off, &data[..size]);
                }
                _ => {
                    let mut b = vec![0u8; size];
                    r.dev.config_read(((v >> 16) % 0x1100) as u16, &mut b);
                }
            }
        }
        // Back to the original BAR0 and a clean device.
        r.dev.config_write(0x10, &(BAR0 as u32).to_le_bytes());
        r.dev
            .config_write(0x14, &((BAR0 >> 32) as u32).to_le_bytes());
        r.reinit();
        r.model = std::fs::read(&r.path).expect("image");
        for (a, l) in REGIONS {
            r.mem
                .write(a, &vec![CANARY; l as usize])
                .expect("canary refill");
        }
        r.clear_rings();
        r.reinit();
        vec![]
    });
}

// --- the guest side ------------------------------------------------------------------------

/// Boots the test guest with `tests=hostile` (its own raw rings against our device) in io
/// mode `mode` and requires every `TEST hostile_*` line to pass, then the regular driver to
/// work again.
fn guest_hostile(mode: &str, completion: &str, disk_opts: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_kvm();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let elf = guest::build_guest(root).unwrap_or_else(|e| panic!("{e}"));
    // Not /tmp: it may be tmpfs, which refuses O_DIRECT.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let img = dir.path().join("guest.img");
    std::fs::write(
        &img,
        (0..32u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .expect("image");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(&elf)
        .args([
            "--memory",
            "256M",
            "--io-mode",
            mode,
            "--cmdline",
            &format!("tests=hostile completion={completion}"),
        ])
        .arg("--disk")
        .arg(format!("path={}{disk_opts}", img.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rep = report::GuestReport::parse(&stdout);
    let hostile: Vec<_> = rep
        .tests
        .iter()
        .filter(|t| t.name.starts_with("hostile_"))
        .collect();
    let failed: Vec<String> = hostile
        .iter()
        .filter_map(|t| t.failure.as_ref().map(|f| format!("{}: {f}", t.name)))
        .collect();
    assert!(failed.is_empty(), "{mode}: guest-side hostile cases failed: {failed:#?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        hostile.len() >= 18,
        "only {} hostile cases ran:\n{stdout}\n{stderr}",
        hostile.len()
    );
    assert!(!stderr.contains("panicked"), "the VMM panicked:\n{stderr}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "guest did not exit cleanly:\n{stdout}\n{stderr}"
    );
}

#[test]
fn guest_side_hostile_cases_pass_polled_in_every_mode() {
    for mode in ["vcpu", "iothread", "dataplane", "workers"] {
        guest_hostile(mode, "poll", "");
    }
}

#[test]
fn guest_side_hostile_cases_pass_irq_two_queues_direct_in_every_mode() {
    for mode in ["vcpu", "iothread", "dataplane", "workers"] {
        guest_hostile(mode, "irq", ",queues=2,direct=on");
    }
}

#[test]
fn hostile_indices_out_of_range() {
    run_case("indices_out_of_range", 1, |r| {
        // A head index past the table, and a next index past the table.
        for head in [QSIZE, QSIZE + 1, 0x7fff, u16::MAX] {
            read_chain(r, 0, (DATA_IN, 512));
            assert_refused(r.submit(head), &format!("avail head {head}"));
            if r.status() & status::DEVICE_NEEDS_RESET != 0 {
                r.reinit();
            }
        }
        for next in [QSIZE, 0x1234, u16::MAX] {
            read_chain(r, 0, (DATA_IN, 512));
            r.desc(0, 1, DATA_IN, 512, F_NEXT | F_WRITE, next);
            assert_refused(r.submit(0), &format!("next index {next}"));
            if r.status() & status::DEVICE_NEEDS_RESET != 0 {
                r.reinit();
            }
        }
        // Inside an indirect table: next past the table's end.
        r.header(OutHdr::read(0));
        r.desc_at(TABLE, 0, HDR, 16, F_NEXT, 7);
        r.desc_at(TABLE, 1, STATUS, 1, F_WRITE, 0);
        r.desc(0, 0, TABLE, 32, F_INDIRECT, 0);
        assert_refused(r.submit(0), "next past an indirect table");
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_bar_moved_while_live() {
    run_case("bar_moved_while_live", 1, |r| {
        // A driver may move BAR0 at any time (with memory decoding off, as firmware does);
        // the notify ioeventfd must follow and requests keep being served.
        r.dev.config_write(4, &0u16.to_le_bytes());
        let moved = BAR0 + 0x10_0000;
        r.dev.config_write(0x10, &(moved as u32).to_le_bytes());
        r.dev
            .config_write(0x14, &((moved >> 32) as u32).to_le_bytes());
        r.dev.config_write(4, &6u16.to_le_bytes());
        let bars = r.dev.bars();
        assert_eq!(
            bars.first().map(|b| b.addr),
            Some(moved),
            "BAR0 did not move"
        );
        read_chain(r, 3, (DATA_IN, 512));
        let o = r.submit(0);
        assert_eq!(
            o,
            Outcome::Used {
                len: 513,
                status: VIRTIO_BLK_S_OK
            },
            "read after BAR0 moved"
        );
        let mut got = vec![0u8; 512];
        r.mem.read(DATA_IN, &mut got).expect("data");
        assert!(
            got == r.model[3 * 512..4 * 512],
            "wrong data after BAR0 moved"
        );
        // And back.
        r.dev.config_write(0x10, &(BAR0 as u32).to_le_bytes());
        r.dev
            .config_write(0x14, &((BAR0 >> 32) as u32).to_le_bytes());
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_same_head_twice_and_overlapping_rings() {
    run_case("same_head_twice_and_overlapping_rings", 1, |r| {
        // The same chain made available twice before it completes.
        read_chain(r, 4, (DATA_IN, 512));
        r.publish(0, 0);
        r.publish(0, 0);
        r.kick(0);
        // Each availability is served, or refused, or the device asks for a reset; never
        // left unanswered, never more written than the chain offers.
        for _ in 0..2 {
            let o = r.outcome(0);
            assert!(
                matches!(o, Outcome::Used { len, .. } if len <= 513) || o == Outcome::NeedsReset,
                "{o:?}"
            );
            if o == Outcome::NeedsReset {
                break;
            }
        }
        r.reinit();
        // The used ring on top of the descriptor table: completions overwrite descriptors.
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        let a = r.rings[0];
        let overlapped = RingAddresses {
            used_ring: a.desc_table,
            ..a
        };
        r.setup_queue(0, QSIZE, overlapped);
        r.w16(common::QUEUE_ENABLE, 1);
        r.driver_ok();
        r.rings[0] = overlapped;
        for _ in 0..4 {
            read_chain(r, 4, (DATA_IN, 512));
            r.publish(0, 0);
            r.kick(0);
            let _ = r.outcome(0);
        }
        r.rings[0] = a;
        r.reinit();
        r.reinit();
        vec![(DATA_IN, DATA_IN + 512)]
    });
}

#[test]
fn hostile_rings_straddling_adjacent_regions() {
    run_case("rings_straddling_adjacent_regions", 1, |r| {
        // Legal but awkward: rings across the boundary of two adjacent memory regions
        // (contiguous guest RAM backed by two host mappings). Used element 0 straddles it.
        let rings = RingAddresses {
            desc_table: MIB - 16 * 8,
            avail_ring: MIB - 0x200 - 6,
            used_ring: MIB - 8,
        };
        let zones = [
            (rings.desc_table, rings.desc_table + 256),
            (rings.avail_ring, rings.avail_ring + 6 + 2 * 16),
            (rings.used_ring, rings.used_ring + 6 + 8 * 16),
        ];
        for (s, e) in zones {
            r.mem
                .write(s, &vec![0u8; (e - s) as usize])
                .expect("ring memory");
        }
        r.reset();
        r.clear_rings();
        r.init_until_queues();
        r.setup_queue(0, QSIZE, rings);
        r.w16(common::QUEUE_ENABLE, 1);
        r.driver_ok();
        let original = r.rings[0];
        r.rings[0] = rings;
        for round in 0..20u64 {
            let sector = 50 + round % 4;
            read_chain(r, sector, (DATA_IN, 512));
            // Descriptors 8..15 lie in the second region.
            let d = 8 + (round % 4) as u16 * 2;
            r.desc(0, d, HDR, 16, F_NEXT, d + 1);
            r.desc(0, d + 1, DATA_IN, 512, F_NEXT | F_WRITE, 2);
            let o = r.submit(d);
            assert_eq!(
                o,
                Outcome::Used {
                    len: 513,
                    status: VIRTIO_BLK_S_OK
                },
                "round {round}: rings across adjacent regions"
            );
            let mut got = vec![0u8; 512];
            r.mem.read(DATA_IN, &mut got).expect("data");
            assert!(
                got == r.model[sector as usize * 512..(sector as usize + 1) * 512],
                "round {round}: wrong data"
            );
        }
        r.rings[0] = original;
        r.reinit();
        let mut allowed = zones.to_vec();
        allowed.push((DATA_IN, DATA_IN + 512));
        allowed
    });
}

// --- the checks themselves can fail ----------------------------------------------------------

#[test]
fn checks_catch_stray_writes_and_image_changes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut r = Rig::new(IoMode::Vcpu, 1);
    fn caught(r: &Rig, f: &dyn Fn(&Rig)) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r))).is_err()
    }
    assert!(!caught(&r, &|r| r.check_canaries(&[])), "clean rig flagged");
    r.mem.write(0x40000, &[0]).expect("stray");
    assert!(
        caught(&r, &|r| r.check_canaries(&[])),
        "stray write into a canary zone not caught"
    );
    assert!(
        !caught(&r, &|r| r.check_canaries(&[(0x40000, 0x40001)])),
        "allowed write flagged"
    );
    r.mem.write(0x40000, &[CANARY]).expect("restore");
    assert!(!caught(&r, &|r| r.check_image()), "clean image flagged");
    r.model[700] ^= 1;
    assert!(caught(&r, &|r| r.check_image()), "changed image not caught");
    r.model[700] ^= 1;
    // An accepted request is not a refusal.
    assert!(!Outcome::Used {
        len: 513,
        status: VIRTIO_BLK_S_OK
    }
    .refused());
    assert!(Outcome::Used {
        len: 0,
        status: 0xee
    }
    .refused());
    assert!(
        !Outcome::Ignored.refused(),
        "a request never returned is not refused"
    );
    r.check_serves_io(false);
}

#[test]
fn hostile_data_direction_mismatch() {
    run_case("data_direction_mismatch", 1, |r| {
        // A read whose data buffer is device-readable: the device must not write it.
        let before = vec![0x77u8; 1024];
        r.mem.write(0x30000, &vec![CANARY; 1024]).expect("buffer");
        r.header(OutHdr::read(60));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, 0x30000, 1024, F_NEXT, 2);
        r.desc(0, 2, STATUS, 1, F_WRITE, 0);
        assert_refused(r.submit(0), "IN into a device-readable buffer");
        // A write whose data buffer is device-writable: nothing to write from.
        r.mem.write(DATA_IN, &before).expect("buffer");
        r.header(OutHdr::write(61));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, DATA_IN, 1024, F_NEXT | F_WRITE, 2);
        r.desc(0, 2, STATUS, 1, F_WRITE, 0);
        assert_refused(r.submit(0), "OUT from a device-writable buffer");
        r.check_image();
        // A header marked device-writable.
        r.header(OutHdr::write(62));
        r.desc(0, 0, HDR, 16, F_NEXT | F_WRITE, 1);
        r.desc(0, 1, STATUS, 1, F_WRITE, 0);
        assert_refused(r.submit(0), "device-writable header");
        // Canary zone at 0x30000 checked by run_case: the IN above must not have touched it.
        vec![(DATA_IN, DATA_IN + 1024)]
    });
}

/// A read whose data lands on the rings themselves (descriptor table, avail ring, used ring),
/// with two more copies of the chain behind it: the next look at the avail ring finds an
/// impossible index (a ring failure) while requests are still in flight. The device must
/// ask for a reset (or carry on) and must come back after one.
///
/// Each io mode runs in a child process (this test binary, running the ignored
/// [`read_over_rings_child`]), so a hang is contained and killed.
///
/// Regression test (fixed in c6ae761): in `IoMode::Vcpu` processing to completion looped
/// forever once a ring failure stopped the queue while the engine still held operations
/// (nothing reaped them), so the vCPU thread spun inside the notify exit for good and SIGTERM
/// then hung too. A failed queue now retires what is in flight (`QueueService::process` in
/// blk-device/src/service.rs).
#[test]
fn hostile_read_over_the_rings_with_requests_in_flight() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_kvm();
    let exe = std::env::current_exe().expect("test binary");
    let mut failed = Vec::new();
    for mode in MODES {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "read_over_rings_child",
                "--ignored",
                "--nocapture",
            ])
            .env("HOSTILE_CHILD_MODE", format!("{mode:?}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("child test");
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("child output");
        match status {
            Some(s) if s.success() => {}
            Some(_) => failed.push(format!(
                "{mode:?}: failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            )),
            None => failed.push(format!("{mode:?}: hung for 15 s (killed)")),
        }
    }
    assert!(
        failed.is_empty(),
        "read over the rings with requests in flight: {failed:#?}"
    );
}

/// The body of [`hostile_read_over_the_rings_with_requests_in_flight`] for the io mode in
/// `HOSTILE_CHILD_MODE`.
#[test]
#[ignore = "run in a child process by hostile_read_over_the_rings_with_requests_in_flight"]
fn read_over_rings_child() {
    let want = std::env::var("HOSTILE_CHILD_MODE").unwrap_or_default();
    let mode = MODES
        .into_iter()
        .find(|m| format!("{m:?}") == want)
        .unwrap_or_else(|| panic!("HOSTILE_CHILD_MODE={want:?} names no io mode"));
    let mut r = Rig::new(mode, 1);
    r.header(OutHdr::read(0));
    r.desc(0, 0, HDR, 16, F_NEXT, 1);
    r.desc(0, 1, RING[0], 4096, F_NEXT | F_WRITE, 2);
    r.desc(0, 2, STATUS, 1, F_WRITE, 0);
    for _ in 0..3 {
        r.publish(0, 0);
    }
    r.kick(0);
    let _ = r.outcome(0);
    r.reinit();
    r.check_serves_io(false);
    r.check_image();
    r.check_canaries(&[]);
}

/// CPU time (clock ticks) of the device's threads: every thread not named after this binary
/// or its tests.
fn device_cpu_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            !std::fs::read_to_string(e.path().join("comm"))
                .unwrap_or_default()
                .starts_with("hostile")
        })
        .map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // Fields after the `(comm)`: utime and stime are the 12th and 13th.
            let f: Vec<u64> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
        })
        .sum()
}

/// After a ring failure with requests in flight (the read over the rings above), an idle
/// device must not burn a CPU while it waits for the driver's reset.
///
/// Regression test (fixed in c6ae761): in `IoMode::Workers` a failed queue did not reap the
/// pool's finished jobs, so the serving thread's `prepare_sleep` always saw completions and it
/// never slept, keeping a core busy until the driver reset. A failed queue now retires them
/// (`QueueService::process` in blk-device/src/service.rs).
#[test]
fn hostile_no_busy_loop_after_ring_failure() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_kvm();
    let ticks_per_s = 100; // USER_HZ
    let mut busy = Vec::new();
    for mode in [IoMode::Dataplane, IoMode::Workers, IoMode::Iothread] {
        let mut r = Rig::new(mode, 1);
        r.header(OutHdr::read(0));
        r.desc(0, 0, HDR, 16, F_NEXT, 1);
        r.desc(0, 1, RING[0], 4096, F_NEXT | F_WRITE, 2);
        r.desc(0, 2, STATUS, 1, F_WRITE, 0);
        for _ in 0..3 {
            r.publish(0, 0);
        }
        r.kick(0);
        let _ = r.outcome(0);
        std::thread::sleep(Duration::from_millis(100));
        let before = device_cpu_ticks();
        std::thread::sleep(Duration::from_secs(1));
        let used = device_cpu_ticks() - before;
        if used > ticks_per_s / 3 {
            busy.push(format!(
                "{mode:?}: device threads used {used}% of a CPU while idle (status {:#x})",
                r.status()
            ));
        }
        r.reinit();
        r.check_serves_io(false);
    }
    assert!(busy.is_empty(), "busy loop after a ring failure: {busy:#?}");
}
