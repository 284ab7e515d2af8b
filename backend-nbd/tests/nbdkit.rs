//! The engine against nbdkit: the protocol, pipelining, injected errors, a slow server,
//! and a server killed and restarted.

mod common;

use std::time::{Duration, Instant};

use backend_raw::{Completion, IoOp};
use common::{open, pattern, run, Server};

#[test]
fn every_command_round_trips_and_many_fly_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::nbdkit(&dir.path().join("s"), &["memory", "size=16M"]);
    let export = open(&srv.uri(), 5000);
    assert_eq!(export.info().size, 16 << 20);
    assert!(export.info().can_flush() && export.info().can_trim());
    assert!(export.info().can_write_zeroes() && !export.info().readonly());
    let mut e = export.engine(64, false).unwrap();

    // 64 writes of 4 KiB in one batch, then 64 reads in one batch.
    let mut bufs: Vec<Vec<u8>> = (0..64).map(|i| pattern(i, 4096)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let iov = [libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        }];
        let op = IoOp::Write {
            offset: i as u64 * 8192,
        };
        // SAFETY: `bufs` outlives the batch, reaped below.
        unsafe { e.submit(op, &iov, i as u64).unwrap() };
    }
    e.flush_submissions().unwrap();
    let mut done: Vec<Completion> = Vec::new();
    while done.len() < 64 {
        e.wait().unwrap();
        e.reap(&mut done);
    }
    assert!(done.iter().all(|c| c.result == Ok(4096)), "{done:?}");
    let mut back: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 4096]).collect();
    for (i, b) in back.iter_mut().enumerate() {
        // Two iovecs per read: the payload is scattered across them.
        let (lo, hi) = b.split_at_mut(1000);
        let iov = [
            libc::iovec {
                iov_base: lo.as_mut_ptr().cast(),
                iov_len: lo.len(),
            },
            libc::iovec {
                iov_base: hi.as_mut_ptr().cast(),
                iov_len: hi.len(),
            },
        ];
        let op = IoOp::Read {
            offset: i as u64 * 8192,
        };
        // SAFETY: as above.
        unsafe { e.submit(op, &iov, 100 + i as u64).unwrap() };
    }
    e.flush_submissions().unwrap();
    done.clear();
    while done.len() < 64 {
        e.wait().unwrap();
        e.reap(&mut done);
    }
    assert!(done.iter().all(|c| c.result == Ok(4096)));
    assert_eq!(back, bufs);

    assert_eq!(run(&mut *e, IoOp::Flush, &mut []), Ok(0));
    let z = IoOp::WriteZeroes {
        offset: 0,
        len: 4096,
        unmap: false,
    };
    assert_eq!(run(&mut *e, z, &mut []), Ok(0));
    let t = IoOp::Discard {
        offset: 8192,
        len: 4096,
    };
    assert_eq!(run(&mut *e, t, &mut []), Ok(0));
    let mut b = vec![1u8; 4096];
    assert_eq!(run(&mut *e, IoOp::Read { offset: 0 }, &mut b), Ok(4096));
    assert!(b.iter().all(|x| *x == 0));
    // Outside the export: refused here, without a round trip.
    let mut b = vec![0u8; 512];
    let end = 16 << 20;
    assert_eq!(
        run(&mut *e, IoOp::Read { offset: end }, &mut b),
        Err(libc::EINVAL)
    );
    assert_eq!(export.stats().disconnects, 0);
}

#[test]
fn injected_errors_fail_exactly_the_requests_in_their_range() {
    let dir = tempfile::tempdir().unwrap();
    // Reads of [1 MiB, 2 MiB) fail with EIO; the rest read zeros.
    let pread = "if [ $4 -ge 1048576 ] && [ $4 -lt 2097152 ]; then echo 'EIO injected' >&2; \
                 exit 1; fi; head -c $3 /dev/zero";
    let srv = Server::nbdkit(
        &dir.path().join("s"),
        &["eval", "get_size=echo 4194304", &format!("pread={pread}")],
    );
    let export = open(&srv.uri(), 5000);
    let mut e = export.engine(8, false).unwrap();
    let mut b = vec![0xffu8; 4096];
    for (offset, expect) in [
        (0, Ok(4096)),
        (1 << 20, Err(libc::EIO)),
        ((2 << 20) - 4096, Err(libc::EIO)),
        (2 << 20, Ok(4096)),
        (3 << 20, Ok(4096)),
    ] {
        assert_eq!(
            run(&mut *e, IoOp::Read { offset }, &mut b),
            expect,
            "{offset}"
        );
    }
    let s = export.stats();
    assert_eq!((s.error_replies, s.disconnects), (2, 0), "{s:?}");
}

