//! I/O limits: token buckets per disk and throttle groups shared by several disks.
//!
//! A [`TokenBucket`] holds up to its burst in tokens and gains `rate` tokens a second; a
//! request takes as many tokens as it costs. Arithmetic is in integers: time in nanoseconds,
//! tokens scaled by 10^9 (a "nano-token" per nanosecond at a rate of one token a second), so
//! no rounding drifts the long-run rate. A request bigger than the whole bucket could never
//! fit; it is admitted when the bucket is full and leaves the bucket in debt, which later
//! requests wait out.
//!
//! Every disk with limits has a [`DiskThrottle`] (its own buckets, and the [`ThrottleGroup`]
//! it belongs to, if any). Each of its queues asks through a [`QueueThrottle`], which owns the
//! timer that wakes the queue's serving thread when tokens return. The time source is a
//! [`Clock`], so the buckets can be tested without sleeping.
//!
//! What a request costs ([`Charge::of`]): a read or write one op and its data bytes; FLUSH one
//! op and no bytes; DISCARD and WRITE_ZEROES one op and no bytes (they move no data through
//! the guest's buffers); GET_ID is answered without I/O and costs nothing.

mod spec;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::event_loop::lock;

use blk_proto::RequestType;

pub use spec::{parse_size, GroupSpec, GroupSpecError, Limits, LimitsError};
pub use timer::Timer;

/// Nano-tokens per token.
const SCALE: i128 = 1_000_000_000;
/// The burst a bucket holds when none is given: this many milliseconds of its rate.
pub const DEFAULT_BURST_MS: u64 = 20;

/// A monotonic time source in nanoseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds since an arbitrary fixed point.
    fn now_ns(&self) -> u64;
}

/// `CLOCK_MONOTONIC`, the clock the timers run on.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ns`.
    pub fn at(ns: u64) -> Self {
        ManualClock(AtomicU64::new(ns))
    }

    /// Moves the clock `ns` forward.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst` tokens; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    capacity: i128,
    level: i128,
    last_ns: u64,
}

/// How much refill, in time at the bucket's rate, a refused request waits for beyond its own
/// cost (bounded by the bucket's capacity): the batch one timer wake-up admits.
const WAKE_BATCH_NS: i128 = 5_000_000;

/// The burst of a bucket of `rate` with no burst given: [`DEFAULT_BURST_MS`] of its rate, at
/// least one token.
pub fn default_burst(rate: u64) -> u64 {
    (rate.saturating_mul(DEFAULT_BURST_MS) / 1000).max(1)
}

impl TokenBucket {
    /// A full bucket of `rate` tokens a second holding up to `burst` (at least 1), at time
    /// `now_ns`.
    pub fn new(rate: u64, burst: u64, now_ns: u64) -> Self {
        let capacity = i128::from(burst.max(1)) * SCALE;
        TokenBucket {
            rate: rate.max(1),
            capacity,
            level: capacity,
            last_ns: now_ns,
        }
    }

    /// Tokens gained since the last look, up to the capacity.
    fn refill(&mut self, now_ns: u64) {
        if now_ns > self.last_ns {
            let gained = i128::from(now_ns - self.last_ns) * i128::from(self.rate);
            self.level = (self.level + gained).min(self.capacity);
            self.last_ns = now_ns;
        }
    }

    /// Nanoseconds until a request of `cost` tokens may be taken (0: now). A cost above the
    /// capacity waits for a full bucket.
    pub fn wait_ns(&mut self, now_ns: u64, cost: u64) -> u64 {
        self.refill(now_ns);
        let need = (i128::from(cost) * SCALE).min(self.capacity);
        if self.level >= need {
            return 0;
        }
        let missing = need - self.level;
        let rate = i128::from(self.rate);
        // Ask again once a few more tokens than this request needs have come back (never
        // more than the bucket holds, so none is lost and the long-run rate is kept): one
        // timer wake-up then admits a batch, where waking per token would cost a host thread
        // wake-up per request, which the limited disk's neighbours pay for in CPU.
        let batch = (self.capacity - need).min(rate * WAKE_BATCH_NS);
        u64::try_from((missing + batch + rate - 1) / rate).unwrap_or(u64::MAX)
    }

