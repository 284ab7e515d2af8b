//! Errors of creating or running a block device.

use std::io;
use std::path::PathBuf;

/// A block device could not be created or could not start serving.
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
    /// An eventfd or epoll instance could not be created.
    #[error("disk {}: cannot create an eventfd/epoll: {source}; raise the open-files limit (ulimit -n)", path.display())]
    Fd {
        /// The `--disk` path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// A serving thread could not be started.
    #[error("disk {}: cannot start an I/O thread: {source}", path.display())]
    Thread {
        /// The `--disk` path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}
