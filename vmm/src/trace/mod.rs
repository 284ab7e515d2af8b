//! Request tracing: per-queue stamps on the device's hot path, joined with the guest's own
//! per-request log into one timeline (Chrome trace-event JSON, per-stage latency table).
//!
//! The device model calls [`QueueTrace::stamp`] at each [`Stage`] of a request; the stamp is
//! the host TSC, the stage and the chain's head index, appended to a preallocated lock-free log
//! ([`StampRing`]); those live in `blk_device::trace`, this module owns the logs. A disabled [`QueueTrace`] costs one predictable branch. At the end
//! of the run [`Tracer::write_chrome_json`] reads the guest's log out of guest memory
//! ([`guest_log`]), maps guest TSC to host TSC ([`tsc`]), matches each guest request to the
//! device's stamps by queue, head and time ([`timeline`]) and writes the file ([`chrome`]).
//!
//! ```
//! use vmm::trace::{QueueTrace, Stage, Tracer};
//! let tracer = Tracer::with_capacity(1024);
//! let q = tracer.queue(0, 0);
//! q.stamp(Stage::Popped, 3);
//! QueueTrace::disabled().stamp(Stage::Popped, 3); // costs a branch, records nothing
//! assert_eq!(tracer.stamp_count(), 1);
//! ```

pub mod chrome;
pub mod guest_log;
pub mod table;
pub mod timeline;
pub mod tsc;

use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

pub use blk_device::trace::{rdtsc, QueueTrace, Stage, Stamp, StampRing, NO_HEAD};
pub use table::{StageRow, StageTable};
pub use tsc::{measure_tsc_offset, TscMapping, TscMethod};

/// The tail left out of [`TraceSummary::typical`]: requests above this quantile of the total.
pub const TYPICAL_QUANTILE: f64 = 0.9;

/// Default log size per queue: 1 Mi stamps (16 MiB), about 2 s of QD1 at 60k IOPS.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// A queue's log, with where it belongs.
#[derive(Debug)]
struct QueueLog {
    device: usize,
    queue: u16,
    ring: Arc<StampRing>,
}

/// What [`Tracer::write_chrome_json`] found and wrote.
#[derive(Debug, Clone)]
pub struct TraceSummary {
    /// Entries in the guest's log (0 if the guest published none).
    pub guest_entries: usize,
    /// Of those, requests the guest saw complete (each should be matched).
    pub guest_completed: usize,
    /// Guest requests matched to the device's stamps.
    pub matched: usize,
    /// Requests written (matched, plus device-only ones when there is no guest log).
    pub requests: usize,
    /// Stamps the device recorded.
    pub device_stamps: usize,
    /// Stamps dropped because a queue's log was full.
    pub dropped: u64,
    /// The guest/host TSC mapping used.
    pub mapping: TscMapping,
    /// The mapping's accuracy in nanoseconds (`f64::INFINITY` if unmeasured).
    pub accuracy_ns: f64,
    /// Host TSC rate used to convert cycles to time.
    pub tsc_hz: f64,
    /// Matched requests whose guest and device points are out of order (clock disagreement).
    pub disordered: usize,
    /// Largest such disagreement in one request, in nanoseconds (see [`timeline::Request::disorder`]).
    pub max_disorder_ns: f64,
    /// Bounds on the mapping's error found in the data, ns: `(lower, upper)` such that the
    /// true offset differs from the one used by a value in between (see
    /// [`timeline::Request::causal_slack`]); `None` without matched requests.
    pub error_bounds_ns: Option<(f64, f64)>,
    /// Per-stage latency table.
    pub table: StageTable,
    /// The same over the requests up to the 90th percentile of the total (no tail).
    pub typical: StageTable,
}

/// `(-min(after), min(before))` over the matched requests' causal slack, in ns.
fn error_bounds(requests: &[timeline::Request], tsc_hz: f64) -> Option<(f64, f64)> {
    let (before, after) = requests
        .iter()
        .filter_map(timeline::Request::causal_slack)
        .fold(None, |acc: Option<(i64, i64)>, (b, a)| {
            Some(acc.map_or((b, a), |(mb, ma)| (mb.min(b), ma.min(a))))
        })?;
    let ns = |c: i64| c as f64 * 1e9 / tsc_hz;
    Some((-ns(after), ns(before)))
}

/// The VM's tracer: owns every queue's stamp log.
#[derive(Debug)]
pub struct Tracer {
    capacity: usize,
    queues: Mutex<Vec<QueueLog>>,
    mapping: Mutex<TscMapping>,
    clock: tsc::TscClock,
}

impl Default for Tracer {
    fn default() -> Self {
        Tracer::new()
    }
}

impl Tracer {
    /// A tracer whose queues hold [`DEFAULT_CAPACITY`] stamps each.
    pub fn new() -> Tracer {
        Tracer::with_capacity(DEFAULT_CAPACITY)
    }

    /// A tracer whose queues hold `capacity` stamps each.
    pub fn with_capacity(capacity: usize) -> Tracer {
        Tracer {
            capacity,
            queues: Mutex::new(Vec::new()),
            mapping: Mutex::new(TscMapping::unmeasured()),
            clock: tsc::TscClock::start(),
        }
    }

