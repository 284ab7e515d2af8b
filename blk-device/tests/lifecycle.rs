//! The request lifecycle end to end, the same cases in every I/O mode (and both engines where
//! a mode lets the disk choose): a driver publishes chains, the device model serves them
//! against a temporary raw image, the test checks statuses, used lengths, data and the image.

mod common;

use std::sync::atomic::Ordering;

use blk_device::mode::IoMode;
use blk_proto::{
    DiscardWriteZeroes, OutHdr, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use common::{Harness, Setup, DATA, SERIAL, STATUS};
use proptest::prelude::*;
use virtqueue_core::GuestMemory;

/// Every mode, with each engine its row allows.
const RUNS: [(IoMode, &str); 7] = [
    (IoMode::Vcpu, "sync"),
    (IoMode::Iothread, "sync"),
    (IoMode::Iothread, "io_uring"),
    (IoMode::Dataplane, "sync"),
    (IoMode::Dataplane, "io_uring"),
    (IoMode::Workers, "sync"),
    (IoMode::Workers, "io_uring"),
];

const DISK_SIZE: u64 = 64 * 1024;

/// Runs `case` on a fresh harness for every entry of [`RUNS`], built from `setup`.
fn each(setup: impl Fn(Setup) -> Setup, case: impl Fn(&mut Harness)) {
    for (mode, engine) in RUNS {
        let mut h = Harness::new(setup(Setup {
            engine,
            ..Setup::new(mode)
        }));
        case(&mut h);
    }
}

fn plain(s: Setup) -> Setup {
    s
}

#[test]
fn read_returns_disk_data_and_used_len_counts_data_and_status() {
    each(plain, |h| {
        let hdr = h.header(OutHdr::read(3));
        let used = h.roundtrip(&[hdr], &[(DATA, 512), (DATA + 0x1000, 512), (STATUS, 1)]);
        assert_eq!(used.1, 1024 + 1);
        assert_eq!(h.status(), VIRTIO_BLK_S_OK);
        assert_eq!(h.bytes(DATA, 512), vec![3u8; 512]);
        assert_eq!(h.bytes(DATA + 0x1000, 512), vec![4u8; 512]);
        let irq = h.irq.clone();
        h.eventually("no queue notification", || {
            irq.queue[0].load(Ordering::SeqCst) == 1
        });
    });
}

#[test]
fn writes_reach_the_image_and_read_back() {
    each(
        |s| Setup {
            event_idx: true,
            ..s
        },
        |h| {
            h.mem.write(DATA, &[0x5a; 1024]).expect("data");
            let hdr = h.header(OutHdr::write(10));
            let used = h.roundtrip(&[hdr, (DATA, 1024)], &[(STATUS, 1)]);
            assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_OK));
            let img = h.image();
            assert_eq!(&img[10 * 512..12 * 512], &[0x5a; 1024][..]);
            assert_eq!((img[9 * 512], img[12 * 512]), (9, 12));
            let hdr = h.header(OutHdr::read(10));
            let used = h.roundtrip(&[hdr], &[(DATA + 0x2000, 1024), (STATUS, 1)]);
            assert_eq!((used.1, h.status()), (1025, VIRTIO_BLK_S_OK));
            assert_eq!(h.bytes(DATA + 0x2000, 1024), vec![0x5a; 1024]);
        },
    );
}

#[test]
fn flush_succeeds() {
    each(plain, |h| {
        let hdr = h.header(OutHdr::flush());
        let used = h.roundtrip(&[hdr], &[(STATUS, 1)]);
        assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_OK));
    });
}

#[test]
fn get_id_writes_the_padded_serial() {
    each(plain, |h| {
        let hdr = h.header(OutHdr::get_id());
        let used = h.roundtrip(&[hdr], &[(DATA, 20), (STATUS, 1)]);
        assert_eq!((used.1, h.status()), (21, VIRTIO_BLK_S_OK));
        let mut want = SERIAL.as_bytes().to_vec();
        want.resize(20, 0);
        assert_eq!(h.bytes(DATA, 20), want);
    });
}

#[test]
fn discard_and_write_zeroes_zero_the_ranges() {
    each(plain, |h| {
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
        assert_eq!((img[21 * 512], img[33 * 512]), (21, 33));
    });
}

