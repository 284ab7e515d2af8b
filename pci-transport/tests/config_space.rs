//! Property tests of `ConfigSpace` masks and the BAR sizing protocol against simple models.

use pci_transport::bar::size_from_mask;
use pci_transport::config_space::{register, status, ConfigSpace};
use pci_transport::{Bar, BarKind, Event};
use proptest::prelude::*;

/// Expected guest write mask and W1C mask of a fresh `ConfigSpace` plus one 32-bit BAR of
/// `size` at slot 1, written out by hand from the PCI rules (not from the implementation).
fn model_masks(size: u64) -> ([u8; 256], [u8; 256]) {
    let mut wm = [0u8; 256];
    let mut w1c = [0u8; 256];
    wm[0x04] = 0b0000_0110; // memory space, bus master
    wm[0x05] = 0b0000_0100; // INTx disable (bit 10)
    wm[0x0c] = 0xff; // cache line size
    wm[0x3c] = 0xff; // interrupt line
    w1c[0x07] = 0xf9; // status bits 8, 11..=15
    let bar_mask = (!(size as u32 - 1)) & !0xf;
    wm[0x14..0x18].copy_from_slice(&bar_mask.to_le_bytes());
    (wm, w1c)
}

fn read_all(cs: &ConfigSpace) -> [u8; 256] {
    let mut out = [0u8; 256];
    for (i, b) in out.iter_mut().enumerate() {
        let mut one = [0u8];
        cs.read(i as u16, &mut one);
        *b = one[0];
    }
    out
}

proptest! {
    /// Random writes of any width at any offset: read-only bytes never change, W1C bits clear
    /// only where 1 is written, RW bits take the written value; malformed writes change nothing.
    #[test]
    fn masks_hold(
        size_log in 4u32..20,
        initial_status_errors in any::<u8>(),
        writes in prop::collection::vec((0u16..300, prop::sample::select(vec![0usize, 1, 2, 3, 4, 8]), any::<u64>()), 1..64),
    ) {
        let size = 1u64 << size_log;
        let mut cs = ConfigSpace::new(0x1af4, 0x1042);
        cs.set_class(1, 0, 0);
        cs.add_bar(Bar::memory32(1, size, false).unwrap(), 0).unwrap();
        cs.set_bytes(register::STATUS + 1, &[initial_status_errors]).unwrap();
        let (wm, w1c) = model_masks(size);
        let mut model = read_all(&cs);
        for (offset, len, value) in writes {
            let bytes = &value.to_le_bytes()[..len];
            cs.write(offset, bytes);
            let valid = matches!(len, 1 | 2 | 4) && offset as usize % len == 0 && offset as usize + len <= 256;
            if valid {
                for (i, &v) in bytes.iter().enumerate() {
                    let at = offset as usize + i;
                    model[at] = ((model[at] & !wm[at]) | (v & wm[at])) & !(v & w1c[at]);
                }
            }
            prop_assert_eq!(read_all(&cs), model);
        }
    }

    /// Malformed or out-of-range reads return all-ones; extended space reads zero.
    #[test]
    fn reads_never_panic(offset in any::<u16>(), len in 0usize..9) {
        let cs = ConfigSpace::new(0x1af4, 0x1042);
        let mut buf = [0u8; 8];
        cs.read(offset, &mut buf[..len]);
        let valid = matches!(len, 1 | 2 | 4) && offset as usize % len == 0 && offset as usize + len <= 4096;
        if !valid {
            prop_assert!(buf[..len].iter().all(|&b| b == 0xff));
        } else if offset >= 256 {
            prop_assert!(buf[..len].iter().all(|&b| b == 0));
        }
    }

    /// BAR sizing and reprogramming against a model of the decoded address.
    #[test]
    fn bar_sizing_matches_model(
        is64 in any::<bool>(),
        prefetchable in any::<bool>(),
        size_log in 4u32..34,
        slot in 0u8..5,
        start in any::<u64>(),
        ops in prop::collection::vec((0u8..5, any::<bool>(), any::<u32>()), 1..40),
    ) {
        let size_log = if is64 { size_log } else { size_log.min(31) };
        let size = 1u64 << size_log;
        let bar = if is64 { Bar::memory64(slot, size, prefetchable) } else { Bar::memory32(slot, size, prefetchable) }.unwrap();
        let limit = if is64 { u64::MAX } else { u32::MAX as u64 };
        let mut addr = (start & limit) & !(size - 1);
        let mut cs = ConfigSpace::new(0x1af4, 0x1042);
        cs.add_bar(bar, addr).unwrap();
        prop_assert_eq!(cs.bar_address(slot), Some(addr));
        let lo = 0x10 + 4 * u16::from(slot);
        let flags = (if is64 { 0b100 } else { 0 }) | (if prefetchable { 0b1000 } else { 0 });
        // The model: the decoded address, whether decoding is on, and the last reported address.
        let mut decoding = false;
        let mut reported = addr;
        for (kind_of_op, all_ones, value) in ops {
            if kind_of_op == 4 {
                // Toggle memory space decoding.
                decoding = !decoding;
                let events = cs.write(0x04, &[if decoding { 0x02 } else { 0 }]);
                let moved = decoding && addr != reported;
                prop_assert_eq!(events.iter().any(|e| matches!(e, Event::BarReprogrammed { .. })), moved);
                if moved {
                    let moved_event = Event::BarReprogrammed { index: slot, old_addr: reported, new_addr: addr };
                    prop_assert!(events.contains(&moved_event));
                    reported = addr;
                }
                continue;
            }
            let high_half = kind_of_op % 2 == 1 && is64;
            let value = if all_ones { u32::MAX } else { value };
            let mask = !(size - 1);
            if high_half {
                addr = (addr & 0xffff_ffff) | ((u64::from(value) << 32) & mask);
            } else {
                addr = (addr & !0xffff_ffff) | (u64::from(value & !0xf) & mask);
            }
            let events = cs.write(if high_half { lo + 4 } else { lo }, &value.to_le_bytes());
            let expected: Vec<Event> = if decoding && reported != addr {
                vec![Event::BarReprogrammed { index: slot, old_addr: std::mem::replace(&mut reported, addr), new_addr: addr }]
            } else {
                vec![]
            };
            prop_assert_eq!(events.as_slice(), expected.as_slice());
            prop_assert_eq!(cs.bar_address(slot), Some(addr));
            // The low register always shows the flags in its read-only low bits.
            prop_assert_eq!(cs.read_u32(lo) & 0xf, flags);
        }
        // The sizing protocol: all-ones in, size mask out.
        cs.write(lo, &u32::MAX.to_le_bytes());
        if is64 { cs.write(lo + 4, &u32::MAX.to_le_bytes()); }
        let kind = if is64 { BarKind::Memory64 } else { BarKind::Memory32 };
        prop_assert_eq!(size_from_mask(cs.read_u32(lo), cs.read_u32(lo + 4), kind), size);
    }
}

