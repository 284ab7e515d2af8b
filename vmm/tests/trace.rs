//! Tracing end to end: boot the real test guest with `trace=1` under `vmm --trace --metrics`
//! in every io mode and check the timeline against what the guest itself measured.
//!
//! These tests need /dev/kvm and fail (never skip) without it.

mod real_guest;
use real_guest::require_kvm;
use std::ffi::OsStr;
#[path = "../src/trace/json_check.rs"]
mod json_check;

use std::path::{Path, PathBuf};
use std::time::Duration;

use json_check::{parse, Value};

/// Stage names in timeline order (a request's slices must follow it).
const ORDER: [&str; 10] = [
    "GuestKick",
    "KickSeen",
    "Popped",
    "Parsed",
    "HandedToWorker",
    "BackendSubmit",
    "BackendComplete",
    "UsedPublished",
    "IrqInjected",
    "GuestComplete",
];

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 32 MiB image of its own for the run `label`: runs go in parallel and some write.
fn image(label: &str) -> PathBuf {
    let path = temp_dir().join(format!("{label}.img"));
    let data: Vec<u8> = (0..32u64 << 20)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// One traced run: the guest's output, and the parsed trace and metrics.
struct Run {
    stdout: String,
    trace: Value,
    metrics: Value,
}

/// Boots the guest in io mode `mode` with `extra` VMM options; `label` names the output files
/// (tests run in parallel).
fn run_with(label: &str, mode: &str, cmdline: &str, extra: &[&str]) -> Run {
    require_kvm();
    let dir = temp_dir();
    let (trace, metrics) = (
        dir.join(format!("{label}.json")),
        dir.join(format!("{label}-metrics.json")),
    );
    let disk = format!("path={},serial=trace", image(label).display());
    let mut args: Vec<&OsStr> = vec![
        "--io-mode".as_ref(),
        mode.as_ref(),
        "--cmdline".as_ref(),
        cmdline.as_ref(),
        "--disk".as_ref(),
        disk.as_ref(),
        "--trace".as_ref(),
        trace.as_os_str(),
        "--metrics".as_ref(),
        metrics.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| -> &OsStr { a.as_ref() }));
    let (stdout, status) = real_guest::boot(args, Duration::from_secs(120));
    assert_eq!(status, Some(0), "vmm --io-mode {mode} failed:\n{stdout}");
    let read = |p: &Path| {
        let text = std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{} not written: {e}", p.display()));
        parse(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
    };
    Run {
        trace: read(&trace),
        metrics: read(&metrics),
        stdout,
    }
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for k in path {
        cur = cur.get(k).unwrap_or_else(|| panic!("no {k} in {path:?}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number"))
}

/// A request's slices, as (name, ts, dur), in file order.
#[derive(Default)]
struct Req {
    total: Option<(f64, f64)>,
    guest_latency_us: Option<f64>,
    stages: Vec<(String, f64, f64)>,
}

fn requests(trace: &Value) -> Vec<Req> {
    let events = trace
        .get("traceEvents")
        .and_then(Value::as_array)
        .expect("traceEvents");
    let mut reqs: Vec<Req> = Vec::new();
    for e in events {
        let Some(id) = e
            .get("args")
            .and_then(|a| a.get("req"))
            .and_then(Value::as_f64)
        else {
            assert_eq!(e.get("ph").and_then(Value::as_str), Some("M"), "{e:?}");
            continue;
        };
        assert_eq!(e.get("ph").and_then(Value::as_str), Some("X"));
        assert!(e.get("pid").and_then(Value::as_f64).is_some());
        assert!(e.get("tid").and_then(Value::as_f64).is_some());
        let id = id as usize;
        if reqs.len() <= id {
            reqs.resize_with(id + 1, Req::default);
        }
        let (ts, dur) = (num(e, &["ts"]), num(e, &["dur"]));
        let name = e.get("name").and_then(Value::as_str).unwrap().to_string();
        let r = &mut reqs[id];
        match e.get("cat").and_then(Value::as_str) {
            Some("request") => {
                r.total = Some((ts, dur));
                r.guest_latency_us = e
                    .get("args")
                    .and_then(|a| a.get("guest_latency_us"))
                    .and_then(Value::as_f64);
            }
            Some("stage") => r.stages.push((name, ts, dur)),
            other => panic!("unexpected category {other:?}"),
        }
    }
    reqs
}

/// Slices 1 ns apart print as 0.001 us; sums of a dozen such roundings stay below this.
const ROUNDING_US: f64 = 0.02;

/// The stages every request of a run must have: what the device does to every request that
/// reaches the backend, in every mode, `HandedToWorker` when the run hands requests to pool
/// workers, and the guest's own stamps. A request answered at parse time (GET_ID, UNSUPP, an
/// invalid one) has only the pop, the publication and the guest's stamps.
fn required_stages(handed_off: bool, reached_backend: bool) -> Vec<&'static str> {
    let mut stages = vec!["Popped", "UsedPublished", "GuestComplete"];
    if reached_backend {
        stages.extend(["Parsed", "BackendSubmit", "BackendComplete"]);
        if handed_off {
            stages.push("HandedToWorker");
        }
    }
    stages
}

/// The checks every traced run must pass; returns the number of requests. `handed_off`:
/// every request that reached the backend went through the pool (and only then may
/// `HandedToWorker` appear); `all_io`: every request reaches the backend (a benchmark's).
fn check_trace(mode: &str, r: &Run) -> usize {
    check_trace_with(mode, r, false, false)
}

fn check_trace_with(mode: &str, r: &Run, handed_off: bool, all_io: bool) -> usize {
    let other = r.trace.get("otherData").expect("otherData");
    let accuracy_us = num(other, &["mapping", "accuracy_ns"]) / 1e3;
    let reqs = requests(&r.trace);
    assert!(!reqs.is_empty(), "{mode}: no requests traced");
    for (i, q) in reqs.iter().enumerate() {
        let (start, dur) = q
            .total
            .unwrap_or_else(|| panic!("{mode}: request {i} has no slice"));
        assert!(!q.stages.is_empty());
        // Ordered, non-negative, contiguous, in timeline order.
        let mut at = start;
        let mut rank = 0;
        for (name, ts, d) in &q.stages {
            assert!(*d >= 0.0, "{mode}: request {i}: {name} lasts {d} us");
            assert!(
                (ts - at).abs() < 0.0015,
                "{mode}: request {i}: {name} at {ts}, expected {at}"
            );
            let r = ORDER.iter().position(|n| n == name).expect("known stage");
            assert!(r >= rank, "{mode}: request {i}: {name} out of order");
            rank = r + 1;
            at = ts + d;
        }
        assert!(
            (at - (start + dur)).abs() < ROUNDING_US,
            "{mode}: request {i}"
        );
        // Every stage this run claims is there for every request; HandedToWorker only when
        // requests were handed off.
        let has = |stage: &str| q.stages.iter().any(|(n, _, _)| n == stage);
        let reached_backend = all_io || has("BackendSubmit");
        for stage in required_stages(handed_off, reached_backend) {
            assert!(has(stage), "{mode}: request {i} has no {stage} slice");
        }
        if !handed_off {
            assert!(!has("HandedToWorker"), "{mode}: request {i} was handed off");
        }
        // Independent clocks: the device's part (host TSC, from the pop to the used element)
        // fits in the latency the guest measured on its own TSC.
        let stamp = |stage: &str| q.stages.iter().find(|(n, _, _)| n == stage).map(|s| s.1);
        if let (Some(pop), Some(used)) = (stamp("Popped"), stamp("UsedPublished")) {
            let guest = q.guest_latency_us.unwrap_or(f64::INFINITY);
            assert!(
                used - pop <= guest + 2.0 * accuracy_us + ROUNDING_US,
                "{mode}: request {i}: the device held it {} us, the guest waited {guest} us",
                used - pop
            );
        }
        // The stages add up to what the guest measured, within the mapping's accuracy.
        let guest = q
            .guest_latency_us
            .expect("every request is matched to the guest's");
        assert!(
            (dur - guest).abs() <= 2.0 * accuracy_us + ROUNDING_US,
            "{mode}: request {i}: stages sum to {dur} us, guest measured {guest} us (accuracy {accuracy_us} us)"
        );
    }
    // The clocks agree: no device stamp outside the guest's window beyond the accuracy.
    let disorder_us = num(other, &["max_disorder_ns"]) / 1e3;
    assert!(
        disorder_us <= 2.0 * accuracy_us + 1.0,
        "{mode}: device stamps {disorder_us} us outside the guest's window (accuracy {accuracy_us} us)"
    );
    // The data agree: the offset error they allow includes zero.
    let bounds = other
        .get("error_bounds_ns")
        .and_then(Value::as_array)
        .expect("error bounds");
    let (lo, hi) = (bounds[0].as_f64().unwrap(), bounds[1].as_f64().unwrap());
    let slack_ns = 2.0 * accuracy_us * 1e3 + 1000.0;
    assert!(
        lo <= slack_ns && hi >= -slack_ns,
        "{mode}: the trace bounds the clock error to [{lo}, {hi}] ns"
    );
    // The summary's table covers the same requests and its shares add up.
    let total = other.get("total").expect("total row");
    assert_eq!(num(total, &["count"]) as usize, reqs.len());
    let shares: f64 = other
        .get("stages")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|s| num(s, &["share"]))
        .sum();
    assert!(
        (shares - 1.0).abs() < 1e-3,
        "{mode}: shares sum to {shares}"
    );
    reqs.len()
}

