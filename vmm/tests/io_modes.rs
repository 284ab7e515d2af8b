//! Every I/O mode (`--io-mode vcpu|iothread|dataplane|workers`) boots the real test guest
//! and passes its whole self-test suite, with polled and interrupt completions; the workers
//! mode also with two request queues (VIRTIO_BLK_F_MQ, one handler and one MSI-X vector
//! per queue), and with tracing and metrics on.
//!
//! These tests need /dev/kvm and fail (never skip) without it.

mod real_guest;
use real_guest::report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use report::GuestReport;

const SERIAL: &str = "iomode-disk";

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-iomodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh image named after `name` and a number no other image of this process has: tests
/// run in parallel, and two suites with the same mode and queue count (e.g. the two
/// two-queue workers suites) must not share a disk. (They did: each VM's write/verify
/// passes then read the other guest's patterns, and its image was rewritten under it.)
fn temp_image(name: &str, size: u64) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = temp_dir().join(format!("{n}-{name}"));
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    std::fs::write(&path, data).unwrap();
    path
}

fn boot(args: &[&str]) -> (String, Option<i32>) {
    real_guest::boot(args, Duration::from_secs(300))
}

fn assert_all_pass(what: &str, out: &str, status: Option<i32>) -> GuestReport {
    let report = GuestReport::parse(out);
    let failed: Vec<_> = report
        .failed()
        .map(|t| format!("{}: {}", t.name, t.failure.as_deref().unwrap_or("")))
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: guest tests failed: {failed:#?}\n--- output ---\n{out}"
    );
    // Our device offers every feature the suite tests: nothing may be skipped.
    let skipped: Vec<_> = report.skipped().map(|t| t.name.clone()).collect();
    assert!(
        skipped.is_empty(),
        "{what}: guest tests skipped: {skipped:?}"
    );
    assert!(
        report.passed() >= 10,
        "{what}: too few tests ran ({}):\n{out}",
        report.passed()
    );
    assert_eq!(
        status,
        Some(0),
        "{what}: guest did not exit cleanly:\n{out}"
    );
    for name in [
        "get_id",
        "flush",
        "queue_depth",
        "indirect",
        "virtio_drivers",
    ] {
        assert!(
            report.tests.iter().any(|t| t.name == name),
            "{what}: test {name} did not run:\n{out}"
        );
    }
    report
}

/// The full suite in `mode`, with `queues` request queues, polled then interrupt completions.
fn suite(mode: &str, queues: u16, extra: &[&str]) {
    for completion in ["poll", "irq"] {
        let img = temp_image(&format!("{mode}-q{queues}-{completion}.img"), 32 << 20);
        let disk = format!("path={},serial={SERIAL},queues={queues}", img.display());
        let cmdline = format!("tests=all serial={SERIAL} completion={completion}");
        let mut args = vec!["--io-mode", mode, "--disk", &disk, "--cmdline", &cmdline];
        args.extend_from_slice(extra);
        let (out, status) = boot(&args);
        let what = format!("--io-mode {mode} queues={queues} completion={completion}");
        assert_all_pass(&what, &out, status);
        if completion == "irq" && queues > 1 {
            // Each queue has its own MSI-X vector, and the guest drives every queue.
            for q in 0..queues {
                assert!(
                    out.lines().any(|l| l.contains(&format!("# queue {q}: "))
                        && l.contains("interrupts on vector")
                        && !l.contains(": 0 interrupts")),
                    "{what}: queue {q} took no interrupt:\n{out}"
                );
            }
        }
    }
}

#[test]
fn vcpu_mode_passes_every_guest_test() {
    suite("vcpu", 1, &[]);
}

#[test]
fn iothread_mode_passes_every_guest_test() {
    suite("iothread", 1, &[]);
}

#[test]
fn dataplane_mode_passes_every_guest_test() {
    suite("dataplane", 1, &[]);
}

#[test]
fn workers_mode_passes_every_guest_test() {
    suite("workers", 1, &[]);
}

#[test]
fn dataplane_mode_with_two_queues_passes_every_guest_test() {
    suite("dataplane", 2, &[]);
}

#[test]
fn workers_mode_with_two_queues_passes_every_guest_test() {
    suite("workers", 2, &[]);
}

