//! Booting the real test guest from integration tests: the pieces every such test file needs.
#![allow(dead_code)]

#[path = "../../../xtask/src/guest.rs"]
pub mod guest;
#[path = "../../../xtask/src/report.rs"]
pub mod report;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Fails the test, loudly, when /dev/kvm cannot be used: these tests never skip.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test boots a VM and needs read-write access to /dev/kvm: {e}");
    }
}

/// The guest ELF, built once per test binary exactly as `cargo xtask` builds it.
pub fn guest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the vmm crate lives in the workspace");
        guest::build_guest(root).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Boots the guest in the VMM (256M of RAM) with `args` added, waits up to `timeout` (then
/// kills it) and returns its serial output and the VMM's exit status (`None`: killed).
pub fn boot<I, S>(args: I, timeout: Duration) -> (String, Option<i32>)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(guest_elf())
        .args(["--memory", "256M"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vmm");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), status)
}