#[test]
fn out_of_range_requests_are_ioerr_and_the_disk_untouched() {
    each(plain, |h| {
        let hdr = h.header(OutHdr::read(DISK_SIZE / 512 - 1));
        let used = h.roundtrip(&[hdr], &[(DATA, 1024), (STATUS, 1)]);
        assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
        h.mem.write(DATA, &[1; 512]).expect("data");
        let hdr = h.header(OutHdr::write(u64::MAX));
        let used = h.roundtrip(&[hdr, (DATA, 512)], &[(STATUS, 1)]);
        assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
        assert_eq!(h.image().len() as u64, DISK_SIZE);
    });
}

#[test]
fn readonly_device_refuses_writes() {
    each(
        |s| Setup {
            readonly: true,
            ..s
        },
        |h| {
            h.mem.write(DATA, &[0xcd; 512]).expect("data");
            let hdr = h.header(OutHdr::write(0));
            let used = h.roundtrip(&[hdr, (DATA, 512)], &[(STATUS, 1)]);
            assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
            assert_eq!(h.image()[0], 0);
            let hdr = h.header(OutHdr::read(1));
            let used = h.roundtrip(&[hdr], &[(DATA, 512), (STATUS, 1)]);
            assert_eq!((used.1, h.status()), (513, VIRTIO_BLK_S_OK));
        },
    );
}

#[test]
fn unknown_type_is_unsupp() {
    each(plain, |h| {
        let mut hdr = OutHdr::flush();
        hdr.type_ = 99.into();
        let hdr = h.header(hdr);
        let used = h.roundtrip(&[hdr], &[(STATUS, 1)]);
        assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_UNSUPP));
    });
}

#[test]
fn chain_without_status_byte_returns_len_0() {
    each(plain, |h| {
        let hdr = h.header(OutHdr::flush());
        let used = h.roundtrip(&[hdr], &[]);
        assert_eq!(used.1, 0);
        assert_eq!(h.status(), 0xee, "nothing written");
    });
}

#[test]
fn buffer_outside_guest_ram_is_rejected_without_touching_the_disk() {
    each(plain, |h| {
        let hdr = h.header(OutHdr::write(0));
        let end = (1u64 << 20) - 256;
        let used = h.roundtrip(&[hdr, (end, 512)], &[(STATUS, 1)]);
        // The chain walk rejects the buffer: returned with length 0.
        assert_eq!(used.1, 0);
        assert_eq!(h.image()[0], 0);
    });
}

