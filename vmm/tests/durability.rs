//! Flushed writes survive a SIGKILL of the VMM.
//!
//! The test guest (`tests=durability`) writes random 4 KiB blocks with unique patterns and,
//! after each FLUSH completes, prints `FLUSHED <n> g=<first gen> k=<count> b=<hex blocks>`
//! naming the writes that completed before the FLUSH was submitted (VIRTIO 1.x, 5.2.6.1). The
//! test kills the VMM with SIGKILL after a random number of flushes and a random delay, then
//! checks every flushed block in the image: each of its sectors must hold the pattern of the
//! flushed generation or of a newer one (a later write may have landed), never older data.
//!
//! `DURABILITY_REPS` sets the repetitions per variant (default 10; each variant: direct=off and
//! direct=on). Needs /dev/kvm: fails loudly without it.

mod real_guest;
use real_guest::report::tail;
use real_guest::{guest_elf, require_kvm};
#[path = "../../xtask/src/durability.rs"]
#[allow(dead_code)]
mod durability_log;
#[path = "../../guest-test-kernel/src/pattern.rs"]
#[allow(dead_code)]
mod pattern;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use durability_log::{check, parse_flushed, parse_seed, run_until_killed, Flushed};
use pattern::{mix64, Rng};

const IMAGE_BYTES: u64 = 16 << 20;
/// The VMM's io modes, one per repetition in turn.
const IO_MODES: [&str; 4] = ["dataplane", "iothread", "workers", "vcpu"];

/// What one run found.
#[derive(Debug)]
struct RunResult {
    flushes: usize,
    blocks_checked: usize,
    newer: usize,
    losses: Vec<String>,
}

/// Boots the guest on `image`, kills it after `kill_after` flushes plus `delay`, and checks
/// the image.
fn run_once(
    image: &Path,
    io_mode: &str,
    direct: bool,
    guest_seed: u64,
    kill_after: usize,
    delay: Duration,
) -> RunResult {
    // Two queues every other run: a FLUSH on queue 0 covers writes completed on queue 1.
    let queues = if guest_seed & 1 == 1 { 2 } else { 1 };
    let disk = format!(
        "path={},direct={},queues={queues}",
        image.display(),
        if direct { "on" } else { "off" }
    );
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_vmm"));
    vmm.arg("--kernel").arg(guest_elf()).args([
        "--memory",
        "128M",
        "--cmdline",
        &format!("tests=durability seed={guest_seed:#x}"),
        "--disk",
        &disk,
        "--io-mode",
        io_mode,
    ]);
    let lines = run_until_killed(vmm, kill_after, delay).expect("run the VMM");
    let out = lines.join("\n");
    assert!(
        !out.contains("TEST durability FAIL"),
        "the guest reported a failure:\n{}",
        tail(&out, 30)
    );
    let seed = lines
        .iter()
        .find_map(|l| parse_seed(l))
        .unwrap_or_else(|| panic!("no DURABILITY line:\n{}", tail(&out, 30)));
    let listed: Vec<Flushed> = lines.iter().filter_map(|l| parse_flushed(l)).collect();
    assert!(
        listed
            .iter()
            .map(|f| f.n)
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= kill_after.min(3),
        "fewer than {} flushes before the kill:\n{}",
        kill_after.min(3),
        tail(&out, 30)
    );
    let img = std::fs::read(image).expect("image");
    assert_eq!(img.len() as u64, IMAGE_BYTES, "image size changed");
    let (blocks_checked, newer, losses) = check(seed, &listed, &img);
    RunResult {
        flushes: listed.len(),
        blocks_checked,
        newer,
        losses,
    }
}

fn reps() -> usize {
    std::env::var("DURABILITY_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn image(name: &str) -> PathBuf {
    // Not /tmp: it may be tmpfs, which refuses O_DIRECT.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("durability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmpdir");
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; IMAGE_BYTES as usize]).expect("image");
    path
}

fn durability(direct: bool) {
    require_kvm();
    let img = image(if direct { "direct.img" } else { "cached.img" });
    let test_seed = std::env::var("DURABILITY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            mix64(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(7, |d| d.as_nanos() as u64),
            )
        });
    eprintln!("durability direct={direct}: DURABILITY_SEED={test_seed}");
    let mut rng = Rng::new(test_seed);
    let mut all_losses = Vec::new();
    for rep in 0..reps() {
        let kill_after = 3 + rng.below(10) as usize;
        let delay = Duration::from_micros(rng.below(30_000));
        let guest_seed = rng.next_u64();
        // Each io mode in turn: they complete and flush requests differently.
        let io_mode = IO_MODES[rep % IO_MODES.len()];
        let r = run_once(&img, io_mode, direct, guest_seed, kill_after, delay);
        eprintln!(
            "rep {rep} ({io_mode}): killed after {} flushes (+{delay:?}): {} flushed blocks checked, {} sectors hold newer data, {} lost",
            r.flushes,
            r.blocks_checked,
            r.newer,
            r.losses.len()
        );
        assert!(r.blocks_checked > 0, "rep {rep}: nothing was flushed");
        all_losses.extend(r.losses.into_iter().map(|l| format!("rep {rep}: {l}")));
    }
    let _ = std::fs::remove_file(&img);
    assert!(
        all_losses.is_empty(),
        "{} flushed sectors lost:\n{}",
        all_losses.len(),
        all_losses
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn flushed_writes_survive_sigkill_cached() {
    durability(false);
}

#[test]
fn flushed_writes_survive_sigkill_direct() {
    durability(true);
}

/// The soak workload (`soak=<secs>`, what `cargo xtask soak` runs) for a few seconds: mixed
/// verified I/O at QD 64 over two queues, zero mismatches.
fn soak(extra_cmdline: &str, disk_opts: &str) {
    require_kvm();
    let img = image(&format!("soak{}.img", disk_opts.len()));
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(guest_elf())
        .args([
            "--memory",
            "256M",
            "--cmdline",
            &format!("tests=none soak=4 {extra_cmdline}"),
            "--disk",
        ])
        .arg(format!("path={},queues=2{disk_opts}", img.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    let _ = std::fs::remove_file(&img);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("SOAK "))
        .unwrap_or_else(|| panic!("no SOAK line:\n{}", tail(&stdout, 30)));
    let get = |k: &str| -> u64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    eprintln!("{line}");
    assert!(get("ops") > 1000, "too few operations: {line}");
    for k in ["reads", "writes", "flushes", "discards", "write_zeroes"] {
        assert!(get(k) > 0, "no {k}: {line}");
    }
    assert_eq!(
        (get("mismatches"), get("errors")),
        (0, 0),
        "{}",
        tail(&stdout, 30)
    );
    assert!(stdout.contains("TEST soak PASS"), "{}", tail(&stdout, 30));
    assert_eq!(out.status.code(), Some(0), "{}", tail(&stdout, 30));
}

#[test]
fn soak_briefly_polled() {
    soak("completion=poll", "");
}

#[test]
fn soak_briefly_irq_direct() {
    soak("completion=irq", ",direct=on");
}
