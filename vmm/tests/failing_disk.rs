//! A failing disk: backend errors reach the guest as `VIRTIO_BLK_S_IOERR` while the VMM keeps
//! serving (VIRTIO 1.x, 5.2.6 "Device Operation").
//!
//! The guest's `tests=failing` mode (guest-test-kernel/src/app/suites/failing.rs) writes and reads
//! every 4 KiB block of the disk, checks each status against the failing range it is told
//! about and every OK read against what it last wrote OK, and prints
//! `FAILING ok=.. ioerr=.. mismatches=.. unexpected=.. reads_ok=.. ...`. Here the host makes
//! the backend fail in three ways: errors injected with `--disk ...,fault=`, a host
//! filesystem (a small tmpfs this test mounts) that runs out of space, and an image truncated
//! while the guest runs. Each case checks the guest's counts, that the VMM exits cleanly,
//! that it logged the failures (at most [`LOGGED`] lines, then one "only counted" line), and
//! that the metrics' `failed` counter equals the failures the guest saw.
//!
//! Needs /dev/kvm, and root for the tmpfs mount: fails loudly without them.

mod real_guest;
use real_guest::{guest_elf, require_kvm};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Failure lines the VMM logs per device before it only counts them.
const LOGGED: usize = 20;
/// Sectors per MiB.
const MIB_SECTORS: u64 = 2048;
/// Whole-run limit: a VMM that stops answering fails the test here.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// What one boot produced.
struct Outcome {
    stdout: String,
    stderr: String,
    status: Option<i32>,
    metrics: String,
}

impl Outcome {
    /// The key=value counts of the guest's `FAILING ok=...` line.
    fn counts(&self) -> HashMap<String, u64> {
        let line = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("FAILING ok="))
            .unwrap_or_else(|| panic!("no FAILING line:\n{}", self.dump()));
        format!("ok={line}")
            .split(' ')
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// The `"failed"` counter of the metrics JSON (one device).
    fn metrics_failed(&self) -> u64 {
        let rest = self
            .metrics
            .split_once("\"failed\":")
            .unwrap_or_else(|| panic!("no failed counter in the metrics: {}", self.metrics))
            .1;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("failed counter")
    }

    /// The VMM's per-failure log lines about `image`.
    fn failure_lines(&self, image: &Path) -> Vec<&str> {
        let prefix = format!("virtio-blk {}: ", image.display());
        self.stderr
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains(" failed: "))
            .collect()
    }

    fn only_counted_lines(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("further failures are only counted"))
            .count()
    }

    fn dump(&self) -> String {
        format!(
            "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The checks every case shares: clean exit, the guest's test passed, the metrics count
    /// every failure the guest saw, and the log has one line per failure up to [`LOGGED`],
    /// then a single "only counted" line.
    fn check_common(&self, image: &Path) -> HashMap<String, u64> {
        assert_eq!(
            self.status,
            Some(0),
            "VMM did not exit cleanly:\n{}",
            self.dump()
        );
        assert!(
            self.stdout.contains("TEST failing PASS"),
            "guest test failed:\n{}",
            self.dump()
        );
        let c = self.counts();
        eprintln!(
            "{}: {}",
            image.display(),
            self.stdout
                .lines()
                .find(|l| l.starts_with("FAILING ok="))
                .unwrap_or_default()
        );
        assert_eq!(c["mismatches"], 0, "{}", self.dump());
        assert_eq!(c["unexpected"], 0, "{}", self.dump());
        assert_eq!(
            self.metrics_failed(),
            c["ioerr"],
            "metrics' failed counter differs from the guest's IOERR count:\n{}\n{}",
            self.metrics,
            self.dump()
        );
        let logged = self.failure_lines(image).len() as u64;
        assert_eq!(
            logged,
            c["ioerr"].min(LOGGED as u64),
            "failure log lines:\n{}",
            self.stderr
        );
        let only_counted = usize::from(c["ioerr"] > LOGGED as u64);
        assert_eq!(self.only_counted_lines(), only_counted, "{}", self.stderr);
        c
    }
}

/// Boots the guest on `disk`; `on_line` sees each guest output line as it comes.
fn boot(
    disk: &str,
    cmdline: &str,
    io_mode: &str,
    dir: &Path,
    mut on_line: impl FnMut(&str),
) -> Outcome {
    require_kvm();
    let metrics = dir.join("metrics.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(guest_elf())
        .args(["--memory", "128M", "--cmdline", cmdline, "--disk", disk])
        .args(["--io-mode", io_mode])
        .arg("--metrics")
        .arg(&metrics)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let mut out = String::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                on_line(&line);
                out.push_str(&line);
                out.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().expect("wait vmm");
    let stderr = err_reader.join().unwrap_or_default();
    let outcome = Outcome {
        stdout: out,
        stderr,
        status: status.code(),
        metrics: std::fs::read_to_string(&metrics).unwrap_or_default(),
    };
    assert!(
        !timed_out,
        "VMM still running after {RUN_LIMIT:?} (hung?):\n{}",
        outcome.dump()
    );
    outcome
}

/// A fresh zeroed (sparse) image of `bytes` in `dir`.
fn sparse_image(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).expect("create image");
    f.set_len(bytes).expect("size image");
    path
}

/// An injected-fault run over a 16 MiB image: requests of `op` touching [1 MiB, 2 MiB) fail.
fn injected(op: &str, io_mode: &str) -> (HashMap<String, u64>, Outcome, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), 16 << 20);
    let disk = format!("path={},fault=eio@{op}:offset=1M-2M", image.display());
    let cmdline = format!(
        "tests=failing fail_lo={} fail_hi={} fail_ops={op}",
        MIB_SECTORS,
        2 * MIB_SECTORS
    );
    let run = boot(&disk, &cmdline, io_mode, dir.path(), |_| {});
    let c = run.check_common(&image);
    (c, run, image)
}

