//! Request execution end to end without KVM: a driver (`DriverQueue`) publishes chains into
//! a `GuestMemoryMmap`, a [`QueueWorker`] serves them against a temporary raw image.

use std::sync::Arc;

use backend_raw::{Disk, DiskOptions, EngineKind};
use blk_proto::{
    DeviceLimits, DiscardWriteZeroes, OutHdr, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use virtqueue_core::{DriverQueue, GuestMemory, Queue, RingLayout};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::handler::{DeviceHealth, QueueWorker};
use super::request::{engine_depth, Executor};
use crate::interrupts::MsixVectors;

const MEM_SIZE: usize = 1 << 20;
const RING: u64 = 0x1000;
const HDR: u64 = 0x8000;
const STATUS: u64 = 0x8100;
const DATA: u64 = 0x10000;
const QSIZE: u16 = 16;
/// Image size: 128 sectors.
const DISK_SIZE: u64 = 64 * 1024;
const SERIAL: &str = "vblk-test-serial";

struct Harness {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    mem: GuestMemoryMmap,
    driver: DriverQueue,
    worker: QueueWorker,
    vectors: Arc<MsixVectors>,
    health: Arc<DeviceHealth>,
}

fn limits(readonly: bool) -> DeviceLimits {
    DeviceLimits {
        read_only: readonly,
        flush: true,
        discard: true,
        write_zeroes: true,
        max_discard_seg: 4,
        max_write_zeroes_seg: 4,
        ..DeviceLimits::new(DISK_SIZE / 512)
    }
}

fn harness_with(readonly: bool, kind: EngineKind, event_idx: bool) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    let pattern: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8).collect();
    std::fs::write(&path, pattern).expect("image");
    let disk = Disk::open(
        &path,
        DiskOptions {
            readonly,
            direct: false,
        },
    )
    .expect("open");
    let (engine, _) = disk
        .engine_or_sync(kind, engine_depth(QSIZE))
        .expect("engine");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let addrs = RingLayout::new(QSIZE).expect("layout").addresses(RING);
    let driver = DriverQueue::new(&mem, QSIZE, addrs, event_idx).expect("driver queue");
    let mut queue = Queue::new(QSIZE);
    queue.set_desc_table_address(addrs.desc_table);
    queue.set_avail_ring_address(addrs.avail_ring);
    queue.set_used_ring_address(addrs.used_ring);
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    assert!(queue.is_valid(&mem));
    let vectors = Arc::new(MsixVectors::unbound(2, 2).expect("vectors"));
    vectors.set_source_vector(0, 0);
    vectors.set_source_vector(1, 1);
    let health = Arc::new(DeviceHealth::default());
    let exec = Executor::new(engine, limits(readonly), SERIAL);
    let worker = QueueWorker::new(
        0,
        queue,
        mem.clone(),
        exec,
        vectors.clone(),
        health.clone(),
        1,
    );
    Harness {
        _dir: dir,
        path,
        mem,
        driver,
        worker,
        vectors,
        health,
    }
}

fn harness() -> Harness {
    harness_with(false, EngineKind::Sync, false)
}

impl Harness {
    fn header(&self, hdr: OutHdr) -> (u64, u32) {
        self.mem.write(HDR, &hdr.to_bytes()).expect("header");
        (HDR, 16)
    }

    fn status(&self) -> u8 {
        let mut b = [0xee];
        self.mem.read(STATUS, &mut b).expect("status");
        b[0]
    }

    /// Publishes a chain, runs the worker, returns the one used element.
    fn roundtrip(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> (u16, u32) {
        self.mem.write(STATUS, &[0xee]).expect("status");
        let head = self.driver.add(&self.mem, readable, writable).expect("add");
        self.worker.process_to_completion();
        let used = self
            .driver
            .pop_used(&self.mem)
            .expect("used ring")
            .expect("one used element");
        assert_eq!(used.0, head);
        assert_eq!(self.driver.pop_used(&self.mem).expect("used ring"), None);
        used
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("image")
    }

    fn interrupts(&self, vector: u16) -> u64 {
        self.vectors
            .line(vector)
            .and_then(|l| l.irqfd().read().ok())
            .unwrap_or(0)
    }
}

fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read(addr, &mut v).expect("read");
    v
}

