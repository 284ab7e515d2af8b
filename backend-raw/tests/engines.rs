//! Behaviour of both engines beyond the model: errors through completions, queue limits,
//! deep queues, large bounced requests, the completion eventfd.

mod common;

use backend_raw::{Disk, DiskOptions, Engine, EngineKind, Error, IoOp, MAX_IOVECS};
use common::{announce, image, reap_n, Buf};

const KINDS: [EngineKind; 2] = [EngineKind::Sync, EngineKind::IoUring];
const RW: DiskOptions = DiskOptions {
    readonly: false,
    direct: false,
};

/// Submits one request and returns its result.
fn one(engine: &mut dyn Engine, op: IoOp, bufs: &mut [Buf]) -> Result<u32, i32> {
    let iovecs: Vec<libc::iovec> = bufs.iter_mut().map(Buf::iovec).collect();
    // SAFETY: `bufs` outlives the request, which is reaped before returning.
    unsafe { engine.submit(op, &iovecs, 99).unwrap() };
    let done = reap_n(engine, 1);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].user_data, 99);
    done[0].result
}

#[test]
fn missing_file_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.img");
    let err = Disk::open(&path, RW).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(
        msg.contains(&format!("cannot open {}", path.display())),
        "{msg}"
    );
    assert!(msg.contains("truncate -s 256M"), "{msg}");
}

#[test]
fn directory_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ro = DiskOptions {
        readonly: true,
        direct: false,
    };
    let err = Disk::open(dir.path(), ro).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFileType { .. }), "{err:?}");
    let err = Disk::open(dir.path(), RW).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn geometry_of_a_file() {
    let img = image(3 << 20, RW);
    assert_eq!(img.disk.capacity(), 3 << 20);
    assert_eq!(img.disk.capacity_sectors(), 6144);
    assert_eq!(img.disk.logical_block_size(), 512);
    assert!(!img.disk.readonly() && !img.disk.is_block_device());
    assert!(img.disk.direct().is_none());
    assert!(img.disk.write_zeroes_supported());
    eprintln!("discard supported here: {}", img.disk.discard_supported());
}

#[test]
fn readonly_disk_refuses_changes_through_completions() {
    let img = image(1 << 20, RW);
    std::fs::write(&img.path, vec![0x5a; 1 << 20]).unwrap();
    let ro = DiskOptions {
        readonly: true,
        direct: false,
    };
    let disk = Disk::open(&img.path, ro).unwrap();
    assert!(disk.readonly() && !disk.discard_supported() && !disk.write_zeroes_supported());
    for kind in KINDS {
        let mut engine = disk.engine(kind, 4).unwrap();
        let mut buf = [Buf::new(4096, 0)];
        assert_eq!(
            one(engine.as_mut(), IoOp::Write { offset: 0 }, &mut buf),
            Err(libc::EBADF)
        );
        let discard = IoOp::Discard {
            offset: 0,
            len: 4096,
        };
        assert_eq!(one(engine.as_mut(), discard, &mut []), Err(libc::EBADF));
        let zeroes = IoOp::WriteZeroes {
            offset: 0,
            len: 4096,
            unmap: true,
        };
        assert_eq!(one(engine.as_mut(), zeroes, &mut []), Err(libc::EBADF));
        assert_eq!(
            one(engine.as_mut(), IoOp::Read { offset: 0 }, &mut buf),
            Ok(4096)
        );
        assert!(buf[0].bytes().iter().all(|b| *b == 0x5a));
        assert_eq!(one(engine.as_mut(), IoOp::Flush, &mut []), Ok(0));
    }
}