    /// Takes `cost` tokens (after [`TokenBucket::wait_ns`] said 0); the level may go negative.
    pub fn take(&mut self, cost: u64) {
        self.level -= i128::from(cost) * SCALE;
    }

    /// Tokens now in the bucket, rounded down (negative: in debt).
    pub fn tokens(&self) -> i128 {
        self.level.div_euclid(SCALE)
    }
}

/// Which way a request moves data, for the per-direction buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Reads from the disk.
    Read,
    /// Writes, discards and write-zeroes.
    Write,
    /// Flush: counted in the total only.
    Other,
}

/// What one request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// Its direction.
    pub dir: Direction,
    /// Data bytes charged to the bandwidth buckets.
    pub bytes: u64,
}

impl Charge {
    /// The cost of a request of `kind` moving `bytes` of data (see the module docs); `None`
    /// for requests that are not charged at all.
    pub fn of(kind: RequestType, bytes: u64) -> Option<Charge> {
        let (dir, bytes) = match kind {
            RequestType::In => (Direction::Read, bytes),
            RequestType::Out => (Direction::Write, bytes),
            RequestType::Discard | RequestType::WriteZeroes => (Direction::Write, 0),
            RequestType::Flush => (Direction::Other, 0),
            RequestType::GetId | RequestType::Unsupported(_) => return None,
        };
        Some(Charge { dir, bytes })
    }
}

/// The buckets of one set of [`Limits`]: ops and bytes, total and per direction.
#[derive(Debug, Clone)]
pub struct BucketSet {
    ops: [Option<TokenBucket>; 3],
    bytes: [Option<TokenBucket>; 3],
}

impl BucketSet {
    /// Full buckets for `limits` at time `now_ns`.
    pub fn new(limits: &Limits, now_ns: u64) -> Self {
        let bucket = |rate: Option<u64>, burst: Option<u64>| {
            rate.map(|r| TokenBucket::new(r, burst.unwrap_or_else(|| default_burst(r)), now_ns))
        };
        BucketSet {
            ops: [
                bucket(limits.iops, limits.iops_burst),
                bucket(limits.iops_rd, limits.iops_burst),
                bucket(limits.iops_wr, limits.iops_burst),
            ],
            bytes: [
                bucket(limits.bw, limits.bw_burst),
                bucket(limits.bw_rd, limits.bw_burst),
                bucket(limits.bw_wr, limits.bw_burst),
            ],
        }
    }

    /// The buckets `charge` draws from, with its cost in each.
    fn each(&mut self, charge: Charge, mut f: impl FnMut(&mut TokenBucket, u64)) {
        let dir = match charge.dir {
            Direction::Read => Some(1),
            Direction::Write => Some(2),
            Direction::Other => None,
        };
        let (ops, bytes) = (&mut self.ops, &mut self.bytes);
        let mut visit = |set: &mut [Option<TokenBucket>; 3], cost: u64| {
            for (i, b) in set.iter_mut().enumerate() {
                if let Some(b) = b.as_mut().filter(|_| i == 0 || Some(i) == dir) {
                    f(b, cost);
                }
            }
        };
        visit(ops, 1);
        if charge.bytes > 0 {
            visit(bytes, charge.bytes);
        }
    }

    /// Nanoseconds until `charge` fits every bucket it draws from (0: now).
    pub fn wait_ns(&mut self, now_ns: u64, charge: Charge) -> u64 {
        let mut wait = 0;
        self.each(charge, |b, cost| wait = wait.max(b.wait_ns(now_ns, cost)));
        wait
    }

    /// Whether every bucket `charge` draws from stays at least half full after it.
    pub fn roomy(&mut self, now_ns: u64, charge: Charge) -> bool {
        let mut roomy = true;
        self.each(charge, |b, cost| {
            b.refill(now_ns);
            roomy &= b.level - i128::from(cost) * SCALE >= b.capacity / 2;
        });
        roomy
    }

