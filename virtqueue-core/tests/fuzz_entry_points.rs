//! The `virtqueue_pop` fuzz target's harness (`fuzz/src/virtqueue.rs`) under proptest, so CI
//! exercises the same entry points and model checks as the fuzzer: a device queue with an
//! arbitrary configuration over guest memory holding half-valid rings, driven by an arbitrary
//! sequence of pops, completions, notification decisions and driver writes.

#[path = "../../fuzz/src/virtqueue.rs"]
mod harness;

use harness::{QueueCase, QueueOp, Stats};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use virtqueue_core::{DriverQueue, RingLayout, SliceMemory};

const MEM_SIZE: usize = 0x3000;

fn put(mem: &mut [u8], addr: u64, bytes: &[u8]) {
    let start = addr as usize;
    if let Some(dst) = mem.get_mut(start..start + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// A guest address: usually inside memory (or just past it), sometimes anything.
fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..MEM_SIZE as u64 + 16, 1 => any::<u64>()]
}

/// A descriptor as the driver might write it: usually a small buffer inside memory.
fn raw_desc(size: u16) -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (
        addr(),
        prop_oneof![8 => 0u32..600, 1 => Just(32u32), 1 => any::<u32>()],
        0u16..8,
        prop_oneof![8 => 0..size.max(1), 1 => any::<u16>()],
    )
}

fn queue_op() -> impl Strategy<Value = QueueOp> {
    prop_oneof![
        6 => Just(QueueOp::Pop),
        3 => (0u32..2048).prop_map(|len| QueueOp::CompleteLast { len }),
        1 => (0u16..80, any::<u32>()).prop_map(|(head, len)| QueueOp::AddUsed { head, len }),
        2 => Just(QueueOp::NeedsNotification),
        1 => any::<bool>().prop_map(QueueOp::SetNotification),
        1 => Just(QueueOp::EnableNotification),
        2 => (addr(), any::<u16>()).prop_map(|(addr, value)| QueueOp::GuestWrite { addr, value }),
        1 => (addr(), 0u16..80, 0u16..80).prop_map(|(desc_table, queue_size, head)| {
            QueueOp::ReadChain { desc_table, queue_size, head }
        }),
    ]
}

