//! Property tests of the `virtio_pci_common_cfg` state machine against a model.

use pci_transport::virtio_pci::common_cfg::offset;
use pci_transport::virtio_pci::device_status::{DEVICE_NEEDS_RESET, DRIVER_OK, FEATURES_OK};
use pci_transport::virtio_pci::features::{VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1};
use pci_transport::virtio_pci::VIRTIO_MSI_NO_VECTOR;
use pci_transport::{CommonConfig, Event, Events};
use proptest::prelude::*;

const NUM_QUEUES: u16 = 3;
const MAX_SIZE: u16 = 128;
const VECTORS: u16 = 4;
const DEVICE_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_RESET | 0b1011;

#[derive(Clone, Debug)]
enum Op {
    Status(u8),
    FeatureSelect(u32),
    Feature(u32),
    QueueSelect(u16),
    QueueSize(u16),
    QueueEnable(u16),
    QueueDescLo(u32),
    QueueVector(u16),
    ConfigVector(u16),
    QueueReset(u16),
    NeedsReset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::Status),
        1 => Just(Op::Status(0)),
        1 => (0u32..3).prop_map(Op::FeatureSelect),
        // Mostly plausible feature words (device's own bits), sometimes anything.
        2 => prop_oneof![Just(0b1011u32), Just(1u32), Just(0x101u32), any::<u32>()].prop_map(Op::Feature),
        2 => (0u16..NUM_QUEUES + 2).prop_map(Op::QueueSelect),
        2 => prop_oneof![Just(64u16), Just(128), Just(256), Just(3), Just(0), any::<u16>()].prop_map(Op::QueueSize),
        2 => (0u16..3).prop_map(Op::QueueEnable),
        1 => any::<u32>().prop_map(Op::QueueDescLo),
        1 => prop_oneof![0u16..6, Just(0xffff)].prop_map(Op::QueueVector),
        1 => prop_oneof![0u16..6, Just(0xffff)].prop_map(Op::ConfigVector),
        1 => (0u16..2).prop_map(Op::QueueReset),
        1 => Just(Op::NeedsReset),
    ]
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ModelQueue {
    size: u16,
    enabled: bool,
    desc: u64,
    vector: u16,
}

#[derive(Debug)]
struct Model {
    status: u8,
    feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    config_vector: u16,
    queues: [ModelQueue; NUM_QUEUES as usize],
}

impl Model {
    fn new() -> Self {
        let q = ModelQueue {
            size: MAX_SIZE,
            enabled: false,
            desc: 0,
            vector: VIRTIO_MSI_NO_VECTOR,
        };
        Self {
            status: 0,
            feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_vector: VIRTIO_MSI_NO_VECTOR,
            queues: [q; NUM_QUEUES as usize],
        }
    }

