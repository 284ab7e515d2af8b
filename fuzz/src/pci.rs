//! The PCI configuration space and the virtio-pci function (VIRTIO 1.x, 4.1 "Virtio Over PCI
//! Bus") driven by arbitrary guest accesses: any offset, any width, any value, in any order,
//! mixed with the owner's interrupt signalling.
//!
//! [`run_config_space`] replays writes on a bare `ConfigSpace` against a byte-level model of
//! its write and write-1-to-clear masks. [`run_function`] checks a `VirtioPciFunction`:
//! read-only configuration bytes never change, malformed accesses read as all-ones, the
//! device status and queue set-up only take legal values, and MSI-X delivery follows the
//! masks. Shared by the fuzz target `pci_config_space` and
//! `pci-transport/tests/fuzz_entry_points.rs`.

use pci_transport::bar::Bar;
use pci_transport::capability::id as cap_id;
use pci_transport::config_space::{command, register, status, ConfigSpace, CONFIG_SPACE_SIZE};
use pci_transport::virtio_pci::caps::{VirtioPciCap, VIRTIO_PCI_CAP_PCI_CFG};
use pci_transport::virtio_pci::device_status as ds;
use pci_transport::virtio_pci::features::VIRTIO_F_VERSION_1;
use pci_transport::virtio_pci::layout::{BAR_SIZE, DEVICE_CFG_MAX_LEN, ISR_OFFSET};
use pci_transport::virtio_pci::VIRTIO_MSI_NO_VECTOR;
use pci_transport::{
    Event, Events, Interrupt, MsixDelivery, VirtioPciFunction, VirtioPciParams, EVENTS_CAPACITY,
    MAX_MSIX_VECTORS, MAX_QUEUES,
};

/// A guest access or an owner action.
#[derive(Debug, Clone)]
pub enum PciOp {
    /// Configuration space read of `len` bytes.
    ConfigRead {
        /// Offset.
        offset: u16,
        /// Width in bytes (any, malformed included).
        len: u8,
    },
    /// Configuration space write.
    ConfigWrite {
        /// Offset.
        offset: u16,
        /// Bytes (any length).
        data: Vec<u8>,
    },
    /// MMIO read in BAR `bar`.
    BarRead {
        /// BAR index.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// Width in bytes.
        len: u8,
    },
    /// MMIO write in BAR `bar`.
    BarWrite {
        /// BAR index.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// Bytes.
        data: Vec<u8>,
    },
    /// Owner: `signal_msix`.
    SignalMsix(u16),
    /// Owner: `signal_queue`.
    SignalQueue(u16),
    /// Owner: `signal_config`.
    SignalConfig,
    /// Owner: `set_needs_reset`.
    SetNeedsReset,
    /// Owner: `set_isr`.
    SetIsr(u8),
    /// Owner: `set_device_config` (may be too long).
    SetDeviceConfig(Vec<u8>),
}

/// A virtio-pci function and what happens to it.
#[derive(Debug, Clone)]
pub struct FunctionCase {
    /// Construction parameters (possibly invalid).
    pub params: VirtioPciParams,
    /// Initial device-specific configuration.
    pub device_config: Vec<u8>,
    /// Accesses, in order.
    pub ops: Vec<PciOp>,
}

/// A bare configuration space with owner-installed BARs and capabilities.
#[derive(Debug, Clone)]
pub struct ConfigSpaceCase {
    /// Vendor and device ID.
    pub ids: (u16, u16),
    /// BARs to add: `(index, log2 size, 64-bit, prefetchable, address)`.
    pub bars: Vec<(u8, u8, bool, bool, u64)>,
    /// Capabilities to add, each with a write mask and a write-1-to-clear mask applied
    /// at its offset.
    pub caps: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// Guest accesses (only `ConfigRead` and `ConfigWrite` are used).
    pub ops: Vec<PciOp>,
}

/// 1, 2 or 4 bytes, naturally aligned, inside `limit`.
fn access_ok(offset: u64, len: usize, limit: u64) -> bool {
    matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 && offset + len as u64 <= limit
}

fn check_events(events: &Events) {
    assert!(events.len() <= EVENTS_CAPACITY);
}

