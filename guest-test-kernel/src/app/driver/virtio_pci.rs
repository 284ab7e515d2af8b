//! The virtio-pci modern transport, driver side (VIRTIO 1.x, 4.1 "Virtio Over PCI Bus"):
//! capability discovery, the common configuration structure, notifications and MSI-X.

use core::fmt;

use pci_transport::config_space::command;
use pci_transport::driver::{self, MsixInfo};
use pci_transport::virtio_pci::common_cfg::offset::{
    CONFIG_GENERATION, CONFIG_MSIX_VECTOR, DEVICE_FEATURE, DEVICE_FEATURE_SELECT, DEVICE_STATUS,
    DRIVER_FEATURE, DRIVER_FEATURE_SELECT, QUEUE_DESC, QUEUE_DEVICE, QUEUE_DRIVER, QUEUE_ENABLE,
    QUEUE_MSIX_VECTOR, QUEUE_NOTIFY_OFF, QUEUE_SELECT, QUEUE_SIZE,
};
pub use pci_transport::virtio_pci::device_status as status;
pub use pci_transport::virtio_pci::VIRTIO_MSI_NO_VECTOR;
use pci_transport::virtio_pci::VIRTIO_PCI_VENDOR_ID;
use virtqueue_core::RingAddresses;

use super::mmio;
use super::pci::{Bar, Bdf, PortCam};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR: u16 = VIRTIO_PCI_VENDOR_ID;
/// Modern virtio-blk device ID (0x1040 + device type 2).
pub const VIRTIO_BLK_MODERN: u16 = 0x1042;
/// Transitional virtio-blk device ID.
pub const VIRTIO_BLK_TRANSITIONAL: u16 = 0x1001;

/// Length of the common configuration up to and including `queue_device`.
const COMMON_CFG_MIN_LEN: u32 = 56;

/// What can go wrong bringing up the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// A required virtio capability is missing or points outside its BAR.
    MissingCapability(&'static str),
    /// The device cleared FEATURES_OK: it refused our feature subset.
    FeaturesRefused,
    /// The device did not finish a reset.
    ResetTimeout,
    /// The queue does not exist or its size is 0.
    NoSuchQueue(u16),
    /// The device refused an MSI-X vector for a queue.
    VectorRefused(u16),
    /// MSI-X is absent or has fewer entries than needed.
    NoMsix,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::MissingCapability(what) => {
                write!(f, "missing or invalid {what} capability")
            }
            TransportError::FeaturesRefused => {
                f.write_str("device refused the features (FEATURES_OK cleared)")
            }
            TransportError::ResetTimeout => f.write_str("device did not complete reset"),
            TransportError::NoSuchQueue(q) => write!(f, "queue {q} does not exist"),
            TransportError::VectorRefused(q) => {
                write!(f, "device refused an MSI-X vector for queue {q}")
            }
            TransportError::NoMsix => f.write_str("no usable MSI-X capability"),
        }
    }
}

impl core::error::Error for TransportError {}

/// MSI-X capability of the function (PCI spec 6.8.2) and where its table is mapped.
#[derive(Debug, Clone, Copy)]
struct Msix {
    info: MsixInfo,
    table: u64,
}

/// A virtio-pci modern device whose structures have been located.
#[derive(Debug, Clone, Copy)]
pub struct VirtioPci {
    cam: PortCam,
    bdf: Bdf,
    common: u64,
    notify: u64,
    notify_off_multiplier: u32,
    device_cfg: u64,
    device_cfg_len: u32,
    msix: Option<Msix>,
}

