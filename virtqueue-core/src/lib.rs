#![doc = include_str!("../README.md")]
#![no_std]
#![deny(missing_docs)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod chain;
pub mod descriptor;
pub mod driver;
pub mod error;
pub mod event;
pub mod layout;
pub mod memory;
pub mod queue;
#[cfg(test)]
mod testing;
#[cfg(feature = "vm-memory")]
pub mod vm_memory;

pub use chain::{DescriptorChain, MAX_CHAIN_LEN};
pub use descriptor::Descriptor;
pub use driver::{DriverQueue, MAX_DRIVER_QUEUE_SIZE};
pub use error::{ChainError, DriverError, QueueError};
pub use layout::{RingAddresses, RingLayout};
pub use memory::{GuestMemory, MemoryError, SliceMemory};
pub use queue::Queue;
