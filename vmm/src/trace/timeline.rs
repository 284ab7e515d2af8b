//! Joining the guest's log with the device's stamps into per-request timelines.
//!
//! A request's timeline is a list of [`Point`]s in host TSC. The guest's entries are mapped
//! from guest TSC; the device's stamps for one chain are grouped from its `Popped` stamp on.
//! A guest request is matched to the device's pops of the same (queue, head) in order, each
//! match checked against time: the pop must fall between the guest's submission and its
//! completion (within the mapping's accuracy). The n-th submission of a head therefore meets
//! the n-th pop of that head, and a lost stamp or entry costs one request, not the rest.
//! Batch stamps (kicks, interrupts: [`NO_HEAD`](super::NO_HEAD)) are attributed by time: the last kick before
//! the pop and after the guest's kick, the first interrupt after the used element.

use super::guest_log::GuestEntry;
use super::tsc::{TscMapping, TscMethod};
use super::Stage;
use super::Stamp;

/// One queue's stamps, as taken from its log.
#[derive(Debug, Clone, Default)]
pub struct DeviceLog {
    /// Device index.
    pub device: usize,
    /// Queue index.
    pub queue: u16,
    /// Stamps in reservation order.
    pub stamps: Vec<Stamp>,
    /// Stamps lost to a full log.
    pub dropped: u64,
}

/// A point of a request's timeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    /// Guest: before writing the avail ring.
    GuestSubmit,
    /// Guest: the kick.
    GuestKick,
    /// Device: [`Stage::KickSeen`].
    KickSeen,
    /// Device: [`Stage::Popped`].
    Popped,
    /// Device: [`Stage::Parsed`].
    Parsed,
    /// Device: [`Stage::Throttled`] (only when the disk's limits held the request back).
    Throttled,
    /// Device: [`Stage::HandedToWorker`].
    HandedToWorker,
    /// Device: [`Stage::BackendSubmit`].
    BackendSubmit,
    /// Device: [`Stage::NetworkSent`] (an engine over the network).
    NetworkSent,
    /// Device: [`Stage::NetworkReply`]: the segment ending here is the network round trip.
    NetworkReply,
    /// Device: [`Stage::BackendComplete`].
    BackendComplete,
    /// Device: [`Stage::UsedPublished`].
    UsedPublished,
    /// Device: [`Stage::IrqInjected`].
    IrqInjected,
    /// Guest: the completion seen.
    GuestComplete,
}

/// Number of [`Point`]s.
pub const POINTS: usize = 14;

/// Which thread a segment ran on: one track each in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// The guest driver.
    Guest = 1,
    /// The VMM thread that serves the queue (vcpu, iothread or dataplane thread).
    Handler = 2,
    /// A worker thread the request was handed to.
    Worker = 3,
    /// The backend engine (the host kernel's I/O).
    Backend = 4,
}

impl Layer {
    /// Every layer, in track order.
    pub const ALL: [Layer; 4] = [Layer::Guest, Layer::Handler, Layer::Worker, Layer::Backend];

    /// The track's name.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Guest => "guest",
            Layer::Handler => "vmm handler",
            Layer::Worker => "worker",
            Layer::Backend => "backend",
        }
    }
}

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; POINTS] = [
        Point::GuestSubmit,
        Point::GuestKick,
        Point::KickSeen,
        Point::Popped,
        Point::Parsed,
        Point::Throttled,
        Point::HandedToWorker,
        Point::BackendSubmit,
        Point::NetworkSent,
        Point::NetworkReply,
        Point::BackendComplete,
        Point::UsedPublished,
        Point::IrqInjected,
        Point::GuestComplete,
    ];

    /// The point's name (a segment is named after the point that ends it).
    pub fn name(self) -> &'static str {
        match self {
            Point::GuestSubmit => "GuestSubmit",
            Point::GuestKick => "GuestKick",
            Point::KickSeen => "KickSeen",
            Point::Popped => "Popped",
            Point::Parsed => "Parsed",
            Point::Throttled => "Throttled",
            Point::HandedToWorker => "HandedToWorker",
            Point::BackendSubmit => "BackendSubmit",
            Point::NetworkSent => "NetworkSent",
            Point::NetworkReply => "NetworkReply",
            Point::BackendComplete => "BackendComplete",
            Point::UsedPublished => "UsedPublished",
            Point::IrqInjected => "IrqInjected",
            Point::GuestComplete => "GuestComplete",
        }
    }

    /// The point of a device stage.
    pub fn of_stage(s: Stage) -> Point {
        match s {
            Stage::KickSeen => Point::KickSeen,
            Stage::Popped => Point::Popped,
            Stage::Parsed => Point::Parsed,
            Stage::Throttled => Point::Throttled,
            Stage::HandedToWorker => Point::HandedToWorker,
            Stage::BackendSubmit => Point::BackendSubmit,
            Stage::NetworkSent => Point::NetworkSent,
            Stage::NetworkReply => Point::NetworkReply,
            Stage::BackendComplete => Point::BackendComplete,
            Stage::UsedPublished => Point::UsedPublished,
            Stage::IrqInjected => Point::IrqInjected,
        }
    }
}