#[test]
fn read_returns_disk_data_and_used_len_counts_data_and_status() {
    let mut h = harness();
    let hdr = h.header(OutHdr::read(3));
    let used = h.roundtrip(&[hdr], &[(DATA, 512), (DATA + 0x1000, 512), (STATUS, 1)]);
    assert_eq!(used.1, 1024 + 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    assert_eq!(guest_bytes(&h.mem, DATA, 512), vec![3u8; 512]);
    assert_eq!(guest_bytes(&h.mem, DATA + 0x1000, 512), vec![4u8; 512]);
    assert_eq!(h.interrupts(0), 1);
}

#[test]
fn io_uring_engine_serves_reads_and_writes() {
    let mut h = harness_with(false, EngineKind::IoUring, true);
    h.mem.write(DATA, &[0x5a; 1024]).expect("data");
    let hdr = h.header(OutHdr::write(10));
    let used = h.roundtrip(&[hdr, (DATA, 1024)], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_OK));
    let hdr = h.header(OutHdr::read(10));
    let used = h.roundtrip(&[hdr], &[(DATA + 0x2000, 1024), (STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1025, VIRTIO_BLK_S_OK));
    assert_eq!(guest_bytes(&h.mem, DATA + 0x2000, 1024), vec![0x5a; 1024]);
}

#[test]
fn write_reaches_the_image() {
    let mut h = harness();
    h.mem.write(DATA, &[0xab; 512]).expect("data");
    let hdr = h.header(OutHdr::write(7));
    let used = h.roundtrip(&[hdr, (DATA, 512)], &[(STATUS, 1)]);
    assert_eq!(used.1, 1);
    assert_eq!(h.status(), VIRTIO_BLK_S_OK);
    let img = h.image();
    assert_eq!(&img[7 * 512..8 * 512], &[0xab; 512][..]);
    assert_eq!(img[6 * 512], 6);
    assert_eq!(img[8 * 512], 8);
}

#[test]
fn flush_succeeds() {
    let mut h = harness();
    let hdr = h.header(OutHdr::flush());
    let used = h.roundtrip(&[hdr], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_OK));
}

#[test]
fn get_id_writes_the_padded_serial() {
    let mut h = harness();
    let hdr = h.header(OutHdr::get_id());
    let used = h.roundtrip(&[hdr], &[(DATA, 20), (STATUS, 1)]);
    assert_eq!((used.1, h.status()), (21, VIRTIO_BLK_S_OK));
    let mut want = SERIAL.as_bytes().to_vec();
    want.resize(20, 0);
    assert_eq!(guest_bytes(&h.mem, DATA, 20), want);
}

#[test]
fn discard_and_write_zeroes_zero_the_ranges() {
    let mut h = harness();
    let seg = DiscardWriteZeroes::new(2, 2, false).to_bytes();
    h.mem.write(DATA, &seg).expect("segment");
    let hdr = h.header(OutHdr::discard());
    let used = h.roundtrip(&[hdr, (DATA, 16)], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_OK));
    let img = h.image();
    assert!(
        img[2 * 512..4 * 512].iter().all(|&b| b == 0),
        "discarded range reads as zeros"
    );

    let segs = [
        DiscardWriteZeroes::new(20, 1, false).to_bytes(),
        DiscardWriteZeroes::new(30, 3, true).to_bytes(),
    ];
    h.mem.write(DATA, &segs.concat()).expect("segments");
    let hdr = h.header(OutHdr::write_zeroes());
    let used = h.roundtrip(&[hdr, (DATA, 32)], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_OK));
    let img = h.image();
    assert!(img[20 * 512..21 * 512].iter().all(|&b| b == 0));
    assert!(img[30 * 512..33 * 512].iter().all(|&b| b == 0));
    assert_eq!(img[21 * 512], 21);
    assert_eq!(img[33 * 512], 33);
}