impl VirtioPci {
    /// Locates the structures of `bdf` (its BARs must already lie below 4 GiB) and turns on
    /// memory decoding and bus mastering (4.1.4 "Virtio Structure PCI Capabilities").
    pub fn probe(mut cam: PortCam, bdf: Bdf) -> Result<Self, TransportError> {
        let bars = cam.memory_bars(bdf);
        let caps = driver::find_virtio_caps(&mut cam, bdf);
        let region = |bar: u8, offset: u32, length: u32| region(&bars, bar, offset, length);
        let find = |cap: Option<pci_transport::virtio_pci::caps::VirtioCapInfo>, what, min_len| {
            cap.filter(|c| c.length >= min_len)
                .and_then(|c| Some((region(c.bar, c.offset, c.length)?, c)))
                .ok_or(TransportError::MissingCapability(what))
        };
        let (common, _) = find(caps.common, "common", COMMON_CFG_MIN_LEN)?;
        let (notify, notify_cap) = find(caps.notify, "notify", 2)?;
        find(caps.isr, "ISR", 1)?;
        let (device_cfg, device_cap) = find(caps.device, "device", 8)?;
        let msix = driver::find_msix(&mut cam, bdf).and_then(|info| {
            let c = info.capability;
            let table = region(c.table_bir, c.table_offset, u32::from(c.table_size) * 16)?;
            Some(Msix { info, table })
        });
        let cmd = driver::read_command(&mut cam, bdf);
        let on = command::MEMORY_SPACE | command::BUS_MASTER | command::INTX_DISABLE;
        driver::write_command(&mut cam, bdf, cmd | on);
        Ok(VirtioPci {
            cam,
            bdf,
            common,
            notify,
            notify_off_multiplier: notify_cap.notify_off_multiplier,
            device_cfg,
            device_cfg_len: device_cap.length,
            msix,
        })
    }

    /// Resets the device (4.1.4.3.1: write 0, then wait until `device_status` reads 0).
    pub fn reset(&self) -> Result<(), TransportError> {
        mmio::write8(self.common + DEVICE_STATUS, 0);
        for _ in 0..1_000_000 {
            if mmio::read8(self.common + DEVICE_STATUS) == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(TransportError::ResetTimeout)
    }

    /// `device_status`.
    pub fn status(&self) -> u8 {
        mmio::read8(self.common + DEVICE_STATUS)
    }

    /// Sets `bits` in `device_status` in addition to those already set.
    pub fn add_status(&self, bits: u8) {
        mmio::write8(self.common + DEVICE_STATUS, self.status() | bits);
    }

    /// All 64 feature bits the device offers.
    pub fn device_features(&self) -> u64 {
        let mut f = 0;
        for select in 0..2u32 {
            mmio::write32(self.common + DEVICE_FEATURE_SELECT, select);
            f |= u64::from(mmio::read32(self.common + DEVICE_FEATURE)) << (32 * select);
        }
        f
    }

    /// Writes the driver's feature bits, then sets FEATURES_OK and checks it stuck
    /// (3.1.1 "Driver Requirements: Device Initialization", steps 5-6).
    pub fn negotiate(&self, features: u64) -> Result<(), TransportError> {
        for select in 0..2u32 {
            mmio::write32(self.common + DRIVER_FEATURE_SELECT, select);
            mmio::write32(
                self.common + DRIVER_FEATURE,
                (features >> (32 * select)) as u32,
            );
        }
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            return Err(TransportError::FeaturesRefused);
        }
        Ok(())
    }

    /// The maximum size the device allows for `queue` (0: no such queue).
    pub fn queue_max_size(&self, queue: u16) -> u16 {
        mmio::write16(self.common + QUEUE_SELECT, queue);
        mmio::read16(self.common + QUEUE_SIZE)
    }