/// Runs `case` against a byte-level model: every guest write changes a byte to
/// `(old & !wm | v & wm) & !(v & w1c)`, and nothing else changes.
pub fn run_config_space(case: &ConfigSpaceCase) {
    const N: usize = CONFIG_SPACE_SIZE;
    let mut cs = ConfigSpace::new(case.ids.0, case.ids.1);
    let mut wm = [0u8; N];
    let mut w1c = [0u8; N];
    // The masks `ConfigSpace::new` documents for the header.
    let reg = |r: u16| usize::from(r);
    wm[reg(register::COMMAND)..][..2].copy_from_slice(&command::WRITABLE.to_le_bytes());
    w1c[reg(register::STATUS)..][..2].copy_from_slice(&status::W1C.to_le_bytes());
    wm[reg(register::CACHE_LINE_SIZE)] = 0xff;
    wm[reg(register::INTERRUPT_LINE)] = 0xff;
    for &(index, log2, is64, prefetch, address) in &case.bars {
        let size = 1u64.checked_shl(u32::from(log2)).unwrap_or(0);
        let bar = if is64 {
            Bar::memory64(index, size, prefetch)
        } else {
            Bar::memory32(index, size, prefetch)
        };
        let Ok(bar) = bar else { continue };
        if cs.add_bar(bar, address).is_err() {
            continue;
        }
        let at = usize::from(bar.register_offset());
        let (lo, hi) = bar.write_masks();
        wm[at..][..4].copy_from_slice(&lo.to_le_bytes());
        if let Some(hi) = hi {
            wm[at + 4..][..4].copy_from_slice(&hi.to_le_bytes());
        }
        assert_eq!(
            cs.bar_address(bar.index()),
            Some(address),
            "BAR {index} address"
        );
    }
    for (bytes, mask, clear) in &case.caps {
        let Ok(at) = cs.add_capability(bytes) else {
            continue;
        };
        let at = usize::from(at);
        if cs.set_write_mask(at as u16, mask).is_ok() {
            wm[at..][..mask.len()].copy_from_slice(mask);
        }
        if cs.set_w1c_mask(at as u16, clear).is_ok() {
            w1c[at..][..clear.len()].copy_from_slice(clear);
        }
    }
    let mut data = [0u8; N];
    for (i, b) in data.iter_mut().enumerate() {
        *b = cs.read_u8(i as u16);
    }
    for op in &case.ops {
        match op {
            PciOp::ConfigRead { offset, len } => {
                let mut buf = vec![0u8; usize::from(*len)];
                cs.read(*offset, &mut buf);
                let off = u64::from(*offset);
                if !access_ok(off, buf.len(), 4096) {
                    assert!(
                        buf.iter().all(|&b| b == 0xff),
                        "malformed read {off:#x}/{len}"
                    );
                } else if off < N as u64 {
                    assert_eq!(buf, data[off as usize..][..buf.len()], "read at {off:#x}");
                } else {
                    assert!(buf.iter().all(|&b| b == 0), "extended read {off:#x}");
                }
            }
            PciOp::ConfigWrite {
                offset,
                data: bytes,
            } => {
                let old_command = cs.command();
                let events = cs.write(*offset, bytes);
                check_events(&events);
                if access_ok(u64::from(*offset), bytes.len(), N as u64) {
                    for (i, &v) in bytes.iter().enumerate() {
                        let at = usize::from(*offset) + i;
                        data[at] = ((data[at] & !wm[at]) | (v & wm[at])) & !(v & w1c[at]);
                    }
                }
                let changed = events
                    .iter()
                    .any(|e| matches!(e, Event::CommandChanged { .. }));
                assert_eq!(changed, cs.command() != old_command, "CommandChanged event");
                for e in &events {
                    match *e {
                        Event::CommandChanged { old, new } => {
                            assert_eq!((old, new), (old_command, cs.command()));
                        }
                        Event::BarReprogrammed {
                            index, new_addr, ..
                        } => {
                            assert!(cs.memory_space_enabled(), "BAR moved while decoding is off");
                            assert_eq!(cs.bar_address(index), Some(new_addr));
                        }
                        other => panic!("unexpected event from a config write: {other:?}"),
                    }
                }
            }
            _ => {}
        }
        for (i, &b) in data.iter().enumerate() {
            assert_eq!(
                cs.read_u8(i as u16),
                b,
                "config byte {i:#x} diverged from the mask model"
            );
        }
        assert_eq!((cs.vendor_id(), cs.device_id()), case.ids);
        for index in 0..6u8 {
            if let (Some(bar), Some(addr)) = (cs.bar(index), cs.bar_address(index)) {
                assert_eq!(addr & (bar.size() - 1), 0, "BAR {index} misaligned");
            }
        }
    }
}

