//! `cargo xtask bench`: the talk's experiment. Every system runs every workload on the same
//! image, interleaved, several times; the table, `results.json` and `chart.svg` show each
//! system against bare metal and QEMU.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::hostbench::{self, Workload};
use crate::report::GuestReport;
use crate::runner::{qemu_command, run_guest, Peer};
use crate::stats::{median, spread_pct, Summary};

/// A named workload of the bench.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Name used in `results.json`.
    pub name: &'static str,
    /// What the I/O looks like.
    pub workload: Workload,
    /// Image in /dev/shm, buffered on every side: isolates the virtualization overhead.
    pub shm: bool,
}

/// The workloads, in table order.
pub const CASES: [Case; 5] = [
    Case {
        name: "randread-4k-qd1",
        workload: Workload {
            pattern: "randread",
            bs: 4096,
            qd: 1,
        },
        shm: false,
    },
    Case {
        name: "randread-4k-qd32",
        workload: Workload {
            pattern: "randread",
            bs: 4096,
            qd: 32,
        },
        shm: false,
    },
    Case {
        name: "randwrite-4k-qd1",
        workload: Workload {
            pattern: "randwrite",
            bs: 4096,
            qd: 1,
        },
        shm: false,
    },
    Case {
        name: "seqread-128k-qd8",
        workload: Workload {
            pattern: "seqread",
            bs: 131072,
            qd: 8,
        },
        shm: false,
    },
    Case {
        name: "shm-randread-4k-qd1",
        workload: Workload {
            pattern: "randread",
            bs: 4096,
            qd: 1,
        },
        shm: true,
    },
];

/// Every system, in table order.
/// `vmm-workers-traced` is `vmm-workers` with `--trace` (and the guest's `trace=1`): the
/// price of tracing, shown beside the untraced run.
pub const SYSTEMS: [&str; 8] = [
    "bare-metal-fio",
    "bare-metal",
    "vmm-vcpu",
    "vmm-iothread",
    "vmm-dataplane",
    "vmm-workers",
    "vmm-workers-traced",
    "qemu-iothread",
];

/// What a bench run needs to know.
pub struct Setup {
    /// The guest ELF.
    pub guest: PathBuf,
    /// Our VMM binary.
    pub vmm: PathBuf,
    /// QEMU, when installed.
    pub qemu: Option<PathBuf>,
    /// fio, when installed.
    pub fio: Option<PathBuf>,
    /// Image on the root disk (O_DIRECT everywhere).
    pub disk_image: PathBuf,
    /// Image in /dev/shm (buffered everywhere).
    pub shm_image: PathBuf,
    /// Seconds per point.
    pub secs: u32,
    /// Repeats per point.
    pub repeats: u32,
    /// Which systems to run.
    pub systems: Vec<&'static str>,
}

fn guest_bench_cmdline(w: &Workload, secs: u32) -> String {
    format!(
        "tests=none bench={} bs={} qd={} secs={secs} completion=poll",
        w.pattern, w.bs, w.qd
    )
}

