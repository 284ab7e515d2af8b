//! The command line, in Cloud Hypervisor's style, turned into a [`VmConfig`].

use std::path::PathBuf;

use clap::Parser;

use crate::affinity::CpuAffinity;
use crate::config::{parse_memory, ConfigError, DiskConfig, IoMode, VmConfig, WorkerCount};
use crate::seccomp::SeccompMode;

/// `vmm --kernel PATH [--cmdline STR] [--memory 256M] [--cpus 1] [--disk path=IMG,...]...`
#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "A KVM VMM for a PVH guest with virtio-blk-pci disks"
)]
pub struct Cli {
    /// ELF64 kernel with a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Guest RAM: bytes, or a number with a K, M or G suffix; at least 16M.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub memory: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// A virtio-blk disk, as comma-separated key=value items: path=PATH (required),
    /// readonly=on|off, direct=on|off, engine=sync|io_uring, queues=N, queue-size=N (a power of
    /// two up to 256), serial=STR (up to 20 bytes), fault=SPEC (inject I/O errors: the grammar
    /// of backend-raw's FaultSpec, with `;` between conditions). Limits: iops=N, iops-rd=N,
    /// iops-wr=N, bw=BYTES/s, bw-rd=, bw-wr= (K/M/G suffixes), iops-burst=N, bw-burst=BYTES,
    /// group=G (share a --throttle-group). Reads and writes are charged one op and their bytes;
    /// FLUSH one op; DISCARD and WRITE_ZEROES one op and no bytes; GET_ID nothing. Repeat for
    /// more disks.
    #[arg(long, value_name = "path=PATH,...")]
    pub disk: Vec<String>,
    /// Limits shared by the disks that name the group with `--disk ...,group=G`; disks of one
    /// group take turns for its tokens. Keys as in --disk: iops, iops-rd, iops-wr, bw, bw-rd,
    /// bw-wr (K/M/G suffixes), iops-burst, bw-burst.
    #[arg(long, value_name = "name=G,iops=N,bw=BYTES")]
    pub throttle_group: Vec<String>,
    /// Which host threads serve the disks' queues.
    #[arg(long, default_value = "workers")]
    pub io_mode: IoMode,
    /// How long a polling thread (dataplane, workers) spins before sleeping, in
    /// microseconds; the window adapts below this maximum. 0 never polls.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POLL_US)]
    pub poll_us: u32,
    /// Whether a polling thread keeps polling while requests are in flight (across the disk's
    /// latency, for about twice the completion time it measures) instead of sleeping after
    /// --poll-us.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub poll_in_flight: bool,
    /// Pool worker threads per disk with --io-mode workers: `auto` gives each disk a share of
    /// the cores left after the vCPUs and the queue threads (0 when none is left: every
    /// request then runs on its queue's thread); N (0 to 64) that many.
    #[arg(long, value_name = "auto|N", default_value = "auto", value_parser = parse_workers)]
    pub workers: WorkerCount,
    /// With --io-mode workers: requests a queue thread keeps in flight on its own engine before
    /// it hands more to the pool (0 hands every request to the pool).
    #[arg(long, value_name = "N", default_value_t = blk_device::handoff::HANDOFF_DEPTH)]
    pub handoff_depth: usize,
    /// Write a request trace (Chrome trace-event JSON) to PATH at exit.
    #[arg(long, value_name = "PATH")]
    pub trace: Option<PathBuf>,
    /// Write the devices' metrics (JSON) to PATH at exit.
    #[arg(long, value_name = "PATH")]
    pub metrics: Option<PathBuf>,
    /// Also rewrite the metrics file every SECS seconds while the guest runs (needs --metrics).
    #[arg(long, value_name = "SECS", default_value_t = 0, requires = "metrics")]
    pub metrics_interval: u64,
    /// Confine every VMM thread to the system calls it needs (see docs/seccomp.md): `on`
    /// kills the VMM on a violation, `log` only logs it, `off` installs no filter.
    #[arg(long, value_enum, default_value_t = SeccompMode::On)]
    pub seccomp: SeccompMode,
    /// Pin threads to host CPUs: `vcpu=LIST,io=LIST` (LIST: CPU numbers and ranges joined by
    /// `:`, e.g. `0:2-3`); `io` covers queue threads, pool workers and the shared I/O thread,
    /// which take the CPUs the vCPUs do not when only `vcpu` is given.
    #[arg(long, value_name = "vcpu=LIST,io=LIST")]
    pub cpu_affinity: Option<String>,
}

