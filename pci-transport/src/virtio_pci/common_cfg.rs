//! The common configuration structure (4.1.4.3 "Common configuration structure layout") as a
//! state machine.
//!
//! [`CommonConfig`] holds what the driver negotiates through `struct virtio_pci_common_cfg`:
//! feature windows, `device_status`, MSI-X vector mappings and per-queue set-up. It applies the
//! device-side rules of the spec and reports what changed as [`Event`]s.
//!
//! Device rules implemented here (a driver breaking them gets ignored, never a panic):
//! - Writing 0 to `device_status` resets the device (2.1, 4.1.4.3.1). Status bits are never
//!   cleared otherwise; a write ORs into the current status.
//! - FEATURES_OK is accepted only if the driver's features are a subset of the device's and
//!   include VIRTIO_F_VERSION_1 (3.1.1, 6.1); otherwise it stays clear on re-read.
//!   `driver_feature` is frozen once FEATURES_OK is set.
//! - DRIVER_OK is accepted only together with or after FEATURES_OK (3.1.1 step order).
//! - The driver cannot set DEVICE_NEEDS_RESET (owner only, [`CommonConfig::set_needs_reset`])
//!   nor SUSPEND (VIRTIO_F_SUSPEND is not offered) nor reserved bits.
//! - Feature windows: select 0 is bits 0..32, select 1 bits 32..64, other selects read 0 and
//!   ignore writes.
//! - `queue_select` beyond `num_queues` selects nothing: `queue_size` etc. read 0, writes are
//!   ignored.
//! - Queue fields (`queue_size`, `queue_msix_vector`, `queue_desc`, `queue_driver`,
//!   `queue_device`) are writable only while the queue is not enabled.
//! - `queue_size` writes must be a power of two no larger than the device maximum; others are
//!   ignored (the spec forbids them for split rings, 4.1.4.3.2).
//! - `queue_enable`: writing 1 enables the queue; writing 0 is ignored (4.1.4.3.2).
//! - MSI-X vector writes beyond the table map to `VIRTIO_MSI_NO_VECTOR` (4.1.5.1.2.1).
//! - `queue_reset` works only when VIRTIO_F_RING_RESET was negotiated; the reset completes at
//!   once, so the field always reads 0.
//!
//! Access widths follow 4.1.3.1: each field is written with its own width (64-bit fields as one
//! 64-bit access or two 32-bit halves); other writes are ignored. Reads of any aligned 1, 2, 4
//! or 8 bytes return the structure's bytes; malformed reads return all-ones.

use super::device_status::{
    ACKNOWLEDGE, DEVICE_NEEDS_RESET, DRIVER, DRIVER_OK, FAILED, FEATURES_OK,
};
use super::features::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use super::{MAX_QUEUE_SIZE, VIRTIO_MSI_NO_VECTOR};
use crate::{Error, Event, Events};

/// Most virtqueues this crate stores per function.
pub const MAX_QUEUES: usize = 64;

/// Length of `struct virtio_pci_common_cfg` including the admin queue fields.
pub const COMMON_CFG_LEN: u64 = 0x40;

/// Field offsets of `struct virtio_pci_common_cfg`.
pub mod offset {
    /// `le32 device_feature_select`.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// `le32 device_feature` (read-only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// `le32 driver_feature_select`.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// `le32 driver_feature`.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// `le16 config_msix_vector`.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// `le16 num_queues` (read-only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// `u8 device_status`.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// `u8 config_generation` (read-only).
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// `le16 queue_select`.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// `le16 queue_size`.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// `le16 queue_msix_vector`.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// `le16 queue_enable`.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// `le16 queue_notify_off` (read-only).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// `le64 queue_desc`.
    pub const QUEUE_DESC: u64 = 0x20;
    /// `le64 queue_driver`.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// `le64 queue_device`.
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// `le16 queue_notif_config_data` (read-only; formerly `queue_notify_data`).
    pub const QUEUE_NOTIFY_DATA: u64 = 0x38;
    /// `le16 queue_reset`.
    pub const QUEUE_RESET: u64 = 0x3a;
    /// `le16 admin_queue_index` (read-only; no admin queues here, reads 0).
    pub const ADMIN_QUEUE_INDEX: u64 = 0x3c;
    /// `le16 admin_queue_num` (read-only; reads 0).
    pub const ADMIN_QUEUE_NUM: u64 = 0x3e;
}

