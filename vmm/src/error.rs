//! The VMM's error type: one variant per way building or running the VM can fail.

use std::path::PathBuf;

use thiserror::Error;

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::pci::PciError;

/// Why the VMM could not build, boot or run the VM.
#[derive(Debug, Error)]
pub enum Error {
    /// A command-line value or a file it names is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0}: load the kvm module and give this user read/write access to /dev/kvm")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The ioctl, e.g. `KVM_CREATE_VM`.
        op: &'static str,
        /// The kernel's error.
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be allocated.
    #[error("cannot allocate {bytes} bytes of guest RAM: {reason}; give a smaller --memory")]
    GuestMemory {
        /// Requested RAM size.
        bytes: u64,
        /// What vm-memory reported.
        reason: String,
    },
    /// The kernel file cannot be read.
    #[error("cannot read kernel {}: {source}", path.display())]
    KernelRead {
        /// The `--kernel` path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel image is not a loadable PVH ELF, or boot data does not fit.
    #[error("kernel {}: {source}", path.display())]
    Boot {
        /// The `--kernel` path.
        path: PathBuf,
        /// What is wrong with it.
        source: BootError,
    },
    /// A PCI device could not be plugged in.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// A disk device could not be created.
    #[error("cannot create the virtio-blk device for {}: {reason}", path.display())]
    Device {
        /// The `--disk` path.
        path: PathBuf,
        /// What the device reported.
        reason: String,
    },
    /// The platform's fixed devices overlap (a bug, not a user error).
    #[error("platform device at {0:#x} overlaps another")]
    BusOverlap(u64),
    /// A thread could not be started.
    #[error("cannot start {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the handler of signal {signal}: {source}")]
    Signal {
        /// The signal number.
        signal: i32,
        /// The OS error.
        source: vmm_sys_util::errno::Error,
    },
    /// The seccomp filters cannot be built or installed.
    #[error("{0}: run with --seccomp off on a kernel without seccomp filters")]
    Seccomp(#[source] crate::seccomp::SeccompError),
}

impl Error {
    /// The process exit status for this error: 2 for bad input (command line, files, the kernel
    /// image, an inaccessible `/dev/kvm`), 1 for everything else.
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::Config(_)
            | Error::KvmOpen(_)
            | Error::KernelRead { .. }
            | Error::Boot { .. }
            | Error::Seccomp(_) => 2,
            _ => 1,
        }
    }
}

/// A shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a mapper from a KVM ioctl error to [`Error::Kvm`].
pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}
