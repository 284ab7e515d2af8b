//! The platform's emulated devices and the buses vCPU exits are dispatched on.

pub mod bus;
pub mod exit_port;
pub mod serial;
pub mod shutdown;

pub use bus::{Bus, BusDevice};
pub use shutdown::{Shutdown, ShutdownHooks};