fn bench_result(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no RESULT line:\n{stdout}"));
    parse(line.trim()).unwrap()
}

fn check_mode(mode: &str) {
    check_mode_with(mode, mode, &[]);
}

/// `label` names the run; `extra` VMM options (`--handoff-depth 0` hands every request off).
fn check_mode_with(label: &str, mode: &str, extra: &[&str]) {
    let r = run_with(
        label,
        mode,
        "tests=none bench=randread bs=4096 qd=1 secs=1 completion=poll trace=1",
        extra,
    );
    let handed_off = extra.windows(2).any(|w| w == ["--handoff-depth", "0"]);
    let n = check_trace_with(mode, &r, handed_off, true) as f64;
    let other = r.trace.get("otherData").unwrap();
    // Every request the guest logged was found on the device, none lost.
    assert_eq!(num(other, &["guest_entries"]), n, "{mode}");
    assert_eq!(num(other, &["guest_completed"]), n, "{mode}");
    assert_eq!(num(other, &["matched"]), n, "{mode}");
    assert_eq!(num(other, &["dropped"]), 0.0, "{mode}");
    // The device's counters agree with the guest: its only requests were the bench's reads.
    let dev = r
        .metrics
        .get("devices")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .expect("one device");
    assert_eq!(num(dev, &["requests"]), n, "{mode}");
    assert_eq!(num(dev, &["by_type", "in"]), n, "{mode}");
    assert_eq!(num(dev, &["completed"]), n, "{mode}");
    assert_eq!(num(dev, &["failed"]), 0.0, "{mode}");
    assert_eq!(num(dev, &["in_flight"]), 0.0, "{mode}");
    assert_eq!(num(dev, &["bytes"]), n * 4096.0, "{mode}");
    assert_eq!(num(dev, &["latency_ns", "count"]), n, "{mode}");
    // And with the guest's own figure: IOPS x seconds is the request count (the run's
    // measured span differs from the nominal second by the last request's latency).
    let result = bench_result(&r.stdout);
    let expect = num(&result, &["iops"]) * num(&result, &["secs"]);
    assert!(
        (expect - n).abs() <= 0.05 * n + 2.0,
        "{mode}: guest reports {expect} requests, trace has {n}"
    );
}

