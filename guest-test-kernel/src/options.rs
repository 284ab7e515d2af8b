//! The guest's command line: `key=value` words separated by spaces.
//!
//! Unknown keys and malformed values never stop the guest: [`Options::parse`] keeps the default
//! for them and [`Options::problems`] lists them so the guest can print a warning.

use core::fmt;

/// Which self-tests to run (`tests=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tests<'a> {
    /// `tests=all`.
    All,
    /// `tests=none`.
    None,
    /// `tests=a,b,c`: only the named tests.
    List(&'a str),
}

/// How the guest learns that requests completed (`completion=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Spin on the used ring in ring 3; device interrupts suppressed.
    Poll,
    /// Wait for an MSI-X interrupt before looking at the used ring.
    Irq,
}

impl Completion {
    /// The word used on the command line and in the `RESULT` line.
    pub const fn name(self) -> &'static str {
        match self {
            Completion::Poll => "poll",
            Completion::Irq => "irq",
        }
    }
}

/// Which features the driver accepts (`features=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// Everything the driver knows and the device offers.
    All,
    /// `VIRTIO_F_VERSION_1` only: no EVENT_IDX, INDIRECT_DESC or MQ, as many simple guest
    /// drivers do.
    Minimal,
}

impl Features {
    /// The word used on the command line and in the `RESULT` line.
    pub const fn name(self) -> &'static str {
        match self {
            Features::All => "all",
            Features::Minimal => "minimal",
        }
    }
}

/// When the driver notifies the device of new requests (`kick=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// When the device asks for it (`VIRTQ_USED_F_NO_NOTIFY`, or `avail_event` with
    /// EVENT_IDX), once per batch.
    Needed,
    /// After every request, whatever the device asked: a simple driver's behaviour.
    Always,
}

impl Kick {
    /// The word used on the command line and in the `RESULT` line.
    pub const fn name(self) -> &'static str {
        match self {
            Kick::Needed => "needed",
            Kick::Always => "always",
        }
    }
}

/// How the driver behaves towards the device: the options [`Options`] hands to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverOptions {
    /// How completions are found.
    pub completion: Completion,
    /// Which features are accepted.
    pub features: Features,
    /// When the device is notified.
    pub kick: Kick,
}

/// The benchmark workload (`bench=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Random-offset reads.
    RandRead,
    /// Random-offset writes.
    RandWrite,
    /// Sequential reads, wrapping at the end of the disk.
    SeqRead,
    /// Sequential writes, wrapping at the end of the disk.
    SeqWrite,
}

impl Workload {
    /// The word used on the command line and in the `RESULT` line.
    pub const fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::SeqRead => "seqread",
            Workload::SeqWrite => "seqwrite",
        }
    }

    /// Whether the workload writes the disk.
    pub const fn is_write(self) -> bool {
        matches!(self, Workload::RandWrite | Workload::SeqWrite)
    }

    /// Whether offsets are random (otherwise sequential).
    pub const fn is_random(self) -> bool {
        matches!(self, Workload::RandRead | Workload::RandWrite)
    }

    fn from_name(s: &str) -> Option<Self> {
        [
            Workload::RandRead,
            Workload::RandWrite,
            Workload::SeqRead,
            Workload::SeqWrite,
        ]
        .into_iter()
        .find(|w| w.name() == s)
    }
}

/// Which requests `tests=failing` expects to fail in its sector range (`fail_ops=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOps {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Reads and writes.
    Any,
}

impl FailOps {
    /// Whether a read (`write == false`) or a write is one of these.
    pub const fn covers(self, write: bool) -> bool {
        match self {
            FailOps::Read => !write,
            FailOps::Write => write,
            FailOps::Any => true,
        }
    }
}

/// A word of the command line that was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsError<'a> {
    /// The key is not one of ours (it may belong to someone else, e.g. `console=`).
    UnknownKey(&'a str),
    /// The key is ours but its value is not valid; the default is kept.
    BadValue {
        /// The key.
        key: &'a str,
        /// The value that was refused.
        value: &'a str,
    },
}

impl fmt::Display for OptionsError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::UnknownKey(k) => write!(f, "unknown option `{k}` ignored"),
            OptionsError::BadValue { key, value } => {
                write!(f, "bad value `{value}` for `{key}`, default kept")
            }
        }
    }
}

impl core::error::Error for OptionsError<'_> {}

