//! [`NbdExport`]: an export opened over one or more connections, each with its thread.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use backend_raw::Engine;

use crate::connection::{lock, supervise, Link, Shared, Sink};
use crate::engine::NbdEngine;
use crate::handshake::{connect, resolve, ExportInfo};
use crate::stats::{Counters, NbdStats, NbdStatsHandle};
use crate::uri::NbdUri;
use crate::NbdError;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Called first thing in each connection's own thread (which reconnects and finishes sends),
/// for example to confine it with seccomp. Compared by identity.
#[derive(Clone)]
pub struct ThreadStart(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for ThreadStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadStart(..)")
    }
}

impl PartialEq for ThreadStart {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ThreadStart {}

/// How to open an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdOptions {
    /// How long a request may wait for a lost connection to come back before it fails with
    /// `EIO`; also how long a connection may go without any reply while requests wait
    /// before it counts as stalled and is dropped.
    pub reconnect_timeout: Duration,
    /// Connections wanted (one per device queue). More than one is opened only when the
    /// server sets `NBD_FLAG_CAN_MULTI_CONN`; otherwise every engine shares one, pipelined.
    pub connections: usize,
    /// Refuse writes (`EBADF`) even where the server takes them, as if it had set
    /// `NBD_FLAG_READ_ONLY`.
    pub readonly: bool,
    /// Run at the start of each connection's thread.
    pub thread_start: Option<ThreadStart>,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            reconnect_timeout: Duration::from_secs(5),
            connections: 1,
            readonly: false,
            thread_start: None,
        }
    }
}

/// One connection and its thread.
struct Connection {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// An NBD export: its geometry from the handshake and the connections serving it.
///
/// Engines ([`engine`](Self::engine)) are spread over the connections in turn. Dropping the
/// export sends `NBD_CMD_DISC` on each connection once its requests are done.
pub struct NbdExport {
    uri: NbdUri,
    info: ExportInfo,
    conns: Vec<Connection>,
    next: AtomicUsize,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for NbdExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdExport")
            .field("uri", &self.uri)
            .field("info", &self.info)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl NbdExport {
    /// Connects to `uri`, negotiates the export and starts the connection threads.
    pub fn open(uri: &NbdUri, opts: NbdOptions) -> Result<NbdExport, NbdError> {
        let handshake_timeout = opts.reconnect_timeout.max(Duration::from_secs(1));
        let addrs = resolve(uri)?;
        let (stream, served) = connect(uri, &addrs, handshake_timeout)?;
        let mut info = served;
        if opts.readonly {
            info.flags |= crate::proto::NBD_FLAG_READ_ONLY;
        }
        let counters = Arc::new(Counters::default());
        let mut export = NbdExport {
            uri: uri.clone(),
            info,
            conns: Vec::new(),
            next: AtomicUsize::new(0),
            counters,
        };
        export.start(stream, &addrs, &opts)?;
        let wanted = if info.can_multi_conn() {
            opts.connections.max(1)
        } else {
            1
        };
        for _ in 1..wanted {
            let (stream, more) = connect(uri, &addrs, handshake_timeout)?;
            if more.size != served.size || more.flags != served.flags {
                return Err(NbdError::Changed {
                    target: uri.to_string(),
                    what: "a second connection saw another export".into(),
                });
            }
            export.start(stream, &addrs, &opts)?;
        }
        Ok(export)
    }

    fn start(
        &mut self,
        stream: crate::handshake::Stream,
        addrs: &[std::net::SocketAddr],
        opts: &NbdOptions,
    ) -> Result<(), NbdError> {
        let fd = stream
            .into_nonblocking_fd()
            .map_err(|source| NbdError::Io {
                target: self.uri.to_string(),
                source,
            })?;
        let link = Link::new(
            self.uri.clone(),
            addrs.to_vec(),
            opts.reconnect_timeout,
            self.info,
            fd,
            self.counters.clone(),
        );
        let wake = EventFd::new(EFD_NONBLOCK).map_err(NbdError::EventFd)?;
        let shared = Arc::new(Shared::new(link, wake));
        let theirs = shared.clone();
        let first = opts.thread_start.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nbd-conn{}", self.conns.len()))
            .spawn(move || {
                if let Some(f) = first {
                    (f.0)();
                }
                supervise(theirs)
            })
            .map_err(NbdError::Thread)?;
        self.conns.push(Connection {
            shared,
            thread: Some(thread),
        });
        Ok(())
    }

    /// What the handshake said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The URI the export was opened from.
    pub fn uri(&self) -> &NbdUri {
        &self.uri
    }

    /// Connections open (or being re-established).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// An engine holding up to `depth` requests in flight, on the next connection in turn.
    /// With `blocking`, each request completes inside `submit` (for callers that want the
    /// `sync` engine's contract).
    pub fn engine(&self, depth: usize, blocking: bool) -> Result<Box<dyn Engine>, NbdError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let sink = Arc::new(Sink {
            done: Mutex::new(Vec::with_capacity(depth)),
            fd: EventFd::new(EFD_NONBLOCK).map_err(NbdError::EventFd)?,
        });
        let epoll = Arc::new(Epoll::new().map_err(NbdError::EventFd)?);
        epoll
            .ctl(
                ControlOperation::Add,
                sink.fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map_err(NbdError::EventFd)?;
        let shared = &self.conns[i].shared;
        lock(&shared.link)
            .watch(&epoll)
            .map_err(NbdError::EventFd)?;
        Ok(Box::new(NbdEngine::new(
            shared.clone(),
            sink,
            epoll,
            self.info,
            depth.max(1),
            blocking,
        )))
    }

    /// The counters of all connections so far.
    pub fn stats(&self) -> NbdStats {
        self.counters.snapshot()
    }

    /// A handle reading the same counters later, from anywhere.
    pub fn stats_handle(&self) -> NbdStatsHandle {
        NbdStatsHandle(self.counters.clone())
    }
}

impl Drop for NbdExport {
    fn drop(&mut self) {
        for c in &self.conns {
            c.shared.stop.store(true, Ordering::Release);
            c.shared.ring();
        }
        for c in &mut self.conns {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
    }
}
