//! The socket: one front end at a time, served until it disconnects or fails, then the next.
//! SIGINT and SIGTERM arrive through a signalfd, so the server notices them between messages
//! and leaves with every ring drained and the disk synced.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vhost::vhost_user::{BackendReqHandler, Error as VhostError};

use crate::backend::VhostUserBlk;

/// A front end that sends part of a message and stalls is dropped after this long.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGINT and SIGTERM, readable as a file descriptor.
#[derive(Debug)]
pub struct TerminationSignals {
    fd: OwnedFd,
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set, sigaddset adds valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

impl TerminationSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread (call it before any thread starts, so
    /// every thread inherits the mask) and opens a signalfd for them.
    pub fn block() -> io::Result<Self> {
        let set = termination_set();
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TerminationSignals { fd })
    }
}

/// What woke the server.
enum Wake {
    Ready,
    Signal,
}

/// Waits until `fd` is readable or a termination signal arrived.
fn wait(fd: RawFd, signals: &TerminationSignals) -> io::Result<Wake> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(Wake::Signal);
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Ready);
        }
    }
}

fn lock(m: &Mutex<VhostUserBlk>) -> MutexGuard<'_, VhostUserBlk> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a connection ended.
enum Ended {
    /// Serve the next front end.
    Next,
    /// A termination signal: leave.
    Terminate,
}

/// Serves front ends on `listener` until a termination signal.
pub fn serve(
    listener: &UnixListener,
    backend: &Arc<Mutex<VhostUserBlk>>,
    signals: &TerminationSignals,
) -> io::Result<()> {
    loop {
        match wait(listener.as_raw_fd(), signals)? {
            Wake::Signal => return Ok(()),
            Wake::Ready => {}
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("vhost-user-blk: accept: {e}");
                continue;
            }
        };
        let ended = serve_connection(stream, backend, signals);
        lock(backend).disconnect();
        if let Ended::Terminate = ended {
            return Ok(());
        }
    }
}

fn serve_connection(
    stream: UnixStream,
    backend: &Arc<Mutex<VhostUserBlk>>,
    signals: &TerminationSignals,
) -> Ended {
    eprintln!("vhost-user-blk: front end connected");
    if let Err(e) = stream.set_read_timeout(Some(MESSAGE_TIMEOUT)) {
        eprintln!("vhost-user-blk: {e}");
        return Ended::Next;
    }
    let fd = stream.as_raw_fd();
    let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
    loop {
        match wait(fd, signals) {
            Ok(Wake::Ready) => {}
            Ok(Wake::Signal) => return Ended::Terminate,
            Err(e) => {
                eprintln!("vhost-user-blk: poll: {e}");
                return Ended::Next;
            }
        }
        let handled = handler.handle_request();
        if let Some(why) = lock(backend).take_failure() {
            eprintln!("vhost-user-blk: disconnecting the front end: {why}");
            return Ended::Next;
        }
        match handled {
            Ok(()) => {}
            Err(VhostError::Disconnected) | Err(VhostError::PartialMessage) => {
                eprintln!("vhost-user-blk: front end disconnected");
                return Ended::Next;
            }
            Err(e) => {
                eprintln!("vhost-user-blk: disconnecting the front end: bad message: {e}");
                return Ended::Next;
            }
        }
    }
}

/// Binds `path`, replacing a stale socket left by an earlier run (never another kind of file).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}