/// Everything the command line can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    /// Which self-tests to run.
    pub tests: Tests<'a>,
    /// Benchmark to run after the tests, if any.
    pub bench: Option<Workload>,
    /// Benchmark request size in bytes (a multiple of 512).
    pub bs: u32,
    /// Benchmark requests kept in flight.
    pub qd: u32,
    /// Benchmark duration in seconds.
    pub secs: u32,
    /// Completion mode for tests and benchmark.
    pub completion: Completion,
    /// Features the driver accepts.
    pub features: Features,
    /// When the driver kicks.
    pub kick: Kick,
    /// The disk's expected device ID (`GET_ID`), if given.
    pub serial: Option<&'a str>,
    /// Whether the disk must be read-only (`expect_ro=1`).
    pub expect_ro: bool,
    /// Seed of the data patterns and random offsets; `None` means "derive one at run time".
    pub seed: Option<u64>,
    /// Run the soak workload for this many seconds (`soak=<secs>`) instead of the tests.
    pub soak: Option<u32>,
    /// `tests=failing`: first sector of the range whose requests fail (`fail_lo=`).
    pub fail_lo: u64,
    /// `tests=failing`: end (exclusive) of that range; `None` is the end of the disk
    /// (`fail_hi=`).
    pub fail_hi: Option<u64>,
    /// `tests=failing`: which requests fail in the range (`fail_ops=read|write|any`).
    pub fail_ops: FailOps,
    /// `tests=failing`: loop this many seconds, where requests in the range *may* fail
    /// (`failing_secs=`); without it they *must* fail.
    pub failing_secs: Option<u32>,
    /// Virtio-blk disks the benchmark drives at once (`disks=`, 1 or 2; the self-tests use
    /// the first).
    pub disks: u32,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            tests: Tests::All,
            bench: None,
            bs: 4096,
            qd: 32,
            secs: 3,
            completion: Completion::Poll,
            features: Features::All,
            kick: Kick::Needed,
            serial: None,
            expect_ro: false,
            seed: None,
            soak: None,
            fail_lo: 0,
            fail_hi: None,
            fail_ops: FailOps::Any,
            failing_secs: None,
            disks: 1,
        }
    }
}

impl<'a> Options<'a> {
    /// Parses `cmdline`, keeping the default for anything not understood.
    pub fn parse(cmdline: &'a str) -> Self {
        let mut o = Options::default();
        for word in cmdline.split_ascii_whitespace() {
            // Problems are reported by `problems`; here they only mean "keep the default".
            let _ = o.apply(word);
        }
        o
    }

    /// The words of `cmdline` that [`Options::parse`] ignored, with the reason.
    pub fn problems(cmdline: &'a str) -> impl Iterator<Item = OptionsError<'a>> + 'a {
        let mut scratch = Options::default();
        cmdline
            .split_ascii_whitespace()
            .filter_map(move |w| scratch.apply(w).err())
    }

    /// The driver's behaviour: completion, features and kicks.
    pub fn driver(&self) -> DriverOptions {
        DriverOptions {
            completion: self.completion,
            features: self.features,
            kick: self.kick,
        }
    }

    /// Whether the self-test called `name` is selected.
    pub fn test_enabled(&self, name: &str) -> bool {
        match self.tests {
            Tests::All => true,
            Tests::None => false,
            Tests::List(list) => list.split(',').any(|t| t == name),
        }
    }

    /// Whether `name` is named explicitly in `tests=a,b,c` (modes such as `hostile` or
    /// `durability` run only when asked for by name, never as part of `tests=all`).
    pub fn test_listed(&self, name: &str) -> bool {
        matches!(self.tests, Tests::List(list) if list.split(',').any(|t| t == name))
    }

    fn apply(&mut self, word: &'a str) -> Result<(), OptionsError<'a>> {
        let (key, value) = word.split_once('=').unwrap_or((word, ""));
        let bad = OptionsError::BadValue { key, value };
        match key {
            "tests" => {
                self.tests = match value {
                    "all" => Tests::All,
                    "none" | "" => Tests::None,
                    list => Tests::List(list),
                }
            }
            "bench" => {
                self.bench = match value {
                    "none" | "" => None,
                    v => Some(Workload::from_name(v).ok_or(bad)?),
                }
            }
            "bs" => {
                self.bs = parse_u64(value)
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| *v >= 512 && v % 512 == 0)
                    .ok_or(bad)?
            }
            "qd" => self.qd = parse_u32_nonzero(value).ok_or(bad)?,
            "secs" => self.secs = parse_u32_nonzero(value).ok_or(bad)?,
            "disks" => self.disks = parse_u32_nonzero(value).filter(|&n| n <= 2).ok_or(bad)?,
            "completion" => {
                self.completion = match value {
                    "poll" => Completion::Poll,
                    "irq" => Completion::Irq,
                    _ => return Err(bad),
                }
            }
            "features" => {
                self.features = match value {
                    "all" => Features::All,
                    "minimal" => Features::Minimal,
                    _ => return Err(bad),
                }
            }
            "kick" => {
                self.kick = match value {
                    "needed" => Kick::Needed,
                    "always" => Kick::Always,
                    _ => return Err(bad),
                }
            }
            "serial" => self.serial = Some(value),
            "expect_ro" => {
                self.expect_ro = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(bad),
                }
            }
            "seed" => self.seed = Some(parse_u64(value).ok_or(bad)?),
            "soak" => self.soak = Some(parse_u32_nonzero(value).ok_or(bad)?),
            "fail_lo" => self.fail_lo = parse_u64(value).ok_or(bad)?,
            "fail_hi" => self.fail_hi = Some(parse_u64(value).ok_or(bad)?),
            "fail_ops" => {
                self.fail_ops = match value {
                    "read" => FailOps::Read,
                    "write" => FailOps::Write,
                    "any" => FailOps::Any,
                    _ => return Err(bad),
                }
            }
            "failing_secs" => self.failing_secs = Some(parse_u32_nonzero(value).ok_or(bad)?),
            _ => return Err(OptionsError::UnknownKey(key)),
        }
        Ok(())
    }
}