#[test]
fn invalid_requests_complete_with_einval() {
    let img = image(1 << 20, RW);
    for kind in KINDS {
        let mut engine = img.disk.engine(kind, 4).unwrap();
        let mut buf = [Buf::new(4096, 0)];
        let past_end = IoOp::Read {
            offset: (1 << 20) - 512,
        };
        assert_eq!(one(engine.as_mut(), past_end, &mut buf), Err(libc::EINVAL));
        let overflow = IoOp::Write {
            offset: u64::MAX - 10,
        };
        assert_eq!(one(engine.as_mut(), overflow, &mut buf), Err(libc::EINVAL));
        let huge = IoOp::Discard {
            offset: 4096,
            len: u64::MAX,
        };
        assert_eq!(one(engine.as_mut(), huge, &mut []), Err(libc::EINVAL));
        let mut many: Vec<Buf> = (0..=MAX_IOVECS).map(|_| Buf::new(1, 0)).collect();
        assert_eq!(
            one(engine.as_mut(), IoOp::Read { offset: 0 }, &mut many),
            Err(libc::EINVAL)
        );
        // Zero-length requests are valid and move nothing.
        assert_eq!(
            one(engine.as_mut(), IoOp::Read { offset: 0 }, &mut []),
            Ok(0)
        );
        let empty = IoOp::WriteZeroes {
            offset: 0,
            len: 0,
            unmap: false,
        };
        assert_eq!(one(engine.as_mut(), empty, &mut []), Ok(0));
    }
}

#[test]
fn read_past_a_shrunk_file_is_eio() {
    for kind in KINDS {
        let img = image(1 << 20, RW);
        let mut engine = img.disk.engine(kind, 4).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap()
            .set_len(512 << 10)
            .unwrap();
        let mut buf = [Buf::new(8192, 0)];
        let op = IoOp::Read {
            offset: (512 << 10) - 4096,
        };
        assert_eq!(one(engine.as_mut(), op, &mut buf), Err(libc::EIO), "{kind}");
    }
}

#[test]
fn queue_full_is_reported_and_recovers() {
    let img = image(1 << 20, RW);
    for kind in KINDS {
        let mut engine = img.disk.engine(kind, 4).unwrap();
        assert_eq!(engine.capacity(), 4);
        for tag in 0..4 {
            // SAFETY: flushes carry no memory.
            unsafe { engine.submit(IoOp::Flush, &[], tag).unwrap() };
        }
        assert_eq!(engine.in_flight(), 4);
        // SAFETY: as above.
        let err = unsafe { engine.submit(IoOp::Flush, &[], 4) }.unwrap_err();
        assert!(matches!(err, Error::QueueFull { capacity: 4 }), "{err:?}");
        let mut tags: Vec<u64> = reap_n(engine.as_mut(), 4)
            .iter()
            .map(|c| c.user_data)
            .collect();
        tags.sort_unstable();
        assert_eq!(tags, [0, 1, 2, 3]);
        assert_eq!(engine.in_flight(), 0);
        // SAFETY: as above.
        unsafe { engine.submit(IoOp::Flush, &[], 5).unwrap() };
        assert_eq!(reap_n(engine.as_mut(), 1)[0].result, Ok(0));
    }
}

#[test]
fn invalid_depth_is_rejected() {
    let img = image(1 << 20, RW);
    assert!(matches!(
        img.disk.engine(EngineKind::Sync, 0),
        Err(Error::InvalidDepth { depth: 0, .. })
    ));
}