#[test]
fn avail_idx_jump_asks_for_reset_and_raises_config_interrupt() {
    each(plain, |h| {
        let avail_idx = h.drivers[0].addresses().avail_ring + 2;
        h.mem
            .store_u16(avail_idx, 16 + 5, Ordering::Release)
            .expect("idx");
        h.kick(0);
        let (irq, health) = (h.irq.clone(), h.dev.health().clone());
        h.eventually("no configuration interrupt", || {
            irq.config.load(Ordering::SeqCst) == 1
        });
        assert!(health.take_needs_reset());
        // The queue stays stopped: another kick changes nothing, and stopping does not hang.
        h.kick(0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(irq.config.load(Ordering::SeqCst), 1);
        h.stop();
    });
}

/// Only the `vcpu` mode serves a batch deterministically in one turn (the kick is served in
/// the caller); the threaded modes may see the chains one at a time as they are published.
#[test]
fn batch_of_requests_gets_one_notification_with_event_idx() {
    let mut h = Harness::new(Setup {
        event_idx: true,
        ..Setup::new(IoMode::Vcpu)
    });
    let hdr = h.header(OutHdr::read(0));
    let mut heads = Vec::new();
    for i in 0..4u64 {
        heads.push(
            h.drivers[0]
                .add(&h.mem, &[hdr], &[(DATA + i * 0x1000, 512), (STATUS + i, 1)])
                .expect("add"),
        );
    }
    h.kick(0);
    let mut got = Vec::new();
    while let Some((head, len)) = h.drivers[0].pop_used(&h.mem).expect("used") {
        assert_eq!(len, 513);
        got.push(head);
    }
    assert_eq!(got, heads);
    assert_eq!(h.irq.queue[0].load(Ordering::SeqCst), 1);
}

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
        Just(common::HDR),
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

/// Runs `ops` against a model image on `h`; the device must agree with the model.
fn model_run(h: &mut Harness, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 512) as u8).collect();
    for op in ops {
        match *op {
            Op::Write {
                sector,
                sectors,
                byte,
            } => {
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
                    prop_assert_eq!(h.bytes(DATA + 0x8000, len), model[at..at + len].to_vec());
                } else {
                    prop_assert_eq!((used.1, h.status()), (1, VIRTIO_BLK_S_IOERR));
                }
            }
            Op::Zero { sector, sectors } => {
                let seg = DiscardWriteZeroes::new(sector, u32::from(sectors), false);
                h.mem.write(DATA, &seg.to_bytes()).expect("seg");
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
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Reads, writes and write-zeroes against a model image, in every mode: same data, same
    /// status, out-of-range requests fail without touching anything.
    #[test]
    fn requests_match_a_model_image(ops in proptest::collection::vec(op(), 1..16)) {
        for (mode, engine) in RUNS {
            let mut h = Harness::new(Setup { engine, ..Setup::new(mode) });
            model_run(&mut h, &ops)?;
        }
    }

    /// A hostile driver fills the descriptor table and avail ring with garbage: no mode
    /// panics or grows the image, and each either returns every chain or asks for a reset.
    #[test]
    fn garbage_rings_never_panic(
        table in proptest::collection::vec(desc(), 16),
        avail in proptest::collection::vec(any::<u16>(), 16),
        avail_idx in any::<u16>(),
        header in (0..16u32, 0..DISK_SIZE / 512 + 2),
    ) {
        for (mode, engine) in RUNS {
            let mut h = Harness::new(Setup { engine, ..Setup::new(mode) });
            let addrs = h.drivers[0].addresses();
            for (i, d) in table.iter().enumerate() {
                h.mem.write(addrs.desc_table + 16 * i as u64, d).expect("table");
            }
            let mut hdr = OutHdr::read(header.1);
            hdr.type_ = header.0.into();
            h.mem.write(common::HDR, &hdr.to_bytes()).expect("header");
            for (i, head) in avail.iter().enumerate() {
                h.mem.store_u16(addrs.avail_ring + 4 + 2 * i as u64, *head, Ordering::Relaxed).expect("avail");
            }
            h.mem.store_u16(addrs.avail_ring + 2, avail_idx, Ordering::Release).expect("idx");
            h.kick(0);
            let (mem, health) = (h.mem.clone(), h.dev.health().clone());
            let mut reset = false;
            h.eventually("neither every chain returned nor a reset", || {
                reset |= health.take_needs_reset();
                let published = mem.load_u16(addrs.used_ring + 2, Ordering::Acquire).expect("used idx");
                reset || (avail_idx <= 16 && published == avail_idx)
            });
            if avail_idx > 16 {
                prop_assert!(reset, "{:?}: avail idx {} > queue size must ask for a reset", mode, avail_idx);
            }
            h.stop();
            prop_assert_eq!(h.image().len() as u64, DISK_SIZE);
        }
    }
}

/// `iothread` serves queues only in the VM's shared loop: a device given none refuses to start
/// rather than quietly run a thread of its own.
#[test]
fn iothread_without_a_shared_loop_is_an_error() {
    use std::sync::Arc;

    use blk_device::config::DiskConfig;
    use blk_device::device::BlockDevice;
    use blk_device::error::DeviceError;
    use blk_device::metrics::DeviceMetrics;
    use blk_device::mode::{QueueSetup, ServeOptions};
    use virtqueue_core::{Queue, RingLayout};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let cfg = DiskConfig::parse(&format!("path={}", path.display())).unwrap();
    let dev = BlockDevice::open(
        &cfg,
        ServeOptions::new(IoMode::Iothread),
        Arc::new(DeviceMetrics::new("d")),
    )
    .unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let addrs = RingLayout::new(16).unwrap().addresses(0x1000);
    let mut queue = Queue::new(16);
    queue.set_desc_table_address(addrs.desc_table);
    queue.set_avail_ring_address(addrs.avail_ring);
    queue.set_used_ring_address(addrs.used_ring);
    queue.set_ready(true);
    let setup = QueueSetup {
        index: 0,
        queue,
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    let irq = Arc::new(common::Counted::default());
    let err = dev
        .activate(dev.offered_features(), mem, vec![setup], irq)
        .unwrap_err();
    assert!(
        matches!(&err, DeviceError::Config { reason, .. } if reason.contains("shared I/O thread")),
        "{err}"
    );
}