    /// Takes `charge` from every bucket it draws from.
    pub fn take(&mut self, charge: Charge) {
        self.each(charge, |b, cost| b.take(cost));
    }
}

/// The answer to a request for admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Run it now; its cost is taken.
    Now,
    /// Ask again after this many nanoseconds.
    After(u64),
    /// Another member of the group has the turn: the group wakes this one when its turn
    /// comes.
    Turn,
}

/// A member's handle in a [`ThrottleGroup`].
pub type MemberId = usize;

/// Limits shared by several disks (`--throttle-group`). While the limits bite, members with
/// waiting work are served in turn (round robin): the one whose turn it is takes the next
/// tokens; the others wait until the group wakes them. A member that was just served keeps
/// its place until it settles, so the tokens that return while it is busy with its request
/// are not taken by the others alone. Until a request is refused for lack of tokens, and
/// again once the buckets are half full, nobody waits for a turn.
#[derive(Debug)]
pub struct ThrottleGroup {
    name: String,
    state: Mutex<GroupState>,
}

#[derive(Debug)]
struct GroupState {
    buckets: BucketSet,
    /// A request was refused for lack of tokens, and the buckets have not been half full
    /// since: the limits bite, and members take turns.
    starved: bool,
    /// Members refused for lack of tokens or turn, in turn order.
    waiting: VecDeque<MemberId>,
    /// Each member (None: slot free).
    wakers: Vec<Option<Member>>,
}

