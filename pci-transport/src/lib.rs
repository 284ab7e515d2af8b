//! PCI configuration space, BARs, capabilities, MSI-X and the virtio-pci modern transport
//! (VIRTIO 1.x, 4.1 "Virtio Over PCI Bus").
//!
//! The device side is a set of state machines that a VMM drives with guest accesses and that
//! answer with [`Events`] instead of owning threads, eventfds or interrupt lines:
//!
//! - [`config_space`]: a type-0 header with write / write-1-to-clear masks;
//! - [`bar`]: memory BARs (32/64-bit) and the sizing protocol;
//! - [`capability`]: the capability list;
//! - [`msix`]: the MSI-X capability, table, PBA and delivery rules;
//! - [`virtio_pci`]: the virtio capabilities, the common configuration state machine and a
//!   complete [`VirtioPciFunction`].
//!
//! The driver side ([`driver`]) finds and sets up such a function from inside a `no_std`
//! guest. The crate never allocates; the `std` feature adds nothing yet.
//!
//! # Example: the driver handshake against a device
//!
//! ```
//! use pci_transport::config_space::{command, register};
//! use pci_transport::virtio_pci::common_cfg::offset;
//! use pci_transport::virtio_pci::{device_status as s, features::VIRTIO_F_VERSION_1, layout, VIRTIO_ID_BLOCK};
//! use pci_transport::{Event, VirtioPciFunction, VirtioPciParams};
//!
//! // The VMM builds a virtio-blk function: 1 queue of 256, 2 MSI-X vectors, BAR0 pre-assigned.
//! let params = VirtioPciParams::new(VIRTIO_ID_BLOCK, 1, 256, 2, VIRTIO_F_VERSION_1, 0xe000_0000);
//! let mut dev = VirtioPciFunction::new(&params, &[0u8; 8]).unwrap();
//!
//! // The guest finds it and enables memory decoding.
//! let mut id = [0u8; 4];
//! dev.config_read(register::VENDOR_ID, &mut id);
//! assert_eq!(id, [0xf4, 0x1a, 0x42, 0x10]);
//! let ev = dev.config_write(register::COMMAND, &(command::MEMORY_SPACE | command::BUS_MASTER).to_le_bytes());
//! assert!(matches!(ev.as_slice(), [Event::CommandChanged { .. }]));
//!
//! // Status handshake and feature negotiation through the common configuration (BAR0 + 0).
//! let common = |o: u64| layout::COMMON_CFG_OFFSET + o;
//! dev.bar_write(0, common(offset::DEVICE_STATUS), &[s::ACKNOWLEDGE | s::DRIVER]);
//! dev.bar_write(0, common(offset::DEVICE_FEATURE_SELECT), &1u32.to_le_bytes());
//! let mut hi = [0u8; 4];
//! dev.bar_read(0, common(offset::DEVICE_FEATURE), &mut hi);
//! dev.bar_write(0, common(offset::DRIVER_FEATURE_SELECT), &1u32.to_le_bytes());
//! dev.bar_write(0, common(offset::DRIVER_FEATURE), &hi);
//! let ev = dev.bar_write(0, common(offset::DEVICE_STATUS), &[s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK]);
//! assert!(ev.contains(&Event::FeaturesAccepted(VIRTIO_F_VERSION_1)));
//!
//! // Queue 0: addresses, then enable.
//! dev.bar_write(0, common(offset::QUEUE_SELECT), &0u16.to_le_bytes());
//! dev.bar_write(0, common(offset::QUEUE_DESC), &0x10_0000u64.to_le_bytes());
//! dev.bar_write(0, common(offset::QUEUE_DRIVER), &0x10_1000u64.to_le_bytes());
//! dev.bar_write(0, common(offset::QUEUE_DEVICE), &0x10_2000u64.to_le_bytes());
//! let ev = dev.bar_write(0, common(offset::QUEUE_ENABLE), &1u16.to_le_bytes());
//! assert!(ev.contains(&Event::QueueEnabled(0)));
//!
//! let ev = dev.bar_write(0, common(offset::DEVICE_STATUS), &[s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK | s::DRIVER_OK]);
//! assert!(ev.contains(&Event::DriverOk));
//! let q = dev.queue(0).unwrap();
//! assert_eq!((q.size(), q.desc(), q.enabled()), (256, 0x10_0000, true));
//!
//! // A kick that arrives as an MMIO exit (no ioeventfd attached).
//! let kick = dev.notify_address(0).unwrap() - dev.bar0_address();
//! let ev = dev.bar_write(0, kick, &0u16.to_le_bytes());
//! assert!(ev.contains(&Event::QueueNotify(0)));
//! ```
#![no_std]
#![deny(missing_docs)]

pub mod bar;
pub mod capability;
pub mod config_space;
pub mod driver;
mod error;
mod event;
mod msi;
pub mod msix;
pub mod virtio_pci;

pub use bar::{Bar, BarKind};
pub use config_space::ConfigSpace;
pub use error::Error;
pub use event::{Event, Events, EVENTS_CAPACITY};
pub use msi::{MsixMessage, MAX_MSIX_VECTORS};
pub use msix::{MsixDelivery, MsixTable};
pub use virtio_pci::common_cfg::{CommonConfig, QueueState, MAX_QUEUES};
pub use virtio_pci::function::{Interrupt, VirtioPciFunction, VirtioPciParams};