#[test]
fn workers_mode_with_one_worker_and_no_polling_passes_every_guest_test() {
    // Every request through the pool: its one worker does all the I/O.
    suite(
        "workers",
        2,
        &["--workers", "1", "--poll-us", "0", "--handoff-depth", "0"],
    );
}

#[test]
fn iothread_mode_with_two_queues_and_two_disks_passes_every_guest_test() {
    // The shared loop serves a second disk the guest does not drive; the first must work.
    let spare = temp_image("spare.img", 1 << 20);
    let spare = format!("path={},queues=2", spare.display());
    suite("iothread", 2, &["--disk", &spare]);
}

#[test]
fn trace_and_metrics_files_are_written() {
    let dir = temp_dir();
    let trace = dir.join("trace.json");
    let metrics = dir.join("metrics.json");
    let img = temp_image("traced.img", 32 << 20);
    let disk = format!("path={},serial={SERIAL}", img.display());
    let cmdline = format!("tests=all serial={SERIAL} completion=poll");
    let (out, status) = boot(&[
        "--io-mode",
        "workers",
        "--disk",
        &disk,
        "--cmdline",
        &cmdline,
        "--trace",
        trace.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    assert_all_pass("traced workers", &out, status);
    let t = std::fs::read_to_string(&trace).expect("trace file written");
    assert!(t.trim_start().starts_with('{') || t.trim_start().starts_with('['));
    assert!(t.len() > 100, "trace has no events: {t}");
    let m = std::fs::read_to_string(&metrics).expect("metrics file written");
    assert!(m.contains("\"devices\""), "{m}");
    assert!(m.contains(&img.display().to_string()), "{m}");
}

/// The names in the `io_threads` list of the first device of a metrics file: the threads that
/// submitted its I/O to an engine, as the device model recorded them.
fn io_threads(metrics: &str) -> Vec<String> {
    let Some(at) = metrics.find("\"io_threads\":[") else {
        return Vec::new();
    };
    let list = &metrics[at + "\"io_threads\":[".len()..];
    let list = &list[..list.find(']').unwrap_or(0)];
    list.split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Runs the guest's self-tests on a two-queue disk in `mode` (plus `extra`) and returns the
/// threads that did the disk's I/O.
fn threads_doing_io(mode: &str, extra: &[&str]) -> Vec<String> {
    let img = temp_image(&format!("where-{mode}.img"), 32 << 20);
    let metrics = temp_dir().join(format!("where-{mode}-{}.json", extra.len()));
    let disk = format!("path={},serial={SERIAL},queues=2", img.display());
    let cmdline = format!("tests=all serial={SERIAL} completion=poll");
    let mut args = vec![
        "--io-mode",
        mode,
        "--disk",
        &disk,
        "--cmdline",
        &cmdline,
        "--metrics",
        metrics.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (out, status) = boot(&args);
    assert_all_pass(mode, &out, status);
    io_threads(&std::fs::read_to_string(&metrics).expect("metrics file written"))
}

#[test]
fn each_mode_does_its_io_where_it_says() {
    let only = |threads: &[String], allowed: &[&str], what: &str| {
        assert!(!threads.is_empty(), "{what}: no I/O thread recorded");
        assert!(
            threads.iter().all(|t| allowed.contains(&t.as_str())),
            "{what}: I/O on {threads:?}, expected only {allowed:?}"
        );
    };
    // vcpu: the vCPU thread, inside its notify exit.
    only(&threads_doing_io("vcpu", &[]), &["vcpu0"], "vcpu");
    // iothread: the VM's one shared loop (which holds the VM-wide lock per turn).
    only(
        &threads_doing_io("iothread", &[]),
        &["iothread"],
        "iothread",
    );
    // dataplane: a thread per queue, and both queues' threads did I/O.
    let dp = threads_doing_io("dataplane", &[]);
    only(&dp, &["vblk-q0", "vblk-q1"], "dataplane");
    assert_eq!(dp.len(), 2, "dataplane: one thread per queue: {dp:?}");
    // workers, every request handed off: only pool threads.
    only(
        &threads_doing_io("workers", &["--workers", "2", "--handoff-depth", "0"]),
        &["vblk-w0", "vblk-w1"],
        "workers, all handed off",
    );
    // workers with no pool (what `auto` picks on a host with no core to spare): the queue
    // threads themselves.
    only(
        &threads_doing_io("workers", &["--workers", "0"]),
        &["vblk-q0", "vblk-q1"],
        "workers without a pool",
    );
}