/// What a [`run_function`] did, to check that generated cases reach the interesting paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FunctionStats {
    /// The function was built.
    pub built: bool,
    /// `Event::FeaturesAccepted` seen.
    pub features_accepted: usize,
    /// `Event::DriverOk` seen.
    pub driver_ok: usize,
    /// `Event::QueueEnabled` seen.
    pub queues_enabled: usize,
    /// MSI-X messages handed to the owner (delivered now or released from pending).
    pub msix_messages: usize,
    /// `Event::QueueNotify` seen.
    pub notifies: usize,
}

impl FunctionStats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &FunctionStats) {
        self.built |= other.built;
        self.features_accepted += other.features_accepted;
        self.driver_ok += other.driver_ok;
        self.queues_enabled += other.queues_enabled;
        self.msix_messages += other.msix_messages;
        self.notifies += other.notifies;
    }

    fn count(&mut self, events: &Events) {
        for e in events {
            match e {
                Event::FeaturesAccepted(_) => self.features_accepted += 1,
                Event::DriverOk => self.driver_ok += 1,
                Event::QueueEnabled(_) => self.queues_enabled += 1,
                Event::MsixPendingDelivered { .. } => self.msix_messages += 1,
                Event::QueueNotify(_) => self.notifies += 1,
                _ => {}
            }
        }
    }
}

/// Whether `params` and `device_config` satisfy what `VirtioPciFunction::new` documents.
fn params_valid(p: &VirtioPciParams, device_config: &[u8]) -> bool {
    usize::from(p.num_queues) <= MAX_QUEUES
        && p.max_queue_size.is_power_of_two()
        && p.max_queue_size <= 32768
        && (1..=MAX_MSIX_VECTORS).contains(&usize::from(p.msix_vectors))
        && device_config.len() <= DEVICE_CFG_MAX_LEN
        && p.bar0_address % BAR_SIZE == 0
}

/// Configuration space bytes the guest may change: command, status, cache line size, BAR0/1,
/// interrupt line, the PCI configuration access capability's window fields and data, MSI-X
/// Message Control.
fn guest_writable(f: &VirtioPciFunction) -> [bool; CONFIG_SPACE_SIZE] {
    let mut w = [false; CONFIG_SPACE_SIZE];
    let mut mark = |start: u16, len: u16| {
        for i in start..start + len {
            w[usize::from(i)] = true;
        }
    };
    mark(register::COMMAND, 4); // command + status (W1C bits, INTERRUPT_STATUS)
    mark(register::CACHE_LINE_SIZE, 1);
    mark(register::BAR0, 8);
    mark(register::INTERRUPT_LINE, 1);
    let cs = f.config_space();
    for cap in cs.capabilities() {
        let at = u16::from(cap.offset);
        if cap.id == cap_id::MSIX {
            mark(at + 2, 2);
        }
        if cap.id == cap_id::VENDOR_SPECIFIC && cs.read_u8(at + 3) == VIRTIO_PCI_CAP_PCI_CFG {
            mark(at + VirtioPciCap::BAR, 20 - VirtioPciCap::BAR);
        }
    }
    w
}

