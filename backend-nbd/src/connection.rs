//! One connection to the server: requests in flight matched to their replies by cookie, and,
//! when the connection is lost, reconnection and sending again of what was in flight, failing
//! with `EIO` what waited longer than the reconnect timeout.
//!
//! The state ([`Link`]) sits behind a lock the engines' own threads take: an engine writes its
//! requests to the socket itself and reads the replies itself when epoll reports the socket
//! readable (the socket is in every engine's epoll set), so a request costs no hand-off
//! between threads and no wake-up besides the server's reply. The connection's own thread
//! ([`supervise`]) does what no engine waits for: it finishes a send the socket could not take
//! at once, notices a server that stalls, reconnects (without holding the lock: engines keep
//! queueing meanwhile), and fails what outlived its deadline.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use backend_raw::{rdtsc, Completion, WireTimes, MAX_IOVECS};

use crate::handshake::{connect, ExportInfo};
use crate::proto::*;
use crate::stats::Counters;
use crate::uri::NbdUri;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Bytes received per `recv` call at most: many replies (or one large read) at once.
const RECV_BUFFER: usize = 256 * 1024;
/// Most iovecs one `sendmsg` carries (headers and payloads of several requests).
const SEND_IOVECS: usize = 512;
/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Reads from this size on have their payload received straight into their buffers rather
/// than copied through the receive buffer (at the cost of a system call for the header).
const DIRECT_READ: u32 = 32 * 1024;
/// epoll tag of the socket in an engine's set (its own eventfd is 0).
const SOCKET_TAG: u64 = 1;

/// Locks `m`, also after a panic elsewhere: the data (queues of plain values) stays valid.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where one engine's completions go when another thread finishes its requests: a list and
/// an eventfd (in the engine's epoll set) that wakes the engine's thread.
#[derive(Debug)]
pub(crate) struct Sink {
    pub done: Mutex<Vec<Completion>>,
    pub fd: EventFd,
}

impl Sink {
    pub(crate) fn complete(&self, c: Completion) {
        lock(&self.done).push(c);
        // A full counter (EAGAIN) still wakes the reader.
        let _ = self.fd.write(1);
    }
}

/// The buffers of a request, as the engine's caller gave them.
pub(crate) struct Buffers(pub Vec<libc::iovec>);

// SAFETY: the iovecs point at memory the engine's caller lent to this request until its
// completion is reaped (the contract of `Engine::submit`); only the thread holding the
// connection's lock touches that memory meanwhile.
unsafe impl Send for Buffers {}

/// A request as an engine hands it to the connection.
pub(crate) struct Submitted {
    pub sink: Arc<Sink>,
    pub user_data: u64,
    pub kind: u16,
    pub flags: u16,
    pub offset: u64,
    pub length: u32,
    pub buffers: Buffers,
}

/// The iovec array of one `sendmsg`, kept to reuse its allocation.
struct Scratch(Vec<libc::iovec>);

// SAFETY: the pointers are only used during the `sendmsg` that follows their filling, by
// the thread that filled them under the connection's lock; the array is cleared before use.
unsafe impl Send for Scratch {}

/// What engines and the connection's thread share.
pub(crate) struct Shared {
    pub link: Mutex<Link>,
    /// Rings the connection's thread: a send to finish, a connection to re-establish, stop.
    pub wake: EventFd,
    pub stop: AtomicBool,
}

impl Shared {
    pub(crate) fn new(link: Link, wake: EventFd) -> Shared {
        Shared {
            link: Mutex::new(link),
            wake,
            stop: AtomicBool::new(false),
        }
    }

    /// Asks the connection's thread to look at the link.
    pub(crate) fn ring(&self) {
        // A full counter (EAGAIN) still wakes the thread.
        let _ = self.wake.write(1);
    }
}