/// The time between two points of a request: from the previous present point to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The point that ends the segment (its name).
    pub end: Point,
    /// The track it belongs to.
    pub layer: Layer,
    /// Host TSC at its start.
    pub from: u64,
    /// Host TSC at its end (never before `from`; see [`Request::segments`]).
    pub to: u64,
}

/// One request's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Index in the output.
    pub id: usize,
    /// Device index.
    pub device: usize,
    /// Queue index.
    pub queue: u16,
    /// Head descriptor index.
    pub head: u16,
    /// Host TSC of each point, where known (indexed by `Point as usize`).
    pub at: [Option<u64>; POINTS],
}

impl Request {
    /// The host TSC of `p`, if recorded.
    pub fn get(&self, p: Point) -> Option<u64> {
        self.at.get(p as usize).copied().flatten()
    }

    fn set(&mut self, p: Point, tsc: u64) {
        if let Some(slot) = self.at.get_mut(p as usize) {
            *slot = Some(tsc);
        }
    }

    /// Whether the guest's side of the request is known.
    pub fn has_guest(&self) -> bool {
        self.get(Point::GuestSubmit).is_some() && self.get(Point::GuestComplete).is_some()
    }

    /// The guest-measured latency in cycles (completion seen minus submission).
    pub fn guest_latency(&self) -> Option<u64> {
        Some(
            self.get(Point::GuestComplete)?
                .saturating_sub(self.get(Point::GuestSubmit)?),
        )
    }

    /// How far, in cycles, the device's points fall outside the guest's window (before its
    /// submission or after it saw the completion), summed: 0 when the two clocks agree; with
    /// a correct mapping, at most twice its accuracy. (Inversions between the device's own
    /// threads are not counted: they share one clock.)
    pub fn disorder(&self) -> u64 {
        let (Some(submit), Some(complete)) =
            (self.get(Point::GuestSubmit), self.get(Point::GuestComplete))
        else {
            return 0;
        };
        Point::ALL
            .iter()
            .filter(|p| {
                !matches!(
                    p,
                    Point::GuestSubmit | Point::GuestKick | Point::GuestComplete
                )
            })
            .filter_map(|&p| self.get(p))
            .map(|t| submit.saturating_sub(t) + t.saturating_sub(complete))
            .sum()
    }

    /// The slack on each side of the guest's window, in cycles: (first device point minus the
    /// guest's submission, guest's completion minus the last device point), both signed. If
    /// the mapping were off by `e` cycles (guest points shown `e` late), the first would be
    /// short by `e` and the second long by it: over many requests, the smallest values bound
    /// the mapping's error to `-min(after) <= e <= min(before)`.
    pub fn causal_slack(&self) -> Option<(i64, i64)> {
        let submit = self.get(Point::GuestSubmit)?;
        let complete = self.get(Point::GuestComplete)?;
        let device = Point::ALL
            .iter()
            .filter(|p| {
                !matches!(
                    p,
                    Point::GuestSubmit | Point::GuestKick | Point::GuestComplete
                )
            })
            .filter_map(|&p| self.get(p));
        let (first, last) = device.fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)));
        (first <= last).then(|| {
            (
                first.wrapping_sub(submit) as i64,
                complete.wrapping_sub(last) as i64,
            )
        })
    }

    /// The segments between consecutive present points. A point that the mapping's error puts
    /// before its predecessor is clamped to it, so segments are ordered and non-negative and
    /// they sum to the span from the first point to the latest.
    pub fn segments(&self) -> Vec<Segment> {
        let handed = self.get(Point::HandedToWorker).is_some();
        let mut out = Vec::with_capacity(POINTS);
        let mut cur: Option<u64> = None;
        for p in Point::ALL {
            let Some(t) = self.get(p) else { continue };
            match cur {
                None => cur = Some(t),
                Some(from) => {
                    let to = t.max(from);
                    out.push(Segment {
                        end: p,
                        layer: layer_of(p, handed),
                        from,
                        to,
                    });
                    cur = Some(to);
                }
            }
        }
        out
    }
}