/// Runs `case`, panicking on any broken rule.
pub fn run_function(case: &FunctionCase) -> FunctionStats {
    let mut stats = FunctionStats::default();
    let valid = params_valid(&case.params, &case.device_config);
    let mut f = match VirtioPciFunction::new(&case.params, &case.device_config) {
        Ok(f) => f,
        Err(e) => {
            assert!(
                !valid,
                "valid parameters rejected: {e:?} ({:?})",
                case.params
            );
            return stats;
        }
    };
    stats.built = true;
    let p = case.params;
    let writable = guest_writable(&f);
    let snapshot: Vec<u8> = (0..CONFIG_SPACE_SIZE as u16)
        .map(|i| f.config_space().read_u8(i))
        .collect();
    let caps: Vec<_> = f.config_space().capabilities().collect();
    assert!(
        caps.iter().any(|c| c.id == cap_id::MSIX),
        "no MSI-X capability"
    );

    for op in &case.ops {
        let mut events = Events::new();
        match op {
            PciOp::ConfigRead { offset, len } => {
                let mut buf = vec![0u8; usize::from(*len)];
                f.config_read(*offset, &mut buf);
                let off = u64::from(*offset);
                if !access_ok(off, buf.len(), 4096) {
                    assert!(
                        buf.iter().all(|&b| b == 0xff),
                        "malformed config read {off:#x}/{len}"
                    );
                } else if off >= CONFIG_SPACE_SIZE as u64 {
                    assert!(buf.iter().all(|&b| b == 0), "extended config read {off:#x}");
                }
            }
            PciOp::ConfigWrite { offset, data } => events = f.config_write(*offset, data),
            PciOp::BarRead { bar, offset, len } => {
                let isr_before = f.isr();
                let mut buf = vec![0u8; usize::from(*len)];
                f.bar_read(*bar, *offset, &mut buf);
                let ok = *bar == 0
                    && matches!(buf.len(), 1 | 2 | 4 | 8)
                    && offset % buf.len() as u64 == 0
                    && offset
                        .checked_add(buf.len() as u64)
                        .is_some_and(|e| e <= BAR_SIZE);
                if !ok {
                    assert!(
                        buf.iter().all(|&b| b == 0xff),
                        "malformed BAR read {bar}:{offset:#x}/{len}"
                    );
                } else if *offset == ISR_OFFSET && buf.len() <= 4 {
                    // 4.1.4.5: reading the ISR returns it and clears it.
                    assert_eq!(buf[0], isr_before, "ISR value");
                    assert_eq!(f.isr(), 0, "ISR not cleared by the read");
                    assert_eq!(f.config_space().status() & status::INTERRUPT_STATUS, 0);
                }
            }
            PciOp::BarWrite { bar, offset, data } => events = f.bar_write(*bar, *offset, data),
            PciOp::SignalMsix(v) => {
                let table = f.msix_table().clone();
                let got = f.signal_msix(*v);
                match got {
                    MsixDelivery::InvalidVector => assert!(*v >= table.size()),
                    MsixDelivery::Disabled => assert!(!table.enabled() && *v < table.size()),
                    MsixDelivery::Pending => {
                        assert!(table.enabled() && !table.is_deliverable(*v));
                        assert!(f.msix_table().is_pending(*v), "pending bit not set");
                    }
                    MsixDelivery::Deliver(m) => {
                        assert!(table.is_deliverable(*v), "delivered a masked vector");
                        assert_eq!(Some(m), f.msix_message(*v));
                        stats.msix_messages += 1;
                    }
                }
            }
            PciOp::SignalQueue(q) => {
                let vector = f.queue(*q).map(|s| s.msix_vector());
                let interrupt = f.signal_queue(*q);
                check_interrupt(&f, interrupt, vector);
                stats.msix_messages += usize::from(matches!(interrupt, Interrupt::Msix(_)));
            }
            PciOp::SignalConfig => {
                let vector = Some(f.common_config().config_msix_vector());
                let interrupt = f.signal_config();
                check_interrupt(&f, interrupt, vector);
                stats.msix_messages += usize::from(matches!(interrupt, Interrupt::Msix(_)));
            }
            PciOp::SetNeedsReset => {
                let _ = f.set_needs_reset();
                assert_ne!(f.device_status() & ds::DEVICE_NEEDS_RESET, 0);
            }
            PciOp::SetIsr(bits) => {
                let before = f.isr();
                f.set_isr(*bits);
                assert_eq!(f.isr(), before | bits);
            }
            PciOp::SetDeviceConfig(data) => {
                let len = f.device_config().len();
                let ok = f.set_device_config(data).is_ok();
                assert_eq!(
                    ok,
                    data.len() <= len,
                    "set_device_config of {} bytes",
                    data.len()
                );
                assert_eq!(f.device_config().len(), len, "device config length changed");
                if ok {
                    assert_eq!(&f.device_config()[..data.len()], &data[..]);
                }
            }
        }
        check_events(&events);
        check_function(&f, &p, &events, &snapshot, &writable);
        stats.count(&events);
    }
    stats
}

