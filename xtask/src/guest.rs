//! Building the freestanding test guest. Shared by xtask and the VMM's end-to-end tests
//! (included there with `#[path]`), so both boot exactly the same ELF.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags the guest needs on every crate it links: no red zone (interrupts run on the same
/// stack), static relocation (no loader), abort on panic (no unwinder).
pub const GUEST_RUSTFLAGS: &str = "-C relocation-model=static -C no-redzone=yes -C panic=abort";

/// The host target, named explicitly so RUSTFLAGS reach only the guest and not build
/// scripts or proc macros.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The workspace's target directory: `CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Builds the guest ELF (release) into `<target>/guest` (its own directory, since its
/// RUSTFLAGS differ from the host's) and returns its path.
pub fn build_guest(root: &Path) -> Result<PathBuf, String> {
    let target_dir = target_dir(root).join("guest");
    let status = Command::new(cargo())
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", GUEST_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--release",
            "-p",
            "guest-test-kernel",
            "--features",
            "guest",
        ])
        .args(["--target", GUEST_TARGET])
        .status()
        .map_err(|e| format!("cannot run cargo to build the guest: {e}"))?;
    if !status.success() {
        return Err(format!("building the guest failed ({status})"));
    }
    Ok(target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("guest-test-kernel"))
}

/// Builds the VMM (release) and returns the path of its binary.
pub fn build_vmm(root: &Path) -> Result<PathBuf, String> {
    build_release(root, "vmm")
}

/// Builds the binary of workspace package `package` (release) and returns its path.
pub fn build_release(root: &Path, package: &str) -> Result<PathBuf, String> {
    let status = Command::new(cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", package])
        .status()
        .map_err(|e| format!("cannot run cargo to build {package}: {e}"))?;
    if !status.success() {
        return Err(format!("building {package} failed ({status})"));
    }
    Ok(target_dir(root).join("release").join(package))
}
