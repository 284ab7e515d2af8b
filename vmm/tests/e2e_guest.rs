//! End to end: boot the real test guest in the VMM and require every self-test to pass.
//!
//! These tests need /dev/kvm and fail (never skip) without it.

mod real_guest;
use real_guest::report;

use std::path::PathBuf;
use std::time::Duration;

use report::GuestReport;

const SERIAL: &str = "e2e-disk";

fn temp_image(name: &str, size: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// Boots the guest and returns its serial output and the VMM's exit status.
fn boot(disk_opts: &str, cmdline: &str) -> (String, Option<i32>) {
    real_guest::boot(
        ["--cmdline", cmdline, "--disk", disk_opts],
        Duration::from_secs(300),
    )
}

fn assert_all_pass(out: &str, status: Option<i32>) -> GuestReport {
    let report = GuestReport::parse(out);
    let failed: Vec<_> = report
        .failed()
        .map(|t| format!("{}: {}", t.name, t.failure.as_deref().unwrap_or("")))
        .collect();
    assert!(
        failed.is_empty(),
        "guest tests failed: {failed:#?}\n--- output ---\n{out}"
    );
    assert!(
        report.passed() >= 5,
        "too few tests ran ({}):\n{out}",
        report.passed()
    );
    assert_eq!(status, Some(0), "guest did not exit cleanly:\n{out}");
    report
}

fn run_suite(completion: &str) {
    let img = temp_image(&format!("rw-{completion}.img"), 32 << 20);
    let (out, status) = boot(
        &format!("path={},serial={SERIAL}", img.display()),
        &format!("tests=all serial={SERIAL} completion={completion}"),
    );
    let report = assert_all_pass(&out, status);
    for name in [
        "get_id",
        "flush",
        "out_of_range",
        "virtio_drivers",
        "queue_depth",
        "indirect",
    ] {
        assert!(
            report.tests.iter().any(|t| t.name == name),
            "test {name} did not run:\n{out}"
        );
    }
}

#[test]
fn all_tests_pass_with_polled_completions() {
    run_suite("poll");
}

#[test]
fn all_tests_pass_with_interrupt_completions() {
    run_suite("irq");
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_data() {
    let img = temp_image("ro.img", 8 << 20);
    let before = std::fs::read(&img).unwrap();
    let (out, status) = boot(
        &format!("path={},readonly=on,serial={SERIAL}", img.display()),
        &format!("tests=all serial={SERIAL} expect_ro=1"),
    );
    assert_all_pass(&out, status);
    assert!(
        std::fs::read(&img).unwrap() == before,
        "read-only image changed"
    );
}
