//! The `--disk` option: its grammar, its validation, and the limits it is checked against.
//! Every binary that serves a disk (the VMM, a vhost-user back end) parses the same option
//! the same way. Every parser error says what was wrong and how to fix it, in one line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backend_nbd::NbdUri;
use backend_raw::{EngineKind, FaultSpec, FaultSpecError};

use crate::throttle::{Limits, LimitsError};

/// The longest serial number virtio-blk can report (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_MAX_BYTES: usize = blk_proto::VIRTIO_BLK_ID_BYTES;
/// The largest queue size a split virtqueue may have here (2.7 "Split Virtqueues": a power of
/// 2, at most 32768; we bound it lower to keep the rings in a few pages).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// The most request queues one disk may have.
pub const MAX_QUEUES: u16 = 64;

/// One `--disk` option.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskConfig {
    /// Raw image file or block device; for an NBD disk, its URI (for messages only).
    pub path: PathBuf,
    /// An NBD export instead of a file (`uri=nbd://HOST[:PORT]/EXPORT` or
    /// `uri=nbd+unix:///EXPORT?socket=PATH`).
    pub uri: Option<NbdUri>,
    /// How long NBD requests wait for a lost connection to come back (`reconnect-timeout=`).
    pub reconnect_timeout: Duration,
    /// Offer `VIRTIO_BLK_F_RO` and open the image read-only.
    pub readonly: bool,
    /// Open the image with `O_DIRECT` (bypass the host page cache).
    pub direct: bool,
    /// Host I/O engine.
    pub engine: EngineKind,
    /// Number of request queues (`num_queues` with `VIRTIO_BLK_F_MQ` when above 1).
    pub queues: u16,
    /// Size of each queue, a power of two in `1..=256`.
    pub queue_size: u16,
    /// Serial number reported by `VIRTIO_BLK_T_GET_ID`, at most 20 bytes.
    pub serial: String,
    /// Faults to inject into this disk's I/O (`fault=`; tests of failing disks).
    pub fault: Option<FaultSpec>,
    /// Merge adjacent reads or writes of one batch into one host I/O (`merge=on|off`).
    pub merge: bool,
    /// Register guest memory with io_uring (`fixed-buffers=on|off`).
    pub fixed_buffers: bool,
    /// Log every write and flush the disk performs to this file (`write-log=PATH`), for crash
    /// tests ([`backend_raw::WriteLog`]).
    pub write_log: Option<PathBuf>,
    /// I/O limits of this disk alone (`iops=`, `bw=`, ...; [`crate::throttle`]).
    pub limits: Limits,
    /// The `--throttle-group` whose limits this disk shares (`group=`).
    pub group: Option<String>,
}

/// A rejected `--disk` value. The message names the problem and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskConfigError {
    /// A `--disk` item without `=`.
    #[error("--disk item '{0}' is not key=value: write e.g. --disk path=disk.img,readonly=on")]
    DiskSyntax(String),
    /// A `--disk` key we do not know.
    #[error("--disk has unknown key '{0}': use path, uri, readonly, direct, engine, queues, queue-size, serial, fault, merge, fixed-buffers, write-log, reconnect-timeout, iops, iops-rd, iops-wr, bw, bw-rd, bw-wr, iops-burst, bw-burst or group")]
    DiskUnknownKey(String),
    /// A `--disk` key given twice.
    #[error("--disk key '{0}' is given twice: keep one")]
    DiskDuplicateKey(String),
    /// `--disk` without `path=`.
    #[error("--disk '{0}' has no path: add path=IMAGE or uri=nbd://HOST/EXPORT")]
    DiskNoPath(String),
    /// Both `path=` and `uri=`.
    #[error("--disk has both path= and uri=: keep one")]
    DiskPathAndUri,
    /// An NBD URI that does not parse.
    #[error("--disk uri={0} is invalid: {1}")]
    DiskUri(String, String),
    /// A bad reconnect timeout, or one on a disk that is not NBD.
    #[error(
        "--disk reconnect-timeout={0} is invalid: give whole seconds from 0 to 3600, with uri="
    )]
    DiskReconnectTimeout(String),
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
    /// An I/O limit that does not parse or contradicts another.
    #[error("--disk {0}")]
    DiskLimit(#[from] LimitsError),
    /// An empty `group=`.
    #[error("--disk group= is empty: name a --throttle-group")]
    DiskGroup,
    /// An image that cannot be opened.
    #[error("cannot open disk image {path}: {reason}: {fix}")]
    File {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        reason: String,
        /// What the user can do about it.
        fix: &'static str,
    },
}