#[test]
fn injected_write_errors_fail_only_those_writes() {
    let (c, run, image) = injected("write", "dataplane");
    // 1 MiB of 4 KiB blocks, once each; every read succeeds, zeros where the write failed.
    assert_eq!(c["writes_ioerr"], 256, "{}", run.dump());
    assert_eq!(c["reads_ioerr"], 0, "{}", run.dump());
    assert_eq!(c["writes_ok"], 4096 - 256, "{}", run.dump());
    for line in run.failure_lines(&image) {
        let offset = logged_offset(line);
        assert!(
            line.contains("write") && line.contains("os error 5"),
            "log line lacks op or errno: {line}"
        );
        assert!(
            ((1 << 20)..(2 << 20)).contains(&offset),
            "logged offset outside the faulty range: {line}"
        );
    }
}

#[test]
fn injected_read_errors_fail_only_those_reads() {
    // Through the worker pool: failures travel back from another thread.
    let (c, run, image) = injected("read", "workers");
    assert_eq!(c["reads_ioerr"], 256, "{}", run.dump());
    assert_eq!(c["writes_ioerr"], 0, "{}", run.dump());
    assert_eq!(c["reads_ok"], 4096 - 256, "{}", run.dump());
    let first = run.failure_lines(&image)[0];
    assert!(
        first.contains("read") && first.contains("os error 5"),
        "log line lacks op or errno: {first}"
    );
}

/// The offset a failure line names (`... at offset <n> ...`).
fn logged_offset(line: &str) -> u64 {
    line.split_once("offset ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no offset in the log line: {line}"))
}

/// A tmpfs mounted for the test's life.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} failed (this test needs root): {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The VMM's last file descriptors may close a moment after it exited: retry, then
        // detach lazily rather than leave the mount behind.
        for _ in 0..20 {
            let done = Command::new("umount").arg(self.dir.path()).status();
            if done.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn full_host_filesystem_fails_writes_with_ioerr() {
    let fs = Tmpfs::mount(8 << 20);
    let image = sparse_image(fs.dir.path(), 64 << 20);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let disk = format!("path={},direct=off", image.display());
    let run = boot(
        &disk,
        "tests=failing fail_ops=any failing_secs=2",
        "iothread",
        out_dir.path(),
        |_| {},
    );
    let c = run.check_common(&image);
    // 64 MiB of blocks on 8 MiB: most first writes fail, some succeed; reads of holes and of
    // written blocks never fail.
    assert!(c["writes_ioerr"] > 8192, "{}", run.dump());
    assert!(c["writes_ok"] > 1024, "{}", run.dump());
    assert_eq!(c["reads_ioerr"], 0, "{}", run.dump());
    let first = run.failure_lines(&image)[0];
    assert!(
        first.contains("write") && first.contains("os error 28"),
        "log line lacks op or ENOSPC: {first}"
    );
}

#[test]
fn image_truncated_under_the_guest_fails_reads_past_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path(), 16 << 20);
    let disk = format!("path={}", image.display());
    // Reads of the upper half may fail (only reads go there once the loop starts); the
    // lower half must keep working.
    let cmdline = format!(
        "tests=failing fail_lo={} fail_ops=read failing_secs=3",
        8 * MIB_SECTORS
    );
    let mut truncated = false;
    let run = boot(&disk, &cmdline, "dataplane", dir.path(), |line| {
        if line.starts_with("FAILING loop") && !truncated {
            std::thread::sleep(Duration::from_millis(500));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .expect("open image");
            f.set_len(8 << 20).expect("truncate image");
            truncated = true;
        }
    });
    assert!(
        truncated,
        "the guest never started its loop:\n{}",
        run.dump()
    );
    let c = run.check_common(&image);
    // At least the final pass over the upper half (2048 blocks) fails.
    assert!(c["reads_ioerr"] >= 2048, "{}", run.dump());
    assert_eq!(c["writes_ioerr"], 0, "{}", run.dump());
    let first = run.failure_lines(&image)[0];
    assert!(
        first.contains("read") && first.contains("os error 5") && logged_offset(first) >= 8 << 20,
        "log line lacks op, offset past the new end or EIO: {first}"
    );
}
