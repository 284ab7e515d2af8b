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

#[test]
fn bad_limits_and_groups() {
    let (d, k) = kernel_file();
    let img = d.path().join("d.img");
    std::fs::write(&img, [0u8; 4096]).unwrap();
    let disk = |extra: &str| format!("path={}{extra}", img.display());
    for (args, needle) in [
        (vec!["--disk", &disk(",iops=0")], "--disk iops=0 is invalid"),
        (
            vec!["--disk", &disk(",bw=fast")],
            "--disk bw=fast is invalid",
        ),
        (
            vec!["--disk", &disk(",iops=10,iops-wr=5")],
            "iops cannot be given with iops-rd or iops-wr",
        ),
        (
            vec!["--disk", &disk(",iops-burst=100")],
            "iops-burst needs a rate",
        ),
        (
            vec!["--disk", &disk(",group=g")],
            "--disk group=g names no --throttle-group",
        ),
        (
            vec!["--throttle-group", "name=g"],
            "--throttle-group 'name=g' sets no limit",
        ),
        (
            vec!["--throttle-group", "iops=5"],
            "--throttle-group 'iops=5' has no name",
        ),
        (
            vec![
                "--throttle-group",
                "name=g,iops=5",
                "--throttle-group",
                "name=g,bw=1M",
            ],
            "name=g is given twice",
        ),
    ] {
        let mut all = vec!["--kernel", &k];
        all.extend(args.iter().copied());
        one_line_error(&all, needle);
    }
}