    /// Configures and enables `queue` (4.1.5.1.3 "Virtqueue Configuration") and returns the
    /// address the driver writes to notify it.
    pub fn setup_queue(
        &self,
        queue: u16,
        size: u16,
        rings: RingAddresses,
        msix_vector: u16,
    ) -> Result<u64, TransportError> {
        let c = self.common;
        mmio::write16(c + QUEUE_SELECT, queue);
        if mmio::read16(c + QUEUE_SIZE) == 0 {
            return Err(TransportError::NoSuchQueue(queue));
        }
        mmio::write16(c + QUEUE_SIZE, size);
        mmio::write64(c + QUEUE_DESC, rings.desc_table);
        mmio::write64(c + QUEUE_DRIVER, rings.avail_ring);
        mmio::write64(c + QUEUE_DEVICE, rings.used_ring);
        mmio::write16(c + QUEUE_MSIX_VECTOR, msix_vector);
        // 4.1.5.1.2: reading back VIRTIO_MSI_NO_VECTOR means the device refused the vector.
        if mmio::read16(c + QUEUE_MSIX_VECTOR) != msix_vector {
            return Err(TransportError::VectorRefused(queue));
        }
        let notify_off = mmio::read16(c + QUEUE_NOTIFY_OFF);
        mmio::write16(c + QUEUE_ENABLE, 1);
        // 4.1.4.4: cap.offset + queue_notify_off * notify_off_multiplier.
        Ok(self.notify + u64::from(notify_off) * u64::from(self.notify_off_multiplier))
    }

    /// Notifies `queue` through `notify_addr` from [`VirtioPci::setup_queue`] (4.1.5.2).
    pub fn notify(notify_addr: u64, queue: u16) {
        mmio::write16(notify_addr, queue);
    }

    /// Sets `config_msix_vector`.
    pub fn set_config_vector(&self, vector: u16) {
        mmio::write16(self.common + CONFIG_MSIX_VECTOR, vector);
    }

    /// Copies the device-specific configuration into `out` (up to its length), re-reading
    /// until `config_generation` is stable (4.1.4.3.1).
    pub fn read_device_config(&self, out: &mut [u8]) {
        let len = out.len().min(self.device_cfg_len as usize);
        loop {
            let before = mmio::read8(self.common + CONFIG_GENERATION);
            for (i, b) in out.iter_mut().take(len).enumerate() {
                *b = mmio::read8(self.device_cfg + i as u64);
            }
            if mmio::read8(self.common + CONFIG_GENERATION) == before {
                return;
            }
        }
    }

    /// Enables MSI-X: entry `i` delivers vector `vectors[i]` to `msi_address`. The table is
    /// written with the function masked, then the function is unmasked (PCI 6.8.2).
    pub fn enable_msix(&self, msi_address: u64, vectors: &[u8]) -> Result<(), TransportError> {
        let msix = self.msix.ok_or(TransportError::NoMsix)?;
        if vectors.len() > usize::from(msix.info.capability.table_size) {
            return Err(TransportError::NoMsix);
        }
        let mut cam = self.cam;
        driver::msix_set_control(&mut cam, self.bdf, &msix.info, true, true);
        for (i, vector) in vectors.iter().enumerate() {
            let entry = msix.table + 16 * i as u64;
            mmio::write32(entry, msi_address as u32);
            mmio::write32(entry + 4, (msi_address >> 32) as u32);
            mmio::write32(entry + 8, u32::from(*vector));
            mmio::write32(entry + 12, 0); // vector control: unmasked
        }
        driver::msix_set_control(&mut cam, self.bdf, &msix.info, true, false);
        Ok(())
    }

    /// Number of MSI-X table entries (0 without MSI-X).
    pub fn msix_entries(&self) -> u16 {
        self.msix.map_or(0, |m| m.info.capability.table_size)
    }
}

/// The address of `[offset, offset + length)` of BAR `bar`, if the BAR exists, is placed, and
/// holds the whole range.
fn region(bars: &[Option<Bar>; 6], bar: u8, offset: u32, length: u32) -> Option<u64> {
    let b = bars.get(usize::from(bar)).copied().flatten()?;
    let end = u64::from(offset).checked_add(u64::from(length))?;
    (end <= b.size && b.addr != 0).then_some(b.addr + u64::from(offset))
}
