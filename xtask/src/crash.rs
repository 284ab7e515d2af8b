//! `cargo xtask crash --runs N [--fault noflush]`: crash consistency that sees the write cache.
//!
//! A SIGKILL of the VMM keeps the host's page cache, so it cannot catch a FLUSH that never
//! reached `fdatasync`. Here the disk logs every write, zeroing and flush it performs
//! (`--disk ...,write-log=PATH`, backend-raw's `WriteLog`, in the spirit of dm-log-writes).
//! Each run boots the guest's durability workload, kills the VMM at a random moment (the crash
//! point), and rebuilds several images from the log the way a disk with a volatile cache may
//! hold them after a power cut: everything the last completed flush covers, plus a random
//! subset of what came after. Every block the guest saw flushed must hold its data in every
//! rebuilt image. `--fault noflush` makes FLUSH complete without syncing (and without the
//! log's marker): the check must then report losses, which shows it can fail.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backend_raw::{parse_log, rebuild_image};
use xtask::durability::{check, parse_flushed, parse_seed, run_until_killed, Flushed};
use xtask::guest::build_guest;
use xtask::pattern::{mix64, Rng};
use xtask::report::tail;

/// [`run_until_killed`], then what the guest said: its pattern seed and the writes each FLUSH
/// covered. Fails if the guest reported a failure or printed no seed.
pub fn run_and_log(
    vmm: Command,
    kill_after: usize,
    delay: Duration,
) -> Result<(u64, Vec<Flushed>), String> {
    let lines = run_until_killed(vmm, kill_after, delay)?;
    let out = lines.join("\n");
    if out.contains("TEST durability FAIL") {
        return Err(format!("the guest reported a failure:\n{}", tail(&out, 20)));
    }
    let seed = lines
        .iter()
        .find_map(|l| parse_seed(l))
        .ok_or_else(|| format!("no DURABILITY line:\n{}", tail(&out, 20)))?;
    Ok((
        seed,
        lines.iter().filter_map(|l| parse_flushed(l)).collect(),
    ))
}

/// Image of one run.
const IMAGE_BYTES: u64 = 16 << 20;
/// Images rebuilt per crash point, each keeping another random subset of the unflushed writes.
const REBUILDS: usize = 4;
/// The io modes, one per run in turn.
const IO_MODES: [&str; 4] = ["dataplane", "iothread", "workers", "vcpu"];

/// Usage line for `xtask crash`.
pub const USAGE: &str = "  crash --runs N [--fault noflush] [--seed S]
        N crash points across io modes, direct on/off, one and two queues; images rebuilt
        from the disk's write log as a volatile write cache may leave them; exits non-zero
        when a flushed block is lost (with --fault noflush it must)";

/// Options of `xtask crash`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashOptions {
    /// Crash points.
    pub runs: usize,
    /// Make FLUSH lie (`fault=noflush`).
    pub noflush: bool,
    /// Seed of the crash points and subsets, if fixed.
    pub seed: Option<u64>,
}

/// Parses the arguments after `crash`.
pub fn parse(args: &[String]) -> Result<CrashOptions, String> {
    let mut o = CrashOptions {
        runs: 0,
        noflush: false,
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
            "--runs" => {
                let v = value()?;
                o.runs = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("--runs needs a number >= 1, not {v}"))?;
            }
            "--fault" => {
                let v = value()?;
                if v != "noflush" {
                    return Err(format!("--fault takes noflush, not {v}"));
                }
                o.noflush = true;
            }
            "--seed" => {
                let v = value()?;
                o.seed = Some(
                    v.parse()
                        .map_err(|_| format!("--seed needs a number, not {v}"))?,
                );
            }
            other => return Err(format!("unknown crash option {other}\n{USAGE}")),
        }
    }
    if o.runs == 0 {
        return Err(format!("crash needs --runs\n{USAGE}"));
    }
    Ok(o)
}

/// What one crash point found.
struct RunResult {
    flushes: usize,
    records: usize,
    blocks_checked: usize,
    lost: Vec<String>,
}

