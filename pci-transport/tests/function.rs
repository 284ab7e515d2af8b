//! The virtio-pci function driven through the driver-side helpers, as a guest would.

use pci_transport::config_space::{command, register, status};
use pci_transport::driver::{self, ConfigAccess, PciAddress};
use pci_transport::virtio_pci::caps::VirtioPciCap;
use pci_transport::virtio_pci::common_cfg::offset;
use pci_transport::virtio_pci::device_status as s;
use pci_transport::virtio_pci::features::VIRTIO_F_VERSION_1;
use pci_transport::virtio_pci::{layout, VIRTIO_ID_BLOCK, VIRTIO_MSI_NO_VECTOR};
use pci_transport::{
    BarKind, Event, Events, Interrupt, MsixMessage, VirtioPciFunction, VirtioPciParams,
};
use proptest::prelude::*;

const AT: PciAddress = PciAddress::new(0, 1, 0);
const BAR0: u64 = 0xe000_0000;

/// A one-device bus: 00:01.0 is the function, every other address reads all-ones.
struct Bus {
    dev: VirtioPciFunction,
    events: Vec<Event>,
}

impl ConfigAccess for Bus {
    fn read_u32(&mut self, bus: u8, device: u8, function: u8, offset: u16) -> u32 {
        if PciAddress::new(bus, device, function) != AT {
            return u32::MAX;
        }
        let mut b = [0u8; 4];
        self.dev.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write_u32(&mut self, bus: u8, device: u8, function: u8, offset: u16, value: u32) {
        if PciAddress::new(bus, device, function) == AT {
            let ev = self.dev.config_write(offset, &value.to_le_bytes());
            self.events.extend(ev.iter().copied());
        }
    }
}

fn new_bus(queues: u16) -> Bus {
    let params = VirtioPciParams::new(
        VIRTIO_ID_BLOCK,
        queues,
        256,
        queues + 1,
        VIRTIO_F_VERSION_1,
        BAR0,
    );
    let dev = VirtioPciFunction::new(&params, &[0x11u8; 60]).unwrap();
    Bus {
        dev,
        events: Vec::new(),
    }
}

fn common_write(dev: &mut VirtioPciFunction, off: u64, data: &[u8]) -> Events {
    dev.bar_write(0, layout::COMMON_CFG_OFFSET + off, data)
}

fn common_read16(dev: &mut VirtioPciFunction, off: u64) -> u16 {
    let mut b = [0u8; 2];
    dev.bar_read(0, layout::COMMON_CFG_OFFSET + off, &mut b);
    u16::from_le_bytes(b)
}

/// Handshake up to DRIVER_OK with queue `q` mapped to `vector`.
fn handshake(dev: &mut VirtioPciFunction, vector: u16) {
    common_write(dev, offset::DEVICE_STATUS, &[s::ACKNOWLEDGE | s::DRIVER]);
    common_write(dev, offset::DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
    common_write(dev, offset::DRIVER_FEATURE, &1u32.to_le_bytes());
    common_write(
        dev,
        offset::DEVICE_STATUS,
        &[s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK],
    );
    common_write(dev, offset::CONFIG_MSIX_VECTOR, &0u16.to_le_bytes());
    common_write(dev, offset::QUEUE_SELECT, &0u16.to_le_bytes());
    common_write(dev, offset::QUEUE_MSIX_VECTOR, &vector.to_le_bytes());
    common_write(dev, offset::QUEUE_ENABLE, &1u16.to_le_bytes());
    let ev = common_write(
        dev,
        offset::DEVICE_STATUS,
        &[s::ACKNOWLEDGE | s::DRIVER | s::FEATURES_OK | s::DRIVER_OK],
    );
    assert!(ev.contains(&Event::DriverOk));
}

#[test]
fn driver_finds_caps_and_sizes_bar() {
    let mut bus = new_bus(2);
    assert_eq!(driver::find_device(&mut bus, 0, 0x1af4, 0x1042), Some(AT));
    assert_eq!(driver::find_device(&mut bus, 0, 0x1af4, 0x1041), None);
    let caps = driver::find_virtio_caps(&mut bus, AT);
    assert!(caps.is_complete());
    let common = caps.common.unwrap();
    assert_eq!(
        (common.bar, common.offset as u64, common.length as u64),
        (0, layout::COMMON_CFG_OFFSET, layout::COMMON_CFG_LEN)
    );
    let notify = caps.notify.unwrap();
    assert_eq!(
        (
            notify.offset as u64,
            notify.notify_off_multiplier,
            notify.length
        ),
        (layout::NOTIFY_OFFSET, 4, 8)
    );
    assert_eq!(caps.isr.unwrap().offset as u64, layout::ISR_OFFSET);
    assert_eq!(caps.device.unwrap().length, 60);
    assert!(caps.pci_cfg.is_some());

    let info = driver::size_bar(&mut bus, AT, 0).unwrap();
    assert_eq!(
        (info.address, info.size, info.kind, info.prefetchable),
        (BAR0, layout::BAR_SIZE, BarKind::Memory64, false)
    );
    assert_eq!(bus.dev.bar0_address(), BAR0, "sizing restores the address");
    // Memory decoding was off while the BAR held the sizing pattern.
    assert_eq!(bus.dev.config_space().command() & command::MEMORY_SPACE, 0);

    driver::set_bar_address(&mut bus, AT, 0, 0x8_0000_0000);
    assert_eq!(driver::bar_address(&mut bus, AT, 0), Some(0x8_0000_0000));
    assert_eq!(bus.dev.notify_address(1), Some(0x8_0000_3004));
    // Decoding is off until the driver enables it: no move reported yet.
    assert!(!bus
        .events
        .iter()
        .any(|e| matches!(e, Event::BarReprogrammed { .. })));
    assert_eq!(bus.dev.notify_address(2), None);

    driver::enable_memory_and_bus_master(&mut bus, AT);
    let moves: Vec<_> = bus
        .events
        .iter()
        .filter(|e| matches!(e, Event::BarReprogrammed { .. }))
        .collect();
    assert_eq!(
        moves,
        [&Event::BarReprogrammed {
            index: 0,
            old_addr: BAR0,
            new_addr: 0x8_0000_0000
        }]
    );
    // Moving it again with decoding on: one event, and no event for the sizing dance.
    bus.events.clear();
    driver::size_bar(&mut bus, AT, 0).unwrap();
    assert!(!bus
        .events
        .iter()
        .any(|e| matches!(e, Event::BarReprogrammed { .. })));
    driver::set_bar_address(&mut bus, AT, 0, 0x9_0000_0000);
    driver::set_bar_address(&mut bus, AT, 0, 0x8_0000_0000);
    let moves: Vec<_> = bus
        .events
        .iter()
        .filter(|e| matches!(e, Event::BarReprogrammed { .. }))
        .collect();
    assert_eq!(
        moves,
        [
            &Event::BarReprogrammed {
                index: 0,
                old_addr: 0x8_0000_0000,
                new_addr: 0x9_0000_0000
            },
            &Event::BarReprogrammed {
                index: 0,
                old_addr: 0x9_0000_0000,
                new_addr: 0x8_0000_0000
            },
        ]
    );
    let cmd = driver::read_command(&mut bus, AT);
    assert_eq!(
        cmd & (command::MEMORY_SPACE | command::BUS_MASTER),
        command::MEMORY_SPACE | command::BUS_MASTER
    );
    assert_eq!(bus.dev.bar_for_address(0x8_0000_3004, 2), Some((0, 0x3004)));
    assert_eq!(bus.dev.bar_for_address(BAR0, 2), None);
}

#[test]
fn msix_masked_signal_is_delivered_on_unmask() {
    let mut bus = new_bus(1);
    let msix = driver::find_msix(&mut bus, AT).unwrap();
    assert_eq!(
        (msix.capability.table_size, msix.capability.table_bir),
        (2, 0)
    );
    assert_eq!(
        u64::from(msix.capability.table_offset),
        layout::MSIX_TABLE_OFFSET
    );
    assert_eq!(
        u64::from(msix.capability.pba_offset),
        layout::MSIX_PBA_OFFSET
    );
    driver::msix_set_control(&mut bus, AT, &msix, true, true);
    assert!(bus.events.contains(&Event::MsixEnableChanged {
        enabled: true,
        function_masked: true
    }));

    let dev = &mut bus.dev;
    handshake(dev, 1);
    assert_eq!(dev.queue(0).unwrap().msix_vector(), 1);
    // Program vector 1 and unmask it, with the function still masked.
    let entry = msix.entry_offset(1);
    let ev = dev.bar_write(0, entry, &0xfee0_0000u64.to_le_bytes());
    assert!(ev.contains(&Event::MsixEntryChanged(1)));
    dev.bar_write(0, entry + 8, &0x31u64.to_le_bytes()); // data 0x31, vector control 0 (unmasked)
    let message = MsixMessage {
        address: 0xfee0_0000,
        data: 0x31,
    };
    assert_eq!(dev.msix_message(1), Some(message));

    assert_eq!(dev.signal_queue(0), Interrupt::Pending);
    let mut pba = [0u8; 8];
    dev.bar_read(0, layout::MSIX_PBA_OFFSET, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b10);

    let ev = driver_control(dev, msix.cap_offset, true, false);
    assert!(ev.contains(&Event::MsixPendingDelivered { vector: 1, message }));
    dev.bar_read(0, layout::MSIX_PBA_OFFSET, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
    assert_eq!(dev.signal_queue(0), Interrupt::Msix(message));

    // Masking the vector itself: pending again, released by clearing the vector mask.
    dev.bar_write(0, entry + 12, &1u32.to_le_bytes());
    assert_eq!(dev.signal_queue(0), Interrupt::Pending);
    let ev = dev.bar_write(0, entry + 12, &0u32.to_le_bytes());
    assert!(ev.contains(&Event::MsixPendingDelivered { vector: 1, message }));

    // A vector beyond the table reads back NO_VECTOR.
    common_write(dev, offset::QUEUE_SELECT, &0u16.to_le_bytes());
    common_write(dev, offset::CONFIG_MSIX_VECTOR, &7u16.to_le_bytes());
    assert_eq!(
        common_read16(dev, offset::CONFIG_MSIX_VECTOR),
        VIRTIO_MSI_NO_VECTOR
    );
}

fn driver_control(dev: &mut VirtioPciFunction, cap: u8, enable: bool, mask: bool) -> Events {
    let control = (u16::from(enable) << 15) | (u16::from(mask) << 14);
    dev.config_write(u16::from(cap) + 2, &control.to_le_bytes())
}

#[test]
fn isr_and_intx_without_msix() {
    let mut bus = new_bus(1);
    let dev = &mut bus.dev;
    handshake(dev, VIRTIO_MSI_NO_VECTOR);
    assert_eq!(dev.signal_queue(0), Interrupt::Intx);
    assert_eq!(dev.signal_config(), Interrupt::Intx);
    assert_ne!(dev.config_space().status() & status::INTERRUPT_STATUS, 0);
    let mut isr = [0u8; 1];
    dev.bar_read(0, layout::ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], 3);
    dev.bar_read(0, layout::ISR_OFFSET, &mut isr);
    assert_eq!(isr[0], 0, "reading the ISR clears it");
    assert_eq!(dev.config_space().status() & status::INTERRUPT_STATUS, 0);
    // INTx disabled by the driver: the ISR is still set but nothing is sent.
    dev.config_write(register::COMMAND, &command::INTX_DISABLE.to_le_bytes());
    assert_eq!(dev.signal_queue(0), Interrupt::None);
    assert_eq!(dev.isr(), 1);
}

#[test]
fn needs_reset_notifies_after_driver_ok() {
    let mut bus = new_bus(1);
    let dev = &mut bus.dev;
    assert_eq!(
        dev.set_needs_reset(),
        Interrupt::None,
        "no notification before DRIVER_OK"
    );
    common_write(dev, offset::DEVICE_STATUS, &[0]);
    assert_eq!(dev.device_status(), 0);
    let cap = driver::find_msix(&mut bus, AT).unwrap().cap_offset;
    let dev = &mut bus.dev;
    driver_control(dev, cap, true, false);
    dev.bar_write(0, layout::MSIX_TABLE_OFFSET, &0xfee0_1000u64.to_le_bytes());
    dev.bar_write(0, layout::MSIX_TABLE_OFFSET + 8, &0x22u64.to_le_bytes());
    handshake(dev, 1);
    let irq = dev.set_needs_reset();
    assert_eq!(
        irq,
        Interrupt::Msix(MsixMessage {
            address: 0xfee0_1000,
            data: 0x22
        })
    );
    assert_ne!(dev.device_status() & s::DEVICE_NEEDS_RESET, 0);
    // The driver cannot clear it, only reset.
    common_write(dev, offset::DEVICE_STATUS, &[s::ACKNOWLEDGE]);
    assert_ne!(dev.device_status() & s::DEVICE_NEEDS_RESET, 0);
    let ev = common_write(dev, offset::DEVICE_STATUS, &[0]);
    assert!(ev.contains(&Event::Reset));
    assert_eq!(dev.device_status(), 0);
    assert!(!dev.queue(0).unwrap().enabled());
}

#[test]
fn pci_cfg_window_reaches_bar0() {
    let mut bus = new_bus(1);
    let cap = driver::find_virtio_caps(&mut bus, AT)
        .pci_cfg
        .unwrap()
        .cap_offset;
    let base = u16::from(cap);
    let dev = &mut bus.dev;
    // Select a 1-byte window on device_status.
    dev.config_write(base + VirtioPciCap::BAR, &[0]);
    dev.config_write(base + VirtioPciCap::LENGTH, &1u32.to_le_bytes());
    dev.config_write(
        base + VirtioPciCap::OFFSET,
        &(offset::DEVICE_STATUS as u32).to_le_bytes(),
    );
    let ev = dev.config_write(base + 16, &u32::from(s::ACKNOWLEDGE).to_le_bytes());
    assert!(ev.contains(&Event::StatusChanged {
        old: 0,
        new: s::ACKNOWLEDGE
    }));
    assert_eq!(dev.device_status(), s::ACKNOWLEDGE);
    // Read num_queues through a 2-byte window.
    dev.config_write(base + VirtioPciCap::LENGTH, &2u32.to_le_bytes());
    dev.config_write(
        base + VirtioPciCap::OFFSET,
        &(offset::NUM_QUEUES as u32).to_le_bytes(),
    );
    let mut data = [0u8; 4];
    dev.config_read(base + 16, &mut data);
    assert_eq!(u16::from_le_bytes([data[0], data[1]]), 1);
    // A misaligned window does nothing.
    dev.config_write(base + VirtioPciCap::OFFSET, &0x15u32.to_le_bytes());
    let ev = dev.config_write(base + 16, &0u32.to_le_bytes());
    assert!(ev.is_empty());
    assert_eq!(dev.device_status(), s::ACKNOWLEDGE);
}

#[test]
fn notify_device_config_and_generation() {
    let mut bus = new_bus(3);
    let dev = &mut bus.dev;
    for q in 0..3u16 {
        let off = dev.notify_address(q).unwrap() - dev.bar0_address();
        assert_eq!(
            dev.bar_write(0, off, &q.to_le_bytes()).as_slice(),
            &[Event::QueueNotify(q)]
        );
    }
    assert!(dev
        .bar_write(0, layout::NOTIFY_OFFSET + 12, &3u16.to_le_bytes())
        .is_empty());
    assert!(dev.bar_write(0, layout::NOTIFY_OFFSET, &[0]).is_empty());

    let mut cfg = [0u8; 4];
    dev.bar_read(0, layout::DEVICE_CFG_OFFSET + 4, &mut cfg);
    assert_eq!(cfg, [0x11; 4]);
    let ev = dev.bar_write(0, layout::DEVICE_CFG_OFFSET + 8, &[1]);
    assert_eq!(
        ev.as_slice(),
        &[Event::DeviceConfigWritten {
            offset: 8,
            len: 1,
            value: 1
        }]
    );
    let generation = |dev: &mut VirtioPciFunction| {
        let mut g = [0u8];
        dev.bar_read(0, offset::CONFIG_GENERATION, &mut g);
        g[0]
    };
    let g0 = generation(dev);
    dev.set_device_config(&[0x22; 8]).unwrap();
    assert_ne!(generation(dev), g0);
    assert_eq!(
        &dev.device_config()[..9],
        &[0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0]
    );
    assert!(dev.set_device_config(&[0; 61]).is_err());
    // Writing 0 to queue_enable is ignored; queue fields freeze once enabled.
    common_write(dev, offset::QUEUE_SELECT, &2u16.to_le_bytes());
    common_write(dev, offset::QUEUE_SIZE, &64u16.to_le_bytes());
    let ev = common_write(dev, offset::QUEUE_ENABLE, &1u16.to_le_bytes());
    assert_eq!(ev.as_slice(), &[Event::QueueEnabled(2)]);
    common_write(dev, offset::QUEUE_ENABLE, &0u16.to_le_bytes());
    common_write(dev, offset::QUEUE_SIZE, &32u16.to_le_bytes());
    let q = dev.queue(2).unwrap();
    assert_eq!((q.enabled(), q.size()), (true, 64));
}

#[test]
fn constructor_validates() {
    let ok = VirtioPciParams::new(VIRTIO_ID_BLOCK, 1, 256, 2, VIRTIO_F_VERSION_1, BAR0);
    assert!(VirtioPciFunction::new(
        &VirtioPciParams {
            num_queues: 65,
            ..ok
        },
        &[]
    )
    .is_err());
    assert!(VirtioPciFunction::new(
        &VirtioPciParams {
            max_queue_size: 100,
            ..ok
        },
        &[]
    )
    .is_err());
    assert!(VirtioPciFunction::new(
        &VirtioPciParams {
            msix_vectors: 0,
            ..ok
        },
        &[]
    )
    .is_err());
    assert!(VirtioPciFunction::new(
        &VirtioPciParams {
            bar0_address: 0x1000,
            ..ok
        },
        &[]
    )
    .is_err());
    assert!(VirtioPciFunction::new(&ok, &[0; 4097]).is_err());
    let dev = VirtioPciFunction::new(&ok, &[]).unwrap();
    let mut bus = Bus {
        dev,
        events: Vec::new(),
    };
    assert!(driver::find_virtio_caps(&mut bus, AT).device.is_none());
}

proptest! {
    /// Arbitrary guest accesses never panic, whatever the offset, width or BAR.
    #[test]
    fn arbitrary_accesses_never_panic(
        ops in prop::collection::vec(
            (any::<bool>(), 0u8..8, prop_oneof![any::<u64>(), 0u64..0x40, 0x8000u64..0x8100, 0x3000u64..0x3010], 0usize..10, any::<u64>()),
            1..64),
    ) {
        let mut bus = new_bus(2);
        let dev = &mut bus.dev;
        let mut buf = [0u8; 10];
        for (is_config, bar, off, len, value) in ops {
            let data = [value.to_le_bytes().as_slice(), &[0xaa, 0xbb]].concat();
            if is_config {
                dev.config_write(off as u16, &data[..len]);
                dev.config_read(off as u16, &mut buf[..len]);
            } else {
                dev.bar_write(bar, off, &data[..len]);
                dev.bar_read(bar, off, &mut buf[..len]);
                if bar != 0 || !matches!(len, 1 | 2 | 4 | 8) || off % len as u64 != 0 {
                    prop_assert!(buf[..len].iter().all(|&b| b == 0xff));
                }
            }
        }
    }
}
