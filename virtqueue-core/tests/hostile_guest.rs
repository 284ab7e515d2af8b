//! A hostile driver: arbitrary bytes as rings and descriptor tables. The device must never
//! panic, and every chain must be accepted or rejected exactly as a straightforward reading
//! of the spec (the reference below, over a plain byte slice) says.

use std::sync::atomic::Ordering;

use proptest::prelude::*;
use virtqueue_core::descriptor::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use virtqueue_core::{
    ChainError, Descriptor, GuestMemory, MemoryError, Queue, QueueError, SliceMemory, MAX_CHAIN_LEN,
};

const MEM_SIZE: usize = 0x2000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x800;
const USED: u64 = 0x900;
const INDIRECT: u64 = 0x1000;

fn desc_at(bytes: &[u8], addr: u64) -> Result<Descriptor, ChainError> {
    let oob = ChainError::OutOfMemory(MemoryError { addr, len: 16 });
    let start = usize::try_from(addr).map_err(|_| oob)?;
    let raw = bytes
        .get(start..start.checked_add(16).ok_or(oob)?)
        .ok_or(oob)?;
    let u = |r: std::ops::Range<usize>| {
        raw[r]
            .iter()
            .rev()
            .fold(0u64, |a, &b| a << 8 | u64::from(b))
    };
    Ok(Descriptor {
        addr: u(0..8),
        len: u(8..12) as u32,
        flags: u(12..14) as u16,
        next: u(14..16) as u16,
    })
}

fn buffer_ok(bytes: &[u8], addr: u64, len: u32) -> Result<(), ChainError> {
    let end = addr
        .checked_add(u64::from(len))
        .ok_or(ChainError::AddressOverflow { addr, len })?;
    if end > bytes.len() as u64 {
        return Err(ChainError::OutOfMemory(MemoryError {
            addr,
            len: u64::from(len),
        }));
    }
    Ok(())
}

/// The chain at `head` as the spec describes it: a list of (table, entries, first index)
/// walks, the second one only for an indirect table at the end.
fn reference(bytes: &[u8], size: u16, head: u16) -> Result<Vec<Descriptor>, ChainError> {
    let limit = usize::from(size).min(MAX_CHAIN_LEN);
    let mut out: Vec<Descriptor> = Vec::new();
    let (mut table, mut entries, mut index, mut in_indirect) = (DESC, u32::from(size), head, false);
    // Indices visited in the current table: coming back to one is a loop.
    let mut visited: Vec<u16> = Vec::new();
    loop {
        if u32::from(index) >= entries {
            return Err(ChainError::IndexOutOfRange {
                index,
                limit: entries,
            });
        }
        if visited.contains(&index) {
            return Err(ChainError::ChainLoop {
                index,
                indirect: in_indirect,
            });
        }
        visited.push(index);
        if out.len() >= limit {
            return Err(ChainError::ChainTooLong {
                limit: limit as u32,
            });
        }
        let d = desc_at(bytes, table + 16 * u64::from(index))?;
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if in_indirect {
                return Err(ChainError::NestedIndirect);
            }
            if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            if d.len == 0 || d.len % 16 != 0 {
                return Err(ChainError::IndirectBadLength { len: d.len });
            }
            buffer_ok(bytes, d.addr, d.len)?;
            (table, entries, index, in_indirect) = (d.addr, d.len / 16, 0, true);
            visited.clear();
            continue;
        }
        buffer_ok(bytes, d.addr, d.len)?;
        let writable = d.flags & VIRTQ_DESC_F_WRITE != 0;
        if !writable && out.iter().any(|p| p.flags & VIRTQ_DESC_F_WRITE != 0) {
            return Err(ChainError::ReadableAfterWritable);
        }
        out.push(d);
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(out);
        }
        index = d.next;
    }
}

/// Descriptors biased towards the interesting cases rather than uniform noise.
fn descriptor() -> impl Strategy<Value = [u8; 16]> {
    let addr = prop_oneof![
        8 => 0u64..MEM_SIZE as u64 - 64,
        2 => Just(INDIRECT),
        1 => (MEM_SIZE as u64 - 64)..(MEM_SIZE as u64 + 64),
        1 => (u64::MAX - 64)..=u64::MAX,
        1 => any::<u64>(),
    ];
    // 128: the whole indirect table, long enough to exceed a small queue without a loop.
    let len =
        prop_oneof![8 => 0u32..64, 1 => Just(16), 1 => Just(32), 1 => Just(128), 1 => any::<u32>()];
    let next = prop_oneof![8 => 0u16..8, 1 => any::<u16>()];
    let (n, w, i) = (VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT);
    let flags = prop_oneof![
        4 => prop::sample::select(vec![0, n, w, n | w]),
        1 => prop::sample::select(vec![i, i | w]),
        1 => any::<u16>(),
    ];
    (addr, len, flags, next).prop_map(|(a, l, f, n)| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&a.to_le_bytes());
        b[8..12].copy_from_slice(&l.to_le_bytes());
        b[12..14].copy_from_slice(&f.to_le_bytes());
        b[14..].copy_from_slice(&n.to_le_bytes());
        b
    })
}

