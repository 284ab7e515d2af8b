//! Split virtqueues (VIRTIO 1.x, section 2.7 "Split Virtqueues"), device side and driver side.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod descriptor;
pub mod memory;

pub use descriptor::Descriptor;
pub use memory::{GuestMemory, MemoryError, SliceMemory};
