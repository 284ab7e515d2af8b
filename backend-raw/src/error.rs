//! The crate's error type: every failure names the file and, where there is one, the fix.

use std::io;
use std::path::PathBuf;

/// Errors from opening a disk, creating an engine or driving its queue.
///
/// Failures of individual requests are not `Error`s: they are reported per request as an
/// errno in [`Completion::result`](crate::Completion::result).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image or device could not be opened.
    #[error("cannot open {}: {source}{hint}", path.display())]
    Open {
        /// The path given to [`Disk::open`](crate::Disk::open).
        path: PathBuf,
        /// What `open(2)` reported.
        source: io::Error,
        /// Either empty or ` (what to do about it)`.
        hint: String,
    },
    /// The filesystem holding the image refuses `O_DIRECT`.
    #[error(
        "cannot open {} with O_DIRECT: its filesystem does not support direct I/O (EINVAL); \
         use direct=off",
        path.display()
    )]
    DirectUnsupported {
        /// The path given to [`Disk::open`](crate::Disk::open).
        path: PathBuf,
    },
    /// A property of the open file (size, block size, ...) could not be read.
    #[error("cannot read the {what} of {}: {source}", path.display())]
    Query {
        /// The path given to [`Disk::open`](crate::Disk::open).
        path: PathBuf,
        /// Which property ("size", "logical block size", ...).
        what: &'static str,
        /// What the system call reported.
        source: io::Error,
    },
    /// The path is a directory, socket, character device, ...
    #[error("{} is neither a regular file nor a block device", path.display())]
    UnsupportedFileType {
        /// The path given to [`Disk::open`](crate::Disk::open).
        path: PathBuf,
    },
    /// A file descriptor for a new engine could not be made.
    #[error("cannot duplicate the file descriptor of {}: {source}", path.display())]
    Dup {
        /// The path given to [`Disk::open`](crate::Disk::open).
        path: PathBuf,
        /// What `dup(2)`/`open(2)` reported.
        source: io::Error,
    },
    /// The requested queue depth is out of range.
    #[error("invalid engine depth {depth}: it must be between 1 and {max}")]
    InvalidDepth {
        /// The depth asked for.
        depth: usize,
        /// [`MAX_DEPTH`](crate::MAX_DEPTH).
        max: usize,
    },
    /// [`Engine::submit`](crate::Engine::submit) was called with `capacity()` requests in flight.
    #[error("the engine queue is full ({capacity} requests in flight): reap completions first")]
    QueueFull {
        /// [`Engine::capacity`](crate::Engine::capacity).
        capacity: usize,
    },
    /// io_uring could not be set up (old kernel, seccomp, `kernel.io_uring_disabled`, ...).
    #[error(
        "cannot set up io_uring: {source} (the kernel lacks io_uring or forbids it, see sysctl \
         kernel.io_uring_disabled; use engine=sync)"
    )]
    UringSetup {
        /// What `io_uring_setup(2)` or a registration reported.
        source: io::Error,
    },
    /// `io_uring_enter(2)` failed while submitting or waiting.
    #[error("io_uring_enter failed: {source}")]
    UringEnter {
        /// What `io_uring_enter(2)` reported.
        source: io::Error,
    },
    /// The completion eventfd could not be created.
    #[error("cannot create the completion eventfd: {source}")]
    EventFd {
        /// What `eventfd(2)` reported.
        source: io::Error,
    },
    /// An aligned bounce buffer could not be allocated.
    #[error("cannot allocate a {size}-byte bounce buffer aligned to {align} bytes")]
    BounceAlloc {
        /// Requested size in bytes.
        size: usize,
        /// Requested alignment in bytes.
        align: usize,
    },
}

impl Error {
    /// Builds [`Error::Open`] with a hint derived from the errno and the options.
    pub(crate) fn open(path: PathBuf, source: io::Error, readonly: bool) -> Error {
        let hint = match source.raw_os_error() {
            Some(libc::ENOENT) => {
                format!(" (create it with `truncate -s 256M {}`)", path.display())
            }
            Some(libc::EACCES) | Some(libc::EPERM) if readonly => {
                " (check the file's permissions)".to_string()
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                " (check the file's permissions, or open it with readonly=on)".to_string()
            }
            Some(libc::EROFS) => " (the filesystem is read-only: use readonly=on)".to_string(),
            Some(libc::EBUSY) => {
                " (the device is in use, e.g. mounted or opened exclusively)".to_string()
            }
            Some(libc::EISDIR) => " (give the path of an image file, not a directory)".to_string(),
            _ => String::new(),
        };
        Error::Open { path, source, hint }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(errno: i32, readonly: bool) -> String {
        Error::open(
            "/x/disk.img".into(),
            io::Error::from_raw_os_error(errno),
            readonly,
        )
        .to_string()
    }

    #[test]
    fn open_errors_name_the_file_and_the_fix() {
        let missing = open_error(libc::ENOENT, false);
        assert!(
            missing.starts_with("cannot open /x/disk.img: "),
            "{missing}"
        );
        assert!(
            missing.ends_with("(create it with `truncate -s 256M /x/disk.img`)"),
            "{missing}"
        );
        assert!(open_error(libc::EACCES, false).contains("readonly=on"));
        assert!(!open_error(libc::EACCES, true).contains("readonly=on"));
        assert!(open_error(libc::EROFS, false).contains("readonly=on"));
        assert!(open_error(libc::EIO, false).ends_with(")"));
        let direct = Error::DirectUnsupported {
            path: "/x/disk.img".into(),
        }
        .to_string();
        assert!(
            direct.contains("/x/disk.img") && direct.contains("direct=off"),
            "{direct}"
        );
    }
}
