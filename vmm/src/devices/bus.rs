//! An address-range bus: port I/O and MMIO exits are routed to the device owning the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device on a [`Bus`]. Offsets are relative to the base it was inserted at.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping `[base, base + len)` ranges, each owned by one device.
///
/// Lookups take a read lock only long enough to clone the device's `Arc`; the device's own lock
/// is taken after, so a device may change the bus (a PCI BAR moving) while handling an access.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self
            .ranges
            .read()
            .map(|r| r.iter().map(|(b, e)| (*b, e.len)).collect::<Vec<_>>());
        f.debug_struct("Bus").field("ranges", &ranges.ok()).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`. Returns false (and adds nothing) when the range is
    /// empty, wraps, or overlaps an existing one.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> bool {
        let Some(end) = base.checked_add(len).filter(|_| len > 0) else {
            return false;
        };
        let Ok(mut ranges) = self.ranges.write() else {
            return false;
        };
        let before = ranges.range(..end).next_back();
        if before.is_some_and(|(b, e)| b + e.len > base) {
            return false;
        }
        ranges.insert(base, Entry { len, device });
        true
    }

    /// Removes the range starting at `base`; returns whether there was one.
    pub fn remove(&self, base: u64) -> bool {
        self.ranges
            .write()
            .map(|mut r| r.remove(&base).is_some())
            .unwrap_or(false)
    }

    /// The device whose range holds all of `[addr, addr + len)`, with the offset of `addr`.
    pub fn find(&self, addr: u64, len: usize) -> Option<(SharedDevice, u64)> {
        let ranges = self.ranges.read().ok()?;
        let (base, e) = ranges.range(..=addr).next_back()?;
        let off = addr - base;
        let end = off.checked_add(len as u64)?;
        (end <= e.len).then(|| (e.device.clone(), off))
    }

    /// Dispatches a read; returns false when no device owns the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some((dev, off)) = self.find(addr, data.len()) else {
            return false;
        };
        if let Ok(mut d) = dev.lock() {
            d.read(off, data);
        }
        true
    }

    /// Dispatches a write; returns false when no device owns the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some((dev, off)) = self.find(addr, data.len()) else {
            return false;
        };
        if let Ok(mut d) = dev.lock() {
            d.write(off, data);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlaps() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        assert!(bus.insert(0x100, 0x10, dev.clone()));
        assert!(!bus.insert(0x108, 0x10, dev.clone()));
        assert!(!bus.insert(0xf8, 0x10, dev.clone()));
        assert!(!bus.insert(u64::MAX, 2, dev.clone()));
        assert!(bus.insert(0x110, 0x10, dev.clone()));
        let mut b = [0u8; 2];
        assert!(bus.read(0x104, &mut b));
        assert_eq!(b, [4, 4]);
        assert!(!bus.read(0x11f, &mut [0u8; 2]), "access crossing the end");
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x112, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(2, vec![7])]);
        assert!(bus.remove(0x100));
        assert!(!bus.read(0x104, &mut b));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    struct Tag(u8);
    impl BusDevice for Tag {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64),
        Read(u64, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..256, 1u64..32).prop_map(|(b, l)| Op::Insert(b, l)),
            (0u64..256).prop_map(Op::Remove),
            (0u64..300, 1usize..5).prop_map(|(a, l)| Op::Read(a, l)),
        ]
    }

    proptest! {
        /// The bus routes exactly like a list of non-overlapping ranges.
        #[test]
        fn matches_a_range_list(ops in proptest::collection::vec(op(), 1..64)) {
            let bus = Bus::new();
            let mut model: Vec<(u64, u64, u8)> = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                let tag = i as u8;
                match op {
                    Op::Insert(b, l) => {
                        let free = model.iter().all(|&(mb, ml, _)| b + l <= mb || mb + ml <= b);
                        prop_assert_eq!(bus.insert(b, l, Arc::new(Mutex::new(Tag(tag)))), free);
                        if free {
                            model.push((b, l, tag));
                        }
                    }
                    Op::Remove(b) => {
                        let had = model.iter().position(|&(mb, _, _)| mb == b);
                        prop_assert_eq!(bus.remove(b), had.is_some());
                        if let Some(p) = had {
                            model.remove(p);
                        }
                    }
                    Op::Read(a, len) => {
                        let owner = model
                            .iter()
                            .find(|&&(mb, ml, _)| a >= mb && a + len as u64 <= mb + ml)
                            .map(|&(_, _, t)| t);
                        let mut data = vec![0xeeu8; len];
                        prop_assert_eq!(bus.read(a, &mut data), owner.is_some());
                        if let Some(t) = owner {
                            prop_assert!(data.iter().all(|&d| d == t));
                        }
                    }
                }
            }
        }
    }
}
