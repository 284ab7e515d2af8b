//! A server whose maximum payload is small: larger reads and writes are cut into commands it
//! takes, and the guest still sees one request with all its bytes in place.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use backend_nbd::proto::*;
use backend_nbd::{NbdExport, NbdOptions, NbdUri};
use backend_raw::IoOp;
use common::{run_iov, serve_handshake};

const SIZE: u64 = 1 << 20;
const MIN_BLOCK: u32 = 512;
const MAX_PAYLOAD: u32 = 4096;

/// The disk, and the length of every data command the server was sent.
#[derive(Default)]
struct Seen {
    disk: Vec<u8>,
    lengths: Vec<u32>,
}

/// Serves reads and writes of the shared disk; a data command over the maximum payload gets
/// `EINVAL` (22), as a strict server answers it.
fn serve(mut s: UnixStream, seen: Arc<Mutex<Seen>>) -> std::io::Result<()> {
    serve_handshake(&mut s, SIZE, Some([MIN_BLOCK, 4096, MAX_PAYLOAD]))?;
    loop {
        let mut h = [0u8; REQUEST_LEN];
        s.read_exact(&mut h)?;
        let req = RequestHeader::decode(&h).expect("our client sends good requests");
        let (at, len) = (req.offset as usize, req.length as usize);
        let mut payload = vec![0u8; if req.kind == NBD_CMD_WRITE { len } else { 0 }];
        s.read_exact(&mut payload)?;
        let mut seen = seen.lock().unwrap();
        let data = matches!(req.kind, NBD_CMD_READ | NBD_CMD_WRITE);
        if data {
            seen.lengths.push(req.length);
        }
        let too_long = data && req.length > MAX_PAYLOAD;
        let mut reply = SimpleReply {
            error: if too_long { 22 } else { 0 },
            cookie: req.cookie,
        }
        .encode()
        .to_vec();
        if !too_long {
            match req.kind {
                NBD_CMD_READ => reply.extend_from_slice(&seen.disk[at..at + len]),
                NBD_CMD_WRITE => seen.disk[at..at + len].copy_from_slice(&payload),
                _ => {}
            }
        }
        drop(seen);
        s.write_all(&reply)?;
    }
}

fn start(dir: &tempfile::TempDir, seen: Arc<Mutex<Seen>>) -> NbdUri {
    let path = dir.path().join("s");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(s.unwrap(), seen));
        }
    });
    format!("nbd+unix:///?socket={}", path.display())
        .parse()
        .unwrap()
}

#[test]
fn requests_above_the_maximum_payload_are_cut_into_commands_the_server_takes() {
    let seen = Arc::new(Mutex::new(Seen {
        disk: (0..SIZE).map(|i| (i % 251) as u8).collect(),
        lengths: Vec::new(),
    }));
    let dir = tempfile::tempdir().unwrap();
    let export = NbdExport::open(&start(&dir, seen.clone()), NbdOptions::default()).unwrap();
    assert_eq!(export.info().max_payload, MAX_PAYLOAD);
    let mut e = export.engine(4, false).unwrap();

    // A read of 2.5 maximum payloads into two buffers whose border is no command's border.
    let (mut a, mut b) = (vec![0u8; 3000], vec![0u8; 7240]);
    let iov = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        },
    ];
    let at = 8192u64;
    // SAFETY: `a` and `b` outlive the request.
    let r = unsafe { run_iov(&mut *e, IoOp::Read { offset: at }, &iov) };
    assert_eq!(r, Ok(10240));
    let got: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
    let want: Vec<u8> = (at..at + 10240).map(|i| (i % 251) as u8).collect();
    assert!(got == want, "the read's bytes are out of place");
    assert_eq!(seen.lock().unwrap().lengths, [4096, 4096, 2048]);

    // A write of the same shape lands whole.
    let mut w: Vec<u8> = (0..10240u32).map(|i| (i * 7 % 256) as u8).collect();
    let iov = [libc::iovec {
        iov_base: w.as_mut_ptr().cast(),
        iov_len: w.len(),
    }];
    // SAFETY: `w` outlives the request.
    let r = unsafe { run_iov(&mut *e, IoOp::Write { offset: 4096 }, &iov) };
    assert_eq!(r, Ok(10240));
    let s = seen.lock().unwrap();
    assert!(
        s.disk[4096..4096 + 10240] == w[..],
        "the write's bytes are out of place"
    );
    assert_eq!(s.lengths[3..], [4096, 4096, 2048]);
}