#[test]
fn traced_vcpu_mode_is_consistent() {
    check_mode("vcpu");
}

#[test]
fn traced_iothread_mode_is_consistent() {
    check_mode("iothread");
}

#[test]
fn traced_dataplane_mode_is_consistent() {
    check_mode("dataplane");
}

#[test]
fn traced_workers_mode_is_consistent() {
    // No pool (what `--workers auto` picks on a host with no core to spare), whatever this
    // host has: the queue threads do the I/O, and nothing is handed off.
    check_mode_with("workers", "workers", &["--workers", "0"]);
}

#[test]
fn traced_workers_mode_handing_every_request_off_is_consistent() {
    check_mode_with(
        "workers-pool",
        "workers",
        &["--workers", "2", "--handoff-depth", "0"],
    );
}

/// The self-tests drive every request type through resets and several queue set-ups; every
/// request the guest logged must still find its device stamps.
#[test]
fn self_tests_trace_completely() {
    let r = run_with(
        "selftests",
        "workers",
        "tests=all completion=poll trace=1",
        &["--workers", "0"],
    );
    assert!(
        r.stdout.contains("TESTS passed=") && r.stdout.contains("failed=0"),
        "{}",
        r.stdout
    );
    let n = check_trace("workers/tests", &r) as f64;
    let other = r.trace.get("otherData").unwrap();
    assert_eq!(num(other, &["matched"]), n);
    assert_eq!(
        num(other, &["guest_completed"]),
        n,
        "a completed request was not matched"
    );
    let dev = r
        .metrics
        .get("devices")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .unwrap();
    // Some requests are the guest's (logged), some a foreign driver's (not logged); chains
    // that fail validation count as errors, not requests.
    let device = num(dev, &["requests"]) + num(dev, &["errors"]);
    assert!(
        device >= n && n > 0.0,
        "device saw {device} requests, trace has {n}"
    );
}
