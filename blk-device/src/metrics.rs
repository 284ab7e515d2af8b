//! Device metrics: counters a device bumps on its hot path at the cost of an atomic add each,
//! and their JSON form (whoever runs the device decides when to write them).
//!
//! ```
//! use std::sync::Arc;
//! use blk_proto::RequestType;
//! use blk_device::metrics::DeviceMetrics;
//! let m = Arc::new(DeviceMetrics::new("disk0"));
//! m.on_request(RequestType::In);
//! m.on_complete(4096, true, 42_000);
//! assert_eq!((m.requests(), m.completed(), m.in_flight()), (1, 1, 0));
//! assert!(m.to_json().contains("\"in\":1"));
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use blk_proto::RequestType;

/// Sub-buckets per power of two: 2^3 = 8, so a bucket is at most 12.5% wide.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Buckets covering every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of `u64` values (latencies in ns) made of atomics.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

/// The bucket holding `v`: values below 8 exactly, then 8 buckets per power of two.
pub fn bucket_index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (e - SUB_BITS)) as usize & (SUB - 1);
    (e - SUB_BITS + 1) as usize * SUB + sub
}

/// The smallest value in bucket `i`.
pub fn bucket_lower(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let e = (i / SUB) as u32 + SUB_BITS - 1;
    ((SUB + i % SUB) as u64) << (e - SUB_BITS)
}

impl Histogram {
    /// Counts one value.
    #[inline]
    pub fn record(&self, v: u64) {
        if let Some(b) = self.buckets.get(bucket_index(v)) {
            b.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
        self.max.fetch_max(v, Relaxed);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Mean of the values (0 if none).
    pub fn mean(&self) -> f64 {
        let n = self.count();
        if n == 0 {
            0.0
        } else {
            self.sum.load(Relaxed) as f64 / n as f64
        }
    }

    /// Largest value counted.
    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    /// The `q`-quantile (0..=1), as the lower bound of its bucket (0 if empty).
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_lower(i);
            }
        }
        self.max()
    }

    /// `[[lower_bound, count], ...]` of the non-empty buckets.
    fn buckets_json(&self, out: &mut String) {
        out.push('[');
        let mut first = true;
        for (i, b) in self.buckets.iter().enumerate() {
            let c = b.load(Relaxed);
            if c == 0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "[{},{c}]", bucket_lower(i));
        }
        out.push(']');
    }
}

/// Request types counted separately, in JSON order.
const KINDS: [&str; 7] = [
    "in",
    "out",
    "flush",
    "get_id",
    "discard",
    "write_zeroes",
    "unsupported",
];

fn kind_index(kind: RequestType) -> usize {
    match kind {
        RequestType::In => 0,
        RequestType::Out => 1,
        RequestType::Flush => 2,
        RequestType::GetId => 3,
        RequestType::Discard => 4,
        RequestType::WriteZeroes => 5,
        RequestType::Unsupported(_) => 6,
    }
}

/// One device's counters. All atomics: share it as `Arc<DeviceMetrics>` between threads.
#[derive(Debug)]
pub struct DeviceMetrics {
    name: String,
    requests: AtomicU64,
    by_kind: [AtomicU64; 7],
    completed: AtomicU64,
    failed: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    kicks: AtomicU64,
    interrupts: AtomicU64,
    in_flight: AtomicI64,
    throttled: AtomicU64,
    throttled_ns: AtomicU64,
    latency: Histogram,
    /// Names of the threads that submitted this device's I/O to an engine.
    io_threads: Mutex<Vec<String>>,
    /// The NBD connection counters, for a disk over the network.
    nbd: std::sync::OnceLock<backend_nbd::NbdStatsHandle>,
}

impl DeviceMetrics {
    /// Zeroed counters for the device called `name` (e.g. its image path).
    pub fn new(name: &str) -> Self {
        DeviceMetrics {
            name: name.to_string(),
            requests: AtomicU64::new(0),
            by_kind: Default::default(),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            interrupts: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            throttled: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            latency: Histogram::default(),
            io_threads: Mutex::new(Vec::new()),
            nbd: std::sync::OnceLock::new(),
        }
    }

