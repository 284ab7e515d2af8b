//! Counters of an export's connections, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of an export's counters (all connections together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Connections lost (closed by the server, a socket error, a protocol violation or a
    /// stalled server).
    pub disconnects: u64,
    /// Connections re-established after a loss.
    pub reconnects: u64,
    /// Requests sent again on a new connection after theirs was lost.
    pub retried_requests: u64,
    /// Requests failed with `EIO` because no connection came back in time.
    pub timed_out_requests: u64,
    /// Requests the server answered with an error.
    pub error_replies: u64,
    /// Connections dropped for breaking the protocol (a bad magic, a reply for a cookie not
    /// in flight).
    pub protocol_violations: u64,
}

/// The live counters, shared by an export's I/O threads. Counting is off the data path's
/// hot loop except for error replies, at the cost of a relaxed add each.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub disconnects: AtomicU64,
    pub reconnects: AtomicU64,
    pub retried_requests: AtomicU64,
    pub timed_out_requests: AtomicU64,
    pub error_replies: AtomicU64,
    pub protocol_violations: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> NbdStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NbdStats {
            disconnects: get(&self.disconnects),
            reconnects: get(&self.reconnects),
            retried_requests: get(&self.retried_requests),
            timed_out_requests: get(&self.timed_out_requests),
            error_replies: get(&self.error_replies),
            protocol_violations: get(&self.protocol_violations),
        }
    }
}

/// A live view of an export's counters that outlives borrowing the export (for a metrics
/// writer on another thread).
#[derive(Clone, Debug)]
pub struct NbdStatsHandle(pub(crate) std::sync::Arc<Counters>);

impl NbdStatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> NbdStats {
        self.0.snapshot()
    }
}

impl NbdStats {
    /// The counters as one JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"disconnects\":{},\"reconnects\":{},\"retried_requests\":{},\
             \"timed_out_requests\":{},\"error_replies\":{},\"protocol_violations\":{}}}",
            self.disconnects,
            self.reconnects,
            self.retried_requests,
            self.timed_out_requests,
            self.error_replies,
            self.protocol_violations
        )
    }
}
