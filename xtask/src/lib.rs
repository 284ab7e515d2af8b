//! Project automation behind `cargo xtask`: building the guest and the VMM, running the guest
//! under our VMM or QEMU, and reading what it reports.

pub mod bench;
pub mod durability;
pub mod guest;
pub mod hostbench;
pub mod nbd_server;
#[path = "../../guest-test-kernel/src/pattern.rs"]
#[allow(dead_code, missing_docs)]
pub mod pattern;
pub mod report;
pub mod runner;
pub mod stats;
pub mod vhost_user;