struct Pending {
    req: Submitted,
    wire: [u8; REQUEST_LEN],
    /// Fully written to the current connection: a reply may come.
    sent: bool,
    /// When it was fully written, and when its reply header arrived (host TSC).
    sent_tsc: u64,
    reply_tsc: u64,
    /// Fail with `EIO` if not answered by then (set once the request meets a lost
    /// connection; requests on a healthy connection wait as long as it makes progress).
    deadline: Option<Instant>,
}

impl Pending {
    fn wire_len(&self) -> usize {
        REQUEST_LEN
            + match self.req.kind {
                NBD_CMD_WRITE => self.req.length as usize,
                _ => 0,
            }
    }
}

enum Rx {
    Header,
    /// Copying a read's data into its buffers.
    Payload {
        cookie: u64,
        got: usize,
    },
}

struct Live {
    fd: OwnedFd,
    rx: Rx,
    /// Bytes of the head of the send queue already written.
    tx_pos: usize,
    /// When a reply byte last arrived (or a request was first awaited).
    progress: Instant,
}

/// Why a connection was dropped (for the log line).
type Lost = String;

/// What a thread that used the link must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing: the socket took every byte, or nothing was to be done.
    Done,
    /// The connection's thread must act: bytes wait for room in the socket, or the
    /// connection is down.
    Ring,
}

/// The state of one connection.
pub(crate) struct Link {
    uri: NbdUri,
    /// The server's TCP addresses, looked up when the export opened (none for Unix).
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    info: ExportInfo,
    counters: Arc<Counters>,
    table: HashMap<u64, Pending>,
    send: VecDeque<u64>,
    next_cookie: u64,
    live: Option<Live>,
    next_attempt: Instant,
    backoff: Duration,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    iov: Scratch,
    /// The iovecs of a read's payload received straight into its buffers.
    rx_iov: Scratch,
    /// Reads in the table of at least [`DIRECT_READ`] bytes.
    large_reads: usize,
    /// Whether the last loss was already logged (one line per outage, not per attempt).
    logged_outage: bool,
    /// The epoll sets of the engines on this connection; each live socket joins them all.
    watchers: Vec<Weak<Epoll>>,
}

impl Link {
    pub(crate) fn new(
        uri: NbdUri,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
        info: ExportInfo,
        fd: OwnedFd,
        counters: Arc<Counters>,
    ) -> Link {
        Link {
            uri,
            addrs,
            timeout,
            info,
            counters,
            table: HashMap::new(),
            send: VecDeque::new(),
            next_cookie: 1,
            live: Some(Live {
                fd,
                rx: Rx::Header,
                tx_pos: 0,
                progress: Instant::now(),
            }),
            next_attempt: Instant::now(),
            backoff: BACKOFF_MIN,
            buf: vec![0; RECV_BUFFER],
            start: 0,
            end: 0,
            iov: Scratch(Vec::with_capacity(SEND_IOVECS)),
            rx_iov: Scratch(Vec::with_capacity(MAX_IOVECS)),
            large_reads: 0,
            logged_outage: false,
            watchers: Vec::new(),
        }
    }

    /// Adds an engine's epoll set: the socket, now and after each reconnection, joins it.
    pub(crate) fn watch(&mut self, epoll: &Arc<Epoll>) -> io::Result<()> {
        if let Some(live) = &self.live {
            add_socket(epoll, &live.fd)?;
        }
        self.watchers.retain(|w| w.strong_count() > 0);
        self.watchers.push(Arc::downgrade(epoll));
        Ok(())
    }

    /// Queues an engine's batch and writes what the socket takes now.
    pub(crate) fn submit(&mut self, new: &mut Vec<Submitted>) -> Next {
        self.enqueue(new);
        if self.live.is_none() {
            return Next::Ring;
        }
        if let Err(why) = self.transmit() {
            self.lose(why);
            return Next::Ring;
        }
        match self.send.is_empty() {
            true => Next::Done,
            false => Next::Ring,
        }
    }

