//! The whole device through its PCI interface, with a real VM for ioeventfds, irqfds and
//! MSI routes (no vcpu: the test plays the driver by calling the MMIO handlers). The request
//! lifecycle itself is tested in `blk-device`, in every mode, without KVM.

use std::sync::Arc;

use blk_proto::{OutHdr, VIRTIO_BLK_S_OK};
use virtqueue_core::{DriverQueue, GuestMemory, RingLayout};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 1 << 20;
const RING: u64 = 0x1000;
const HDR: u64 = 0x8000;
const STATUS: u64 = 0x8100;
const DATA: u64 = 0x10000;
const QSIZE: u16 = 16;
/// Image size: 128 sectors.
const DISK_SIZE: u64 = 64 * 1024;
const SERIAL: &str = "vblk-test-serial";

fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read(addr, &mut v).expect("read");
    v
}

use std::path::Path;
use std::time::{Duration, Instant};

use pci_transport::virtio_pci::common_cfg::offset as common;
use pci_transport::virtio_pci::device_status as status;
use pci_transport::virtio_pci::layout::NOTIFY_OFFSET;

use crate::config::{DiskConfig, EngineKind, IoMode};
use crate::interrupts::MsiRouter;
use crate::pci_device::PciDevice;
use crate::virtio_blk::{DeviceContext, VirtioBlkPci};

const BAR0: u64 = 0xe000_0000;
const MSIX_CAP_ID: u8 = 0x11;

fn device(
    path: &Path,
    io_mode: IoMode,
    engine: EngineKind,
    queues: u16,
) -> (VirtioBlkPci, GuestMemoryMmap) {
    // Needs /dev/kvm: fail loudly without it, never skip.
    let kvm = kvm_ioctls::Kvm::new()
        .unwrap_or_else(|e| panic!("this test needs read-write access to /dev/kvm: {e}"));
    let vm = Arc::new(kvm.create_vm().expect("create_vm"));
    vm.create_irq_chip().expect("irqchip");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
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
        let io = crate::virtio_blk::shared_loop(Arc::new(std::sync::Mutex::new(())), None)
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
        merge: true,
        fixed_buffers: true,
        write_log: None,
        limits: Default::default(),
        group: None,
        uri: None,
        reconnect_timeout: std::time::Duration::from_secs(5),
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

fn read_sector_5(io_mode: IoMode, engine: EngineKind, event_idx: bool) {
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
    read_sector_5(IoMode::Dataplane, EngineKind::IoUring, true);
}

#[test]
fn iothread_mode_with_sync_engine_serves_reads() {
    read_sector_5(IoMode::Iothread, EngineKind::Sync, false);
}

#[test]
fn workers_mode_with_sync_engine_serves_reads() {
    read_sector_5(IoMode::Workers, EngineKind::Sync, true);
}

#[test]
fn workers_mode_with_io_uring_serves_reads() {
    read_sector_5(IoMode::Workers, EngineKind::IoUring, false);
}

#[test]
fn vcpu_mode_serves_reads_in_the_caller() {
    read_sector_5(IoMode::Vcpu, EngineKind::Sync, true);
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
    let (mut dev, mem) = device(&path, mode, EngineKind::IoUring, 2);
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
    let (mut dev, mem) = device(&path, IoMode::Dataplane, EngineKind::Sync, 1);
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
