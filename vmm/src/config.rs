//! The validated configuration of one VM, and the parsers for the option strings that build it.
//!
//! The option syntax follows Cloud Hypervisor: `--memory 256M`, `--disk path=IMG,readonly=on`.
//! Every parser error says what was wrong and how to fix it, in one line.

use std::path::PathBuf;

use thiserror::Error;

pub use backend_raw::EngineKind;
pub use blk_device::config::{DiskConfig, DiskConfigError};
pub use blk_device::mode::IoMode;
pub use blk_device::throttle::{GroupSpec, GroupSpecError};

/// The smallest guest RAM we accept: the guest image, its page tables and rings must fit.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
/// The largest guest RAM we accept (a sanity bound, not a KVM limit).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// Everything needed to build and boot one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// ELF64 kernel with a Xen PVH entry note.
    pub kernel: PathBuf,
    /// Kernel command line, passed through `hvm_start_info.cmdline_paddr`.
    pub cmdline: String,
    /// Guest RAM size in bytes.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// The virtio-blk disks, in PCI slot order (slot 1 first).
    pub disks: Vec<DiskConfig>,
    /// Which host threads serve the disks.
    pub io_mode: IoMode,
    /// How long a polling thread spins before it sleeps, in microseconds.
    pub poll_us: u32,
    /// Whether a polling thread keeps polling while requests are in flight.
    pub poll_in_flight: bool,
    /// Worker threads per disk in `IoMode::Workers`.
    pub workers: WorkerCount,
    /// Requests a `workers` queue thread keeps in flight itself before handing more to the pool.
    pub handoff_depth: usize,
    /// Where to write the request trace (Chrome trace-event JSON) at exit.
    pub trace: Option<PathBuf>,
    /// Where to write the device metrics (JSON).
    pub metrics: Option<PathBuf>,
    /// Rewrite the metrics file every this many seconds while the guest runs (0: at exit only).
    pub metrics_interval_secs: u64,
    /// Seccomp filters for the VMM's threads.
    pub seccomp: crate::seccomp::SeccompMode,
    /// Where the vCPU and I/O threads may run.
    pub cpu_affinity: crate::affinity::CpuAffinity,
    /// Limits shared by the disks that name them (`--throttle-group`).
    pub throttle_groups: Vec<GroupSpec>,
}

/// How many pool workers each disk gets in `IoMode::Workers` (`--workers auto|N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCount {
    /// The cores left after the vCPUs and the queue threads, shared between the disks
    /// (0 when none is left: every request then runs on its queue's thread).
    Auto,
    /// Exactly this many.
    Count(usize),
}

impl WorkerCount {
    /// The pool size per disk on a host with `cores` cores running `busy` threads that keep
    /// a core each (vCPUs, queue threads) for `disks` disks.
    ///
    /// ```
    /// use vmm::config::WorkerCount;
    /// assert_eq!(WorkerCount::Auto.resolve(2, 2, 1), 0);
    /// assert_eq!(WorkerCount::Auto.resolve(8, 3, 2), 2);
    /// assert_eq!(WorkerCount::Count(4).resolve(2, 2, 1), 4);
    /// ```
    pub fn resolve(self, cores: usize, busy: usize, disks: usize) -> usize {
        match self {
            WorkerCount::Auto => cores.saturating_sub(busy) / disks.max(1),
            WorkerCount::Count(n) => n,
        }
    }
}

/// A rejected option value. The message names the problem and the fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size string that does not parse.
    #[error(
        "invalid size '{0}' for {1}: use a number with an optional K, M or G suffix, e.g. 256M"
    )]
    BadSize(String, &'static str),
    /// Memory outside the accepted bounds.
    #[error("--memory {0} is out of range: give at least 16M and at most 1024G")]
    MemoryRange(String),
    /// Memory not a whole number of pages.
    #[error("--memory {0} is not a multiple of 4K: round it, e.g. 256M")]
    MemoryAlign(String),
    /// A `--disk` value that does not parse or whose image cannot be opened.
    #[error(transparent)]
    Disk(#[from] DiskConfigError),
    /// A `--throttle-group` that does not parse.
    #[error(transparent)]
    ThrottleGroup(#[from] GroupSpecError),
    /// Two `--throttle-group`s of one name.
    #[error("--throttle-group name={0} is given twice: give each group its own name")]
    GroupTwice(String),
    /// A disk naming a group that was not given.
    #[error(
        "--disk group={0} names no --throttle-group: add --throttle-group name={0},iops=N (or bw=)"
    )]
    UnknownGroup(String),
    /// The same image given to two disks.
    #[error("disk image {0} is given twice: give each disk its own image")]
    DiskTwice(PathBuf),
    /// A file that cannot be opened.
    #[error("cannot open {what} {path}: {reason}: {fix}")]
    File {
        /// "kernel" or "disk image".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        reason: String,
        /// What the user can do about it.
        fix: &'static str,
    },
    /// A `--cpu-affinity` value that does not parse.
    #[error("--cpu-affinity {0} is invalid: {1} (e.g. --cpu-affinity vcpu=0,io=1)")]
    CpuAffinity(String, String),
    /// The kernel command line does not fit the page reserved for it.
    #[error("--cmdline is {0} bytes long: keep it under 4096 bytes")]
    CmdlineTooLong(usize),
}

