//! The virtio-blk PCI function: feature decisions, configuration space, and reactions to
//! what the driver does through the virtio-pci transport (VIRTIO 1.x, 4.1).
//!
//! The transport state machine (`pci-transport`) answers every config-space and BAR access;
//! this file acts on the events it returns: ioeventfds for enabled queues (moved when BAR0
//! moves), MSI routes for the MSI-X table, dataplane start at DRIVER_OK and stop at reset.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use backend_raw::{Disk, DiskOptions, Engine, EngineKind, FaultSpec, IoOp};
use blk_proto::features::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use blk_proto::{DeviceLimits, Features, VirtioBlkConfig, MAX_DISCARD_SEGMENTS, SECTOR_SIZE};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use pci_transport::virtio_pci::layout::BAR_SIZE;
use pci_transport::virtio_pci::{MAX_QUEUE_SIZE, VIRTIO_ID_BLOCK};
use pci_transport::{
    Event, Events, VirtioPciFunction, VirtioPciParams, MAX_MSIX_VECTORS, MAX_QUEUES,
};
use virtqueue_core::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::failure_log::FailureLog;
use super::handler::{config_source, Backend, Dataplane, DeviceHealth, QueueWorker, ThreadQueue};
use super::iothread::IoThread;
use super::pool::{self, WorkerPool};
use super::request::{engine_depth, Executor, RequestParser};
use super::{DeviceContext, DeviceError};
use crate::config::{DiskConfig, EngineChoice, IoMode};
use crate::interrupts::{MsixVectors, NO_VECTOR};
use crate::pci_device::{BarInfo, PciDevice};
use crate::trace::QueueTrace;

/// Largest discard / write-zeroes segment offered, in sectors (just under 2 GiB, so a
/// segment's byte length stays far from overflow everywhere).
const MAX_RANGE_SECTORS: u32 = (1 << 22) - 1;

