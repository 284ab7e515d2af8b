//! The test suites and the benchmark, one module each, selected by the command line in
//! `app::run`. They build on `driver` and `check` only, never on each other.

pub mod bench;
pub mod durability;
pub mod failing;
pub mod hostile;
pub mod soak;
pub mod tests;
