//! One engine and the requests in flight on it: the in-flight table every scheduler shares.
//!
//! Each started [`IoJob`] takes a slot; its engine operations carry the slot and the slot's
//! generation as `user_data`. The generation changes every time the slot is given to a new job,
//! so a completion that does not belong to the job now in the slot (a duplicate, or one left
//! over from the slot's previous job) cannot complete that job early: it is counted and dropped.
//! When a job's last operation completes, its status byte is written ([`IoJob::finish`]) and
//! the job is handed back to the caller.

use std::os::unix::io::RawFd;

use backend_raw::{Completion, Engine};
use blk_proto::MAX_DISCARD_SEGMENTS;
use vm_memory::GuestMemoryMmap;

use crate::request::IoJob;
use crate::trace::{QueueTrace, Stage};

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

/// A slot of the table: the job in flight there, and the slot's generation.
#[derive(Debug, Default)]
struct Slot {
    job: Option<Box<IoJob>>,
    generation: u32,
}

/// An engine with its jobs in flight.
pub struct InFlightTable {
    engine: Box<dyn Engine>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    completions: Vec<Completion>,
    live: usize,
    /// Completions whose tag named no job in flight; reported once.
    stale: u64,
}

impl std::fmt::Debug for InFlightTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightTable")
            .field("engine", &self.engine.kind())
            .field("live", &self.live)
            .field("stale", &self.stale)
            .finish()
    }
}

impl InFlightTable {
    /// A table with one slot per operation `engine` can hold.
    pub fn new(engine: Box<dyn Engine>) -> Self {
        let cap = engine.capacity();
        InFlightTable {
            engine,
            slots: (0..cap).map(|_| Slot::default()).collect(),
            free: (0..cap).rev().collect(),
            completions: Vec::with_capacity(cap),
            live: 0,
            stale: 0,
        }
    }

    /// Whether a job of any type (up to [`MAX_DISCARD_SEGMENTS`] operations) fits now.
    pub fn has_room(&self) -> bool {
        self.engine.in_flight() + MAX_DISCARD_SEGMENTS <= self.engine.capacity()
            && !self.free.is_empty()
    }

    /// Jobs started and not handed back yet.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Completions dropped because their tag named no job in flight (an engine bug).
    pub fn stale(&self) -> u64 {
        self.stale
    }

    /// Submits `job`'s operations (stamping `BackendSubmit` into `trace`). Returns the job
    /// when it finished at once: no operation was accepted, so it failed (its status is
    /// written); a refused operation fails the request, it is never lost.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        mut job: Box<IoJob>,
        trace: &QueueTrace,
    ) -> Option<Box<IoJob>> {
        let Some(slot) = self.free.pop() else {
            // Callers check `has_room` first; fail the job rather than lose it.
            job.fail();
            job.finish(mem);
            return Some(job);
        };
        let Some(entry) = self.slots.get_mut(slot) else {
            job.fail();
            job.finish(mem);
            return Some(job);
        };
        entry.generation = entry.generation.wrapping_add(1);
        let user_data = tag(slot, entry.generation);
        trace.stamp(Stage::BackendSubmit, job.head);
        if job.submit_to(self.engine.as_mut(), user_data) == 0 {
            self.free.push(slot);
            job.finish(mem);
            return Some(job);
        }
        entry.job = Some(job);
        self.live += 1;
        None
    }

    /// Reaps finished operations; each job whose last operation finished is shown to
    /// `completed` (which stamps `BackendComplete`), gets its status written and goes to
    /// `done`. Returns how many operations were reaped.
    pub fn reap(
        &mut self,
        mem: &GuestMemoryMmap,
        completed: impl Fn(&IoJob),
        mut done: impl FnMut(Box<IoJob>),
    ) -> usize {
        self.completions.clear();
        let n = self.engine.reap(&mut self.completions);
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
            if !entry.job.as_mut().is_some_and(|j| j.complete_op(c.result)) {
                continue;
            }
            let Some(mut job) = entry.job.take() else {
                continue;
            };
            self.free.push(slot);
            self.live -= 1;
            completed(&job);
            job.finish(mem);
            done(job);
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

    /// Pushes the batch of submissions to the kernel. A failure completes nothing: the
    /// submissions stay queued and the next call retries them.
    pub fn flush(&mut self) {
        let _ = self.engine.flush_submissions();
    }

    /// Blocks until a completion can be reaped (or nothing is in flight).
    pub fn wait(&mut self) {
        // An error here means io_uring_enter failed; the caller reaps what there is and comes
        // back, so a transient error costs a retry, not a hang.
        let _ = self.engine.wait();
    }

    /// Operations submitted and not reaped.
    pub fn ops_in_flight(&self) -> usize {
        self.engine.in_flight()
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
    use vm_memory::GuestAddress;

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
                out.push(Completion {
                    user_data,
                    result: Ok(0),
                });
                return 1;
            }
            let Some((user_data, offset)) = self.pending.pop_front() else {
                return 0;
            };
            self.done.lock().unwrap().push(offset as u16);
            out.push(Completion {
                user_data,
                result: Ok(0),
            });
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
        let mut table = InFlightTable::new(Box::new(DuplicatingEngine {
            pending: Default::default(),
            duplicate: None,
            done: done.clone(),
        }));
        let trace = QueueTrace::disabled();
        let mut returned = Vec::new();
        let mut reap = |table: &mut InFlightTable, step: &str| {
            table.reap(
                &mem,
                |_| {},
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
}