    /// Takes in the replies that arrived, without blocking. Completions for `own` go to its
    /// list without ringing its eventfd: its thread is the one receiving and reaps next.
    pub(crate) fn receive_for(&mut self, own: &Sink) -> Next {
        if self.live.is_none() {
            return Next::Done;
        }
        match self.receive(Some(own)) {
            Ok(()) => Next::Done,
            Err(why) => {
                self.lose(why);
                Next::Ring
            }
        }
    }

    fn enqueue(&mut self, new: &mut Vec<Submitted>) {
        let down_since = self.live.is_none().then(Instant::now);
        let awaiting_before = self.table.len();
        for req in new.drain(..) {
            if is_large_read(&req) {
                self.large_reads += 1;
            }
            let cookie = self.next_cookie;
            self.next_cookie = self.next_cookie.wrapping_add(1);
            let wire = RequestHeader {
                flags: req.flags,
                kind: req.kind,
                cookie,
                offset: req.offset,
                length: req.length,
            }
            .encode();
            self.table.insert(
                cookie,
                Pending {
                    req,
                    wire,
                    sent: false,
                    sent_tsc: 0,
                    reply_tsc: 0,
                    deadline: down_since.map(|t| t + self.timeout),
                },
            );
            self.send.push_back(cookie);
        }
        if awaiting_before == 0 && !self.table.is_empty() {
            if let Some(l) = &mut self.live {
                l.progress = Instant::now();
            }
        }
    }

    /// Sends what it can and takes in what arrived, without blocking; drops a stalled
    /// connection.
    fn pump(&mut self) -> Result<(), Lost> {
        self.transmit()?;
        self.receive(None)?;
        let live = self.live.as_ref().expect("pump runs connected");
        let awaiting = self.table.values().any(|p| p.sent) || !self.send.is_empty();
        if awaiting && live.progress.elapsed() > self.timeout {
            return Err(format!(
                "no reply for {} s: the server stalls",
                self.timeout.as_secs_f32()
            ));
        }
        Ok(())
    }

