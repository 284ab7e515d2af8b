//! What the suites share and no suite owns: their environment, the `TEST` lines and the
//! pattern I/O engine. Nothing here imports a suite, so suites stay independent of each other.

pub mod pipeline;
pub mod report;

use guest_test_kernel::Options;

use crate::app::driver::pci::{Bdf, PortCam};

/// What the tests need besides the driver.
pub struct Env<'a> {
    /// Configuration access.
    pub cam: PortCam,
    /// The disk's PCI function.
    pub bdf: Bdf,
    /// End of RAM (for the ring memory accessor).
    pub ram_end: u64,
    /// The command line.
    pub opts: &'a Options<'a>,
    /// Seed of this run's patterns.
    pub seed: u64,
}
