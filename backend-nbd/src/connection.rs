//! One connection to the server and the thread that drives it: sends requests, matches
//! replies to them by cookie, and when the connection is lost, reconnects and sends again
//! what was in flight, failing with `EIO` what waited longer than the reconnect timeout.
//!
//! Engines hand requests over through [`Shared::queue`] and ring [`Shared::wake`]; the
//! thread answers through each engine's [`Sink`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backend_raw::Completion;

use crate::handshake::{connect, ExportInfo};
use crate::proto::*;
use crate::stats::Counters;
use crate::uri::NbdUri;
use vmm_sys_util::eventfd::EventFd;

/// Bytes received per `recv` call at most: many replies (or one large read) at once.
const RECV_BUFFER: usize = 256 * 1024;
/// Most iovecs one `sendmsg` carries (headers and payloads of several requests).
const SEND_IOVECS: usize = 512;
/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Locks `m`, also after a panic elsewhere: the data (queues of plain values) stays valid.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where one engine's completions go: a list, a condition variable for `wait` (futex
/// only, which every sandboxed thread may use) and an eventfd for epoll.
#[derive(Debug)]
pub(crate) struct Sink {
    pub done: Mutex<Vec<Completion>>,
    pub ready: Condvar,
    pub fd: EventFd,
}

impl Sink {
    pub(crate) fn complete(&self, c: Completion) {
        lock(&self.done).push(c);
        self.ready.notify_one();
        // A full counter (EAGAIN) still wakes the reader.
        let _ = self.fd.write(1);
    }
}

/// The buffers of a request, as the engine's caller gave them.
pub(crate) struct Buffers(pub Vec<libc::iovec>);

// SAFETY: the iovecs point at memory the engine's caller lent to this request until its
// completion is reaped (the contract of `Engine::submit`); only the one thread that owns
// the request touches that memory meanwhile.
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

// SAFETY: the pointers are only used during the `sendmsg` that follows their filling, on
// the thread that filled them; the array is cleared before each use.
unsafe impl Send for Scratch {}

/// What engines and the connection thread share.
pub(crate) struct Shared {
    pub queue: Mutex<Vec<Submitted>>,
    pub wake: EventFd,
    pub stop: AtomicBool,
}

struct Pending {
    req: Submitted,
    wire: [u8; REQUEST_LEN],
    /// Fully written to the current connection: a reply may come.
    sent: bool,
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
    /// Copying a read's data into its buffers; `skip` discards it instead.
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

/// The state of one connection, owned by its thread.
pub(crate) struct Worker {
    pub uri: NbdUri,
    pub timeout: Duration,
    pub info: ExportInfo,
    pub shared: Arc<Shared>,
    pub counters: Arc<Counters>,
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
    /// Whether the last loss was already logged (one line per outage, not per attempt).
    logged_outage: bool,
}

impl Worker {
    pub(crate) fn new(
        uri: NbdUri,
        timeout: Duration,
        info: ExportInfo,
        fd: OwnedFd,
        shared: Arc<Shared>,
        counters: Arc<Counters>,
    ) -> Worker {
        Worker {
            uri,
            timeout,
            info,
            shared,
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
            logged_outage: false,
        }
    }

    /// The thread's body: runs until asked to stop with nothing left in flight.
    pub(crate) fn run(mut self) {
        loop {
            // Already clear (EAGAIN) is fine.
            let _ = self.shared.wake.read();
            self.take_new();
            if self.shared.stop.load(Ordering::Acquire) && self.table.is_empty() {
                self.disconnect();
                return;
            }
            if self.live.is_some() {
                if let Err(why) = self.pump() {
                    self.lose(why);
                }
            } else {
                // Expire first: a request that outlived its deadline is not sent again, even
                // if the server is back (it may be the server that keeps failing it).
                self.expire(Instant::now());
                if Instant::now() >= self.next_attempt {
                    self.reconnect();
                }
            }
            self.sleep();
        }
    }

