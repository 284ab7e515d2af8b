//! The command line: `--socket PATH --disk SPEC [--mode dataplane|workers] [--poll-us N]`.
//! `--disk` has the VMM's grammar and checks (`blk_device::config::DiskConfig`). Every error
//! is one line saying what to fix.

use std::path::PathBuf;

use blk_device::config::DiskConfig;
use blk_device::mode::IoMode;
use vmm::seccomp::SeccompMode;

/// The usage text of `--help`.
pub const USAGE: &str = "usage: vhost-user-blk --socket PATH --disk path=IMG[,readonly=on][,direct=on][,engine=sync|io_uring][,queues=N][,queue-size=N][,serial=S] [--mode dataplane|workers] [--poll-us N] [--seccomp on|log|off] [--metrics PATH]";

/// What the command line asked for.
#[derive(Debug)]
pub struct Options {
    /// Where to listen for the front end.
    pub socket: PathBuf,
    /// The disk.
    pub disk: DiskConfig,
    /// Who serves the rings.
    pub mode: IoMode,
    /// Busy-poll window of a ring's thread; `None` keeps the device model's default.
    pub poll_us: Option<u32>,
    /// Seccomp filters of the ring (and worker) threads.
    pub seccomp: SeccompMode,
    /// Where to write the device's counters (JSON, the VMM's format) at exit.
    pub metrics: Option<PathBuf>,
}

/// A command line to refuse.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--help`.
    #[error("{USAGE}")]
    Help,
    /// An option that needs a value came last.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// An unknown argument.
    #[error("unknown argument '{0}': see --help")]
    Unknown(String),
    /// An option given twice.
    #[error("{0} is given twice: keep one")]
    Twice(&'static str),
    /// A required option is absent.
    #[error("{0} is required: see --help")]
    Missing(&'static str),
    /// A `--disk` problem.
    #[error(transparent)]
    Disk(#[from] blk_device::config::DiskConfigError),
    /// A mode that needs a VMM (vCPU exits, the VM-wide loop).
    #[error("--mode {0} is not for a vhost-user back end: use dataplane or workers")]
    Mode(String),
    /// A bad `--seccomp`.
    #[error("--seccomp {0} is invalid: use on, log or off")]
    Seccomp(String),
    /// A bad number.
    #[error("--poll-us {0} is not a number of microseconds")]
    PollUs(String),
}

fn set<T>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), CliError> {
    if slot.replace(v).is_some() {
        return Err(CliError::Twice(name));
    }
    Ok(())
}

impl Options {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, CliError> {
        let (mut socket, mut disk, mut mode, mut poll_us) = (None, None, None, None);
        let (mut seccomp, mut metrics) = (None, None);
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            if a == "--help" || a == "-h" {
                return Err(CliError::Help);
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| CliError::MissingValue(name.clone()))
            };
            match name.as_str() {
                "--socket" => set(&mut socket, "--socket", PathBuf::from(value()?))?,
                "--disk" => {
                    let cfg = DiskConfig::parse(&value()?)?;
                    set(&mut disk, "--disk", cfg)?
                }
                "--mode" => {
                    let v = value()?;
                    let m = match v.parse::<IoMode>() {
                        Ok(m @ (IoMode::Dataplane | IoMode::Workers)) => m,
                        _ => return Err(CliError::Mode(v)),
                    };
                    set(&mut mode, "--mode", m)?
                }
                "--poll-us" => {
                    let v = value()?;
                    let n = v.parse::<u32>().map_err(|_| CliError::PollUs(v))?;
                    set(&mut poll_us, "--poll-us", n)?
                }
                "--seccomp" => {
                    let v = value()?;
                    let m = vmm::seccomp::mode_from_str(&v).map_err(|_| CliError::Seccomp(v))?;
                    set(&mut seccomp, "--seccomp", m)?
                }
                "--metrics" => set(&mut metrics, "--metrics", PathBuf::from(value()?))?,
                _ => return Err(CliError::Unknown(a)),
            }
        }
        let disk = disk.ok_or(CliError::Missing("--disk"))?;
        disk.check_file()?;
        Ok(Options {
            socket: socket.ok_or(CliError::Missing("--socket"))?,
            disk,
            mode: mode.unwrap_or(IoMode::Dataplane),
            poll_us,
            seccomp: seccomp.unwrap_or_default(),
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, CliError> {
        Options::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn errors_are_one_line() {
        for bad in [
            "--socket",
            "--socket a --socket b --disk path=/dev/null",
            "--disk path=/dev/null",
            "--socket s --disk path=/dev/null,queues=0",
            "--socket s --disk path=/dev/null --mode vcpu",
            "--socket s --disk path=/dev/null --poll-us x",
            "--socket s --disk path=/dev/null --seccomp maybe",
            "--socket s --disk path=/nonexistent/img",
            "--frob",
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        let o =
            parse("--socket=s --disk path=/dev/null,readonly=on,queues=2 --mode workers").unwrap();
        assert_eq!((o.disk.queues, o.mode), (2, IoMode::Workers));
    }
}
