//! Disks that really fail, over both engines: a full filesystem (a 1 MiB tmpfs under a
//! larger sparse image) and an image truncated under the engine. Errors arrive in
//! completions, earlier data stays readable, and the engine keeps serving.
//!
//! The full-filesystem test mounts a tmpfs and so needs root (CAP_SYS_ADMIN); without it
//! it fails, saying so, rather than skipping.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use backend_raw::{Disk, DiskOptions, Engine, EngineKind, IoOp};
use common::{image, reap_n, Buf};

const KINDS: [EngineKind; 2] = [EngineKind::Sync, EngineKind::IoUring];
const RW: DiskOptions = DiskOptions {
    readonly: false,
    direct: false,
};
const CHUNK: usize = 64 << 10;

fn one(engine: &mut dyn Engine, op: IoOp, buf: &mut Buf) -> Result<u32, i32> {
    let iov = [buf.iovec()];
    // SAFETY: `buf` outlives the request, which is reaped before returning.
    unsafe { engine.submit(op, &iov, 5).unwrap() };
    let done = reap_n(engine, 1);
    assert_eq!(done.len(), 1);
    done[0].result
}

fn pattern(chunk: usize) -> Vec<u8> {
    (0..CHUNK)
        .map(|i| (chunk * 7 + i / 512) as u8 | 1)
        .collect()
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct TmpfsMount {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> TmpfsMount {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let c = |s: &[u8]| CString::new(s).unwrap();
        let target = c(path.as_os_str().as_bytes());
        let opts = c(format!("size={size}").as_bytes());
        // SAFETY: all pointers are valid NUL-terminated strings alive for the call.
        let ret = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            ret,
            0,
            "cannot mount a {size} tmpfs on {}: {}. This test needs root (CAP_SYS_ADMIN) to \
             fill a real filesystem; run it as root",
            path.display(),
            std::io::Error::last_os_error()
        );
        TmpfsMount { path, _dir: dir }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: `target` is a valid NUL-terminated path. A lazy detach if something (a
        // failed test's leftovers) still holds a file open.
        unsafe {
            if libc::umount2(target.as_ptr(), 0) != 0 {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Writing a sparse 4 MiB image on a 1 MiB tmpfs: the write that finds no space completes
/// with ENOSPC, what was written before reads back, and reads and flushes keep working.
#[test]
fn full_filesystem_completes_with_enospc_and_keeps_serving() {
    for kind in KINDS {
        let mount = TmpfsMount::new("1M");
        let path = mount.path().join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let disk = Disk::open(&path, RW).unwrap();
        let mut engine = disk.engine(kind, 4).unwrap();
        let chunks = (4 << 20) / CHUNK;
        let mut written = 0;
        let mut failure = None;
        for i in 0..chunks {
            let mut buf = Buf::filled(&pattern(i), 0);
            let offset = (i * CHUNK) as u64;
            match one(engine.as_mut(), IoOp::Write { offset }, &mut buf) {
                Ok(n) => {
                    assert_eq!(n as usize, CHUNK);
                    written += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        eprintln!(
            "{kind}: {written} chunks of {CHUNK} bytes fit in a 1 MiB tmpfs, then {failure:?}"
        );
        assert_eq!(
            failure,
            Some(libc::ENOSPC),
            "{kind}: expected ENOSPC (28) after filling the tmpfs"
        );
        assert!(
            (8..=16).contains(&written),
            "{kind}: {written} chunks fit in 1 MiB"
        );
        // Earlier data reads back, the hole past it reads as zeros, flush works.
        for i in 0..written {
            let mut buf = Buf::new(CHUNK, 0);
            let offset = (i * CHUNK) as u64;
            assert_eq!(
                one(engine.as_mut(), IoOp::Read { offset }, &mut buf),
                Ok(CHUNK as u32)
            );
            assert!(
                buf.bytes() == pattern(i).as_slice(),
                "{kind}: chunk {i} changed"
            );
        }
        let mut buf = Buf::filled(&[0xff; CHUNK], 0);
        let offset = (3 << 20) as u64;
        assert_eq!(
            one(engine.as_mut(), IoOp::Read { offset }, &mut buf),
            Ok(CHUNK as u32)
        );
        assert!(buf.bytes().iter().all(|b| *b == 0), "{kind}: hole not zero");
        assert_eq!(one(engine.as_mut(), IoOp::Flush, &mut buf), Ok(0));
        // Overwriting allocated space still works; new space still does not.
        let mut buf = Buf::filled(&pattern(99), 0);
        assert_eq!(
            one(engine.as_mut(), IoOp::Write { offset: 0 }, &mut buf),
            Ok(CHUNK as u32)
        );
        let offset = ((chunks - 1) * CHUNK) as u64;
        assert_eq!(
            one(engine.as_mut(), IoOp::Write { offset }, &mut buf),
            Err(libc::ENOSPC)
        );
        drop(engine);
        drop(disk);
        drop(mount);
    }
}

/// An image truncated to half under the engine: reads past the new end complete with EIO
/// (a short read), reads below it still return the data.
#[test]
fn truncated_image_fails_reads_past_the_end() {
    const SIZE: usize = 1 << 20;
    let modes = [false, true]
        .into_iter()
        .flat_map(|direct| KINDS.map(|kind| (kind, direct)));
    for (kind, direct) in modes {
        let opts = DiskOptions {
            readonly: false,
            direct,
        };
        let img = image(SIZE as u64, opts);
        eprintln!("truncated image: engine={kind} direct={direct}");
        let data: Vec<u8> = (0..SIZE).map(|i| (i / 4096) as u8 ^ 0x5a).collect();
        std::fs::write(&img.path, &data).unwrap();
        let mut engine = img.disk.engine(kind, 4).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap()
            .set_len(SIZE as u64 / 2)
            .unwrap();
        let half = SIZE as u64 / 2;
        let cases: [(u64, usize, Result<u32, i32>); 5] = [
            (half + 4096, 4096, Err(libc::EIO)),
            (half, 4096, Err(libc::EIO)),
            (half - 4096, 8192, Err(libc::EIO)),
            (SIZE as u64 - 512, 512, Err(libc::EIO)),
            (half - 8192, 8192, Ok(8192)),
        ];
        for (offset, len, want) in cases {
            let mut buf = Buf::new(len, 0);
            let got = one(engine.as_mut(), IoOp::Read { offset }, &mut buf);
            assert_eq!(
                got, want,
                "{kind} direct={direct}: read of {len} at {offset}"
            );
            if got.is_ok() {
                assert!(buf.bytes() == &data[offset as usize..offset as usize + len]);
            }
        }
        // Everything below the new end still reads back, in several requests in flight.
        let mut bufs: Vec<Buf> = (0..4).map(|_| Buf::new(SIZE / 8, 0)).collect();
        for (i, buf) in bufs.iter_mut().enumerate() {
            let offset = (i * SIZE / 8) as u64;
            // SAFETY: `bufs` outlives the requests, reaped below.
            unsafe {
                engine
                    .submit(IoOp::Read { offset }, &[buf.iovec()], i as u64)
                    .unwrap()
            };
        }
        let done = reap_n(engine.as_mut(), 4);
        assert!(
            done.iter().all(|c| c.result == Ok((SIZE / 8) as u32)),
            "{done:?}"
        );
        for (i, buf) in bufs.iter().enumerate() {
            assert!(
                buf.bytes() == &data[i * SIZE / 8..(i + 1) * SIZE / 8],
                "{kind}: part {i}"
            );
        }
    }
}
