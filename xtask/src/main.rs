//! `cargo xtask <command>`: see `usage()`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

mod crash;
mod nbd_crosscheck;
mod nbd_soak;
mod qos;
mod soak;

use xtask::bench;
use xtask::guest::{build_guest, build_release, build_vmm};
use xtask::nbd_server::{NbdServer, NbdServerKind};
use xtask::report::GuestReport;
use xtask::runner::{ensure_image, qemu_binary, qemu_command, run_guest, Peer, RunOutput};
use xtask::vhost_user;

mod timeline_svg;
mod trace;
mod trace_summary;

const DISK_SIZE: u64 = 256 << 20;
const DISK_SERIAL: &str = "xtask-disk0";

fn usage() -> String {
    format!(
        "usage: cargo xtask <command>

commands:
  run [--io-mode vcpu|iothread|dataplane|workers] [--completion poll|irq] [--secs N]
      [--backend file|nbd|nbdkit]
        build the guest and the VMM, boot the guest with a virtio-blk disk
        (target/xtask/disk.img), run its self-tests and a benchmark, print a summary;
        --backend nbd serves the image with qemu-storage-daemon, nbdkit with nbdkit's file
        plugin, over a Unix socket, to the VMM's NBD client
  crosscheck [--completion poll|irq] [--vhost-user] [--nbd [--backend nbd|nbdkit]]
        run the same guest under QEMU (q35, virtio-blk-pci) as the reference device;
        --vhost-user: QEMU as the front end of our vhost-user-blk back end on
        target/xtask/disk.img, with 1 and 2 queues;
        --nbd: the guest's durability workload writes a fresh image over our NBD client
        (qemu-storage-daemon, then nbdkit; --backend picks one), the VMM is killed, the
        server restarted, and QEMU's NBD client (qemu-img convert) reads it back: every
        flushed block must hold its data and the bytes must equal the image file's
  bench [--quick] [--systems a,b,...] [--workload W]
        the talk's experiment: bare metal (fio and our runner), our VMM untuned and in each
        io mode, and QEMU, same image and workloads, 5 interleaved repeats of 4 s (--quick:
        5 of the 7 workloads, 1 repeat of 1 s); IOPS, latency, host CPU per I/O and spread;
        table, target/bench/results.json, target/bench/chart.svg; the NBD group (the image
        served by qemu-storage-daemon to fio's nbd engine, our VMM, untuned and pinned, and
        QEMU) runs when named: --systems nbd-fio,vmm-nbd,vmm-nbd-pinned,qemu-nbd
  soak --minutes N [--queues Q] [--io-mode M] [--completion poll|irq] [--seed S]
        mixed verified I/O at QD 64 over Q queues (default 2) for N minutes (fractions
        allowed); fails on any mismatch or failed request
  nbd-soak [--backend nbd|nbdkit] [--long-outage]
        the verified soak over NBD with the server killed and restarted within the
        reconnect timeout: no error, no mismatch, a reconnection in the metrics;
        --long-outage: back after the timeout, IOERR for the outage, then service again
  crash --runs N [--fault noflush] [--seed S]
        crash points rebuilt from the disk's write log as a volatile write cache may leave
        them; every block the guest saw flushed must survive (with --fault noflush, losses
        must be reported)
  trace [--io-mode vcpu|iothread|dataplane|workers] [--workload randread-4k-qd1]
        [--backend file|nbd|nbdkit]
        a short traced run per io mode (vmm --trace, guest trace=1): per-stage latency
        table, target/trace/<mode>.json (Perfetto / chrome://tracing), target/trace/timeline.svg;
        over NBD the network round trip (NetworkSent to NetworkReply) is its own stage
{}
  test  the project's test suite: fmt, cargo test --workspace, clippy, doc, run (file, nbd,
        nbdkit), crosscheck (QEMU's virtio-blk, our vhost-user-blk, QEMU's NBD client
        reading back what ours wrote),
        bench --quick (VMM modes), crash points (and noflush ones that must lose data), a
        2-minute soak, qos --quick",
        qos::USAGE
    )
}

