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
use crate::nbd_server::{NbdServer, NbdServerKind};
use crate::report::{tail, GuestReport};
use crate::runner::{qemu_command, run_guest, run_guest_counting, thread_cpu, Peer, RunOutput};
use crate::stats::{cpu_us_per_io, median, spread_pct, Summary};
use crate::vhost_user;

/// Which guest driver behaviour a workload uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Our driver as it is: every feature offered, kicks only when the device asks.
    Full,
    /// A simple driver's behaviour (`features=minimal kick=always`): VERSION_1 only, a kick
    /// after every request.
    Simple,
}

/// A named workload of the bench.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Name used in `results.json`.
    pub name: &'static str,
    /// What the I/O looks like.
    pub workload: Workload,
    /// Image in /dev/shm, buffered on every side: isolates the virtualization overhead.
    pub shm: bool,
    /// How the guest drives the disk.
    pub driver: Driver,
    /// Part of `--quick`: one case per code path of the bench (QD32, writes, large
    /// requests, the shm image, the simple driver), so CI stays short.
    pub quick: bool,
}

const fn case(name: &'static str, pattern: &'static str, bs: u32, qd: u32) -> Case {
    Case {
        name,
        workload: Workload { pattern, bs, qd },
        shm: false,
        driver: Driver::Full,
        quick: false,
    }
}

impl Case {
    const fn on_shm(self) -> Self {
        Case { shm: true, ..self }
    }

    const fn simple(self) -> Self {
        Case {
            driver: Driver::Simple,
            ..self
        }
    }

    const fn in_quick(self) -> Self {
        Case {
            quick: true,
            ..self
        }
    }

    /// The guest's command line for this case.
    pub fn guest_cmdline(&self, secs: u32) -> String {
        let w = &self.workload;
        let mut line = format!(
            "tests=none bench={} bs={} qd={} secs={secs} completion=poll",
            w.pattern, w.bs, w.qd
        );
        if self.driver == Driver::Simple {
            line.push_str(" features=minimal kick=always");
        }
        line
    }

    /// The case whose bare-metal figures stand for this one: itself, or for a simple-driver
    /// case the plain case of the same I/O (bare metal has no guest driver to simplify).
    pub fn bare_metal_case(&self) -> &'static Case {
        CASES
            .iter()
            .find(|c| c.driver == Driver::Full && c.workload == self.workload && c.shm == self.shm)
            .expect("every simple case has a plain twin in CASES")
    }
}

/// The workloads, in table order.
pub const CASES: [Case; 7] = [
    case("randread-4k-qd1", "randread", 4096, 1),
    case("randread-4k-qd32", "randread", 4096, 32).in_quick(),
    case("randwrite-4k-qd1", "randwrite", 4096, 1).in_quick(),
    case("seqread-128k-qd8", "seqread", 131072, 8).in_quick(),
    case("shm-randread-4k-qd1", "randread", 4096, 1)
        .on_shm()
        .in_quick(),
    case("simple-randread-4k-qd1", "randread", 4096, 1)
        .simple()
        .in_quick(),
    case("simple-randread-4k-qd32", "randread", 4096, 32).simple(),
];

/// The workloads of a run: all of them, or for `--quick` the quick ones.
pub fn cases(quick: bool) -> Vec<&'static Case> {
    CASES.iter().filter(|c| !quick || c.quick).collect()
}

/// fio on the host, same image and workload.
pub const BARE_METAL_FIO: &str = "bare-metal-fio";
/// The project's own runner on the host (`hostbench`), same engine as the VMM.
pub const BARE_METAL: &str = "bare-metal";
/// QEMU with an iothread and io_uring (`runner::qemu_command`).
pub const QEMU: &str = "qemu-iothread";
/// QEMU as the front end of our vhost-user-blk back end (`vhost-user-blk`, dataplane).
pub const QEMU_VHOST_USER: &str = "qemu-vhost-user";
/// QEMU on qemu-storage-daemon's vhost-user-blk export (an iothread, io_uring).
pub const QEMU_VHOST_QSD: &str = "qemu-vhost-qsd";
/// The NBD group: the image served by qemu-storage-daemon on a Unix socket (started for
/// each point, killed after it), read by fio's `nbd` engine on the host...
pub const NBD_FIO: &str = "nbd-fio";
/// ...by our VMM's NBD client...
pub const NBD_VMM: &str = "vmm-nbd";
/// ...by our VMM with its vCPU and I/O threads pinned to different cores
/// (`--cpu-affinity vcpu=0,io=1`), which keeps the server's and the VMM's wake-ups off the
/// core the polling vCPU holds...
pub const NBD_VMM_PINNED: &str = "vmm-nbd-pinned";
/// ...and by QEMU's (`-drive file=nbd+unix://...`).
pub const NBD_QEMU: &str = "qemu-nbd";

/// One way of running our VMM in the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmSystem {
    /// System name in the table and `results.json`.
    pub name: &'static str,
    /// Options added to the VMM's command line.
    pub args: &'static [&'static str],
    /// Keys added to the `--disk` option (each starting with `,`).
    pub disk: &'static str,
    /// Run with `--trace` (and the guest's `trace=1`).
    pub traced: bool,
    /// One change of the default turned off, to measure that change alone: run only when
    /// named with `--systems`.
    pub ablation: bool,
}

impl VmmSystem {
    const fn new(name: &'static str, args: &'static [&'static str]) -> Self {
        VmmSystem {
            name,
            args,
            disk: "",
            traced: false,
            ablation: false,
        }
    }

    /// The default VMM with one change turned off, through VMM options `args` and `--disk`
    /// keys `disk`.
    const fn without(
        name: &'static str,
        args: &'static [&'static str],
        disk: &'static str,
    ) -> Self {
        VmmSystem {
            name,
            args,
            disk,
            traced: false,
            ablation: true,
        }
    }

    const fn traced(self) -> Self {
        VmmSystem {
            traced: true,
            ..self
        }
    }
}

