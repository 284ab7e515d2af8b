//! Helpers of the integration tests: a server process killed on every exit path, and a
//! small client driving an engine synchronously.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend_nbd::proto::*;
use backend_nbd::{NbdExport, NbdOptions, NbdUri};
use backend_raw::{Completion, Engine, IoOp};

/// A server process on a Unix socket; killed when dropped.
pub struct Server {
    child: Child,
    pub socket: PathBuf,
}

impl Server {
    /// Starts `nbdkit -U SOCKET -f ARGS...` and waits for its socket. Fails (never skips)
    /// when nbdkit is missing: CI installs it.
    pub fn nbdkit(socket: &Path, args: &[&str]) -> Server {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("nbdkit")
            .arg("-U")
            .arg(socket)
            .arg("-f")
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nbdkit ({e}): install it (apt-get install nbdkit)")
            });
        let mut s = Server {
            child,
            socket: socket.to_path_buf(),
        };
        s.wait_ready();
        s
    }

    /// Starts `nbdkit` on TCP 127.0.0.1, on a port that was free a moment ago; returns it
    /// with the port once it accepts connections.
    pub fn nbdkit_tcp(args: &[&str]) -> (Server, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("nbdkit")
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-f"])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nbdkit ({e}): install it (apt-get install nbdkit)")
            });
        let s = Server {
            child,
            socket: PathBuf::new(),
        };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "nbdkit never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (s, port)
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        while !self.socket.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited early: {status}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "server socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn uri(&self) -> NbdUri {
        format!("nbd+unix:///?socket={}", self.socket.display())
            .parse()
            .unwrap()
    }

    /// Kills the server and waits for it (its socket file goes with it).
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn open(uri: &NbdUri, timeout_ms: u64) -> NbdExport {
    NbdExport::open(
        uri,
        NbdOptions {
            reconnect_timeout: Duration::from_millis(timeout_ms),
            connections: 1,
            readonly: false,
            ..Default::default()
        },
    )
    .expect("open the export")
}

/// Runs one request to its end and returns its result.
pub fn run(engine: &mut dyn Engine, op: IoOp, buf: &mut [u8]) -> Result<u32, i32> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let iov: &[libc::iovec] = match op {
        IoOp::Read { .. } | IoOp::Write { .. } => &iov,
        _ => &[],
    };
    // SAFETY: `buf` outlives the request, which completes before `run_iov` returns.
    unsafe { run_iov(engine, op, iov) }
}

/// Runs one request on the buffers `iov` to its end: exactly one completion, nothing left
/// in flight.
///
/// # Safety
///
/// The buffers must be valid for the request's access until this returns.
pub unsafe fn run_iov(engine: &mut dyn Engine, op: IoOp, iov: &[libc::iovec]) -> Result<u32, i32> {
    // SAFETY: the caller vouches for the buffers; the request completes before returning.
    unsafe { engine.submit(op, iov, 7).unwrap() };
    engine.flush_submissions().unwrap();
    let mut done: Vec<Completion> = Vec::new();
    while done.is_empty() {
        engine.wait().unwrap();
        engine.reap(&mut done);
    }
    assert_eq!(done.len(), 1, "one request, one completion: {done:?}");
    assert_eq!(done[0].user_data, 7);
    assert_eq!(engine.in_flight(), 0);
    done[0].result
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

/// The server side of a fixed newstyle handshake for a hand-written test server: one
/// `NBD_OPT_GO` answered with the export's `size` and flush support, and `block_sizes`
/// (minimum, preferred, maximum payload) when given.
pub fn serve_handshake(
    s: &mut UnixStream,
    size: u64,
    block_sizes: Option<[u32; 3]>,
) -> std::io::Result<()> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&hello)?;
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags)?;
    let mut opt = [0u8; 16];
    s.read_exact(&mut opt)?;
    let word = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes"));
    assert_eq!(u64::from_be_bytes(opt[0..8].try_into().unwrap()), IHAVEOPT);
    assert_eq!(word(&opt[8..12]), NBD_OPT_GO);
    let mut data = vec![0u8; word(&opt[12..16]) as usize];
    s.read_exact(&mut data)?;
    let reply = |kind: u32, payload: &[u8]| {
        let mut r = Vec::new();
        r.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        r.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        r.extend_from_slice(payload);
        r
    };
    let mut info = Vec::new();
    info.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&size.to_be_bytes());
    info.extend_from_slice(&(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH).to_be_bytes());
    s.write_all(&reply(NBD_REP_INFO, &info))?;
    if let Some(sizes) = block_sizes {
        let mut b = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for v in sizes {
            b.extend_from_slice(&v.to_be_bytes());
        }
        s.write_all(&reply(NBD_REP_INFO, &b))?;
    }
    s.write_all(&reply(NBD_REP_ACK, &[]))
}