/// Reads the `RESULT` line of a guest run.
pub fn parse_guest_result(stdout: &str) -> Result<Summary, String> {
    let report = GuestReport::parse(stdout);
    let line = report.results.last().ok_or_else(|| {
        format!(
            "the guest printed no RESULT line; its output ended with:\n{}",
            tail(stdout)
        )
    })?;
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("bad RESULT json ({e}): {line}"))?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("RESULT lacks {k}: {line}"))
    };
    Ok(Summary {
        iops: num("iops")?,
        mib_s: num("mib_s")?,
        lat_p50_us: num("lat_p50_us")?,
        lat_p99_us: num("lat_p99_us")?,
    })
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Reads fio's `--output-format=json`.
pub fn parse_fio(json_text: &str, write: bool) -> Result<Summary, String> {
    let start = json_text.find('{').ok_or("fio printed no JSON")?;
    let v: Value =
        serde_json::from_str(&json_text[start..]).map_err(|e| format!("bad fio JSON: {e}"))?;
    let side = &v["jobs"][0][if write { "write" } else { "read" }];
    let pct = |p: &str| {
        side["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1000.0)
    };
    Ok(Summary {
        iops: side["iops"].as_f64().ok_or("fio JSON lacks iops")?,
        mib_s: side["bw_bytes"].as_f64().ok_or("fio JSON lacks bw_bytes")? / (1 << 20) as f64,
        lat_p50_us: pct("50.000000").ok_or("fio JSON lacks the p50 latency")?,
        lat_p99_us: pct("99.000000").ok_or("fio JSON lacks the p99 latency")?,
    })
}

fn run_fio(fio: &Path, image: &Path, case: &Case, secs: u32) -> Result<Summary, String> {
    let w = &case.workload;
    let out = Command::new(fio)
        .arg("--name=bench")
        .arg(format!("--filename={}", image.display()))
        .arg(format!("--rw={}", w.pattern.replace("seq", "")))
        .arg(format!("--bs={}", w.bs))
        .arg(format!("--iodepth={}", w.qd))
        .arg("--ioengine=io_uring")
        .arg(format!("--direct={}", u8::from(!case.shm)))
        .arg(format!("--runtime={secs}"))
        .args(["--time_based", "--output-format=json", "--randrepeat=0"])
        .output()
        .map_err(|e| format!("cannot run fio: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "fio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_fio(
        &String::from_utf8_lossy(&out.stdout),
        w.pattern.ends_with("write"),
    )
}

fn run_vmm(
    setup: &Setup,
    mode: &str,
    image: &Path,
    case: &Case,
    traced: bool,
) -> Result<Summary, String> {
    let mut cmd = Command::new(&setup.vmm);
    cmd.arg("--kernel")
        .arg(&setup.guest)
        .args(["--memory", "256M", "--io-mode", mode]);
    let mut cmdline = guest_bench_cmdline(&case.workload, setup.secs);
    let trace_file =
        std::env::temp_dir().join(format!("vmm-bench-trace-{}.json", std::process::id()));
    if traced {
        cmdline.push_str(" trace=1");
        cmd.arg("--trace").arg(&trace_file);
    }
    cmd.args(["--cmdline", &cmdline]);
    cmd.arg("--disk").arg(format!(
        "path={},direct={},engine=io_uring,serial=bench",
        image.display(),
        if case.shm { "off" } else { "on" }
    ));
    let out = run_guest(
        cmd,
        Peer::Vmm,
        Duration::from_secs(u64::from(setup.secs) + 60),
        false,
    );
    if traced {
        let _ = std::fs::remove_file(&trace_file);
    }
    let out = out?;
    if out.guest_code != Some(0) {
        return Err(format!(
            "vmm --io-mode {mode} ended with {:?}:\n{}",
            out.guest_code,
            tail(&out.stdout)
        ));
    }
    parse_guest_result(&out.stdout)
}

fn run_qemu(qemu: &Path, setup: &Setup, image: &Path, case: &Case) -> Result<Summary, String> {
    let cache = if case.shm { "writeback" } else { "none" };
    let cmdline = guest_bench_cmdline(&case.workload, setup.secs);
    let cmd = qemu_command(qemu, &setup.guest, &cmdline, image, cache, "bench");
    let out = run_guest(
        cmd,
        Peer::Qemu,
        Duration::from_secs(u64::from(setup.secs) + 60),
        false,
    )?;
    if out.guest_code != Some(0) {
        return Err(format!(
            "QEMU run ended with {:?}:\n{}",
            out.guest_code,
            tail(&out.stdout)
        ));
    }
    parse_guest_result(&out.stdout)
}

fn run_point(setup: &Setup, system: &str, case: &Case) -> Result<Summary, String> {
    let image = if case.shm {
        &setup.shm_image
    } else {
        &setup.disk_image
    };
    match system {
        "bare-metal-fio" => run_fio(
            setup.fio.as_deref().ok_or("fio is not installed")?,
            image,
            case,
            setup.secs,
        ),
        "bare-metal" => hostbench::run(image, !case.shm, case.workload, f64::from(setup.secs)),
        "qemu-iothread" => run_qemu(
            setup.qemu.as_deref().ok_or("QEMU is not installed")?,
            setup,
            image,
            case,
        ),
        "vmm-workers-traced" => run_vmm(setup, "workers", image, case, true),
        vmm => run_vmm(setup, vmm.trim_start_matches("vmm-"), image, case, false),
    }
}

/// All runs of one (workload, system) point.
#[derive(Debug, Default, Clone)]
pub struct Point {
    /// One summary per repeat.
    pub runs: Vec<Summary>,
}

impl Point {
    /// Median of each figure over the repeats.
    pub fn median(&self) -> Summary {
        let pick = |f: fn(&Summary) -> f64| median(&self.runs.iter().map(f).collect::<Vec<_>>());
        Summary {
            iops: pick(|s| s.iops),
            mib_s: pick(|s| s.mib_s),
            lat_p50_us: pick(|s| s.lat_p50_us),
            lat_p99_us: pick(|s| s.lat_p99_us),
        }
    }

    /// Spread of the IOPS over the repeats, in percent of the median.
    pub fn spread(&self) -> f64 {
        spread_pct(&self.runs.iter().map(|s| s.iops).collect::<Vec<_>>())
    }
}

/// Results keyed by (workload, system), plus the systems that could not run and why.
#[derive(Debug, Default)]
pub struct Results {
    /// Collected points.
    pub points: BTreeMap<(String, String), Point>,
    /// System -> reason it was left out.
    pub skipped: BTreeMap<String, String>,
}

/// Runs the whole bench: repeats outermost so every system sees the same machine state.
pub fn run_all(setup: &Setup) -> Results {
    let mut results = Results::default();
    let total = setup.repeats as usize * CASES.len() * setup.systems.len();
    let mut n = 0;
    for _ in 0..setup.repeats {
        for case in &CASES {
            for &system in &setup.systems {
                n += 1;
                if results.skipped.contains_key(system) {
                    continue;
                }
                print!("\r[{n}/{total}] {:<22} {:<20} ", case.name, system);
                let _ = std::io::Write::flush(&mut std::io::stdout());
                match run_point(setup, system, case) {
                    Ok(s) => {
                        print!("{:>9.0} IOPS {:>8.1} us p50", s.iops, s.lat_p50_us);
                        results
                            .points
                            .entry((case.name.into(), system.into()))
                            .or_default()
                            .runs
                            .push(s);
                    }
                    Err(e) => {
                        println!("\n{system} left out: {e}");
                        results
                            .skipped
                            .insert(system.into(), e.lines().next().unwrap_or("").to_string());
                    }
                }
            }
        }
    }
    println!();
    results
}

fn baseline(results: &Results, workload: &str) -> Option<Summary> {
    ["bare-metal-fio", "bare-metal"]
        .iter()
        .find_map(|s| results.points.get(&(workload.to_string(), s.to_string())))
        .map(Point::median)
}

/// The terminal table.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<20} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "workload", "system", "IOPS", "MiB/s", "p50 us", "p99 us", "% bare", "x QEMU", "spread"
    );
    for case in &CASES {
        let base = baseline(results, case.name);
        let qemu = results
            .points
            .get(&(case.name.to_string(), "qemu-iothread".to_string()))
            .map(Point::median);
        for system in SYSTEMS {
            let Some(point) = results
                .points
                .get(&(case.name.to_string(), system.to_string()))
            else {
                continue;
            };
            let m = point.median();
            let pct = base
                .map(|b| format!("{:.0}%", 100.0 * m.iops / b.iops))
                .unwrap_or_else(|| "-".into());
            let vs_qemu = qemu
                .map(|q| format!("{:.2}", m.iops / q.iops))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<22} {:<20} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>7} {:>6.0}%",
                case.name,
                system,
                m.iops,
                m.mib_s,
                m.lat_p50_us,
                m.lat_p99_us,
                pct,
                vs_qemu,
                point.spread()
            );
        }
    }
    for (system, why) in &results.skipped {
        let _ = writeln!(out, "skipped {system}: {why}");
    }
    out
}

