//! Virtio structure PCI capabilities (4.1.4 "Virtio Structure PCI Capabilities").
//!
//! These are vendor-specific capabilities (ID 0x09) telling the driver in which BAR, at which
//! offset and with which length each virtio structure lives. The layouts are `zerocopy` types
//! so both sides can serialise and parse them without unsafe code.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::capability;

/// `cfg_type`: common configuration.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type`: notifications.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type`: ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type`: device-specific configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type`: PCI configuration access.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// `cfg_type`: shared memory region.
pub const VIRTIO_PCI_CAP_SHARED_MEMORY_CFG: u8 = 8;
/// `cfg_type`: vendor-specific data.
pub const VIRTIO_PCI_CAP_VENDOR_CFG: u8 = 9;

/// `struct virtio_pci_cap`.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct VirtioPciCap {
    /// Generic PCI field: `PCI_CAP_ID_VNDR` (0x09).
    pub cap_vndr: u8,
    /// Generic PCI field: next pointer.
    pub cap_next: u8,
    /// Length of this capability structure including extra data.
    pub cap_len: u8,
    /// Which structure this is (`VIRTIO_PCI_CAP_*`).
    pub cfg_type: u8,
    /// BAR holding the structure.
    pub bar: u8,
    /// Distinguishes several capabilities of one type.
    pub id: u8,
    /// Pads to a full dword.
    pub padding: [u8; 2],
    /// Offset of the structure within the BAR.
    pub offset: U32,
    /// Length of the structure in bytes.
    pub length: U32,
}

impl VirtioPciCap {
    /// Size of the structure.
    pub const LEN: usize = core::mem::size_of::<Self>();
    /// Offset of `bar` inside the capability.
    pub const BAR: u16 = 4;
    /// Offset of `offset` inside the capability.
    pub const OFFSET: u16 = 8;
    /// Offset of `length` inside the capability.
    pub const LENGTH: u16 = 12;

    /// A capability of `cfg_type` for the structure at `offset`/`length` in `bar`; `cap_len`
    /// is the size of the whole capability including extra data.
    pub fn new(cfg_type: u8, bar: u8, offset: u32, length: u32, cap_len: u8) -> Self {
        Self {
            cap_vndr: capability::id::VENDOR_SPECIFIC,
            cap_next: 0,
            cap_len,
            cfg_type,
            bar,
            id: 0,
            padding: [0; 2],
            offset: U32::new(offset),
            length: U32::new(length),
        }
    }
}

/// `struct virtio_pci_notify_cap` (4.1.4.4 "Notification structure layout").
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct VirtioPciNotifyCap {
    /// The generic part, `cfg_type` = [`VIRTIO_PCI_CAP_NOTIFY_CFG`].
    pub cap: VirtioPciCap,
    /// Multiplier for `queue_notify_off`: queue notify address =
    /// `cap.offset + queue_notify_off * notify_off_multiplier`.
    pub notify_off_multiplier: U32,
}

impl VirtioPciNotifyCap {
    /// Size of the structure.
    pub const LEN: usize = core::mem::size_of::<Self>();
}

/// `struct virtio_pci_cfg_cap` (4.1.4.9 "PCI configuration access capability").
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
pub struct VirtioPciCfgCap {
    /// The generic part, `cfg_type` = [`VIRTIO_PCI_CAP_PCI_CFG`]; `bar`, `offset` and `length`
    /// are written by the driver to select the window.
    pub cap: VirtioPciCap,
    /// Data window for BAR access.
    pub pci_cfg_data: [u8; 4],
}

impl VirtioPciCfgCap {
    /// Size of the structure.
    pub const LEN: usize = core::mem::size_of::<Self>();
    /// Offset of `pci_cfg_data` inside the capability.
    pub const PCI_CFG_DATA: u16 = 16;

    /// The guest write mask: `cap.bar`, `cap.offset`, `cap.length` and `pci_cfg_data` are
    /// read-write for the driver.
    pub fn write_mask() -> [u8; Self::LEN] {
        let mut mask = [0u8; Self::LEN];
        for (i, m) in mask.iter_mut().enumerate() {
            *m = match i {
                4 | 8..=19 => 0xff,
                _ => 0,
            };
        }
        mask
    }
}

/// A virtio structure capability as the driver side decodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioCapInfo {
    /// Offset of the capability in configuration space.
    pub cap_offset: u8,
    /// `cfg_type`.
    pub cfg_type: u8,
    /// `bar`.
    pub bar: u8,
    /// `offset` within the BAR.
    pub offset: u32,
    /// `length` of the structure.
    pub length: u32,
    /// `notify_off_multiplier` (only for [`VIRTIO_PCI_CAP_NOTIFY_CFG`], else 0).
    pub notify_off_multiplier: u32,
}
