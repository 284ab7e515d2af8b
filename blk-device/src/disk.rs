//! The disk behind a device: the opened image (or NBD export), the engine it asked for and
//! the faults to inject, and the engines built on it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backend_nbd::{NbdExport, NbdOptions, NbdStatsHandle, ThreadStart};
use backend_raw::{
    with_faults, Disk, DiskOptions, Engine, EngineKind, FaultSpec, IoOp, LogEngine, WriteLog,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::config::DiskConfig;
use crate::error::DeviceError;
use crate::threads::{ThreadHook, ThreadRole};

/// An opened disk with what its `--disk` option asked for.
#[derive(Debug)]
pub struct OpenDisk {
    path: PathBuf,
    backend: Backend,
    engine: EngineKind,
    /// Faults injected into every engine of this disk (`fault=`).
    fault: Option<FaultSpec>,
    /// Where every engine of this disk logs its writes and flushes (`write-log=`).
    log: Option<Arc<WriteLog>>,
    merge: bool,
    fixed_buffers: bool,
    /// A failure to register guest memory was logged (once per disk: every engine would fail
    /// the same way).
    fixed_failed: AtomicBool,
}

/// What serves the disk's requests.
#[derive(Debug)]
enum Backend {
    /// An image file or host block device.
    File(Disk),
    /// An NBD export: one connection per queue when the server allows several
    /// (`NBD_FLAG_CAN_MULTI_CONN`), else one shared by every queue, pipelined.
    Nbd(NbdExport),
}

impl OpenDisk {
    /// Opens `cfg.path` the way `cfg` asks (read-only, `O_DIRECT`), or connects to
    /// `cfg.uri`; an NBD connection's thread runs `hook` with [`ThreadRole::Connection`]
    /// first.
    pub fn open(cfg: &DiskConfig, hook: &ThreadHook) -> Result<Self, DeviceError> {
        let backend = match &cfg.uri {
            Some(uri) => {
                let hook = hook.clone();
                let opts = NbdOptions {
                    reconnect_timeout: cfg.reconnect_timeout,
                    connections: usize::from(cfg.queues),
                    readonly: cfg.readonly,
                    thread_start: Some(ThreadStart(Arc::new(move || {
                        hook.run(ThreadRole::Connection)
                    }))),
                };
                let export = NbdExport::open(uri, opts).map_err(|e| DeviceError::Config {
                    path: cfg.path.clone(),
                    reason: e.to_string(),
                })?;
                Backend::Nbd(export)
            }
            None => Backend::File(
                Disk::open(
                    &cfg.path,
                    DiskOptions {
                        readonly: cfg.readonly,
                        direct: cfg.direct,
                    },
                )
                .map_err(|source| DeviceError::Disk {
                    path: cfg.path.clone(),
                    source,
                })?,
            ),
        };
        let log = match &cfg.write_log {
            Some(p) => Some(WriteLog::create(p).map_err(|source| DeviceError::Config {
                path: cfg.path.clone(),
                reason: format!("cannot create the write log {}: {source}", p.display()),
            })?),
            None => None,
        };
        Ok(OpenDisk {
            log,
            path: cfg.path.clone(),
            backend,
            engine: cfg.engine,
            fault: cfg.fault.clone(),
            merge: cfg.merge,
            fixed_buffers: cfg.fixed_buffers,
            fixed_failed: AtomicBool::new(false),
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The opened image (`None` for an NBD disk).
    pub fn disk(&self) -> Option<&Disk> {
        match &self.backend {
            Backend::File(d) => Some(d),
            Backend::Nbd(_) => None,
        }
    }

    /// The NBD export's counters (`None` for a file).
    pub fn nbd_stats(&self) -> Option<NbdStatsHandle> {
        match &self.backend {
            Backend::Nbd(e) => Some(e.stats_handle()),
            Backend::File(_) => None,
        }
    }

    /// Size in 512-byte sectors, rounded down.
    pub fn capacity_sectors(&self) -> u64 {
        match &self.backend {
            Backend::File(d) => d.capacity_sectors(),
            Backend::Nbd(e) => e.info().size / 512,
        }
    }

    /// The block size to report to the guest: the file's, or the NBD export's minimum block
    /// size (at least 512).
    pub fn logical_block_size(&self) -> u32 {
        match &self.backend {
            Backend::File(d) => d.logical_block_size(),
            Backend::Nbd(e) => e.info().min_block.max(512),
        }
    }

    /// Whether writes are refused (the device offers `VIRTIO_BLK_F_RO`).
    pub fn readonly(&self) -> bool {
        match &self.backend {
            Backend::File(d) => d.readonly(),
            Backend::Nbd(e) => e.info().readonly(),
        }
    }

    /// Whether discard does anything (a file that punches holes, an NBD server taking
    /// `NBD_CMD_TRIM`).
    pub fn discard_supported(&self) -> bool {
        match &self.backend {
            Backend::File(d) => d.discard_supported(),
            Backend::Nbd(e) => e.info().can_trim() && !e.info().readonly(),
        }
    }

    /// Whether write-zeroes is available (an NBD server taking `NBD_CMD_WRITE_ZEROES`).
    pub fn write_zeroes_supported(&self) -> bool {
        match &self.backend {
            Backend::File(d) => d.write_zeroes_supported(),
            Backend::Nbd(e) => e.info().can_write_zeroes() && !e.info().readonly(),
        }
    }

    /// An engine of `kind` straight on the backend (no log, no faults), and the io_uring
    /// error when it fell back to sync. An NBD engine is asynchronous unless `kind` is
    /// `Sync` (then each request completes inside `submit`, as the `vcpu` mode expects).
    fn raw_engine(
        &self,
        kind: EngineKind,
        depth: usize,
    ) -> Result<(Box<dyn Engine>, Option<backend_raw::Error>), DeviceError> {
        match &self.backend {
            Backend::File(d) => d
                .engine_or_sync(kind, depth)
                .map_err(|source| DeviceError::Disk {
                    path: self.path.clone(),
                    source,
                }),
            Backend::Nbd(e) => e
                .engine(depth, kind == EngineKind::Sync)
                .map(|engine| (engine, None))
                .map_err(|err| DeviceError::Config {
                    path: self.path.clone(),
                    reason: err.to_string(),
                }),
        }
    }

    /// Whether adjacent requests of a batch are merged into one I/O.
    pub fn merge(&self) -> bool {
        self.merge
    }

    /// The engine the disk's option asked for.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine
    }

    /// An engine of `kind` for one thread, with the disk's faults, falling back to the sync
    /// engine (with a log line) where `kind` is unavailable.
    pub fn engine(&self, kind: EngineKind, depth: usize) -> Result<Box<dyn Engine>, DeviceError> {
        let (engine, fallback) = self.raw_engine(kind, depth)?;
        // The log sees what reaches the disk; faults sit outside it, so a flush `noflush`
        // drops never leaves its marker.
        let engine: Box<dyn Engine> = match &self.log {
            Some(log) => Box::new(LogEngine::new(engine, log.clone())),
            None => engine,
        };
        let engine = with_faults(engine, self.fault.as_ref());
        if let Some(e) = fallback {
            eprintln!(
                "virtio-blk {}: {e}; using the sync engine",
                self.path.display()
            );
        }
        Ok(engine)
    }

    /// An engine as [`engine`](Self::engine) builds it, with guest memory `mem` registered
    /// (io_uring fixed buffers, `fixed-buffers=on`); a failure to register is logged and the
    /// engine works without.
    pub fn engine_over(
        &self,
        kind: EngineKind,
        depth: usize,
        mem: &GuestMemoryMmap,
    ) -> Result<Box<dyn Engine>, DeviceError> {
        let mut engine = self.engine(kind, depth)?;
        if !self.fixed_buffers || engine.kind() != EngineKind::IoUring {
            return Ok(engine);
        }
        let regions: Vec<libc::iovec> = mem
            .iter()
            .filter_map(|r| {
                let base = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: usize::try_from(r.len()).ok()?,
                })
            })
            .collect();
        // SAFETY: guest RAM stays mapped for the VM's life, which outlasts every engine of
        // its devices (engines are dropped when the device stops serving).
        let registered = unsafe { engine.register_memory(&regions) };
        if let Err(e) = registered {
            if !self.fixed_failed.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "virtio-blk {}: cannot register guest memory with io_uring ({e}); requests \
                     map their buffers one by one",
                    self.path.display()
                );
            }
        }
        Ok(engine)
    }

    /// Makes every completed write durable (`fdatasync`, or `NBD_CMD_FLUSH`).
    pub fn sync(&self) -> Result<(), String> {
        let (mut engine, _) = self
            .raw_engine(EngineKind::Sync, 1)
            .map_err(|e| e.to_string())?;
        // SAFETY: a flush carries no buffers.
        unsafe { engine.submit(IoOp::Flush, &[], 0) }.map_err(|e| e.to_string())?;
        engine.flush_submissions().map_err(|e| e.to_string())?;
        engine.wait().map_err(|e| e.to_string())?;
        let mut done = Vec::new();
        engine.reap(&mut done);
        match done.first().map(|c| c.result) {
            Some(Ok(_)) => Ok(()),
            Some(Err(errno)) => Err(io::Error::from_raw_os_error(errno).to_string()),
            None => Err("the flush did not complete".to_string()),
        }
    }
}
