//! Chrome trace-event JSON (the "JSON Object Format" that chrome://tracing and Perfetto
//! load): one complete event (`"ph":"X"`) per segment of each request, on one track (`tid`)
//! per [`Layer`], an enclosing `request` slice per request, and the summary (mapping, stage
//! table) under `otherData`.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::table::{StageRow, StageTable};
use super::timeline::{Layer, Request};
use super::TraceSummary;
use blk_device::metrics::json_string;

/// The process id of every event.
const PID: u32 = 1;

/// Nanoseconds since `base` of host TSC `tsc`.
fn ns_since(base: u64, tsc: u64, ns_per_cycle: f64) -> u64 {
    (tsc.saturating_sub(base) as f64 * ns_per_cycle).round() as u64
}

/// Microseconds with nanosecond precision, as JSON.
fn us(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn row_json(out: &mut String, r: &StageRow) {
    let _ = write!(
        out,
        "{{\"stage\":\"{}\",\"count\":{},\"mean_us\":{:.3},\"p50_us\":{:.3},\"p99_us\":{:.3},\"share\":{:.5}}}",
        r.stage,
        r.count,
        r.mean_ns / 1e3,
        r.p50_ns / 1e3,
        r.p99_ns / 1e3,
        r.share
    );
}

/// The `otherData` object.
fn summary_json(s: &TraceSummary) -> String {
    let m = &s.mapping;
    let mut o = String::new();
    let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
    let accuracy_ns = if s.accuracy_ns.is_finite() {
        format!("{:.1}", s.accuracy_ns)
    } else {
        "null".into()
    };
    let _ = write!(
        o,
        "{{\"tsc_hz\":{:.0},\"mapping\":{{\"method\":\"{}\",\"offset\":{},\"accuracy_cycles\":{},\
         \"accuracy_ns\":{},\"msr_offset\":{},\"msr_accuracy_cycles\":{}}},\"guest_entries\":{},\"guest_completed\":{},\
         \"matched\":{},\"requests\":{},\"device_stamps\":{},\"dropped\":{},\"disordered\":{},\
         \"max_disorder_ns\":{:.1},\"error_bounds_ns\":{},\"stages\":[",
        s.tsc_hz,
        m.method.name(),
        m.offset,
        if m.accuracy_cycles == u64::MAX {
            "null".into()
        } else {
            m.accuracy_cycles.to_string()
        },
        accuracy_ns,
        opt(m.msr_offset.map(|v| v.to_string())),
        opt(m.msr_accuracy_cycles.map(|v| v.to_string())),
        s.guest_entries,
        s.guest_completed,
        s.matched,
        s.requests,
        s.device_stamps,
        s.dropped,
        s.disordered,
        s.max_disorder_ns,
        opt(s
            .error_bounds_ns
            .map(|(lo, hi)| format!("[{lo:.1},{hi:.1}]"))),
    );
    table_json(&mut o, &s.table, "total");
    o.push_str(",\"typical_stages\":[");
    table_json(&mut o, &s.typical, "typical_total");
    o.push('}');
    o
}

/// `row, row, ...], "<total_key>": row` (the opening bracket is the caller's).
fn table_json(o: &mut String, t: &StageTable, total_key: &str) {
    for (i, r) in t.rows.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        row_json(o, r);
    }
    let _ = write!(o, "],\"{total_key}\":");
    match &t.total {
        Some(r) => row_json(o, r),
        None => o.push_str("null"),
    }
}

/// One complete event.
#[allow(clippy::too_many_arguments)]
fn slice(
    out: &mut String,
    name: &str,
    cat: &str,
    layer: Layer,
    start_ns: u64,
    dur_ns: u64,
    r: &Request,
    extra: &str,
) {
    out.push_str(",\n{\"name\":");
    json_string(out, name);
    let _ = write!(
        out,
        ",\"cat\":\"{cat}\",\"ph\":\"X\",\"ts\":{},\"dur\":{},\"pid\":{PID},\"tid\":{},\
         \"args\":{{\"req\":{},\"device\":{},\"queue\":{},\"head\":{}{extra}}}}}",
        us(start_ns),
        us(dur_ns),
        layer as u32,
        r.id,
        r.device,
        r.queue,
        r.head,
    );
}

