//! The I/O modes: who serves a device's queues, on which threads, under which lock.
//!
//! Every mode runs the same [`QueueService`]; a mode only decides who calls it. Each mode is
//! one file beside this one, and [`IoMode::properties`] is the one table the rest of the
//! system reads (a transport asks it whether to register ioeventfds, a VMM whether vCPUs take
//! the VM-wide lock) instead of matching on the mode. A new mode is a new file and a new row.
//!
//! | mode | kicks | who pops and parses | who does the I/O | VM-wide lock | polling |
//! | --- | --- | --- | --- | --- | --- |
//! | [`vcpu`] | notify exit | the vCPU thread, in the exit | same, sync engine | yes | no |
//! | [`iothread`] | ioeventfd | one loop for every disk | same, the disk's engine | per turn | no |
//! | [`dataplane`] | ioeventfd | a loop per queue | same, the disk's engine | no | adaptive |
//! | [`workers`] | ioeventfd | a loop per queue | a pool of worker threads | no | adaptive, while the pool is idle |

pub mod dataplane;
pub mod iothread;
pub mod vcpu;
pub mod workers;

use std::str::FromStr;
use std::sync::Arc;

use backend_raw::EngineKind;
use virtqueue_core::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::disk::OpenDisk;
use crate::error::DeviceError;
use crate::event_loop::{EventLoop, ServedQueue};
use crate::inflight::engine_depth;
use crate::request::RequestParser;
use crate::scheduler::{Inline, Scheduler};
use crate::service::{Observers, QueueService};
use crate::threads::ThreadHook;
use crate::throttle::{DiskThrottle, ThrottleGroup};
use crate::trace::QueueTrace;

/// Which host threads serve the disks' queues (the talk's four I/O paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// No ioeventfd: a kick exits to the vCPU thread, which pops, parses, does the I/O with
    /// the sync engine and notifies, all under the VM-wide lock (unmodified QEMU's global
    /// mutex).
    Vcpu,
    /// Kicks through ioeventfd to ONE event-loop thread shared by every disk, which
    /// processes under the same VM-wide lock; no polling (QEMU's virtio-ioeventfd).
    Iothread,
    /// One thread per queue outside any VM-wide lock, ioeventfd in, irqfd out, adaptive
    /// polling.
    Dataplane,
    /// A thread per queue pops and parses, a pool of worker threads does the I/O; adaptive
    /// polling, completions published in completion order.
    Workers,
}

/// Which engine a mode's requests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineRule {
    /// Always the sync engine (blocking I/O in the serving thread).
    Sync,
    /// The disk's `engine=`.
    Configured,
}

/// What a mode is: the one table the rest of the system reads.
#[derive(Debug, Clone, Copy)]
pub struct ModeProperties {
    /// The mode.
    pub mode: IoMode,
    /// Its command-line name.
    pub name: &'static str,
    /// Kicks reach the device through an ioeventfd; otherwise as notify exits, served on the
    /// vCPU thread.
    pub ioeventfd: bool,
    /// vCPU threads take the VM-wide lock around every exit they dispatch, and the serving
    /// thread takes it around every turn.
    pub vm_lock: bool,
    /// The VM runs one shared event loop that serves every disk's queues.
    pub shared_loop: bool,
    /// Each queue has a serving thread of its own (which may keep a core busy polling).
    pub thread_per_queue: bool,
    /// The engine requests run on.
    pub engine: EngineRule,
    /// Starts serving a device's queues.
    pub start: fn(Activation<'_>) -> Result<Box<dyn Serving>, DeviceError>,
}

/// Every mode, in the order of the talk's ladder.
pub const MODES: [ModeProperties; 4] = [
    ModeProperties {
        mode: IoMode::Vcpu,
        name: "vcpu",
        thread_per_queue: false,
        ioeventfd: false,
        vm_lock: true,
        shared_loop: false,
        engine: EngineRule::Sync,
        start: vcpu::start,
    },
    ModeProperties {
        mode: IoMode::Iothread,
        name: "iothread",
        thread_per_queue: false,
        ioeventfd: true,
        vm_lock: true,
        shared_loop: true,
        engine: EngineRule::Configured,
        start: iothread::start,
    },
    ModeProperties {
        mode: IoMode::Dataplane,
        name: "dataplane",
        thread_per_queue: true,
        ioeventfd: true,
        vm_lock: false,
        shared_loop: false,
        engine: EngineRule::Configured,
        start: dataplane::start,
    },
    ModeProperties {
        mode: IoMode::Workers,
        name: "workers",
        thread_per_queue: true,
        ioeventfd: true,
        vm_lock: false,
        shared_loop: false,
        engine: EngineRule::Configured,
        start: workers::start,
    },
];

impl IoMode {
    /// Every mode.
    pub const ALL: [IoMode; 4] = [
        IoMode::Vcpu,
        IoMode::Iothread,
        IoMode::Dataplane,
        IoMode::Workers,
    ];

    /// The mode's row of [`MODES`].
    ///
    /// ```
    /// use blk_device::mode::IoMode;
    /// assert!(IoMode::Iothread.properties().vm_lock);
    /// assert!(!IoMode::Vcpu.properties().ioeventfd);
    /// assert_eq!("workers".parse::<IoMode>().unwrap(), IoMode::Workers);
    /// ```
    pub fn properties(self) -> &'static ModeProperties {
        let i = match self {
            IoMode::Vcpu => 0,
            IoMode::Iothread => 1,
            IoMode::Dataplane => 2,
            IoMode::Workers => 3,
        };
        &MODES[i]
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        self.properties().name
    }

