//! `cargo xtask crosscheck --nbd`: what our NBD client wrote, read back by QEMU's.
//!
//! The guest's durability workload writes a fresh zeroed image through our VMM's NBD backend
//! (two queues: a connection each where the server allows several) until it has seen enough
//! FLUSHes complete, and the VMM is killed. The server is then killed too and started anew on
//! the same image, so nothing it still held in memory can help, and `qemu-img convert` reads
//! the whole export through QEMU's own NBD client. Every block the guest saw flushed must hold
//! its data in those bytes, and they must equal the image file's: our client and QEMU's agree
//! on what the export holds, and the server stored it where it says.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::crash::run_and_log;
use xtask::durability::check;
use xtask::guest::build_guest;
use xtask::nbd_server::{NbdServer, NbdServerKind};
use xtask::pattern::mix64;

/// Size of the written image.
const IMAGE_BYTES: usize = 32 << 20;
/// Completed FLUSHes after which the VMM is killed.
const KILL_AFTER_FLUSHES: usize = 60;
/// How long the guest writes on after that, so the kill lands among unflushed writes.
const KILL_DELAY: Duration = Duration::from_millis(150);
/// Fewest flushed blocks a run must verify: fewer means the workload barely ran, and a check
/// of next to nothing passes for the wrong reason.
const MIN_BLOCKS: usize = 1000;
/// The disk's queues: nbdkit's file plugin allows a connection per queue, so a FLUSH on one
/// connection must cover the writes completed on the other.
const QUEUES: u16 = 2;
const EXPORT: &str = "xcheck";

/// What one server's run found.
struct Outcome {
    flushes: usize,
    blocks: usize,
    newer: usize,
    lost: Vec<String>,
    /// Bytes where QEMU's read-back and the image file differ.
    differing: usize,
}

/// Runs the cross-check over each of `kinds`; `Ok(true)` when all passed.
pub fn run(
    root: &Path,
    vmm: &Path,
    kinds: &[NbdServerKind],
    io_mode: Option<&str>,
) -> Result<bool, String> {
    let guest = build_guest(root)?;
    let dir = root.join("target/xtask");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut ok = true;
    for &kind in kinds {
        let what = format!("crosscheck --nbd ({})", kind.program());
        println!("== {what}: our guest writes over our NBD client, QEMU's reads back");
        let o = run_one(&guest, vmm, &dir, kind, io_mode)?;
        println!(
            "== {what}: {} flushes, {} flushed blocks verified in QEMU's read-back ({} sectors newer), {} sectors lost, {} bytes differ from the image file",
            o.flushes,
            o.blocks,
            o.newer,
            o.lost.len(),
            o.differing
        );
        for l in o.lost.iter().take(10) {
            println!("   {l}");
        }
        let passed = o.blocks >= MIN_BLOCKS && o.lost.is_empty() && o.differing == 0;
        if o.blocks < MIN_BLOCKS {
            println!(
                "   only {} flushed blocks, at least {MIN_BLOCKS} needed",
                o.blocks
            );
        }
        println!("== {what}: {}", if passed { "OK" } else { "FAILED" });
        ok &= passed;
    }
    Ok(ok)
}

fn run_one(
    guest: &Path,
    vmm: &Path,
    dir: &Path,
    kind: NbdServerKind,
    io_mode: Option<&str>,
) -> Result<Outcome, String> {
    let image = dir.join("nbd-crosscheck.img");
    let readback = dir.join("nbd-crosscheck-readback.img");
    let socket = dir.join("nbd-crosscheck.sock");
    std::fs::write(&image, vec![0u8; IMAGE_BYTES])
        .map_err(|e| format!("cannot write {}: {e}", image.display()))?;
    let _ = std::fs::remove_file(&readback);

    let server = NbdServer::start(kind, &image, &socket, EXPORT)?;
    let guest_seed = mix64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(11, |d| d.as_nanos() as u64),
    );
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(guest)
        .args(["--memory", "128M"])
        .args([
            "--cmdline",
            &format!("tests=durability seed={guest_seed:#x}"),
        ])
        .arg("--disk")
        .arg(format!("uri={},queues={QUEUES}", server.uri(EXPORT)));
    if let Some(mode) = io_mode {
        cmd.args(["--io-mode", mode]);
    }
    let (seed, listed) = run_and_log(cmd, KILL_AFTER_FLUSHES, KILL_DELAY)?;

    // A server killed without a chance to write back: what it acknowledged as flushed must
    // already be in the image.
    drop(server);
    let server = NbdServer::start(kind, &image, &socket, EXPORT)?;
    let bytes = read_with_qemu(&server.uri(EXPORT), &readback)?;
    drop(server);

    let (blocks, newer, lost) = check(seed, &listed, &bytes);
    let file =
        std::fs::read(&image).map_err(|e| format!("cannot read {}: {e}", image.display()))?;
    let differing = differing_bytes(&bytes, &file);
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&readback);
    Ok(Outcome {
        flushes: listed.len(),
        blocks,
        newer,
        lost,
        differing,
    })
}

/// Reads the whole export at `uri` into `out` with `qemu-img convert` (QEMU's NBD client)
/// and returns its bytes, which must be the image's size.
fn read_with_qemu(uri: &str, out: &Path) -> Result<Vec<u8>, String> {
    let result = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", uri])
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run qemu-img ({e}): install qemu-utils"))?;
    if !result.status.success() {
        return Err(format!(
            "qemu-img convert {uri} failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        ));
    }
    let bytes = std::fs::read(out).map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    if bytes.len() != IMAGE_BYTES {
        return Err(format!(
            "QEMU read {} bytes from {uri}, the image has {IMAGE_BYTES}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Bytes that differ between `a` and `b`, a length difference counting as differing bytes.
fn differing_bytes(a: &[u8], b: &[u8]) -> usize {
    let common = a.iter().zip(b).filter(|(x, y)| x != y).count();
    common + a.len().abs_diff(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_bytes_counts_changes_and_length() {
        assert_eq!(differing_bytes(b"abcd", b"abcd"), 0);
        assert_eq!(differing_bytes(b"abcd", b"abXd"), 1);
        assert_eq!(differing_bytes(b"abcd", b"ab"), 2);
    }
}
