//! Running the test guest under our VMM or under QEMU, and the disk images they use.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    mut cmd: Command,
    peer: Peer,
    timeout: Duration,
    echo: bool,
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
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if echo {
                println!("  | {line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send(all);
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
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
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "q35",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "256",
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args([
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=4",
        "-object",
        "iothread,id=io0",
    ])
    .arg("-kernel")
    .arg(guest)
    .args(["-append", cmdline, "-drive"])
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
