//! Split virtqueues (VIRTIO 1.x, section 2.7 "Split Virtqueues"), device side and driver side.
//!
//! - [`layout`]: the ring structures as they lie in memory and their sizes and offsets.
//! - [`chain`]: [`DescriptorChain`], a fully validated chain copied out of guest memory.
//! - [`queue`]: [`Queue`], the device half: pop chains, add used elements, decide on
//!   interrupts, suppress kicks.
//! - [`driver`]: [`DriverQueue`], the driver half, used by the test guest and by tests.
//! - [`memory`]: the [`GuestMemory`] trait both halves access the rings through;
//!   [`SliceMemory`] implements it over a byte slice, and the `vm-memory` feature over any
//!   `vm_memory::GuestMemory` (e.g. `GuestMemoryMmap`).
//!
//! The device treats the driver as hostile: nothing it reads from the rings can make it
//! panic, every chain is validated before it is returned, and descriptors are read once.
//! The crate is `no_std` and never allocates.
//!
//! # Example
//!
//! ```
//! use virtqueue_core::{DriverQueue, Queue, RingLayout, SliceMemory};
//!
//! let mut bytes = vec![0u8; 0x4000];
//! let mem = SliceMemory::new(&mut bytes);
//!
//! // Driver: place the rings at 0x1000 and publish a request: 16 bytes to read, 512 to write.
//! let layout = RingLayout::new(16).unwrap();
//! let addrs = layout.addresses(0x1000);
//! let mut driver = DriverQueue::new(&mem, 16, addrs, false).unwrap();
//! let head = driver.add(&mem, &[(0x2000, 16)], &[(0x3000, 512)]).unwrap();
//! assert!(driver.should_kick(&mem));
//!
//! // Device: configured through the transport with the same addresses.
//! let mut queue = Queue::new(16);
//! queue.set_desc_table_address(addrs.desc_table);
//! queue.set_avail_ring_address(addrs.avail_ring);
//! queue.set_used_ring_address(addrs.used_ring);
//! queue.set_ready(true);
//! assert!(queue.is_valid(&mem));
//!
//! let chain = queue.pop(&mem).unwrap().unwrap();
//! assert_eq!(chain.head_index(), head);
//! assert_eq!(chain.readable_len(), 16);
//! assert_eq!(chain.writable_len(), 512);
//! queue.add_used(&mem, chain.head_index(), 512).unwrap();
//! assert!(queue.needs_notification(&mem).unwrap());
//!
//! // Driver: collect the completion; its descriptors are free again.
//! assert_eq!(driver.pop_used(&mem).unwrap(), Some((head, 512)));
//! assert_eq!(driver.num_free(), 16);
//! ```
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

/// Compiles the README example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