fn check_interrupt(f: &VirtioPciFunction, interrupt: Interrupt, vector: Option<u16>) {
    match interrupt {
        Interrupt::Msix(m) => {
            let v = vector.expect("MSI-X for a queue that does not exist");
            assert_ne!(v, VIRTIO_MSI_NO_VECTOR);
            assert!(f.msix_table().enabled());
            assert_eq!(Some(m), f.msix_message(v));
        }
        Interrupt::Pending => {
            let v = vector.expect("pending for a queue that does not exist");
            assert!(f.msix_table().is_pending(v));
        }
        Interrupt::Intx => {
            assert!(!f.msix_table().enabled());
            assert_ne!(f.isr(), 0);
            assert_eq!(f.config_space().command() & command::INTX_DISABLE, 0);
        }
        Interrupt::None => {}
    }
}

fn check_function(
    f: &VirtioPciFunction,
    p: &VirtioPciParams,
    events: &Events,
    snapshot: &[u8],
    writable: &[bool; CONFIG_SPACE_SIZE],
) {
    let cs = f.config_space();
    for (i, (&before, &w)) in snapshot.iter().zip(writable.iter()).enumerate() {
        if !w {
            assert_eq!(
                cs.read_u8(i as u16),
                before,
                "read-only config byte {i:#x} changed"
            );
        }
    }
    assert_eq!(f.bar0_address() % BAR_SIZE, 0, "BAR0 misaligned");
    assert_eq!(
        cs.status() & status::CAPABILITIES_LIST,
        status::CAPABILITIES_LIST
    );
    assert_eq!(
        cs.status() & status::INTERRUPT_STATUS != 0,
        f.isr() != 0,
        "Interrupt Status bit vs ISR"
    );

    // Device status (2.1, 3.1.1): DRIVER_OK only after FEATURES_OK, FEATURES_OK only for an
    // acceptable feature set.
    let status = f.device_status();
    if status & ds::DRIVER_OK != 0 {
        assert_ne!(status & ds::FEATURES_OK, 0, "DRIVER_OK without FEATURES_OK");
    }
    if let Some(features) = f.negotiated_features() {
        assert_eq!(
            features & !p.device_features,
            0,
            "accepted features the device lacks"
        );
        assert_ne!(
            features & VIRTIO_F_VERSION_1,
            0,
            "accepted features without VERSION_1"
        );
    }
    let common = f.common_config();
    let vector_ok = |v: u16| v == VIRTIO_MSI_NO_VECTOR || v < p.msix_vectors;
    assert!(vector_ok(common.config_msix_vector()));
    assert_eq!(common.queues().len(), usize::from(p.num_queues));
    for q in common.queues() {
        assert!(
            q.size().is_power_of_two() && q.size() <= p.max_queue_size,
            "queue size {}",
            q.size()
        );
        assert!(
            vector_ok(q.msix_vector()),
            "queue vector {}",
            q.msix_vector()
        );
    }

    for e in events {
        match *e {
            Event::QueueEnabled(q) | Event::QueueReset(q) | Event::QueueNotify(q) => {
                assert!(q < p.num_queues, "{e:?} for a queue that does not exist");
            }
            Event::QueueMsixVectorChanged { queue, vector } => {
                assert!(queue < p.num_queues && vector_ok(vector), "{e:?}");
            }
            Event::ConfigMsixVectorChanged(v) => assert!(vector_ok(v)),
            Event::MsixEntryChanged(v) => assert!(v < p.msix_vectors),
            Event::MsixPendingDelivered { vector, message } => {
                assert!(f.msix_table().is_deliverable(vector), "{e:?} while masked");
                assert!(!f.msix_table().is_pending(vector));
                assert_eq!(Some(message), f.msix_message(vector));
            }
            Event::BarReprogrammed {
                index, new_addr, ..
            } => {
                assert_eq!(index, 0);
                assert_eq!(new_addr % BAR_SIZE, 0);
            }
            Event::FeaturesAccepted(features) => {
                assert_eq!(Some(features), f.negotiated_features());
            }
            Event::DeviceConfigWritten { offset, len, .. } => {
                assert!(u64::from(offset) + u64::from(len) <= f.device_config().len() as u64);
            }
            _ => {}
        }
    }
}
