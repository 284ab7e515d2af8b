//! Random request sequences against both engines, compared with an in-memory model.
//!
//! Requests are kept in flight (up to the engine depth) and reaped in whatever order the
//! engine returns them; a request overlapping an in-flight one that changes data first
//! drains the queue, so the model's answer stays unique. Buffers are split over several
//! iovecs, some at unaligned addresses and lengths (bounce buffers under O_DIRECT), and
//! some offsets are not sector-aligned (the buffered path under O_DIRECT).

mod common;

use std::collections::HashMap;

use backend_raw::{Completion, DiskOptions, Engine, EngineKind, IoOp};
use common::{announce, image, Buf};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CAPACITY: u64 = 1 << 20;
const SECTOR: u64 = 512;
const DEPTH: usize = 8;

#[derive(Clone, Debug)]
struct Piece {
    len: usize,
    misalign: usize,
}

#[derive(Clone, Debug)]
enum Op {
    Read {
        offset: u64,
        pieces: Vec<Piece>,
    },
    Write {
        offset: u64,
        pieces: Vec<Piece>,
        seed: u8,
    },
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
    Flush,
    Reap {
        wait: bool,
    },
}

/// Pieces adding up to a whole number of sectors: either sector-sized at sector-aligned
/// addresses, or arbitrary.
fn pieces() -> impl Strategy<Value = Vec<Piece>> {
    let aligned = prop::collection::vec(
        (1usize..=8, 0usize..8).prop_map(|(n, m)| Piece {
            len: n * SECTOR as usize,
            misalign: m * SECTOR as usize,
        }),
        1..4,
    );
    let unaligned = prop::collection::vec(
        (1usize..3000, 0usize..4096).prop_map(|(len, misalign)| Piece { len, misalign }),
        1..5,
    )
    .prop_map(|mut pieces| {
        let total: usize = pieces.iter().map(|p| p.len).sum();
        let pad = (SECTOR as usize - total % SECTOR as usize) % SECTOR as usize;
        if let Some(last) = pieces.last_mut() {
            last.len += pad;
        }
        pieces
    });
    prop_oneof![aligned, unaligned]
}

/// Mostly sector offsets; one in eight is not sector-aligned.
fn offset() -> impl Strategy<Value = u64> {
    let sector = (0..CAPACITY / SECTOR).prop_map(|s| s * SECTOR);
    prop_oneof![7 => sector, 1 => 0..CAPACITY]
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..CAPACITY / SECTOR, 1u64..64).prop_map(|(s, n)| (s * SECTOR, n * SECTOR));
    prop_oneof![
        4 => (offset(), pieces()).prop_map(|(offset, pieces)| Op::Read { offset, pieces }),
        4 => (offset(), pieces(), any::<u8>())
            .prop_map(|(offset, pieces, seed)| Op::Write { offset, pieces, seed }),
        1 => range.clone().prop_map(|(offset, len)| Op::Discard { offset, len }),
        1 => (range, any::<bool>())
            .prop_map(|((offset, len), unmap)| Op::WriteZeroes { offset, len, unmap }),
        1 => Just(Op::Flush),
        2 => any::<bool>().prop_map(|wait| Op::Reap { wait }),
    ]
}

/// What the model expects of an in-flight request.
struct Pending {
    bufs: Vec<Buf>,
    /// Byte range it touches, and whether it changes data.
    range: (u64, u64),
    changes: bool,
    len: u32,
    /// For reads: the bytes expected, and which of them are defined.
    expected: Option<(Vec<u8>, Vec<bool>)>,
}