    fn take_new(&mut self) {
        let new = std::mem::take(&mut *lock(&self.shared.queue));
        let down_since = self.live.is_none().then(Instant::now);
        let awaiting_before = self.table.len();
        for req in new {
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

    /// Sends what it can and takes in what arrived, without blocking.
    fn pump(&mut self) -> Result<(), Lost> {
        self.transmit()?;
        self.receive()?;
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

    fn receive(&mut self) -> Result<(), Lost> {
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
            // SAFETY: writes at most `buf.len() - end` bytes into `buf[end..]`.
            let n = unsafe {
                libc::recv(
                    live.fd.as_raw_fd(),
                    self.buf[self.end..].as_mut_ptr().cast(),
                    self.buf.len() - self.end,
                    libc::MSG_DONTWAIT,
                )
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
            self.end += n as usize;
            self.parse()?;
        }
    }

    /// Consumes whole replies (and partial read payloads) from the receive buffer.
    fn parse(&mut self) -> Result<(), Lost> {
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
                    let p = match self.table.get(&reply.cookie) {
                        Some(p) if p.sent => p,
                        _ => {
                            return Err(violation(format!(
                                "reply for cookie {:#x}, which is not in flight",
                                reply.cookie
                            )))
                        }
                    };
                    self.start += SIMPLE_REPLY_LEN;
                    if reply.error == NBD_ESHUTDOWN {
                        return Err("the server is shutting down".into());
                    }
                    if reply.error != 0 {
                        // A failed read carries no data (proto.md: data only when error is
                        // zero); the request alone fails.
                        Counters::add(&self.counters.error_replies, 1);
                        self.finish(reply.cookie, Err(libc::EIO));
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
                        self.finish(reply.cookie, Ok(len));
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
                    if got + n == total {
                        live.rx = Rx::Header;
                        self.finish(cookie, Ok(total as u32));
                    } else {
                        live.rx = Rx::Payload {
                            cookie,
                            got: got + n,
                        };
                    }
                }
            }
        }
    }

    fn finish(&mut self, cookie: u64, result: Result<u32, i32>) {
        if let Some(p) = self.table.remove(&cookie) {
            p.req.sink.complete(Completion {
                user_data: p.req.user_data,
                result,
            });
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
            p.deadline.get_or_insert(deadline);
        }
        self.send = cookies.into();
        self.next_attempt = Instant::now();
        self.backoff = BACKOFF_MIN;
    }

    fn reconnect(&mut self) {
        let attempt = connect(&self.uri, self.timeout.min(Duration::from_secs(2))).and_then(
            |(stream, info)| {
                if info.size != self.info.size {
                    return Err(crate::NbdError::Changed {
                        target: self.uri.to_string(),
                        what: format!("size {} became {}", self.info.size, info.size),
                    });
                }
                if info.readonly() && !self.info.readonly() {
                    return Err(crate::NbdError::Changed {
                        target: self.uri.to_string(),
                        what: "it became read-only".into(),
                    });
                }
                stream
                    .into_nonblocking_fd()
                    .map_err(|source| crate::NbdError::Io {
                        target: self.uri.to_string(),
                        source,
                    })
            },
        );
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
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
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
            self.finish(c, Err(libc::EIO));
        }
    }

    fn sleep(&mut self) {
        let now = Instant::now();
        let wake = libc::pollfd {
            fd: self.shared.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [wake, wake];
        let (n, until) = match &self.live {
            Some(live) => {
                let mut events = libc::POLLIN;
                if !self.send.is_empty() {
                    events |= libc::POLLOUT;
                }
                fds[1] = libc::pollfd {
                    fd: live.fd.as_raw_fd(),
                    events,
                    revents: 0,
                };
                let until = (!self.table.is_empty()).then(|| live.progress + self.timeout);
                (2usize, until)
            }
            None => {
                let first_deadline = self.table.values().filter_map(|p| p.deadline).min();
                let until = match first_deadline {
                    Some(d) => Some(d.min(self.next_attempt)),
                    None if self.shared.stop.load(Ordering::Acquire) => Some(now),
                    None => Some(self.next_attempt),
                };
                (1usize, until)
            }
        };
        let timeout_ms = match until {
            None => -1,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_millis() + 1;
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: `fds` holds `n` valid pollfds. EINTR just ends the sleep early.
        let _ = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
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