/// The features this device offers, each decided here and nowhere else.
fn offered_features(disk: &Disk, cfg: &DiskConfig) -> Features {
    // Modern device only (4.1.2.1: non-transitional, device ID 0x1042).
    let mut f = Features::bit(VIRTIO_F_VERSION_1);
    // virtqueue-core implements used_event / avail_event suppression: fewer kicks and
    // interrupts, which cost 2 us and 9 us here.
    f = f.with(VIRTIO_RING_F_EVENT_IDX);
    // The chain walker flattens indirect tables (one level, 2.7.5.3).
    f = f.with(VIRTIO_RING_F_INDIRECT_DESC);
    // Tell the driver how many data buffers a request may have (queue_size - 2).
    f = f.with(VIRTIO_BLK_F_SEG_MAX);
    // The disk's logical block size, so the guest issues aligned I/O (no bounce buffers
    // with O_DIRECT).
    f = f.with(VIRTIO_BLK_F_BLK_SIZE);
    // Writes land in the host page cache (or the disk's volatile cache): the guest must be
    // able to make them durable.
    f = f.with(VIRTIO_BLK_F_FLUSH);
    if disk.discard_supported() {
        // Only where discarding frees space: a regular file whose filesystem punches holes,
        // or a block device accepting discards.
        f = f.with(VIRTIO_BLK_F_DISCARD);
    }
    if disk.write_zeroes_supported() {
        // fallocate(ZERO_RANGE/PUNCH_HOLE) or written zeros: any writable disk.
        f = f.with(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    if disk.readonly() || cfg.readonly {
        // 5.2.6.2: writes then fail with IOERR, and the driver knows before trying.
        f = f.with(VIRTIO_BLK_F_RO);
    }
    if cfg.queues > 1 {
        f = f.with(VIRTIO_BLK_F_MQ);
    }
    // Not offered: SIZE_MAX (no per-buffer limit), GEOMETRY and TOPOLOGY (legacy hints),
    // CONFIG_WCE (the cache mode is the host's), RING_PACKED, RING_RESET,
    // NOTIFICATION_DATA, ACCESS_PLATFORM (no IOMMU).
    f
}

/// `struct virtio_blk_config` for `disk` (5.2.4 "Device configuration layout").
fn device_config(disk: &Disk, cfg: &DiskConfig, features: Features) -> VirtioBlkConfig {
    let blk_size = disk.logical_block_size().max(SECTOR_SIZE as u32);
    let mut c = VirtioBlkConfig::new(disk.capacity_sectors())
        .with_seg_max(u32::from(cfg.queue_size).saturating_sub(2).max(1))
        .with_blk_size(blk_size)
        .with_num_queues(cfg.queues);
    if features.contains(VIRTIO_BLK_F_DISCARD) {
        c = c.with_discard(
            MAX_RANGE_SECTORS,
            MAX_DISCARD_SEGMENTS as u32,
            blk_size / SECTOR_SIZE as u32,
        );
    }
    if features.contains(VIRTIO_BLK_F_WRITE_ZEROES) {
        c = c.with_write_zeroes(
            MAX_RANGE_SECTORS,
            MAX_DISCARD_SEGMENTS as u32,
            disk.discard_supported(),
        );
    }
    c
}

/// Who serves the queues while the device is live.
#[derive(Debug)]
enum Activity {
    /// Not live (before DRIVER_OK, after reset, or no usable queue).
    Idle,
    /// Dataplane threads own the queues (`IoMode::Dataplane`).
    Threads(Dataplane),
    /// Queue handler threads feed a worker pool (`IoMode::Workers`).
    Pool {
        /// One handler thread per queue.
        handlers: Dataplane,
        /// The workers doing the I/O.
        pool: WorkerPool,
    },
    /// The VM's shared I/O thread serves the queues (`IoMode::Iothread`).
    Shared {
        /// The loop.
        iothread: Arc<IoThread>,
        /// Where our queues sit in it.
        slots: Vec<usize>,
    },
    /// The vcpu thread serves the queues inside `bar_write` (`IoMode::Vcpu`).
    Vcpu(Vec<QueueWorker>),
}

/// A virtio-blk PCI function backed by a raw image or block device.
pub struct VirtioBlkPci {
    path: PathBuf,
    serial: String,
    engine: EngineKind,
    disk: Disk,
    /// Faults injected into every engine of this disk (`--disk ...,fault=`).
    fault: Option<FaultSpec>,
    transport: VirtioPciFunction,
    ctx: DeviceContext,
    offered: Features,
    config: VirtioBlkConfig,
    vectors: Arc<MsixVectors>,
    health: Arc<DeviceHealth>,
    /// Failed requests of every queue, logged up to a cap.
    failures: Arc<FailureLog>,
    /// One kick eventfd per queue; registered as an ioeventfd at `ioevents[q]` when `Some`.
    kicks: Vec<EventFd>,
    ioevents: Vec<Option<u64>>,
    activity: Activity,
}

impl std::fmt::Debug for VirtioBlkPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlkPci")
            .field("path", &self.path)
            .field("activity", &self.activity)
            .finish()
    }
}

