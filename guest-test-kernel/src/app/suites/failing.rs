//! `tests=failing`: the disk's backend fails some requests (injected faults, a full host
//! filesystem, an image truncated under the VM); those requests must end with
//! `VIRTIO_BLK_S_IOERR`, every other one with `VIRTIO_BLK_S_OK`, and every OK read must
//! return what the last OK write put there (VIRTIO 1.x, 5.2.6 "Device Operation").
//!
//! Options: `fail_lo=<sector> fail_hi=<sector>` (default: the whole disk) is the range where
//! requests of the kinds `fail_ops=read|write|any` fail.
//! - Without `failing_secs`: they *must* fail, and a failed write must leave the data as it
//!   was (injected faults never reach the image). Passes: write every 4 KiB block, read every
//!   block back, FLUSH.
//! - With `failing_secs=<n>`: they *may* fail (the host changes the image behind the guest's
//!   back). Passes: write every block, FLUSH, print `FAILING loop secs=<n>` (the host's cue),
//!   random reads and writes for `n` seconds, then read every block back. A failed write
//!   leaves its block unknown. In the range only the `fail_ops` kinds are issued: a write
//!   past the end of a truncated image would grow it again, with holes where data was.
//!
//! The image must start zeroed. Output: `FAILING ok=<n> ioerr=<m> mismatches=<k>
//! unexpected=<u> reads_ok=.. reads_ioerr=.. writes_ok=.. writes_ioerr=.. flush_ioerr=..`,
//! then `TEST failing PASS|FAIL`. The test fails on a mismatch, on a status other than the
//! expected one, and when no request failed at all (the setup did not work).

use blk_proto::{RequestType, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, mix64, Rng, SECTOR_SIZE};
use guest_test_kernel::Options;

use crate::app::check::report::{fail, Why};
use crate::app::driver::blk::{Blk, Done, Request};
use crate::app::driver::dma;
use crate::arch::tsc::{hz, rdtsc};

/// Sectors per block (4 KiB): every request reads or writes one whole block.
const BLOCK_SECTORS: u64 = 8;
const BLOCK_BYTES: usize = BLOCK_SECTORS as usize * SECTOR_SIZE;
/// Requests in flight.
const QD: usize = 16;
/// Largest disk covered (256 MiB); blocks past it are not used.
const MAX_BLOCKS: u64 = 1 << 16;
/// Problems printed in full.
const SHOWN: u64 = 8;
/// Tag of the FLUSH request (other tags are slot numbers).
const FLUSH_TAG: u64 = u64::MAX;

/// Model of a block's content, packed in a `u32`: what an OK read must return.
const UNKNOWN: u32 = 0;
const ZERO: u32 = 1;
/// Write generations start here, so a generation never packs to `UNKNOWN` or `ZERO`.
const FIRST_GEN: u32 = 2;

/// What a read buffer holds before the device fills it.
const POISON: u8 = 0xa5;

/// What a request's status must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    IoErr,
    Either,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    busy: bool,
    write: bool,
    block: u64,
    gen: u32,
    buf: u64,
}

#[derive(Debug, Default)]
struct Counts {
    reads_ok: u64,
    reads_ioerr: u64,
    writes_ok: u64,
    writes_ioerr: u64,
    flush_ioerr: u64,
    mismatches: u64,
    unexpected: u64,
}

impl Counts {
    fn ok(&self) -> u64 {
        self.reads_ok + self.writes_ok
    }

    fn ioerr(&self) -> u64 {
        self.reads_ioerr + self.writes_ioerr + self.flush_ioerr
    }
}

struct Run<'m> {
    seed: u64,
    blocks: u64,
    lo: u64,
    hi: u64,
    ops: guest_test_kernel::options::FailOps,
    strict: bool,
    model: &'m mut [u32],
    slots: [Slot; QD],
    next_gen: u32,
    c: Counts,
}

/// `tests=failing`: runs the passes and prints the `FAILING` and `TEST` lines.
pub fn run(blk: &mut Blk, opts: &Options<'_>, seed: u64) -> Result<(), Why> {
    let mark = dma::mark();
    let outcome = run_inner(blk, opts, seed);
    dma::release(mark);
    outcome
}

