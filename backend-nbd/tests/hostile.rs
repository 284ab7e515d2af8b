//! A hand-written hostile server: each misbehaviour must drop the connection, fail the
//! request with EIO once the reconnect timeout passes (the server misbehaves again on every
//! reconnection), never hang, and never write outside the request's buffer.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_nbd::proto::*;
use backend_nbd::{NbdExport, NbdOptions, NbdStats, NbdUri};
use backend_raw::{Completion, IoOp};
use common::serve_handshake;

const SIZE: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Answers correctly (the control: proves the harness can pass).
    None,
    /// A reply whose magic is wrong.
    BadMagic,
    /// A reply for a cookie never sent.
    UnknownCookie,
    /// A read reply with twice the data asked for.
    LongerThanAsked,
    /// Never answers.
    Stall,
    /// A size on reconnection other than the first.
    SizeChange,
}

fn serve(mut s: UnixStream, how: Misbehaviour, connection: usize) -> std::io::Result<()> {
    let size = match (how, connection) {
        (Misbehaviour::SizeChange, c) if c > 0 => SIZE * 2,
        _ => SIZE,
    };
    serve_handshake(&mut s, size, None)?;
    loop {
        let mut h = [0u8; REQUEST_LEN];
        s.read_exact(&mut h)?;
        let req = RequestHeader::decode(&h).expect("our client sends good requests");
        if req.kind == NBD_CMD_WRITE {
            let mut skip = vec![0u8; req.length as usize];
            s.read_exact(&mut skip)?;
        }
        let mut reply = SimpleReply {
            error: 0,
            cookie: req.cookie,
        }
        .encode()
        .to_vec();
        let data_len = match req.kind {
            NBD_CMD_READ => req.length as usize,
            _ => 0,
        };
        match how {
            Misbehaviour::None => reply.extend(std::iter::repeat_n(0xab, data_len)),
            Misbehaviour::SizeChange if connection == 0 => {
                // The first connection dies before answering, forcing a reconnection.
                return Ok(());
            }
            Misbehaviour::SizeChange => reply.extend(std::iter::repeat_n(0xab, data_len)),
            Misbehaviour::BadMagic => {
                reply[0] ^= 0xff;
                reply.extend(std::iter::repeat_n(0xab, data_len));
            }
            Misbehaviour::UnknownCookie => {
                // Only the header: no later bytes may give the client another reason to
                // drop the connection.
                reply[8..16].copy_from_slice(&(req.cookie ^ 0xdead_0000).to_be_bytes());
            }
            Misbehaviour::LongerThanAsked => {
                reply.extend(std::iter::repeat_n(0xab, data_len * 2));
            }
            Misbehaviour::Stall => {
                std::thread::sleep(Duration::from_secs(30));
                return Ok(());
            }
        }
        s.write_all(&reply)?;
    }
}

struct Hostile {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    fn start(how: Misbehaviour) -> Hostile {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let c = n;
                        n += 1;
                        std::thread::spawn(move || serve(s, how, c));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Hostile { dir, stop }
    }

    fn uri(&self) -> NbdUri {
        format!(
            "nbd+unix:///?socket={}",
            self.dir.path().join("s").display()
        )
        .parse()
        .unwrap()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads 512 bytes into the middle of a guarded buffer; returns the result, the time it
/// took and the export's counters. Panics if a guard byte changed.
fn read_guarded(how: Misbehaviour) -> (Result<u32, i32>, Duration, NbdStats) {
    let server = Hostile::start(how);
    let export = NbdExport::open(
        &server.uri(),
        NbdOptions {
            reconnect_timeout: Duration::from_millis(300),
            connections: 1,
            readonly: false,
            ..Default::default()
        },
    )
    .expect("the handshake itself is sound");
    let mut e = export.engine(4, false).unwrap();
    let mut mem = vec![0x11u8; 512 * 3];
    let iov = [libc::iovec {
        // SAFETY (pointer arithmetic): 512 lies inside the 1536-byte buffer.
        iov_base: mem[512..].as_mut_ptr().cast(),
        iov_len: 512,
    }];
    let t = Instant::now();
    // SAFETY: `mem` outlives the request, reaped below.
    unsafe { e.submit(IoOp::Read { offset: 4096 }, &iov, 1).unwrap() };
    e.flush_submissions().unwrap();
    let mut done: Vec<Completion> = Vec::new();
    while done.is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{how:?}: the request hangs"
        );
        e.wait().unwrap();
        e.reap(&mut done);
    }
    let took = t.elapsed();
    assert!(
        mem[..512].iter().all(|b| *b == 0x11),
        "{how:?}: wrote before the buffer"
    );
    assert!(
        mem[1024..].iter().all(|b| *b == 0x11),
        "{how:?}: wrote after the buffer"
    );
    drop(e);
    // The violation after a completed reply is seen a moment later.
    let t = Instant::now();
    while matches!(how, Misbehaviour::LongerThanAsked)
        && export.stats().protocol_violations == 0
        && t.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    (done[0].result, took, export.stats())
}

#[test]
fn a_sound_server_is_the_control() {
    let (r, _, s) = read_guarded(Misbehaviour::None);
    assert_eq!((r, s.disconnects, s.protocol_violations), (Ok(512), 0, 0));
}

#[test]
fn bad_magic_drops_the_connection_and_fails_the_request() {
    let (r, took, s) = read_guarded(Misbehaviour::BadMagic);
    assert_eq!(r, Err(libc::EIO));
    assert!(
        s.protocol_violations >= 1 && took < Duration::from_secs(3),
        "{s:?} {took:?}"
    );
}

#[test]
fn a_reply_for_a_cookie_not_in_flight_drops_the_connection() {
    let (r, took, s) = read_guarded(Misbehaviour::UnknownCookie);
    assert_eq!(r, Err(libc::EIO));
    assert!(
        s.protocol_violations >= 1 && took < Duration::from_secs(3),
        "{s:?} {took:?}"
    );
}

#[test]
fn a_reply_longer_than_asked_writes_nothing_beyond_the_buffer() {
    // The first 512 bytes answer the read; the rest parses as a reply with a bad magic.
    let (r, _, s) = read_guarded(Misbehaviour::LongerThanAsked);
    assert_eq!(r, Ok(512));
    assert!(
        s.protocol_violations >= 1,
        "the extra bytes were not seen as a violation"
    );
}

#[test]
fn a_stalled_server_is_dropped_and_the_request_fails_in_bounded_time() {
    let (r, took, s) = read_guarded(Misbehaviour::Stall);
    assert_eq!(r, Err(libc::EIO));
    // One timeout to notice the stall, one more for the retried request.
    assert!(
        s.disconnects >= 1 && took < Duration::from_secs(3),
        "{s:?} {took:?}"
    );
    assert_eq!(s.protocol_violations, 0);
}

#[test]
fn a_size_change_on_reconnection_is_a_failure() {
    let (r, _, s) = read_guarded(Misbehaviour::SizeChange);
    assert_eq!(r, Err(libc::EIO));
    assert!(s.disconnects >= 1 && s.reconnects == 0, "{s:?}");
}