struct Options {
    io_mode: Option<String>,
    completion: String,
    secs: u32,
    quick: bool,
    systems: Option<Vec<String>>,
    workload: Option<String>,
    vhost_user: bool,
    nbd: bool,
    backend: String,
    long_outage: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            io_mode: None,
            completion: "poll".into(),
            secs: 3,
            quick: false,
            systems: None,
            workload: None,
            vhost_user: false,
            nbd: false,
            backend: "file".into(),
            long_outage: false,
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--io-mode" => opts.io_mode = Some(value()?),
            "--completion" => {
                opts.completion = value()?;
                if !matches!(opts.completion.as_str(), "poll" | "irq") {
                    return Err(format!(
                        "--completion must be poll or irq, not {}",
                        opts.completion
                    ));
                }
            }
            "--secs" => {
                opts.secs = value()?
                    .parse()
                    .map_err(|_| "--secs needs a whole number of seconds".to_string())?
            }
            "--quick" => opts.quick = true,
            "--vhost-user" => opts.vhost_user = true,
            "--nbd" => opts.nbd = true,
            "--workload" => opts.workload = Some(value()?),
            "--backend" => opts.backend = value()?,
            "--long-outage" => opts.long_outage = true,
            "--systems" => opts.systems = Some(value()?.split(',').map(str::to_string).collect()),
            other => return Err(format!("unknown option {other}\n\n{}", usage())),
        }
    }
    Ok(opts)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> Result<(), String> {
    cargo_env(root, args, &[])
}

/// `cargo ARGS` in `root` with the environment variables `env` set.
fn cargo_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn guest_cmdline(opts: &Options, bench: bool) -> String {
    let mut line = format!(
        "tests=all serial={DISK_SERIAL} completion={}",
        opts.completion
    );
    if bench {
        line.push_str(&format!(" bench=randread bs=4096 qd=1 secs={}", opts.secs));
    }
    line
}

/// Prints the outcome of a guest run; `disk` says what the benchmark measured.
/// Prints what a guest run reported; `true` when it passed. A skipped test (the device lacks
/// what it tests) fails the run unless `skips_allowed`: our VMM offers every feature the
/// tests need, a reference device may not.
fn summarize(what: &str, disk: &str, out: &RunOutput, skips_allowed: bool) -> bool {
    let report = GuestReport::parse(&out.stdout);
    println!();
    println!(
        "== {what}: {} tests passed, {} failed, {} skipped ({:.1} s)",
        report.passed(),
        report.failed().count(),
        report.skipped().count(),
        out.elapsed.as_secs_f64()
    );
    for t in report.failed() {
        println!("   FAIL {}: {}", t.name, t.failure.as_deref().unwrap_or(""));
    }
    for t in report.skipped() {
        println!("   SKIP {}: {}", t.name, t.skipped.as_deref().unwrap_or(""));
    }
    for r in &report.results {
        match serde_json::from_str::<serde_json::Value>(r) {
            Ok(v) => println!(
                "   bench {} bs={} qd={} on {disk}: {:.0} IOPS, {:.1} MiB/s, latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
                v["workload"].as_str().unwrap_or("?"),
                v["bs"],
                v["qd"],
                v["iops"].as_f64().unwrap_or(0.0),
                v["mib_s"].as_f64().unwrap_or(0.0),
                v["lat_p50_us"].as_f64().unwrap_or(0.0),
                v["lat_p99_us"].as_f64().unwrap_or(0.0),
                v["lat_max_us"].as_f64().unwrap_or(0.0),
            ),
            Err(e) => println!("   unreadable RESULT line ({e}): {r}"),
        }
    }
    let ok = out.guest_code == Some(0)
        && report.failed().count() == 0
        && (skips_allowed || report.skipped().count() == 0)
        && !report.tests.is_empty();
    match out.guest_code {
        Some(0) if ok => println!("== {what}: OK"),
        Some(code) => println!("== {what}: FAILED (guest exit code {code})"),
        None => println!("== {what}: FAILED (no guest exit code: crashed, killed or timed out)"),
    }
    ok
}