    fn transmit(&mut self) -> Result<(), Lost> {
        let Some(live) = &mut self.live else {
            return Ok(());
        };
        while !self.send.is_empty() {
            self.iov.0.clear();
            let mut skip = live.tx_pos;
            // Whole requests after a cut one would be sent out of order: stop there.
            'gather: for cookie in &self.send {
                if self.iov.0.len() + 2 > SEND_IOVECS {
                    break;
                }
                let p = &self.table[cookie];
                push_from(&mut self.iov.0, p.wire.as_ptr(), REQUEST_LEN, &mut skip);
                if p.req.kind == NBD_CMD_WRITE {
                    for v in p.req.buffers.0.iter() {
                        if self.iov.0.len() == SEND_IOVECS {
                            break 'gather;
                        }
                        push_from(&mut self.iov.0, v.iov_base.cast(), v.iov_len, &mut skip);
                    }
                }
            }
            // SAFETY: an all-zero msghdr is valid; the iovec array lives across the call and
            // points at request headers in `table` (not moved meanwhile) and at write
            // buffers lent to their requests.
            let sent = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = self.iov.0.as_mut_ptr();
                msg.msg_iovlen = self.iov.0.len();
                libc::sendmsg(
                    live.fd.as_raw_fd(),
                    &msg,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if sent < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(format!("send failed: {e}")),
                };
            }
            let mut n = sent as usize;
            while n > 0 {
                let head = *self
                    .send
                    .front()
                    .expect("sent bytes belong to queued requests");
                let p = self
                    .table
                    .get_mut(&head)
                    .expect("queued requests are in the table");
                let left = p.wire_len() - live.tx_pos;
                if n >= left {
                    n -= left;
                    p.sent = true;
                    p.sent_tsc = rdtsc();
                    live.tx_pos = 0;
                    self.send.pop_front();
                } else {
                    live.tx_pos += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn receive(&mut self, own: Option<&Sink>) -> Result<(), Lost> {
        loop {
            let Some(live) = &mut self.live else {
                return Ok(());
            };
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let buffered = self.end - self.start;
            let direct = matches!(live.rx, Rx::Payload { .. }) && buffered == 0;
            let n = if let (true, Rx::Payload { cookie, got }) = (direct, &live.rx) {
                // The rest of a read's payload goes straight into its buffers: no copy
                // through ours.
                let p = &self.table[cookie];
                self.rx_iov.0.clear();
                let mut skip = *got;
                for v in p.req.buffers.0.iter() {
                    push_from(&mut self.rx_iov.0, v.iov_base.cast(), v.iov_len, &mut skip);
                }
                // SAFETY: an all-zero msghdr is valid; the iovecs cover exactly the part of
                // the request's buffers (lent to it for writing until its completion is
                // reaped) not yet filled, so the kernel writes nowhere else.
                unsafe {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = self.rx_iov.0.as_mut_ptr();
                    msg.msg_iovlen = self.rx_iov.0.len();
                    libc::recvmsg(live.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT)
                }
            } else {
                // While large reads are in flight, take a reply's header alone so that its
                // payload can go straight to its buffers.
                let want = match (buffered, &live.rx, self.large_reads) {
                    (0, Rx::Header, 1..) => SIMPLE_REPLY_LEN,
                    _ => self.buf.len() - self.end,
                };
                // SAFETY: writes at most `want <= buf.len() - end` bytes into `buf[end..]`.
                unsafe {
                    libc::recv(
                        live.fd.as_raw_fd(),
                        self.buf[self.end..].as_mut_ptr().cast(),
                        want,
                        libc::MSG_DONTWAIT,
                    )
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(format!("receive failed: {e}")),
                };
            }
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            live.progress = Instant::now();
            if direct {
                self.took_payload(n as usize, own);
            } else {
                self.end += n as usize;
                self.parse(own)?;
            }
        }
    }

    /// Counts `n` bytes of the current read's payload as arrived in its buffers.
    fn took_payload(&mut self, n: usize, own: Option<&Sink>) {
        let live = self.live.as_mut().expect("receiving runs connected");
        let Rx::Payload { cookie, got } = live.rx else {
            return;
        };
        let total = self.table.get(&cookie).map_or(0, |p| p.req.length as usize);
        if got + n >= total {
            live.rx = Rx::Header;
            self.finish(cookie, Ok(total as u32), own);
        } else {
            live.rx = Rx::Payload {
                cookie,
                got: got + n,
            };
        }
    }

    /// Consumes whole replies (and partial read payloads) from the receive buffer.
    fn parse(&mut self, own: Option<&Sink>) -> Result<(), Lost> {
        loop {
            let avail = self.end - self.start;
            let live = self.live.as_mut().expect("parse runs connected");
            match live.rx {
                Rx::Header => {
                    if avail < SIMPLE_REPLY_LEN {
                        return Ok(());
                    }
                    let mut h = [0u8; SIMPLE_REPLY_LEN];
                    h.copy_from_slice(&self.buf[self.start..self.start + SIMPLE_REPLY_LEN]);
                    let violation = |why: String| {
                        Counters::add(&self.counters.protocol_violations, 1);
                        why
                    };
                    let reply = SimpleReply::decode(&h).ok_or_else(|| {
                        violation("bad reply magic (a broken or hostile server)".into())
                    })?;
                    let p = match self.table.get_mut(&reply.cookie) {
                        Some(p) if p.sent => p,
                        _ => {
                            return Err(violation(format!(
                                "reply for cookie {:#x}, which is not in flight",
                                reply.cookie
                            )))
                        }
                    };
                    self.start += SIMPLE_REPLY_LEN;
                    p.reply_tsc = rdtsc();
                    if reply.error == NBD_ESHUTDOWN {
                        return Err("the server is shutting down".into());
                    }
                    if reply.error != 0 {
                        // A failed read carries no data (proto.md: data only when error is
                        // zero); the request alone fails.
                        Counters::add(&self.counters.error_replies, 1);
                        self.finish(reply.cookie, Err(libc::EIO), own);
                    } else if p.req.kind == NBD_CMD_READ && p.req.length > 0 {
                        live.rx = Rx::Payload {
                            cookie: reply.cookie,
                            got: 0,
                        };
                    } else {
                        let len = match p.req.kind {
                            NBD_CMD_READ | NBD_CMD_WRITE => p.req.length,
                            _ => 0,
                        };
                        self.finish(reply.cookie, Ok(len), own);
                    }
                }
                Rx::Payload { cookie, got } => {
                    let p = &self.table[&cookie];
                    let total = p.req.length as usize;
                    let n = avail.min(total - got);
                    if n == 0 {
                        return Ok(());
                    }
                    // SAFETY: the request's buffers were lent to it for writing until its
                    // completion is reaped, and `scatter` writes only inside them.
                    unsafe {
                        scatter(&p.req.buffers.0, got, &self.buf[self.start..self.start + n])
                    };
                    self.start += n;
                    self.took_payload(n, own);
                }
            }
        }
    }

    fn finish(&mut self, cookie: u64, result: Result<u32, i32>, own: Option<&Sink>) {
        let Some(p) = self.table.remove(&cookie) else {
            return;
        };
        if is_large_read(&p.req) {
            self.large_reads -= 1;
        }
        let wire = (p.reply_tsc != 0).then_some(WireTimes {
            sent_tsc: p.sent_tsc,
            reply_tsc: p.reply_tsc,
        });
        let c = Completion {
            user_data: p.req.user_data,
            result,
            wire,
        };
        match own {
            Some(own) if std::ptr::eq(own, &*p.req.sink) => lock(&own.done).push(c),
            _ => p.req.sink.complete(c),
        }
    }

    /// Drops the connection; every request still in the table is sent again on the next.
    fn lose(&mut self, why: Lost) {
        self.live = None;
        self.start = 0;
        self.end = 0;
        Counters::add(&self.counters.disconnects, 1);
        if !self.logged_outage {
            eprintln!(
                "nbd {}: connection lost ({why}); reconnecting for up to {} s",
                self.uri,
                self.timeout.as_secs_f32()
            );
            self.logged_outage = true;
        }
        let deadline = Instant::now() + self.timeout;
        let mut cookies: Vec<u64> = self.table.keys().copied().collect();
        cookies.sort_unstable();
        for c in &cookies {
            let p = self.table.get_mut(c).expect("listed");
            p.sent = false;
            p.reply_tsc = 0;
            p.deadline.get_or_insert(deadline);
        }
        self.send = cookies.into();
        self.next_attempt = Instant::now();
        self.backoff = BACKOFF_MIN;
    }

    /// Installs the outcome of a connection attempt made without the lock.
    fn connected(&mut self, attempt: Result<OwnedFd, crate::NbdError>) {
        match attempt {
            Ok(fd) => {
                Counters::add(&self.counters.reconnects, 1);
                Counters::add(&self.counters.retried_requests, self.table.len() as u64);
                eprintln!(
                    "nbd {}: reconnected; sending {} requests again",
                    self.uri,
                    self.table.len()
                );
                self.logged_outage = false;
                self.watchers.retain(|w| w.strong_count() > 0);
                for epoll in self.watchers.iter().filter_map(Weak::upgrade) {
                    if let Err(e) = add_socket(&epoll, &fd) {
                        // That engine would never hear its replies: better no connection.
                        eprintln!("nbd {}: cannot watch the new connection: {e}", self.uri);
                        self.retry_later();
                        return;
                    }
                }
                // Requests that met this outage keep their deadline: one more loss and
                // they fail rather than wait forever on a server that keeps dropping.
                self.live = Some(Live {
                    fd,
                    rx: Rx::Header,
                    tx_pos: 0,
                    progress: Instant::now(),
                });
            }
            Err(e) => {
                if matches!(e, crate::NbdError::Changed { .. }) {
                    eprintln!("nbd {}: {e}", self.uri);
                }
                self.retry_later();
            }
        }
    }

    fn retry_later(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Fails with `EIO` the requests whose deadline passed while disconnected.
    fn expire(&mut self, now: Instant) {
        if self.live.is_some() {
            return;
        }
        let late: Vec<u64> = self
            .table
            .iter()
            .filter(|(_, p)| p.deadline.is_some_and(|d| d <= now))
            .map(|(c, _)| *c)
            .collect();
        if late.is_empty() {
            return;
        }
        Counters::add(&self.counters.timed_out_requests, late.len() as u64);
        self.send.retain(|c| !late.contains(c));
        for c in late {
            self.finish(c, Err(libc::EIO), None);
        }
    }

    /// How the connection's thread sleeps: the socket to watch for room (with bytes waiting to
    /// be sent), and until when (a stall check, a deadline or the next attempt).
    fn sleep_plan(&self, stopping: bool) -> (Option<libc::c_int>, Instant) {
        match &self.live {
            Some(live) => {
                let fd = (!self.send.is_empty()).then(|| live.fd.as_raw_fd());
                // Engines send without ringing this thread, so it looks in on its own: with
                // requests waiting, when they would count as stalled; else often enough
                // that a request sent meanwhile is seen stalled within half a timeout late.
                let until = match self.table.is_empty() {
                    false => live.progress + self.timeout,
                    true => Instant::now() + self.timeout / 2,
                };
                (fd, until)
            }
            None => {
                let first_deadline = self.table.values().filter_map(|p| p.deadline).min();
                let until = match first_deadline {
                    Some(d) => d.min(self.next_attempt),
                    None if stopping => Instant::now(),
                    None => self.next_attempt,
                };
                (None, until)
            }
        }
    }

    /// A polite goodbye (`NBD_CMD_DISC`) when the export is closed.
    fn disconnect(&mut self) {
        if let Some(live) = self.live.take() {
            let wire = RequestHeader {
                flags: 0,
                kind: NBD_CMD_DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            }
            .encode();
            // SAFETY: sends REQUEST_LEN bytes from `wire`; failure does not matter, the
            // socket is closed right after.
            let _ = unsafe {
                libc::send(
                    live.fd.as_raw_fd(),
                    wire.as_ptr().cast(),
                    REQUEST_LEN,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
        }
    }
}

fn is_large_read(r: &Submitted) -> bool {
    r.kind == NBD_CMD_READ && r.length >= DIRECT_READ
}

/// Adds a connection's socket to an engine's epoll set.
fn add_socket(epoll: &Epoll, fd: &OwnedFd) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd.as_raw_fd(),
        EpollEvent::new(EventSet::IN, SOCKET_TAG),
    )
}

/// Connects again and checks that the export is the one the device was built on.
fn attempt(
    uri: &NbdUri,
    addrs: &[SocketAddr],
    timeout: Duration,
    was: ExportInfo,
) -> Result<OwnedFd, crate::NbdError> {
    let (stream, info) = connect(uri, addrs, timeout.min(Duration::from_secs(2)))?;
    if info.size != was.size {
        return Err(crate::NbdError::Changed {
            target: uri.to_string(),
            what: format!("size {} became {}", was.size, info.size),
        });
    }
    if info.readonly() && !was.readonly() {
        return Err(crate::NbdError::Changed {
            target: uri.to_string(),
            what: "it became read-only".into(),
        });
    }
    stream
        .into_nonblocking_fd()
        .map_err(|source| crate::NbdError::Io {
            target: uri.to_string(),
            source,
        })
}

/// The body of a connection's thread: runs until asked to stop with nothing left in flight.
pub(crate) fn supervise(shared: Arc<Shared>) {
    loop {
        // Already clear (EAGAIN) is fine.
        let _ = shared.wake.read();
        let stopping = shared.stop.load(Ordering::Acquire);
        let mut link = lock(&shared.link);
        if stopping && link.table.is_empty() {
            link.disconnect();
            return;
        }
        if link.live.is_some() {
            if let Err(why) = link.pump() {
                link.lose(why);
            }
        }
        if link.live.is_none() {
            // Expire first: a request that outlived its deadline is not sent again, even
            // if the server is back (it may be the server that keeps failing it).
            link.expire(Instant::now());
            if Instant::now() >= link.next_attempt {
                let (uri, addrs) = (link.uri.clone(), link.addrs.clone());
                let (timeout, info) = (link.timeout, link.info);
                // Hold off the next attempt while this one runs; engines keep queueing.
                link.next_attempt = Instant::now() + timeout;
                drop(link);
                let outcome = attempt(&uri, &addrs, timeout, info);
                lock(&shared.link).connected(outcome);
                continue;
            }
        }
        let (fd, until) = link.sleep_plan(stopping);
        drop(link);
        sleep(&shared.wake, fd, until);
    }
}

/// Sleeps until the wake eventfd rings, `socket` (if any) has room, or `until`.
fn sleep(wake: &EventFd, socket: Option<libc::c_int>, until: Instant) {
    let mut fds = [
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // A negative fd is ignored by poll.
            fd: socket.unwrap_or(-1),
            events: libc::POLLOUT,
            revents: 0,
        },
    ];
    let ms = until.saturating_duration_since(Instant::now()).as_millis() + 1;
    let timeout_ms = i32::try_from(ms).unwrap_or(i32::MAX);
    // SAFETY: `fds` holds two valid pollfds. EINTR just ends the sleep early.
    let _ = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
}

/// Appends `len` bytes at `base` to `iov`, less the first `*skip` bytes (already sent).
fn push_from(iov: &mut Vec<libc::iovec>, base: *const u8, len: usize, skip: &mut usize) {
    if *skip >= len {
        *skip -= len;
        return;
    }
    iov.push(libc::iovec {
        // `*skip < len`: the pointer stays inside the buffer.
        iov_base: base.wrapping_add(*skip) as *mut libc::c_void,
        iov_len: len - *skip,
    });
    *skip = 0;
}

/// Copies `src` into the buffers `iov` starting `at` bytes into them; bytes that would
/// fall beyond the buffers' total length are dropped (callers never ask for that).
///
/// # Safety
///
/// Each iovec must describe memory valid for writes and not otherwise accessed meanwhile.
unsafe fn scatter(iov: &[libc::iovec], mut at: usize, mut src: &[u8]) {
    for v in iov {
        if src.is_empty() {
            return;
        }
        if at >= v.iov_len {
            at -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - at).min(src.len());
        // SAFETY: `at + n <= iov_len`, inside the buffer the caller vouches for; `src` is
        // our own receive buffer, which cannot overlap lent memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), v.iov_base.cast::<u8>().add(at), n) };
        src = &src[n..];
        at = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_stays_inside_the_buffers() {
        let mut a = [0u8; 4];
        let mut b = [0u8; 4];
        let mut guard = [0u8; 4];
        let iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 4,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 4,
            },
        ];
        // SAFETY: both iovecs point at live local arrays.
        unsafe { scatter(&iov, 2, &[1, 2, 3, 4, 5, 6, 7, 8]) };
        assert_eq!(a, [0, 0, 1, 2]);
        assert_eq!(b, [3, 4, 5, 6]);
        assert_eq!(guard, [0; 4]);
        guard[0] = 1;
        assert_eq!(guard[0], 1);
    }
}