/// Our VMM's systems, in table order: name -> the VMM options it adds. A variant is one
/// more line. `vmm-default` adds nothing: what a user gets without tuning.
/// `vmm-workers-traced` is `vmm-workers` with tracing: the price of tracing, shown beside
/// the untraced run.
/// `vmm-pinned` is the default with the vCPU and the I/O threads on different cores (this
/// bench's hosts have two). The `vmm-default-*` systems each turn one change of the default
/// off (every request through a pool of two workers as before, polling across the disk's
/// latency, request merging, fixed buffers), so that `--systems vmm-default,vmm-default-nomerge` measures that change alone.
pub const VMM_SYSTEMS: &[VmmSystem] = &[
    VmmSystem::new("vmm-default", &[]),
    VmmSystem::new("vmm-pinned", &["--cpu-affinity", "vcpu=0,io=1"]),
    VmmSystem::new("vmm-vcpu", &["--io-mode", "vcpu"]),
    VmmSystem::new("vmm-iothread", &["--io-mode", "iothread"]),
    VmmSystem::new("vmm-dataplane", &["--io-mode", "dataplane"]),
    VmmSystem::new("vmm-workers", &["--io-mode", "workers"]),
    VmmSystem::new("vmm-workers-traced", &["--io-mode", "workers"]).traced(),
    VmmSystem::without(
        "vmm-default-pool",
        &["--workers", "2", "--handoff-depth", "0"],
        "",
    ),
    VmmSystem::without("vmm-default-noflight", &["--poll-in-flight", "off"], ""),
    VmmSystem::without("vmm-default-nomerge", &[], ",merge=off"),
    VmmSystem::without("vmm-default-nofixed", &[], ",fixed-buffers=off"),
];

/// The systems a run without `--systems` measures: all but the one-change-off variants and
/// the NBD group (`--systems nbd-fio,vmm-nbd,vmm-nbd-pinned,qemu-nbd`), which would take the full run past
/// half an hour.
pub fn default_system_names() -> Vec<&'static str> {
    system_names()
        .into_iter()
        .filter(|s| !VMM_SYSTEMS.iter().any(|v| v.name == *s && v.ablation))
        .filter(|s| ![NBD_FIO, NBD_VMM, NBD_VMM_PINNED, NBD_QEMU].contains(s))
        .collect()
}

/// Every system, in table order: bare metal, our VMM's, QEMU.
pub fn system_names() -> Vec<&'static str> {
    let mut names = vec![BARE_METAL_FIO, BARE_METAL];
    names.extend(VMM_SYSTEMS.iter().map(|v| v.name));
    names.extend([QEMU, QEMU_VHOST_USER, QEMU_VHOST_QSD]);
    names.extend([NBD_FIO, NBD_VMM, NBD_VMM_PINNED, NBD_QEMU]);
    names
}

/// Whether `system` boots QEMU (with its firmware: seconds of start-up).
pub fn is_qemu(system: &str) -> bool {
    [QEMU, QEMU_VHOST_USER, QEMU_VHOST_QSD, NBD_QEMU].contains(&system)
}

/// Whether `system` is one of our VMM's.
pub fn is_vmm(system: &str) -> bool {
    system == NBD_VMM || system == NBD_VMM_PINNED || VMM_SYSTEMS.iter().any(|v| v.name == system)
}

/// Whether `system` runs on the host without a guest.
pub fn is_bare_metal(system: &str) -> bool {
    system == BARE_METAL_FIO || system == BARE_METAL || system == NBD_FIO
}

/// The (workload, system) points of one repeat, in run order. Bare metal has no guest
/// driver to simplify: for a simple-driver case it runs the plain twin instead, once, and
/// not at all when the twin is part of the run anyway.
pub fn plan<'a>(cases: &[&'static Case], systems: &[&'a str]) -> Vec<(&'static Case, &'a str)> {
    let mut points: Vec<(&'static Case, &'a str)> = Vec::new();
    for &case in cases {
        for &system in systems {
            let case = if is_bare_metal(system) {
                case.bare_metal_case()
            } else {
                case
            };
            if !points
                .iter()
                .any(|(c, s)| c.name == case.name && *s == system)
            {
                points.push((case, system));
            }
        }
    }
    points
}

/// Seconds the points of `plan` take, `repeats` times `secs` each, counting start-up and
/// teardown: QEMU boots through its firmware, a few seconds; the rest start in about one.
pub fn estimated_secs(plan: &[(&Case, &str)], repeats: u32, secs: u32) -> u64 {
    let per_repeat: u64 = plan
        .iter()
        .map(|(_, s)| u64::from(secs) + if is_qemu(s) { 4 } else { 1 })
        .sum();
    per_repeat * u64::from(repeats)
}

/// What a bench run needs to know.
pub struct Setup {
    /// The guest ELF.
    pub guest: PathBuf,
    /// Our VMM binary.
    pub vmm: PathBuf,
    /// QEMU, when installed.
    pub qemu: Option<PathBuf>,
    /// Our vhost-user-blk back end (built when a run measures `qemu-vhost-user`).
    pub vhost_user_blk: Option<PathBuf>,
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
    /// Which workloads to run.
    pub cases: Vec<&'static Case>,
    /// Which systems to run.
    pub systems: Vec<&'static str>,
}

/// Reads the `RESULT` line of a guest run.
pub fn parse_guest_result(stdout: &str) -> Result<Summary, String> {
    let report = GuestReport::parse(stdout);
    let line = report.results.last().ok_or_else(|| {
        format!(
            "the guest printed no RESULT line; its output ended with:\n{}",
            tail(stdout, 10)
        )
    })?;
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("bad RESULT json ({e}): {line}"))?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("RESULT lacks {k}: {line}"))
    };
    let iops = num("iops")?;
    // A guest without the count: the rate over the requested seconds.
    let ios = match v["ios"].as_u64() {
        Some(n) => n,
        None => (iops * num("secs")?).round() as u64,
    };
    Ok(Summary {
        iops,
        mib_s: num("mib_s")?,
        lat_p50_us: num("lat_p50_us")?,
        lat_p99_us: num("lat_p99_us")?,
        ios,
        cpu_us_per_io: None,
    })
}