/// 128 writes then 128 reads of distinct sectors in flight at once, reaped as they come.
#[test]
fn deep_queue_round_trip() {
    for direct in [false, true] {
        let opts = DiskOptions {
            readonly: false,
            direct,
        };
        let img = image(1 << 20, opts);
        for kind in KINDS {
            let mut engine = img.disk.engine(kind, 128).unwrap();
            announce("deep_queue_round_trip", &img, engine.as_ref());
            let mut bufs: Vec<Buf> = (0..128u8)
                .map(|i| Buf::filled(&[i.wrapping_add(kind as u8); 4096], 0))
                .collect();
            for (i, buf) in bufs.iter_mut().enumerate() {
                let iov = [buf.iovec()];
                // SAFETY: `bufs` lives until every request is reaped below.
                unsafe {
                    engine.submit(
                        IoOp::Write {
                            offset: i as u64 * 8192,
                        },
                        &iov,
                        i as u64,
                    )
                }
                .unwrap();
            }
            let done = reap_n(engine.as_mut(), 128);
            assert!(done.iter().all(|c| c.result == Ok(4096)), "{done:?}");
            let mut back: Vec<Buf> = (0..128).map(|i| Buf::new(4096, i % 3 * 100)).collect();
            for (i, buf) in back.iter_mut().enumerate() {
                let iov = [buf.iovec()];
                // SAFETY: `back` lives until every request is reaped below.
                unsafe {
                    engine.submit(
                        IoOp::Read {
                            offset: i as u64 * 8192,
                        },
                        &iov,
                        i as u64,
                    )
                }
                .unwrap();
            }
            let done = reap_n(engine.as_mut(), 128);
            assert!(done.iter().all(|c| c.result == Ok(4096)), "{done:?}");
            for (a, b) in bufs.iter().zip(&back) {
                assert_eq!(a.bytes(), b.bytes());
            }
        }
    }
}

/// A request above the io_uring engine's per-slot bounce size, at unaligned addresses.
#[test]
fn large_unaligned_request() {
    for direct in [false, true] {
        let opts = DiskOptions {
            readonly: false,
            direct,
        };
        let img = image(8 << 20, opts);
        for kind in KINDS {
            let mut engine = img.disk.engine(kind, 4).unwrap();
            announce("large_unaligned_request", &img, engine.as_ref());
            let data: Vec<u8> = (0..(3 << 20) + 512).map(|i| (i * 7 % 251) as u8).collect();
            let (a, b) = data.split_at(1_000_001);
            let mut out = [Buf::filled(a, 3), Buf::filled(b, 5)];
            assert_eq!(
                one(engine.as_mut(), IoOp::Write { offset: 4096 }, &mut out),
                Ok(data.len() as u32)
            );
            let mut back = [Buf::new(77, 1), Buf::new(data.len() - 77, 9)];
            assert_eq!(
                one(engine.as_mut(), IoOp::Read { offset: 4096 }, &mut back),
                Ok(data.len() as u32)
            );
            let got: Vec<u8> = back.iter().flat_map(|b| b.bytes().to_vec()).collect();
            assert!(got == data, "{kind} direct={direct}: data differs");
        }
    }
}

#[test]
fn uring_completion_fd_becomes_readable() {
    let img = image(1 << 20, RW);
    let mut engine = img.disk.engine(EngineKind::IoUring, 8).unwrap();
    let fd = engine.completion_fd().expect("io_uring has an eventfd");
    let mut buf = Buf::new(4096, 0);
    let iov = [buf.iovec()];
    // SAFETY: `buf` lives until the request is reaped below.
    unsafe { engine.submit(IoOp::Read { offset: 0 }, &iov, 7).unwrap() };
    engine.flush_submissions().unwrap();
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "eventfd not signalled");
    engine.drain_completion_fd();
    let mut done = Vec::new();
    assert_eq!(engine.reap(&mut done), 1);
    assert_eq!(done[0].result, Ok(4096));
    // SAFETY: as above, non-blocking.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(n, 0, "eventfd still readable");
    assert!(img
        .disk
        .engine(EngineKind::Sync, 8)
        .unwrap()
        .completion_fd()
        .is_none());
}

#[test]
fn engine_or_sync_gives_the_requested_engine_when_it_works() {
    let img = image(1 << 20, RW);
    let (engine, why) = img.disk.engine_or_sync(EngineKind::IoUring, 8).unwrap();
    assert_eq!(engine.kind(), EngineKind::IoUring, "fell back: {why:?}");
    assert_eq!("io_uring".parse(), Ok(EngineKind::IoUring));
    assert_eq!("sync".parse(), Ok(EngineKind::Sync));
    assert!("aio".parse::<EngineKind>().is_err());
}