/// The track of the segment ending at `p`.
fn layer_of(p: Point, handed: bool) -> Layer {
    let serving = if handed {
        Layer::Worker
    } else {
        Layer::Handler
    };
    match p {
        Point::GuestSubmit | Point::GuestKick | Point::GuestComplete => Layer::Guest,
        Point::KickSeen
        | Point::Popped
        | Point::Parsed
        | Point::Throttled
        | Point::HandedToWorker => Layer::Handler,
        // The engine writes the request from the serving thread.
        Point::BackendSubmit | Point::NetworkSent | Point::UsedPublished | Point::IrqInjected => {
            serving
        }
        Point::NetworkReply | Point::BackendComplete => Layer::Backend,
    }
}

/// Slack added to the mapping's accuracy when comparing guest and device times (cycles).
const SLACK_CYCLES: u64 = 2_000;

/// One queue's stamps grouped per chain, plus its batch stamps, all sorted by time.
#[derive(Debug, Default)]
struct QueueStamps {
    /// Per-chain groups in pop order: (head, points).
    groups: Vec<(u16, [Option<u64>; POINTS])>,
    kicks: Vec<u64>,
    irqs: Vec<u64>,
}

fn group_stamps(log: &DeviceLog) -> QueueStamps {
    let mut stamps = log.stamps.clone();
    stamps.sort_by_key(|s| s.tsc);
    let mut q = QueueStamps::default();
    // Index in `groups` of each head's open group.
    let mut open: std::collections::HashMap<u16, usize> = Default::default();
    for s in stamps {
        let Some(stage) = Stage::from_u8(s.stage) else {
            continue;
        };
        match (stage, s.head) {
            (Stage::KickSeen, _) => q.kicks.push(s.tsc),
            // One interrupt covers the batch, whichever head it was stamped with.
            (Stage::IrqInjected, _) => q.irqs.push(s.tsc),
            (Stage::Popped, head) => {
                let mut at = [None; POINTS];
                at[Point::Popped as usize] = Some(s.tsc);
                open.insert(head, q.groups.len());
                q.groups.push((head, at));
            }
            (stage, head) => {
                let slot = open
                    .get(&head)
                    .and_then(|&i| q.groups.get_mut(i))
                    .and_then(|g| g.1.get_mut(Point::of_stage(stage) as usize));
                if let Some(slot @ None) = slot {
                    *slot = Some(s.tsc);
                }
            }
        }
    }
    q
}

/// The last of the sorted `times` in `lo..=hi`.
fn last_in(times: &[u64], lo: u64, hi: u64) -> Option<u64> {
    let end = times.partition_point(|&t| t <= hi);
    times[..end].last().copied().filter(|&t| t >= lo)
}

/// The first of the sorted `times` in `lo..=hi`.
fn first_in(times: &[u64], lo: u64, hi: u64) -> Option<u64> {
    let start = times.partition_point(|&t| t < lo);
    times.get(start).copied().filter(|&t| t <= hi)
}

/// Builds the requests: guest entries matched to device stamps when the guest published a
/// log; otherwise the device's stamps alone.
pub fn build(guest: &[GuestEntry], logs: &[DeviceLog], mapping: &TscMapping) -> Vec<Request> {
    let tol = if mapping.method == TscMethod::Unmeasured {
        u64::MAX / 4
    } else {
        mapping.accuracy_cycles.saturating_add(SLACK_CYCLES)
    };
    let mut out = Vec::new();
    // The guest drives one disk: the lowest device index with stamps.
    let guest_device = logs.iter().map(|l| l.device).min();
    for log in logs {
        let q = group_stamps(log);
        if guest.is_empty() {
            device_only(log, &q, &mut out);
        } else if Some(log.device) == guest_device {
            matched(guest, log, &q, mapping, tol, &mut out);
        }
    }
    out.sort_by_key(|r| r.at.iter().flatten().copied().min().unwrap_or(u64::MAX));
    for (i, r) in out.iter_mut().enumerate() {
        r.id = i;
    }
    out
}