/// `results.json`.
pub fn to_json(results: &Results) -> Value {
    let runs: Vec<Value> = results
        .points
        .iter()
        .map(|((workload, system), p)| {
            let m = p.median();
            json!({"workload": workload, "system": system, "iops": m.iops, "mib_s": m.mib_s,
                   "lat_p50_us": m.lat_p50_us, "lat_p99_us": m.lat_p99_us,
                   "repeats": p.runs.len(), "spread_pct": p.spread()})
        })
        .collect();
    let skipped: Vec<Value> = results
        .skipped
        .iter()
        .map(|(s, why)| json!({"system": s, "reason": why}))
        .collect();
    json!({"runs": runs, "skipped": skipped})
}

const COLORS: [&str; 8] = [
    "#444444", "#888888", "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#aec7e8", "#9467bd",
];

/// `chart.svg`: grouped bars per workload, IOPS as a percentage of bare metal.
pub fn chart_svg(results: &Results) -> String {
    let (w, h, left, top, plot_h) = (980.0, 420.0, 60.0, 40.0, 300.0);
    let group_w = (w - left - 20.0) / CASES.len() as f64;
    let bar_w = (group_w - 20.0) / SYSTEMS.len() as f64;
    let max_pct = results
        .points
        .iter()
        .filter_map(|((wl, _), p)| baseline(results, wl).map(|b| 100.0 * p.median().iops / b.iops))
        .fold(100.0f64, f64::max)
        .ceil();
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let _ = writeln!(s, "<text x=\"{left}\" y=\"20\" font-size=\"14\">IOPS as % of bare metal (higher is better)</text>");
    for tick in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let y = top + plot_h * (1.0 - tick / max_pct);
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick}%</text>", w - 20.0, left - 5.0, y + 4.0);
    }
    for (gi, case) in CASES.iter().enumerate() {
        let gx = left + gi as f64 * group_w + 10.0;
        let base = baseline(results, case.name);
        for (si, system) in SYSTEMS.iter().enumerate() {
            let (Some(b), Some(p)) = (
                base,
                results
                    .points
                    .get(&(case.name.to_string(), system.to_string())),
            ) else {
                continue;
            };
            let pct = 100.0 * p.median().iops / b.iops;
            let bh = plot_h * pct / max_pct;
            let x = gx + si as f64 * bar_w;
            let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{system}: {pct:.0}%</title></rect>", top + plot_h - bh, bar_w - 2.0, COLORS[si]);
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + group_w / 2.0 - 10.0,
            top + plot_h + 16.0,
            case.name
        );
    }
    for (si, system) in SYSTEMS.iter().enumerate() {
        let x = left + si as f64 * 112.0;
        let y = h - 30.0;
        let _ = writeln!(s, "<rect x=\"{x}\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{system}</text>", COLORS[si], x + 14.0, y + 9.0);
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(iops: f64) -> Summary {
        Summary {
            iops,
            mib_s: iops * 4096.0 / (1 << 20) as f64,
            lat_p50_us: 1e6 / iops,
            lat_p99_us: 2e6 / iops,
        }
    }

    fn sample() -> Results {
        let mut r = Results::default();
        for (system, iops) in [
            ("bare-metal", 20000.0),
            ("vmm-workers", 18000.0),
            ("qemu-iothread", 12000.0),
        ] {
            r.points.insert(
                ("randread-4k-qd1".into(), system.into()),
                Point {
                    runs: vec![summary(iops), summary(iops * 1.1), summary(iops * 0.9)],
                },
            );
        }
        r.skipped
            .insert("bare-metal-fio".into(), "fio is not installed".into());
        r
    }

    #[test]
    fn guest_result_line_parses() {
        let out = "TEST x PASS\nRESULT {\"workload\":\"randread\",\"bs\":4096,\"qd\":1,\"iops\":1234.5,\"mib_s\":4.8,\"lat_p50_us\":40.1,\"lat_p99_us\":90.0,\"lat_max_us\":300}\n";
        let s = parse_guest_result(out).unwrap();
        assert_eq!(s.iops, 1234.5);
        assert_eq!(s.lat_p99_us, 90.0);
        assert!(parse_guest_result("no result here").is_err());
        assert!(parse_guest_result("RESULT {\"iops\": 1}").is_err());
    }

    #[test]
    fn fio_json_parses() {
        let text = r#"note: some warning
{"jobs":[{"read":{"iops":19000.5,"bw_bytes":77826048,"clat_ns":{"percentile":{"50.000000":36000,"99.000000":80000}}},"write":{"iops":0}}]}"#;
        let s = parse_fio(text, false).unwrap();
        assert_eq!(s.iops, 19000.5);
        assert!((s.mib_s - 74.22).abs() < 0.01);
        assert_eq!(s.lat_p50_us, 36.0);
        assert!(parse_fio(text, true).is_err());
    }

    #[test]
    fn table_json_and_chart_agree() {
        let r = sample();
        let t = table(&r);
        assert!(
            t.contains("vmm-workers") && t.contains("90%") && t.contains("1.50"),
            "{t}"
        );
        assert!(t.contains("skipped bare-metal-fio"));
        let j = to_json(&r);
        let runs = j["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 3);
        let w = runs.iter().find(|x| x["system"] == "vmm-workers").unwrap();
        assert_eq!(w["iops"], 18000.0);
        assert_eq!(w["repeats"], 3);
        assert_eq!(j["skipped"][0]["system"], "bare-metal-fio");
        let svg = chart_svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3 + SYSTEMS.len());
    }
}
