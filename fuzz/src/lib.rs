//! Fuzz harnesses for the storage stack.
//!
//! Each harness module takes a structured case (plain data) and checks every result against
//! a simple model or invariant, panicking on divergence. The modules depend only on `std`
//! and the crate under test, so each crate's `tests/fuzz_entry_points.rs` includes the same
//! file by path and feeds it proptest-generated cases; the fuzz targets in `fuzz_targets/`
//! build cases from libFuzzer bytes with [`decode`].

pub mod blk;
pub mod decode;
pub mod pci;
pub mod virtqueue;