#[test]
fn out_of_range_read_is_ioerr_and_disk_untouched() {
    let mut h = harness();
    let hdr = h.header(OutHdr::read(DISK_SIZE / 512 - 1));
    let used = h.roundtrip(&[hdr], &[(DATA, 1024), (STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
    h.mem.write(DATA, &[1; 512]).expect("data");
    let hdr = h.header(OutHdr::write(u64::MAX));
    let used = h.roundtrip(&[hdr, (DATA, 512)], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.image().len() as u64, DISK_SIZE);
}

#[test]
fn readonly_device_refuses_writes() {
    let mut h = harness_with(true, EngineKind::Sync, false);
    h.mem.write(DATA, &[0xcd; 512]).expect("data");
    let hdr = h.header(OutHdr::write(0));
    let used = h.roundtrip(&[hdr, (DATA, 512)], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.image()[0], 0);
    let hdr = h.header(OutHdr::read(1));
    let used = h.roundtrip(&[hdr], &[(DATA, 512), (STATUS, 1)]);
    assert_eq!((used.1, h.status()), (513, VIRTIO_BLK_S_OK));
}

#[test]
fn unknown_type_is_unsupp() {
    let mut h = harness();
    let mut hdr = OutHdr::flush();
    hdr.type_ = 99.into();
    let hdr = h.header(hdr);
    let used = h.roundtrip(&[hdr], &[(STATUS, 1)]);
    assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn chain_without_status_byte_returns_len_0() {
    let mut h = harness();
    let hdr = h.header(OutHdr::flush());
    let used = h.roundtrip(&[hdr], &[]);
    assert_eq!(used.1, 0);
    assert_eq!(h.status(), 0xee, "nothing written");
}

#[test]
fn buffer_outside_guest_ram_is_rejected_without_touching_the_disk() {
    let mut h = harness();
    let hdr = h.header(OutHdr::write(0));
    let used = h.roundtrip(&[hdr, (MEM_SIZE as u64 - 256, 512)], &[(STATUS, 1)]);
    // The chain walk rejects the buffer: returned with length 0.
    assert_eq!(used.1, 0);
    assert_eq!(h.image()[0], 0);
}

#[test]
fn avail_idx_jump_asks_for_reset_and_raises_config_interrupt() {
    let mut h = harness();
    let avail_idx = h.driver.addresses().avail_ring + 2;
    h.mem
        .store_u16(avail_idx, QSIZE + 5, std::sync::atomic::Ordering::Release)
        .expect("idx");
    assert!(h.worker.process());
    assert!(h.health.take_needs_reset());
    assert_eq!(h.interrupts(1), 1);
    // The queue stays stopped: no panic, no more work.
    assert!(!h.worker.process());
}

#[test]
fn batch_of_requests_gets_one_interrupt_with_event_idx() {
    let mut h = harness_with(false, EngineKind::Sync, true);
    let hdr = h.header(OutHdr::read(0));
    let mut heads = Vec::new();
    for i in 0..4u64 {
        heads.push(
            h.driver
                .add(&h.mem, &[hdr], &[(DATA + i * 0x1000, 512), (STATUS + i, 1)])
                .expect("add"),
        );
    }
    h.worker.process_to_completion();
    let mut got = Vec::new();
    while let Some((head, len)) = h.driver.pop_used(&h.mem).expect("used") {
        assert_eq!(len, 513);
        got.push(head);
    }
    assert_eq!(got, heads);
    assert_eq!(h.interrupts(0), 1);
}

mod with_kvm {
    //! The whole device through its PCI interface, with a real VM for ioeventfds, irqfds and
    //! MSI routes (no vcpu: the test plays the driver by calling the MMIO handlers).

    use std::path::Path;
    use std::time::{Duration, Instant};

    use pci_transport::virtio_pci::common_cfg::offset as common;
    use pci_transport::virtio_pci::device_status as status;
    use pci_transport::virtio_pci::layout::NOTIFY_OFFSET;

    use super::*;
    use crate::config::{DiskConfig, EngineChoice, IoMode};
    use crate::interrupts::MsiRouter;
    use crate::pci_device::PciDevice;
    use crate::virtio_blk::{DeviceContext, VirtioBlkPci};

    const BAR0: u64 = 0xe000_0000;
    const MSIX_CAP_ID: u8 = 0x11;

    fn device(
        path: &Path,
        io_mode: IoMode,
        engine: EngineChoice,
        queues: u16,
    ) -> (VirtioBlkPci, GuestMemoryMmap) {
        // Needs /dev/kvm: fail loudly without it, never skip.
        let kvm = kvm_ioctls::Kvm::new()
            .unwrap_or_else(|e| panic!("this test needs read-write access to /dev/kvm: {e}"));
        let vm = Arc::new(kvm.create_vm().expect("create_vm"));
        vm.create_irq_chip().expect("irqchip");
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
        let mut ctx = DeviceContext::new(
            vm.clone(),
            mem.clone(),
            Arc::new(MsiRouter::new(vm)),
            BAR0,
            io_mode,
        );
        ctx.poll_us = 20;
        if io_mode == IoMode::Iothread {
            // The VM's shared loop, as `attach_disks` builds it.
            let io =
                crate::virtio_blk::iothread::IoThread::start(Arc::new(std::sync::Mutex::new(())))
                    .expect("iothread");
            ctx.iothread = Some(Arc::new(io));
        }
        let cfg = DiskConfig {
            path: path.to_path_buf(),
            readonly: false,
            direct: false,
            engine,
            queues,
            queue_size: QSIZE,
            serial: SERIAL.to_string(),
            fault: None,
        };
        (VirtioBlkPci::new(&cfg, ctx).expect("device"), mem)
    }

    fn w(dev: &mut VirtioBlkPci, off: u64, data: &[u8]) {
        dev.bar_write(0, off, data);
    }

    fn r32(dev: &mut VirtioBlkPci, off: u64) -> u32 {
        let mut b = [0; 4];
        dev.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r8(dev: &mut VirtioBlkPci, off: u64) -> u8 {
        let mut b = [0; 1];
        dev.bar_read(0, off, &mut b);
        b[0]
    }

    fn enable_msix(dev: &mut VirtioBlkPci) {
        let mut ptr = [0u8; 1];
        dev.config_read(0x34, &mut ptr);
        let mut at = ptr[0];
        while at != 0 {
            let mut hdr = [0u8; 2];
            dev.config_read(u16::from(at), &mut hdr);
            if hdr[0] == MSIX_CAP_ID {
                dev.config_write(u16::from(at) + 2, &(1u16 << 15).to_le_bytes());
                return;
            }
            at = hdr[1];
        }
        panic!("no MSI-X capability");
    }

    /// Feature negotiation and setup of one queue per entry of `rings`, queue `i` on MSI-X
    /// vector `i` (3.1.1 "Driver Requirements: Device Initialization").
    fn init(dev: &mut VirtioBlkPci, rings: &[virtqueue_core::RingAddresses], features: u64) {
        enable_msix(dev);
        for v in 0..rings.len() as u64 {
            // Some LAPIC address and vector, unmasked.
            w(dev, 0x8000 + 16 * v, &0xfee0_0000u32.to_le_bytes());
            w(dev, 0x8008 + 16 * v, &(0x30 + v as u32).to_le_bytes());
            w(dev, 0x800c + 16 * v, &0u32.to_le_bytes());
        }
        w(
            dev,
            common::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER],
        );
        w(dev, common::DEVICE_FEATURE_SELECT, &1u32.to_le_bytes());
        let offered_hi = r32(dev, common::DEVICE_FEATURE);
        assert_ne!(offered_hi & 1, 0, "VERSION_1 offered");
        for (sel, word) in [(0u32, features as u32), (1, (features >> 32) as u32)] {
            w(dev, common::DRIVER_FEATURE_SELECT, &sel.to_le_bytes());
            w(dev, common::DRIVER_FEATURE, &word.to_le_bytes());
        }
        w(
            dev,
            common::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK],
        );
        assert_ne!(
            r8(dev, common::DEVICE_STATUS) & status::FEATURES_OK,
            0,
            "features accepted"
        );
        for (q, addrs) in rings.iter().enumerate() {
            w(dev, common::QUEUE_SELECT, &(q as u16).to_le_bytes());
            w(dev, common::QUEUE_SIZE, &QSIZE.to_le_bytes());
            w(dev, common::QUEUE_MSIX_VECTOR, &(q as u16).to_le_bytes());
            for (off, addr) in [
                (common::QUEUE_DESC, addrs.desc_table),
                (common::QUEUE_DRIVER, addrs.avail_ring),
                (common::QUEUE_DEVICE, addrs.used_ring),
            ] {
                w(dev, off, &(addr as u32).to_le_bytes());
                w(dev, off + 4, &((addr >> 32) as u32).to_le_bytes());
            }
            w(dev, common::QUEUE_ENABLE, &1u16.to_le_bytes());
        }
        w(
            dev,
            common::DEVICE_STATUS,
            &[status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK],
        );
    }

    fn wait_used(driver: &mut DriverQueue, mem: &GuestMemoryMmap) -> (u16, u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(u) = driver.pop_used(mem).expect("used ring") {
                return u;
            }
            assert!(Instant::now() < deadline, "no completion within 5 s");
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn read_sector_5(io_mode: IoMode, engine: EngineChoice, event_idx: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let pattern: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, pattern).expect("image");
        let (mut dev, mem) = device(&path, io_mode, engine, 1);
        let addrs = RingLayout::new(QSIZE).expect("layout").addresses(RING);
        let mut driver = DriverQueue::new(&mem, QSIZE, addrs, event_idx).expect("driver");
        let mut features = 1u64 << 32;
        if event_idx {
            features |= 1 << 29;
        }
        init(&mut dev, &[addrs], features);
        for round in 0..3u64 {
            mem.write(HDR, &OutHdr::read(5 + round).to_bytes())
                .expect("header");
            mem.write(STATUS, &[0xee]).expect("status");
            let head = driver
                .add(&mem, &[(HDR, 16)], &[(DATA, 512), (STATUS, 1)])
                .expect("add");
            if driver.should_kick(&mem) {
                // An MMIO exit on the notify register (the ioeventfd would catch it in a VM).
                w(&mut dev, NOTIFY_OFFSET, &0u16.to_le_bytes());
            }
            assert_eq!(wait_used(&mut driver, &mem), (head, 513));
            assert_eq!(guest_bytes(&mem, STATUS, 1), [VIRTIO_BLK_S_OK]);
            assert_eq!(guest_bytes(&mem, DATA, 512), vec![(5 + round) as u8; 512]);
        }
        // Reset stops the dataplane; the device can be brought up again.
        w(&mut dev, common::DEVICE_STATUS, &[0]);
        assert_eq!(r8(&mut dev, common::DEVICE_STATUS), 0);
        dev.shutdown();
    }

    #[test]
    fn dataplane_thread_serves_reads() {
        read_sector_5(IoMode::Dataplane, EngineChoice::IoUring, true);
    }

    #[test]
    fn iothread_mode_with_sync_engine_serves_reads() {
        read_sector_5(IoMode::Iothread, EngineChoice::Sync, false);
    }

    #[test]
    fn workers_mode_with_sync_engine_serves_reads() {
        read_sector_5(IoMode::Workers, EngineChoice::Sync, true);
    }

    #[test]
    fn workers_mode_with_io_uring_serves_reads() {
        read_sector_5(IoMode::Workers, EngineChoice::IoUring, false);
    }

    #[test]
    fn vcpu_mode_serves_reads_in_the_caller() {
        read_sector_5(IoMode::Vcpu, EngineChoice::Sync, true);
    }

    #[test]
    fn two_queues_are_served_each_on_its_ring() {
        two_queues(IoMode::Dataplane);
    }

    #[test]
    fn two_queues_share_the_worker_pool() {
        two_queues(IoMode::Workers);
    }

    #[test]
    fn two_queues_share_the_iothread() {
        two_queues(IoMode::Iothread);
    }

    fn two_queues(mode: IoMode) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let pattern: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8).collect();
        std::fs::write(&path, pattern).expect("image");
        let (mut dev, mem) = device(&path, mode, EngineChoice::IoUring, 2);
        w(&mut dev, common::DEVICE_FEATURE_SELECT, &0u32.to_le_bytes());
        assert_ne!(
            r32(&mut dev, common::DEVICE_FEATURE) & (1 << 12),
            0,
            "MQ offered"
        );
        let layout = RingLayout::new(QSIZE).expect("layout");
        let rings = [layout.addresses(RING), layout.addresses(RING + 0x2000)];
        let mut drivers: Vec<DriverQueue> = rings
            .iter()
            .map(|a| DriverQueue::new(&mem, QSIZE, *a, false).expect("driver"))
            .collect();
        init(&mut dev, &rings, (1 << 32) | (1 << 12));
        for (q, driver) in drivers.iter_mut().enumerate() {
            let q64 = q as u64;
            let hdr = HDR + 0x40 * q64;
            mem.write(hdr, &OutHdr::read(40 + q64).to_bytes())
                .expect("header");
            let data = DATA + 0x4000 * q64;
            let st = STATUS + q64;
            let head = driver
                .add(&mem, &[(hdr, 16)], &[(data, 512), (st, 1)])
                .expect("add");
            w(&mut dev, NOTIFY_OFFSET + 4 * q64, &(q as u16).to_le_bytes());
            assert_eq!(wait_used(driver, &mem), (head, 513));
            assert_eq!(guest_bytes(&mem, st, 1), [VIRTIO_BLK_S_OK]);
            assert_eq!(guest_bytes(&mem, data, 512), vec![40 + q as u8; 512]);
        }
        dev.shutdown();
    }

    #[test]
    fn broken_ring_sets_device_needs_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; DISK_SIZE as usize]).expect("image");
        let (mut dev, mem) = device(&path, IoMode::Dataplane, EngineChoice::Sync, 1);
        let addrs = RingLayout::new(QSIZE).expect("layout").addresses(RING);
        let _driver = DriverQueue::new(&mem, QSIZE, addrs, false).expect("driver");
        init(&mut dev, &[addrs], 1 << 32);
        mem.store_u16(
            addrs.avail_ring + 2,
            1000,
            std::sync::atomic::Ordering::Release,
        )
        .expect("idx");
        w(&mut dev, NOTIFY_OFFSET, &0u16.to_le_bytes());
        let deadline = Instant::now() + Duration::from_secs(5);
        while r8(&mut dev, common::DEVICE_STATUS) & status::DEVICE_NEEDS_RESET == 0 {
            assert!(Instant::now() < deadline, "DEVICE_NEEDS_RESET never set");
            std::thread::sleep(Duration::from_millis(1));
        }
        dev.shutdown();
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write { sector: u64, sectors: u8, byte: u8 },
        Read { sector: u64, sectors: u8 },
        Zero { sector: u64, sectors: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let sector = 0..DISK_SIZE / 512 + 4;
        prop_oneof![
            (sector.clone(), 1..8u8, any::<u8>()).prop_map(|(sector, sectors, byte)| Op::Write {
                sector,
                sectors,
                byte
            }),
            (sector.clone(), 1..8u8).prop_map(|(sector, sectors)| Op::Read { sector, sectors }),
            (sector, 1..8u8).prop_map(|(sector, sectors)| Op::Zero { sector, sectors }),
        ]
    }

    /// A descriptor pointing mostly at plausible buffers (header, data, status), sometimes
    /// anywhere, with any flags and any next index.
    fn desc() -> impl Strategy<Value = [u8; 16]> {
        let addr = prop_oneof![
            Just(HDR),
            Just(DATA),
            Just(DATA + 0x200),
            Just(STATUS),
            any::<u64>()
        ];
        let len = prop_oneof![Just(16u32), Just(512), Just(1), Just(20), any::<u32>()];
        (addr, len, 0..8u16, 0..20u16).prop_map(|(addr, len, flags, next)| {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            d
        })
    }

    fn in_range(sector: u64, sectors: u8) -> bool {
        sector + u64::from(sectors) <= DISK_SIZE / 512
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Reads, writes and write-zeroes against a model image: same data, same status,
        /// out-of-range requests fail without touching anything.
        #[test]
        fn requests_match_a_model_image(ops in proptest::collection::vec(op(), 1..24)) {
            let mut h = harness();
            let mut model: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8).collect();
            for op in ops {
                match op {
                    Op::Write { sector, sectors, byte } => {
                        let len = usize::from(sectors) * 512;
                        h.mem.write(DATA, &vec![byte; len]).expect("data");
                        let hdr = h.header(OutHdr::write(sector));
                        let used = h.roundtrip(&[hdr, (DATA, len as u32)], &[(STATUS, 1)]);
                        prop_assert_eq!(used.1, 1);
                        if in_range(sector, sectors) {
                            prop_assert_eq!(h.status(), VIRTIO_BLK_S_OK);
                            let at = sector as usize * 512;
                            model[at..at + len].fill(byte);
                        } else {
                            prop_assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
                        }
                    }
                    Op::Read { sector, sectors } => {
                        let len = usize::from(sectors) * 512;
                        let hdr = h.header(OutHdr::read(sector));
                        let used = h.roundtrip(&[hdr], &[(DATA + 0x8000, len as u32), (STATUS, 1)]);
                        if in_range(sector, sectors) {
                            prop_assert_eq!((used.1, h.status()), (len as u32 + 1, VIRTIO_BLK_S_OK));
                            let at = sector as usize * 512;
                            prop_assert_eq!(guest_bytes(&h.mem, DATA + 0x8000, len), model[at..at + len].to_vec());
                        } else {
                            prop_assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
                        }
                    }
                    Op::Zero { sector, sectors } => {
                        h.mem.write(DATA, &DiscardWriteZeroes::new(sector, u32::from(sectors), false).to_bytes()).expect("seg");
                        let hdr = h.header(OutHdr::write_zeroes());
                        let used = h.roundtrip(&[hdr, (DATA, 16)], &[(STATUS, 1)]);
                        prop_assert_eq!(used.1, 1);
                        if in_range(sector, sectors) {
                            prop_assert_eq!(h.status(), VIRTIO_BLK_S_OK);
                            let at = sector as usize * 512;
                            model[at..at + usize::from(sectors) * 512].fill(0);
                        } else {
                            prop_assert_eq!(h.status(), VIRTIO_BLK_S_IOERR);
                        }
                    }
                }
            }
            prop_assert_eq!(h.image(), model);
        }

        /// A hostile driver fills the descriptor table and avail ring with garbage: the
        /// worker neither panics nor grows the image, and either completes chains or asks
        /// for a reset.
        #[test]
        fn garbage_rings_never_panic(
            table in proptest::collection::vec(desc(), QSIZE as usize),
            avail in proptest::collection::vec(any::<u16>(), QSIZE as usize),
            avail_idx in any::<u16>(),
            header in (0..16u32, 0..DISK_SIZE / 512 + 2),
        ) {
            let mut h = harness();
            let addrs = h.driver.addresses();
            for (i, d) in table.iter().enumerate() {
                h.mem.write(addrs.desc_table + 16 * i as u64, d).expect("table");
            }
            let mut hdr = OutHdr::read(header.1);
            hdr.type_ = header.0.into();
            h.mem.write(HDR, &hdr.to_bytes()).expect("header");
            for (i, head) in avail.iter().enumerate() {
                h.mem.store_u16(addrs.avail_ring + 4 + 2 * i as u64, *head, std::sync::atomic::Ordering::Relaxed).expect("avail");
            }
            h.mem.store_u16(addrs.avail_ring + 2, avail_idx, std::sync::atomic::Ordering::Release).expect("idx");
            for _ in 0..4 {
                h.worker.process_to_completion();
            }
            prop_assert_eq!(h.image().len() as u64, DISK_SIZE);
            let published = h.mem.load_u16(addrs.used_ring + 2, std::sync::atomic::Ordering::Acquire).expect("used idx");
            let reset = h.health.take_needs_reset();
            if avail_idx > QSIZE {
                prop_assert!(reset, "avail idx {} > queue size must ask for a reset", avail_idx);
            } else {
                prop_assert!(reset || published == avail_idx, "{} of {} chains returned", published, avail_idx);
            }
        }
    }
}

