//! One engine and the requests in flight on it: the in-flight table every scheduler shares.
//!
//! Each started [`IoJob`] takes a slot; its engine operations carry the slot and the slot's
//! generation as `user_data`. The generation changes every time the slot is given to a new job,
//! so a completion that does not belong to the job now in the slot (a duplicate, or one left
//! over from the slot's previous job) cannot complete that job early: it is counted and dropped.
//! When a job's last operation completes, its status byte is written ([`IoJob::finish`]) and
//! the job is handed back to the caller.
//!
//! Request merging: with merging on, started reads and writes wait for the batch's
//! [`InFlightTable::flush`], which sends adjacent ones (reads after reads, writes after writes,
//! each starting where the previous ends) to the engine as one operation over all their
//! buffers, up to [`MAX_MERGE_BYTES`] and [`MAX_IOVECS`] buffers. The jobs of a merged
//! operation share its slot. If it completes in full, each job completes with its own status;
//! if it fails or comes back short, each job is submitted again on its own, so an error is
//! reported for the requests it belongs to and never for a neighbour.

use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::thread::ThreadId;

use backend_raw::{Completion, Engine, IoOp, WireTimes, MAX_IOVECS};
use blk_proto::MAX_DISCARD_SEGMENTS;
use vm_memory::GuestMemoryMmap;

use crate::metrics::DeviceMetrics;
use crate::request::IoJob;
use crate::trace::{QueueTrace, Stage};

/// The largest I/O merging builds.
pub const MAX_MERGE_BYTES: u32 = 1 << 20;

/// Engine depth needed for `queue_size` requests in flight at once: every request is one
/// operation except discard / write-zeroes, which may have up to [`MAX_DISCARD_SEGMENTS`].
pub fn engine_depth(queue_size: u16) -> usize {
    usize::from(queue_size) + MAX_DISCARD_SEGMENTS
}

/// An engine tag: the slot in the low 32 bits, the slot's generation in the high 32.
fn tag(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (slot as u64 & 0xffff_ffff)
}

/// The `(slot, generation)` of an engine tag.
fn untag(user_data: u64) -> (usize, u32) {
    ((user_data & 0xffff_ffff) as usize, (user_data >> 32) as u32)
}

/// A slot of the table: the job in flight there (with the jobs merged into its operation),
/// and the slot's generation.
#[derive(Debug, Default)]
struct Slot {
    job: Option<Box<IoJob>>,
    /// Jobs whose data rides in `job`'s operation, in disk order after it.
    #[allow(clippy::vec_box)]
    merged: Vec<Box<IoJob>>,
    /// Bytes the merged operation moves.
    merged_bytes: u32,
    generation: u32,
}

/// An engine with its jobs in flight.
pub struct InFlightTable {
    engine: Box<dyn Engine>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    completions: Vec<Completion>,
    /// Jobs started and not handed back (in slots, merged, pending or refused).
    live: usize,
    /// Started jobs waiting for `flush` (merging on).
    #[allow(clippy::vec_box)]
    pending: Vec<Box<IoJob>>,
    /// A run of adjacent jobs being merged (kept to reuse its allocation).
    #[allow(clippy::vec_box)]
    run: Vec<Box<IoJob>>,
    /// Jobs the engine refused at `flush`, failed; their status is written at the next reap.
    #[allow(clippy::vec_box)]
    refused: Vec<Box<IoJob>>,
    merge: bool,
    /// The buffers of a merged operation (the engine copies the array at submission).
    scratch: Vec<libc::iovec>,
    /// Completions whose tag named no job in flight; reported once.
    stale: u64,
    /// Merged operations that failed and were split back into their requests.
    split: u64,
    /// Where to record the thread that submits this table's I/O, and the last one recorded.
    io_threads: Option<(Arc<DeviceMetrics>, Option<ThreadId>)>,
    /// Jobs were started since the last flush (the thread is looked at once per batch).
    started: bool,
}

