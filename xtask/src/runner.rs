//! Running the test guest under our VMM or under QEMU, and the disk images they use.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a guest run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Everything the guest printed on serial (and the VMM on stdout).
    pub stdout: String,
    /// The guest's exit code as it wrote it to port 0xF4, decoded for the peer that ran it;
    /// `None` if the process was killed or ended without one.
    pub guest_code: Option<i32>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Host CPU time (user + system, all threads) the process used over its whole life.
    pub cpu: Option<Duration>,
    /// Host CPU time the process used while the guest benchmarked: from the guest's
    /// [`BENCH_START`] line to its first `RESULT` line (boot and teardown left out).
    pub bench_cpu: Option<Duration>,
}

/// The line the guest prints right before its benchmark starts.
pub const BENCH_START: &str = "# bench: start";

/// User + system time from the text of `/proc/<pid>/stat` (fields 14 and 15, in clock ticks).
pub fn parse_proc_stat_cpu(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    if ticks_per_sec == 0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_sec as f64,
    ))
}

/// CPU time used so far by process `pid` (all its threads, live and ended).
fn process_cpu(pid: u32) -> Option<Duration> {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat_cpu(&stat, u64::try_from(ticks).ok()?)
}

/// User + system time of a `rusage`.
fn rusage_cpu(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time used so far by the calling thread.
pub fn thread_cpu() -> Option<Duration> {
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid for writes.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return None;
    }
    Some(rusage_cpu(&usage))
}

/// Reaps child `pid` if it has ended (`block`: waits for it), returning its exit status and
/// the CPU time it and its threads used.
fn reap(pid: u32, block: bool) -> Result<Option<(ExitStatus, Duration)>, String> {
    let mut raw = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: `raw` and `usage` are valid for writes; `pid` is our own unreaped child.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut raw, flags, &mut usage) };
    match r {
        0 => Ok(None),
        r if r < 0 => Err(format!("wait4: {}", std::io::Error::last_os_error())),
        _ => Ok(Some((ExitStatus::from_raw(raw), rusage_cpu(&usage)))),
    }
}

/// Which virtual machine monitor runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Ours: the exit port ends the VMM with the value written.
    Vmm,
    /// QEMU with `isa-debug-exit`: status is `(v << 1) | 1`.
    Qemu,
}

/// Creates `path` as a `size`-byte image written with data (no holes), unless it already has that size.
pub fn ensure_image(path: &Path, size: u64) -> Result<(), String> {
    if fs::metadata(path).map(|m| m.len() == size).unwrap_or(false) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("partial");
    let mut f = File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    // Data, not zeros from a hole: a benchmark reading holes would measure no I/O at all.
    let mut chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < size {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = ((written as usize + i) as u32)
                .wrapping_mul(2654435761)
                .to_le_bytes()[1];
        }
        let n = chunk.len().min((size - written) as usize);
        f.write_all(&chunk[..n])
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        written += n as u64;
    }
    f.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))
}

/// Makes `path` writable or read-only for everyone (used to prove readonly=on opens read-only).
pub fn set_writable(path: &Path, writable: bool) -> Result<(), String> {
    let mut perms = fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions();
    perms.set_readonly(!writable);
    fs::set_permissions(path, perms).map_err(|e| format!("{}: {e}", path.display()))
}

