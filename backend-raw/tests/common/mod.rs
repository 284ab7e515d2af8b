//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use backend_raw::{Completion, Disk, DiskOptions, Engine, Error};

/// Directories to try for test images, in order: O_DIRECT may be refused by one (tmpfs on
/// old kernels) and accepted by another.
pub fn candidate_dirs() -> Vec<PathBuf> {
    vec![
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ]
}

/// A temporary image of `size` bytes, and the disk opened on it.
pub struct Image {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub disk: Disk,
}

/// Creates an image in the first candidate directory where opening it with `opts` works.
/// With direct=on and no directory accepting O_DIRECT the test fails, saying why: a direct=on
/// test that ran on nothing must not pass.
pub fn image(size: u64, opts: DiskOptions) -> Image {
    let mut refused = Vec::new();
    for base in candidate_dirs() {
        let Ok(dir) = tempfile::tempdir_in(&base) else {
            continue;
        };
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        match Disk::open(&path, opts) {
            Ok(disk) => return Image { dir, path, disk },
            Err(e @ Error::DirectUnsupported { .. }) => refused.push(e.to_string()),
            Err(e) => panic!("cannot open a test image in {}: {e}", base.display()),
        }
    }
    panic!(
        "no directory here accepts O_DIRECT, so the direct=on tests cannot run: {refused:?}; \
         run them where the temporary directory or target/ is on ext4, xfs or btrfs"
    );
}

/// Prints which mode a test runs in, so a run shows what was covered.
pub fn announce(test: &str, image: &Image, engine: &dyn Engine) {
    eprintln!(
        "{test}: engine={} direct={} ({:?}) in {}",
        engine.kind(),
        if image.disk.direct().is_some() {
            "on"
        } else {
            "off"
        },
        image.disk.direct(),
        image.path.parent().unwrap_or(Path::new("?")).display(),
    );
}

/// Reaps until `n` completions were collected, blocking in between.
pub fn reap_n(engine: &mut dyn Engine, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    engine.flush_submissions().unwrap();
    while out.len() < n {
        engine.wait().unwrap();
        engine.reap(&mut out);
    }
    out
}

/// A buffer whose first byte sits `misalign` bytes past a 4096-byte boundary.
pub struct Buf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    pub fn new(len: usize, misalign: usize) -> Buf {
        let storage = vec![0u8; len + 8192];
        let start = storage.as_ptr().align_offset(4096) + misalign % 4096;
        Buf {
            storage,
            start,
            len,
        }
    }

    pub fn filled(data: &[u8], misalign: usize) -> Buf {
        let mut buf = Buf::new(data.len(), misalign);
        buf.bytes_mut().copy_from_slice(data);
        buf
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    pub fn iovec(&mut self) -> libc::iovec {
        libc::iovec {
            iov_base: self.bytes_mut().as_mut_ptr().cast(),
            iov_len: self.len,
        }
    }
}
