#![doc = include_str!("../README.md")]
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
