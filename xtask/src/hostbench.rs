//! The project's own bare-metal runner: the guest's benchmark, done on the host over
//! `backend-raw` with the io_uring engine, so "bare metal" uses the same engine as the VMM.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::path::Path;
use std::time::{Duration, Instant};

use backend_raw::{Completion, Disk, DiskOptions, EngineKind, IoOp};

use crate::stats::Summary;

/// A benchmark workload, as the guest's `bench=` options spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// `randread`, `randwrite`, `seqread` or `seqwrite`.
    pub pattern: &'static str,
    /// Block size in bytes.
    pub bs: u32,
    /// Requests in flight.
    pub qd: u32,
}

struct AlignedBuffers {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuffers {
    fn new(size: usize) -> Self {
        let layout = Layout::from_size_align(size.max(4096), 4096).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory for benchmark buffers");
        AlignedBuffers { ptr, layout }
    }
}

impl Drop for AlignedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; no request is in flight any more.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}

/// A small xorshift generator: reproducible offsets without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `w` on `path` for `secs` seconds and returns throughput and latency.
pub fn run(path: &Path, direct: bool, w: Workload, secs: f64) -> Result<Summary, String> {
    let write = w.pattern.ends_with("write");
    let random = w.pattern.starts_with("rand");
    let disk = Disk::open(
        path,
        DiskOptions {
            readonly: !write,
            direct,
        },
    )
    .map_err(|e| e.to_string())?;
    let blocks = disk.capacity() / u64::from(w.bs);
    if blocks == 0 {
        return Err(format!(
            "{} is smaller than one {}-byte block",
            path.display(),
            w.bs
        ));
    }
    let mut engine = disk
        .engine(EngineKind::IoUring, w.qd as usize)
        .map_err(|e| e.to_string())?;
    let bufs = AlignedBuffers::new(w.bs as usize * w.qd as usize);
    let mut started = vec![Instant::now(); w.qd as usize];
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut next_seq = 0u64;
    let mut done: Vec<Completion> = Vec::with_capacity(w.qd as usize);
    let mut submit = |slot: usize,
                      engine: &mut Box<dyn backend_raw::Engine>,
                      started: &mut [Instant]|
     -> Result<(), String> {
        let block = if random {
            rng.next() % blocks
        } else {
            let b = next_seq % blocks;
            next_seq += 1;
            b
        };
        let offset = block * u64::from(w.bs);
        let iov = libc::iovec {
            // SAFETY: slot < qd, so the slot's bytes lie inside the allocation.
            iov_base: unsafe { bufs.ptr.add(slot * w.bs as usize) }.cast(),
            iov_len: w.bs as usize,
        };
        let op = if write {
            IoOp::Write { offset }
        } else {
            IoOp::Read { offset }
        };
        started[slot] = Instant::now();
        // SAFETY: the slot's buffer is owned by this function, outlives the engine's use
        // (we reap everything before returning) and only one request uses a slot at a time.
        unsafe { engine.submit(op, &[iov], slot as u64) }.map_err(|e| e.to_string())
    };
    for slot in 0..w.qd as usize {
        submit(slot, &mut engine, &mut started)?;
    }
    engine.flush_submissions().map_err(|e| e.to_string())?;
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs_f64(secs);
    let mut bytes = 0u64;
    loop {
        done.clear();
        if engine.reap(&mut done) == 0 {
            engine.wait().map_err(|e| e.to_string())?;
            continue;
        }
        let now = Instant::now();
        let stop = now >= deadline;
        for c in &done {
            let slot = c.user_data as usize;
            c.result
                .map_err(|errno| format!("I/O error {errno} on {}", path.display()))?;
            latencies_ns.push((now - started[slot]).as_nanos() as u64);
            bytes += u64::from(w.bs);
            if !stop {
                submit(slot, &mut engine, &mut started)?;
            }
        }
        if stop {
            while engine.in_flight() > 0 {
                engine.wait().map_err(|e| e.to_string())?;
                done.clear();
                engine.reap(&mut done);
            }
            break;
        }
        engine.flush_submissions().map_err(|e| e.to_string())?;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    Ok(Summary::from_latencies(latencies_ns, bytes, elapsed))
}