fn run_inner(blk: &mut Blk, opts: &Options<'_>, seed: u64) -> Result<(), Why> {
    let blocks = (blk.capacity() / BLOCK_SECTORS).min(MAX_BLOCKS);
    if blocks < QD as u64 {
        fail!("disk of {} sectors is too small", blk.capacity());
    }
    let model_addr = dma::alloc(blocks * 4, 4096).ok_or(Why::new(format_args!("out of DMA")))?;
    // SAFETY: freshly allocated, zeroed (= UNKNOWN), 4096-aligned, `blocks` u32s long, and
    // never in a request: only this function's model uses it until `run` releases it.
    let model = unsafe { core::slice::from_raw_parts_mut(model_addr as *mut u32, blocks as usize) };
    model.fill(ZERO);
    let mut slots = [Slot::default(); QD];
    for s in slots.iter_mut() {
        s.buf = dma::alloc(BLOCK_BYTES as u64, 4096).ok_or(Why::new(format_args!("out of DMA")))?;
    }
    let mut r = Run {
        seed,
        blocks,
        lo: opts.fail_lo,
        hi: opts.fail_hi.unwrap_or(u64::MAX),
        ops: opts.fail_ops,
        strict: opts.failing_secs.is_none(),
        model,
        slots,
        next_gen: FIRST_GEN,
        c: Counts::default(),
    };
    crate::println!(
        "# failing: {blocks} blocks of {BLOCK_SECTORS} sectors, sectors {}..{} fail ({:?}, {})",
        r.lo,
        opts.fail_hi.map_or(blk.capacity(), |h| h),
        r.ops,
        if r.strict { "must" } else { "may" }
    );

    let mut next = 0u64;
    r.pump(blk, &mut |_, _| sweep(&mut next, blocks, true))?;
    if !r.strict {
        r.flush(blk)?;
        let secs = opts.failing_secs.unwrap_or(1);
        crate::println!("FAILING loop secs={secs}");
        let mut rng = Rng::new(mix64(seed ^ 0xfa11));
        let end = rdtsc() + u64::from(secs) * hz().max(1);
        r.pump(blk, &mut |run, slots| {
            if rdtsc() >= end {
                return None;
            }
            let block = loop {
                let b = rng.below(run.blocks);
                if !slots.iter().any(|s| s.busy && s.block == b) {
                    break b;
                }
            };
            let write = rng.below(2) == 0;
            // In the range, only the kinds that may fail there (see the module docs).
            let write = if run.in_range(block) && !run.ops.covers(write) {
                !write
            } else {
                write
            };
            Some((block, write))
        })?;
    }
    let mut next = 0u64;
    r.pump(blk, &mut |_, _| sweep(&mut next, blocks, false))?;
    if r.strict {
        r.flush(blk)?;
    }

    let c = &r.c;
    crate::println!(
        "FAILING ok={} ioerr={} mismatches={} unexpected={} reads_ok={} reads_ioerr={} writes_ok={} writes_ioerr={} flush_ioerr={}",
        c.ok(),
        c.ioerr(),
        c.mismatches,
        c.unexpected,
        c.reads_ok,
        c.reads_ioerr,
        c.writes_ok,
        c.writes_ioerr,
        c.flush_ioerr
    );
    if c.mismatches > 0 || c.unexpected > 0 {
        fail!(
            "{} mismatches, {} unexpected statuses",
            c.mismatches,
            c.unexpected
        );
    }
    if c.ioerr() == 0 {
        fail!("no request failed: the backend never failed");
    }
    if c.ok() == 0 {
        fail!("no request succeeded");
    }
    Ok(())
}

/// The next block of a pass over the disk.
fn sweep(next: &mut u64, blocks: u64, write: bool) -> Option<(u64, bool)> {
    let block = *next;
    *next += 1;
    (block < blocks).then_some((block, write))
}

