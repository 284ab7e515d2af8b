//! Host-testable parts of the test guest: command-line options, data patterns and a latency
//! histogram.
//!
//! The freestanding binary (`src/main.rs`, feature `guest`) uses these; keeping them here lets
//! `cargo test -p guest-test-kernel` check them on the host.
//!
//! ```
//! use guest_test_kernel::{Options, Completion};
//! let o = Options::parse("tests=all bench=randread qd=32 completion=irq kick=always");
//! assert_eq!(o.qd, 32);
//! assert_eq!(o.completion, Completion::Irq);
//! assert!(o.test_enabled("flush"));
//! assert_eq!(o.driver().kick, guest_test_kernel::Kick::Always);
//! ```
#![no_std]
#![deny(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod histogram;
pub mod options;
pub mod pattern;

pub use histogram::Histogram;
pub use options::{
    Completion, DriverOptions, Features, Kick, Options, OptionsError, Tests, Workload,
};
