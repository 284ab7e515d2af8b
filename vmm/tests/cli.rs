//! Command-line errors: one line on stderr naming the problem and the fix, exit status 2.

mod common;

use common::{stderr, vmm};

fn one_line_error(args: &[&str], needle: &str) {
    let out = vmm(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

fn kernel_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k.elf");
    std::fs::write(&k, b"not really").unwrap();
    let k = k.to_str().unwrap().to_string();
    (dir, k)
}

#[test]
fn missing_kernel() {
    one_line_error(
        &["--kernel", "/nonexistent/kernel.elf"],
        "/nonexistent/kernel.elf",
    );
}

#[test]
fn nonsense_memory() {
    let (_d, k) = kernel_file();
    one_line_error(&["--kernel", &k, "--memory", "lots"], "invalid size 'lots'");
    one_line_error(&["--kernel", &k, "--memory", "1M"], "at least 16M");
}

#[test]
fn bad_disks() {
    let (_d, k) = kernel_file();
    one_line_error(
        &["--kernel", &k, "--disk", "path=/nonexistent/d.img"],
        "/nonexistent/d.img",
    );
    one_line_error(
        &["--kernel", &k, "--disk", "path=x.img,speed=fast"],
        "unknown key 'speed'",
    );
    one_line_error(
        &["--kernel", &k, "--disk", "path=x.img,queue-size=100"],
        "power of two",
    );
    one_line_error(&["--kernel", &k, "--disk", "readonly=on"], "add path=IMAGE");
}

#[test]
fn clap_usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--kernel", "k", "--io-mode", "turbo"],
        &["--bogus"],
    ] {
        assert_eq!(vmm(args).status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn not_an_elf() {
    let (_d, k) = kernel_file();
    one_line_error(&["--kernel", &k], "not an ELF file");
}