/// Random memory with a descriptor table and an indirect table of biased descriptors, and an
/// avail ring whose `idx` and heads are mostly plausible.
fn memory() -> impl Strategy<Value = Vec<u8>> {
    let idx = prop_oneof![4 => 0u16..10, 1 => any::<u16>()];
    let head = prop_oneof![8 => 0u16..8, 1 => any::<u16>()];
    (
        prop::collection::vec(descriptor(), 8),
        prop::collection::vec(descriptor(), 8),
        idx,
        prop::collection::vec(head, 8),
        prop::collection::vec(any::<u8>(), MEM_SIZE),
    )
        .prop_map(|(table, indirect, idx, heads, mut bytes)| {
            bytes[DESC as usize..][..128].copy_from_slice(table.concat().as_slice());
            bytes[INDIRECT as usize..][..128].copy_from_slice(indirect.concat().as_slice());
            let avail = AVAIL as usize;
            bytes[avail + 2..avail + 4].copy_from_slice(&idx.to_le_bytes());
            for (i, h) in heads.iter().enumerate() {
                bytes[avail + 4 + 2 * i..][..2].copy_from_slice(&h.to_le_bytes());
            }
            bytes
        })
}

fn queue(size: u16, event_idx: bool) -> Queue {
    let mut q = Queue::new(size);
    q.set_desc_table_address(DESC);
    q.set_avail_ring_address(AVAIL);
    q.set_used_ring_address(USED);
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn every_chain_matches_the_reference(bytes in memory(), size in prop::sample::select(vec![4u16, 8]), pops in 1usize..12) {
        let mut bytes = bytes;
        let mem = SliceMemory::new(&mut bytes);
        let mut q = queue(size, false);
        for _ in 0..pops {
            // The reference reads memory as it is now: `add_used` below writes the used ring,
            // which a descriptor or an indirect table may overlap.
            let mut reference_bytes = vec![0u8; MEM_SIZE];
            mem.read(0, &mut reference_bytes).unwrap();
            let before = q.next_avail();
            let avail_idx = mem.load_u16(AVAIL + 2, Ordering::Relaxed).unwrap();
            let head = mem.load_u16(AVAIL + 4 + 2 * u64::from(before % size), Ordering::Relaxed).unwrap();
            match q.pop(&mem) {
                Ok(None) => prop_assert_eq!(avail_idx, before),
                Ok(Some(chain)) => {
                    let expected = reference(&reference_bytes, size, head).unwrap();
                    let got: Vec<_> = chain.descriptors().to_vec();
                    prop_assert_eq!(got, expected);
                    prop_assert_eq!(chain.head_index(), head);
                }
                Err(QueueError::InvalidAvailIdx { .. }) => {
                    prop_assert!(avail_idx.wrapping_sub(before) > size);
                    prop_assert_eq!(q.next_avail(), before);
                    break;
                }
                Err(QueueError::InvalidHead { head: h, .. }) => {
                    prop_assert_eq!(h, head);
                    prop_assert!(h >= size);
                }
                Err(QueueError::BadChain { head: h, reason }) => {
                    prop_assert_eq!(h, head);
                    prop_assert_eq!(Err(reason), reference(&reference_bytes, size, head));
                    q.add_used(&mem, h, 0).unwrap();
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }

    /// Fully arbitrary configuration and memory: nothing panics.
    #[test]
    fn arbitrary_configuration_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..0x800),
        size: u16,
        max_size: u16,
        desc: u64, avail: u64, used: u64,
        small in prop::collection::vec(0u64..0x800, 3),
        use_small: bool,
        event_idx: bool,
        ops in prop::collection::vec((0u8..6, any::<u16>(), any::<u32>()), 1..40),
    ) {
        let mut bytes = bytes;
        let mem = SliceMemory::new(&mut bytes);
        let mut q = Queue::new(max_size);
        q.set_size(size);
        let (d, a, u) = if use_small { (small[0], small[1], small[2]) } else { (desc, avail, used) };
        q.set_desc_table_address(d);
        q.set_avail_ring_address(a);
        q.set_used_ring_address(u);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        let _ = q.is_valid(&mem);
        for (op, head, len) in ops {
            let _ = match op {
                0 => q.pop(&mem).map(|_| ()),
                1 => q.add_used(&mem, head, len),
                2 => q.needs_notification(&mem).map(|_| ()),
                3 => q.enable_notification(&mem).map(|_| ()),
                4 => q.set_notification(&mem, len % 2 == 0),
                _ => q.avail_pending(&mem).map(|_| ()),
            };
        }
    }
}

/// The generator above is only useful if it reaches every rejection (and acceptance).
#[test]
fn generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..500 {
        let bytes = memory().new_tree(&mut runner).unwrap().current();
        // In a queue of 8 over a table of 8, a direct chain can only exceed the queue size by
        // looping; a queue of 1 reaches the length limit through an indirect table.
        for (size, head) in (0..8).map(|h| (8, h)).chain([(1, 0)]) {
            let outcome = match reference(&bytes, size, head) {
                Ok(chain) if chain.len() > 1 => "ok-multi",
                Ok(_) => "ok",
                Err(e) => match e {
                    ChainError::IndexOutOfRange { .. } => "index",
                    ChainError::ChainTooLong { .. } => "too-long",
                    ChainError::ChainLoop { .. } => "loop",
                    ChainError::IndirectBadLength { .. } => "indirect-len",
                    ChainError::NestedIndirect => "nested",
                    ChainError::IndirectWithNext => "indirect-next",
                    ChainError::ReadableAfterWritable => "order",
                    ChainError::AddressOverflow { .. } => "overflow",
                    ChainError::OutOfMemory(_) => "oom",
                },
            };
            *seen.entry(outcome).or_insert(0) += 1;
        }
    }
    println!("{seen:?}");
    assert_eq!(seen.len(), 11, "{seen:?}");
}