/// Queue configuration and memory: usually a packed ring layout whose descriptor table,
/// avail ring and `used_event` hold plausible but unchecked values, sometimes anything.
fn queue_case() -> impl Strategy<Value = QueueCase> {
    let size = prop_oneof![9 => (0u32..=6).prop_map(|k| 1u16 << k), 1 => any::<u16>()];
    size.prop_flat_map(|size| {
        let n = usize::from(size.min(64));
        (
            (Just(size), (0u64..0x100).prop_map(|b| b * 16)),
            vec(raw_desc(size), n),
            vec(prop_oneof![8 => 0..size.max(1), 1 => any::<u16>()], n),
            (0u16..=size.saturating_add(1), any::<u16>(), any::<bool>()),
            vec((0usize..MEM_SIZE, any::<u8>()), 0..8),
            (any::<bool>(), prop::bool::weighted(0.95)),
            (
                prop::option::weighted(0.1, any::<u16>()),
                prop::option::weighted(0.1, any::<u16>()),
            ),
            prop::option::weighted(0.1, (addr(), addr(), addr())),
            vec(queue_op(), 1..40),
        )
    })
    .prop_map(
        |((size, base), descs, heads, avail, noise, (event_idx, ready), next, raw, ops)| {
            let (published, used_event, no_interrupt) = avail;
            let (next_avail, next_used) = next;
            let mut memory = vec![0u8; MEM_SIZE];
            let addrs = RingLayout::new(size).map(|l| l.addresses(base));
            if let Some(a) = addrs {
                for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
                    let at = a.desc_table + 16 * i as u64;
                    put(&mut memory, at, &addr.to_le_bytes());
                    put(&mut memory, at + 8, &len.to_le_bytes());
                    put(&mut memory, at + 12, &flags.to_le_bytes());
                    put(&mut memory, at + 14, &next.to_le_bytes());
                }
                for (i, head) in heads.iter().enumerate() {
                    put(
                        &mut memory,
                        a.avail_ring + 4 + 2 * i as u64,
                        &head.to_le_bytes(),
                    );
                }
                let idx = next_avail.unwrap_or(0).wrapping_add(published);
                put(
                    &mut memory,
                    a.avail_ring,
                    &u16::from(no_interrupt).to_le_bytes(),
                );
                put(&mut memory, a.avail_ring + 2, &idx.to_le_bytes());
                let used_event_at = a.avail_ring + 4 + 2 * u64::from(size);
                put(&mut memory, used_event_at, &used_event.to_le_bytes());
            }
            for (at, value) in noise {
                memory[at] = value;
            }
            let (desc_table, avail_ring, used_ring) = match (raw, addrs) {
                (Some(raw), _) => raw,
                (None, Some(a)) => (a.desc_table, a.avail_ring, a.used_ring),
                (None, None) => (0, 0x1000, 0x2000),
            };
            QueueCase {
                memory,
                max_size: size,
                size,
                desc_table,
                avail_ring,
                used_ring,
                event_idx,
                ready,
                next_avail,
                next_used,
                ops,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every pop, completion and notification decision matches the model; every chain lies
    /// inside memory and is no longer than the queue.
    #[test]
    fn queue_matches_model_under_hostile_driver(mut case in queue_case()) {
        harness::run(&mut case);
    }
}

/// The harness accepts what a well-behaved driver publishes (the model is not vacuous): two
/// chains, one of them indirect, popped, completed and notified.
#[test]
fn harness_follows_a_well_behaved_driver() {
    let size = 16;
    let layout = RingLayout::new(size).unwrap();
    let addrs = layout.addresses(0x1000);
    let mut memory = vec![0u8; MEM_SIZE];
    {
        let mem = SliceMemory::new(&mut memory);
        let mut driver = DriverQueue::new(&mem, size, addrs, false).unwrap();
        driver
            .add(&mem, &[(0x2000, 16)], &[(0x2100, 512), (0x2400, 1)])
            .unwrap();
        driver
            .add_indirect(&mem, 0x2800, &[(0x2000, 16)], &[(0x2100, 1)])
            .unwrap();
    }
    let mut case = QueueCase {
        memory,
        max_size: size,
        size,
        desc_table: addrs.desc_table,
        avail_ring: addrs.avail_ring,
        used_ring: addrs.used_ring,
        event_idx: false,
        ready: true,
        next_avail: None,
        next_used: None,
        ops: vec![
            QueueOp::Pop,
            QueueOp::CompleteLast { len: 513 },
            QueueOp::NeedsNotification,
            QueueOp::Pop,
            QueueOp::CompleteLast { len: 1 },
            QueueOp::Pop,
            QueueOp::NeedsNotification,
            QueueOp::EnableNotification,
        ],
    };
    let stats = harness::run(&mut case);
    let expected = Stats {
        chains: 2,
        bad_chains: 0,
        used: 2,
        notifications: 2,
    };
    assert_eq!(stats, expected);
}

/// The generator reaches the interesting paths: over a fixed-seed sample, many cases pop
/// valid chains, reject bad ones, publish used elements and decide to notify.
#[test]
fn generated_cases_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let mut total = Stats::default();
    for _ in 0..300 {
        let mut case = queue_case().new_tree(&mut runner).unwrap().current();
        let s = harness::run(&mut case);
        total.chains += s.chains;
        total.bad_chains += s.bad_chains;
        total.used += s.used;
        total.notifications += s.notifications;
    }
    assert!(total.chains >= 100, "{total:?}");
    assert!(total.bad_chains >= 100, "{total:?}");
    assert!(total.used >= 50, "{total:?}");
    assert!(total.notifications >= 20, "{total:?}");
}