// SAFETY: `scratch` only holds addresses of guest RAM, which every thread of the process may
// access, and only between filling it and the engine copying it, within one call; the engine
// and the jobs are `Send`.
unsafe impl Send for InFlightTable {}

impl std::fmt::Debug for InFlightTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightTable")
            .field("engine", &self.engine.kind())
            .field("live", &self.live)
            .field("merge", &self.merge)
            .field("stale", &self.stale)
            .field("split", &self.split)
            .finish()
    }
}

/// Whether `job` continues the run that ends with `last` (same direction, next byte), and
/// the run stays within the merge limits with it.
fn continues(last: &IoJob, job: &IoJob, run_bytes: u32, run_iovecs: usize) -> bool {
    let (Some((w1, off1, len1)), Some((w2, off2, len2))) = (last.transfer(), job.transfer()) else {
        return false;
    };
    w1 == w2
        && off1.checked_add(u64::from(len1)) == Some(off2)
        && run_bytes.saturating_add(len2) <= MAX_MERGE_BYTES
        && run_iovecs + job.iovecs().len() <= MAX_IOVECS
}

impl InFlightTable {
    /// A table with one slot per operation `engine` can hold; `merge` turns request merging on.
    pub fn new(engine: Box<dyn Engine>, merge: bool) -> Self {
        let cap = engine.capacity();
        let with = |n: usize| if merge { n } else { 0 };
        InFlightTable {
            engine,
            slots: (0..cap)
                .map(|_| Slot {
                    merged: Vec::with_capacity(with(8)),
                    ..Slot::default()
                })
                .collect(),
            free: (0..cap).rev().collect(),
            completions: Vec::with_capacity(cap),
            live: 0,
            pending: Vec::with_capacity(with(cap)),
            run: Vec::with_capacity(with(cap)),
            refused: Vec::with_capacity(with(cap)),
            merge,
            scratch: Vec::with_capacity(with(MAX_IOVECS)),
            stale: 0,
            split: 0,
            io_threads: None,
            started: false,
        }
    }

    /// Records in `metrics` which threads submit this table's I/O
    /// ([`DeviceMetrics::record_io_thread`]).
    pub fn recording_threads_in(mut self, metrics: Arc<DeviceMetrics>) -> Self {
        self.io_threads = Some((metrics, None));
        self
    }

    /// Records the calling thread if jobs were started since the last flush and it is not the
    /// one recorded last: once per batch, never on a turn that found nothing.
    fn note_thread(&mut self) {
        if !std::mem::take(&mut self.started) {
            return;
        }
        let Some((metrics, last)) = &mut self.io_threads else {
            return;
        };
        let me = std::thread::current().id();
        if *last != Some(me) {
            *last = Some(me);
            metrics.record_io_thread();
        }
    }

    /// Whether a job of any type (up to [`MAX_DISCARD_SEGMENTS`] operations) fits now.
    pub fn has_room(&self) -> bool {
        self.engine.in_flight() + self.pending.len() + MAX_DISCARD_SEGMENTS
            <= self.engine.capacity()
            && self.live < self.slots.len()
    }

    /// Jobs started and not handed back yet.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Completions dropped because their tag named no job in flight (an engine bug).
    pub fn stale(&self) -> u64 {
        self.stale
    }

    /// Merged operations that failed and were retried request by request.
    pub fn split(&self) -> u64 {
        self.split
    }