/// Writes the trace of `requests` with `summary` to `w`.
pub fn write(mut w: impl Write, requests: &[Request], summary: &TraceSummary) -> io::Result<()> {
    let ns_per_cycle = if summary.tsc_hz > 0.0 {
        1e9 / summary.tsc_hz
    } else {
        0.0
    };
    let base = requests
        .iter()
        .flat_map(|r| r.at.iter().flatten().copied())
        .min()
        .unwrap_or(0);
    let mut out = String::with_capacity(1 << 16);
    let _ = write!(
        out,
        "{{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n\
         {{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{PID},\"tid\":0,\"args\":{{\"name\":\"virtio-blk request timeline\"}}}}"
    );
    for l in Layer::ALL {
        let _ = write!(
            out,
            ",\n{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{PID},\"tid\":{},\"args\":{{\"name\":\"{}\"}}}}",
            l as u32,
            l.name()
        );
    }
    for r in requests {
        let segs = r.segments();
        let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
            continue;
        };
        let start = ns_since(base, first.from, ns_per_cycle);
        let end = ns_since(base, last.to, ns_per_cycle);
        let guest = r
            .guest_latency()
            .map(|c| {
                format!(
                    ",\"guest_latency_us\":{}",
                    us((c as f64 * ns_per_cycle) as u64)
                )
            })
            .unwrap_or_default();
        let layer = if r.has_guest() {
            Layer::Guest
        } else {
            Layer::Handler
        };
        slice(
            &mut out,
            "request",
            "request",
            layer,
            start,
            end - start,
            r,
            &guest,
        );
        for s in &segs {
            let (a, b) = (
                ns_since(base, s.from, ns_per_cycle),
                ns_since(base, s.to, ns_per_cycle),
            );
            slice(&mut out, s.end.name(), "stage", s.layer, a, b - a, r, "");
        }
        if out.len() > 1 << 20 {
            w.write_all(out.as_bytes())?;
            out.clear();
        }
    }
    out.push_str("\n],\"otherData\":");
    out.push_str(&summary_json(summary));
    out.push_str("}\n");
    w.write_all(out.as_bytes())?;
    w.flush()
}

#[cfg(test)]
#[path = "json_check.rs"]
mod json_check;

#[cfg(test)]
mod tests {
    use super::json_check::{parse, Value};
    use super::*;
    use crate::trace::timeline::{Point, POINTS};
    use crate::trace::TscMapping;

    fn summary(requests: &[Request]) -> TraceSummary {
        TraceSummary {
            guest_entries: 1,
            guest_completed: 1,
            matched: 1,
            requests: requests.len(),
            device_stamps: 6,
            dropped: 0,
            mapping: TscMapping::exact(-5),
            accuracy_ns: 0.0,
            tsc_hz: 1e9,
            disordered: 0,
            max_disorder_ns: 0.0,
            error_bounds_ns: Some((-300.0, 1500.0)),
            table: StageTable::from_requests(requests, 1e9),
            typical: StageTable::up_to_quantile(requests, 1e9, 0.9),
        }
    }

    #[test]
    fn writes_loadable_json_with_ordered_slices() {
        let mut at = [None; POINTS];
        for (p, t) in [
            (Point::GuestSubmit, 10_000u64),
            (Point::GuestKick, 10_100),
            (Point::Popped, 12_000),
            (Point::BackendSubmit, 12_500),
            (Point::BackendComplete, 40_000),
            (Point::UsedPublished, 40_700),
            (Point::GuestComplete, 41_000),
        ] {
            at[p as usize] = Some(t);
        }
        let reqs = vec![Request {
            id: 0,
            device: 0,
            queue: 0,
            head: 3,
            at,
        }];
        let mut buf = Vec::new();
        write(&mut buf, &reqs, &summary(&reqs)).unwrap();
        let v = parse(std::str::from_utf8(&buf).unwrap()).unwrap();
        assert_eq!(v.get("displayTimeUnit").and_then(Value::as_str), Some("ns"));
        let events = v.get("traceEvents").and_then(Value::as_array).unwrap();
        let stages: Vec<_> = events
            .iter()
            .filter(|e| e.get("cat").and_then(Value::as_str) == Some("stage"))
            .collect();
        assert_eq!(stages.len(), 6);
        let mut prev_end = 0.0;
        for e in &stages {
            let ts = e.get("ts").and_then(Value::as_f64).unwrap();
            let dur = e.get("dur").and_then(Value::as_f64).unwrap();
            assert!(
                dur >= 0.0 && (ts - prev_end).abs() < 1e-9,
                "{ts} {dur} {prev_end}"
            );
            prev_end = ts + dur;
        }
        // 31 us from submission to completion.
        assert!((prev_end - 31.0).abs() < 1e-9);
        let backend = stages[3];
        assert_eq!(
            backend.get("name").and_then(Value::as_str),
            Some("BackendComplete")
        );
        assert_eq!(backend.get("tid").and_then(Value::as_f64), Some(4.0));
        let other = v.get("otherData").unwrap();
        let total = other.get("total").unwrap();
        assert_eq!(total.get("mean_us").and_then(Value::as_f64), Some(31.0));
        assert_eq!(
            other
                .get("mapping")
                .and_then(|m| m.get("offset"))
                .and_then(Value::as_f64),
            Some(-5.0)
        );
    }

    #[test]
    fn empty_trace_is_valid_json() {
        let mut buf = Vec::new();
        write(&mut buf, &[], &summary(&[])).unwrap();
        let v = parse(std::str::from_utf8(&buf).unwrap()).unwrap();
        assert_eq!(
            v.get("traceEvents")
                .and_then(Value::as_array)
                .unwrap()
                .len(),
            5
        );
    }
}
