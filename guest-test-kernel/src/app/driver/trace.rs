//! Per-request time stamps for the VMM's tracer (`trace=1` on the command line).
//!
//! For each request the driver submits, the log holds the queue, the head index and three
//! guest TSC values: before the avail ring is written, at the kick (if there was one) and
//! when the used element was seen. The log is preallocated once at start-up and published
//! through a mailbox at the fixed guest physical address [`MAILBOX_ADDR`], which the VMM
//! reads after the guest exits (layout: `vmm/src/trace/guest_log.rs`). Without `trace=1`
//! every hook is one load and a branch.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use guest_test_kernel::OptionsError;

use super::dma;
use super::limits::{MAX_QUEUES, QUEUE_SIZE_LIMIT};
use crate::arch::tsc::rdtsc;

/// Guest physical address of the mailbox (free low memory in our VMM's map).
pub const MAILBOX_ADDR: u64 = 0x5000;
/// `"VBLKTRC1"`, little-endian.
const MAGIC: u64 = u64::from_le_bytes(*b"VBLKTRC1");
/// Bytes per entry: queue u16, head u16, flags u32, submit u64, kick u64, complete u64.
const ENTRY_SIZE: u64 = 32;
/// Most entries: 8 MiB of log, about 2 s of QD1 at 100k IOPS plus the self-tests.
const MAX_ENTRIES: u64 = 1 << 18;
/// The log takes at most this fraction (1/n) of the free memory.
const MEMORY_SHARE: u64 = 4;
/// Head indexes tracked per queue: a head is below the queue size.
const HEADS: usize = QUEUE_SIZE_LIMIT as usize;
const FLAG_KICKED: u32 = 1 << 0;
const FLAG_COMPLETED: u32 = 1 << 1;
const NO_ENTRY: u32 = u32::MAX;

/// Address of entry 0 (0: tracing off).
static LOG: AtomicU64 = AtomicU64::new(0);
static CAPACITY: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
/// Per queue and head: the entry of the request using that head now.
static CURRENT: [[AtomicU32; HEADS]; MAX_QUEUES] =
    [const { [const { AtomicU32::new(NO_ENTRY) }; HEADS] }; MAX_QUEUES];
/// Per queue: the first entry whose kick decision is still to come.
static UNKICKED: [AtomicU64; MAX_QUEUES] = [const { AtomicU64::new(0) }; MAX_QUEUES];

/// Whether the command line asks for tracing.
pub fn requested(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == "trace=1")
}

/// Whether the option parser's `problem` is this module's `trace=` option (not a problem).
pub fn owns(problem: &OptionsError<'_>) -> bool {
    matches!(problem, OptionsError::UnknownKey("trace"))
}

/// Allocates the log if `cmdline` asks for tracing; call once, before any request.
pub fn init(cmdline: &str) {
    if !requested(cmdline) {
        return;
    }
    let entries = MAX_ENTRIES.min(dma::available() / MEMORY_SHARE / ENTRY_SIZE);
    let Some(log) = dma::alloc(entries * ENTRY_SIZE, 64) else {
        crate::println!("trace: no memory for the request log");
        return;
    };
    CAPACITY.store(entries, Relaxed);
    LOG.store(log, Relaxed);
    publish();
    crate::println!("# trace: request log of {entries} entries at {log:#x}");
}

#[inline]
fn enabled() -> bool {
    LOG.load(Relaxed) != 0
}

/// The TSC if tracing, else 0 (read it before writing the avail ring).
#[inline]
pub fn now() -> u64 {
    if enabled() {
        rdtsc()
    } else {
        0
    }
}

fn entry_addr(i: u64) -> u64 {
    LOG.load(Relaxed) + i * ENTRY_SIZE
}

fn write_u64(addr: u64, v: u64) {
    // SAFETY: `addr` lies in the log allocated by `init` (entry index below CAPACITY), which
    // is identity mapped, 8-byte aligned and used by nothing else.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

fn read_u64(addr: u64) -> u64 {
    // SAFETY: as in `write_u64`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Records that `head` of queue `q` was submitted at `submit_tsc` (from [`now`]).
#[inline]
pub fn on_submit(q: usize, head: u16, submit_tsc: u64) {
    if !enabled() {
        return;
    }
    let i = COUNT.load(Relaxed);
    let Some(cur) = CURRENT.get(q).and_then(|c| c.get(usize::from(head))) else {
        return;
    };
    if i >= CAPACITY.load(Relaxed) {
        cur.store(NO_ENTRY, Relaxed);
        return;
    }
    let a = entry_addr(i);
    write_u64(a, q as u64 | u64::from(head) << 16);
    write_u64(a + 8, submit_tsc);
    write_u64(a + 16, 0);
    write_u64(a + 24, 0);
    cur.store(i as u32, Relaxed);
    COUNT.store(i + 1, Relaxed);
}

/// Records the kick decision for queue `q`'s requests submitted since the last one; call
/// just before notifying.
#[inline]
pub fn on_kick(q: usize, kicked: bool) {
    if !enabled() {
        return;
    }
    let Some(first) = UNKICKED.get(q) else {
        return;
    };
    let t = rdtsc();
    let count = COUNT.load(Relaxed);
    if kicked {
        for i in first.load(Relaxed)..count {
            let a = entry_addr(i);
            let word = read_u64(a);
            if word & 0xffff == q as u64 {
                write_u64(a, word | u64::from(FLAG_KICKED) << 32);
                write_u64(a + 16, t);
            }
        }
    }
    first.store(count, Relaxed);
}

/// Records that the driver saw `head` of queue `q` complete.
#[inline]
pub fn on_complete(q: usize, head: u16) {
    if !enabled() {
        return;
    }
    let t = rdtsc();
    let Some(cur) = CURRENT.get(q).and_then(|c| c.get(usize::from(head))) else {
        return;
    };
    let i = cur.swap(NO_ENTRY, Relaxed);
    if i == NO_ENTRY {
        return;
    }
    let a = entry_addr(u64::from(i));
    write_u64(a, read_u64(a) | u64::from(FLAG_COMPLETED) << 32);
    write_u64(a + 24, t);
}

/// Writes the mailbox: magic, log address, entry count, entry size.
pub fn publish() {
    if !enabled() {
        return;
    }
    for (i, v) in [MAGIC, LOG.load(Relaxed), COUNT.load(Relaxed), ENTRY_SIZE]
        .into_iter()
        .enumerate()
    {
        let addr = MAILBOX_ADDR + 8 * i as u64;
        // SAFETY: the mailbox page is identity mapped free low memory that neither the boot
        // data (0x500 GDT, 0x6000 start info, 0x7000 command line) nor the allocator uses.
        unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
    }
}
