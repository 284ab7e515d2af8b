//! The `blk_parse_request` fuzz target's harness (`fuzz/src/blk.rs`) under proptest, so CI
//! exercises the same checks as the fuzzer: `parse_request` over chains that are mostly
//! well-framed requests of every type, with arbitrary headers, lengths, directions, segment
//! tables and device limits, some of them corrupted.

#[path = "../../fuzz/src/blk.rs"]
mod harness;

use blk_proto::{DeviceLimits, OutHdr, RequestType};
use harness::BlkCase;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use virtqueue_core::descriptor::VIRTQ_DESC_F_WRITE;
use virtqueue_core::Descriptor;

const MEM_SIZE: usize = 0x6000;

fn limits() -> impl Strategy<Value = DeviceLimits> {
    (
        prop_oneof![4 => 0u64..64, 1 => any::<u64>()],
        prop::bool::weighted(0.2),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        prop::option::weighted(0.3, (0u32..8, 0u32..64, 0u32..20, 0u32..64, 0u32..20)),
    )
        .prop_map(
            |(capacity, read_only, (flush, discard, write_zeroes), custom)| {
                let mut l = DeviceLimits::new(capacity);
                l.read_only = read_only;
                l.flush = flush;
                l.discard = discard;
                l.write_zeroes = write_zeroes;
                if let Some((seg, dsec, dseg, wsec, wseg)) = custom {
                    l.seg_max = seg;
                    l.max_discard_sectors = dsec;
                    l.max_discard_seg = dseg;
                    l.max_write_zeroes_sectors = wsec;
                    l.max_write_zeroes_seg = wseg;
                }
                l
            },
        )
}

/// A request type: mostly the six defined ones.
fn request_type() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => prop::sample::select(vec![0u32, 1, 4, 8, 11, 13]),
        1 => any::<u32>(),
    ]
}

/// A data buffer: `(len, device-writable)`, usually whole sectors.
fn data_buffer() -> impl Strategy<Value = (u32, bool)> {
    (
        prop_oneof![4 => (0u32..=4).prop_map(|k| 512 * k), 2 => 0u32..40, 1 => Just(20u32)],
        any::<bool>(),
    )
}

/// Discard / write-zeroes segments: `(sector, num_sectors, flags)`.
fn segments() -> impl Strategy<Value = Vec<(u64, u32, u32)>> {
    vec(
        (
            prop_oneof![4 => 0u64..64, 1 => any::<u64>()],
            prop_oneof![4 => 0u32..64, 1 => any::<u32>()],
            prop_oneof![4 => 0u32..2, 1 => any::<u32>()],
        ),
        0..4,
    )
}

#[allow(clippy::type_complexity)]
fn blk_case() -> impl Strategy<Value = BlkCase> {
    (
        (
            request_type(),
            prop_oneof![4 => 0u64..64, 1 => any::<u64>()],
            0usize..16,
        ),
        segments(),
        vec(data_buffer(), 0..4),
        (1u32..4, prop::bool::weighted(0.9)),
        limits(),
        prop::option::weighted(0.2, (0usize..8, 0u8..3, any::<u64>())),
        vec((0usize..MEM_SIZE, any::<u8>()), 0..4),
    )
        .prop_map(
            |((typ, sector, split), segs, data, status, limits, flip, noise)| {
                let mut memory = vec![0u8; MEM_SIZE];
                let mut descs = Vec::new();
                let mut cursor = 0x100u64;
                let mut place = |memory: &mut Vec<u8>, bytes: &[u8], len: u32, write: bool| {
                    let at = cursor as usize;
                    memory[at..at + bytes.len()].copy_from_slice(bytes);
                    cursor += u64::from(len).max(1).next_multiple_of(16);
                    let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
                    Descriptor {
                        addr: at as u64,
                        len,
                        flags,
                        next: 0,
                    }
                };
                // The header, in one buffer or split in two.
                let hdr = OutHdr::new(RequestType::from_raw(typ), sector).to_bytes();
                if split == 0 {
                    descs.push(place(&mut memory, &hdr, 16, false));
                } else {
                    descs.push(place(&mut memory, &hdr[..split], split as u32, false));
                    descs.push(place(&mut memory, &hdr[split..], 16 - split as u32, false));
                }
                // Discard / write-zeroes segments as readable data.
                if !segs.is_empty() {
                    let mut bytes = Vec::new();
                    for &(s, n, f) in &segs {
                        bytes.extend_from_slice(&s.to_le_bytes());
                        bytes.extend_from_slice(&n.to_le_bytes());
                        bytes.extend_from_slice(&f.to_le_bytes());
                    }
                    descs.push(place(&mut memory, &bytes, bytes.len() as u32, false));
                }
                for &(len, write) in &data {
                    descs.push(place(&mut memory, &[], len, write));
                }
                let (status_len, status_present) = status;
                if status_present {
                    descs.push(place(&mut memory, &[], status_len, true));
                }
                // Corrupt one descriptor: its address, its length or its direction.
                if let Some((i, what, value)) = flip {
                    let n = descs.len();
                    let d = &mut descs[i % n];
                    match what {
                        0 => d.addr = value,
                        1 => d.len = value as u32,
                        _ => d.flags ^= VIRTQ_DESC_F_WRITE,
                    }
                }
                for (at, value) in noise {
                    memory[at] = value;
                }
                BlkCase {
                    memory,
                    descs,
                    limits,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Accepted requests stay inside the disk, memory, features and limits; their data
    /// segments are exactly the chain's data bytes; rejected ones answer at the status byte.
    #[test]
    fn parse_request_keeps_its_promises(mut case in blk_case()) {
        harness::run(&mut case);
    }
}

/// The generator reaches acceptance of every request type, and rejection.
#[test]
fn generated_cases_reach_every_request_type() {
    let mut runner = TestRunner::deterministic();
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for _ in 0..2000 {
        let mut case = blk_case().new_tree(&mut runner).unwrap().current();
        match harness::run(&mut case) {
            Some(t) if !accepted.contains(&t) => accepted.push(t),
            Some(_) => {}
            None => rejected += 1,
        }
    }
    assert!(rejected > 100, "{rejected} rejected");
    for t in [
        RequestType::In,
        RequestType::Out,
        RequestType::Flush,
        RequestType::GetId,
        RequestType::Discard,
        RequestType::WriteZeroes,
    ] {
        assert!(
            accepted.contains(&t),
            "{t:?} never accepted; accepted {accepted:?}"
        );
    }
}

/// A well-formed write of two sectors split over two buffers is accepted by the harness.
#[test]
fn harness_accepts_a_well_formed_write() {
    let mut memory = vec![0u8; 0x2000];
    memory[0x100..0x110].copy_from_slice(&OutHdr::write(6).to_bytes());
    let d = |addr, len, write: bool| Descriptor {
        addr,
        len,
        flags: if write { VIRTQ_DESC_F_WRITE } else { 0 },
        next: 0,
    };
    let mut case = BlkCase {
        memory,
        descs: vec![
            d(0x100, 16, false),
            d(0x200, 512, false),
            d(0x800, 512, false),
            d(0x1000, 1, true),
        ],
        limits: DeviceLimits::new(8),
    };
    assert_eq!(harness::run(&mut case), Some(RequestType::Out));
    case.limits = DeviceLimits::new(7);
    assert_eq!(
        harness::run(&mut case),
        None,
        "sectors 6..8 are past a 7-sector disk"
    );
}