/// Opens `path` for appending a log of a run.
pub fn open_log(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// Runs `cmd` to completion or until `timeout`, echoing its stdout when `echo` is set.
pub fn run_guest(
    cmd: Command,
    peer: Peer,
    timeout: Duration,
    echo: bool,
) -> Result<RunOutput, String> {
    run_guest_counting(cmd, peer, timeout, echo, &[])
}

/// [`run_guest`], counting in [`RunOutput::bench_cpu`] the CPU of the processes `also` too
/// (a vhost-user back end serving the guest's disk).
pub fn run_guest_counting(
    mut cmd: Command,
    peer: Peer,
    timeout: Duration,
    echo: bool,
    also: &[u32],
) -> Result<RunOutput, String> {
    let start = Instant::now();
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let pid = child.id();
    let pids: Vec<u32> = std::iter::once(pid).chain(also.iter().copied()).collect();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        let (mut at_start, mut bench_cpu) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Read while the process still runs: it ends shortly after its RESULT line.
            let cpu = || {
                pids.iter()
                    .map(|&p| process_cpu(p))
                    .sum::<Option<Duration>>()
            };
            if line.contains(BENCH_START) {
                at_start = cpu();
            } else if bench_cpu.is_none() && line.contains("RESULT ") {
                bench_cpu = at_start.zip(cpu()).map(|(a, b)| b.saturating_sub(a));
            }
            if echo {
                println!("  | {line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send((all, bench_cpu));
    });
    // Reaped with wait4 rather than `Child::wait`, for the rusage of the process.
    let (status, cpu) = loop {
        if let Some((status, cpu)) = reap(pid, false)? {
            break (Some(status), Some(cpu));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break (None, reap(pid, true)?.map(|(_, cpu)| cpu));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (stdout, bench_cpu) = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    let _ = reader.join();
    let guest_code = status
        .and_then(|s| s.code())
        .and_then(|c| decode_exit(peer, c));
    if status.is_none() {
        eprintln!("{program} did not finish within {timeout:?} and was killed");
    }
    Ok(RunOutput {
        stdout,
        guest_code,
        elapsed: start.elapsed(),
        cpu,
        bench_cpu,
    })
}

/// Maps a process exit status back to the value the guest wrote to port 0xF4.
pub fn decode_exit(peer: Peer, status: i32) -> Option<i32> {
    match peer {
        Peer::Vmm => Some(status),
        // isa-debug-exit ends QEMU with (v << 1) | 1; an even status is QEMU's own.
        Peer::Qemu if status & 1 == 1 => Some(status >> 1),
        Peer::Qemu => None,
    }
}

/// QEMU (q35) booting `guest` with `cmdline` and one virtio-blk-pci disk on `image`, served by
/// an iothread with io_uring (`cache` is QEMU's: `none` for O_DIRECT, `writeback` for buffered).
/// The same command line for the cross-check and the bench, so both measure one configuration.
pub fn qemu_command(
    qemu: &Path,
    guest: &Path,
    cmdline: &str,
    image: &Path,
    cache: &str,
    serial: &str,
) -> Command {
    let mut cmd = qemu_machine(qemu, guest, cmdline);
    cmd.args(["-object", "iothread,id=io0", "-drive"])
        .arg(format!(
            "file={},if=none,id=d0,format=raw,cache={cache},aio=io_uring",
            image.display()
        ))
        .arg("-device")
        .arg(format!(
            "virtio-blk-pci,drive=d0,iothread=io0,serial={serial},disable-legacy=on"
        ));
    cmd
}

/// Guest RAM of every QEMU run, in MiB.
pub const QEMU_MEMORY_MIB: u32 = 256;

/// QEMU (q35, KVM, [`QEMU_MEMORY_MIB`] of RAM) booting `guest` with `cmdline`, its serial port
/// on stdout and the exit port the guest reports through; no disk yet.
pub fn qemu_machine(qemu: &Path, guest: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "q35",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
    ])
    .arg("-m")
    .arg(QEMU_MEMORY_MIB.to_string())
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    .arg("-kernel")
    .arg(guest)
    .args(["-append", cmdline]);
    cmd
}

/// The QEMU binary, or an error telling how to install it.
pub fn qemu_binary() -> Result<PathBuf, String> {
    let name = "qemu-system-x86_64";
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} is not installed: install it with `apt-get install qemu-system-x86`")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_decode_per_peer() {
        assert_eq!(decode_exit(Peer::Vmm, 0), Some(0));
        assert_eq!(decode_exit(Peer::Qemu, 1), Some(0));
        assert_eq!(decode_exit(Peer::Qemu, 3), Some(1));
        assert_eq!(decode_exit(Peer::Qemu, 0), None);
    }

    #[test]
    fn proc_stat_cpu_parses() {
        let stat = "4242 (vmm (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 5 0 99 \
                    1000 10 18446744073709551615";
        assert_eq!(parse_proc_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_proc_stat_cpu(stat, 0), None);
        assert_eq!(parse_proc_stat_cpu("4242 (vmm) S 1 2", 100), None);
        assert_eq!(parse_proc_stat_cpu("garbage", 100), None);
    }

    #[test]
    fn cpu_of_a_child_is_counted() {
        // A child that burns some CPU: its rusage must show it (no figure asserted).
        let cmd = {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done",
            ]);
            c
        };
        let out = run_guest(cmd, Peer::Vmm, Duration::from_secs(60), false).unwrap();
        assert_eq!(out.guest_code, Some(0));
        assert_eq!(out.stdout, "done\n");
        assert!(out.cpu.is_some_and(|c| c > Duration::ZERO), "{:?}", out.cpu);
        assert_eq!(out.bench_cpu, None);
    }

    #[test]
    fn image_is_created_with_data_and_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-img-{}", std::process::id()));
        let img = dir.join("d.img");
        ensure_image(&img, 3 << 20).unwrap();
        let bytes = fs::read(&img).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert!(bytes.iter().any(|&b| b != 0));
        ensure_image(&img, 3 << 20).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