    /// Starts `job` (stamping `BackendSubmit` into `trace`): submits its operations now, or,
    /// with merging on and a read or write, at the batch's [`flush`](Self::flush). Returns the
    /// job when it finished at once: no operation was accepted, so it failed (its status is
    /// written); a refused operation fails the request, it is never lost.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        job: Box<IoJob>,
        trace: &QueueTrace,
    ) -> Option<Box<IoJob>> {
        trace.stamp(Stage::BackendSubmit, job.head);
        self.started = true;
        self.live += 1;
        if self.merge && job.transfer().is_some() {
            self.pending.push(job);
            return None;
        }
        match self.submit_one(job) {
            Ok(()) => None,
            Err(mut job) => {
                self.live -= 1;
                job.finish(mem);
                Some(job)
            }
        }
    }

    /// Submits `job`'s own operations in a slot of its own. Gives the job back (failed, its
    /// status not written yet) when the engine took none of them.
    fn submit_one(&mut self, mut job: Box<IoJob>) -> Result<(), Box<IoJob>> {
        let Some(slot) = self.free.pop() else {
            // Callers check `has_room` first; fail the job rather than lose it.
            job.fail();
            return Err(job);
        };
        let Some(entry) = self.slots.get_mut(slot) else {
            job.fail();
            return Err(job);
        };
        entry.generation = entry.generation.wrapping_add(1);
        if job.submit_to(self.engine.as_mut(), tag(slot, entry.generation)) == 0 {
            self.free.push(slot);
            return Err(job);
        }
        entry.job = Some(job);
        entry.merged_bytes = 0;
        Ok(())
    }

    /// Submits `job` alone; a job the engine refuses waits, failed, for the next reap.
    fn submit_or_refuse(&mut self, job: Box<IoJob>) {
        if let Err(job) = self.submit_one(job) {
            self.refused.push(job);
        }
    }

    /// Submits the jobs of `self.run` (each continuing the previous one on the disk) as one
    /// operation, or a lone job by itself.
    fn submit_run(&mut self) {
        if self.run.len() == 1 {
            if let Some(job) = self.run.pop() {
                self.submit_or_refuse(job);
            }
            return;
        }
        let first = self.run.first().and_then(|j| j.transfer());
        let (Some((write, offset, _)), Some(slot)) = (first, self.free.pop()) else {
            // No slot for a merged operation: each job on its own (each was given room).
            while let Some(job) = self.run.pop() {
                self.submit_or_refuse(job);
            }
            return;
        };
        let op = if write {
            IoOp::Write { offset }
        } else {
            IoOp::Read { offset }
        };
        self.scratch.clear();
        let mut bytes = 0u32;
        for job in &self.run {
            self.scratch.extend_from_slice(job.iovecs());
            bytes += job.transfer().map_or(0, |t| t.2);
        }
        let Some(entry) = self.slots.get_mut(slot) else {
            // Cannot happen (free slots are indices of `slots`); never strand the run.
            while let Some(job) = self.run.pop() {
                self.submit_or_refuse(job);
            }
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        let user_data = tag(slot, entry.generation);
        // SAFETY: the iovecs point into guest RAM (bounds-checked when each job was parsed),
        // which stays mapped for the VM's life, past these requests' completion; the engine
        // copies the iovec array itself before `submit` returns. The guest owns those bytes and
        // may touch them meanwhile, which only affects the data of its own requests.
        let submitted = unsafe { self.engine.submit(op, &self.scratch, user_data) };
        if submitted.is_err() {
            self.free.push(slot);
            while let Some(job) = self.run.pop() {
                self.submit_or_refuse(job);
            }
            return;
        }
        let mut jobs = self.run.drain(..);
        if let Some(mut leader) = jobs.next() {
            leader.mark_merged();
            entry.merged.clear();
            entry.merged.extend(jobs.map(|mut j| {
                j.mark_merged();
                j
            }));
            entry.merged_bytes = bytes;
            entry.job = Some(leader);
        }
    }

    /// Pushes the batch to the kernel; with merging on, first builds the operations of the
    /// reads and writes started since the last flush. A failure to push completes nothing:
    /// the submissions stay queued and the next call retries them.
    pub fn flush(&mut self) {
        self.note_thread();
        if !self.pending.is_empty() {
            let mut pending = std::mem::take(&mut self.pending);
            let (mut bytes, mut iovecs) = (0u32, 0usize);
            for job in pending.drain(..) {
                let joins = self
                    .run
                    .last()
                    .is_some_and(|last| continues(last, &job, bytes, iovecs));
                if !joins && !self.run.is_empty() {
                    self.submit_run();
                    (bytes, iovecs) = (0, 0);
                }
                bytes += job.transfer().map_or(0, |t| t.2);
                iovecs += job.iovecs().len();
                self.run.push(job);
            }
            if !self.run.is_empty() {
                self.submit_run();
            }
            self.pending = pending;
        }
        let _ = self.engine.flush_submissions();
    }

    /// Reaps finished operations; each job whose last operation finished is shown to
    /// `completed` (which stamps `BackendComplete`), gets its status written and goes to
    /// `done`. A merged operation that failed is split: its jobs go to the engine again one by
    /// one. Returns how many operations were reaped.
    pub fn reap(
        &mut self,
        mem: &GuestMemoryMmap,
        completed: impl Fn(&IoJob, Option<WireTimes>),
        mut done: impl FnMut(Box<IoJob>),
    ) -> usize {
        while let Some(mut job) = self.refused.pop() {
            self.live -= 1;
            completed(&job, None);
            job.finish(mem);
            done(job);
        }
        self.completions.clear();
        let n = self.engine.reap(&mut self.completions);
        let mut resubmitted = false;
        for i in 0..self.completions.len() {
            let Some(c) = self.completions.get(i).copied() else {
                break;
            };
            let (slot, generation) = untag(c.user_data);
            let Some(entry) = self
                .slots
                .get_mut(slot)
                .filter(|e| e.job.is_some() && e.generation == generation)
            else {
                self.on_stale(c.user_data);
                continue;
            };
            if entry.merged.is_empty() {
                if !entry.job.as_mut().is_some_and(|j| j.complete_op(c.result)) {
                    continue;
                }
                let Some(mut job) = entry.job.take() else {
                    continue;
                };
                self.free.push(slot);
                self.live -= 1;
                completed(&job, c.wire);
                job.finish(mem);
                done(job);
                continue;
            }
            let whole = c.result == Ok(entry.merged_bytes);
            let Some(leader) = entry.job.take() else {
                continue;
            };
            self.run.push(leader);
            self.run.append(&mut entry.merged);
            self.free.push(slot);
            if whole {
                while let Some(mut job) = self.run.pop() {
                    let bytes = job.transfer().map_or(0, |t| t.2);
                    job.complete_op(Ok(bytes));
                    self.live -= 1;
                    completed(&job, c.wire);
                    job.finish(mem);
                    done(job);
                }
            } else {
                self.split += 1;
                resubmitted = true;
                while let Some(job) = self.run.pop() {
                    self.submit_or_refuse(job);
                }
            }
        }
        if resubmitted {
            let _ = self.engine.flush_submissions();
        }
        n
    }

    /// A completion for no job in flight: dropped (completing whatever job holds the slot now
    /// would return it to the guest before its I/O is done).
    fn on_stale(&mut self, user_data: u64) {
        self.stale += 1;
        if self.stale == 1 {
            eprintln!(
                "virtio-blk: dropped a completion for no request in flight (tag {user_data:#x})"
            );
        }
    }

    /// Blocks until a completion can be reaped (or nothing is in flight).
    pub fn wait(&mut self) {
        if !self.pending.is_empty() {
            self.flush();
        }
        if !self.refused.is_empty() {
            return;
        }
        // An error here means io_uring_enter failed; the caller reaps what there is and comes
        // back, so a transient error costs a retry, not a hang.
        let _ = self.engine.wait();
    }

    /// Whether waiting for the engine may spin ([`Engine::spin_for_completions`]).
    pub fn spin_for_completions(&self) -> bool {
        self.engine.spin_for_completions()
    }

    /// The engine's completion eventfd, for epoll.
    pub fn completion_fd(&self) -> Option<RawFd> {
        self.engine.completion_fd()
    }

    /// Clears the completion eventfd's readiness (after epoll reported it).
    pub fn drain_completion_fd(&self) {
        self.engine.drain_completion_fd();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_raw::{EngineKind, IoOp};
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    const STATUS_BASE: u64 = 0x1000;

    /// An engine that completes in submission order, one per reap, and after each
    /// completion hands the same completion out once more on the next reap (a duplicate);
    /// it records (by disk offset, set to the chain head) which requests really finished.
    struct DuplicatingEngine {
        pending: std::collections::VecDeque<(u64, u64)>,
        duplicate: Option<u64>,
        done: Arc<Mutex<Vec<u16>>>,
    }

    impl Engine for DuplicatingEngine {
        unsafe fn submit(
            &mut self,
            op: IoOp,
            _iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backend_raw::Error> {
            let IoOp::Read { offset } = op else {
                unreachable!("tests submit reads")
            };
            self.pending.push_back((user_data, offset));
            Ok(())
        }
        fn flush_submissions(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
            if let Some(user_data) = self.duplicate.take() {
                out.push(Completion::new(user_data, Ok(0)));
                return 1;
            }
            let Some((user_data, offset)) = self.pending.pop_front() else {
                return 0;
            };
            self.done.lock().unwrap().push(offset as u16);
            out.push(Completion::new(user_data, Ok(0)));
            self.duplicate = Some(user_data);
            1
        }
        fn wait(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn completion_fd(&self) -> Option<RawFd> {
            None
        }
        fn in_flight(&self) -> usize {
            self.pending.len()
        }
        fn capacity(&self) -> usize {
            4 + MAX_DISCARD_SEGMENTS
        }
        fn kind(&self) -> EngineKind {
            EngineKind::Sync
        }
    }

    /// A completion handed out twice, after its slot went to the next job, must not complete
    /// that next job: a job comes back once, and only after its own I/O.
    #[test]
    fn a_duplicate_completion_does_not_complete_the_next_job_of_its_slot() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let done = Arc::new(Mutex::new(Vec::new()));
        let mut table = InFlightTable::new(
            Box::new(DuplicatingEngine {
                pending: Default::default(),
                duplicate: None,
                done: done.clone(),
            }),
            false,
        );
        let trace = QueueTrace::disabled();
        let mut returned = Vec::new();
        let mut reap = |table: &mut InFlightTable, step: &str| {
            table.reap(
                &mem,
                |_, _| {},
                |job| {
                    let finished = done.lock().unwrap().clone();
                    assert!(
                        finished.contains(&job.head),
                        "{step}: head {} came back before its I/O finished",
                        job.head
                    );
                    returned.push(job.head);
                },
            );
        };
        let size = 64u16;
        for h in 0..size {
            let job = IoJob::test_read(0, h, u64::from(h), STATUS_BASE + u64::from(h));
            while !table.has_room() {
                reap(&mut table, &format!("room for {h}"));
            }
            assert!(table.start(&mem, job, &trace).is_none());
            // Alternately a real completion and the duplicate of the previous one, which then
            // names the slot this job was just given.
            reap(&mut table, &format!("start {h}"));
        }
        for i in 0..2 * usize::from(size) {
            reap(&mut table, &format!("final reap {i}"));
        }
        returned.sort_unstable();
        assert_eq!(
            returned,
            (0..size).collect::<Vec<_>>(),
            "each job back once"
        );
        assert!(table.stale() > 0, "the engine did hand out duplicates");
    }

    /// What a [`MemDisk`] holds and saw.
    #[derive(Default)]
    struct MemState {
        data: Vec<u8>,
        /// (offset, bytes, iovecs) of every read or write submitted.
        log: Vec<(u64, u64, usize)>,
    }

    /// A disk in memory: performs each operation at submission (like the sync engine),
    /// failing those that touch `bad`, and records what it was given.
    struct MemDisk {
        state: Arc<Mutex<MemState>>,
        bad: std::ops::Range<u64>,
        done: std::collections::VecDeque<Completion>,
    }

    impl Engine for MemDisk {
        unsafe fn submit(
            &mut self,
            op: IoOp,
            iovecs: &[libc::iovec],
            user_data: u64,
        ) -> Result<(), backend_raw::Error> {
            let (write, offset) = match op {
                IoOp::Read { offset } => (false, offset),
                IoOp::Write { offset } => (true, offset),
                _ => unreachable!("tests submit reads and writes"),
            };
            let len: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
            let mut st = self.state.lock().unwrap();
            st.log.push((offset, len, iovecs.len()));
            let end = offset + len;
            let result = if offset < self.bad.end && self.bad.start < end {
                Err(libc::EIO)
            } else {
                let mut at = offset as usize;
                for v in iovecs {
                    // SAFETY: the iovecs point into the test's guest memory, alive and not
                    // otherwise accessed during the call.
                    let buf = unsafe {
                        std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len)
                    };
                    let disk = &mut st.data[at..at + v.iov_len];
                    if write {
                        disk.copy_from_slice(buf);
                    } else {
                        buf.copy_from_slice(disk);
                    }
                    at += v.iov_len;
                }
                Ok(len as u32)
            };
            self.done.push_back(Completion::new(user_data, result));
            Ok(())
        }
        fn flush_submissions(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
            let n = self.done.len();
            out.extend(self.done.drain(..));
            n
        }
        fn wait(&mut self) -> Result<(), backend_raw::Error> {
            Ok(())
        }
        fn completion_fd(&self) -> Option<RawFd> {
            None
        }
        fn in_flight(&self) -> usize {
            self.done.len()
        }
        fn capacity(&self) -> usize {
            64 + MAX_DISCARD_SEGMENTS
        }
        fn kind(&self) -> EngineKind {
            EngineKind::Sync
        }
    }

    const SECTORS: u64 = 256;

    /// One batch's outcome: (head, status, used length) per request, the disk afterwards,
    /// the engine's log, the guest memory.
    type Outcome = (
        Vec<(u16, u8, u32)>,
        Vec<u8>,
        Vec<(u64, u64, usize)>,
        GuestMemoryMmap,
    );

    /// Runs `reqs` (write?, first sector, sectors) as one batch through a table over a disk
    /// whose sectors `bad` fail.
    fn batch(reqs: &[(bool, u64, u64)], bad: std::ops::Range<u64>, merge: bool) -> Outcome {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x80_0000)]).unwrap();
        let state = Arc::new(Mutex::new(MemState {
            data: (0..SECTORS * 512).map(|i| (i / 512) as u8).collect(),
            log: Vec::new(),
        }));
        let engine = MemDisk {
            state: state.clone(),
            bad: bad.start * 512..bad.end * 512,
            done: Default::default(),
        };
        let mut table = InFlightTable::new(Box::new(engine), merge);
        let trace = QueueTrace::disabled();
        for (i, &(write, sector, sectors)) in reqs.iter().enumerate() {
            let len = (sectors * 512) as u32;
            mem.write_slice(&vec![0x80 | i as u8; len as usize], GuestAddress(buf_of(i)))
                .unwrap();
            let job = IoJob::test_transfer(
                &mem,
                i as u16,
                write,
                sector * 512,
                (buf_of(i), len),
                STATUS_BASE + i as u64,
            );
            assert!(table.start(&mem, job, &trace).is_none());
        }
        table.flush();
        let mut used = Vec::new();
        while table.live() > 0 {
            table.reap(
                &mem,
                |_, _| {},
                |job| {
                    let mut st = [0u8];
                    mem.read_slice(&mut st, GuestAddress(STATUS_BASE + u64::from(job.head)))
                        .unwrap();
                    used.push((job.head, st[0], job.used().len));
                },
            );
        }
        used.sort_unstable();
        let st = state.lock().unwrap();
        (used, st.data.clone(), st.log.clone(), mem)
    }

    fn buf_of(i: usize) -> u64 {
        0x10_0000 + i as u64 * 0x1_0000
    }

    #[test]
    fn adjacent_reads_go_to_the_engine_as_one_and_complete_each() {
        let reqs = [
            (false, 10, 2),
            (false, 12, 1),
            (false, 13, 4),
            (false, 40, 1),
        ];
        let (used, _, log, mem) = batch(&reqs, 0..0, true);
        assert_eq!(log, vec![(10 * 512, 7 * 512, 3), (40 * 512, 512, 1)]);
        assert_eq!(
            used,
            vec![(0, 0, 1025), (1, 0, 513), (2, 0, 2049), (3, 0, 513)]
        );
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(buf_of(2) + 3 * 512))
            .unwrap();
        assert_eq!(
            got,
            vec![16u8; 512],
            "request 2's last sector is disk sector 16"
        );
        let (_, _, log, _) = batch(&reqs, 0..0, false);
        assert_eq!(log.len(), 4, "merging off: one operation per request");
    }

    #[test]
    fn a_failed_merged_write_is_retried_per_request_and_fails_only_its_own() {
        let reqs = [(true, 20, 2), (true, 22, 2), (true, 24, 2)];
        let (used, disk, log, _) = batch(&reqs, 23..24, true);
        assert_eq!(log.first(), Some(&(20 * 512, 6 * 512, 3)), "merged first");
        assert_eq!(log.len(), 4, "then each request alone");
        assert_eq!(
            used,
            vec![(0, 0, 1), (1, 1, 1), (2, 0, 1)],
            "IOERR only for head 1"
        );
        assert!(disk[20 * 512..22 * 512].iter().all(|&b| b == 0x80));
        assert!(disk[24 * 512..26 * 512].iter().all(|&b| b == 0x82));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Against a model disk: whatever the batch and the failing range, merging on gives the
        /// same statuses, used lengths, guest data and disk as merging off, and a request
        /// fails exactly when its own range touches the failing one. The requests of a batch do
        /// not overlap: concurrent overlapping requests have no defined order (a failed merged
        /// write is retried after later requests of its batch), so no result to compare.
        #[test]
        fn merging_changes_nothing_but_the_number_of_operations(
            reqs in proptest::collection::vec((proptest::bool::ANY, 0u64..4, 1u64..5), 1..24),
            seq in proptest::bool::ANY,
            bad in 0u64..200,
        ) {
            // Each request starts a gap of 0-3 sectors after the previous one ends (0: adjacent);
            // half the cases are one sequential stream of reads, so that long runs form.
            let mut next = 0;
            let reqs: Vec<(bool, u64, u64)> = reqs
                .into_iter()
                .map(|(w, gap, n)| {
                    let s = next + if seq { 0 } else { gap };
                    next = s + n;
                    (w && !seq, s, n)
                })
                .collect();
            let bad = bad..bad + 1;
            let (used, disk, log, mem) = batch(&reqs, bad.clone(), true);
            let (used2, disk2, log2, mem2) = batch(&reqs, bad.clone(), false);
            proptest::prop_assert_eq!(&used, &used2);
            proptest::prop_assert_eq!(disk, disk2);
            proptest::prop_assert!(log.len() <= log2.len() + reqs.len());
            for (i, &(_, s, n)) in reqs.iter().enumerate() {
                let failed = s < bad.end && bad.start < s + n;
                proptest::prop_assert_eq!(used[i].1 != 0, failed, "request {}", i);
                let (mut a, mut b) = (vec![0u8; (n * 512) as usize], vec![0u8; (n * 512) as usize]);
                mem.read_slice(&mut a, GuestAddress(buf_of(i))).unwrap();
                mem2.read_slice(&mut b, GuestAddress(buf_of(i))).unwrap();
                proptest::prop_assert_eq!(a, b);
            }
            if seq && reqs.len() > 1 && !(0..next).any(|s| bad.contains(&s)) {
                proptest::prop_assert!(log.len() < reqs.len(), "a sequential batch merged");
            }
        }
    }
}
