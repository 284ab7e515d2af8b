//! A complete virtio-pci modern function: configuration space, BAR0 and MSI-X, composed.
//!
//! [`VirtioPciFunction`] is what a VMM puts on its PCI bus for one virtio device. It owns no
//! threads or file descriptors: the VMM forwards guest configuration and MMIO accesses to
//! [`config_read`](VirtioPciFunction::config_read) /
//! [`config_write`](VirtioPciFunction::config_write) /
//! [`bar_read`](VirtioPciFunction::bar_read) / [`bar_write`](VirtioPciFunction::bar_write)
//! and acts on the returned [`Events`]. The BAR layout is documented in [`super::layout`].
//!
//! Capability list (in this order, starting at 0x40): common configuration, notifications, ISR,
//! device-specific configuration (only if the device has one), PCI configuration access, MSI-X.

use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

use super::caps::{
    VirtioPciCap, VirtioPciCfgCap, VirtioPciNotifyCap, VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
};
use super::common_cfg::{CommonConfig, QueueState};
use super::layout::{
    BAR_INDEX, BAR_SIZE, COMMON_CFG_LEN, COMMON_CFG_OFFSET, DEVICE_CFG_MAX_LEN, DEVICE_CFG_OFFSET,
    ISR_LEN, ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER,
};
use super::{
    device_status, isr, VIRTIO_ID_BLOCK, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_VENDOR_ID,
};
use crate::bar::Bar;
use crate::config_space::{access_ok, command, status, ConfigSpace, CONFIG_SPACE_SIZE};
use crate::msix::{message_control, MsixCapability, MsixDelivery, MsixMessage, MsixTable};
use crate::{Error, Event, Events};

/// What the owner passes to [`VirtioPciFunction::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciParams {
    /// Virtio device type (2 = block); the PCI device ID is `0x1040 + device_type`.
    pub device_type: u16,
    /// PCI base class.
    pub class: u8,
    /// PCI sub-class.
    pub subclass: u8,
    /// PCI programming interface.
    pub prog_if: u8,
    /// PCI revision ID (4.1.2.1: non-transitional devices SHOULD use 1 or higher).
    pub revision_id: u8,
    /// PCI subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem ID (4.1.2.1: SHOULD be 0x40 or higher for non-transitional devices).
    pub subsystem_id: u16,
    /// Number of virtqueues (at most [`crate::MAX_QUEUES`]).
    pub num_queues: u16,
    /// Maximum (and initial) queue size, a power of two up to 32768.
    pub max_queue_size: u16,
    /// MSI-X table size (1..=[`crate::MAX_MSIX_VECTORS`]); e.g. `num_queues + 1`.
    pub msix_vectors: u16,
    /// Features offered to the driver; should include VIRTIO_F_VERSION_1.
    pub device_features: u64,
    /// Where BAR0 starts out (aligned to [`super::layout::BAR_SIZE`]); the guest may move it.
    pub bar0_address: u64,
}

impl VirtioPciParams {
    /// Parameters with the class code derived from the device type (block: mass storage, SCSI
    /// sub-class as QEMU uses; others: unclassified), revision 1 and subsystem 0x1af4/0x1100.
    pub fn new(
        device_type: u16,
        num_queues: u16,
        max_queue_size: u16,
        msix_vectors: u16,
        device_features: u64,
        bar0_address: u64,
    ) -> Self {
        let (class, subclass) = if device_type == VIRTIO_ID_BLOCK {
            (0x01, 0x00)
        } else {
            (0xff, 0x00)
        };
        Self {
            device_type,
            class,
            subclass,
            prog_if: 0,
            revision_id: 1,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: 0x1100,
            num_queues,
            max_queue_size,
            msix_vectors,
            device_features,
            bar0_address,
        }
    }
}

/// How the owner should notify the driver, as decided by the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// Send this MSI-X message.
    Msix(MsixMessage),
    /// MSI-X is disabled: the ISR bit is set; assert INTx if the owner wires it up (the
    /// function advertises no interrupt pin, so a driver normally uses MSI-X or polls).
    Intx,
    /// The vector is masked; the message is pending and will come back as an
    /// [`Event::MsixPendingDelivered`] when unmasked.
    Pending,
    /// Nothing to send (no vector mapped, INTx disabled, or DRIVER_OK not yet set).
    None,
}