fn device_only(log: &DeviceLog, q: &QueueStamps, out: &mut Vec<Request>) {
    let mut prev_pop = 0;
    for (head, at) in &q.groups {
        let mut r = Request {
            id: 0,
            device: log.device,
            queue: log.queue,
            head: *head,
            at: *at,
        };
        if let Some(pop) = r.get(Point::Popped) {
            if let Some(k) = last_in(&q.kicks, prev_pop, pop) {
                r.set(Point::KickSeen, k);
            }
            prev_pop = pop;
        }
        attach_irq(&mut r, q, u64::MAX);
        out.push(r);
    }
}

fn attach_irq(r: &mut Request, q: &QueueStamps, hi: u64) {
    if r.get(Point::IrqInjected).is_some() {
        return;
    }
    if let Some(used) = r.get(Point::UsedPublished) {
        if let Some(i) = first_in(&q.irqs, used, hi) {
            r.set(Point::IrqInjected, i);
        }
    }
}

fn matched(
    guest: &[GuestEntry],
    log: &DeviceLog,
    q: &QueueStamps,
    mapping: &TscMapping,
    tol: u64,
    out: &mut Vec<Request>,
) {
    // Per head: the device's groups in pop order, consumed front to back.
    let mut by_head: std::collections::HashMap<u16, std::collections::VecDeque<usize>> =
        Default::default();
    for (i, (head, _)) in q.groups.iter().enumerate() {
        by_head.entry(*head).or_default().push_back(i);
    }
    for e in guest
        .iter()
        .filter(|e| e.queue == log.queue && e.completed())
    {
        let submit = mapping.guest_to_host(e.submit_tsc);
        let complete = mapping.guest_to_host(e.complete_tsc);
        let Some(pending) = by_head.get_mut(&e.head) else {
            continue;
        };
        let pop_of = |i: &usize| {
            q.groups
                .get(*i)
                .and_then(|g| g.1[Point::Popped as usize])
                .unwrap_or(0)
        };
        // Pops before this submission belong to requests the guest did not log.
        while pending
            .front()
            .is_some_and(|i| pop_of(i).saturating_add(tol) < submit)
        {
            pending.pop_front();
        }
        let Some(&i) = pending
            .front()
            .filter(|i| pop_of(i) <= complete.saturating_add(tol))
        else {
            continue;
        };
        pending.pop_front();
        let Some((_, at)) = q.groups.get(i) else {
            continue;
        };
        let mut r = Request {
            id: 0,
            device: log.device,
            queue: log.queue,
            head: e.head,
            at: *at,
        };
        r.set(Point::GuestSubmit, submit);
        r.set(Point::GuestComplete, complete);
        let mut kick_from = submit;
        let pop = r.get(Point::Popped).unwrap_or(u64::MAX);
        // A kick after the pop was not on the request's path: a polling device found the
        // chain first. The request then goes straight from submission to the pop.
        let kick = mapping.guest_to_host(e.kick_tsc);
        if e.kicked() && kick <= pop {
            r.set(Point::GuestKick, kick);
            kick_from = kick;
        }
        if let Some(pop) = r.get(Point::Popped) {
            if let Some(k) = last_in(&q.kicks, kick_from.saturating_sub(tol), pop) {
                r.set(Point::KickSeen, k);
            }
        }
        attach_irq(&mut r, q, complete.saturating_add(tol));
        out.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::super::guest_log::{FLAG_COMPLETED, FLAG_KICKED};
    use super::super::NO_HEAD;
    use super::*;

    fn st(tsc: u64, stage: Stage, head: u16) -> Stamp {
        Stamp {
            tsc,
            stage: stage as u8,
            head,
        }
    }

    /// A request of head `h` whose guest submission is at guest TSC `g0`, device offset
    /// `off` (guest = host + off).
    fn scenario(n: u64, off: i64) -> (Vec<GuestEntry>, DeviceLog) {
        let mut guest = Vec::new();
        let mut stamps = Vec::new();
        for i in 0..n {
            let h = (i % 3) as u16;
            let host0 = 1_000_000 + i * 10_000;
            let g = |host: u64| host.wrapping_add(off as u64);
            guest.push(GuestEntry {
                queue: 0,
                head: h,
                flags: FLAG_KICKED | FLAG_COMPLETED,
                submit_tsc: g(host0),
                kick_tsc: g(host0 + 100),
                complete_tsc: g(host0 + 5_000),
            });
            stamps.extend([
                st(host0 + 400, Stage::KickSeen, NO_HEAD),
                st(host0 + 500, Stage::Popped, h),
                st(host0 + 600, Stage::Parsed, h),
                st(host0 + 700, Stage::BackendSubmit, h),
                st(host0 + 3_700, Stage::BackendComplete, h),
                st(host0 + 3_900, Stage::UsedPublished, h),
                st(host0 + 4_000, Stage::IrqInjected, NO_HEAD),
            ]);
        }
        let log = DeviceLog {
            device: 0,
            queue: 0,
            stamps,
            dropped: 0,
        };
        (guest, log)
    }

    #[test]
    fn matches_every_request_and_segments_sum_to_latency() {
        let off = -123_456_789;
        let (guest, log) = scenario(30, off);
        let reqs = build(&guest, &[log], &TscMapping::exact(off));
        assert_eq!(reqs.len(), 30);
        for r in &reqs {
            let segs = r.segments();
            let names: Vec<_> = segs.iter().map(|s| s.end.name()).collect();
            assert_eq!(
                names,
                [
                    "GuestKick",
                    "KickSeen",
                    "Popped",
                    "Parsed",
                    "BackendSubmit",
                    "BackendComplete",
                    "UsedPublished",
                    "IrqInjected",
                    "GuestComplete"
                ]
            );
            let sum: u64 = segs.iter().map(|s| s.to - s.from).sum();
            assert_eq!(Some(sum), r.guest_latency());
            assert_eq!(r.disorder(), 0);
            assert_eq!(
                r.get(Point::KickSeen).unwrap() + 100,
                r.get(Point::Popped).unwrap()
            );
        }
    }

    #[test]
    fn a_lost_pop_costs_one_request_only() {
        let (guest, mut log) = scenario(30, 0);
        // Drop the device's record of request 4 (head 1) entirely.
        let t0 = 1_000_000 + 4 * 10_000;
        log.stamps.retain(|s| !(t0..t0 + 10_000).contains(&s.tsc));
        let reqs = build(&guest, &[log], &TscMapping::exact(0));
        assert_eq!(reqs.len(), 29);
        for r in &reqs {
            // Every match is the right one: the pop lies inside the guest's window.
            let pop = r.get(Point::Popped).unwrap();
            assert!(r.get(Point::GuestSubmit).unwrap() < pop);
            assert!(pop < r.get(Point::GuestComplete).unwrap());
        }
    }

    #[test]
    fn mapping_error_is_clamped_not_negative() {
        let (guest, log) = scenario(5, 0);
        // The guest's clock appears 600 cycles late: its submission lands after KickSeen.
        let mut m = TscMapping::exact(-600);
        m.accuracy_cycles = 600;
        for r in build(&guest, &[log], &m) {
            let segs = r.segments();
            assert!(segs.iter().all(|s| s.to >= s.from));
            assert!(segs.windows(2).all(|w| w[0].to == w[1].from));
            let sum: u64 = segs.iter().map(|s| s.to - s.from).sum();
            assert!(sum.abs_diff(r.guest_latency().unwrap()) <= 2 * m.accuracy_cycles);
            // The guest's submission (and kick) now fall after the kick was seen.
            assert!(
                r.disorder() > 0 && r.disorder() <= 2 * m.accuracy_cycles,
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_kick_after_the_pop_is_off_the_path() {
        let (mut guest, log) = scenario(3, 0);
        // The device polled and popped (at +500) before the guest kicked (at +800).
        guest
            .iter_mut()
            .for_each(|e| e.kick_tsc = e.submit_tsc + 800);
        for r in build(&guest, &[log], &TscMapping::exact(0)) {
            assert_eq!(r.get(Point::GuestKick), None);
            assert_eq!(r.segments()[0].end, Point::KickSeen);
            assert_eq!(r.disorder(), 0);
        }
    }

    #[test]
    fn device_only_without_guest_log() {
        let (_, log) = scenario(4, 0);
        let reqs = build(&[], &[log], &TscMapping::unmeasured());
        assert_eq!(reqs.len(), 4);
        assert!(reqs.iter().all(|r| !r.has_guest()
            && r.get(Point::KickSeen).is_some()
            && r.get(Point::IrqInjected).is_some()));
    }
}
