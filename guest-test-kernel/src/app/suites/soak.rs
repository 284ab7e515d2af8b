//! `soak=<secs>`: random reads, writes, flushes, discards and write-zeroes at QD 64 over every
//! queue, for `secs` seconds, with every read verified against a model of each sector.
//!
//! The model keeps one state per sector ([`State`]): content unknown (never written by us),
//! the pattern of a write generation, zeros (WRITE_ZEROES, 5.2.6.2: reads return zeros), or
//! "zeros or the generation it held" after a DISCARD (5.2.6.2: the device MAY deallocate;
//! either answer is allowed, sector by sector). No two requests in flight overlap when one of
//! them changes data, so the model is exact.
//!
//! Prints `# soak ...` progress lines, then
//! `SOAK ops=<n> reads=.. writes=.. flushes=.. discards=.. write_zeroes=.. mismatches=<m>`.

use blk_proto::features::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use blk_proto::{DiscardWriteZeroes, RequestType, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, mix64, Rng, SECTOR_SIZE};

use crate::app::check::pipeline::cut;
use crate::app::check::report::{fail, Why};
use crate::app::driver::blk::{Blk, BlkError, Done, Request, MAX_SEGS};
use crate::app::driver::dma;
use crate::arch::tsc::{hz, rdtsc};
use virtqueue_core::DriverError;

/// Requests in flight (spread over the queues).
const QD: usize = 64;
/// Largest request, in sectors (32 KiB).
const MAX_SECTORS: u64 = 64;
/// Mismatches printed in full.
const SHOWN: u64 = 8;

/// What a sector must read as; packed in a `u32` per sector in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not written by the soak: anything.
    Unknown,
    /// The pattern of this generation.
    Gen(u32),
    /// Zeros.
    Zero,
    /// Zeros or the pattern of this generation (discarded).
    ZeroOr(u32),
}

const KIND_SHIFT: u32 = 30;
const GEN_MASK: u32 = (1 << KIND_SHIFT) - 1;

impl State {
    fn pack(self) -> u32 {
        match self {
            State::Unknown => 0,
            State::Gen(g) => (1 << KIND_SHIFT) | (g & GEN_MASK),
            State::Zero => 2 << KIND_SHIFT,
            State::ZeroOr(g) => (3 << KIND_SHIFT) | (g & GEN_MASK),
        }
    }

    fn unpack(v: u32) -> State {
        match v >> KIND_SHIFT {
            1 => State::Gen(v & GEN_MASK),
            2 => State::Zero,
            3 => State::ZeroOr(v & GEN_MASK),
            _ => State::Unknown,
        }
    }