fn parse_switch(key: &'static str, v: &str) -> Result<bool, DiskConfigError> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(DiskConfigError::DiskBool(key, v.to_string())),
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
    pub fn parse(s: &str) -> Result<Self, DiskConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        let mut path = None;
        let mut serial = None;
        let mut cfg = DiskConfig {
            path: PathBuf::new(),
            uri: None,
            reconnect_timeout: Duration::from_secs(5),
            readonly: false,
            direct: false,
            engine: EngineKind::IoUring,
            queues: 1,
            queue_size: MAX_QUEUE_SIZE,
            serial: String::new(),
            fault: None,
            merge: true,
            fixed_buffers: true,
            write_log: None,
            limits: Limits::default(),
            group: None,
        };
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| DiskConfigError::DiskSyntax(item.to_string()))?;
            if seen.contains(&key) {
                return Err(DiskConfigError::DiskDuplicateKey(key.to_string()));
            }
            seen.push(key);
            match key {
                "path" => path = Some(PathBuf::from(value)),
                "uri" => {
                    let uri = value
                        .parse::<NbdUri>()
                        .map_err(|e| DiskConfigError::DiskUri(value.to_string(), e.to_string()))?;
                    cfg.uri = Some(uri);
                }
                "reconnect-timeout" => {
                    cfg.reconnect_timeout = value
                        .parse::<u64>()
                        .ok()
                        .filter(|s| *s <= 3600)
                        .map(Duration::from_secs)
                        .ok_or_else(|| DiskConfigError::DiskReconnectTimeout(value.to_string()))?
                }
                "readonly" => cfg.readonly = parse_switch("readonly", value)?,
                "direct" => cfg.direct = parse_switch("direct", value)?,
                "merge" => cfg.merge = parse_switch("merge", value)?,
                "fixed-buffers" => cfg.fixed_buffers = parse_switch("fixed-buffers", value)?,
                "write-log" => cfg.write_log = Some(PathBuf::from(value)),
                "engine" => {
                    cfg.engine = match value {
                        "sync" => EngineKind::Sync,
                        "io_uring" | "io-uring" => EngineKind::IoUring,
                        _ => return Err(DiskConfigError::DiskEngine(value.to_string())),
                    }
                }
                "queues" => {
                    cfg.queues = value
                        .parse()
                        .ok()
                        .filter(|q| (1..=MAX_QUEUES).contains(q))
                        .ok_or_else(|| DiskConfigError::DiskQueues(value.to_string()))?
                }
                "queue-size" | "queue_size" => {
                    cfg.queue_size = value
                        .parse::<u16>()
                        .ok()
                        .filter(|q| q.is_power_of_two() && *q <= MAX_QUEUE_SIZE)
                        .ok_or_else(|| DiskConfigError::DiskQueueSize(value.to_string()))?
                }
                "serial" => {
                    if value.len() > SERIAL_MAX_BYTES {
                        return Err(DiskConfigError::DiskSerial(value.to_string()));
                    }
                    serial = Some(value.to_string());
                }
                // `,` separates --disk keys, so the spec's own `,` between conditions is
                // written `;` here.
                "fault" => {
                    let spec = value.replace(';', ",");
                    cfg.fault = Some(spec.parse().map_err(|e: FaultSpecError| {
                        DiskConfigError::DiskFault {
                            spec: value.to_string(),
                            reason: e.to_string(),
                        }
                    })?);
                }
                "group" if value.is_empty() => return Err(DiskConfigError::DiskGroup),
                "group" => cfg.group = Some(value.to_string()),
                _ if cfg.limits.set(key, value)? => {}
                _ => return Err(DiskConfigError::DiskUnknownKey(key.to_string())),
            }
        }
        if let Some(uri) = &cfg.uri {
            if path.is_some() {
                return Err(DiskConfigError::DiskPathAndUri);
            }
            path = Some(PathBuf::from(uri.to_string()));
        } else if seen.contains(&"reconnect-timeout") {
            return Err(DiskConfigError::DiskReconnectTimeout(
                "(without uri=)".into(),
            ));
        }
        cfg.path = path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| DiskConfigError::DiskNoPath(s.to_string()))?;
        let default = match &cfg.uri {
            Some(u) => default_serial(Path::new(if u.export.is_empty() {
                "nbd"
            } else {
                &u.export
            })),
            None => default_serial(&cfg.path),
        };
        cfg.serial = serial.unwrap_or(default);
        cfg.limits.check()?;
        Ok(cfg)
    }

    /// Checks that the image can be opened the way the device will open it (an NBD disk is
    /// checked when it connects).
    pub fn check_file(&self) -> Result<(), DiskConfigError> {
        if self.uri.is_some() {
            return Ok(());
        }
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
                Ok(m) if m.is_dir() => Err(DiskConfigError::File {
                    path: self.path.clone(),
                    reason: "it is a directory".into(),
                    fix: "give a raw image file or a block device",
                }),
                _ => Ok(()),
            },
            Err(e) => Err(DiskConfigError::File {
                path: self.path.clone(),
                reason: e.to_string(),
                fix,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_defaults() {
        let d = DiskConfig::parse("path=/tmp/some-rather-long-image-name.img").unwrap();
        assert_eq!(
            d.path,
            PathBuf::from("/tmp/some-rather-long-image-name.img")
        );
        assert!(!d.readonly && !d.direct);
        assert_eq!(d.engine, EngineKind::IoUring);
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
        assert_eq!(d.engine, EngineKind::Sync);
        assert_eq!((d.queues, d.queue_size), (4, 64));
        assert_eq!(d.serial, "xyz");
    }

    #[test]
    fn disk_rejects() {
        use DiskConfigError::*;
        type Check = fn(&DiskConfigError) -> bool;
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
            ("path=a,iops=0", |e| matches!(e, DiskLimit(_))),
            ("path=a,bw=10Q", |e| matches!(e, DiskLimit(_))),
            ("path=a,iops=9,iops-wr=3", |e| matches!(e, DiskLimit(_))),
            ("path=a,bw-burst=1M", |e| matches!(e, DiskLimit(_))),
            ("path=a,group=", |e| matches!(e, DiskGroup)),
            ("path=a,uri=nbd://h/e", |e| matches!(e, DiskPathAndUri)),
            ("uri=http://h/e", |e| matches!(e, DiskUri(..))),
            ("uri=nbd+unix:///e", |e| matches!(e, DiskUri(..))),
            ("uri=nbd://h/e,reconnect-timeout=x", |e| {
                matches!(e, DiskReconnectTimeout(_))
            }),
            ("path=a,reconnect-timeout=3", |e| {
                matches!(e, DiskReconnectTimeout(_))
            }),
        ];
        for (s, ok) in cases {
            let e = DiskConfig::parse(s).unwrap_err();
            assert!(ok(&e), "{s}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn disk_limits() {
        let d = DiskConfig::parse("path=a,iops-rd=2000,bw-wr=20M,bw-burst=1M,group=g").unwrap();
        assert_eq!(d.limits.iops_rd, Some(2000));
        assert_eq!(d.limits.bw_wr, Some(20 << 20));
        assert_eq!(d.limits.bw_burst, Some(1 << 20));
        assert_eq!(d.group.as_deref(), Some("g"));
        let e = DiskConfig::parse("path=a,iops=1,iops-rd=1").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--disk iops cannot be given with"),
            "{e}"
        );
    }

    #[test]
    fn nbd_disk() {
        let d = DiskConfig::parse("uri=nbd+unix:///vol1?socket=/run/s.sock,queues=2").unwrap();
        let uri = d.uri.as_ref().unwrap();
        assert_eq!(uri.export, "vol1");
        assert_eq!((d.serial.as_str(), d.queues), ("vol1", 2));
        assert_eq!(d.reconnect_timeout, Duration::from_secs(5));
        assert!(d.check_file().is_ok());
        let d = DiskConfig::parse("uri=nbd://10.0.0.1:2000/,reconnect-timeout=30").unwrap();
        assert_eq!(d.reconnect_timeout, Duration::from_secs(30));
        assert_eq!(d.serial, "nbd");
    }

    #[test]
    fn missing_disk_file_is_reported() {
        let d = DiskConfig::parse("path=/nonexistent/x.img").unwrap();
        let e = d.check_file().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.img"), "{e}");
    }
}