/// Runs the crash points; `Ok(true)` when nothing was lost.
pub fn run(root: &Path, vmm: &Path, o: &CrashOptions) -> Result<bool, String> {
    let guest = build_guest(root)?;
    let dir = root.join("target/crash");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let seed = o.seed.unwrap_or_else(|| {
        mix64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64),
        )
    });
    println!(
        "== crash: {} runs{}, seed {seed}",
        o.runs,
        if o.noflush { ", fault=noflush" } else { "" }
    );
    let mut rng = Rng::new(seed);
    let (mut blocks, mut lost) = (0usize, Vec::new());
    for i in 0..o.runs {
        let point = CrashPoint {
            io_mode: IO_MODES[i % IO_MODES.len()],
            direct: (i / IO_MODES.len()).is_multiple_of(2),
            queues: 1 + (i / 2) % 2,
            guest_seed: rng.next_u64(),
            kill_after: 2 + rng.below(6) as usize,
            delay: Duration::from_micros(rng.below(20_000)),
        };
        let r = point.run(&guest, vmm, &dir, o.noflush, &mut rng)?;
        println!(
            "run {i} ({} direct={} queues={}): killed after {} flushes, {} log records, {} flushed blocks x {REBUILDS} images checked, {} lost",
            point.io_mode,
            if point.direct { "on" } else { "off" },
            point.queues,
            r.flushes,
            r.records,
            r.blocks_checked,
            r.lost.len()
        );
        if r.blocks_checked == 0 {
            return Err(format!(
                "run {i}: the guest flushed nothing before the crash"
            ));
        }
        blocks += r.blocks_checked * REBUILDS;
        lost.extend(r.lost.into_iter().map(|l| format!("run {i}: {l}")));
    }
    for l in lost.iter().take(10) {
        println!("   {l}");
    }
    println!(
        "crash: {} runs, {blocks} flushed blocks checked, {} lost",
        o.runs,
        lost.len()
    );
    Ok(lost.is_empty())
}

/// One crash point: how the VMM runs and when it is killed.
struct CrashPoint {
    io_mode: &'static str,
    direct: bool,
    queues: usize,
    guest_seed: u64,
    kill_after: usize,
    delay: Duration,
}

impl CrashPoint {
    fn run(
        &self,
        guest: &Path,
        vmm: &Path,
        dir: &Path,
        noflush: bool,
        rng: &mut Rng,
    ) -> Result<RunResult, String> {
        let image = dir.join("crash.img");
        let log = dir.join("crash.log");
        std::fs::write(&image, vec![0u8; IMAGE_BYTES as usize])
            .map_err(|e| format!("cannot write {}: {e}", image.display()))?;
        let mut disk = format!(
            "path={},direct={},queues={},write-log={}",
            image.display(),
            if self.direct { "on" } else { "off" },
            self.queues,
            log.display()
        );
        if noflush {
            disk.push_str(",fault=noflush");
        }
        let mut cmd = Command::new(vmm);
        cmd.arg("--kernel")
            .arg(guest)
            .args(["--memory", "128M", "--io-mode", self.io_mode])
            .args([
                "--cmdline",
                &format!("tests=durability seed={:#x}", self.guest_seed),
            ])
            .args(["--disk", &disk]);
        let (seed, listed) = run_and_log(cmd, self.kill_after, self.delay)?;
        let bytes =
            std::fs::read(&log).map_err(|e| format!("cannot read {}: {e}", log.display()))?;
        let records = parse_log(&bytes);
        let mut result = RunResult {
            flushes: listed.len(),
            records: records.len(),
            blocks_checked: 0,
            lost: Vec::new(),
        };
        for k in 0..REBUILDS {
            // The first image keeps none of the unflushed writes, the others random halves.
            let mut img = vec![0u8; IMAGE_BYTES as usize];
            rebuild_image(&mut img, &records, |_| k > 0 && rng.below(2) == 0);
            let (checked, _, lost) = check(seed, &listed, &img);
            result.blocks_checked = checked;
            result
                .lost
                .extend(lost.into_iter().map(|l| format!("image {k}: {l}")));
        }
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&log);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_and_refuse_nonsense() {
        let o = parse(&args("--runs 3 --fault noflush --seed 9")).unwrap();
        assert_eq!((o.runs, o.noflush, o.seed), (3, true, Some(9)));
        assert!(parse(&args("--runs 0")).is_err());
        assert!(parse(&args("--fault eio")).is_err());
        assert!(parse(&[]).is_err(), "--runs is required");
    }
}
