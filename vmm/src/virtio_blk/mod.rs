//! The virtio-blk PCI device: the device model of `blk-device` behind the virtio-pci
//! transport of `pci-transport` (VIRTIO 1.x, 4.1 "Virtio Over PCI Bus").
//!
//! [`device`] is the PCI function: config space, BAR0, ioeventfds for the notify registers,
//! MSI-X vectors routed to irqfds; at DRIVER_OK it hands the enabled queues to
//! [`blk_device::device::BlockDevice::activate`], which serves them in the VM's I/O mode.
//! [`context`] is what the VM gives a device, and the VM's shared loop.

pub mod context;
pub mod device;
#[cfg(test)]
mod tests;

pub use context::{shared_loop, DeviceContext, DeviceError};
pub use device::VirtioBlkPci;