/// Reads fio's `--output-format=json`, with fio's own CPU time per I/O (its `usr_cpu` and
/// `sys_cpu` are percentages of the job's runtime).
pub fn parse_fio(json_text: &str, write: bool) -> Result<Summary, String> {
    let start = json_text.find('{').ok_or("fio printed no JSON")?;
    let v: Value =
        serde_json::from_str(&json_text[start..]).map_err(|e| format!("bad fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    let side = &job[if write { "write" } else { "read" }];
    let pct = |p: &str| {
        side["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| ns / 1000.0)
    };
    let ios = side["total_ios"]
        .as_u64()
        .ok_or("fio JSON lacks total_ios")?;
    let runtime_ms = job["job_runtime"]
        .as_f64()
        .or_else(|| side["runtime"].as_f64());
    let cpu = match (job["usr_cpu"].as_f64(), job["sys_cpu"].as_f64(), runtime_ms) {
        (Some(usr), Some(sys), Some(ms)) => cpu_us_per_io(
            Duration::from_secs_f64((usr + sys) / 100.0 * ms / 1000.0),
            ios,
        ),
        _ => None,
    };
    Ok(Summary {
        iops: side["iops"].as_f64().ok_or("fio JSON lacks iops")?,
        mib_s: side["bw_bytes"].as_f64().ok_or("fio JSON lacks bw_bytes")? / (1 << 20) as f64,
        lat_p50_us: pct("50.000000").ok_or("fio JSON lacks the p50 latency")?,
        lat_p99_us: pct("99.000000").ok_or("fio JSON lacks the p99 latency")?,
        ios,
        cpu_us_per_io: cpu,
    })
}

/// fio on `image`, or with `nbd` on that NBD URI through fio's `nbd` engine.
fn run_fio(
    fio: &Path,
    image: &Path,
    case: &Case,
    secs: u32,
    nbd: Option<&str>,
) -> Result<Summary, String> {
    let w = &case.workload;
    let mut cmd = Command::new(fio);
    match nbd {
        Some(uri) => cmd.args(["--ioengine=nbd", &format!("--uri={uri}")]),
        None => cmd
            .arg(format!("--filename={}", image.display()))
            .arg("--ioengine=io_uring")
            .arg(format!("--direct={}", u8::from(!case.shm))),
    };
    let out = cmd
        .arg("--name=bench")
        .arg(format!("--rw={}", w.pattern.replace("seq", "")))
        .arg(format!("--bs={}", w.bs))
        .arg(format!("--iodepth={}", w.qd))
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
    // fio's nbd engine prints a line before its JSON.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.find('{').map_or(&*text, |i| &text[i..]);
    parse_fio(json, w.pattern.ends_with("write"))
}

/// Our runner on the host, with the CPU time of the thread that runs it (the runner is
/// single-threaded; io_uring's kernel work done elsewhere is not counted, as for fio).
fn run_bare_metal(image: &Path, case: &Case, secs: u32) -> Result<Summary, String> {
    let before = thread_cpu();
    let mut s = hostbench::run(image, !case.shm, case.workload, f64::from(secs))?;
    s.cpu_us_per_io = before
        .zip(thread_cpu())
        .and_then(|(a, b)| cpu_us_per_io(b.saturating_sub(a), s.ios));
    Ok(s)
}

/// The guest's figures with the CPU time of the process that ran it: over the benchmark
/// itself when the start and RESULT lines were seen, else over the whole run.
fn guest_summary(out: &RunOutput) -> Result<Summary, String> {
    let mut s = parse_guest_result(&out.stdout)?;
    s.cpu_us_per_io = out
        .bench_cpu
        .or(out.cpu)
        .and_then(|cpu| cpu_us_per_io(cpu, s.ios));
    Ok(s)
}

/// The start of a `--disk` option: the NBD URI `nbd` if given, else `image`, with O_DIRECT
/// unless the case runs from the page cache (`shm`).
pub fn disk_target(image: &Path, nbd: Option<&str>, shm: bool) -> String {
    match nbd {
        Some(uri) => format!("uri={uri}"),
        None => format!(
            "path={},direct={}",
            image.display(),
            if shm { "off" } else { "on" }
        ),
    }
}

/// Our VMM as `vmm` says, on `image`, or with `nbd` on that NBD URI.
fn run_vmm(
    setup: &Setup,
    vmm: &VmmSystem,
    image: &Path,
    case: &Case,
    nbd: Option<&str>,
) -> Result<Summary, String> {
    let mut cmd = Command::new(&setup.vmm);
    cmd.arg("--kernel")
        .arg(&setup.guest)
        .args(["--memory", "256M"])
        .args(vmm.args);
    let mut cmdline = case.guest_cmdline(setup.secs);
    let trace_file =
        std::env::temp_dir().join(format!("vmm-bench-trace-{}.json", std::process::id()));
    if vmm.traced {
        cmdline.push_str(" trace=1");
        cmd.arg("--trace").arg(&trace_file);
    }
    cmd.args(["--cmdline", &cmdline]);
    cmd.arg("--disk").arg(format!(
        "{},engine=io_uring,serial=bench{}",
        disk_target(image, nbd, case.shm),
        vmm.disk
    ));
    let out = run_guest(
        cmd,
        Peer::Vmm,
        Duration::from_secs(u64::from(setup.secs) + 60),
        false,
    );
    if vmm.traced {
        let _ = std::fs::remove_file(&trace_file);
    }
    let out = out?;
    if out.guest_code != Some(0) {
        return Err(format!(
            "vmm {} ended with {:?}:\n{}",
            vmm.args.join(" "),
            out.guest_code,
            tail(&out.stdout, 10)
        ));
    }
    guest_summary(&out)
}

/// QEMU on `image` (a path, or an NBD URI).
fn run_qemu(qemu: &Path, setup: &Setup, image: &Path, case: &Case) -> Result<Summary, String> {
    let nbd = image.to_string_lossy().starts_with("nbd");
    let cache = if case.shm && !nbd {
        "writeback"
    } else {
        "none"
    };
    let cmdline = case.guest_cmdline(setup.secs);
    let cmd = qemu_command(qemu, &setup.guest, &cmdline, image, cache, "bench");
    qemu_summary(run_guest_counting(
        cmd,
        Peer::Qemu,
        Duration::from_secs(u64::from(setup.secs) + 60),
        false,
        &[],
    )?)
}

/// The summary of a QEMU run that exited cleanly.
fn qemu_summary(out: RunOutput) -> Result<Summary, String> {
    if out.guest_code != Some(0) {
        return Err(format!(
            "QEMU run ended with {:?}:\n{}",
            out.guest_code,
            tail(&out.stdout, 10)
        ));
    }
    guest_summary(&out)
}

/// QEMU as a vhost-user-blk front end, its back end (ours, or qemu-storage-daemon's
/// `qsd`) started for this point alone; the host CPU per I/O counts both processes.
fn run_qemu_vhost(
    qemu: &Path,
    setup: &Setup,
    image: &Path,
    case: &Case,
    qsd: bool,
) -> Result<Summary, String> {
    let socket = std::env::temp_dir().join(format!("xtask-bench-vu-{}.sock", std::process::id()));
    let mut backend = if qsd {
        vhost_user::qsd_command(image, &socket, !case.shm)
    } else {
        let binary = setup
            .vhost_user_blk
            .as_deref()
            .ok_or("vhost-user-blk was not built")?;
        let mut cmd = Command::new(binary);
        cmd.arg("--socket").arg(&socket).arg("--disk").arg(format!(
            "path={},direct={},engine=io_uring,serial=bench",
            image.display(),
            if case.shm { "off" } else { "on" }
        ));
        cmd
    };
    backend.stderr(std::process::Stdio::null());
    let server = vhost_user::Backend::spawn(backend, &socket)?;
    let cmdline = case.guest_cmdline(setup.secs);
    let cmd = vhost_user::qemu_vhost_user_command(qemu, &setup.guest, &cmdline, &socket, 1);
    let out = run_guest_counting(
        cmd,
        Peer::Qemu,
        Duration::from_secs(u64::from(setup.secs) + 60),
        false,
        &[server.pid()],
    );
    drop(server);
    qemu_summary(out?)
}

fn run_point(setup: &Setup, system: &str, case: &Case) -> Result<Summary, String> {
    let image = if case.shm {
        &setup.shm_image
    } else {
        &setup.disk_image
    };
    if [NBD_FIO, NBD_VMM, NBD_VMM_PINNED, NBD_QEMU].contains(&system) {
        return run_nbd_point(setup, system, case, image);
    }
    match system {
        BARE_METAL_FIO => run_fio(
            setup.fio.as_deref().ok_or("fio is not installed")?,
            image,
            case,
            setup.secs,
            None,
        ),
        BARE_METAL => run_bare_metal(image, case, setup.secs),
        QEMU => run_qemu(
            setup.qemu.as_deref().ok_or("QEMU is not installed")?,
            setup,
            image,
            case,
        ),
        QEMU_VHOST_USER | QEMU_VHOST_QSD => run_qemu_vhost(
            setup.qemu.as_deref().ok_or("QEMU is not installed")?,
            setup,
            image,
            case,
            system == QEMU_VHOST_QSD,
        ),
        name => {
            let vmm = VMM_SYSTEMS
                .iter()
                .find(|v| v.name == name)
                .ok_or_else(|| format!("unknown system {name}"))?;
            run_vmm(setup, vmm, image, case, None)
        }
    }
}

/// A point of the NBD group: qemu-storage-daemon serves `image` for this point only.
fn run_nbd_point(
    setup: &Setup,
    system: &str,
    case: &Case,
    image: &Path,
) -> Result<Summary, String> {
    let socket = std::env::temp_dir().join(format!("vmm-bench-nbd-{}.sock", std::process::id()));
    let server = NbdServer::start_with(NbdServerKind::Qsd, image, &socket, "bench", !case.shm)?;
    let uri = server.uri("bench");
    match system {
        NBD_FIO => run_fio(
            setup.fio.as_deref().ok_or("fio is not installed")?,
            image,
            case,
            setup.secs,
            Some(&uri),
        ),
        NBD_QEMU => run_qemu(
            setup.qemu.as_deref().ok_or("QEMU is not installed")?,
            setup,
            Path::new(&uri),
            case,
        ),
        NBD_VMM_PINNED => {
            let pinned = VMM_SYSTEMS
                .iter()
                .find(|v| v.name == "vmm-pinned")
                .expect("vmm-pinned is one of VMM_SYSTEMS");
            run_vmm(setup, pinned, image, case, Some(&uri))
        }
        _ => run_vmm(setup, &VMM_SYSTEMS[0], image, case, Some(&uri)),
    }
}

/// A point whose IOPS spread over the repeats exceeds this (percent of the median) is
/// marked in the table.
pub const SPREAD_LIMIT_PCT: f64 = 15.0;

/// All runs of one (workload, system) point.
#[derive(Debug, Default, Clone)]
pub struct Point {
    /// One summary per repeat.
    pub runs: Vec<Summary>,
}

impl Point {
    /// Median of each figure over the repeats (the CPU figure over the runs that have one).
    pub fn median(&self) -> Summary {
        let pick = |f: fn(&Summary) -> f64| median(&self.runs.iter().map(f).collect::<Vec<_>>());
        let cpu: Vec<f64> = self.runs.iter().filter_map(|s| s.cpu_us_per_io).collect();
        Summary {
            iops: pick(|s| s.iops),
            mib_s: pick(|s| s.mib_s),
            lat_p50_us: pick(|s| s.lat_p50_us),
            lat_p99_us: pick(|s| s.lat_p99_us),
            ios: pick(|s| s.ios as f64).round() as u64,
            cpu_us_per_io: (!cpu.is_empty()).then(|| median(&cpu)),
        }
    }

    /// Spread of the IOPS over the repeats, in percent of the median.
    pub fn spread(&self) -> f64 {
        spread_pct(&self.iops())
    }

    /// Lowest and highest IOPS over the repeats.
    pub fn range(&self) -> (f64, f64) {
        let iops = self.iops();
        let min = iops.iter().copied().fold(f64::INFINITY, f64::min);
        let max = iops.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if iops.is_empty() {
            (0.0, 0.0)
        } else {
            (min, max)
        }
    }

    /// Whether the repeats disagree by more than [`SPREAD_LIMIT_PCT`].
    pub fn unsteady(&self) -> bool {
        self.spread() > SPREAD_LIMIT_PCT
    }

    fn iops(&self) -> Vec<f64> {
        self.runs.iter().map(|s| s.iops).collect()
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
    let plan = plan(&setup.cases, &setup.systems);
    let total = setup.repeats as usize * plan.len();
    let mut n = 0;
    for _ in 0..setup.repeats {
        for &(case, system) in &plan {
            n += 1;
            if results.skipped.contains_key(system) {
                continue;
            }
            print!("\r[{n}/{total}] {:<24} {:<20} ", case.name, system);
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
    println!();
    results
}

fn point<'r>(results: &'r Results, workload: &str, system: &str) -> Option<&'r Point> {
    results
        .points
        .get(&(workload.to_string(), system.to_string()))
}

/// What `system` is compared with: its bare metal (in order of preference) and its QEMU.
/// The NBD group's are the host's NBD client (fio's `nbd` engine) and QEMU's NBD client on
/// the same server; the others', the local image.
fn references(system: &str) -> (&'static [&'static str], &'static str) {
    if [NBD_FIO, NBD_VMM, NBD_VMM_PINNED, NBD_QEMU].contains(&system) {
        (&[NBD_FIO], NBD_QEMU)
    } else {
        (&[BARE_METAL_FIO, BARE_METAL], QEMU)
    }
}

/// The bare-metal figures `system` on `case` is compared with (see [`references`]), on the
/// same I/O (for a simple-driver case, the plain case's).
fn baseline(results: &Results, case: &Case, system: &str) -> Option<Summary> {
    let on_host = case.bare_metal_case().name;
    references(system)
        .0
        .iter()
        .find_map(|s| point(results, on_host, s))
        .map(Point::median)
}

/// IOPS of `m` (`system` on `case`) as a percentage of its bare metal, and as a multiple of
/// its QEMU's.
fn ratios(results: &Results, case: &Case, system: &str, m: &Summary) -> (Option<f64>, Option<f64>) {
    let pct = baseline(results, case, system).map(|b| 100.0 * m.iops / b.iops);
    let vs_qemu = point(results, case.name, references(system).1).map(|q| m.iops / q.median().iops);
    (pct, vs_qemu)
}

/// A count of I/Os per second, short: `950`, `18.9k`, `142k`.
fn short(iops: f64) -> String {
    match iops {
        v if v >= 100_000.0 => format!("{:.0}k", v / 1000.0),
        v if v >= 1000.0 => format!("{:.1}k", v / 1000.0),
        v => format!("{v:.0}"),
    }
}

/// What the columns hold; printed above the table.
const TABLE_NOTES: &str = "\
Medians over the repeats. CPU us/IO: host user+system CPU time per completed I/O: the whole VMM
or QEMU process (every thread, so the guest's polling vCPU counts for both VMMs) from the guest's
bench start to its RESULT line, plus the vhost-user back end's process for qemu-vhost-*; fio's own
usr+sys from its JSON; our runner's thread. IOPS min-max and spread = (max - min) / median over
the repeats. The NBD group's % bare and x QEMU are against fio's nbd engine and QEMU's NBD client
on the same server.";

/// The terminal table.
pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{TABLE_NOTES}");
    let _ = writeln!(
        out,
        "{:<24} {:<20} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>13} {:>7}",
        "workload",
        "system",
        "IOPS",
        "MiB/s",
        "p50 us",
        "p99 us",
        "% bare",
        "x QEMU",
        "CPU us",
        "IOPS min-max",
        "spread"
    );
    let systems = system_names();
    let mut any_unsteady = false;
    for case in &CASES {
        for system in &systems {
            let Some(p) = point(results, case.name, system) else {
                continue;
            };
            let m = p.median();
            let (pct, vs_qemu) = ratios(results, case, system, &m);
            let (min, max) = p.range();
            let mark = if p.unsteady() { "*" } else { " " };
            any_unsteady |= p.unsteady();
            let _ = writeln!(
                out,
                "{:<24} {:<20} {:>9.0} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>6} {:>7} {:>13} {:>6.0}%{mark}",
                case.name,
                system,
                m.iops,
                m.mib_s,
                m.lat_p50_us,
                m.lat_p99_us,
                pct.map_or("-".into(), |v| format!("{v:.0}%")),
                vs_qemu.map_or("-".into(), |v| format!("{v:.2}")),
                m.cpu_us_per_io.map_or("-".into(), |v| format!("{v:.1}")),
                format!("{}-{}", short(min), short(max)),
                p.spread()
            );
        }
    }
    if any_unsteady {
        let _ = writeln!(
            out,
            "* spread above {SPREAD_LIMIT_PCT:.0}%: the repeats disagree, trust this point less"
        );
    }
    if CASES
        .iter()
        .any(|c| c.driver == Driver::Simple && results.points.keys().any(|(w, _)| w == c.name))
    {
        let _ = writeln!(
            out,
            "simple-*: the guest negotiates VERSION_1 only and kicks after every request; bare metal\n\
             has no guest driver, so it runs only the plain workload and % bare compares with that"
        );
    }
    for (system, why) in &results.skipped {
        let _ = writeln!(out, "skipped {system}: {why}");
    }
    out
}

/// `results.json`.
pub fn to_json(results: &Results) -> Value {
    let runs: Vec<Value> = CASES
        .iter()
        .flat_map(|case| system_names().into_iter().map(move |s| (case, s)))
        .filter_map(|(case, system)| {
            let p = point(results, case.name, system)?;
            let m = p.median();
            let (pct, vs_qemu) = ratios(results, case, system, &m);
            let (min, max) = p.range();
            Some(json!({
                "workload": case.name, "system": system, "iops": m.iops, "mib_s": m.mib_s,
                "lat_p50_us": m.lat_p50_us, "lat_p99_us": m.lat_p99_us,
                "cpu_us_per_io": m.cpu_us_per_io, "ios": m.ios,
                "pct_of_bare_metal": pct, "x_qemu": vs_qemu,
                "repeats": p.runs.len(), "iops_min": min, "iops_max": max,
                "spread_pct": p.spread(), "unsteady": p.unsteady(),
                "iops_runs": p.iops(),
                "cpu_us_per_io_runs": p.runs.iter().map(|s| s.cpu_us_per_io).collect::<Vec<_>>(),
                "bare_metal_workload": case.bare_metal_case().name,
            }))
        })
        .collect();
    let skipped: Vec<Value> = results
        .skipped
        .iter()
        .map(|(s, why)| json!({"system": s, "reason": why}))
        .collect();
    json!({
        "notes": {
            "figures": "medians over the repeats",
            "cpu_us_per_io": TABLE_NOTES.replace('\n', " "),
            "spread_pct": "(max - min) / median of the IOPS over the repeats",
            "unsteady": format!("spread_pct above {SPREAD_LIMIT_PCT}"),
        },
        "runs": runs,
        "skipped": skipped,
    })
}

/// Bar colours, by system position; more systems reuse them.
const COLORS: [&str; 10] = [
    "#444444", "#888888", "#8c564b", "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4", "#aec7e8",
    "#9467bd", "#e377c2",
];

/// The chart's scale ends here (percent of bare metal): a taller bar is cut at the top and
/// labelled with its value, so one outlier does not flatten every other bar.
const CHART_MAX_PCT: f64 = 150.0;

/// Approximate width of `text` at the chart's 11 px sans-serif (no font metrics here).
fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * 6.6
}

/// Places legend entries (a swatch and a name each) in rows no wider than `width`:
/// returns each entry's (x, row), x from 0.
pub fn legend_layout(names: &[&str], width: f64) -> Vec<(f64, usize)> {
    const SWATCH_AND_GAP: f64 = 14.0;
    const BETWEEN: f64 = 18.0;
    let mut out = Vec::with_capacity(names.len());
    let (mut x, mut row) = (0.0, 0);
    for name in names {
        let w = SWATCH_AND_GAP + text_width(name);
        if x > 0.0 && x + w > width {
            x = 0.0;
            row += 1;
        }
        out.push((x, row));
        x += w + BETWEEN;
    }
    out
}

/// `chart.svg`: grouped bars per workload, IOPS as a percentage of bare metal, with the
/// min-max range of the repeats as a whisker.
pub fn chart_svg(results: &Results) -> String {
    let all = system_names();
    // Only the systems that ran, each in the colour of its place among all systems, so a
    // system looks the same in every chart.
    let systems: Vec<&str> = all
        .iter()
        .copied()
        .filter(|s| results.points.keys().any(|(_, x)| x == s))
        .collect();
    let color_of = |system: &str| {
        let i = all.iter().position(|s| *s == system).unwrap_or(0);
        COLORS[i % COLORS.len()]
    };
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| results.points.keys().any(|(w, _)| w == c.name))
        .collect();
    let (w, left, top, plot_h) = (1180.0, 60.0, 50.0, 300.0);
    let legend = legend_layout(&systems, w - left - 20.0);
    let rows = legend.last().map_or(1, |(_, r)| r + 1);
    let h = top + plot_h + 50.0 + 18.0 * rows as f64;
    let group_w = (w - left - 20.0) / cases.len().max(1) as f64;
    let bar_w = (group_w - 16.0) / systems.len() as f64;
    let highest = results
        .points
        .iter()
        .filter_map(|((wl, system), p)| {
            let case = CASES.iter().find(|c| c.name == wl)?;
            baseline(results, case, system).map(|b| 100.0 * p.median().iops / b.iops)
        })
        .fold(100.0f64, f64::max);
    let scale = (highest / 25.0).ceil().clamp(4.0, CHART_MAX_PCT / 25.0) * 25.0;
    let y_of = |pct: f64| top + plot_h * (1.0 - pct.min(scale) / scale);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let _ = writeln!(s, "<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>");
    let _ = writeln!(s, "<text x=\"{left}\" y=\"20\" font-size=\"14\">IOPS as % of bare metal (higher is better); whiskers: min-max of the repeats</text>");
    let _ = writeln!(s, "<text x=\"{left}\" y=\"36\" fill=\"#555\">The scale ends at {CHART_MAX_PCT:.0}% at most: a taller bar is cut at the top and labelled with its value. simple-* compare with bare metal's plain randread.</text>");
    if !cases
        .iter()
        .any(|c| systems.iter().any(|s| baseline(results, c, s).is_some()))
    {
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\">No bare-metal figures in this run: nothing to scale the bars by (add bare-metal-fio or bare-metal to --systems).</text>", left + (w - left - 20.0) / 2.0, top + plot_h / 2.0);
    }
    let mut tick = 0.0;
    while tick <= scale {
        let y = y_of(tick);
        let _ = writeln!(s, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick}%</text>", w - 20.0, if tick == 100.0 { "#999" } else { "#ddd" }, left - 5.0, y + 4.0);
        tick += 25.0;
    }
    for (gi, case) in cases.iter().enumerate() {
        let gx = left + gi as f64 * group_w + 8.0;
        for (si, system) in systems.iter().enumerate() {
            let base = baseline(results, case, system);
            let (Some(b), Some(p)) = (base, point(results, case.name, system)) else {
                continue;
            };
            let pct = 100.0 * p.median().iops / b.iops;
            let x = gx + si as f64 * bar_w;
            let y = y_of(pct);
            let color = color_of(system);
            let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{system}: {pct:.0}%</title></rect>", bar_w - 2.0, top + plot_h - y);
            let mid = x + (bar_w - 2.0) / 2.0;
            let (min, max) = p.range();
            let (y_lo, y_hi) = (y_of(100.0 * min / b.iops), y_of(100.0 * max / b.iops));
            if y_lo - y_hi >= 1.0 {
                let _ = writeln!(s, "<line x1=\"{mid:.1}\" x2=\"{mid:.1}\" y1=\"{y_lo:.1}\" y2=\"{y_hi:.1}\" stroke=\"black\"/>");
            }
            if pct > scale {
                // A white notch says "cut here"; the value reads upwards along the bar.
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"3\" fill=\"white\"/>",
                    top + 8.0,
                    bar_w - 2.0
                );
                let _ = writeln!(s, "<text x=\"{mid:.1}\" y=\"{:.1}\" transform=\"rotate(-90 {mid:.1} {:.1})\" font-weight=\"bold\" stroke=\"white\" stroke-width=\"3\" paint-order=\"stroke\" dominant-baseline=\"central\">{pct:.0}%</text>", top + 16.0 + 40.0, top + 16.0 + 40.0);
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + (group_w - 16.0) / 2.0,
            top + plot_h + 16.0,
            case.name
        );
    }
    let legend_top = top + plot_h + 34.0;
    for (system, (x, row)) in systems.iter().zip(legend) {
        let x = left + x;
        let y = legend_top + 18.0 * row as f64;
        let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{system}</text>", color_of(system), x + 14.0, y + 9.0);
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
            ios: (iops * 5.0) as u64,
            cpu_us_per_io: Some(1e6 / iops),
        }
    }

    fn sample() -> Results {
        let mut r = Results::default();
        for (workload, system, iops) in [
            ("randread-4k-qd1", "bare-metal", 20000.0),
            ("randread-4k-qd1", "vmm-workers", 18000.0),
            ("randread-4k-qd1", "qemu-iothread", 12000.0),
            ("simple-randread-4k-qd1", "vmm-default", 10000.0),
            ("simple-randread-4k-qd1", "qemu-iothread", 40000.0),
        ] {
            r.points.insert(
                (workload.into(), system.into()),
                Point {
                    runs: vec![summary(iops), summary(iops * 1.05), summary(iops * 0.95)],
                },
            );
        }
        r.skipped
            .insert("bare-metal-fio".into(), "fio is not installed".into());
        r
    }

    /// The table's row of `workload` on `system` holds every one of `parts`.
    fn assert_row(table: &str, workload: &str, system: &str, parts: &[&str]) {
        let row = table
            .lines()
            .find(|l| l.starts_with(workload) && l.contains(system))
            .unwrap_or_else(|| panic!("no row {workload} {system}:\n{table}"));
        assert!(parts.iter().all(|p| row.contains(p)), "{row}");
    }

    #[test]
    fn the_nbd_group_is_compared_with_its_own_references() {
        let mut r = sample();
        for (system, iops) in [(NBD_FIO, 10000.0), (NBD_VMM, 8000.0), (NBD_QEMU, 5000.0)] {
            r.points.insert(
                ("randread-4k-qd1".into(), system.into()),
                Point {
                    runs: vec![summary(iops)],
                },
            );
        }
        let t = table(&r);
        // 8000 against fio's NBD client (not bare-metal's 20000) and QEMU's (not 12000).
        assert_row(&t, "randread-4k-qd1", NBD_VMM, &[" 80% ", " 1.60 "]);
        assert_row(&t, "randread-4k-qd1", "vmm-workers", &[" 90% ", " 1.50 "]);
    }

    #[test]
    fn guest_result_line_parses() {
        let out = "TEST x PASS\nRESULT {\"workload\":\"randread\",\"bs\":4096,\"qd\":1,\"secs\":2,\"ios\":2469,\"iops\":1234.5,\"mib_s\":4.8,\"lat_p50_us\":40.1,\"lat_p99_us\":90.0,\"lat_max_us\":300}\n";
        let s = parse_guest_result(out).unwrap();
        assert_eq!(s.iops, 1234.5);
        assert_eq!(s.lat_p99_us, 90.0);
        assert_eq!(s.ios, 2469);
        assert_eq!(s.cpu_us_per_io, None);
        // Without the count, the rate over the requested seconds stands in.
        let old = out.replace("\"ios\":2469,", "");
        assert_eq!(parse_guest_result(&old).unwrap().ios, 2469);
        assert!(parse_guest_result("no result here").is_err());
        assert!(parse_guest_result("RESULT {\"iops\": 1}").is_err());
    }

    #[test]
    fn guest_cpu_comes_from_the_bench_window_else_the_whole_run() {
        let stdout = "RESULT {\"secs\":1,\"ios\":1000,\"iops\":1000,\"mib_s\":3.9,\"lat_p50_us\":1,\"lat_p99_us\":2}\n";
        let mut out = RunOutput {
            stdout: stdout.into(),
            guest_code: Some(0),
            elapsed: Duration::from_secs(2),
            cpu: Some(Duration::from_millis(50)),
            bench_cpu: Some(Duration::from_millis(20)),
        };
        assert_eq!(guest_summary(&out).unwrap().cpu_us_per_io, Some(20.0));
        out.bench_cpu = None;
        assert_eq!(guest_summary(&out).unwrap().cpu_us_per_io, Some(50.0));
        out.cpu = None;
        assert_eq!(guest_summary(&out).unwrap().cpu_us_per_io, None);
    }

    #[test]
    fn fio_json_parses() {
        let text = r#"note: some warning
{"jobs":[{"job_runtime":2000,"usr_cpu":10.0,"sys_cpu":40.0,"read":{"iops":19000.5,"total_ios":38001,"runtime":2000,"bw_bytes":77826048,"clat_ns":{"percentile":{"50.000000":36000,"99.000000":80000}}},"write":{"iops":0}}]}"#;
        let s = parse_fio(text, false).unwrap();
        assert_eq!(s.iops, 19000.5);
        assert!((s.mib_s - 74.22).abs() < 0.01);
        assert_eq!(s.lat_p50_us, 36.0);
        assert_eq!(s.ios, 38001);
        // 50% of 2 s over 38001 I/Os.
        assert!((s.cpu_us_per_io.unwrap() - 1e6 / 38001.0).abs() < 1e-6);
        assert!(parse_fio(text, true).is_err());
        let no_cpu = text.replace("\"usr_cpu\":10.0,", "");
        assert_eq!(parse_fio(&no_cpu, false).unwrap().cpu_us_per_io, None);
    }

    #[test]
    fn simple_cases_tell_the_guest_and_lean_on_the_plain_ones() {
        let simple = CASES
            .iter()
            .find(|c| c.name == "simple-randread-4k-qd32")
            .unwrap();
        assert_eq!(
            simple.guest_cmdline(4),
            "tests=none bench=randread bs=4096 qd=32 secs=4 completion=poll features=minimal kick=always"
        );
        assert_eq!(simple.bare_metal_case().name, "randread-4k-qd32");
        let plain = &CASES[0];
        assert!(!plain.guest_cmdline(4).contains("features="));
        assert_eq!(plain.bare_metal_case().name, plain.name);
        for c in &CASES {
            assert_eq!(c.bare_metal_case().driver, Driver::Full, "{}", c.name);
        }
    }

    #[test]
    fn systems_are_data_driven() {
        let names = system_names();
        assert_eq!(names.first(), Some(&BARE_METAL_FIO));
        assert_eq!(names.last(), Some(&NBD_QEMU));
        assert!(names.contains(&QEMU_VHOST_USER) && names.contains(&QEMU_VHOST_QSD));
        assert!(is_qemu(QEMU_VHOST_QSD) && !is_qemu("vmm-default"));
        assert!(is_bare_metal(NBD_FIO) && is_vmm(NBD_VMM) && !is_vmm(NBD_QEMU));
        let default = VMM_SYSTEMS
            .iter()
            .find(|v| v.name == "vmm-default")
            .unwrap();
        assert!(default.args.is_empty() && !default.traced);
        let traced = VMM_SYSTEMS.iter().find(|v| v.traced).unwrap();
        assert_eq!(traced.name, "vmm-workers-traced");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(VMM_SYSTEMS
            .iter()
            .all(|v| is_vmm(v.name) && !is_bare_metal(v.name)));
        assert!(!is_vmm(QEMU) && !is_vmm(BARE_METAL));
    }

    #[test]
    fn plan_skips_simple_cases_on_bare_metal_and_quick_is_a_subset() {
        let all = cases(false);
        let systems = system_names();
        let p = plan(&all, &systems);
        let simple = all.iter().filter(|c| c.driver == Driver::Simple).count();
        // Three systems run without a guest: two bare metal, and fio over NBD.
        assert_eq!(p.len(), all.len() * systems.len() - simple * 3);
        assert!(!p
            .iter()
            .any(|(c, s)| c.driver == Driver::Simple && is_bare_metal(s)));
        let quick = cases(true);
        assert!(quick.len() < all.len());
        assert!(quick.iter().any(|c| c.driver == Driver::Simple));
        assert!(quick.iter().any(|c| c.shm));
        // Only the simple QD1 case, whose plain twin is not in the run: bare metal runs the
        // twin in its place.
        let simple_qd1: Vec<&Case> = all
            .iter()
            .copied()
            .filter(|c| c.name == "simple-randread-4k-qd1")
            .collect();
        let p = plan(&simple_qd1, &[BARE_METAL, "vmm-default", QEMU]);
        let names: Vec<(&str, &str)> = p.iter().map(|(c, s)| (c.name, *s)).collect();
        assert_eq!(
            names,
            [
                ("randread-4k-qd1", BARE_METAL),
                ("simple-randread-4k-qd1", "vmm-default"),
                ("simple-randread-4k-qd1", QEMU),
            ]
        );
        assert_eq!(estimated_secs(&p, 2, 4), 2 * (5 + 5 + 8));
    }

    #[test]
    fn point_median_range_and_spread() {
        let mut p = Point {
            runs: [100.0, 120.0, 90.0, 110.0, 105.0].map(summary).to_vec(),
        };
        assert_eq!(p.median().iops, 105.0);
        assert_eq!(p.range(), (90.0, 120.0));
        assert!((p.spread() - 30.0 / 105.0 * 100.0).abs() < 1e-9);
        assert!(p.unsteady());
        p.runs = [100.0, 104.0, 98.0].map(summary).to_vec();
        assert!(!p.unsteady());
        p.runs[1].cpu_us_per_io = None;
        let cpu = p.median().cpu_us_per_io.unwrap();
        assert!((cpu - (1e6 / 100.0 + 1e6 / 98.0) / 2.0).abs() < 1e-9);
        assert_eq!(Point::default().range(), (0.0, 0.0));
        assert_eq!(Point::default().median().cpu_us_per_io, None);
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
        assert!(t.contains("CPU us/IO") && t.contains("polling vCPU"), "{t}");
        // The simple case's % bare is against the plain case's bare metal.
        assert_row(
            &t,
            "simple-randread-4k-qd1",
            "vmm-default",
            &["50%", "0.25"],
        );
        assert!(t.contains("simple-*: the guest negotiates VERSION_1 only"));
        // 10% spread is under the limit: no mark, no legend.
        assert!(!t.contains("* spread above"), "{t}");
        let j = to_json(&r);
        let runs = j["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 5);
        let w = runs.iter().find(|x| x["system"] == "vmm-workers").unwrap();
        assert_eq!(w["iops"], 18000.0);
        assert_eq!(w["repeats"], 3);
        assert_eq!(w["iops_min"], 18000.0 * 0.95);
        assert_eq!(w["iops_max"], 18000.0 * 1.05);
        assert_eq!(w["unsteady"], false);
        assert_eq!(w["pct_of_bare_metal"], 90.0);
        assert!(w["cpu_us_per_io"].as_f64().unwrap() > 0.0);
        assert_eq!(j["skipped"][0]["system"], "bare-metal-fio");
        let svg = chart_svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // QEMU's simple bar (200%) runs off the 150% scale: cut and labelled.
        assert!(svg.contains(">200%</text>"), "{svg}");
        // The legend names the systems that ran, and only those.
        assert!(svg.contains(">vmm-default</text>") && !svg.contains(">vmm-vcpu</text>"));
    }

    #[test]
    fn chart_without_bare_metal_says_why_it_is_empty() {
        let mut r = sample();
        r.points.retain(|(_, s), _| !is_bare_metal(s));
        let svg = chart_svg(&r);
        assert!(svg.contains("No bare-metal figures"), "{svg}");
        assert!(!chart_svg(&sample()).contains("No bare-metal figures"));
    }

    #[test]
    fn unsteady_points_are_marked() {
        let mut r = sample();
        r.points
            .get_mut(&("randread-4k-qd1".into(), "qemu-iothread".into()))
            .unwrap()
            .runs
            .push(summary(20000.0));
        let t = table(&r);
        let row = t
            .lines()
            .find(|l| l.starts_with("randread-4k-qd1") && l.contains("qemu-iothread"))
            .unwrap();
        assert!(row.ends_with('*'), "{row}");
        assert!(t.contains("* spread above 15%"));
    }

    #[test]
    fn legend_entries_do_not_overlap() {
        let names = system_names();
        let placed = legend_layout(&names, 400.0);
        assert!(placed.last().unwrap().1 > 0, "400 px must wrap");
        for (i, ((x, row), name)) in placed.iter().zip(&names).enumerate() {
            assert!(x + 14.0 + text_width(name) <= 400.0 || *x == 0.0);
            if let Some(((nx, nrow), _)) = placed.get(i + 1).zip(names.get(i + 1)) {
                if nrow == row {
                    assert!(
                        *nx >= x + 14.0 + text_width(name),
                        "{name} runs into the next"
                    );
                }
            }
        }
    }
}
