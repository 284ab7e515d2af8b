//! `cargo xtask trace`: where a request's time goes, per io mode.
//!
//! For each io mode the VMM runs a short traced workload (`--trace`, guest `trace=1`); the
//! trace's summary (`otherData` of the Chrome JSON the VMM writes) gives, per stage, the mean,
//! median and 99th percentile time and the share of the total. [`table`] prints them and
//! [`timeline_svg`] draws one stacked bar per mode.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use xtask::bench::{disk_target, parse_guest_result, Case, CASES};
use xtask::guest::{build_guest, build_vmm};
use xtask::runner::{ensure_image, run_guest, Peer};

use crate::timeline_svg::timeline_svg;
use crate::trace_summary::{describe, ModeTrace, StageStat};
use xtask::nbd_server::{NbdServer, NbdServerKind};

/// The io modes, in table order.
pub const IO_MODES: [&str; 4] = ["vcpu", "iothread", "dataplane", "workers"];
/// Seconds of workload per mode.
pub const SECS: u32 = 2;

fn stat(v: &Value) -> Option<StageStat> {
    Some(StageStat {
        stage: v["stage"].as_str()?.to_string(),
        count: v["count"].as_u64()?,
        mean_us: v["mean_us"].as_f64()?,
        p50_us: v["p50_us"].as_f64()?,
        p99_us: v["p99_us"].as_f64()?,
        share: v["share"].as_f64()?,
    })
}

/// Reads the summary of a trace written by `vmm --trace`.
pub fn read_trace(mode: &str, json_text: &str) -> Result<ModeTrace, String> {
    let v: Value =
        serde_json::from_str(json_text).map_err(|e| format!("trace is not JSON: {e}"))?;
    check_slices(&v)?;
    let o = &v["otherData"];
    let rows = |key: &str| -> Result<Vec<StageStat>, String> {
        o[key]
            .as_array()
            .ok_or_else(|| format!("trace has no otherData.{key}"))?
            .iter()
            .map(|s| stat(s).ok_or_else(|| format!("bad stage row {s}")))
            .collect()
    };
    let stages = rows("stages")?;
    let typical = rows("typical_stages").unwrap_or_default();
    let m = &o["mapping"];
    Ok(ModeTrace {
        mode: mode.to_string(),
        stages,
        total: stat(&o["total"]),
        typical,
        typical_total: stat(&o["typical_total"]),
        matched: o["matched"].as_u64().unwrap_or(0),
        dropped: o["dropped"].as_u64().unwrap_or(0),
        mapping: m["method"].as_str().unwrap_or("?").to_string(),
        accuracy_ns: m["accuracy_ns"].as_f64(),
        iops: None,
        error_bounds_ns: o["error_bounds_ns"][0]
            .as_f64()
            .zip(o["error_bounds_ns"][1].as_f64()),
    })
}

/// Checks every request's stage slices: non-negative, each starting where the previous ended.
pub fn check_slices(v: &Value) -> Result<(), String> {
    let events = v["traceEvents"]
        .as_array()
        .ok_or("trace has no traceEvents array")?;
    let mut last_end: std::collections::HashMap<u64, f64> = Default::default();
    for e in events.iter().filter(|e| e["cat"] == "stage") {
        let (Some(req), Some(ts), Some(dur)) = (
            e["args"]["req"].as_u64(),
            e["ts"].as_f64(),
            e["dur"].as_f64(),
        ) else {
            return Err(format!("stage event without req/ts/dur: {e}"));
        };
        if dur < 0.0 {
            return Err(format!("request {req}: negative duration: {e}"));
        }
        if let Some(end) = last_end.get(&req) {
            if (ts - end).abs() > 0.0015 {
                return Err(format!(
                    "request {req}: stage starts at {ts} us, previous ended at {end} us"
                ));
            }
        }
        last_end.insert(req, ts + dur);
    }
    Ok(())
}

