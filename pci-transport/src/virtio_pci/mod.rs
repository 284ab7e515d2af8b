//! The virtio-pci modern transport (VIRTIO 1.x, 4.1 "Virtio Over PCI Bus").
//!
//! - [`caps`]: the vendor-specific capabilities that locate the virtio structures;
//! - [`common_cfg`]: the common configuration structure as a state machine;
//! - [`layout`]: where this crate places the structures in BAR0;
//! - [`function`]: a complete virtio-pci function composed from the pieces above.

pub mod caps;
pub mod common_cfg;
pub mod function;
pub mod layout;

/// PCI vendor ID of virtio devices (4.1.2 "PCI Device Discovery").
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;

/// Modern PCI device IDs are `0x1040 + virtio device type` (4.1.2).
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;

/// Virtio device type of a block device (5.2).
pub const VIRTIO_ID_BLOCK: u16 = 2;

/// The `device_status` bits (2.1 "Device Status Field").
pub mod device_status {
    /// The guest OS has found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device is suspended (VIRTIO_F_SUSPEND; not offered by this crate).
    pub const SUSPEND: u8 = 16;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// Transport feature bits this crate knows about (6 "Reserved Feature Bits").
pub mod features {
    /// VIRTIO_F_VERSION_1: compliance with VIRTIO 1.x; required for FEATURES_OK here.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_ACCESS_PLATFORM.
    pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
    /// VIRTIO_F_RING_PACKED.
    pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
    /// VIRTIO_F_IN_ORDER.
    pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;
    /// VIRTIO_F_NOTIFICATION_DATA.
    pub const VIRTIO_F_NOTIFICATION_DATA: u64 = 1 << 38;
    /// VIRTIO_F_RING_RESET: per-queue reset through `queue_reset`.
    pub const VIRTIO_F_RING_RESET: u64 = 1 << 40;
}

/// `config_msix_vector` / `queue_msix_vector` value meaning "no vector" (4.1.5.1.2).
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// ISR status bits (4.1.4.5 "ISR status capability").
pub mod isr {
    /// Queue interrupt.
    pub const QUEUE: u8 = 1;
    /// Device configuration change interrupt.
    pub const CONFIG: u8 = 2;
}

/// Largest queue size a split virtqueue may have (2.7 "Split Virtqueues").
pub const MAX_QUEUE_SIZE: u16 = 32768;
