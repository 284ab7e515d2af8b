//! Project automation behind `cargo xtask`: building the guest and the VMM, running the guest
//! under our VMM or QEMU, and reading what it reports.

pub mod bench;
pub mod guest;
pub mod hostbench;
pub mod report;
pub mod runner;
pub mod stats;
