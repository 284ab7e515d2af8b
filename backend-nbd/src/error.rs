//! The crate's error type: connecting, negotiating, and the export changing under us.

use std::io;

/// Why an export could not be opened or a connection (re)established.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket could not be connected.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// The server's address, as given.
        target: String,
        /// What `connect(2)` reported.
        source: io::Error,
    },
    /// Reading or writing the socket failed during the handshake.
    #[error("handshake with {target} failed: {source}")]
    Io {
        /// The server's address.
        target: String,
        /// The socket error (a timeout shows as `WouldBlock`/`TimedOut`).
        source: io::Error,
    },
    /// The server broke the protocol during the handshake.
    #[error("handshake with {target} failed: {reason}")]
    Protocol {
        /// The server's address.
        target: String,
        /// What was wrong.
        reason: String,
    },
    /// The server refused `NBD_OPT_GO` for the export.
    #[error("{target} refused export '{export}': {message} (reply type {reply:#x})")]
    Refused {
        /// The server's address.
        target: String,
        /// The export asked for.
        export: String,
        /// The `NBD_REP_ERR_*` value.
        reply: u32,
        /// The server's message, if any.
        message: String,
    },
    /// A reconnection found an export of another size or writability: the disk the guest
    /// knows is gone.
    #[error("{target}: the export changed on reconnection ({what})")]
    Changed {
        /// The server's address.
        target: String,
        /// What changed.
        what: String,
    },
    /// The I/O thread of a connection could not be started.
    #[error("cannot start the NBD connection thread: {0}")]
    Thread(io::Error),
    /// An eventfd or an epoll set could not be created.
    #[error("cannot create an eventfd or epoll set: {0}")]
    EventFd(io::Error),
}
