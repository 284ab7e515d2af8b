//! `tests=durability`: random 4 KiB block writes with unique patterns, a FLUSH every
//! [`PER_FLUSH`] completed writes, and after each FLUSH completes one serial line naming the
//! writes it made durable, forever (the host kills the VMM and checks the image).
//!
//! VIRTIO 1.x, 5.2.6.1: a FLUSH makes durable every write that *completed* before the FLUSH
//! was submitted; writes keep flowing while a FLUSH is in flight, and only those completed
//! before its submission are listed.
//!
//! Output, parsed by `vmm/tests/durability.rs`:
//! - `DURABILITY seed=<hex> block_sectors=8 blocks=<n> per_flush=<w>` once;
//! - `FLUSHED <n> g=<first gen> k=<count> b=<hex block>,<hex block>,...`: write generation
//!   `first + i` went to block `b[i]` (sector `8 * b[i]`) and holds
//!   `pattern::fill(sector, gen_seed(seed, gen))`; `n` counts the flushes.
//!
//! Generations are assigned at submission and increase; a block never has two writes in
//! flight, so its generations complete in order, and the image may hold any generation at
//! least as new as the last flushed one (newer writes may or may not have landed).

use blk_proto::{RequestType, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, mix64, Rng, SECTOR_SIZE};

use crate::app::check::report::{fail, Why};
use crate::app::driver::blk::{Blk, Done, Request};
use crate::app::driver::dma;

/// Sectors per written block (4 KiB).
pub const BLOCK_SECTORS: u64 = 8;
/// Completed writes per FLUSH.
const PER_FLUSH: usize = 48;
/// Writes in flight.
const QD: usize = 32;
/// Completed-but-not-yet-flushed writes kept (writes stall while this many wait).
const MAX_PENDING: usize = 1024;
/// Tag of the FLUSH request (write tags are slot numbers).
const FLUSH_TAG: u64 = u64::MAX;

/// The pattern seed of write generation `gen`: `pattern::mix64(seed ^ gen)` (the host
/// checker computes the same with the same `pattern.rs`).
pub fn gen_seed(seed: u64, gen: u64) -> u64 {
    mix64(seed ^ gen)
}

#[derive(Clone, Copy, Default)]
struct Slot {
    busy: bool,
    block: u64,
    gen: u64,
    buf: u64,
}

/// `tests=durability`: runs until an error (the host kills the VMM first); returns the
/// guest's exit code then, after printing `TEST durability FAIL <why>`.
pub fn run_mode(blk: &mut Blk, seed: u64) -> u32 {
    let why = match run_inner(blk, seed) {
        Ok(()) => Why::new(format_args!("durability loop ended")),
        Err(w) => w,
    };
    crate::println!("TEST durability FAIL {}", why.as_str());
    1
}

fn run_inner(blk: &mut Blk, seed: u64) -> Result<(), Why> {
    let blocks = blk.capacity() / BLOCK_SECTORS;
    if blocks < 2 * QD as u64 {
        fail!("disk of {} sectors is too small", blk.capacity());
    }
    let bytes = (BLOCK_SECTORS as usize) * SECTOR_SIZE;
    let mut slots = [Slot::default(); QD];
    for s in slots.iter_mut() {
        s.buf =
            dma::alloc(bytes as u64, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
    }
    crate::println!(
        "DURABILITY seed={seed:#x} block_sectors={BLOCK_SECTORS} blocks={blocks} per_flush={PER_FLUSH}"
    );
    let mut rng = Rng::new(mix64(seed ^ 0xd0d0));
    // Completed since the last FLUSH submission: (gen, block), in completion order.
    let mut pending = [(0u64, 0u64); MAX_PENDING];
    let mut npending = 0;
    // Covered by the FLUSH in flight.
    let mut flushing = [(0u64, 0u64); MAX_PENDING];
    let mut nflushing = 0;
    let mut flush_in_flight = false;
    let mut flushes = 0u64;
    let mut next_gen = 1u64;
    let queues = blk.num_queues();
    loop {
        // Keep every free slot busy.
        for i in 0..QD {
            if slots[i].busy || npending + QD >= MAX_PENDING {
                continue;
            }
            let block = loop {
                let b = rng.below(blocks);
                if !slots.iter().any(|s| s.busy && s.block == b) {
                    break b;
                }
            };
            let gen = next_gen;
            next_gen += 1;
            let sector = block * BLOCK_SECTORS;
            // SAFETY: the slot is free: its buffer is not in any request.
            pattern::fill(
                unsafe { dma::bytes(slots[i].buf, bytes) },
                sector,
                gen_seed(seed, gen),
            );
            blk.submit(
                i % queues,
                &Request {
                    kind: RequestType::Out,
                    sector,
                    data: &[(slots[i].buf, bytes as u32)],
                    indirect: false,
                    tag: i as u64,
                },
            )?;
            slots[i] = Slot {
                busy: true,
                block,
                gen,
                ..slots[i]
            };
        }
        if !flush_in_flight && npending >= PER_FLUSH {
            flushing[..npending].copy_from_slice(&pending[..npending]);
            nflushing = npending;
            npending = 0;
            blk.submit(
                0,
                &Request {
                    kind: RequestType::Flush,
                    sector: 0,
                    data: &[],
                    indirect: false,
                    tag: FLUSH_TAG,
                },
            )?;
            flush_in_flight = true;
        }
        for q in 0..queues {
            blk.kick(q);
        }
        let mut err = None;
        let mut flushed = false;
        blk.wait_any(&mut |_, d: Done| {
            if d.status != VIRTIO_BLK_S_OK {
                err = Some((d.tag, d.status));
                return;
            }
            if d.tag == FLUSH_TAG {
                flushed = true;
                return;
            }
            if let Some(s) = slots.get_mut(d.tag as usize) {
                if s.busy && npending < MAX_PENDING {
                    pending[npending] = (s.gen, s.block);
                    npending += 1;
                }
                s.busy = false;
            }
        })?;
        if let Some((tag, status)) = err {
            fail!("request tag {tag:#x} ended with status {status}");
        }
        if flushed {
            flush_in_flight = false;
            flushes += 1;
            print_flushed(flushes, &mut flushing[..nflushing]);
        }
    }
}

/// Prints one `FLUSHED` line; sorts `list` by generation (completion order differs).
fn print_flushed(n: u64, list: &mut [(u64, u64)]) {
    list.sort_unstable_by_key(|e| e.0);
    let first = list.first().map_or(0, |e| e.0);
    // Generations of one flush are consecutive only when nothing else was in flight: list
    // them as runs `g=<first> k=<count> b=...`, one line per run.
    let mut start = 0;
    while start < list.len() {
        let mut end = start + 1;
        while end < list.len() && list[end].0 == list[end - 1].0 + 1 {
            end += 1;
        }
        crate::print!("FLUSHED {n} g={} k={} b=", list[start].0, end - start);
        for (i, (_, block)) in list[start..end].iter().enumerate() {
            if i > 0 {
                crate::print!(",");
            }
            crate::print!("{block:x}");
        }
        crate::println!();
        start = end;
    }
    if list.is_empty() {
        crate::println!("FLUSHED {n} g={first} k=0 b=");
    }
}