#[test]
fn status_capability_bit_and_list() {
    let mut cs = ConfigSpace::new(1, 2);
    assert_eq!(cs.status() & status::CAPABILITIES_LIST, 0);
    assert_eq!(cs.capabilities().count(), 0);
    let a = cs.add_capability(&[0x09, 0xaa, 5, 1, 2]).unwrap();
    let b = cs.add_capability(&[0x11, 0, 0, 0]).unwrap();
    assert_eq!((a, b), (0x40, 0x48));
    assert_ne!(cs.status() & status::CAPABILITIES_LIST, 0);
    assert_eq!(cs.read_u8(register::CAPABILITIES_POINTER), 0x40);
    let caps: Vec<_> = cs.capabilities().map(|c| (c.offset, c.id)).collect();
    assert_eq!(caps, vec![(0x40, 0x09), (0x48, 0x11)]);
    // Capabilities are read-only to the guest.
    cs.write(0x41, &[0x80]);
    assert_eq!(cs.read_u8(0x41), 0x48);
}

#[test]
fn capability_space_runs_out() {
    let mut cs = ConfigSpace::new(1, 2);
    let big = [0x09u8; 64];
    for _ in 0..3 {
        cs.add_capability(&big).unwrap();
    }
    assert_eq!(
        cs.add_capability(&big),
        Err(pci_transport::Error::CapabilitySpaceExhausted)
    );
    assert_eq!(cs.capabilities().count(), 3);
}

#[test]
fn bar_slots_and_addresses_are_validated() {
    let mut cs = ConfigSpace::new(1, 2);
    assert!(Bar::memory64(5, 4096, false).is_err());
    assert!(Bar::memory32(0, 4095, false).is_err());
    assert!(Bar::memory32(0, 8, false).is_err());
    let bar = Bar::memory64(0, 0x1000, false).unwrap();
    assert!(cs.add_bar(bar, 0x1234).is_err());
    cs.add_bar(bar, 0x1_0000_0000).unwrap();
    assert_eq!(
        cs.add_bar(Bar::memory32(1, 0x1000, false).unwrap(), 0),
        Err(pci_transport::Error::BarInUse(1))
    );
    assert!(cs
        .add_bar(Bar::memory32(2, 0x1000, false).unwrap(), 0x1_0000_0000)
        .is_err());
    assert_eq!(cs.find_bar(0x1_0000_0ffc, 4), Some((0, 0xffc)));
    assert_eq!(cs.find_bar(0x1_0000_0ffe, 4), None);
}
