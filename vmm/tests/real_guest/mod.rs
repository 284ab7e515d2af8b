//! Booting the real test guest from integration tests: the pieces every such test file needs.
#![allow(dead_code)]

#[path = "../../../xtask/src/guest.rs"]
pub mod guest;
#[path = "../../../xtask/src/report.rs"]
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