fn cmd_run(opts: &Options) -> Result<bool, String> {
    let root = root();
    let guest = build_guest(&root)?;
    let vmm = build_vmm(&root)?;
    let disk = root.join("target/xtask/disk.img");
    ensure_image(&disk, DISK_SIZE)?;
    let mut cmd = Command::new(&vmm);
    cmd.arg("--kernel").arg(&guest).args([
        "--memory",
        "256M",
        "--cmdline",
        &guest_cmdline(opts, true),
    ]);
    // O_DIRECT: buffered, the benchmark would measure the host's page cache, not the disk.
    // An NBD server opens the image with O_DIRECT itself (qemu-storage-daemon
    // cache.direct=on); nbdkit's file plugin goes through the page cache.
    let server = match opts.backend.as_str() {
        "file" => None,
        b => {
            let kind = NbdServerKind::from_backend(b)
                .ok_or_else(|| format!("--backend must be file, nbd or nbdkit, not {b}"))?;
            let socket = root.join("target/xtask/nbd.sock");
            Some(NbdServer::start(kind, &disk, &socket, "disk0")?)
        }
    };
    let target = match &server {
        Some(s) => format!("uri={}", s.uri("disk0")),
        None => format!("path={},direct=on", disk.display()),
    };
    cmd.arg("--disk")
        .arg(format!("{target},serial={DISK_SERIAL}"));
    if let Some(mode) = &opts.io_mode {
        cmd.args(["--io-mode", mode]);
    }
    println!("== booting {} in {}", guest.display(), vmm.display());
    let out = run_guest(cmd, Peer::Vmm, Duration::from_secs(600), true)?;
    let what = match &server {
        Some(s) => format!("disk.img over NBD ({})", s.kind().program()),
        None => "disk.img, O_DIRECT".into(),
    };
    Ok(summarize("vmm", &what, &out, false))
}

fn cmd_crosscheck(opts: &Options) -> Result<bool, String> {
    let root = root();
    if opts.nbd {
        let kinds = match opts.backend.as_str() {
            "file" => vec![NbdServerKind::Qsd, NbdServerKind::Nbdkit],
            b => vec![NbdServerKind::from_backend(b).ok_or_else(|| {
                format!("crosscheck --nbd takes --backend nbd or nbdkit, not {b}")
            })?],
        };
        let vmm = build_vmm(&root)?;
        return nbd_crosscheck::run(&root, &vmm, &kinds, opts.io_mode.as_deref());
    }
    let qemu = qemu_binary()?;
    let guest = build_guest(&root)?;
    if opts.vhost_user {
        return crosscheck_vhost_user(opts, &root, &qemu, &guest);
    }
    let disk = root.join("target/xtask/crosscheck.img");
    ensure_image(&disk, 64 << 20)?;
    let cmdline = guest_cmdline(opts, true);
    let cmd = qemu_command(&qemu, &guest, &cmdline, &disk, "none", DISK_SERIAL);
    println!(
        "== booting {} in QEMU (q35, virtio-blk-pci)",
        guest.display()
    );
    let out = run_guest(cmd, Peer::Qemu, Duration::from_secs(600), true)?;
    Ok(summarize(
        "qemu",
        "crosscheck.img, O_DIRECT (cache=none)",
        &out,
        true,
    ))
}

