//! The validated configuration of one VM, and the parsers for the option strings that build it.
//!
//! The option syntax follows Cloud Hypervisor: `--memory 256M`, `--disk path=IMG,readonly=on`.
//! Every parser error says what was wrong and how to fix it, in one line.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// The smallest guest RAM we accept: the guest image, its page tables and rings must fit.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
/// The largest guest RAM we accept (a sanity bound, not a KVM limit).
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// The longest serial number virtio-blk can report (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_MAX_BYTES: usize = 20;
/// The largest queue size a split virtqueue may have here (virtio spec "Virtqueues": a power of 2,
/// at most 32768; we bound it lower to keep the rings in a few pages).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// The most request queues one disk may have.
pub const MAX_QUEUES: u16 = 64;

/// Which host I/O engine serves a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// Blocking `pread`/`pwrite` on the handling thread.
    Sync,
    /// io_uring submission and completion rings.
    IoUring,
}

/// Which host threads handle the disks' queues (the talk's four I/O paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    /// No ioeventfd: a kick exits to the vCPU thread, which pops, parses, does the I/O with
    /// the sync engine and injects the interrupt, all under the VM-wide lock (unmodified
    /// QEMU's global mutex).
    Vcpu,
    /// Kicks through ioeventfd to ONE event-loop thread shared by every disk, which
    /// processes under the same VM-wide lock; no polling (QEMU's virtio-ioeventfd).
    Iothread,
    /// One thread per queue outside any VM-wide lock, ioeventfd in, irqfd out, adaptive
    /// polling.
    Dataplane,
    /// A handler thread per queue pops and parses, a pool of worker threads does the I/O;
    /// adaptive polling, completions in completion order.
    Workers,
}

impl IoMode {
    /// Whether vCPU threads take the VM-wide lock around port I/O and MMIO dispatch.
    pub fn uses_vm_lock(self) -> bool {
        matches!(self, IoMode::Vcpu | IoMode::Iothread)
    }
}

/// One `--disk` option.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Offer `VIRTIO_BLK_F_RO` and open the image read-only.
    pub readonly: bool,
    /// Open the image with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    /// Host I/O engine.
    pub engine: EngineChoice,
    /// Number of request queues (`num_queues` with `VIRTIO_BLK_F_MQ` when above 1).
    pub queues: u16,
    /// Size of each queue, a power of two in `1..=256`.
    pub queue_size: u16,
    /// Serial number reported by `VIRTIO_BLK_T_GET_ID`, at most 20 bytes.
    pub serial: String,
    /// Faults to inject into this disk's I/O (`fault=`; tests of failing disks).
    pub fault: Option<backend_raw::FaultSpec>,
}

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
    /// Worker threads per disk in `IoMode::Workers`.
    pub workers: usize,
    /// Where to write the request trace (Chrome trace-event JSON) at exit.
    pub trace: Option<PathBuf>,
    /// Where to write the device metrics (JSON).
    pub metrics: Option<PathBuf>,
    /// Rewrite the metrics file every this many seconds while the guest runs (0: at exit only).
    pub metrics_interval_secs: u64,
    /// Seccomp filters for the VMM's threads.
    pub seccomp: crate::seccomp::SeccompMode,
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
    /// A `--disk` item without `=`.
    #[error("--disk item '{0}' is not key=value: write e.g. --disk path=disk.img,readonly=on")]
    DiskSyntax(String),
    /// A `--disk` key we do not know.
    #[error("--disk has unknown key '{0}': use path, readonly, direct, engine, queues, queue-size or serial")]
    DiskUnknownKey(String),
    /// A `--disk` key given twice.
    #[error("--disk key '{0}' is given twice: keep one")]
    DiskDuplicateKey(String),
    /// `--disk` without `path=`.
    #[error("--disk '{0}' has no path: add path=IMAGE")]
    DiskNoPath(String),
    /// An on/off switch with another value.
    #[error("--disk {0}={1} is not on or off: write {0}=on or {0}=off")]
    DiskBool(&'static str, String),
    /// An engine name we do not know.
    #[error("--disk engine={0} is unknown: write engine=sync or engine=io_uring")]
    DiskEngine(String),
    /// A bad queue count.
    #[error("--disk queues={0} is invalid: give a number from 1 to 64")]
    DiskQueues(String),
    /// A bad queue size.
    #[error("--disk queue-size={0} is invalid: give a power of two from 1 to 256")]
    DiskQueueSize(String),
    /// A serial number longer than virtio-blk can report.
    #[error("--disk serial={0} is longer than 20 bytes: shorten it")]
    DiskSerial(String),
    /// A fault-injection spec that does not parse.
    #[error("--disk fault={spec} is invalid: {reason} (separate conditions with `;` inside --disk, e.g. fault=eio@write:after=10;every=3)")]
    DiskFault {
        /// The value given.
        spec: String,
        /// Why it does not parse.
        reason: String,
    },
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
    /// The kernel command line does not fit the page reserved for it.
    #[error("--cmdline is {0} bytes long: keep it under 4096 bytes")]
    CmdlineTooLong(usize),
}