/// A virtio-pci modern function (VIRTIO 1.x, 4.1) with the layout of [`super::layout`].
///
/// ```
/// use pci_transport::virtio_pci::function::{VirtioPciFunction, VirtioPciParams};
/// use pci_transport::virtio_pci::{features::VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK};
///
/// let params = VirtioPciParams::new(VIRTIO_ID_BLOCK, 1, 256, 2, VIRTIO_F_VERSION_1, 0xe000_0000);
/// let f = VirtioPciFunction::new(&params, &[0u8; 60]).unwrap();
/// assert_eq!(f.config_space().device_id(), 0x1042);
/// assert_eq!(f.notify_address(0), Some(0xe000_3000));
/// ```
#[derive(Clone, Debug)]
pub struct VirtioPciFunction {
    config: ConfigSpace,
    common: CommonConfig,
    msix: MsixTable,
    msix_cap: u8,
    pci_cfg_cap: u8,
    isr: u8,
    device_config: [u8; DEVICE_CFG_MAX_LEN],
    device_config_len: usize,
}

impl VirtioPciFunction {
    /// Builds the function. `device_config` is the initial device-specific configuration
    /// (e.g. `struct virtio_blk_config`); its length is fixed for the function's lifetime.
    pub fn new(params: &VirtioPciParams, device_config: &[u8]) -> Result<Self, Error> {
        if device_config.len() > DEVICE_CFG_MAX_LEN {
            return Err(Error::DeviceConfigTooLarge {
                len: device_config.len(),
                max: DEVICE_CFG_MAX_LEN,
            });
        }
        let common = CommonConfig::new(
            params.num_queues,
            params.max_queue_size,
            params.device_features,
            params.msix_vectors,
        )?;
        let msix = MsixTable::new(params.msix_vectors)?;
        let device_id = VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(params.device_type);
        let mut config = ConfigSpace::new(VIRTIO_PCI_VENDOR_ID, device_id);
        config.set_class(params.class, params.subclass, params.prog_if);
        config.set_revision_id(params.revision_id);
        config.set_subsystem(params.subsystem_vendor_id, params.subsystem_id);
        config.add_bar(
            Bar::memory64(BAR_INDEX, BAR_SIZE, false)?,
            params.bar0_address,
        )?;

        let vcap = |cfg_type, offset: u64, length: u64, cap_len: usize| {
            VirtioPciCap::new(
                cfg_type,
                BAR_INDEX,
                offset as u32,
                length as u32,
                cap_len as u8,
            )
        };
        config.add_capability(
            vcap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CFG_OFFSET,
                COMMON_CFG_LEN,
                VirtioPciCap::LEN,
            )
            .as_bytes(),
        )?;
        let notify = VirtioPciNotifyCap {
            cap: vcap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                u64::from(params.num_queues.max(1)) * u64::from(NOTIFY_OFF_MULTIPLIER),
                VirtioPciNotifyCap::LEN,
            ),
            notify_off_multiplier: U32::new(NOTIFY_OFF_MULTIPLIER),
        };
        config.add_capability(notify.as_bytes())?;
        config.add_capability(
            vcap(
                VIRTIO_PCI_CAP_ISR_CFG,
                ISR_OFFSET,
                ISR_LEN,
                VirtioPciCap::LEN,
            )
            .as_bytes(),
        )?;
        if !device_config.is_empty() {
            let len = device_config.len() as u64;
            config.add_capability(
                vcap(
                    VIRTIO_PCI_CAP_DEVICE_CFG,
                    DEVICE_CFG_OFFSET,
                    len,
                    VirtioPciCap::LEN,
                )
                .as_bytes(),
            )?;
        }
        let pci_cfg = VirtioPciCfgCap {
            cap: vcap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, VirtioPciCfgCap::LEN),
            pci_cfg_data: [0; 4],
        };
        let pci_cfg_cap = config.add_capability(pci_cfg.as_bytes())?;
        config.set_write_mask(u16::from(pci_cfg_cap), &VirtioPciCfgCap::write_mask())?;
        let msix_cap = MsixCapability {
            table_size: params.msix_vectors,
            table_bir: BAR_INDEX,
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bir: BAR_INDEX,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msix_cap_offset = config.add_capability(&msix_cap.to_bytes())?;
        config.set_write_mask(u16::from(msix_cap_offset), &MsixCapability::write_mask())?;

        let mut stored = [0u8; DEVICE_CFG_MAX_LEN];
        if let Some(dst) = stored.get_mut(..device_config.len()) {
            dst.copy_from_slice(device_config);
        }
        Ok(Self {
            config,
            common,
            msix,
            msix_cap: msix_cap_offset,
            pci_cfg_cap,
            isr: 0,
            device_config: stored,
            device_config_len: device_config.len(),
        })
    }

    // --- PCI configuration space ----------------------------------------------------------

    /// Guest read of configuration space. Takes `&mut self` because reading the
    /// `VIRTIO_PCI_CAP_PCI_CFG` data window performs a BAR read (4.1.4.9), which may clear
    /// the ISR.
    pub fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if access_ok(u64::from(offset), data.len(), CONFIG_SPACE_SIZE as u64)
            && self.touches_pci_cfg_data(offset, data.len())
        {
            self.pci_cfg_window_read();
        }
        self.config.read(offset, data);
    }

    /// Guest write of configuration space.
    pub fn config_write(&mut self, offset: u16, data: &[u8]) -> Events {
        let mut events = Events::new();
        if !access_ok(u64::from(offset), data.len(), CONFIG_SPACE_SIZE as u64) {
            return events;
        }
        self.config.write_with(offset, data, &mut events);
        let control = u16::from(self.msix_cap) + MsixCapability::MESSAGE_CONTROL;
        if overlaps(offset, data.len(), control, 2) {
            let control = self.config.read_u16(control);
            let enabled = control & message_control::ENABLE != 0;
            let masked = control & message_control::FUNCTION_MASK != 0;
            self.msix.set_control(enabled, masked, &mut events);
        }
        if self.touches_pci_cfg_data(offset, data.len()) {
            self.pci_cfg_window_write(&mut events);
        }
        events
    }

    fn touches_pci_cfg_data(&self, offset: u16, len: usize) -> bool {
        overlaps(
            offset,
            len,
            u16::from(self.pci_cfg_cap) + VirtioPciCfgCap::PCI_CFG_DATA,
            4,
        )
    }

    /// The BAR window selected through the PCI configuration access capability, if valid:
    /// `(offset in BAR0, length)` (4.1.4.9).
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = u16::from(self.pci_cfg_cap);
        let bar = self.config.read_u8(cap + VirtioPciCap::BAR);
        let offset = u64::from(self.config.read_u32(cap + VirtioPciCap::OFFSET));
        let len = self.config.read_u32(cap + VirtioPciCap::LENGTH) as usize;
        (bar == BAR_INDEX && access_ok(offset, len, BAR_SIZE)).then_some((offset, len))
    }

    fn pci_cfg_window_read(&mut self) {
        let Some((offset, len)) = self.pci_cfg_window() else {
            return;
        };
        let mut buf = [0u8; 4];
        if let Some(window) = buf.get_mut(..len) {
            self.bar0_read(offset, window);
        }
        let data = u16::from(self.pci_cfg_cap) + VirtioPciCfgCap::PCI_CFG_DATA;
        let _ = self.config.set_bytes(data, &buf);
    }

    fn pci_cfg_window_write(&mut self, events: &mut Events) {
        let Some((offset, len)) = self.pci_cfg_window() else {
            return;
        };
        let data = u16::from(self.pci_cfg_cap) + VirtioPciCfgCap::PCI_CFG_DATA;
        let buf = self.config.read_u32(data).to_le_bytes();
        if let Some(window) = buf.get(..len) {
            self.bar0_write(offset, window, events);
        }
    }

    // --- BAR (MMIO) accesses --------------------------------------------------------------

    /// Which BAR of this function decodes `len` bytes at guest physical `address`, as
    /// `(bar, offset)`; `None` if none does or memory space decoding is disabled.
    pub fn bar_for_address(&self, address: u64, len: u64) -> Option<(u8, u64)> {
        self.config
            .memory_space_enabled()
            .then(|| self.config.find_bar(address, len))
            .flatten()
    }

    /// Guest read of `data.len()` bytes at `offset` in BAR `bar`. Malformed accesses (not 1, 2,
    /// 4 or 8 bytes, misaligned, or outside the BAR) read as all-ones; holes read as zero.
    pub fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != BAR_INDEX || !bar_access_ok(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        self.bar0_read(offset, data);
    }

    /// Guest write of `data` at `offset` in BAR `bar`.
    pub fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Events {
        let mut events = Events::new();
        if bar == BAR_INDEX && bar_access_ok(offset, data.len()) {
            self.bar0_write(offset, data, &mut events);
        }
        events
    }

    fn bar0_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        if let Some(at) = within(offset, len, COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common.read(at, data);
        } else if within(offset, len, ISR_OFFSET, 4).is_some() {
            // 4.1.4.5: reading the ISR returns and clears it, de-asserting INTx.
            data.fill(0);
            if offset == ISR_OFFSET {
                if let Some(first) = data.first_mut() {
                    *first = self.take_isr();
                }
            }
        } else if let Some(at) = within(
            offset,
            len,
            DEVICE_CFG_OFFSET,
            self.device_config_len as u64,
        ) {
            let start = at as usize;
            match self.device_config.get(start..start + data.len()) {
                Some(bytes) => data.copy_from_slice(bytes),
                None => data.fill(0),
            }
        } else if let Some(at) = within(offset, len, MSIX_TABLE_OFFSET, self.msix.table_len()) {
            self.msix.table_read(at, data);
        } else if let Some(at) = within(offset, len, MSIX_PBA_OFFSET, self.msix.pba_len()) {
            self.msix.pba_read(at, data);
        } else {
            data.fill(0);
        }
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8], events: &mut Events) {
        let len = data.len() as u64;
        if let Some(at) = within(offset, len, COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common.write(at, data, events);
            if events.contains(&Event::Reset) {
                self.take_isr();
            }
        } else if let Some(at) = within(
            offset,
            len,
            DEVICE_CFG_OFFSET,
            self.device_config_len as u64,
        ) {
            let mut value = [0u8; 4];
            if let Some(dst) = value.get_mut(..data.len()) {
                dst.copy_from_slice(data);
                events.push(Event::DeviceConfigWritten {
                    offset: at as u32,
                    len: data.len() as u8,
                    value: u32::from_le_bytes(value),
                });
            }
        } else if let Some(at) = within(offset, len, NOTIFY_OFFSET, self.notify_len()) {
            // 4.1.5.2: the driver writes the queue index (16 bits, or 32 with
            // VIRTIO_F_NOTIFICATION_DATA) at the queue's notify address; the address decides.
            if matches!(data.len(), 2 | 4) && at % u64::from(NOTIFY_OFF_MULTIPLIER) == 0 {
                events.push(Event::QueueNotify(
                    (at / u64::from(NOTIFY_OFF_MULTIPLIER)) as u16,
                ));
            }
        } else if let Some(at) = within(offset, len, MSIX_TABLE_OFFSET, self.msix.table_len()) {
            self.msix.table_write(at, data, events);
        }
    }

    fn notify_len(&self) -> u64 {
        u64::from(self.common.num_queues()) * u64::from(NOTIFY_OFF_MULTIPLIER)
    }

    fn take_isr(&mut self) -> u8 {
        let value = core::mem::take(&mut self.isr);
        self.config.set_status_bits(status::INTERRUPT_STATUS, false);
        value
    }

    // --- owner API ------------------------------------------------------------------------

    /// The configuration space (read-only view).
    pub fn config_space(&self) -> &ConfigSpace {
        &self.config
    }

    /// The common configuration state.
    pub fn common_config(&self) -> &CommonConfig {
        &self.common
    }

    /// The MSI-X table state.
    pub fn msix_table(&self) -> &MsixTable {
        &self.msix
    }

    /// Current `device_status`.
    pub fn device_status(&self) -> u8 {
        self.common.device_status()
    }

    /// Negotiated features (once FEATURES_OK was accepted).
    pub fn negotiated_features(&self) -> Option<u64> {
        self.common.negotiated_features()
    }

    /// State of queue `queue` (size, ring addresses, enabled, MSI-X vector).
    pub fn queue(&self, queue: u16) -> Option<&QueueState> {
        self.common.queue(queue)
    }

    /// `queue_notify_off` of a queue (equal to its index in this layout).
    pub fn queue_notify_off(&self, queue: u16) -> Option<u16> {
        self.common.queue(queue).map(|_| queue)
    }

    /// Current BAR0 base address.
    pub fn bar0_address(&self) -> u64 {
        self.config.bar_address(BAR_INDEX).unwrap_or(0)
    }

    /// Guest physical address of queue `queue`'s notification register, from the current
    /// BAR0 address (attach an ioeventfd here, 2-byte writes).
    pub fn notify_address(&self, queue: u16) -> Option<u64> {
        let off = u64::from(self.queue_notify_off(queue)?);
        Some(self.bar0_address() + NOTIFY_OFFSET + off * u64::from(NOTIFY_OFF_MULTIPLIER))
    }

    /// The device-specific configuration.
    pub fn device_config(&self) -> &[u8] {
        self.device_config
            .get(..self.device_config_len)
            .unwrap_or(&[])
    }

    /// Replaces the device-specific configuration (at most its initial length; shorter data
    /// leaves the tail zero) and bumps `config_generation`. Call
    /// [`signal_config`](Self::signal_config) to tell the driver.
    pub fn set_device_config(&mut self, data: &[u8]) -> Result<(), Error> {
        let max = self.device_config_len;
        let dst = self
            .device_config
            .get_mut(..max)
            .ok_or(Error::DeviceConfigTooLarge {
                len: data.len(),
                max,
            })?;
        let head = dst
            .get_mut(..data.len())
            .ok_or(Error::DeviceConfigTooLarge {
                len: data.len(),
                max,
            })?;
        head.copy_from_slice(data);
        if let Some(tail) = dst.get_mut(data.len()..) {
            tail.fill(0);
        }
        self.common.bump_config_generation();
        Ok(())
    }

    /// Current ISR status (without clearing it).
    pub fn isr(&self) -> u8 {
        self.isr
    }

    /// ORs `bits` into the ISR status and raises the PCI Interrupt Status bit.
    pub fn set_isr(&mut self, bits: u8) {
        self.isr |= bits;
        if self.isr != 0 {
            self.config.set_status_bits(status::INTERRUPT_STATUS, true);
        }
    }

    /// The message programmed for MSI-X `vector` (whatever its mask state), to set up
    /// interrupt routes.
    pub fn msix_message(&self, vector: u16) -> Option<MsixMessage> {
        self.msix.message(vector)
    }

    /// Signals MSI-X `vector` directly: deliver, or mark pending if masked.
    pub fn signal_msix(&mut self, vector: u16) -> MsixDelivery {
        self.msix.signal(vector)
    }

    /// A used buffer notification for `queue` (4.1.5.3): the MSI-X message of its vector, or
    /// the ISR queue bit and INTx when MSI-X is disabled.
    pub fn signal_queue(&mut self, queue: u16) -> Interrupt {
        let Some(vector) = self.common.queue(queue).map(QueueState::msix_vector) else {
            return Interrupt::None;
        };
        self.signal(vector, isr::QUEUE)
    }

    /// A configuration change notification (4.1.5.4).
    pub fn signal_config(&mut self) -> Interrupt {
        self.signal(self.common.config_msix_vector(), isr::CONFIG)
    }

    /// Sets DEVICE_NEEDS_RESET (2.1.2) and, if DRIVER_OK is set, sends the configuration
    /// change notification the spec requires.
    pub fn set_needs_reset(&mut self) -> Interrupt {
        self.common.set_needs_reset();
        if self.common.device_status() & device_status::DRIVER_OK == 0 {
            return Interrupt::None;
        }
        self.signal_config()
    }

    fn signal(&mut self, vector: u16, isr_bit: u8) -> Interrupt {
        if !self.msix.enabled() {
            self.set_isr(isr_bit);
            if self.config.command() & command::INTX_DISABLE != 0 {
                return Interrupt::None;
            }
            return Interrupt::Intx;
        }
        if vector == VIRTIO_MSI_NO_VECTOR {
            return Interrupt::None;
        }
        match self.msix.signal(vector) {
            MsixDelivery::Deliver(message) => Interrupt::Msix(message),
            MsixDelivery::Pending => Interrupt::Pending,
            MsixDelivery::Disabled | MsixDelivery::InvalidVector => Interrupt::None,
        }
    }
}

/// Whether `[offset, offset + len)` overlaps `[start, start + size)`.
fn overlaps(offset: u16, len: usize, start: u16, size: u16) -> bool {
    let (a0, a1) = (usize::from(offset), usize::from(offset) + len);
    let (b0, b1) = (usize::from(start), usize::from(start) + usize::from(size));
    a0 < b1 && b0 < a1
}

/// If `[offset, offset + len)` lies inside `[start, start + size)`, the offset within it.
fn within(offset: u64, len: u64, start: u64, size: u64) -> Option<u64> {
    let at = offset.checked_sub(start)?;
    (at.checked_add(len)? <= size).then_some(at)
}

/// BAR accesses: 1, 2, 4 or 8 bytes, naturally aligned, inside BAR0.
fn bar_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
        && offset % len as u64 == 0
        && offset.saturating_add(len as u64) <= BAR_SIZE
}