impl VirtioBlkPci {
    /// Opens the disk and builds the function, with BAR0 at `ctx.bar0_addr`.
    pub fn new(cfg: &DiskConfig, ctx: DeviceContext) -> Result<Self, DeviceError> {
        let path = cfg.path.clone();
        check_config(cfg)?;
        let disk = Disk::open(
            &cfg.path,
            DiskOptions {
                readonly: cfg.readonly,
                direct: cfg.direct,
            },
        )
        .map_err(|source| DeviceError::Disk {
            path: path.clone(),
            source,
        })?;
        let offered = offered_features(&disk, cfg);
        let config = device_config(&disk, cfg, offered);
        let num_vectors = cfg.queues + 1;
        let params = VirtioPciParams::new(
            VIRTIO_ID_BLOCK,
            cfg.queues,
            cfg.queue_size,
            num_vectors,
            offered.bits(),
            ctx.bar0_addr,
        );
        let transport = VirtioPciFunction::new(&params, &config.to_bytes()).map_err(|e| {
            DeviceError::Transport {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let vectors = MsixVectors::new(&ctx.msi, num_vectors, usize::from(cfg.queues) + 1)
            .map_err(|source| DeviceError::Interrupt {
                path: path.clone(),
                source,
            })?;
        let kicks = (0..cfg.queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| DeviceError::Fd {
                path: path.clone(),
                source,
            })?;
        Ok(VirtioBlkPci {
            failures: Arc::new(FailureLog::new(&path)),
            path,
            serial: cfg.serial.clone(),
            engine: match cfg.engine {
                EngineChoice::Sync => EngineKind::Sync,
                EngineChoice::IoUring => EngineKind::IoUring,
            },
            disk,
            fault: cfg.fault.clone(),
            transport,
            ctx,
            offered,
            config,
            vectors: Arc::new(vectors),
            health: Arc::new(DeviceHealth::default()),
            ioevents: vec![None; usize::from(cfg.queues)],
            kicks,
            activity: Activity::Idle,
        })
    }

    /// Stops the dataplane (in-flight requests complete first), then makes every completed
    /// write durable (`fdatasync`). Call once at VMM exit.
    pub fn shutdown(&mut self) {
        self.deactivate();
        for q in 0..self.kicks.len() {
            self.unregister_ioevent(q);
        }
        if let Err(e) = self.sync_disk() {
            eprintln!(
                "virtio-blk {}: fdatasync at shutdown failed: {e}",
                self.path.display()
            );
        }
        self.vectors.release(&self.ctx.msi);
    }

    fn sync_disk(&self) -> Result<(), String> {
        let mut engine = self
            .disk
            .engine(EngineKind::Sync, 1)
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

    /// Acts on what a guest access did.
    fn handle_events(&mut self, events: &Events) {
        for event in events {
            match *event {
                Event::QueueEnabled(q) => self.register_ioevent(usize::from(q)),
                Event::BarReprogrammed { index: 0, .. } => self.move_ioevents(),
                Event::MsixEntryChanged(v) => self.update_vector(v),
                Event::MsixEnableChanged { .. } => {
                    (0..self.vectors.len()).for_each(|v| self.update_vector(v))
                }
                Event::MsixPendingDelivered { vector, .. } => {
                    if let Some(line) = self.vectors.line(vector) {
                        line.trigger();
                    }
                }
                Event::QueueMsixVectorChanged { queue, vector } => {
                    self.vectors.set_source_vector(usize::from(queue), vector)
                }
                Event::ConfigMsixVectorChanged(vector) => self
                    .vectors
                    .set_source_vector(config_source(self.num_queues()), vector),
                Event::DriverOk => self.activate(),
                Event::Reset => self.reset(),
                Event::QueueNotify(q) => self.notify(q),
                _ => {}
            }
        }
    }

    fn num_queues(&self) -> u16 {
        self.kicks.len() as u16
    }

    /// Mirrors MSI-X vector `v` into its route and its line's mask.
    fn update_vector(&mut self, v: u16) {
        let table = self.transport.msix_table();
        let Some(message) = table.message(v) else {
            return;
        };
        let masked = !table.is_deliverable(v);
        let Some(line) = self.vectors.line(v) else {
            return;
        };
        if masked {
            line.set_masked(true);
        }
        if let Err(e) = self
            .ctx
            .msi
            .update_route(line.gsi(), message.address, message.data, masked)
        {
            eprintln!("virtio-blk {}: MSI-X vector {v}: {e}", self.path.display());
        }
        if !masked {
            line.set_masked(false);
        }
    }

    /// The guest wrote a queue's notify register through an MMIO exit (no ioeventfd there).
    fn notify(&mut self, q: u16) {
        match &mut self.activity {
            Activity::Vcpu(workers) => {
                if let Some(w) = workers.iter_mut().find(|w| w.index() == q) {
                    w.serve_kick();
                }
            }
            // The ioeventfd is missing or not yet moved: pass the kick on by hand.
            _ => {
                if let Some(k) = self.kicks.get(usize::from(q)) {
                    let _ = k.write(1);
                }
            }
        }
    }

    fn register_ioevent(&mut self, q: usize) {
        if self.ctx.io_mode == IoMode::Vcpu {
            return;
        }
        self.unregister_ioevent(q);
        let Some(addr) = self.transport.notify_address(q as u16) else {
            return;
        };
        let Some(kick) = self.kicks.get(q) else {
            return;
        };
        match self
            .ctx
            .vm
            .register_ioevent(kick, &IoEventAddress::Mmio(addr), NoDatamatch)
        {
            Ok(()) => {
                if let Some(slot) = self.ioevents.get_mut(q) {
                    *slot = Some(addr);
                }
            }
            // Kicks still arrive as MMIO exits (`Event::QueueNotify`), only slower.
            Err(e) => eprintln!(
                "virtio-blk {}: {}",
                self.path.display(),
                DeviceError::Ioeventfd {
                    path: self.path.clone(),
                    addr,
                    source: io::Error::from_raw_os_error(e.errno())
                }
            ),
        }
    }

    fn unregister_ioevent(&mut self, q: usize) {
        let Some(addr) = self.ioevents.get_mut(q).and_then(Option::take) else {
            return;
        };
        if let Some(kick) = self.kicks.get(q) {
            let _ = self
                .ctx
                .vm
                .unregister_ioevent(kick, &IoEventAddress::Mmio(addr), NoDatamatch);
        }
    }

    /// BAR0 moved: every registered ioeventfd follows it.
    fn move_ioevents(&mut self) {
        for q in 0..self.kicks.len() {
            if self.ioevents.get(q).is_some_and(Option::is_some) {
                self.register_ioevent(q);
            }
        }
    }

    /// DRIVER_OK: builds the enabled queues and hands them to their servers.
    fn activate(&mut self) {
        if !matches!(self.activity, Activity::Idle) {
            return;
        }
        let negotiated = Features(self.transport.negotiated_features().unwrap_or(0));
        let limits = DeviceLimits::from_config(&self.config, self.offered, negotiated);
        let parser =
            RequestParser::new(limits, &self.serial).with_metrics(self.ctx.metrics.clone());
        let mut queues = Vec::new();
        for q in 0..self.num_queues() {
            match self.build_queue(q, negotiated) {
                Ok(Some(queue)) => queues.push((q, queue)),
                Ok(None) => {}
                Err(e) => self.queue_failed(q, &e),
            }
        }
        if queues.is_empty() {
            return;
        }
        let activity = match self.ctx.io_mode {
            IoMode::Vcpu => self.local_workers(queues, &parser).map(Activity::Vcpu),
            IoMode::Workers => self.start_pool(queues, &parser),
            mode => self
                .local_workers(queues, &parser)
                .and_then(|w| self.start_threads(w, mode)),
        };
        self.activity = match activity {
            Ok(a) => a,
            Err(e) => {
                eprintln!("virtio-blk {}: {e}", self.path.display());
                self.health.report_needs_reset();
                self.vectors
                    .trigger_source(config_source(self.num_queues()));
                Activity::Idle
            }
        };
    }

    fn queue_failed(&self, q: u16, e: &str) {
        eprintln!("virtio-blk {}: queue {q}: {e}", self.path.display());
        self.health.report_needs_reset();
        self.vectors
            .trigger_source(config_source(self.num_queues()));
    }

    fn trace(&self, q: u16) -> QueueTrace {
        self.ctx
            .tracer
            .as_ref()
            .map_or_else(QueueTrace::disabled, |t| t.queue(self.ctx.device_index, q))
    }

    /// The queue state of `q`, or `None` when the driver did not enable it.
    fn build_queue(&self, q: u16, negotiated: Features) -> Result<Option<Queue>, String> {
        let Some(state) = self.transport.queue(q) else {
            return Ok(None);
        };
        if !state.enabled() {
            return Ok(None);
        }
        let mut queue = Queue::new(self.transport.common_config().max_queue_size());
        queue.set_size(state.size());
        queue.set_desc_table_address(state.desc());
        queue.set_avail_ring_address(state.driver());
        queue.set_used_ring_address(state.device());
        queue.set_event_idx(negotiated.contains(VIRTIO_RING_F_EVENT_IDX));
        queue.set_ready(true);
        if !queue.is_valid(&self.ctx.mem) {
            return Err(format!(
                "invalid ring (size {}, desc {:#x}, driver {:#x}, device {:#x}): needs reset",
                state.size(),
                state.desc(),
                state.driver(),
                state.device()
            ));
        }
        self.vectors
            .set_source_vector(usize::from(q), state.msix_vector());
        Ok(Some(queue))
    }

    /// An engine for one thread, falling back to the sync engine where `kind` is unavailable.
    fn engine(&self, kind: EngineKind, depth: usize) -> Result<Box<dyn Engine>, DeviceError> {
        let (engine, fallback) = self
            .disk
            .engine_with_faults(kind, depth, self.fault.as_ref())
            .map_err(|source| DeviceError::Disk {
                path: self.path.clone(),
                source,
            })?;
        if let Some(e) = fallback {
            eprintln!(
                "virtio-blk {}: {e}; using the sync engine",
                self.path.display()
            );
        }
        Ok(engine)
    }

    fn worker(&self, q: u16, queue: Queue, backend: impl Into<Backend>) -> QueueWorker {
        QueueWorker::new(
            q,
            queue,
            self.ctx.mem.clone(),
            backend,
            self.vectors.clone(),
            self.health.clone(),
            config_source(self.num_queues()),
        )
        .with_observers(self.trace(q), self.ctx.metrics.clone())
        .with_failure_log(self.failures.clone())
    }

    /// Workers that run their I/O on their own engine: the sync engine in `IoMode::Vcpu`
    /// (the vcpu does the I/O synchronously, as an unmodified QEMU without aio would),
    /// the configured engine otherwise.
    fn local_workers(
        &self,
        queues: Vec<(u16, Queue)>,
        parser: &RequestParser,
    ) -> Result<Vec<QueueWorker>, DeviceError> {
        let kind = match self.ctx.io_mode {
            IoMode::Vcpu => EngineKind::Sync,
            _ => self.engine,
        };
        queues
            .into_iter()
            .map(|(q, queue)| {
                let engine = self.engine(kind, engine_depth(queue.size()))?;
                let exec = Executor::with_parser(engine, parser.clone());
                Ok(self.worker(q, queue, exec))
            })
            .collect()
    }

    /// `IoMode::Workers`: one handler thread per queue feeding a pool of `ctx.workers`
    /// threads, each with its own engine on the disk.
    fn start_pool(
        &self,
        queues: Vec<(u16, Queue)>,
        parser: &RequestParser,
    ) -> Result<Activity, DeviceError> {
        let fd_err = |source| DeviceError::Fd {
            path: self.path.clone(),
            source,
        };
        let sizes: Vec<(u16, u16)> = queues.iter().map(|(q, queue)| (*q, queue.size())).collect();
        let total: usize = sizes.iter().map(|s| usize::from(s.1)).sum();
        let jobs = WorkerPool::channel(total).map_err(fd_err)?;
        // Room for a maximal request (seg_max data buffers plus header and status, each
        // possibly split in two by a memory-region boundary) in every job, up front.
        let segments = 2 * usize::from(self.transport.common_config().max_queue_size());
        let (links, routes) = pool::links(&sizes, parser, segments, &jobs).map_err(fd_err)?;
        let depth = engine_depth(
            u16::try_from(total.min(usize::from(MAX_QUEUE_SIZE))).unwrap_or(MAX_QUEUE_SIZE),
        );
        let engines = (0..self.ctx.workers.max(1))
            .map(|_| self.engine(self.engine, depth))
            .collect::<Result<Vec<_>, _>>()?;
        let traces = (0..self.num_queues()).map(|q| self.trace(q)).collect();
        let pool = WorkerPool::start(engines, self.ctx.mem.clone(), jobs, routes, traces, "vblk")
            .map_err(|source| DeviceError::Thread {
            path: self.path.clone(),
            source,
        })?;
        let workers = queues
            .into_iter()
            .zip(links)
            .map(|((q, queue), link)| self.worker(q, queue, link))
            .collect();
        let handlers = self.dataplane(workers, true)?;
        Ok(Activity::Pool { handlers, pool })
    }

    /// One thread per queue (`per_queue`, polling up to `poll_us`), or one thread for all.
    fn dataplane(
        &self,
        workers: Vec<QueueWorker>,
        per_queue: bool,
    ) -> Result<Dataplane, DeviceError> {
        let queues = self.thread_queues(workers)?;
        let (groups, poll_us) = if per_queue {
            (
                queues.into_iter().map(|q| vec![q]).collect(),
                self.ctx.poll_us,
            )
        } else {
            (vec![queues], 0)
        };
        Dataplane::start(groups, poll_us, "vblk").map_err(|source| DeviceError::Thread {
            path: self.path.clone(),
            source,
        })
    }

    fn thread_queues(&self, workers: Vec<QueueWorker>) -> Result<Vec<ThreadQueue>, DeviceError> {
        let mut queues = Vec::with_capacity(workers.len());
        for worker in workers {
            let kick = match self.kicks.get(usize::from(worker.index())) {
                Some(k) => k.try_clone().map_err(|source| DeviceError::Fd {
                    path: self.path.clone(),
                    source,
                })?,
                None => continue,
            };
            queues.push(ThreadQueue { worker, kick });
        }
        Ok(queues)
    }

    fn start_threads(
        &self,
        workers: Vec<QueueWorker>,
        mode: IoMode,
    ) -> Result<Activity, DeviceError> {
        match (mode, &self.ctx.iothread) {
            // The one event loop of the VM, under the VM-wide lock, never polling.
            (IoMode::Iothread, Some(io)) => {
                let queues = self.thread_queues(workers)?;
                let slots = io.attach(queues).map_err(|source| DeviceError::Fd {
                    path: self.path.clone(),
                    source,
                })?;
                Ok(Activity::Shared {
                    iothread: io.clone(),
                    slots,
                })
            }
            // No shared loop was given (a device built on its own): one thread for the
            // device's queues, without polling.
            (IoMode::Iothread, None) => Ok(Activity::Threads(self.dataplane(workers, false)?)),
            // One thread per queue outside any VM-wide lock, busy-polling up to `poll_us`.
            _ => Ok(Activity::Threads(self.dataplane(workers, true)?)),
        }
    }

    /// Stops whoever serves the queues, after in-flight requests complete.
    fn deactivate(&mut self) {
        match std::mem::replace(&mut self.activity, Activity::Idle) {
            Activity::Threads(mut dp) => {
                dp.stop();
            }
            Activity::Pool {
                mut handlers,
                mut pool,
            } => {
                // Handlers first: each waits for its jobs to come back; dropping their links
                // then lets the workers run out of senders and end.
                drop(handlers.stop());
                pool.stop();
            }
            Activity::Shared { iothread, slots } => {
                iothread.detach(&slots);
            }
            Activity::Vcpu(mut workers) => workers.iter_mut().for_each(QueueWorker::quiesce),
            Activity::Idle => {}
        }
    }

    /// Device reset (status 0): stop, forget kicks, interrupts and queue state.
    fn reset(&mut self) {
        self.deactivate();
        for q in 0..self.kicks.len() {
            self.unregister_ioevent(q);
            if let Some(k) = self.kicks.get(q) {
                let _ = k.read();
            }
        }
        for s in 0..=usize::from(self.num_queues()) {
            self.vectors.set_source_vector(s, NO_VECTOR);
        }
        for v in 0..self.vectors.len() {
            if let Some(line) = self.vectors.line(v) {
                line.clear_pending();
            }
        }
        self.health.take_needs_reset();
    }

    /// Moves a DEVICE_NEEDS_RESET request from the dataplane into the transport, before
    /// the driver looks at `device_status`. The dataplane has already raised the
    /// configuration interrupt.
    fn sync_health(&mut self) {
        if self.health.take_needs_reset() {
            let _ = self.transport.set_needs_reset();
        }
    }
}

fn check_config(cfg: &DiskConfig) -> Result<(), DeviceError> {
    let bad = |reason: String| {
        Err(DeviceError::Config {
            path: cfg.path.clone(),
            reason,
        })
    };
    if cfg.queues == 0 || usize::from(cfg.queues) > MAX_QUEUES.min(MAX_MSIX_VECTORS - 1) {
        return bad(format!(
            "num-queues={} is out of range: use 1..={}",
            cfg.queues,
            MAX_QUEUES.min(MAX_MSIX_VECTORS - 1)
        ));
    }
    if !cfg.queue_size.is_power_of_two() || cfg.queue_size > MAX_QUEUE_SIZE {
        return bad(format!(
            "queue-size={} must be a power of two up to {MAX_QUEUE_SIZE}",
            cfg.queue_size
        ));
    }
    Ok(())
}

impl PciDevice for VirtioBlkPci {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.transport.config_read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let events = self.transport.config_write(offset, data);
        self.handle_events(&events);
    }

    fn bars(&self) -> Vec<BarInfo> {
        vec![BarInfo {
            index: 0,
            addr: self.transport.bar0_address(),
            size: BAR_SIZE,
        }]
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.sync_health();
        self.transport.bar_read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.sync_health();
        let events = self.transport.bar_write(bar, offset, data);
        self.handle_events(&events);
    }
}

impl Drop for VirtioBlkPci {
    fn drop(&mut self) {
        self.deactivate();
    }
}
