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
    suite("workers", 2, &["--workers", "1", "--poll-us", "0"]);
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