    fn vector(v: u16) -> u16 {
        if v < VECTORS {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    fn writable(&mut self) -> Option<&mut ModelQueue> {
        self.queues
            .get_mut(self.queue_select as usize)
            .filter(|q| !q.enabled)
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Status(0) => *self = Self::new(),
            Op::Status(v) => {
                let old = self.status;
                let mut new = old | (v & 0b1000_1111);
                if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 {
                    let ok = self.driver_features & !DEVICE_FEATURES == 0
                        && self.driver_features & VIRTIO_F_VERSION_1 != 0;
                    if !ok {
                        new &= !FEATURES_OK;
                    }
                }
                if new & DRIVER_OK != 0 && old & DRIVER_OK == 0 && new & FEATURES_OK == 0 {
                    new &= !DRIVER_OK;
                }
                self.status = new;
            }
            Op::FeatureSelect(s) => self.feature_select = s,
            Op::Feature(v) => {
                if self.status & FEATURES_OK == 0 {
                    match self.feature_select {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            Op::QueueSelect(q) => self.queue_select = q,
            Op::QueueSize(s) => {
                if let Some(q) = self.writable() {
                    if s.is_power_of_two() && s <= MAX_SIZE {
                        q.size = s;
                    }
                }
            }
            Op::QueueEnable(v) => {
                if let Some(q) = self.writable() {
                    if v == 1 {
                        q.enabled = true;
                    }
                }
            }
            Op::QueueDescLo(v) => {
                if let Some(q) = self.writable() {
                    q.desc = u64::from(v);
                }
            }
            Op::QueueVector(v) => {
                if let Some(q) = self.writable() {
                    q.vector = Self::vector(v);
                }
            }
            Op::ConfigVector(v) => self.config_vector = Self::vector(v),
            Op::QueueReset(v) => {
                let negotiated = self.status & FEATURES_OK != 0
                    && self.driver_features & VIRTIO_F_RING_RESET != 0;
                if v == 1 && negotiated {
                    if let Some(q) = self.queues.get_mut(self.queue_select as usize) {
                        *q = ModelQueue {
                            size: MAX_SIZE,
                            enabled: false,
                            desc: 0,
                            vector: VIRTIO_MSI_NO_VECTOR,
                        };
                    }
                }
            }
            Op::NeedsReset => self.status |= DEVICE_NEEDS_RESET,
        }
    }
}

fn apply(cc: &mut CommonConfig, op: &Op) -> Events {
    let mut ev = Events::new();
    match *op {
        Op::Status(v) => cc.write(offset::DEVICE_STATUS, &[v], &mut ev),
        Op::FeatureSelect(s) => cc.write(offset::DRIVER_FEATURE_SELECT, &s.to_le_bytes(), &mut ev),
        Op::Feature(v) => cc.write(offset::DRIVER_FEATURE, &v.to_le_bytes(), &mut ev),
        Op::QueueSelect(q) => cc.write(offset::QUEUE_SELECT, &q.to_le_bytes(), &mut ev),
        Op::QueueSize(s) => cc.write(offset::QUEUE_SIZE, &s.to_le_bytes(), &mut ev),
        Op::QueueEnable(v) => cc.write(offset::QUEUE_ENABLE, &v.to_le_bytes(), &mut ev),
        Op::QueueDescLo(v) => {
            cc.write(offset::QUEUE_DESC, &v.to_le_bytes(), &mut ev);
            cc.write(offset::QUEUE_DESC + 4, &0u32.to_le_bytes(), &mut ev);
        }
        Op::QueueVector(v) => cc.write(offset::QUEUE_MSIX_VECTOR, &v.to_le_bytes(), &mut ev),
        Op::ConfigVector(v) => cc.write(offset::CONFIG_MSIX_VECTOR, &v.to_le_bytes(), &mut ev),
        Op::QueueReset(v) => cc.write(offset::QUEUE_RESET, &v.to_le_bytes(), &mut ev),
        Op::NeedsReset => {
            if let Some(e) = cc.set_needs_reset() {
                ev.push(e);
            }
        }
    }
    ev
}

fn read(cc: &CommonConfig, off: u64, len: usize) -> u64 {
    let mut buf = [0u8; 8];
    cc.read(off, &mut buf[..len]);
    u64::from_le_bytes(buf)
}

proptest! {
    #[test]
    fn status_machine_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut cc = CommonConfig::new(NUM_QUEUES, MAX_SIZE, DEVICE_FEATURES, VECTORS).unwrap();
        let mut model = Model::new();
        for op in &ops {
            let old = cc.device_status();
            let ev = apply(&mut cc, op);
            model.apply(op);
            let new = cc.device_status();
            // Status bits are never cleared except by a reset.
            if matches!(op, Op::Status(0)) {
                prop_assert_eq!(new, 0);
                prop_assert!(ev.contains(&Event::Reset));
            } else {
                prop_assert_eq!(new & old, old);
            }
            prop_assert_eq!(new, model.status);
            prop_assert_eq!(read(&cc, offset::DEVICE_STATUS, 1) as u8, new);
            // Events mirror the transitions.
            if old != new {
                let changed = Event::StatusChanged { old, new };
                prop_assert!(ev.contains(&changed));
            }
            let became = new & !old;
            prop_assert_eq!(ev.contains(&Event::DriverOk), became & DRIVER_OK != 0);
            prop_assert_eq!(ev.contains(&Event::FeaturesAccepted(model.driver_features)), became & FEATURES_OK != 0);
            if new & FEATURES_OK != 0 {
                prop_assert_eq!(cc.negotiated_features(), Some(model.driver_features));
                prop_assert_eq!(model.driver_features & !DEVICE_FEATURES, 0);
            }
            // Per-queue state and the selected-queue window.
            prop_assert_eq!(cc.config_msix_vector(), model.config_vector);
            for (i, mq) in model.queues.iter().enumerate() {
                let q = cc.queue(i as u16).unwrap();
                prop_assert_eq!((q.size(), q.enabled(), q.desc(), q.msix_vector()), (mq.size, mq.enabled, mq.desc, mq.vector));
            }
            let sel = model.queues.get(model.queue_select as usize);
            prop_assert_eq!(read(&cc, offset::QUEUE_SIZE, 2) as u16, sel.map_or(0, |q| q.size));
            prop_assert_eq!(read(&cc, offset::QUEUE_ENABLE, 2) as u16, sel.map_or(0, |q| u16::from(q.enabled)));
            prop_assert_eq!(read(&cc, offset::QUEUE_DESC, 8), sel.map_or(0, |q| q.desc));
            prop_assert_eq!(read(&cc, offset::QUEUE_NOTIFY_OFF, 2) as u16, if sel.is_some() { model.queue_select } else { 0 });
            prop_assert_eq!(read(&cc, offset::QUEUE_RESET, 2), 0);
            prop_assert_eq!(read(&cc, offset::NUM_QUEUES, 2) as u16, NUM_QUEUES);
        }
    }

    /// Feature windows: select 0/1 show the two halves, other selects read 0.
    #[test]
    fn feature_windows(features in any::<u64>(), select in any::<u32>()) {
        let mut cc = CommonConfig::new(1, 8, features, 1).unwrap();
        let mut ev = Events::new();
        cc.write(offset::DEVICE_FEATURE_SELECT, &select.to_le_bytes(), &mut ev);
        let expected = match select { 0 => features as u32, 1 => (features >> 32) as u32, _ => 0 };
        prop_assert_eq!(read(&cc, offset::DEVICE_FEATURE, 4) as u32, expected);
        prop_assert_eq!(read(&cc, offset::DEVICE_FEATURE_SELECT, 4) as u32, select);
    }

    /// Any access at any offset and width: never panics; malformed reads are all-ones.
    #[test]
    fn arbitrary_accesses(off in 0u64..0x50, len in 0usize..10, value in any::<u64>()) {
        let mut cc = CommonConfig::new(2, 16, VIRTIO_F_VERSION_1, 2).unwrap();
        let mut ev = Events::new();
        let bytes = [value.to_le_bytes(), value.to_le_bytes()].concat();
        cc.write(off, &bytes[..len], &mut ev);
        let mut buf = [0u8; 10];
        cc.read(off, &mut buf[..len]);
        if !matches!(len, 1 | 2 | 4 | 8) || off % len as u64 != 0 {
            prop_assert!(buf[..len].iter().all(|&b| b == 0xff));
        }
    }
}

#[test]
fn queue_address_halves_and_full_width() {
    let mut cc = CommonConfig::new(1, 256, VIRTIO_F_VERSION_1, 1).unwrap();
    let mut ev = Events::new();
    cc.write(offset::QUEUE_DRIVER, &0x1122_3344u32.to_le_bytes(), &mut ev);
    cc.write(
        offset::QUEUE_DRIVER + 4,
        &0x5566_7788u32.to_le_bytes(),
        &mut ev,
    );
    cc.write(
        offset::QUEUE_DEVICE,
        &0xaabb_ccdd_eeff_0011u64.to_le_bytes(),
        &mut ev,
    );
    let q = cc.queue(0).unwrap();
    assert_eq!(q.driver(), 0x5566_7788_1122_3344);
    assert_eq!(q.device(), 0xaabb_ccdd_eeff_0011);
    // A 2-byte write to a 64-bit field is not a natural access: ignored.
    cc.write(offset::QUEUE_DESC, &0xffffu16.to_le_bytes(), &mut ev);
    assert_eq!(cc.queue(0).unwrap().desc(), 0);
    assert!(ev.is_empty());
}

#[test]
fn features_ok_rejected_without_version_1_or_with_unknown_bits() {
    let mut cc = CommonConfig::new(1, 256, VIRTIO_F_VERSION_1 | 1, 1).unwrap();
    let mut ev = Events::new();
    cc.write(offset::DRIVER_FEATURE, &1u32.to_le_bytes(), &mut ev);
    cc.write(offset::DEVICE_STATUS, &[FEATURES_OK], &mut ev);
    assert_eq!(cc.device_status() & FEATURES_OK, 0, "VERSION_1 missing");
    cc.write(offset::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes(), &mut ev);
    cc.write(offset::DRIVER_FEATURE, &3u32.to_le_bytes(), &mut ev); // bit 33 not offered
    cc.write(offset::DEVICE_STATUS, &[FEATURES_OK], &mut ev);
    assert_eq!(
        cc.device_status() & FEATURES_OK,
        0,
        "unknown feature accepted"
    );
    cc.write(offset::DRIVER_FEATURE, &1u32.to_le_bytes(), &mut ev);
    cc.write(offset::DEVICE_STATUS, &[FEATURES_OK], &mut ev);
    assert_ne!(cc.device_status() & FEATURES_OK, 0);
    assert_eq!(cc.negotiated_features(), Some(VIRTIO_F_VERSION_1 | 1));
}