    /// The stamping handle of `queue` of `device` (the same log every time it is asked for,
    /// so a re-activated device keeps appending to it).
    pub fn queue(&self, device: usize, queue: u16) -> QueueTrace {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues
            .iter()
            .find(|q| q.device == device && q.queue == queue)
        {
            return QueueTrace::new(q.ring.clone());
        }
        let ring = Arc::new(StampRing::new(self.capacity));
        queues.push(QueueLog {
            device,
            queue,
            ring: ring.clone(),
        });
        QueueTrace::new(ring)
    }

    /// Sets the guest/host TSC mapping (from [`measure_tsc_offset`]).
    pub fn set_tsc_mapping(&self, mapping: TscMapping) {
        *self.mapping.lock().unwrap_or_else(|p| p.into_inner()) = mapping;
    }

    /// The current guest/host TSC mapping.
    pub fn tsc_mapping(&self) -> TscMapping {
        *self.mapping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stamps recorded so far, over all queues.
    pub fn stamp_count(&self) -> usize {
        self.logs().iter().map(|l| l.stamps.len()).sum()
    }

    /// A snapshot of every queue's log, ordered by device and queue.
    pub fn logs(&self) -> Vec<timeline::DeviceLog> {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut logs: Vec<_> = queues
            .iter()
            .map(|q| timeline::DeviceLog {
                device: q.device,
                queue: q.queue,
                stamps: q.ring.snapshot(),
                dropped: q.ring.dropped(),
            })
            .collect();
        logs.sort_by_key(|l| (l.device, l.queue));
        logs
    }

    /// Reads the guest's log from `mem` (if it published one), joins it with the device's
    /// stamps and writes Chrome trace-event JSON to `path`. Call after the guest stopped.
    pub fn write_chrome_json(
        &self,
        path: &Path,
        mem: &GuestMemoryMmap,
    ) -> std::io::Result<TraceSummary> {
        let guest = guest_log::read(mem).unwrap_or_default();
        let logs = self.logs();
        let mapping = self.tsc_mapping();
        let tsc_hz = self.clock.hz();
        let requests = timeline::build(&guest, &logs, &mapping);
        let table = StageTable::from_requests(&requests, tsc_hz);
        let typical = StageTable::up_to_quantile(&requests, tsc_hz, TYPICAL_QUANTILE);
        let disorder: Vec<u64> = requests
            .iter()
            .filter(|r| r.has_guest())
            .map(timeline::Request::disorder)
            .collect();
        let summary = TraceSummary {
            guest_entries: guest.len(),
            guest_completed: guest.iter().filter(|e| e.completed()).count(),
            matched: requests.iter().filter(|r| r.has_guest()).count(),
            requests: requests.len(),
            device_stamps: logs.iter().map(|l| l.stamps.len()).sum(),
            dropped: logs.iter().map(|l| l.dropped).sum(),
            mapping,
            accuracy_ns: if mapping.method == TscMethod::Unmeasured {
                f64::INFINITY
            } else {
                mapping.accuracy_cycles as f64 * 1e9 / tsc_hz
            },
            tsc_hz,
            disordered: disorder.iter().filter(|&&d| d > 0).count(),
            max_disorder_ns: disorder
                .iter()
                .max()
                .map_or(0.0, |&d| d as f64 * 1e9 / tsc_hz),
            error_bounds_ns: error_bounds(&requests, tsc_hz),
            table,
            typical,
        };
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        chrome::write(file, &requests, &summary)?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send_clone<T: Send + Clone>() {}

    #[test]
    fn handles_cross_threads() {
        send_sync::<Tracer>();
        send_clone::<QueueTrace>();
        send_sync::<crate::metrics::DeviceMetrics>();
    }

    #[test]
    fn a_queue_keeps_its_log_and_disabled_handles_record_nothing() {
        let t = Tracer::with_capacity(8);
        t.queue(0, 1).stamp(Stage::Popped, 4);
        t.queue(0, 1).stamp(Stage::Parsed, 4);
        t.queue(1, 1).stamp(Stage::Popped, 9);
        QueueTrace::disabled().stamp(Stage::Popped, 4);
        assert!(!QueueTrace::disabled().is_enabled());
        let logs = t.logs();
        assert_eq!(logs.len(), 2);
        let stages: Vec<_> = logs[0].stamps.iter().map(|s| (s.stage, s.head)).collect();
        assert_eq!(stages, [(Stage::Popped as u8, 4), (Stage::Parsed as u8, 4)]);
        assert_eq!((logs[1].device, logs[1].stamps.len()), (1, 1));
        assert!(logs[0].stamps[0].tsc <= logs[0].stamps[1].tsc);
    }

    #[test]
    fn stages_round_trip_through_u8() {
        for s in Stage::ALL {
            assert_eq!(Stage::from_u8(s as u8), Some(s));
        }
        assert_eq!(Stage::from_u8(Stage::ALL.len() as u8), None);
    }
}