/// QEMU as the front end of our vhost-user-blk back end, with 1 and 2 queues: every test
/// must pass (no skip: the back end offers what our VMM offers), and the back end must leave
/// cleanly on SIGTERM.
fn crosscheck_vhost_user(
    opts: &Options,
    root: &Path,
    qemu: &Path,
    guest: &Path,
) -> Result<bool, String> {
    let backend = build_release(root, "vhost-user-blk")?;
    let disk = root.join("target/xtask/disk.img");
    ensure_image(&disk, DISK_SIZE)?;
    let socket = root.join("target/xtask/vhost-user-blk.sock");
    let mut ok = true;
    for queues in [1u16, 2] {
        let spec = format!(
            "path={},direct=on,engine=io_uring,queues={queues},serial={DISK_SERIAL}",
            disk.display()
        );
        let server = vhost_user::Backend::start(&backend, &socket, &spec)?;
        let cmdline = guest_cmdline(opts, true);
        let cmd = vhost_user::qemu_vhost_user_command(qemu, guest, &cmdline, &socket, queues);
        println!(
            "== booting {} in QEMU (q35, vhost-user-blk-pci, {queues} queues, completion {})",
            guest.display(),
            opts.completion
        );
        let out = run_guest(cmd, Peer::Qemu, Duration::from_secs(300), true)?;
        let what = format!("qemu + vhost-user-blk, {queues} queues");
        ok &= summarize(&what, "disk.img, O_DIRECT", &out, false);
        if !server.stop() {
            println!("== {what}: FAILED, the back end did not exit 0 on SIGTERM");
            ok = false;
        }
    }
    Ok(ok)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn cmd_bench(opts: &Options) -> Result<bool, String> {
    let root = root();
    let known = bench::system_names();
    let systems: Vec<&'static str> = match &opts.systems {
        None => bench::default_system_names(),
        Some(list) => list
            .iter()
            .map(|s| {
                known
                    .iter()
                    .copied()
                    .find(|k| k == s)
                    .ok_or_else(|| format!("unknown system {s}; known: {}", known.join(",")))
            })
            .collect::<Result<_, _>>()?,
    };
    // The full run: 7 workloads x 10 systems less the 2 x 2 simple-driver points bare metal
    // leaves to the plain ones = 66 points, x 5 repeats = 330 runs of 4 s plus start-up
    // (QEMU's firmware takes seconds): about 29 minutes; 5 s would pass 30.
    let (secs, repeats, size) = if opts.quick {
        (1, 1, 256u64 << 20)
    } else {
        (4, 5, 1u64 << 30)
    };
    let mut cases = bench::cases(opts.quick);
    if let Some(w) = &opts.workload {
        cases.retain(|c| c.name == w.as_str());
        if cases.is_empty() {
            return Err(format!(
                "unknown workload {w}; known: {}",
                bench::cases(opts.quick)
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    let out_dir = root.join("target/bench");
    let needs_guest = systems.iter().any(|s| !bench::is_bare_metal(s));
    let needs_vmm = systems.iter().any(|s| bench::is_vmm(s));
    let setup = bench::Setup {
        guest: if needs_guest {
            build_guest(&root)?
        } else {
            PathBuf::new()
        },
        vmm: if needs_vmm {
            build_vmm(&root)?
        } else {
            PathBuf::new()
        },
        qemu: qemu_binary().ok(),
        vhost_user_blk: if systems.contains(&bench::QEMU_VHOST_USER) {
            Some(build_release(&root, "vhost-user-blk")?)
        } else {
            None
        },
        fio: which("fio"),
        disk_image: out_dir.join("bench.img"),
        shm_image: PathBuf::from(format!("/dev/shm/vmm-bench-{}.img", std::process::id())),
        secs,
        repeats,
        cases,
        systems,
    };
    ensure_image(&setup.disk_image, size)?;
    ensure_image(&setup.shm_image, 256 << 20)?;
    let plan = bench::plan(&setup.cases, &setup.systems);
    println!(
        "== bench: {} workloads x {} systems x {repeats} repeats = {} runs of {secs} s, about {} min",
        setup.cases.len(),
        setup.systems.len(),
        plan.len() * repeats as usize,
        bench::estimated_secs(&plan, repeats, secs).div_ceil(60)
    );
    let results = bench::run_all(&setup);
    let _ = std::fs::remove_file(&setup.shm_image);
    println!("{}", bench::table(&results));
    let json =
        serde_json::to_string_pretty(&bench::to_json(&results)).map_err(|e| e.to_string())?;
    std::fs::write(out_dir.join("results.json"), json)
        .map_err(|e| format!("cannot write results.json: {e}"))?;
    std::fs::write(out_dir.join("chart.svg"), bench::chart_svg(&results))
        .map_err(|e| format!("cannot write chart.svg: {e}"))?;
    println!(
        "wrote {} and {}",
        out_dir.join("results.json").display(),
        out_dir.join("chart.svg").display()
    );
    // Every VMM system asked for must have produced figures.
    let missing: Vec<_> = setup
        .systems
        .iter()
        .filter(|s| bench::is_vmm(s) && results.skipped.contains_key(**s))
        .collect();
    if !missing.is_empty() {
        println!("== bench: FAILED, no figures from {missing:?}");
    }
    Ok(missing.is_empty())
}

fn cmd_test() -> Result<bool, String> {
    let root = root();
    cargo(&root, &["fmt", "--all", "--", "--check"])?;
    cargo(&root, &["test", "--workspace", "--no-fail-fast"])?;
    cargo(
        &root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The docs build warning-free: every intra-doc link resolves.
    cargo_env(
        &root,
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The main job, as a user runs it.
    let mut ok = cmd_run(&Options::default())?;
    // The same suite over the network backend, against two NBD servers nobody here wrote.
    for backend in ["nbd", "nbdkit"] {
        ok &= cmd_run(&Options {
            backend: backend.into(),
            secs: 1,
            ..Options::default()
        })?;
    }
    for (completion, vhost_user) in [
        ("poll", false),
        ("irq", false),
        ("poll", true),
        ("irq", true),
    ] {
        ok &= cmd_crosscheck(&Options {
            completion: completion.into(),
            secs: 1,
            vhost_user,
            ..Options::default()
        })?;
    }
    // What our NBD client wrote, read back by QEMU's, from both servers.
    ok &= cmd_crosscheck(&Options {
        nbd: true,
        ..Options::default()
    })?;
    // The benchmark itself must not rot: a short run of our VMM's io modes.
    let vmm_modes = bench::VMM_SYSTEMS
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    ok &= cmd_bench(&Options {
        secs: 1,
        quick: true,
        systems: Some(vmm_modes),
        ..Options::default()
    })?;
    // Crash consistency that sees the write cache, and proof that its check can fail: with
    // FLUSH made to lie, flushed blocks must be reported lost.
    let vmm = build_vmm(&root)?;
    ok &= crash::run(&root, &vmm, &crash::parse(&strings(&["--runs", "8"]))?)?;
    let lying = crash::run(
        &root,
        &vmm,
        &crash::parse(&strings(&["--runs", "2", "--fault", "noflush"]))?,
    )?;
    if lying {
        println!("== crash --fault noflush: FAILED, the check lost nothing with FLUSH lying");
    }
    ok &= !lying;
    ok &= nbd_soak::run(&root, &vmm, NbdServerKind::Qsd, false)?;
    // The network round trip is its own stage of a traced request over NBD.
    ok &= trace::cmd(&root, Some("dataplane"), None, "nbd")?;
    ok &= nbd_soak::run(&root, &vmm, NbdServerKind::Nbdkit, true)?;
    // Two minutes of verified mixed I/O across both queues.
    ok &= soak::run(&root, &vmm, &soak::parse(&strings(&["--minutes", "2"]))?)?;
    // I/O limits hold, from inside the guest.
    ok &= qos::run(&root, &vmm, true)?;
    Ok(ok)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    // Commands with options of their own: a bad option exits 2, a failed check 1.
    let own = match command.as_str() {
        "soak" => Some(
            soak::parse(rest)
                .map(|o| build_vmm(&root()).and_then(|vmm| soak::run(&root(), &vmm, &o))),
        ),
        "qos" => Some(
            qos::parse(rest)
                .map(|quick| build_vmm(&root()).and_then(|vmm| qos::run(&root(), &vmm, quick))),
        ),
        "crash" => Some(
            crash::parse(rest)
                .map(|o| build_vmm(&root()).and_then(|vmm| crash::run(&root(), &vmm, &o))),
        ),
        _ => None,
    };
    if let Some(result) = own {
        return match result {
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::from(2)
            }
            Ok(Ok(true)) => ExitCode::SUCCESS,
            Ok(Ok(false)) => ExitCode::FAILURE,
            Ok(Err(e)) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match parse_options(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match command.as_str() {
        "run" => cmd_run(&opts),
        "crosscheck" => cmd_crosscheck(&opts),
        "nbd-soak" => NbdServerKind::from_backend(match opts.backend.as_str() {
            "file" => "nbd",
            b => b,
        })
        .ok_or_else(|| "nbd-soak needs --backend nbd or nbdkit".to_string())
        .and_then(|kind| {
            build_vmm(&root()).and_then(|vmm| nbd_soak::run(&root(), &vmm, kind, opts.long_outage))
        }),
        "test" => cmd_test(),
        "bench" => cmd_bench(&opts),
        "trace" => trace::cmd(
            &root(),
            opts.io_mode.as_deref(),
            opts.workload.as_deref(),
            &opts.backend,
        ),
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("xtask: unknown command {other}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
