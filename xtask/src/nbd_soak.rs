//! `cargo xtask nbd-soak`: the guest's verified soak over NBD while the server is killed and
//! restarted. Back within the reconnect timeout: the guest must see no error and no mismatch,
//! and the VMM's metrics must show the reconnection (so the check cannot pass without an
//! outage). Back after it (`--long-outage`): the requests of the outage fail (IOERR), none
//! mismatches, and the guest's I/O goes on once the server is back.

use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use xtask::guest::build_guest;
use xtask::nbd_server::{NbdServer, NbdServerKind};
use xtask::runner::{ensure_image, run_guest, Peer};

use crate::soak::parse_soak_line;

/// Seconds of guest workload; the outage starts after `OUTAGE_AT` and lasts `OUTAGE` (or
/// `LONG_OUTAGE`, past the reconnect timeout).
const SOAK_SECS: u32 = 15;
const OUTAGE_AT: Duration = Duration::from_secs(4);
const OUTAGE: Duration = Duration::from_millis(1500);
const LONG_OUTAGE: Duration = Duration::from_secs(6);
/// The disk's reconnect timeout, well above the outage.
const RECONNECT_TIMEOUT_SECS: u32 = 5;

/// Runs the soak over `kind`'s server with a short outage (or a long one); `Ok(true)` when
/// it passed.
pub fn run(root: &Path, vmm: &Path, kind: NbdServerKind, long: bool) -> Result<bool, String> {
    let outage = if long { LONG_OUTAGE } else { OUTAGE };
    let guest = build_guest(root)?;
    let disk = root.join("target/xtask/nbd-soak.img");
    ensure_image(&disk, 64 << 20)?;
    let socket = root.join("target/xtask/nbd-soak.sock");
    let metrics = root.join("target/xtask/nbd-soak-metrics.json");
    let _ = std::fs::remove_file(&metrics);
    let server = NbdServer::start(kind, &disk, &socket, "soak")?;
    let uri = server.uri("soak");
    // The thread that restarts the server keeps it until the run ends: nbdkit ends with the
    // thread that started it. Dropping the sender (every exit path) lets it go.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let chaos = {
        let (disk, socket) = (disk.clone(), socket.clone());
        std::thread::spawn(move || -> Result<(), String> {
            std::thread::sleep(OUTAGE_AT);
            println!("== nbd-soak: killing {}", kind.program());
            drop(server);
            std::thread::sleep(outage);
            let back = NbdServer::start(kind, &disk, &socket, "soak")?;
            println!("== nbd-soak: {} is back", kind.program());
            let _ = done_rx.recv();
            drop(back);
            Ok(())
        })
    };
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel").arg(&guest).args([
        "--memory",
        "256M",
        "--cmdline",
        &format!("tests=none soak={SOAK_SECS} completion=poll"),
    ]);
    cmd.arg("--disk").arg(format!(
        "uri={uri},reconnect-timeout={RECONNECT_TIMEOUT_SECS}"
    ));
    cmd.arg("--metrics").arg(&metrics);
    println!(
        "== nbd-soak: {SOAK_SECS} s over {}, server killed after {OUTAGE_AT:?} for {outage:?}",
        kind.program()
    );
    let out = run_guest(cmd, Peer::Vmm, Duration::from_secs(180), true);
    drop(done_tx);
    let restarted = chaos.join().map_err(|_| "the restart thread panicked")?;
    let out = out?;
    restarted?;
    let Some(c) = parse_soak_line(&out.stdout) else {
        println!(
            "== nbd-soak: FAILED, no SOAK line (guest exit code {:?})",
            out.guest_code
        );
        return Ok(false);
    };
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    let m = std::fs::read_to_string(&metrics).unwrap_or_default();
    let reconnects = m
        .split("\"reconnects\":")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "== nbd-soak: {} ops, mismatches {}, errors {}, reconnects {reconnects}",
        get("ops"),
        get("mismatches"),
        get("errors")
    );
    let ok = if long {
        // The guest's last progress line comes after the server is back (the outage ends
        // 10 s into a 15 s soak); operations completed after it show service resumed.
        let after = out
            .stdout
            .lines()
            .filter(|l| l.contains("# soak t="))
            .filter_map(|l| {
                l.split("ops=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .collect::<Vec<_>>();
        let resumed = after.len() >= 2 && get("ops") > after[after.len() - 1];
        get("errors") > 0 && get("mismatches") == 0 && reconnects >= 1 && resumed
    } else {
        get("ops") > 0
            && get("mismatches") == 0
            && get("errors") == 0
            && reconnects >= 1
            && out.guest_code == Some(0)
    };
    println!("== nbd-soak: {}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}