struct Harness {
    engine: Box<dyn Engine>,
    data: Vec<u8>,
    defined: Vec<bool>,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    discard_zeroes: bool,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl Harness {
    fn check(&mut self, done: Vec<Completion>) -> Result<(), TestCaseError> {
        for c in done {
            let p = self
                .pending
                .remove(&c.user_data)
                .ok_or_else(|| fail(format!("unknown completion {c:?}")))?;
            prop_assert_eq!(
                c.result,
                Ok(p.len),
                "request {} ({:?})",
                c.user_data,
                p.range
            );
            if let Some((expected, defined)) = p.expected {
                let got: Vec<u8> = p.bufs.iter().flat_map(|b| b.bytes().to_vec()).collect();
                for (i, ((g, e), d)) in got.iter().zip(&expected).zip(&defined).enumerate() {
                    if *d && g != e {
                        return Err(fail(format!(
                            "read at {} differs at byte {i}: got {g:#x}, model {e:#x}",
                            p.range.0
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn reap(&mut self, wait: bool) -> Result<(), TestCaseError> {
        self.engine
            .flush_submissions()
            .map_err(|e| fail(e.to_string()))?;
        if wait {
            self.engine.wait().map_err(|e| fail(e.to_string()))?;
        }
        let mut done = Vec::new();
        self.engine.reap(&mut done);
        self.check(done)
    }

    fn drain(&mut self) -> Result<(), TestCaseError> {
        while self.engine.in_flight() > 0 {
            self.reap(true)?;
        }
        prop_assert!(
            self.pending.is_empty(),
            "lost completions: {}",
            self.pending.len()
        );
        Ok(())
    }

    /// Drains first if the new request could race with an in-flight one.
    fn make_room(&mut self, range: (u64, u64), changes: bool) -> Result<(), TestCaseError> {
        let conflict = self
            .pending
            .values()
            .any(|p| (p.changes || changes) && p.range.0 < range.1 && range.0 < p.range.1);
        if conflict {
            self.drain()?;
        }
        while self.engine.in_flight() >= self.engine.capacity() {
            self.reap(true)?;
        }
        Ok(())
    }

    fn submit(&mut self, op: IoOp, mut pending: Pending) -> Result<(), TestCaseError> {
        self.make_room(pending.range, pending.changes)?;
        let iovecs: Vec<libc::iovec> = pending.bufs.iter_mut().map(Buf::iovec).collect();
        let tag = self.next_tag;
        self.next_tag += 1;
        // SAFETY: the buffers live in `pending`, kept until the completion is checked.
        unsafe { self.engine.submit(op, &iovecs, tag) }.map_err(|e| fail(e.to_string()))?;
        self.pending.insert(tag, pending);
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Reap { wait } => self.reap(*wait),
            Op::Flush => self.submit(IoOp::Flush, pending(Vec::new(), (0, 0), false, 0)),
            Op::Read { offset, pieces } => {
                let (offset, len) = place(*offset, pieces);
                let bufs = pieces.iter().map(|p| Buf::new(p.len, p.misalign)).collect();
                let r = offset as usize..(offset + len) as usize;
                let mut p = pending(bufs, (offset, offset + len), false, len);
                p.expected = Some((self.data[r.clone()].to_vec(), self.defined[r].to_vec()));
                self.submit(IoOp::Read { offset }, p)
            }
            Op::Write {
                offset,
                pieces,
                seed,
            } => {
                let (offset, len) = place(*offset, pieces);
                let mut byte = *seed;
                let mut bufs = Vec::new();
                for p in pieces {
                    let data: Vec<u8> = (0..p.len)
                        .map(|_| {
                            byte = byte.wrapping_mul(13).wrapping_add(7);
                            byte
                        })
                        .collect();
                    bufs.push(Buf::filled(&data, p.misalign));
                }
                let p = pending(bufs, (offset, offset + len), true, len);
                self.make_room(p.range, true)?;
                let r = offset as usize..(offset + len) as usize;
                let written: Vec<u8> = p.bufs.iter().flat_map(|b| b.bytes().to_vec()).collect();
                self.data[r.clone()].copy_from_slice(&written);
                self.defined[r].fill(true);
                self.submit(IoOp::Write { offset }, p)
            }
            Op::Discard { offset, len } => {
                let (offset, len) = clamp(*offset, *len);
                self.make_room((offset, offset + len), true)?;
                let r = offset as usize..(offset + len) as usize;
                match self.discard_zeroes {
                    true => self.data[r].fill(0),
                    false => self.defined[r].fill(false),
                }
                let p = pending(Vec::new(), (offset, offset + len), true, 0);
                self.submit(IoOp::Discard { offset, len }, p)
            }
            Op::WriteZeroes { offset, len, unmap } => {
                let (offset, len) = clamp(*offset, *len);
                self.make_room((offset, offset + len), true)?;
                let r = offset as usize..(offset + len) as usize;
                self.data[r.clone()].fill(0);
                self.defined[r].fill(true);
                let p = pending(Vec::new(), (offset, offset + len), true, 0);
                let unmap = *unmap;
                self.submit(IoOp::WriteZeroes { offset, len, unmap }, p)
            }
        }
    }
}

fn pending(bufs: Vec<Buf>, range: (u64, u64), changes: bool, len: u64) -> Pending {
    Pending {
        bufs,
        range,
        changes,
        len: len as u32,
        expected: None,
    }
}

/// Moves a request back so that it ends inside the disk.
fn place(offset: u64, pieces: &[Piece]) -> (u64, u64) {
    clamp(offset, pieces.iter().map(|p| p.len as u64).sum())
}

fn clamp(offset: u64, len: u64) -> (u64, u64) {
    (offset.min(CAPACITY - len), len)
}

fn run(ops: &[Op], kind: EngineKind, direct: bool) -> Result<(), TestCaseError> {
    let opts = DiskOptions {
        readonly: false,
        direct,
    };
    let img = image(CAPACITY, opts);
    let engine = img
        .disk
        .engine(kind, DEPTH)
        .map_err(|e| fail(e.to_string()))?;
    let mut h = Harness {
        engine,
        data: vec![0; CAPACITY as usize],
        defined: vec![true; CAPACITY as usize],
        pending: HashMap::new(),
        next_tag: 0,
        discard_zeroes: img.disk.discard_supported(),
    };
    for op in ops {
        h.apply(op)?;
    }
    h.drain()?;
    drop(h.engine);
    let on_disk = std::fs::read(&img.path).map_err(|e| fail(e.to_string()))?;
    prop_assert_eq!(on_disk.len() as u64, CAPACITY, "the file size changed");
    let mismatch = (0..on_disk.len()).find(|&i| h.defined[i] && on_disk[i] != h.data[i]);
    prop_assert_eq!(mismatch, None, "file differs from the model");
    Ok(())
}

fn check(kind: EngineKind, direct: bool) {
    let opts = DiskOptions {
        readonly: false,
        direct,
    };
    let img = image(CAPACITY, opts);
    let engine = img.disk.engine(kind, DEPTH).unwrap();
    announce("model", &img, engine.as_ref());
    let config = Config {
        // PROPTEST_CASES=1000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let ops = prop::collection::vec(op(), 1..48);
    runner.run(&ops, |ops| run(&ops, kind, direct)).unwrap();
}

#[test]
fn sync_buffered_matches_model() {
    check(EngineKind::Sync, false);
}

#[test]
fn sync_direct_matches_model() {
    check(EngineKind::Sync, true);
}

#[test]
fn uring_buffered_matches_model() {
    check(EngineKind::IoUring, false);
}

#[test]
fn uring_direct_matches_model() {
    check(EngineKind::IoUring, true);
}