/// Parses `256M`, `1G`, `512K` or a plain byte count. `what` names the option for the error.
pub fn parse_size(s: &str, what: &'static str) -> Result<u64, ConfigError> {
    blk_device::throttle::parse_size(s.trim())
        .ok_or_else(|| ConfigError::BadSize(s.to_string(), what))
}

/// Parses and bounds-checks the `--memory` value.
pub fn parse_memory(s: &str) -> Result<u64, ConfigError> {
    let bytes = parse_size(s, "--memory")?;
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&bytes) {
        return Err(ConfigError::MemoryRange(s.to_string()));
    }
    if bytes % 4096 != 0 {
        return Err(ConfigError::MemoryAlign(s.to_string()));
    }
    Ok(bytes)
}

impl VmConfig {
    /// Checks what parsing alone cannot: files exist and open, images are not shared,
    /// the command line fits.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Err(e) = std::fs::File::open(&self.kernel) {
            return Err(ConfigError::File {
                what: "kernel",
                path: self.kernel.clone(),
                reason: e.to_string(),
                fix: "give --kernel the path of a PVH ELF image",
            });
        }
        if self.cmdline.len() >= crate::memory::CMDLINE_MAX_BYTES {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        for (i, g) in self.throttle_groups.iter().enumerate() {
            if self.throttle_groups[..i].iter().any(|o| o.name == g.name) {
                return Err(ConfigError::GroupTwice(g.name.clone()));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            if let Some(g) = d.group.as_ref() {
                if !self.throttle_groups.iter().any(|t| &t.name == g) {
                    return Err(ConfigError::UnknownGroup(g.clone()));
                }
            }
            if self.disks[..i].iter().any(|o| o.path == d.path) {
                return Err(ConfigError::DiskTwice(d.path.clone()));
            }
            d.check_file()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512K", "x"), Ok(512 << 10));
        assert_eq!(parse_size("256M", "x"), Ok(256 << 20));
        assert_eq!(parse_size("1G", "x"), Ok(1 << 30));
        assert_eq!(parse_size("2g", "x"), Ok(2 << 30));
        assert_eq!(parse_size("4096", "x"), Ok(4096));
    }

    #[test]
    fn nonsense_sizes_are_rejected() {
        for s in [
            "",
            "M",
            "12X",
            "-1M",
            "1.5G",
            "99999999999999999999G",
            "0x10",
        ] {
            assert!(parse_size(s, "x").is_err(), "{s}");
        }
    }

    proptest::proptest! {
        #[test]
        fn sizes_match_the_arithmetic(n in 0u64..(1 << 34), suffix in 0usize..4) {
            let (text, shift) = [("", 0), ("K", 10), ("M", 20), ("G", 30)][suffix];
            let parsed = parse_size(&format!("{n}{text}"), "x");
            match n.checked_mul(1 << shift) {
                Some(v) => proptest::prop_assert_eq!(parsed, Ok(v)),
                None => proptest::prop_assert!(parsed.is_err()),
            }
        }
    }

    #[test]
    fn memory_bounds() {
        assert_eq!(parse_memory("16M"), Ok(16 << 20));
        assert!(matches!(
            parse_memory("8M"),
            Err(ConfigError::MemoryRange(_))
        ));
        assert!(matches!(
            parse_memory("512K"),
            Err(ConfigError::MemoryRange(_))
        ));
        assert!(matches!(parse_memory("2T"), Err(ConfigError::BadSize(..))));
        assert!(matches!(
            parse_memory("16777217"),
            Err(ConfigError::MemoryAlign(_))
        ));
    }
}