#[test]
fn a_slow_server_below_the_timeout_is_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::nbdkit(
        &dir.path().join("s"),
        &[
            "--filter=delay",
            "memory",
            "size=1M",
            "rdelay=400ms",
            "wdelay=400ms",
        ],
    );
    let export = open(&srv.uri(), 1000);
    let mut e = export.engine(8, false).unwrap();
    let mut b = pattern(3, 4096);
    let t = Instant::now();
    for i in 0..3 {
        assert_eq!(
            run(&mut *e, IoOp::Write { offset: i * 4096 }, &mut b),
            Ok(4096)
        );
        assert_eq!(
            run(&mut *e, IoOp::Read { offset: i * 4096 }, &mut b),
            Ok(4096)
        );
    }
    assert!(t.elapsed() >= Duration::from_millis(2400));
    assert_eq!(export.stats().disconnects, 0, "{:?}", export.stats());
}

#[test]
fn a_restarted_server_loses_nothing_and_a_late_one_gives_eio_then_service() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let img_arg = format!("file={}", img.display());
    let sock = dir.path().join("s");
    let srv = Server::nbdkit(&sock, &["file", &img_arg]);
    let export = open(&srv.uri(), 1500);
    let mut e = export.engine(8, false).unwrap();
    let mut data = pattern(9, 65536);
    assert_eq!(
        run(&mut *e, IoOp::Write { offset: 0 }, &mut data),
        Ok(65536)
    );
    assert_eq!(run(&mut *e, IoOp::Flush, &mut []), Ok(0));

    // Killed with a read in flight, back within the timeout: the read just completes.
    // (The server is restarted from this thread: nbdkit ends with the thread that started
    // it.)
    srv.kill();
    let mut back = vec![0u8; 65536];
    let iov = [libc::iovec {
        iov_base: back.as_mut_ptr().cast(),
        iov_len: back.len(),
    }];
    // SAFETY: `back` outlives the request, reaped below.
    unsafe { e.submit(IoOp::Read { offset: 0 }, &iov, 1).unwrap() };
    e.flush_submissions().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let srv = Server::nbdkit(&sock, &["file", &img_arg]);
    let mut done: Vec<Completion> = Vec::new();
    while done.is_empty() {
        e.wait().unwrap();
        e.reap(&mut done);
    }
    assert_eq!(done[0].result, Ok(65536));
    assert_eq!(back, data);
    let s = export.stats();
    assert!(s.reconnects >= 1 && s.retried_requests >= 1, "{s:?}");

    // Killed for longer than the timeout: EIO, then service once it is back.
    srv.kill();
    let t = Instant::now();
    assert_eq!(
        run(&mut *e, IoOp::Read { offset: 0 }, &mut back),
        Err(libc::EIO)
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let _srv = Server::nbdkit(&sock, &["file", &img_arg]);
    back.fill(0);
    assert_eq!(run(&mut *e, IoOp::Read { offset: 0 }, &mut back), Ok(65536));
    assert_eq!(back, data);
    assert!(export.stats().timed_out_requests >= 1);
}

#[test]
fn tcp_works_and_multi_conn_servers_get_a_connection_per_queue() {
    let (_srv, port) = Server::nbdkit_tcp(&["memory", "size=1M"]);
    let uri: backend_nbd::NbdUri = format!("nbd://127.0.0.1:{port}/").parse().unwrap();
    let export = backend_nbd::NbdExport::open(
        &uri,
        backend_nbd::NbdOptions {
            reconnect_timeout: Duration::from_secs(5),
            connections: 2,
            readonly: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(export.info().can_multi_conn());
    assert_eq!(export.connections(), 2);
    // A write through one connection is seen through the other.
    let mut a = export.engine(4, false).unwrap();
    let mut b = export.engine(4, false).unwrap();
    let mut data = pattern(5, 4096);
    assert_eq!(
        run(&mut *a, IoOp::Write { offset: 8192 }, &mut data),
        Ok(4096)
    );
    assert_eq!(run(&mut *a, IoOp::Flush, &mut []), Ok(0));
    let mut back = vec![0u8; 4096];
    assert_eq!(
        run(&mut *b, IoOp::Read { offset: 8192 }, &mut back),
        Ok(4096)
    );
    assert_eq!(back, data);
}

#[test]
fn without_multi_conn_every_queue_shares_one_connection_and_readonly_holds() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::nbdkit(
        &dir.path().join("s"),
        &[
            "--filter=multi-conn",
            "memory",
            "size=1M",
            "multi-conn-mode=disable",
        ],
    );
    let export = backend_nbd::NbdExport::open(
        &srv.uri(),
        backend_nbd::NbdOptions {
            reconnect_timeout: Duration::from_secs(5),
            connections: 4,
            readonly: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!export.info().can_multi_conn());
    assert_eq!(export.connections(), 1);
    // readonly=on on a writable export: writes are refused here, reads go on.
    assert!(export.info().readonly());
    let mut e = export.engine(4, false).unwrap();
    let mut b = vec![0u8; 512];
    assert_eq!(
        run(&mut *e, IoOp::Write { offset: 0 }, &mut b),
        Err(libc::EBADF)
    );
    assert_eq!(run(&mut *e, IoOp::Read { offset: 0 }, &mut b), Ok(512));
}