/// The per-mode tables.
pub fn table(modes: &[ModeTrace]) -> String {
    let mut out = String::new();
    for m in modes {
        let accuracy = m
            .accuracy_ns
            .map_or("unknown".to_string(), |a| format!("+-{a:.0} ns"));
        let iops = m.iops.map_or(String::new(), |i| format!(", {i:.0} IOPS"));
        let bounds = m.error_bounds_ns.map_or(String::new(), |(lo, hi)| {
            format!("; the data bound its error to [{lo:.0}, {hi:.0}] ns")
        });
        let _ = writeln!(
            out,
            "== {}: {} requests{iops}, clocks mapped by {} ({accuracy}{bounds}), {} stamps dropped",
            m.mode, m.matched, m.mapping, m.dropped
        );
        let _ = writeln!(
            out,
            "  {:<16} {:>7} {:>9} {:>9} {:>9} {:>7}  what",
            "stage", "count", "mean us", "p50 us", "p99 us", "share"
        );
        for s in m.stages.iter().chain(&m.total) {
            let _ = writeln!(
                out,
                "  {:<16} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>6.1}%  {}",
                s.stage,
                s.count,
                s.mean_us,
                s.p50_us,
                s.p99_us,
                100.0 * s.share,
                describe(&s.stage)
            );
        }
        if let Some(t) = &m.typical_total {
            let parts: Vec<String> = m
                .typical
                .iter()
                .map(|s| format!("{} {:.1}", s.stage, s.share * t.mean_us))
                .collect();
            let _ = writeln!(
                out,
                "  up to p90 ({} requests): {:.1} us = {}",
                t.count,
                t.mean_us,
                parts.join(" + ")
            );
        }
    }
    out
}

/// Builds the guest and the VMM (release); returns their paths.
pub fn build(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    Ok((build_guest(root)?, build_vmm(root)?))
}

/// The guest command line of a traced run of `case`: the bench's, tracing.
pub fn cmdline(case: &Case, secs: u32) -> String {
    format!("{} trace=1", case.guest_cmdline(secs))
}

/// Runs `case` under `vmm --io-mode mode` with tracing, on `image` or, with `nbd`, on that
/// NBD URI; returns the mode's figures.
pub fn run_mode(
    vmm: &Path,
    guest: &Path,
    image: &Path,
    nbd: Option<&str>,
    out_dir: &Path,
    mode: &str,
    case: &Case,
) -> Result<ModeTrace, String> {
    let trace = out_dir.join(format!("{mode}.json"));
    let metrics = out_dir.join(format!("{mode}-metrics.json"));
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(guest)
        .args(["--memory", "256M", "--io-mode", mode]);
    cmd.args(["--cmdline", &cmdline(case, SECS)]);
    cmd.arg("--disk").arg(format!(
        "{},engine=io_uring,serial=trace",
        disk_target(image, nbd, case.shm)
    ));
    cmd.arg("--trace")
        .arg(&trace)
        .arg("--metrics")
        .arg(&metrics);
    let out = run_guest(
        cmd,
        Peer::Vmm,
        Duration::from_secs(u64::from(SECS) + 60),
        false,
    )?;
    if out.guest_code != Some(0) {
        return Err(format!(
            "vmm --io-mode {mode} ended with {:?}",
            out.guest_code
        ));
    }
    let result = parse_guest_result(&out.stdout)?;
    let text = std::fs::read_to_string(&trace)
        .map_err(|e| format!("cannot read {}: {e}", trace.display()))?;
    let mut m = read_trace(mode, &text)?;
    m.iops = Some(result.iops);
    Ok(m)
}

