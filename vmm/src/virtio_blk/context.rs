//! What a virtio-blk PCI device needs from the VM (its context) and how creating one fails.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use blk_device::event_loop::{EventLoop, LoopOptions};
use blk_device::mode::{IoMode, ServeOptions};
use blk_device::threads::{ThreadHook, ThreadRole};
use blk_device::throttle::ThrottleGroup;

use crate::affinity::pin_current_thread;
use crate::interrupts::{InterruptError, MsiRouter};
use crate::metrics::DeviceMetrics;
use crate::seccomp::{apply_thread, ThreadKind};
use crate::trace::Tracer;

/// What a virtio-blk device needs from the VM it is plugged into.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    /// The VM, for ioeventfd registration.
    pub vm: Arc<kvm_ioctls::VmFd>,
    /// Guest RAM (cheap to clone: the regions are reference-counted).
    pub mem: vm_memory::GuestMemoryMmap,
    /// The VM's MSI routing table.
    pub msi: Arc<MsiRouter>,
    /// Guest physical address the platform assigned to BAR0.
    pub bar0_addr: u64,
    /// Who serves the queues.
    pub io_mode: IoMode,
    /// Busy-poll budget of a serving thread before it sleeps, in microseconds (0: never poll).
    pub poll_us: u32,
    /// Keep polling while requests are in flight.
    pub poll_in_flight: bool,
    /// Worker threads of the device's pool (`IoMode::Workers`).
    pub workers: usize,
    /// Requests a queue thread keeps in flight itself before handing more to the pool.
    pub handoff_depth: usize,
    /// The event loop shared by every disk (modes whose row says `shared_loop`).
    pub iothread: Option<Arc<EventLoop>>,
    /// The VM's tracer, when `--trace` is given.
    pub tracer: Option<Arc<Tracer>>,
    /// The device's index for the tracer (its `--disk` position).
    pub device_index: usize,
    /// The device's counters.
    pub metrics: Arc<DeviceMetrics>,
    /// CPUs the device's threads are pinned to (`--cpu-affinity io=`).
    pub io_cpus: Option<Vec<usize>>,
    /// The throttle group the disk shares limits with (`group=`).
    pub throttle_group: Option<Arc<ThrottleGroup>>,
}

impl DeviceContext {
    /// A context with the defaults for everything but the VM and the mode: the default
    /// polling window and pool size, no shared I/O thread, no tracing, fresh metrics.
    pub fn new(
        vm: Arc<kvm_ioctls::VmFd>,
        mem: vm_memory::GuestMemoryMmap,
        msi: Arc<MsiRouter>,
        bar0_addr: u64,
        io_mode: IoMode,
    ) -> Self {
        let defaults = ServeOptions::new(io_mode);
        DeviceContext {
            vm,
            mem,
            msi,
            bar0_addr,
            io_mode,
            poll_us: defaults.poll_us,
            poll_in_flight: defaults.poll_in_flight,
            workers: defaults.workers,
            handoff_depth: defaults.handoff_depth,
            iothread: None,
            tracer: None,
            device_index: 0,
            metrics: Arc::new(DeviceMetrics::new("virtio-blk")),
            io_cpus: None,
            throttle_group: None,
        }
    }

    /// How the device model serves this device's `queues` queues.
    pub fn serve_options(&self, queues: u16) -> ServeOptions {
        ServeOptions {
            mode: self.io_mode,
            poll_us: self.poll_us,
            poll_in_flight: self.poll_in_flight,
            workers: self.workers,
            handoff_depth: self.handoff_depth,
            shared_loop: self.iothread.clone(),
            traces: (0..queues)
                .map(|q| {
                    self.tracer
                        .as_ref()
                        .map_or_else(Default::default, |t| t.queue(self.device_index, q))
                })
                .collect(),
            hook: thread_hook(self.io_cpus.clone()),
            thread_name: "vblk".into(),
            throttle_group: self.throttle_group.clone(),
        }
    }
}

/// Pins every thread the device model starts to `cpus` (when given), then confines it to its
/// seccomp allowlist.
fn thread_hook(cpus: Option<Vec<usize>>) -> ThreadHook {
    ThreadHook::new(move |role| {
        if let Some(cpus) = &cpus {
            pin_current_thread(cpus);
        }
        apply_thread(match role {
            ThreadRole::Queue => ThreadKind::Device,
            ThreadRole::Worker => ThreadKind::Worker,
            ThreadRole::Connection => ThreadKind::Network,
        })
    })
}

/// The VM's one shared event loop (`IoMode::Iothread`): serves every disk's queues under
/// `vm_lock`, never polling; pinned to `cpus` when given.
pub fn shared_loop(vm_lock: Arc<Mutex<()>>, cpus: Option<Vec<usize>>) -> io::Result<EventLoop> {
    EventLoop::start(LoopOptions {
        name: "iothread".into(),
        poll_us: 0,
        poll_in_flight: false,
        lock: Some(vm_lock),
        hook: thread_hook(cpus),
    })
}

/// Errors of creating a virtio-blk PCI device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device model refused the disk (it names the fix).
    #[error(transparent)]
    Model(#[from] blk_device::error::DeviceError),
    /// The PCI transport rejected the device layout.
    #[error("disk {}: virtio-pci transport: {reason}", path.display())]
    Transport {
        /// The `--disk` path.
        path: PathBuf,
        /// The transport's error.
        reason: String,
    },
    /// MSI routing or an irqfd failed.
    #[error("disk {}: {source}", path.display())]
    Interrupt {
        /// The `--disk` path.
        path: PathBuf,
        /// The routing error.
        source: InterruptError,
    },
    /// An eventfd could not be created.
    #[error("disk {}: cannot create an eventfd: {source}; raise the open-files limit (ulimit -n)", path.display())]
    Fd {
        /// The `--disk` path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The disk needs more queues or vectors than the transport has.
    #[error("disk {}: {reason}", path.display())]
    Config {
        /// The `--disk` path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `KVM_IOEVENTFD` failed.
    #[error("disk {}: cannot register the notify ioeventfd at {addr:#x}: {source}; is BAR0 inside the MMIO hole and unique?", path.display())]
    Ioeventfd {
        /// The `--disk` path.
        path: PathBuf,
        /// Guest physical address of the queue notify register.
        addr: u64,
        /// The kernel's error.
        source: io::Error,
    },
}
