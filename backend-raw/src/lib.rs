//! Raw disk images and host block devices as virtio-blk backends.
//!
//! [`Disk::open`] opens an image file or block device (read-only, `O_DIRECT`, see
//! [`DiskOptions`]) and reports what the device config needs: capacity, logical block size,
//! whether discard is worth offering. [`Disk::engine`] builds an [`Engine`], the one small
//! interface the device's dataplane uses: submit a batch of [`IoOp`]s over iovecs, push it
//! with one system call, reap [`Completion`]s tagged with the caller's `user_data`, sleep in
//! epoll on an eventfd. Two engines implement it: `sync` (`preadv`/`pwritev` in the calling
//! thread) and `io_uring`. With `O_DIRECT`, unaligned requests go through pooled, aligned
//! bounce buffers. [`FaultEngine`] wraps either and fails the requests a [`FaultSpec`]
//! (`eio@read`, `enospc@write:after=100`, ...) chooses, to test failing disks.
//!
//! ```
//! use backend_raw::{Disk, DiskOptions, EngineKind, IoOp};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.img");
//! std::fs::File::create(&path)?.set_len(64 << 10)?;
//! let disk = Disk::open(&path, DiskOptions { readonly: false, direct: false })?;
//! let mut engine = disk.engine(EngineKind::Sync, 4)?;
//!
//! let mut sector = [7u8; 512];
//! let iov = [libc::iovec { iov_base: sector.as_mut_ptr().cast(), iov_len: 512 }];
//! // SAFETY: `sector` stays alive and untouched until the completion is reaped below.
//! unsafe { engine.submit(IoOp::Write { offset: 0 }, &iov, 42)? };
//! engine.flush_submissions()?;
//! engine.wait()?;
//! let mut done = Vec::new();
//! assert_eq!(engine.reap(&mut done), 1);
//! assert_eq!((done[0].user_data, done[0].result), (42, Ok(512)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod blocking;
mod bounce;
mod disk;
mod disk_info;
mod engine;
mod engine_fault;
mod engine_sync;
mod engine_uring;
mod error;
mod fault_spec;

pub use disk::{Disk, DiskOptions};
pub use disk_info::DioAlignment;
pub use engine::{
    Completion, Engine, EngineKind, IoOp, ParseEngineKindError, MAX_DEPTH, MAX_IOVECS,
};
pub use engine_fault::{with_faults, FaultEngine};
pub use error::Error;
pub use fault_spec::{FaultOp, FaultRule, FaultSpec, FaultSpecError};