/// `cargo xtask trace`: every io mode (or `only`), workload `workload` (default
/// randread-4k-qd1), on a local image or (`backend` nbd or nbdkit) over NBD; tables on
/// stdout, `target/trace/timeline.svg`. Over NBD every mode's trace must show the network
/// round trip as its own stage.
pub fn cmd(
    root: &Path,
    only: Option<&str>,
    workload: Option<&str>,
    backend: &str,
) -> Result<bool, String> {
    let name = workload.unwrap_or("randread-4k-qd1");
    let case = CASES.iter().find(|c| c.name == name).ok_or_else(|| {
        format!(
            "unknown workload {name}; known: {}",
            CASES.iter().map(|c| c.name).collect::<Vec<_>>().join(",")
        )
    })?;
    let modes: Vec<&str> = match only {
        None => IO_MODES.to_vec(),
        Some(m) if IO_MODES.contains(&m) => vec![m],
        Some(m) => {
            return Err(format!(
                "unknown io mode {m}; known: {}",
                IO_MODES.join(",")
            ))
        }
    };
    let (guest, vmm) = build(root)?;
    let out_dir = root.join("target/trace");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let image = if case.shm {
        PathBuf::from(format!("/dev/shm/vmm-trace-{}.img", std::process::id()))
    } else {
        out_dir.join("trace.img")
    };
    ensure_image(&image, 256 << 20)?;
    let server = match backend {
        "file" => None,
        b => {
            let kind = NbdServerKind::from_backend(b)
                .ok_or_else(|| format!("--backend must be file, nbd or nbdkit, not {b}"))?;
            let socket = out_dir.join("nbd.sock");
            Some(NbdServer::start_with(
                kind, &image, &socket, "trace", !case.shm,
            )?)
        }
    };
    let uri = server.as_ref().map(|s| s.uri("trace"));
    let mut traces = Vec::new();
    let mut ok = true;
    for mode in modes {
        println!("== tracing {} under --io-mode {mode}", case.name);
        match run_mode(&vmm, &guest, &image, uri.as_deref(), &out_dir, mode, case) {
            Ok(t) => {
                if let Some(s) = &server {
                    let round_trips = t
                        .stages
                        .iter()
                        .find(|st| st.stage == "NetworkReply")
                        .map_or(0, |st| st.count);
                    if round_trips == 0 {
                        println!(
                            "   {mode}: FAILED, no NetworkReply stage over NBD ({})",
                            s.kind().program()
                        );
                        ok = false;
                    }
                }
                traces.push(t)
            }
            Err(e) => {
                println!("   {mode}: {e}");
                ok = false;
            }
        }
    }
    drop(server);
    if case.shm {
        let _ = std::fs::remove_file(&image);
    }
    println!("{}", table(&traces));
    let svg = out_dir.join("timeline.svg");
    let title = format!(
        "virtio-blk request timeline, {} ({} s per io mode)",
        case.name, SECS
    );
    std::fs::write(&svg, timeline_svg(&title, &traces))
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    println!(
        "wrote {} and {}/<mode>.json (load in https://ui.perfetto.dev or chrome://tracing)",
        svg.display(),
        out_dir.display()
    );
    Ok(ok && !traces.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"{"displayTimeUnit":"ns","traceEvents":[
{"name":"thread_name","ph":"M","pid":1,"tid":1,"args":{"name":"guest"}},
{"name":"request","cat":"request","ph":"X","ts":0.000,"dur":31.000,"pid":1,"tid":1,"args":{"req":0}},
{"name":"GuestKick","cat":"stage","ph":"X","ts":0.000,"dur":1.000,"pid":1,"tid":1,"args":{"req":0}},
{"name":"BackendComplete","cat":"stage","ph":"X","ts":1.000,"dur":29.000,"pid":1,"tid":4,"args":{"req":0}},
{"name":"GuestComplete","cat":"stage","ph":"X","ts":30.000,"dur":1.000,"pid":1,"tid":1,"args":{"req":0}}
],"otherData":{"mapping":{"method":"kvm-vcpu-tsc-offset","accuracy_ns":0.0},"matched":1,"dropped":0,
"stages":[{"stage":"GuestKick","count":1,"mean_us":1.0,"p50_us":1.0,"p99_us":1.0,"share":0.032258},
{"stage":"BackendComplete","count":1,"mean_us":29.0,"p50_us":29.0,"p99_us":29.0,"share":0.935484},
{"stage":"GuestComplete","count":1,"mean_us":1.0,"p50_us":1.0,"p99_us":1.0,"share":0.032258}],
"error_bounds_ns":[-250.0,1200.0],
"total":{"stage":"total","count":1,"mean_us":31.0,"p50_us":31.0,"p99_us":31.0,"share":1.0}}}"#;

    #[test]
    fn reads_the_vmm_summary() {
        let t = read_trace("dataplane", SAMPLE).unwrap();
        assert_eq!(t.stages.len(), 3);
        assert_eq!(t.stages[1].stage, "BackendComplete");
        assert_eq!(t.total.as_ref().unwrap().mean_us, 31.0);
        assert_eq!(
            (t.matched, t.mapping.as_str(), t.accuracy_ns),
            (1, "kvm-vcpu-tsc-offset", Some(0.0))
        );
        assert_eq!(t.error_bounds_ns, Some((-250.0, 1200.0)));
        let shares: f64 = t.stages.iter().map(|s| s.share).sum();
        assert!((shares - 1.0).abs() < 1e-3);
        let text = table(&[t]);
        assert!(
            text.contains("BackendComplete") && text.contains("93.5%") && text.contains("31.00"),
            "{text}"
        );
    }

    #[test]
    fn rejects_gaps_and_negative_slices() {
        let gap = SAMPLE.replace("\"ts\":30.000", "\"ts\":30.500");
        assert!(read_trace("x", &gap)
            .unwrap_err()
            .contains("previous ended"));
        let neg = SAMPLE.replace("\"dur\":29.000", "\"dur\":-1.000");
        assert!(read_trace("x", &neg).unwrap_err().contains("negative"));
        assert!(read_trace("x", "{").is_err());
    }

    #[test]
    fn cmdline_asks_the_guest_to_trace() {
        let c = CASES.iter().find(|c| c.name == "randread-4k-qd1").unwrap();
        assert_eq!(
            cmdline(c, 2),
            "tests=none bench=randread bs=4096 qd=1 secs=2 completion=poll trace=1"
        );
    }
}
