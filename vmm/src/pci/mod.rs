//! PCI bus 0: a host bridge at 00:00.0, devices in slots 1.., configuration through mechanism #1
//! (ports 0xCF8/0xCFC) and ECAM, BAR accesses routed on the MMIO bus.

pub mod allocator;
pub mod bus;
pub mod config_access;
pub mod host_bridge;

pub use allocator::BarAllocator;
pub use bus::PciBus;
pub use config_access::{PciConfigEcam, PciConfigIo};
pub use host_bridge::HostBridge;

use thiserror::Error;

/// Why a device cannot be plugged in.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciError {
    /// All 31 device slots are taken.
    #[error("PCI bus 0 is full (31 devices); attach fewer disks")]
    BusFull,
    /// The BAR window has no room left.
    #[error("no room for a {0:#x}-byte BAR in the PCI MMIO window; attach fewer disks")]
    NoBarSpace(u64),
    /// A BAR the platform assigned could not be routed.
    #[error(
        "BAR{bar} of PCI slot {slot} at {addr:#x} (+{size:#x}) overlaps RAM or another device"
    )]
    BarConflict {
        /// Slot number.
        slot: u8,
        /// BAR index.
        bar: u8,
        /// Address.
        addr: u64,
        /// Size.
        size: u64,
    },
}