    /// Whether vCPU threads take the VM-wide lock around port I/O and MMIO dispatch.
    pub fn uses_vm_lock(self) -> bool {
        self.properties().vm_lock
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown I/O mode name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown I/O mode '{0}': use vcpu, iothread, dataplane or workers")]
pub struct ParseIoModeError(pub String);

impl FromStr for IoMode {
    type Err = ParseIoModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MODES
            .iter()
            .find(|m| m.name == s)
            .map(|m| m.mode)
            .ok_or_else(|| ParseIoModeError(s.to_string()))
    }
}

/// A running mode: who serves the queues until [`Serving::stop`].
pub trait Serving: Send + std::fmt::Debug {
    /// A kick for `queue` that arrived on the caller's thread (a notify exit). Returns
    /// `true` when it was served here; otherwise the transport passes it on to the queue's
    /// kick eventfd.
    fn notify(&mut self, queue: u16) -> bool {
        let _ = queue;
        false
    }

    /// Stops serving after in-flight requests complete.
    fn stop(self: Box<Self>);
}

/// One enabled queue, as the transport hands it over at DRIVER_OK.
#[derive(Debug)]
pub struct QueueSetup {
    /// The queue's index.
    pub index: u16,
    /// Its state: size, ring addresses, EVENT_IDX.
    pub queue: Queue,
    /// Readable when the driver kicks it (a duplicate of the transport's eventfd).
    pub kick: EventFd,
}

/// How a device's queues are served: the part of a device's set-up its modes read.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The mode.
    pub mode: IoMode,
    /// Busy-poll budget of a polling serving thread, in microseconds (0: never poll).
    pub poll_us: u32,
    /// Whether a polling serving thread keeps polling while requests are in flight, across
    /// the disk's latency ([`crate::poll::FlightPoll`]), instead of sleeping after `poll_us`.
    pub poll_in_flight: bool,
    /// Worker threads of the pool (`workers` mode).
    pub workers: usize,
    /// Requests a `workers` queue thread keeps in flight itself before it hands more to the
    /// pool ([`crate::handoff`]; 0 hands every request to the pool).
    pub handoff_depth: usize,
    /// The VM's shared loop (required by a mode whose row says `shared_loop`).
    pub shared_loop: Option<Arc<EventLoop>>,
    /// One stamping handle per queue index (disabled handles when tracing is off).
    pub traces: Vec<QueueTrace>,
    /// Run first in every thread the modes start.
    pub hook: ThreadHook,
    /// Prefix of the names of those threads.
    pub thread_name: String,
    /// The `--throttle-group` the disk belongs to (`group=`).
    pub throttle_group: Option<Arc<ThrottleGroup>>,
}

impl ServeOptions {
    /// Options for `mode` with the defaults: the default polling window and pool size, no
    /// shared loop, no tracing, no hook.
    pub fn new(mode: IoMode) -> Self {
        ServeOptions {
            mode,
            poll_us: crate::poll::DEFAULT_POLL_US,
            poll_in_flight: true,
            workers: crate::pool::DEFAULT_WORKERS,
            handoff_depth: crate::handoff::HANDOFF_DEPTH,
            shared_loop: None,
            traces: Vec::new(),
            hook: ThreadHook::none(),
            thread_name: "vblk".into(),
            throttle_group: None,
        }
    }
}

/// Everything a mode needs to start serving.
#[derive(Debug)]
pub struct Activation<'a> {
    /// The enabled queues.
    pub queues: Vec<QueueSetup>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The request parser (limits from the negotiated features, the GET_ID answer).
    pub parser: RequestParser,
    /// Interrupts, health, metrics, failure log.
    pub observers: Observers,
    /// The disk, for engines.
    pub disk: &'a OpenDisk,
    /// How to serve.
    pub serve: &'a ServeOptions,
    /// The disk's limits (`None`: unlimited).
    pub throttle: Option<Arc<DiskThrottle>>,
}

impl Activation<'_> {
    /// The engine this mode runs requests on.
    pub fn engine_kind(&self) -> EngineKind {
        match self.serve.mode.properties().engine {
            EngineRule::Sync => EngineKind::Sync,
            EngineRule::Configured => self.disk.engine_kind(),
        }
    }

    /// The stamping handle of queue `index`.
    pub fn trace(&self, index: u16) -> QueueTrace {
        self.serve
            .traces
            .get(usize::from(index))
            .cloned()
            .unwrap_or_default()
    }

    /// The service of `setup` over `scheduler`, with its kick eventfd.
    pub fn served(
        &self,
        setup: QueueSetup,
        scheduler: Box<dyn Scheduler>,
    ) -> Result<ServedQueue, DeviceError> {
        let throttle = self
            .throttle
            .as_ref()
            .map(DiskThrottle::queue)
            .transpose()
            .map_err(|source| DeviceError::Fd {
                path: self.disk.path().to_path_buf(),
                source,
            })?;
        let service = QueueService::new(
            setup.index,
            setup.queue,
            self.mem.clone(),
            self.parser.clone(),
            scheduler,
            self.trace(setup.index),
            self.observers.clone(),
        )
        .with_throttle(throttle);
        Ok(ServedQueue {
            service,
            kick: setup.kick,
        })
    }

    /// Every queue served on its own engine (of this mode's kind) by its serving thread.
    pub fn inline_queues(mut self) -> Result<Vec<ServedQueue>, DeviceError> {
        let kind = self.engine_kind();
        std::mem::take(&mut self.queues)
            .into_iter()
            .map(|setup| {
                let depth = engine_depth(setup.queue.size());
                let engine = self.disk.engine_over(kind, depth, &self.mem)?;
                let inline = Inline::new(engine, self.disk.merge())
                    .recording_threads_in(self.observers.metrics.clone());
                self.served(setup, Box::new(inline))
            })
            .collect()
    }
}