    /// Reports `stats` (reconnects, retried requests, ...) with the device's counters.
    pub fn set_nbd(&self, stats: backend_nbd::NbdStatsHandle) {
        let _ = self.nbd.set(stats);
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A request of type `kind` was parsed and is about to be executed.
    #[inline]
    pub fn on_request(&self, kind: RequestType) {
        self.requests.fetch_add(1, Relaxed);
        if let Some(c) = self.by_kind.get(kind_index(kind)) {
            c.fetch_add(1, Relaxed);
        }
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request counted by [`on_request`](Self::on_request) completed after `latency_ns`
    /// (pop to used), having transferred `bytes`; `ok` is false if its status is not OK.
    #[inline]
    pub fn on_complete(&self, bytes: u64, ok: bool, latency_ns: u64) {
        self.completed.fetch_add(1, Relaxed);
        if !ok {
            self.failed.fetch_add(1, Relaxed);
        }
        self.bytes.fetch_add(bytes, Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
        self.latency.record(latency_ns);
    }

    /// A chain could not be used at all (bad descriptor chain, unparsable header).
    #[inline]
    pub fn on_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// The guest kicked a queue (a kick the device saw).
    #[inline]
    pub fn on_kick(&self) {
        self.kicks.fetch_add(1, Relaxed);
    }

    /// The device raised a queue interrupt.
    #[inline]
    pub fn on_interrupt(&self) {
        self.interrupts.fetch_add(1, Relaxed);
    }

    /// A parsed request was held back by the disk's limits.
    #[inline]
    pub fn on_throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    /// A held-back request ran after waiting `ns` for tokens.
    #[inline]
    pub fn on_throttled_for(&self, ns: u64) {
        self.throttled_ns.fetch_add(ns, Relaxed);
    }

    /// Requests held back by the disk's limits, and their total wait (ns).
    pub fn throttled(&self) -> (u64, u64) {
        (
            self.throttled.load(Relaxed),
            self.throttled_ns.load(Relaxed),
        )
    }

    /// Requests started.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Requests of type `kind` started.
    pub fn requests_of(&self, kind: RequestType) -> u64 {
        self.by_kind
            .get(kind_index(kind))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Requests completed.
    pub fn completed(&self) -> u64 {
        self.completed.load(Relaxed)
    }

    /// Requests started and not completed yet.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    /// Records that the calling thread submits this device's I/O to an engine (an engine's
    /// table calls it when its thread changes, not per request).
    pub fn record_io_thread(&self) {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let mut threads = self.io_threads.lock().unwrap_or_else(|p| p.into_inner());
        if !threads.contains(&name) {
            threads.push(name);
        }
    }

    /// The names of the threads that submitted this device's I/O, in the order first seen:
    /// where each I/O mode really does its I/O.
    pub fn io_threads(&self) -> Vec<String> {
        self.io_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The completion latency histogram (ns).
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(512);
        s.push_str("{\"name\":");
        json_string(&mut s, &self.name);
        let _ = write!(s, ",\"requests\":{},\"by_type\":{{", self.requests());
        for (i, (k, c)) in KINDS.iter().zip(&self.by_kind).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\"{k}\":{}", c.load(Relaxed));
        }
        let l = &self.latency;
        let _ = write!(
            s,
            "}},\"completed\":{},\"failed\":{},\"errors\":{},\"bytes\":{},\"kicks\":{},\
             \"interrupts\":{},\"in_flight\":{},\"throttled\":{},\"throttled_ns\":{},\"latency_ns\":{{\"count\":{},\"mean\":{:.1},\
             \"p50\":{},\"p90\":{},\"p99\":{},\"max\":{},\"buckets\":",
            self.completed(),
            self.failed.load(Relaxed),
            self.errors.load(Relaxed),
            self.bytes.load(Relaxed),
            self.kicks.load(Relaxed),
            self.interrupts.load(Relaxed),
            self.in_flight(),
            self.throttled().0,
            self.throttled().1,
            l.count(),
            l.mean(),
            l.quantile(0.5),
            l.quantile(0.9),
            l.quantile(0.99),
            l.max(),
        );
        l.buckets_json(&mut s);
        s.push_str("},\"io_threads\":[");
        for (i, name) in self.io_threads().iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_string(&mut s, name);
        }
        s.push(']');
        if let Some(nbd) = self.nbd.get() {
            let _ = write!(s, ",\"nbd\":{}", nbd.snapshot().to_json());
        }
        s.push('}');
        s
    }
}

/// Appends `v` as a JSON string literal.
pub fn json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bounded() {
        for i in 0..BUCKETS - 1 {
            assert!(bucket_lower(i) < bucket_lower(i + 1), "bucket {i}");
            assert_eq!(bucket_index(bucket_lower(i)), i);
            assert_eq!(bucket_index(bucket_lower(i + 1) - 1), i);
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    proptest::proptest! {
        #[test]
        fn a_value_lies_in_its_bucket_within_12_5_percent(v in proptest::num::u64::ANY) {
            let i = bucket_index(v);
            let lo = bucket_lower(i);
            proptest::prop_assert!(lo <= v);
            proptest::prop_assert!(v - lo <= lo / 8);
        }
    }

    #[test]
    fn quantiles_follow_the_data() {
        let h = Histogram::default();
        (1..=1000u64).for_each(|v| h.record(v * 1000));
        let p50 = h.quantile(0.5) as f64;
        assert!((450_000.0..=500_000.0).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((870_000.0..=990_000.0).contains(&p99), "{p99}");
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1_000_000);
        assert!((h.mean() - 500_500.0).abs() < 1.0);
    }

    #[test]
    fn counters_and_json() {
        let m = DeviceMetrics::new("d\"0");
        m.on_request(RequestType::In);
        m.on_request(RequestType::Out);
        m.on_request(RequestType::Unsupported(99));
        m.on_complete(4096, true, 10_000);
        m.on_complete(512, false, 20_000);
        m.on_error();
        assert_eq!(m.in_flight(), 1);
        assert_eq!(m.requests_of(RequestType::Unsupported(1)), 1);
        let j = m.to_json();
        for want in [
            "\"name\":\"d\\\"0\"",
            "\"requests\":3",
            "\"in\":1,\"out\":1",
            "\"unsupported\":1",
            "\"completed\":2",
            "\"failed\":1",
            "\"errors\":1",
            "\"bytes\":4608",
            "\"in_flight\":1",
        ] {
            assert!(j.contains(want), "{want} not in {j}");
        }
    }
}