/// Parses `256M`, `1G`, `512K` or a plain byte count. `what` names the option for the error.
pub fn parse_size(s: &str, what: &'static str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string(), what);
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 10),
        Some((i, 'm' | 'M')) => (&t[..i], 20),
        Some((i, 'g' | 'G')) => (&t[..i], 30),
        Some(_) => (t, 0),
        None => return Err(bad()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
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

fn parse_switch(key: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ConfigError::DiskBool(key, v.to_string())),
    }
}

/// The default serial: the image's file stem, cut to 20 bytes on a character boundary.
fn default_serial(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = stem.len().min(SERIAL_MAX_BYTES);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    stem[..end].to_string()
}

impl DiskConfig {
    /// Parses one `--disk` value (`path=IMG[,readonly=on][,direct=on][,engine=sync|io_uring]`
    /// `[,queues=N][,queue-size=N][,serial=STR][,fault=SPEC]`). Does not touch the file system.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        let mut path = None;
        let mut serial = None;
        let mut cfg = DiskConfig {
            path: PathBuf::new(),
            readonly: false,
            direct: false,
            engine: EngineChoice::IoUring,
            queues: 1,
            queue_size: MAX_QUEUE_SIZE,
            serial: String::new(),
            fault: None,
        };
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::DiskSyntax(item.to_string()))?;
            if seen.contains(&key) {
                return Err(ConfigError::DiskDuplicateKey(key.to_string()));
            }
            seen.push(key);
            match key {
                "path" => path = Some(PathBuf::from(value)),
                "readonly" => cfg.readonly = parse_switch("readonly", value)?,
                "direct" => cfg.direct = parse_switch("direct", value)?,
                "engine" => {
                    cfg.engine = match value {
                        "sync" => EngineChoice::Sync,
                        "io_uring" | "io-uring" => EngineChoice::IoUring,
                        _ => return Err(ConfigError::DiskEngine(value.to_string())),
                    }
                }
                "queues" => {
                    cfg.queues = value
                        .parse()
                        .ok()
                        .filter(|q| (1..=MAX_QUEUES).contains(q))
                        .ok_or_else(|| ConfigError::DiskQueues(value.to_string()))?
                }
                "queue-size" | "queue_size" => {
                    cfg.queue_size = value
                        .parse::<u16>()
                        .ok()
                        .filter(|q| q.is_power_of_two() && *q <= MAX_QUEUE_SIZE)
                        .ok_or_else(|| ConfigError::DiskQueueSize(value.to_string()))?
                }
                "serial" => {
                    if value.len() > SERIAL_MAX_BYTES {
                        return Err(ConfigError::DiskSerial(value.to_string()));
                    }
                    serial = Some(value.to_string());
                }
                // `,` separates --disk keys, so the spec's own `,` between conditions is
                // written `;` here.
                "fault" => {
                    let spec = value.replace(';', ",");
                    cfg.fault = Some(spec.parse().map_err(|e: backend_raw::FaultSpecError| {
                        ConfigError::DiskFault {
                            spec: value.to_string(),
                            reason: e.to_string(),
                        }
                    })?);
                }
                _ => return Err(ConfigError::DiskUnknownKey(key.to_string())),
            }
        }
        cfg.path = path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| ConfigError::DiskNoPath(s.to_string()))?;
        cfg.serial = serial.unwrap_or_else(|| default_serial(&cfg.path));
        Ok(cfg)
    }

    /// Checks that the image can be opened the way the device will open it.
    pub fn check_file(&self) -> Result<(), ConfigError> {
        let open = std::fs::OpenOptions::new()
            .read(true)
            .write(!self.readonly)
            .open(&self.path);
        let fix = if self.readonly {
            "check the path and its permissions"
        } else {
            "check the path and its permissions, or add readonly=on"
        };
        match open {
            Ok(f) => match f.metadata() {
                Ok(m) if m.is_dir() => Err(ConfigError::File {
                    what: "disk image",
                    path: self.path.clone(),
                    reason: "it is a directory".into(),
                    fix: "give a raw image file or a block device",
                }),
                _ => Ok(()),
            },
            Err(e) => Err(ConfigError::File {
                what: "disk image",
                path: self.path.clone(),
                reason: e.to_string(),
                fix,
            }),
        }
    }
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
        for (i, d) in self.disks.iter().enumerate() {
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

    #[test]
    fn disk_defaults() {
        let d = DiskConfig::parse("path=/tmp/some-rather-long-image-name.img").unwrap();
        assert_eq!(
            d.path,
            PathBuf::from("/tmp/some-rather-long-image-name.img")
        );
        assert!(!d.readonly && !d.direct);
        assert_eq!(d.engine, EngineChoice::IoUring);
        assert_eq!((d.queues, d.queue_size), (1, 256));
        assert_eq!(d.serial, "some-rather-long-ima");
    }

    #[test]
    fn disk_all_keys() {
        let d = DiskConfig::parse(
            "path=a.img,readonly=on,direct=on,engine=sync,queues=4,queue-size=64,serial=xyz",
        )
        .unwrap();
        assert!(d.readonly && d.direct);
        assert_eq!(d.engine, EngineChoice::Sync);
        assert_eq!((d.queues, d.queue_size), (4, 64));
        assert_eq!(d.serial, "xyz");
    }

    #[test]
    fn disk_rejects() {
        use ConfigError::*;
        type Check = fn(&ConfigError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("readonly=on", |e| matches!(e, DiskNoPath(_))),
            ("path=a,color=red", |e| matches!(e, DiskUnknownKey(_))),
            ("path=a,path=b", |e| matches!(e, DiskDuplicateKey(_))),
            ("path=a,readonly=yes", |e| matches!(e, DiskBool(..))),
            ("path=a,engine=aio", |e| matches!(e, DiskEngine(_))),
            ("path=a,queues=0", |e| matches!(e, DiskQueues(_))),
            ("path=a,queue-size=100", |e| matches!(e, DiskQueueSize(_))),
            ("path=a,queue-size=512", |e| matches!(e, DiskQueueSize(_))),
            ("path=a,queue-size=0", |e| matches!(e, DiskQueueSize(_))),
            ("path=a,serial=123456789012345678901", |e| {
                matches!(e, DiskSerial(_))
            }),
            ("path=a,junk", |e| matches!(e, DiskSyntax(_))),
        ];
        for (s, ok) in cases {
            let e = DiskConfig::parse(s).unwrap_err();
            assert!(ok(&e), "{s}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn missing_disk_file_is_reported() {
        let d = DiskConfig::parse("path=/nonexistent/x.img").unwrap();
        let e = d.check_file().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.img"), "{e}");
    }
}