impl ThrottleGroup {
    /// A group called `name` with `limits`, its buckets full at `now_ns`.
    pub fn new(name: &str, limits: &Limits, now_ns: u64) -> Self {
        ThrottleGroup {
            name: name.to_string(),
            state: Mutex::new(GroupState {
                buckets: BucketSet::new(limits, now_ns),
                starved: false,
                waiting: VecDeque::new(),
                wakers: Vec::new(),
            }),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a member (a disk); its queues add their timers with [`ThrottleGroup::add_waker`].
    pub fn join(&self) -> MemberId {
        let mut s = lock(&self.state);
        match s.wakers.iter().position(Option::is_none) {
            Some(i) => {
                if let Some(slot) = s.wakers.get_mut(i) {
                    *slot = Some(Member::default());
                }
                i
            }
            None => {
                s.wakers.push(Some(Member::default()));
                s.wakers.len() - 1
            }
        }
    }

    /// Wakes `timer` (a queue of `member`) when the member's turn comes.
    pub fn add_waker(&self, member: MemberId, timer: Arc<Timer>) {
        if let Some(m) = lock(&self.state).member(member) {
            m.timers.push(timer);
        }
    }

    /// Forgets a queue of `member`: its timer added with [`ThrottleGroup::add_waker`], and
    /// its place in the turn order if it was `queued`.
    pub fn remove_waker(&self, member: MemberId, timer: &Arc<Timer>, queued: bool) {
        let mut s = lock(&self.state);
        if let Some(m) = s.member(member) {
            m.timers.retain(|t| !Arc::ptr_eq(t, timer));
        }
        if queued {
            s.forget(member);
        }
    }

    /// A queue of `member` that was waiting for the group no longer does (its request was
    /// dropped at a reset).
    fn forget(&self, member: MemberId) {
        lock(&self.state).forget(member);
    }

    /// Removes a member; the next one gets the turn if it had it.
    pub fn leave(&self, member: MemberId) {
        let mut s = lock(&self.state);
        let was_front = s.waiting.front() == Some(&member);
        s.waiting.retain(|&m| m != member);
        if let Some(slot) = s.wakers.get_mut(member) {
            *slot = None;
        }
        if was_front {
            s.wake_front();
        }
    }

    /// Asks for `charge` on behalf of a queue of `member` at `now_ns`; `own_wait` is what
    /// the member's own buckets ask (0: they admit it), `take_own` takes from them when the
    /// group admits. `queued` says whether this queue already counts as waiting for the group.
    fn admit(
        &self,
        member: MemberId,
        now_ns: u64,
        charge: Charge,
        own_wait: u64,
        queued: &mut bool,
        take_own: impl FnOnce(),
    ) -> Admission {
        let mut s = lock(&self.state);
        let front = s.waiting.front().copied();
        if own_wait > 0 {
            // Held back by its own limits: it must not hold the group's turn meanwhile.
            s.set_queued(member, queued, false);
            s.pass_turn(member, front);
            return Admission::After(own_wait);
        }
        let roomy = s.buckets.roomy(now_ns, charge);
        // Turns are kept only while the limits bite: under them, waiting for another
        // member's turn would cost a thread wake-up and save nobody a token.
        if front.is_some_and(|f| f != member) && s.starved && !roomy {
            s.set_queued(member, queued, true);
            return Admission::Turn;
        }
        let wait = s.buckets.wait_ns(now_ns, charge);
        if wait > 0 {
            s.starved = true;
            s.set_queued(member, queued, true);
            return Admission::After(wait);
        }
        if roomy {
            s.starved = false;
        }
        s.buckets.take(charge);
        take_own();
        // The queue stays in the turn order, at the back, until it settles
        // ([`QueueThrottle::settle`]): between this request and its next one (submitting
        // this one, popping the next) a member that waits for nobody would otherwise take
        // every token that came back.
        s.set_queued(member, queued, true);
        s.pass_turn(member, front);
        Admission::Now
    }
}

/// One member of a group: the timers of its queues, and how many of them wait for the group.
#[derive(Debug, Default)]
struct Member {
    timers: Vec<Arc<Timer>>,
    queued: usize,
}

impl GroupState {
    fn forget(&mut self, m: MemberId) {
        let front = self.waiting.front().copied();
        let mut queued = true;
        self.set_queued(m, &mut queued, false);
        if self.member(m).is_some_and(|x| x.queued == 0) {
            self.pass_turn(m, front);
        }
    }

    fn member(&mut self, m: MemberId) -> Option<&mut Member> {
        self.wakers.get_mut(m).and_then(Option::as_mut)
    }

    /// Counts a queue of `m` as waiting for the group or not; a member with a waiting queue
    /// is in the turn order.
    fn set_queued(&mut self, m: MemberId, queued: &mut bool, now: bool) {
        if *queued != now {
            if let Some(member) = self.member(m) {
                member.queued = if now {
                    member.queued + 1
                } else {
                    member.queued.saturating_sub(1)
                };
            }
            *queued = now;
        }
        if now && !self.waiting.contains(&m) {
            self.waiting.push_back(m);
        }
    }

    /// `m` had its turn (or gives it up): to the back of the order if other queues of it still
    /// wait, out of it otherwise; the next member is woken if the turn moved.
    fn pass_turn(&mut self, m: MemberId, front: Option<MemberId>) {
        if front == Some(m) {
            self.waiting.pop_front();
        } else {
            self.waiting.retain(|&w| w != m);
        }
        if self.member(m).is_some_and(|x| x.queued > 0) {
            self.waiting.push_back(m);
        }
        // `m`'s queue is the caller: awake already.
        let now = self.waiting.front().copied();
        if now != front && now != Some(m) {
            self.wake_front();
        }
    }

    /// Wakes every queue of the member whose turn it now is.
    fn wake_front(&self) {
        let front = self
            .waiting
            .front()
            .and_then(|&m| self.wakers.get(m))
            .and_then(Option::as_ref);
        for t in front.into_iter().flat_map(|m| &m.timers) {
            t.arm_ns(1);
        }
    }
}

/// One disk's limits: its own buckets (shared by its queues) and its group, in which the
/// disk is one member: its queues share its turns.
#[derive(Debug)]
pub struct DiskThrottle {
    own: Option<Mutex<BucketSet>>,
    group: Option<(Arc<ThrottleGroup>, MemberId)>,
    clock: Arc<dyn Clock>,
}

impl DiskThrottle {
    /// The throttle of a disk with `limits` (if any) in `group` (if any), reading `clock`;
    /// `None` when the disk has neither (an unlimited disk).
    pub fn new(
        limits: Option<&Limits>,
        group: Option<Arc<ThrottleGroup>>,
        clock: Arc<dyn Clock>,
    ) -> Option<Arc<Self>> {
        let limits = limits.filter(|l| !l.is_unlimited());
        if limits.is_none() && group.is_none() {
            return None;
        }
        let now = clock.now_ns();
        Some(Arc::new(DiskThrottle {
            own: limits.map(|l| Mutex::new(BucketSet::new(l, now))),
            group: group.map(|g| {
                let member = g.join();
                (g, member)
            }),
            clock,
        }))
    }

    /// The time source.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The per-queue handle of this throttle, with a timer of its own.
    pub fn queue(self: &Arc<Self>) -> std::io::Result<QueueThrottle> {
        let timer = Arc::new(Timer::new()?);
        if let Some((g, member)) = &self.group {
            g.add_waker(*member, timer.clone());
        }
        Ok(QueueThrottle {
            disk: self.clone(),
            timer,
            queued: false,
            parked_since: None,
        })
    }

    fn admit(&self, charge: Charge, queued: &mut bool) -> Admission {
        let now = self.clock.now_ns();
        let mut own = self.own.as_ref().map(lock);
        let own_wait = own.as_mut().map_or(0, |b| b.wait_ns(now, charge));
        match &self.group {
            Some((g, m)) => g.admit(*m, now, charge, own_wait, queued, || {
                if let Some(b) = own.as_mut() {
                    b.take(charge);
                }
            }),
            _ if own_wait > 0 => Admission::After(own_wait),
            _ => {
                if let Some(b) = own.as_mut() {
                    b.take(charge);
                }
                Admission::Now
            }
        }
    }
}

/// One queue's side of a [`DiskThrottle`]: asks for admission and arms its timer when
/// refused.
#[derive(Debug)]
pub struct QueueThrottle {
    disk: Arc<DiskThrottle>,
    timer: Arc<Timer>,
    /// Whether this queue counts in its group's turn order: it waits with a parked request,
    /// or it was admitted and has not settled since.
    queued: bool,
    /// When the request now parked was first refused.
    parked_since: Option<u64>,
}

impl QueueThrottle {
    /// Asks to run a request costing `charge`. When refused, the timer is armed for when to
    /// ask again (or the group arms it when the queue's turn comes) and `false` is returned.
    pub fn admit(&mut self, charge: Charge) -> bool {
        match self.disk.admit(charge, &mut self.queued) {
            Admission::Now => true,
            Admission::After(ns) => {
                self.timer.arm_ns(ns);
                self.note_parked();
                false
            }
            Admission::Turn => {
                self.note_parked();
                false
            }
        }
    }

    fn note_parked(&mut self) {
        if self.parked_since.is_none() {
            self.parked_since = Some(self.disk.clock.now_ns());
        }
    }

    /// The parked request was admitted or dropped: how long it waited (ns), if it did.
    pub fn unpark(&mut self) -> Option<u64> {
        let since = self.parked_since.take()?;
        Some(self.disk.clock.now_ns().saturating_sub(since))
    }

    /// The timer's fd, readable when the queue should ask again.
    pub fn timer_fd(&self) -> i32 {
        self.timer.fd()
    }

    /// Clears the timer's readiness.
    pub fn drain_timer(&self) {
        self.timer.drain();
    }

    /// The queue has stopped asking with nothing parked (its ring is empty, or it waits for
    /// room): it leaves its group's turn order, where its last admission put it, and hands
    /// the turn on if it had it.
    pub fn settle(&mut self) {
        if let Some((g, m)) = &self.disk.group {
            if std::mem::take(&mut self.queued) {
                g.forget(*m);
            }
        }
    }

    /// The parked request was dropped unstarted (a reset, a broken ring): nothing of this
    /// queue waits any more.
    pub fn forget_parked(&mut self) {
        self.parked_since = None;
        self.settle();
    }
}

impl Drop for QueueThrottle {
    fn drop(&mut self) {
        if let Some((g, m)) = &self.disk.group {
            g.remove_waker(*m, &self.timer, self.queued);
        }
    }
}

impl Drop for DiskThrottle {
    fn drop(&mut self) {
        if let Some((g, m)) = &self.group {
            g.leave(*m);
        }
    }
}