impl Run<'_> {
    /// Whether `block` touches the failing sector range.
    fn in_range(&self, block: u64) -> bool {
        let first = block * BLOCK_SECTORS;
        first < self.hi && first + BLOCK_SECTORS > self.lo
    }

    fn expect(&self, block: u64, write: bool) -> Expect {
        match (self.in_range(block) && self.ops.covers(write), self.strict) {
            (false, _) => Expect::Ok,
            (true, true) => Expect::IoErr,
            (true, false) => Expect::Either,
        }
    }

    /// Keeps [`QD`] requests in flight, taking `(block, write)` from `pick` until it returns
    /// `None`, then waits for the rest. `pick` never gets a block already in flight
    /// (it sees the slots to avoid them).
    fn pump(
        &mut self,
        blk: &mut Blk,
        pick: &mut impl FnMut(&Run<'_>, &[Slot; QD]) -> Option<(u64, bool)>,
    ) -> Result<(), Why> {
        let queues = blk.num_queues();
        let mut more = true;
        loop {
            for i in 0..QD {
                if !more || self.slots[i].busy {
                    continue;
                }
                let Some((block, write)) = pick(self, &self.slots) else {
                    more = false;
                    break;
                };
                self.submit(blk, i, queues, block, write)?;
            }
            if blk.total_in_flight() == 0 {
                return Ok(());
            }
            for q in 0..queues {
                blk.kick(q);
            }
            blk.wait_any(&mut |_, d: Done| self.done(d))?;
        }
    }

    fn submit(
        &mut self,
        blk: &mut Blk,
        i: usize,
        queues: usize,
        block: u64,
        write: bool,
    ) -> Result<(), Why> {
        let sector = block * BLOCK_SECTORS;
        let slot = &mut self.slots[i];
        slot.write = write;
        slot.block = block;
        // SAFETY: the slot is free: its buffer is in no request.
        let buf = unsafe { dma::bytes(slot.buf, BLOCK_BYTES) };
        if write {
            slot.gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1).max(FIRST_GEN);
            pattern::fill(buf, sector, mix64(self.seed ^ u64::from(slot.gen)));
        } else {
            // Poisoned: a read that reports OK without writing the buffer shows up as a
            // mismatch instead of passing on the previous request's data.
            buf.fill(POISON);
        }
        blk.submit(
            i % queues,
            &Request {
                kind: if write {
                    RequestType::Out
                } else {
                    RequestType::In
                },
                sector,
                data: &[(slot.buf, BLOCK_BYTES as u32)],
                indirect: false,
                tag: i as u64,
            },
        )?;
        slot.busy = true;
        Ok(())
    }

    /// Checks one completion against the expectation and the model.
    fn done(&mut self, d: Done) {
        let Some(slot) = self.slots.get(d.tag as usize).copied().filter(|s| s.busy) else {
            self.c.unexpected += 1;
            self.problem(format_args!("completion with unknown tag {:#x}", d.tag));
            return;
        };
        if let Some(s) = self.slots.get_mut(d.tag as usize) {
            s.busy = false;
        }
        let Some(state) = self.model.get(slot.block as usize).copied() else {
            return;
        };
        let ok = d.status == VIRTIO_BLK_S_OK;
        match (slot.write, ok) {
            (true, true) => self.c.writes_ok += 1,
            (true, false) => self.c.writes_ioerr += 1,
            (false, true) => self.c.reads_ok += 1,
            (false, false) => self.c.reads_ioerr += 1,
        }
        // 5.2.6: the used length counts the bytes the device wrote: the data of an OK read
        // plus the status byte; only the status byte otherwise.
        let want_len = if ok && !slot.write {
            BLOCK_BYTES as u32 + 1
        } else {
            1
        };
        if d.len != want_len {
            self.c.unexpected += 1;
            self.problem(format_args!(
                "{} of block {}: used length {} but expected {want_len}",
                if slot.write { "write" } else { "read" },
                slot.block,
                d.len
            ));
        }
        let expect = self.expect(slot.block, slot.write);
        let fine = match d.status {
            VIRTIO_BLK_S_OK => expect != Expect::IoErr,
            VIRTIO_BLK_S_IOERR => expect != Expect::Ok,
            _ => false,
        };
        if !fine {
            self.c.unexpected += 1;
            self.problem(format_args!(
                "{} of block {} (sector {}): status {} but expected {expect:?}",
                if slot.write { "write" } else { "read" },
                slot.block,
                slot.block * BLOCK_SECTORS,
                d.status
            ));
        }
        let new_state = match (slot.write, ok) {
            (true, true) => slot.gen,
            // Injected faults never reach the image; a real failure may have written part.
            (true, false) if self.strict => state,
            (true, false) => UNKNOWN,
            (false, true) => {
                self.verify(&slot, state);
                state
            }
            (false, false) => state,
        };
        if let Some(m) = self.model.get_mut(slot.block as usize) {
            *m = new_state;
        }
    }

    /// Compares an OK read's data with the model.
    fn verify(&mut self, slot: &Slot, state: u32) {
        let sector = slot.block * BLOCK_SECTORS;
        // SAFETY: the request completed: the device no longer uses the buffer.
        let buf = unsafe { dma::bytes(slot.buf, BLOCK_BYTES) };
        let result = match state {
            UNKNOWN => Ok(()),
            ZERO => pattern::verify_zero(buf, sector),
            gen => pattern::verify(buf, sector, mix64(self.seed ^ u64::from(gen))),
        };
        if let Err(m) = result {
            self.c.mismatches += 1;
            self.problem(format_args!(
                "read of block {} (sector {sector}) returned stale or wrong data: {m}",
                slot.block
            ));
        }
    }

    /// FLUSH with nothing else in flight: must succeed in the strict mode.
    fn flush(&mut self, blk: &mut Blk) -> Result<(), Why> {
        let status = blk.execute(&Request {
            kind: RequestType::Flush,
            sector: 0,
            data: &[],
            indirect: false,
            tag: FLUSH_TAG,
        })?;
        if status != VIRTIO_BLK_S_OK {
            self.c.flush_ioerr += 1;
            if self.strict || status != VIRTIO_BLK_S_IOERR {
                self.c.unexpected += 1;
                self.problem(format_args!("FLUSH ended with status {status}"));
            }
        }
        Ok(())
    }

    /// Prints the first [`SHOWN`] problems.
    fn problem(&self, args: core::fmt::Arguments<'_>) {
        if self.c.mismatches + self.c.unexpected <= SHOWN {
            crate::println!("# failing: {args}");
        }
    }
}
