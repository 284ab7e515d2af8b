//! The virtio-blk PCI device (VIRTIO 1.x, 5.2 "Block Device" over 4.1 "Virtio Over PCI Bus").
//!
//! Reading order, following one request:
//! - [`device`]: the PCI function (config space, BAR0, feature decisions, activation); a
//!   guest kick lands on an ioeventfd registered there.
//! - [`handler`]: the dataplane thread woken by that ioeventfd; it pops the chain
//!   ([`iothread`]: the one loop shared by all disks in `IoMode::Iothread`; [`pool`]: the
//!   worker threads that run the I/O in `IoMode::Workers`).
//! - [`request`]: the chain parsed by `blk-proto` becomes an engine operation over host
//!   iovecs ([`guest_iovec`]); its completion writes the status byte and the used element.
//! - back in [`handler`]: one notification decision per batch, then an irqfd write
//!   ([`crate::interrupts::IrqLine`]).

pub mod device;
pub mod failure_log;
pub mod guest_iovec;
pub mod handler;
pub mod iothread;
pub mod pool;
pub mod request;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use device::VirtioBlkPci;

use crate::config::IoMode;
use crate::interrupts::{InterruptError, MsiRouter};
use crate::metrics::DeviceMetrics;
use crate::trace::Tracer;
use iothread::IoThread;

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
    /// Who answers the queues: the vcpu thread or dataplane threads.
    pub io_mode: IoMode,
    /// Busy-poll budget of a dataplane thread before it sleeps, in microseconds (0: never poll).
    pub poll_us: u32,
    /// Worker threads of the device's pool (`IoMode::Workers`).
    pub workers: usize,
    /// The event loop shared by every disk (`IoMode::Iothread`; `None` otherwise).
    pub iothread: Option<Arc<IoThread>>,
    /// The VM's tracer, when `--trace` is given.
    pub tracer: Option<Arc<Tracer>>,
    /// The device's index for the tracer (its `--disk` position).
    pub device_index: usize,
    /// The device's counters.
    pub metrics: Arc<DeviceMetrics>,
}

impl DeviceContext {
    /// A context with the defaults for everything but the VM and the mode: the default
    /// polling window and pool size, no shared I/O thread (`IoMode::Iothread` then runs one
    /// thread for the device), no tracing, fresh metrics.
    pub fn new(
        vm: Arc<kvm_ioctls::VmFd>,
        mem: vm_memory::GuestMemoryMmap,
        msi: Arc<MsiRouter>,
        bar0_addr: u64,
        io_mode: IoMode,
    ) -> Self {
        DeviceContext {
            vm,
            mem,
            msi,
            bar0_addr,
            io_mode,
            poll_us: handler::DEFAULT_POLL_US,
            workers: pool::DEFAULT_WORKERS,
            iothread: None,
            tracer: None,
            device_index: 0,
            metrics: Arc::new(DeviceMetrics::new("virtio-blk")),
        }
    }
}

/// Errors of creating or running a virtio-blk device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The disk image could not be opened or an engine could not be built on it.
    #[error("disk {}: {source}", path.display())]
    Disk {
        /// The `--disk` path.
        path: PathBuf,
        /// What backend-raw reported (it names the fix).
        source: backend_raw::Error,
    },
    /// The disk's configuration is unusable.
    #[error("disk {}: {reason}", path.display())]
    Config {
        /// The `--disk` path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
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
    /// An eventfd or epoll instance could not be created.
    #[error("disk {}: cannot create an eventfd/epoll: {source}; raise the open-files limit (ulimit -n)", path.display())]
    Fd {
        /// The `--disk` path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
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
    /// A dataplane thread could not be started.
    #[error("disk {}: cannot start a dataplane thread: {source}", path.display())]
    Thread {
        /// The `--disk` path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}
