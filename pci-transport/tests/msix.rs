//! Property tests of MSI-X masking and pending-bit delivery against a model.

use pci_transport::msix::MSIX_ENTRY_SIZE;
use pci_transport::{Event, Events, MsixDelivery, MsixMessage, MsixTable};
use proptest::prelude::*;

const SIZE: u16 = 5;

#[derive(Clone, Debug)]
enum Op {
    Signal(u16),
    Mask(u16, bool),
    Program(u16, u64, u32),
    Control(bool, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SIZE + 1).prop_map(Op::Signal),
        2 => (0..SIZE + 1, any::<bool>()).prop_map(|(v, m)| Op::Mask(v, m)),
        1 => (0..SIZE + 1, any::<u64>(), any::<u32>()).prop_map(|(v, a, d)| Op::Program(v, a, d)),
        2 => (any::<bool>(), any::<bool>()).prop_map(|(e, m)| Op::Control(e, m)),
    ]
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    msg: MsixMessage,
    masked: bool,
}

struct Model {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    fmask: bool,
}

impl Model {
    fn deliverable(&self, v: usize) -> bool {
        self.enabled && !self.fmask && !self.entries[v].masked
    }

    fn release(&mut self, v: usize, out: &mut Vec<Event>) {
        if self.pending[v] && self.deliverable(v) {
            self.pending[v] = false;
            out.push(Event::MsixPendingDelivered {
                vector: v as u16,
                message: self.entries[v].msg,
            });
        }
    }
}

fn pba(t: &MsixTable) -> u64 {
    let mut b = [0u8; 8];
    t.pba_read(0, &mut b);
    u64::from_le_bytes(b)
}

proptest! {
    #[test]
    fn masking_and_pending_match_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut t = MsixTable::new(SIZE).unwrap();
        let mut m = Model {
            entries: vec![Entry { msg: MsixMessage::default(), masked: true }; SIZE as usize],
            pending: vec![false; SIZE as usize],
            enabled: false,
            fmask: false,
        };
        for op in ops {
            let mut ev = Events::new();
            let mut expected = Vec::new();
            match op {
                Op::Signal(v) => {
                    let got = t.signal(v);
                    let want = if v >= SIZE {
                        MsixDelivery::InvalidVector
                    } else if !m.enabled {
                        MsixDelivery::Disabled
                    } else if m.deliverable(v as usize) {
                        MsixDelivery::Deliver(m.entries[v as usize].msg)
                    } else {
                        m.pending[v as usize] = true;
                        MsixDelivery::Pending
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Mask(v, masked) => {
                    t.table_write(u64::from(v) * MSIX_ENTRY_SIZE + 12, &u32::from(masked).to_le_bytes(), &mut ev);
                    if v < SIZE {
                        let e = &mut m.entries[v as usize];
                        if e.masked != masked {
                            e.masked = masked;
                            expected.push(Event::MsixEntryChanged(v));
                            m.release(v as usize, &mut expected);
                        }
                    }
                }
                Op::Program(v, addr, data) => {
                    t.table_write(u64::from(v) * MSIX_ENTRY_SIZE, &addr.to_le_bytes(), &mut ev);
                    t.table_write(u64::from(v) * MSIX_ENTRY_SIZE + 8, &data.to_le_bytes(), &mut ev);
                    if v < SIZE {
                        let e = &mut m.entries[v as usize];
                        if e.msg.address != addr {
                            e.msg.address = addr;
                            expected.push(Event::MsixEntryChanged(v)); // one event per access
                        }
                        if e.msg.data != data {
                            e.msg.data = data;
                            expected.push(Event::MsixEntryChanged(v));
                        }
                    }
                }
                Op::Control(enabled, fmask) => {
                    t.set_control(enabled, fmask, &mut ev);
                    if (enabled, fmask) != (m.enabled, m.fmask) {
                        m.enabled = enabled;
                        m.fmask = fmask;
                        expected.push(Event::MsixEnableChanged { enabled, function_masked: fmask });
                        for v in 0..SIZE as usize {
                            m.release(v, &mut expected);
                        }
                    }
                }
            }
            prop_assert_eq!(ev.as_slice(), expected.as_slice());
            let want_pba = m.pending.iter().enumerate().fold(0u64, |acc, (i, &p)| acc | (u64::from(p) << i));
            prop_assert_eq!(pba(&t), want_pba);
            for v in 0..SIZE {
                // A vector is never both pending and deliverable.
                prop_assert!(!(t.is_pending(v) && t.is_deliverable(v)));
                prop_assert_eq!(t.message(v), Some(m.entries[v as usize].msg));
            }
        }
    }

    /// Table and PBA accept any offset/width without panicking.
    #[test]
    fn table_accesses_never_panic(off in any::<u64>(), len in 0usize..12, value in any::<u64>()) {
        let mut t = MsixTable::new(SIZE).unwrap();
        let bytes = [value.to_le_bytes(), value.to_le_bytes()].concat();
        let mut ev = Events::new();
        t.table_write(off, &bytes[..len], &mut ev);
        let mut buf = [0u8; 12];
        t.table_read(off, &mut buf[..len]);
        t.pba_read(off, &mut buf[..len]);
    }
}

#[test]
fn table_reads_back_entries_and_reserved_bits() {
    let mut t = MsixTable::new(2).unwrap();
    let mut ev = Events::new();
    t.table_write(16, &0xfee0_0000u64.to_le_bytes(), &mut ev);
    t.table_write(
        24,
        &(0x41u64 | (0xffff_fffeu64 << 32)).to_le_bytes(),
        &mut ev,
    );
    let mut b = [0u8; 16];
    t.table_read(16, &mut b[..8]);
    t.table_read(24, &mut b[8..]);
    assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0xfee0_0000);
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 0x41);
    // Only the mask bit of vector control is implemented; writing 0xfffffffe unmasks.
    assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 0);
    // Entries start masked.
    t.table_read(12, &mut b[..4]);
    assert_eq!(u32::from_le_bytes(b[..4].try_into().unwrap()), 1);
    // Misaligned and 2-byte reads are all-ones.
    t.table_read(2, &mut b[..4]);
    assert_eq!(&b[..4], &[0xff; 4]);
    assert!(MsixTable::new(0).is_err());
    assert!(MsixTable::new(65).is_err());
}