/// `IoMode::Workers` with several queues, without KVM: a driver per queue (the test thread)
/// keeps many reads and writes of random sizes in flight on every queue at once, through the
/// real handler threads ([`Dataplane`](super::handler::Dataplane)), the worker pool and
/// io_uring engines on a temporary image, and checks every completion: used length, status
/// byte, data against a model image, and that each head comes back exactly once.
mod pool_stress {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use backend_raw::Engine;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::trace::QueueTrace;
    use crate::virtio_blk::handler::{Dataplane, ThreadQueue};
    use crate::virtio_blk::pool::{self, WorkerPool};
    use crate::virtio_blk::request::RequestParser;

    const QUEUE_SIZE: u16 = 256;
    /// Requests each queue keeps in flight (each owns a disk region and a data buffer).
    const SLOTS: u64 = 48;
    /// Sectors per slot region (and data buffer size / 512).
    const REGION_SECTORS: u64 = 256;
    const REGION_BYTES: u64 = REGION_SECTORS * 512;
    const RINGS: u64 = 0x10_0000;
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

    /// Runs `total` requests spread over `queues` queues served by `workers` pool workers.
    fn run(queues: u16, workers: usize, poll_us: u32, total: usize, seed: u64) {
        let nq = u64::from(queues);
        let disk_bytes = nq * SLOTS * REGION_BYTES;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let mut rng = Rng(seed | 1);
        let mut model: Vec<u8> = (0..disk_bytes).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, &model).expect("image");
        let disk = Disk::open(
            &path,
            DiskOptions {
                readonly: false,
                direct: false,
            },
        )
        .expect("open");
        let mem_size = (BUFS + disk_bytes + 0x10_0000) as usize;
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]).expect("guest memory");
        let layout = RingLayout::new(QUEUE_SIZE).expect("layout");
        let addrs: Vec<_> = (0..nq)
            .map(|q| layout.addresses(RINGS + q * 0x1_0000))
            .collect();
        let mut drivers: Vec<DriverQueue> = addrs
            .iter()
            .map(|a| DriverQueue::new(&mem, QUEUE_SIZE, *a, true).expect("driver"))
            .collect();

        let limits = DeviceLimits {
            seg_max: 254,
            ..limits(false)
        };
        let parser = RequestParser::new(
            DeviceLimits {
                capacity: disk_bytes / 512,
                ..limits
            },
            SERIAL,
        );
        let sizes: Vec<(u16, u16)> = (0..queues).map(|q| (q, QUEUE_SIZE)).collect();
        let jobs =
            WorkerPool::channel(usize::from(QUEUE_SIZE) * usize::from(queues)).expect("channel");
        let (links, routes) = pool::links(&sizes, &parser, 512, &jobs).expect("links");
        let engines: Vec<Box<dyn Engine>> = (0..workers)
            .map(|_| {
                disk.engine_or_sync(EngineKind::IoUring, engine_depth(QUEUE_SIZE))
                    .expect("engine")
                    .0
            })
            .collect();
        let traces = (0..queues).map(|_| QueueTrace::disabled()).collect();
        let mut pool =
            WorkerPool::start(engines, mem.clone(), jobs, routes, traces, "stress").expect("pool");
        let vectors =
            Arc::new(MsixVectors::unbound(queues + 1, usize::from(queues) + 1).expect("vectors"));
        let health = Arc::new(DeviceHealth::default());
        let mut kicks = Vec::new();
        let mut groups = Vec::new();
        for (q, link) in links.into_iter().enumerate() {
            let a = addrs[q];
            let mut queue = Queue::new(QUEUE_SIZE);
            queue.set_desc_table_address(a.desc_table);
            queue.set_avail_ring_address(a.avail_ring);
            queue.set_used_ring_address(a.used_ring);
            queue.set_event_idx(true);
            queue.set_ready(true);
            assert!(queue.is_valid(&mem));
            let worker = QueueWorker::new(
                q as u16,
                queue,
                mem.clone(),
                link,
                vectors.clone(),
                health.clone(),
                usize::from(queues),
            );
            let kick = EventFd::new(EFD_NONBLOCK).expect("kick");
            kicks.push(kick.try_clone().expect("kick clone"));
            groups.push(vec![ThreadQueue { worker, kick }]);
        }
        let mut dp = Dataplane::start(groups, poll_us, "stress").expect("dataplane");
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
                    unsafe {
                        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                    };
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
                    let head = drivers[q].add(&mem, &readable, &writable).expect("add");
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
                if added && drivers[q].should_kick(&mem) {
                    kicks[q].write(1).expect("kick");
                }
            }
            let mut progress = false;
            for q in 0..nq as usize {
                while let Some((head, used_len)) = drivers[q].pop_used(&mem).expect("used ring") {
                    progress = true;
                    done += 1;
                    let Some(p) = flight[q].remove(&head) else {
                        failures.push(format!(
                            "q{q}: head {head} completed but not in flight (len {used_len})"
                        ));
                        continue;
                    };
                    let status =
                        guest_bytes(&mem, HDRS + (q as u64 * SLOTS + p.slot) * 32 + 16, 1)[0];
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
        drop(dp.stop());
        pool.stop();
        assert!(
            failures.is_empty(),
            "{queues} queues, {workers} workers, poll {poll_us} us, seed {seed:#x}: {} of {total} done; failures:\n{}",
            done,
            failures.join("\n")
        );
        assert!(!health.take_needs_reset(), "no ring failure");
        assert_eq!(
            std::fs::read(&path).expect("image"),
            model,
            "image matches the model"
        );
    }

    #[test]
    fn two_queues_one_worker_complete_every_request_correctly() {
        run(2, 1, 0, 10_000, 0x5eed_0001);
    }

    #[test]
    fn two_queues_two_workers_complete_every_request_correctly() {
        run(2, 2, 10, 10_000, 0x5eed_0002);
    }

    #[test]
    fn one_queue_two_workers_complete_every_request_correctly() {
        run(1, 2, 10, 5_000, 0x5eed_0003);
    }
}