fn parse_u32_nonzero(s: &str) -> Option<u32> {
    parse_u64(s)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
}

/// Decimal, or hexadecimal with `0x`; an optional `k`/`m` suffix multiplies by 1024/1024².
fn parse_u64(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    v.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_for_empty_cmdline() {
        assert_eq!(Options::parse(""), Options::default());
        assert_eq!(Options::problems("").count(), 0);
    }

    #[test]
    fn parses_every_key() {
        let o = Options::parse(
            "tests=flush,get_id bench=seqwrite bs=64k qd=128 secs=10 completion=irq \
             serial=abc expect_ro=1 seed=0x10",
        );
        assert_eq!(o.tests, Tests::List("flush,get_id"));
        assert!(o.test_enabled("flush") && o.test_enabled("get_id") && !o.test_enabled("fl"));
        assert_eq!(o.bench, Some(Workload::SeqWrite));
        assert_eq!((o.bs, o.qd, o.secs), (65536, 128, 10));
        assert_eq!(o.completion, Completion::Irq);
        assert_eq!(o.serial, Some("abc"));
        assert!(o.expect_ro);
        assert_eq!(o.seed, Some(16));
    }

    #[test]
    fn simple_driver_options() {
        let d = Options::default().driver();
        assert_eq!((d.features, d.kick), (Features::All, Kick::Needed));
        let o = Options::parse("features=minimal kick=always completion=irq");
        assert_eq!(
            o.driver(),
            DriverOptions {
                completion: Completion::Irq,
                features: Features::Minimal,
                kick: Kick::Always,
            }
        );
        assert_eq!(
            Options::parse("features=all kick=needed"),
            Options::default()
        );
        let line = "features=none kick=sometimes features= kick";
        assert_eq!(Options::parse(line), Options::default());
        let problems: std::vec::Vec<_> = Options::problems(line).collect();
        assert_eq!(
            problems,
            [
                OptionsError::BadValue {
                    key: "features",
                    value: "none"
                },
                OptionsError::BadValue {
                    key: "kick",
                    value: "sometimes"
                },
                OptionsError::BadValue {
                    key: "features",
                    value: ""
                },
                OptionsError::BadValue {
                    key: "kick",
                    value: ""
                },
            ]
        );
        assert_eq!(Features::Minimal.name(), "minimal");
        assert_eq!(Options::parse("disks=2").disks, 2);
        assert_eq!(Options::parse("disks=3").disks, 1);
        assert_eq!(Options::problems("disks=0").count(), 1);
        assert_eq!(Kick::Always.name(), "always");
    }

    #[test]
    fn tests_none_disables_all() {
        let o = Options::parse("tests=none");
        assert!(!o.test_enabled("flush"));
        assert!(Options::parse("tests=all").test_enabled("anything"));
    }

    #[test]
    fn bad_values_keep_defaults_and_are_reported() {
        let line =
            "bs=100 qd=0 secs=x completion=maybe expect_ro=2 bench=fast seed=zz console=ttyS0";
        let o = Options::parse(line);
        assert_eq!(o, Options::default());
        let problems: std::vec::Vec<_> = Options::problems(line).collect();
        assert_eq!(problems.len(), 8);
        assert_eq!(problems[7], OptionsError::UnknownKey("console"));
        assert_eq!(
            problems[0],
            OptionsError::BadValue {
                key: "bs",
                value: "100"
            }
        );
    }

    #[test]
    fn modes_run_only_when_listed() {
        let o = Options::parse("tests=hostile soak=30");
        assert!(o.test_listed("hostile") && !o.test_listed("durability"));
        assert!(!Options::parse("tests=all").test_listed("hostile"));
        assert_eq!(o.soak, Some(30));
        assert_eq!(Options::parse("soak=0").soak, None);
    }

    #[test]
    fn failing_options() {
        let o =
            Options::parse("tests=failing fail_lo=2048 fail_hi=4k fail_ops=write failing_secs=3");
        assert!(o.test_listed("failing"));
        assert_eq!((o.fail_lo, o.fail_hi), (2048, Some(4096)));
        assert_eq!(o.fail_ops, FailOps::Write);
        assert!(o.fail_ops.covers(true) && !o.fail_ops.covers(false));
        assert_eq!(o.failing_secs, Some(3));
        assert_eq!(Options::problems("fail_ops=some failing_secs=0").count(), 2);
    }

    #[test]
    fn number_suffixes_do_not_overflow() {
        assert_eq!(parse_u64("1m"), Some(1 << 20));
        assert_eq!(parse_u64("18446744073709551615k"), None);
        assert_eq!(parse_u64("k"), None);
        assert_eq!(parse_u64(""), None);
    }
}
