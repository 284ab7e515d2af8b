//! `cargo xtask soak --minutes N`: boots the guest's soak workload (`soak=<secs>`: mixed
//! verified reads, writes, flushes, discards and write-zeroes at QD 64 over every queue) in
//! our VMM with two queues, and fails unless it completed requests with zero mismatches.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use xtask::guest::build_guest;
use xtask::report::GuestReport;
use xtask::runner::{ensure_image, run_guest, Peer};

/// Image of the soak (its own, so the other commands' images keep their data).
const SOAK_DISK_SIZE: u64 = 256 << 20;

/// Options of `xtask soak`.
#[derive(Debug, Clone, PartialEq)]
pub struct SoakOptions {
    /// Duration in minutes (fractions allowed).
    pub minutes: f64,
    /// Request queues of the disk.
    pub queues: u16,
    /// `--io-mode` passed to the VMM, if any.
    pub io_mode: Option<String>,
    /// Guest completion mode (`poll` or `irq`).
    pub completion: String,
    /// Pattern seed, if fixed.
    pub seed: Option<u64>,
}

/// Usage line for `xtask soak`.
pub const USAGE: &str =
    "  soak --minutes N [--queues Q] [--io-mode M] [--completion poll|irq] [--seed S]
        mixed verified I/O at QD 64 over Q queues (default 2) for N minutes (fractions
        allowed, e.g. 0.5); fails on any mismatch or failed request";

/// Parses the arguments after `soak`.
pub fn parse(args: &[String]) -> Result<SoakOptions, String> {
    let mut o = SoakOptions {
        minutes: 0.0,
        queues: 2,
        io_mode: None,
        completion: "poll".into(),
        seed: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--minutes" => {
                let v = value()?;
                o.minutes = v
                    .parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && *m > 0.0 && *m <= 7.0 * 24.0 * 60.0)
                    .ok_or_else(|| {
                        format!("--minutes needs a positive number of minutes, not {v}")
                    })?;
            }
            "--queues" => {
                let v = value()?;
                o.queues =
                    v.parse().ok().filter(|q| *q >= 1).ok_or_else(|| {
                        format!("--queues needs a number of queues >= 1, not {v}")
                    })?;
            }
            "--io-mode" => o.io_mode = Some(value()?),
            "--completion" => {
                o.completion = value()?;
                if !matches!(o.completion.as_str(), "poll" | "irq") {
                    return Err(format!(
                        "--completion must be poll or irq, not {}",
                        o.completion
                    ));
                }
            }
            "--seed" => {
                let v = value()?;
                o.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed needs a number, not {v}"))?,
                );
            }
            other => return Err(format!("unknown soak option {other}\n{USAGE}")),
        }
    }
    if o.minutes == 0.0 {
        return Err(format!("soak needs --minutes\n{USAGE}"));
    }
    Ok(o)
}

impl SoakOptions {
    /// Whole seconds of guest workload (at least 1).
    pub fn secs(&self) -> u32 {
        ((self.minutes * 60.0).ceil() as u32).max(1)
    }

    /// The guest command line.
    pub fn cmdline(&self) -> String {
        let mut line = format!(
            "tests=none soak={} completion={}",
            self.secs(),
            self.completion
        );
        if let Some(seed) = self.seed {
            line.push_str(&format!(" seed={seed}"));
        }
        line
    }
}

/// The counters of the guest's final `SOAK key=value ...` line.
pub fn parse_soak_line(output: &str) -> Option<HashMap<String, u64>> {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("SOAK "))?;
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Runs the soak; `Ok(true)` when it passed. `vmm` is the VMM binary to run.
pub fn run(root: &Path, vmm: &Path, o: &SoakOptions) -> Result<bool, String> {
    let guest = build_guest(root)?;
    let disk = root.join("target/xtask/soak.img");
    ensure_image(&disk, SOAK_DISK_SIZE)?;
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(&guest)
        .args(["--memory", "256M", "--cmdline", &o.cmdline()]);
    cmd.arg("--disk")
        .arg(format!("path={},queues={}", disk.display(), o.queues));
    if let Some(mode) = &o.io_mode {
        cmd.args(["--io-mode", mode]);
    }
    println!(
        "== soak: {} s, {} queue(s), guest cmdline \"{}\"",
        o.secs(),
        o.queues,
        o.cmdline()
    );
    let timeout = Duration::from_secs(u64::from(o.secs()) + 120);
    let out = run_guest(cmd, Peer::Vmm, timeout, true)?;
    let report = GuestReport::parse(&out.stdout);
    let soak_test = report.tests.iter().find(|t| t.name == "soak");
    let counts = parse_soak_line(&out.stdout);
    println!();
    let Some(c) = counts else {
        println!(
            "== soak: FAILED, no SOAK line (guest exit code {:?})",
            out.guest_code
        );
        return Ok(false);
    };
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    let secs = out.elapsed.as_secs_f64();
    println!(
        "== soak: {} ops in {secs:.1} s ({:.0}/s): reads {} writes {} flushes {} discards {} write_zeroes {}; mismatches {} errors {}",
        get("ops"),
        get("ops") as f64 / secs.max(0.001),
        get("reads"),
        get("writes"),
        get("flushes"),
        get("discards"),
        get("write_zeroes"),
        get("mismatches"),
        get("errors"),
    );
    let passed = soak_test.is_some_and(|t| t.failure.is_none());
    let ok = passed
        && get("ops") > 0
        && get("mismatches") == 0
        && get("errors") == 0
        && out.guest_code == Some(0);
    if ok {
        println!("== soak: OK");
    } else {
        println!(
            "== soak: FAILED ({}, guest exit code {:?})",
            soak_test
                .and_then(|t| t.failure.clone())
                .unwrap_or_else(|| "see the SOAK line".into()),
            out.guest_code
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn minutes_accept_fractions() {
        let o = parse(&args("--minutes 0.5")).unwrap();
        assert_eq!((o.secs(), o.queues), (30, 2));
        assert_eq!(parse(&args("--minutes 0.001")).unwrap().secs(), 1);
        assert!(o.cmdline().contains("soak=30"));
        for bad in [
            "",
            "--minutes 0",
            "--minutes -1",
            "--minutes x",
            "--minutes nan",
            "--minutes 1 --queues 0",
            "--bogus",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn soak_line_is_read() {
        let out = "# soak t=5s ops=1\nSOAK ops=10 reads=4 writes=3 flushes=1 discards=1 write_zeroes=1 mismatches=0 errors=0\nTEST soak PASS\n";
        let c = parse_soak_line(out).unwrap();
        assert_eq!((c["ops"], c["mismatches"], c["write_zeroes"]), (10, 0, 1));
        assert!(parse_soak_line("SOAK ops=x").is_none());
        assert!(parse_soak_line("nothing").is_none());
    }
}