/// The default `--poll-us`; see [`blk_device::poll::DEFAULT_POLL_US`].
pub const DEFAULT_POLL_US: u32 = blk_device::poll::DEFAULT_POLL_US;
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}' is not on or off")),
    }
}

fn parse_workers(s: &str) -> Result<WorkerCount, String> {
    match s.parse::<usize>() {
        _ if s == "auto" => Ok(WorkerCount::Auto),
        Ok(n @ 0..=64) => Ok(WorkerCount::Count(n)),
        _ => Err(format!(
            "'{s}' is not a worker count: give auto or a number from 0 to 64"
        )),
    }
}

impl Cli {
    /// Validates the option values and the files they name.
    pub fn into_config(self) -> Result<VmConfig, ConfigError> {
        let disks = self
            .disk
            .iter()
            .map(|d| DiskConfig::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let throttle_groups = self
            .throttle_group
            .iter()
            .map(|g| g.parse())
            .collect::<Result<Vec<_>, _>>()?;
        let config = VmConfig {
            throttle_groups,
            kernel: self.kernel,
            cmdline: self.cmdline,
            memory_bytes: parse_memory(&self.memory)?,
            cpus: self.cpus,
            disks,
            io_mode: self.io_mode,
            poll_us: self.poll_us,
            poll_in_flight: self.poll_in_flight,
            workers: self.workers,
            handoff_depth: self.handoff_depth,
            trace: self.trace,
            metrics: self.metrics,
            metrics_interval_secs: self.metrics_interval,
            seccomp: self.seccomp,
            cpu_affinity: match &self.cpu_affinity {
                Some(a) => CpuAffinity::parse(a)?,
                None => CpuAffinity::default(),
            },
        };
        config.check()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmm").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--kernel", "k"]).unwrap();
        assert_eq!(cli.memory, "256M");
        assert_eq!(cli.cpus, 1);
        assert_eq!(cli.io_mode, IoMode::Workers);
        assert_eq!(cli.poll_us, DEFAULT_POLL_US);
        assert_eq!(cli.workers, WorkerCount::Auto);
        assert!(cli.trace.is_none() && cli.metrics.is_none());
        assert_eq!(cli.metrics_interval, 0);
        assert!(cli.disk.is_empty());
    }

    #[test]
    fn repeated_disks_and_modes() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--disk",
            "path=a",
            "--disk",
            "path=b,queues=2",
            "--io-mode",
            "dataplane",
            "--poll-us",
            "0",
            "--cpus",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.disk, ["path=a", "path=b,queues=2"]);
        assert_eq!(cli.io_mode, IoMode::Dataplane);
        assert_eq!((cli.poll_us, cli.cpus), (0, 2));
    }

    #[test]
    fn workers_trace_and_metrics() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--workers",
            "4",
            "--trace",
            "t.json",
            "--metrics",
            "m.json",
            "--metrics-interval",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.workers, WorkerCount::Count(4));
        assert_eq!(cli.trace.as_deref(), Some(std::path::Path::new("t.json")));
        assert_eq!(cli.metrics.as_deref(), Some(std::path::Path::new("m.json")));
        assert_eq!(cli.metrics_interval, 2);
        assert_eq!(
            parse(&["--kernel", "k", "--workers", "0"]).unwrap().workers,
            WorkerCount::Count(0)
        );
        assert!(parse(&["--kernel", "k", "--workers", "65"]).is_err());
        assert!(parse(&["--kernel", "k", "--workers", "many"]).is_err());
        assert!(parse(&["--kernel", "k", "--metrics-interval", "2"]).is_err());
    }

    #[test]
    fn usage_errors_come_from_clap() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--kernel", "k", "--cpus", "0"]).is_err());
        assert!(parse(&["--kernel", "k", "--io-mode", "turbo"]).is_err());
    }

    #[test]
    fn into_config_reports_missing_kernel() {
        let e = parse(&["--kernel", "/nonexistent/kernel"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(matches!(e, ConfigError::File { what: "kernel", .. }), "{e}");
    }

    #[test]
    fn into_config_builds_disks() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k");
        let img = dir.path().join("d.img");
        std::fs::write(&kernel, b"x").unwrap();
        std::fs::write(&img, [0u8; 512]).unwrap();
        let cfg = parse(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "1G",
            "--disk",
            &format!("path={},readonly=on", img.display()),
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(cfg.memory_bytes, 1 << 30);
        assert_eq!(cfg.disks.len(), 1);
        assert!(cfg.disks[0].readonly);
        assert_eq!(cfg.disks[0].serial, "d");
    }
}