    /// After a DISCARD.
    fn discarded(self) -> State {
        match self {
            State::Gen(g) | State::ZeroOr(g) => State::ZeroOr(g),
            State::Zero => State::Zero,
            State::Unknown => State::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    kind: Kind,
    sector: u64,
    sectors: u64,
    gen: u32,
    buf: u64,
}

/// Counters printed in the `SOAK` line.
#[derive(Default, Clone, Copy)]
struct Counts {
    ops: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    discards: u64,
    write_zeroes: u64,
    mismatches: u64,
    errors: u64,
}

struct Model {
    /// One packed [`State`] per sector, in DMA memory (the disk may be large).
    states: u64,
    sectors: u64,
}

impl Model {
    fn get(&self, s: u64) -> State {
        if s >= self.sectors {
            return State::Unknown;
        }
        // SAFETY: `states` holds `sectors` u32 values allocated for the model only.
        State::unpack(unsafe { ((self.states + 4 * s) as *const u32).read() })
    }

    fn set(&mut self, s: u64, st: State) {
        if s < self.sectors {
            // SAFETY: as in `get`.
            unsafe { ((self.states + 4 * s) as *mut u32).write(st.pack()) }
        }
    }
}

fn gen_seed(seed: u64, gen: u32) -> u64 {
    mix64(seed ^ u64::from(gen) ^ 0x50a4)
}

/// Runs the soak for `secs` seconds; Ok if every request succeeded and no read mismatched.
pub fn run(blk: &mut Blk, secs: u32, seed: u64) -> Result<(), Why> {
    let cap = blk.capacity();
    if cap < 4 * MAX_SECTORS {
        fail!("disk of {cap} sectors is too small for the soak");
    }
    let states = dma::alloc(4 * cap, 4096).ok_or(Why::new(format_args!(
        "out of DMA memory for the model of {cap} sectors"
    )))?;
    let mut model = Model {
        states,
        sectors: cap,
    };
    let buf_bytes = MAX_SECTORS * SECTOR_SIZE as u64;
    let mut slots = [Slot {
        busy: false,
        kind: Kind::Read,
        sector: 0,
        sectors: 0,
        gen: 0,
        buf: 0,
    }; QD];
    for s in slots.iter_mut() {
        s.buf = dma::alloc(buf_bytes, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
    }
    let can_flush = blk.has(VIRTIO_BLK_F_FLUSH);
    let can_discard = blk.has(VIRTIO_BLK_F_DISCARD);
    let can_zero = blk.has(VIRTIO_BLK_F_WRITE_ZEROES);
    let indirect_ok = blk.has(VIRTIO_RING_F_INDIRECT_DESC);
    let align = if can_discard {
        u64::from(blk.config().discard_sector_alignment.get()).clamp(1, MAX_SECTORS)
    } else {
        1
    };
    let nq = blk.num_queues();
    crate::println!(
        "# soak: {secs} s, {cap} sectors, {nq} queue(s), qd {QD}, flush {can_flush}, discard {can_discard} (align {align}), write_zeroes {can_zero}"
    );
    let mut rng = Rng::new(mix64(seed ^ 0x50a7));
    let mut c = Counts::default();
    let tsc_hz = hz().max(1);
    let start = rdtsc();
    let end = start + u64::from(secs) * tsc_hz;
    let mut next_report = start + 5 * tsc_hz;
    let mut next_gen = 1u32;
    loop {
        let now = rdtsc();
        let running = now < end;
        if running {
            for i in 0..QD {
                if slots[i].busy {
                    continue;
                }
                let Some(op) = pick(
                    &mut rng,
                    &slots,
                    cap,
                    align,
                    can_flush,
                    can_discard,
                    can_zero,
                ) else {
                    continue;
                };
                let (kind, sector, sectors) = op;
                let gen = if kind == Kind::Write {
                    next_gen = if next_gen >= GEN_MASK {
                        1
                    } else {
                        next_gen + 1
                    };
                    next_gen
                } else {
                    0
                };
                let slot = &mut slots[i];
                *slot = Slot {
                    busy: true,
                    kind,
                    sector,
                    sectors,
                    gen,
                    ..*slot
                };
                if !submit(blk, i, slot, seed, &mut rng, indirect_ok, nq)? {
                    // The ring is short of descriptors: the slot waits for completions.
                    slot.busy = false;
                    break;
                }
            }
            for q in 0..nq {
                blk.kick(q);
            }
        }
        if blk.total_in_flight() == 0 {
            if running {
                continue;
            }
            break;
        }
        let mut done = [Done {
            tag: 0,
            status: 0,
            len: 0,
        }; QD];
        let mut n = 0;
        blk.wait_any(&mut |_, d| {
            if let Some(e) = done.get_mut(n) {
                *e = d;
                n += 1;
            }
        })?;
        for d in done.iter().take(n) {
            let Some(slot) = slots.get_mut(d.tag as usize) else {
                fail!("completion with unknown tag {}", d.tag);
            };
            if !slot.busy {
                fail!("completion of slot {} which is not in flight", d.tag);
            }
            slot.busy = false;
            c.ops += 1;
            complete(slot, d, &mut model, seed, &mut c);
        }
        let now = rdtsc();
        if now >= next_report {
            next_report = now + 5 * tsc_hz;
            crate::println!(
                "# soak t={}s ops={} reads={} writes={} flushes={} discards={} write_zeroes={} mismatches={} errors={}",
                (now - start) / tsc_hz,
                c.ops,
                c.reads,
                c.writes,
                c.flushes,
                c.discards,
                c.write_zeroes,
                c.mismatches,
                c.errors
            );
        }
    }
    crate::println!(
        "SOAK ops={} reads={} writes={} flushes={} discards={} write_zeroes={} mismatches={} errors={}",
        c.ops,
        c.reads,
        c.writes,
        c.flushes,
        c.discards,
        c.write_zeroes,
        c.mismatches,
        c.errors
    );
    if c.mismatches > 0 || c.errors > 0 {
        fail!(
            "{} mismatched reads, {} failed requests",
            c.mismatches,
            c.errors
        );
    }
    if c.ops == 0 {
        fail!("no request completed");
    }
    Ok(())
}

/// A random operation that overlaps no conflicting request in flight, or `None` (retry later).
fn pick(
    rng: &mut Rng,
    slots: &[Slot; QD],
    cap: u64,
    align: u64,
    can_flush: bool,
    can_discard: bool,
    can_zero: bool,
) -> Option<(Kind, u64, u64)> {
    let roll = rng.below(100);
    let kind = match roll {
        0..=44 => Kind::Read,
        45..=84 => Kind::Write,
        85..=89 if can_flush => Kind::Flush,
        90..=94 if can_discard => Kind::Discard,
        95..=99 if can_zero => Kind::WriteZeroes,
        _ => Kind::Read,
    };
    if kind == Kind::Flush {
        return Some((kind, 0, 0));
    }
    for _ in 0..4 {
        let (sector, sectors) = if kind == Kind::Discard {
            let units = (MAX_SECTORS / align).max(1);
            let n = (1 + rng.below(units)) * align;
            let s = rng.below((cap - n) / align + 1) * align;
            (s, n)
        } else {
            // Mostly small, sometimes up to MAX_SECTORS; hot spots around the disk edges.
            let n = if rng.below(4) == 0 {
                1 + rng.below(MAX_SECTORS)
            } else {
                1 + rng.below(8)
            };
            let s = match rng.below(10) {
                0 => rng.below(64).min(cap - n),
                1 => cap - n - rng.below(64).min(cap - n),
                _ => rng.below(cap - n + 1),
            };
            (s, n)
        };
        let writes = kind != Kind::Read;
        let clash = slots.iter().any(|o| {
            o.busy
                && o.kind != Kind::Flush
                && (writes || o.kind != Kind::Read)
                && sector < o.sector + o.sectors
                && o.sector < sector + sectors
        });
        if !clash {
            return Some((kind, sector, sectors));
        }
    }
    None
}

fn submit(
    blk: &mut Blk,
    i: usize,
    slot: &Slot,
    seed: u64,
    rng: &mut Rng,
    indirect_ok: bool,
    nq: usize,
) -> Result<bool, Why> {
    let bytes = (slot.sectors as usize) * SECTOR_SIZE;
    let mut segs = [(0u64, 0u32); MAX_SEGS];
    let (kind, sector, nsegs) = match slot.kind {
        Kind::Flush => (RequestType::Flush, 0, 0),
        Kind::Discard | Kind::WriteZeroes => {
            let unmap = rng.below(2) == 1;
            let seg = DiscardWriteZeroes::new(
                slot.sector,
                slot.sectors as u32,
                unmap && slot.kind == Kind::WriteZeroes,
            )
            .to_bytes();
            // SAFETY: the slot is not in flight: its buffer is ours.
            unsafe { dma::bytes(slot.buf, seg.len()) }.copy_from_slice(&seg);
            segs[0] = (slot.buf, seg.len() as u32);
            let kind = if slot.kind == Kind::Discard {
                RequestType::Discard
            } else {
                RequestType::WriteZeroes
            };
            (kind, 0, 1)
        }
        Kind::Read | Kind::Write => {
            // SAFETY: the slot is not in flight: its buffer is ours.
            let buf = unsafe { dma::bytes(slot.buf, bytes) };
            if slot.kind == Kind::Write {
                pattern::fill(buf, slot.sector, gen_seed(seed, slot.gen));
            } else {
                buf.fill(0xa5);
            }
            let split = rng.below(3) == 0;
            let n = cut(
                slot.buf,
                bytes as u64,
                blk.max_segments().min(8),
                blk.max_segment_bytes(),
                if split { Some(rng) } else { None },
                &mut segs,
            );
            let kind = if slot.kind == Kind::Write {
                RequestType::Out
            } else {
                RequestType::In
            };
            (kind, slot.sector, n.min(MAX_SEGS))
        }
    };
    let indirect = indirect_ok && rng.below(4) == 0;
    let submitted = blk.submit(
        i % nq,
        &Request {
            kind,
            sector,
            data: &segs[..nsegs],
            indirect,
            tag: i as u64,
        },
    );
    match submitted {
        // 64 slots of up to MAX_SEGS + 2 descriptors each can outnumber the ring when a slow
        // device keeps them all in flight.
        Err(BlkError::Ring(DriverError::NoFreeDescriptors { .. })) => Ok(false),
        r => r.map(|()| true).map_err(Why::from),
    }
}

/// Checks a finished request against the model and updates it.
fn complete(slot: &Slot, d: &Done, model: &mut Model, seed: u64, c: &mut Counts) {
    match slot.kind {
        Kind::Read => c.reads += 1,
        Kind::Write => c.writes += 1,
        Kind::Flush => c.flushes += 1,
        Kind::Discard => c.discards += 1,
        Kind::WriteZeroes => c.write_zeroes += 1,
    }
    // 5.2.6: the used length counts the bytes the device wrote: an OK read's data and the
    // status byte, only the status byte for everything else.
    let want_len = match slot.kind {
        Kind::Read if d.status == VIRTIO_BLK_S_OK => (slot.sectors as u32) * SECTOR_SIZE as u32 + 1,
        _ => 1,
    };
    if d.len != want_len {
        c.mismatches += 1;
        if c.mismatches <= SHOWN {
            crate::println!(
                "# soak: {:?} of {}+{}: used length {} but expected {want_len}",
                slot.kind,
                slot.sector,
                slot.sectors,
                d.len
            );
        }
    }
    if d.status != VIRTIO_BLK_S_OK {
        c.errors += 1;
        if c.errors <= SHOWN {
            crate::println!(
                "# soak: {:?} of {}+{} failed with status {}",
                slot.kind,
                slot.sector,
                slot.sectors,
                d.status
            );
        }
        // The content of a failed write is unknown from now on.
        if slot.kind != Kind::Read && slot.kind != Kind::Flush {
            for s in slot.sector..slot.sector + slot.sectors {
                model.set(s, State::Unknown);
            }
        }
        return;
    }
    match slot.kind {
        Kind::Flush => {}
        Kind::Write => (slot.sector..slot.sector + slot.sectors)
            .for_each(|s| model.set(s, State::Gen(slot.gen))),
        Kind::WriteZeroes => {
            (slot.sector..slot.sector + slot.sectors).for_each(|s| model.set(s, State::Zero))
        }
        Kind::Discard => (slot.sector..slot.sector + slot.sectors)
            .for_each(|s| model.set(s, model.get(s).discarded())),
        Kind::Read => {
            let bytes = (slot.sectors as usize) * SECTOR_SIZE;
            // SAFETY: the read completed: the buffer is ours again.
            let data = unsafe { dma::bytes(slot.buf, bytes) };
            for (i, sec) in data.chunks(SECTOR_SIZE).enumerate() {
                let s = slot.sector + i as u64;
                let st = model.get(s);
                let ok = match st {
                    State::Unknown => true,
                    State::Zero => pattern::verify_zero(sec, s).is_ok(),
                    State::Gen(g) => pattern::verify(sec, s, gen_seed(seed, g)).is_ok(),
                    State::ZeroOr(g) => {
                        pattern::verify_zero(sec, s).is_ok()
                            || pattern::verify(sec, s, gen_seed(seed, g)).is_ok()
                    }
                };
                if !ok {
                    c.mismatches += 1;
                    if c.mismatches <= SHOWN {
                        crate::println!(
                            "# soak: MISMATCH sector {s}: expected {st:?}, first bytes {:02x?}",
                            sec.get(..16).unwrap_or(&[])
                        );
                    }
                }
            }
        }
    }
}