/// Status bits the driver may set (DEVICE_NEEDS_RESET and SUSPEND excluded).
const DRIVER_SETTABLE_STATUS: u8 = ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | FAILED;

/// The set-up of one virtqueue as the driver programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    size: u16,
    msix_vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueState {
    fn reset(max_size: u16) -> Self {
        Self {
            size: max_size,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// `queue_size`: number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// `queue_msix_vector` (`VIRTIO_MSI_NO_VECTOR` if unmapped).
    pub fn msix_vector(&self) -> u16 {
        self.msix_vector
    }

    /// `queue_enable`.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `queue_desc`: guest physical address of the Descriptor Area.
    pub fn desc(&self) -> u64 {
        self.desc
    }

    /// `queue_driver`: guest physical address of the Driver Area (avail ring).
    pub fn driver(&self) -> u64 {
        self.driver
    }

    /// `queue_device`: guest physical address of the Device Area (used ring).
    pub fn device(&self) -> u64 {
        self.device
    }
}

/// The state behind `struct virtio_pci_common_cfg`.
///
/// ```
/// use pci_transport::virtio_pci::common_cfg::{offset, CommonConfig};
/// use pci_transport::virtio_pci::{device_status as s, features::VIRTIO_F_VERSION_1};
/// use pci_transport::{Event, Events};
///
/// let mut cc = CommonConfig::new(1, 256, VIRTIO_F_VERSION_1, 2).unwrap();
/// let mut ev = Events::new();
/// cc.write(offset::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes(), &mut ev);
/// cc.write(offset::DRIVER_FEATURE, &1u32.to_le_bytes(), &mut ev); // VERSION_1 is bit 32
/// cc.write(offset::DEVICE_STATUS, &[s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK], &mut ev);
/// assert!(ev.contains(&Event::FeaturesAccepted(VIRTIO_F_VERSION_1)));
/// ```
#[derive(Clone, Debug)]
pub struct CommonConfig {
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    config_msix_vector: u16,
    num_queues: u16,
    device_status: u8,
    config_generation: u8,
    queue_select: u16,
    max_queue_size: u16,
    msix_vectors: u16,
    queues: [QueueState; MAX_QUEUES],
}

impl CommonConfig {
    /// A device offering `device_features` with `num_queues` queues of at most
    /// `max_queue_size` entries (a power of two up to 32768) and an MSI-X table of
    /// `msix_vectors` entries (0: no MSI-X, every vector write reads back NO_VECTOR).
    pub fn new(
        num_queues: u16,
        max_queue_size: u16,
        device_features: u64,
        msix_vectors: u16,
    ) -> Result<Self, Error> {
        if usize::from(num_queues) > MAX_QUEUES {
            return Err(Error::TooManyQueues {
                requested: num_queues,
                max: MAX_QUEUES as u16,
            });
        }
        if !max_queue_size.is_power_of_two() || max_queue_size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidQueueSize(max_queue_size));
        }
        Ok(Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_msix_vector: VIRTIO_MSI_NO_VECTOR,
            num_queues,
            device_status: 0,
            config_generation: 0,
            queue_select: 0,
            max_queue_size,
            msix_vectors,
            queues: [QueueState::reset(max_queue_size); MAX_QUEUES],
        })
    }

    // --- owner view -----------------------------------------------------------------------

    /// Current `device_status`.
    pub fn device_status(&self) -> u8 {
        self.device_status
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Features the driver has written so far (validated only when it sets FEATURES_OK).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The negotiated features, once FEATURES_OK has been accepted.
    pub fn negotiated_features(&self) -> Option<u64> {
        (self.device_status & FEATURES_OK != 0).then_some(self.driver_features)
    }

    /// `num_queues`.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The largest `queue_size` the device accepts.
    pub fn max_queue_size(&self) -> u16 {
        self.max_queue_size
    }

    /// State of queue `queue`, if it exists.
    pub fn queue(&self, queue: u16) -> Option<&QueueState> {
        self.queues().get(usize::from(queue))
    }

    /// State of every queue.
    pub fn queues(&self) -> &[QueueState] {
        self.queues
            .get(..usize::from(self.num_queues))
            .unwrap_or(&[])
    }

    /// `config_msix_vector`.
    pub fn config_msix_vector(&self) -> u16 {
        self.config_msix_vector
    }

    /// `config_generation`.
    pub fn config_generation(&self) -> u8 {
        self.config_generation
    }

    /// Changes `config_generation`; call whenever the device-specific configuration changes.
    pub fn bump_config_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// Sets DEVICE_NEEDS_RESET (2.1.2). Returns the status change, if any.
    pub fn set_needs_reset(&mut self) -> Option<Event> {
        let old = self.device_status;
        self.device_status |= DEVICE_NEEDS_RESET;
        (old != self.device_status).then_some(Event::StatusChanged {
            old,
            new: self.device_status,
        })
    }

    /// Resets the device state (what writing 0 to `device_status` does).
    pub fn reset(&mut self) {
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.config_msix_vector = VIRTIO_MSI_NO_VECTOR;
        self.device_status = 0;
        self.queue_select = 0;
        self.queues = [QueueState::reset(self.max_queue_size); MAX_QUEUES];
    }

    // --- guest accesses -------------------------------------------------------------------

    /// Guest read of `data.len()` bytes at `offset` in the structure.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if !matches!(data.len(), 1 | 2 | 4 | 8) || offset % data.len() as u64 != 0 {
            data.fill(0xff);
            return;
        }
        let image = self.image();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match image.get(start..start.saturating_add(data.len())) {
            Some(bytes) => data.copy_from_slice(bytes),
            None => data.fill(0),
        }
    }

    /// The structure's bytes as the driver would read them.
    fn image(&self) -> [u8; COMMON_CFG_LEN as usize] {
        let mut img = [0u8; COMMON_CFG_LEN as usize];
        let selected = self.selected();
        let q = selected.copied().unwrap_or(QueueState {
            size: 0,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        });
        let notify_off = if selected.is_some() {
            self.queue_select
        } else {
            0
        };
        let mut put = |offset: u64, bytes: &[u8]| {
            let start = offset as usize;
            if let Some(dst) = img.get_mut(start..start + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        put(
            offset::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            offset::DEVICE_FEATURE,
            &window(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        put(
            offset::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            offset::DRIVER_FEATURE,
            &window(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(
            offset::CONFIG_MSIX_VECTOR,
            &self.config_msix_vector.to_le_bytes(),
        );
        put(offset::NUM_QUEUES, &self.num_queues.to_le_bytes());
        put(offset::DEVICE_STATUS, &[self.device_status]);
        put(offset::CONFIG_GENERATION, &[self.config_generation]);
        put(offset::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        put(offset::QUEUE_SIZE, &q.size.to_le_bytes());
        put(offset::QUEUE_MSIX_VECTOR, &q.msix_vector.to_le_bytes());
        put(offset::QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
        put(offset::QUEUE_NOTIFY_OFF, &notify_off.to_le_bytes());
        put(offset::QUEUE_DESC, &q.desc.to_le_bytes());
        put(offset::QUEUE_DRIVER, &q.driver.to_le_bytes());
        put(offset::QUEUE_DEVICE, &q.device.to_le_bytes());
        // Trivial queue_notif_config_data: the queue index (4.1.4.3).
        put(offset::QUEUE_NOTIFY_DATA, &notify_off.to_le_bytes());
        img
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queue(self.queue_select)
    }

    fn selected_mut(&mut self) -> Option<&mut QueueState> {
        let num = usize::from(self.num_queues);
        self.queues
            .get_mut(..num)?
            .get_mut(usize::from(self.queue_select))
    }

    /// Guest write of `data` at `offset` in the structure; see the module docs for the rules.
    pub fn write(&mut self, offset: u64, data: &[u8], events: &mut Events) {
        let value = match *data {
            [a] => u64::from(a),
            [a, b] => u64::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => return,
        };
        let (v16, v32) = (value as u16, value as u32);
        match (offset, data.len()) {
            (offset::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v32,
            (offset::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v32,
            (offset::DRIVER_FEATURE, 4) => self.write_driver_feature(v32),
            (offset::CONFIG_MSIX_VECTOR, 2) => {
                self.config_msix_vector = self.validate_vector(v16);
                events.push(Event::ConfigMsixVectorChanged(self.config_msix_vector));
            }
            (offset::DEVICE_STATUS, 1) => self.write_status(value as u8, events),
            (offset::QUEUE_SELECT, 2) => self.queue_select = v16,
            (offset::QUEUE_SIZE, 2) => self.write_queue_size(v16),
            (offset::QUEUE_MSIX_VECTOR, 2) => self.write_queue_vector(v16, events),
            (offset::QUEUE_ENABLE, 2) => self.write_queue_enable(v16, events),
            (offset::QUEUE_RESET, 2) => self.write_queue_reset(v16, events),
            (offset::QUEUE_DESC..offset::QUEUE_NOTIFY_DATA, 4 | 8) => {
                self.write_queue_address(offset, data.len(), value)
            }
            _ => {}
        }
    }

    fn write_driver_feature(&mut self, value: u32) {
        if self.device_status & FEATURES_OK != 0 {
            return;
        }
        self.driver_features = match self.driver_feature_select {
            0 => (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
            _ => return,
        };
    }

    fn validate_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// 2.1 "Device Status Field" and 3.1.1 "Driver Requirements: Device Initialization".
    fn write_status(&mut self, value: u8, events: &mut Events) {
        let old = self.device_status;
        if value == 0 {
            self.reset();
            if old != 0 {
                events.push(Event::StatusChanged { old, new: 0 });
            }
            events.push(Event::Reset);
            return;
        }
        let mut new = old | (value & DRIVER_SETTABLE_STATUS);
        let features_ok_now = new & !old & FEATURES_OK != 0;
        if features_ok_now && !self.features_acceptable() {
            new &= !FEATURES_OK;
        }
        if new & !old & DRIVER_OK != 0 && new & FEATURES_OK == 0 {
            new &= !DRIVER_OK;
        }
        if new == old {
            return;
        }
        self.device_status = new;
        events.push(Event::StatusChanged { old, new });
        if new & !old & FEATURES_OK != 0 {
            events.push(Event::FeaturesAccepted(self.driver_features));
        }
        if new & !old & DRIVER_OK != 0 {
            events.push(Event::DriverOk);
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// The selected queue, if it exists and is not enabled (its fields are writable).
    fn writable_queue(&mut self) -> Option<&mut QueueState> {
        self.selected_mut().filter(|q| !q.enabled)
    }

    fn write_queue_size(&mut self, size: u16) {
        let max = self.max_queue_size;
        if let Some(q) = self.writable_queue() {
            if size.is_power_of_two() && size <= max {
                q.size = size;
            }
        }
    }

    fn write_queue_vector(&mut self, vector: u16, events: &mut Events) {
        let vector = self.validate_vector(vector);
        let queue = self.queue_select;
        if let Some(q) = self.writable_queue() {
            q.msix_vector = vector;
            events.push(Event::QueueMsixVectorChanged { queue, vector });
        }
    }

    fn write_queue_enable(&mut self, value: u16, events: &mut Events) {
        let queue = self.queue_select;
        if value != 1 {
            return;
        }
        if let Some(q) = self.writable_queue() {
            q.enabled = true;
            events.push(Event::QueueEnabled(queue));
        }
    }

    fn write_queue_reset(&mut self, value: u16, events: &mut Events) {
        let negotiated = self.negotiated_features().unwrap_or(0) & VIRTIO_F_RING_RESET != 0;
        let (queue, max) = (self.queue_select, self.max_queue_size);
        if value != 1 || !negotiated {
            return;
        }
        if let Some(q) = self.selected_mut() {
            *q = QueueState::reset(max);
            events.push(Event::QueueReset(queue));
        }
    }

    fn write_queue_address(&mut self, offset: u64, len: usize, value: u64) {
        let field_start = offset & !7;
        let Some(q) = self.writable_queue() else {
            return;
        };
        let field = match field_start {
            offset::QUEUE_DESC => &mut q.desc,
            offset::QUEUE_DRIVER => &mut q.driver,
            offset::QUEUE_DEVICE => &mut q.device,
            _ => return,
        };
        *field = match (len, offset % 8) {
            (8, 0) => value,
            (4, 0) => (*field & !0xffff_ffff) | value,
            (4, 4) => (*field & 0xffff_ffff) | (value << 32),
            _ => *field,
        };
    }
}

/// The 32-bit window `select` of a 64-bit feature set (0 beyond bit 63).
fn window(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}
