//! Executing requests (VIRTIO 1.x, 5.2.6 "Device Operation"): a chain parsed by
//! `blk-proto` becomes engine operations over host iovecs; their completion writes the
//! status byte (last, after the data) and yields the used element.
//!
//! A request that fails validation is answered with the status `blk-proto` chose (IOERR or
//! UNSUPP) when its chain has a usable status byte, and returned with used length 0 when it
//! has none.

use backend_raw::{Engine, IoOp};
use blk_proto::{
    encode_id, parse_request, DeviceLimits, Request, RequestType, Status, MAX_DISCARD_SEGMENTS,
    SECTOR_SIZE, VIRTIO_BLK_ID_BYTES,
};
use virtqueue_core::{DescriptorChain, GuestMemory};
use vm_memory::GuestMemoryMmap;

use std::sync::Arc;

use crate::guest_iovec::IovecList;
use crate::metrics::DeviceMetrics;
use crate::throttle::Charge;

/// A chain to return through the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub head: u16,
    /// Bytes the device wrote into the chain's device-writable buffers, status byte included.
    pub len: u32,
    /// Data bytes the request transferred (0 unless a read or write succeeded).
    pub bytes: u32,
    /// How the request ended, for the metrics.
    pub outcome: Outcome,
    /// Why a request failed in the backend, for the device's failure log.
    pub failure: Option<Failure>,
}

/// The backend error that failed a request: its (first failed) operation and the errno
/// (`EIO` for a short transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The operation that failed.
    pub op: IoOp,
    /// The error number.
    pub errno: i32,
}

impl Failure {
    /// The failure of `op` with completion `result` (expected `Ok(expect)`), if it failed.
    fn of(op: IoOp, result: Result<u32, i32>, expect: u32) -> Option<Failure> {
        match result {
            Ok(n) if n == expect => None,
            Ok(_) => Some(Failure {
                op,
                errno: libc::EIO,
            }),
            Err(errno) => Some(Failure { op, errno }),
        }
    }
}

impl std::fmt::Display for Failure {
    /// `read at offset <bytes>` (the offset in bytes from the start of the disk).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, offset) = match self.op {
            IoOp::Read { offset } => ("read", offset),
            IoOp::Write { offset } => ("write", offset),
            IoOp::Flush => ("flush", 0),
            IoOp::Discard { offset, .. } => ("discard", offset),
            IoOp::WriteZeroes { offset, .. } => ("write-zeroes", offset),
        };
        write!(f, "{name} at offset {offset}")
    }
}

impl Used {
    /// A chain returned without a usable request in it (counted as an error, not a request).
    pub fn invalid(head: u16, len: u32) -> Self {
        Used {
            head,
            len,
            bytes: 0,
            outcome: Outcome::Invalid,
            failure: None,
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Status OK.
    Ok,
    /// A parsed request whose status is not OK.
    Failed,
    /// The chain held no request that could be parsed (never counted as a request).
    Invalid,
}

/// A parsed request with its engine operations and host iovecs, ready to run on any thread.
///
/// Allocated once per ring entry when a queue starts (its iovec list keeps its capacity) and
/// reused for every request: the box moves from the queue's free list to whoever runs it (the
/// serving thread's [`InFlightTable`](crate::inflight::InFlightTable), or a pool worker's, over
/// a channel) and back, so the hot path allocates nothing.
#[derive(Debug)]
pub struct IoJob {
    /// Which queue the job belongs to (its route back).
    pub queue: u16,
    /// Head descriptor index of the chain.
    pub head: u16,
    status_addr: u64,
    ok_len: u32,
    expect: u32,
    ops: [IoOp; MAX_DISCARD_SEGMENTS],
    n_ops: usize,
    iovecs: IovecList,
    /// Operations submitted and not completed (pool workers).
    ops_left: u16,
    failed: bool,
    /// The used length, once the job finished ([`IoJob::finish`]).
    pub used_len: u32,
    /// How the job ended, once finished.
    pub outcome: Outcome,
    /// Why the job failed in the backend, if it did.
    pub failure: Option<Failure>,
}

impl Default for IoJob {
    fn default() -> Self {
        IoJob {
            queue: 0,
            head: 0,
            status_addr: 0,
            ok_len: 0,
            expect: 0,
            ops: [IoOp::Flush; MAX_DISCARD_SEGMENTS],
            n_ops: 0,
            iovecs: IovecList::new(),
            ops_left: 0,
            failed: false,
            used_len: 0,
            outcome: Outcome::Failed,
            failure: None,
        }
    }
}

impl IoJob {
    /// A job whose iovec list already has room for `segments` buffers.
    pub fn with_capacity(segments: usize) -> Box<Self> {
        let mut job = Box::<IoJob>::default();
        job.iovecs.reserve(segments);
        job
    }

    /// Data bytes a successful job transfers.
    pub fn bytes(&self) -> u32 {
        self.expect
    }

    /// What the job costs a throttled disk ([`Charge::of`]; `None`: nothing).
    pub fn charge(&self) -> Option<Charge> {
        let kind = match self.ops().first()? {
            IoOp::Read { .. } => RequestType::In,
            IoOp::Write { .. } => RequestType::Out,
            IoOp::Flush => RequestType::Flush,
            IoOp::Discard { .. } => RequestType::Discard,
            IoOp::WriteZeroes { .. } => RequestType::WriteZeroes,
        };
        Charge::of(kind, u64::from(self.expect))
    }

    /// The engine operations of the job.
    pub fn ops(&self) -> &[IoOp] {
        self.ops.get(..self.n_ops).unwrap_or(&[])
    }

    /// `(write, offset, bytes)` when the job is one read or write that moves data: the only
    /// kind that can be merged with its neighbours.
    pub(crate) fn transfer(&self) -> Option<(bool, u64, u32)> {
        if self.n_ops != 1 || self.expect == 0 {
            return None;
        }
        match self.ops.first()? {
            IoOp::Read { offset } => Some((false, *offset, self.expect)),
            IoOp::Write { offset } => Some((true, *offset, self.expect)),
            _ => None,
        }
    }

    /// The job's host iovecs.
    pub(crate) fn iovecs(&self) -> &[libc::iovec] {
        self.iovecs.as_slice()
    }

    /// The job's one operation went to the engine as part of a merged one.
    pub(crate) fn mark_merged(&mut self) {
        self.ops_left = 1;
    }

    /// Submits every operation to `engine`, tagged `user_data`; returns how many were
    /// accepted. A refused operation fails the request (it is never lost).
    pub fn submit_to(&mut self, engine: &mut dyn Engine, user_data: u64) -> u16 {
        let mut submitted = 0u16;
        for i in 0..self.n_ops {
            let Some(op) = self.ops.get(i).copied() else {
                break;
            };
            // SAFETY: the iovecs point into guest RAM (bounds-checked by
            // `IovecList::push_guest`), which stays mapped for the VM's life, i.e. past this
            // request's completion. The guest owns those bytes and may touch them meanwhile;
            // that only affects the data of its own request, as with real DMA.
            match unsafe { engine.submit(op, self.iovecs.as_slice(), user_data) } {
                Ok(()) => submitted += 1,
                Err(_) => {
                    self.failed = true;
                    self.failure.get_or_insert(Failure {
                        op,
                        errno: libc::EIO,
                    });
                }
            }
        }
        self.ops_left = submitted;
        submitted
    }

    /// Accounts one completed operation; returns `true` when it was the job's last.
    pub fn complete_op(&mut self, result: Result<u32, i32>) -> bool {
        if result != Ok(self.expect) {
            self.failed = true;
            if self.failure.is_none() {
                let op = self.ops.first().copied().unwrap_or(IoOp::Flush);
                self.failure = Failure::of(op, result, self.expect);
            }
        }
        self.ops_left = self.ops_left.saturating_sub(1);
        self.ops_left == 0
    }

    /// Marks the request failed (it could not be handed to an engine).
    pub fn fail(&mut self) {
        self.failed = true;
        if self.failure.is_none() {
            let op = self.ops().first().copied().unwrap_or(IoOp::Flush);
            self.failure = Some(Failure {
                op,
                errno: libc::EIO,
            });
        }
    }

    /// The used element of a finished job ([`IoJob::finish`]).
    pub fn used(&self) -> Used {
        Used {
            head: self.head,
            len: self.used_len,
            bytes: if self.outcome == Outcome::Ok {
                self.expect
            } else {
                0
            },
            outcome: self.outcome,
            failure: self.failure.filter(|_| self.outcome != Outcome::Ok),
        }
    }

    /// Writes the status byte (after all data) and records the used length: the one place a
    /// request that reached an engine gets its status.
    pub fn finish(&mut self, mem: &GuestMemoryMmap) -> Used {
        let status = if self.failed {
            Status::IoErr
        } else {
            Status::Ok
        };
        let len = if self.failed { 1 } else { self.ok_len };
        let used = write_status(mem, self.head, self.status_addr, status, len, self.expect);
        let used = Used {
            failure: if self.failed { self.failure } else { None },
            ..used
        };
        self.used_len = used.len;
        self.outcome = used.outcome;
        used
    }
}

#[cfg(test)]
impl IoJob {
    /// A job of `queue` for chain `head`: one read of `len` bytes at disk offset `offset`
    /// (tests drive the pool without building descriptor chains).
    pub(crate) fn test_read(queue: u16, head: u16, offset: u64, status_addr: u64) -> Box<Self> {
        let mut job = Box::<IoJob>::default();
        job.queue = queue;
        job.head = head;
        job.status_addr = status_addr;
        job.ok_len = 1;
        job.ops[0] = IoOp::Read { offset };
        job.n_ops = 1;
        job
    }

    /// A job for chain `head`: one read or write of the `len` bytes of guest memory at `buf`,
    /// at disk offset `offset`, its status byte at `status_addr`.
    pub(crate) fn test_transfer(
        mem: &GuestMemoryMmap,
        head: u16,
        write: bool,
        offset: u64,
        (buf, len): (u64, u32),
        status_addr: u64,
    ) -> Box<Self> {
        let mut job = Box::<IoJob>::default();
        job.head = head;
        job.status_addr = status_addr;
        job.ok_len = if write { 1 } else { len + 1 };
        job.ops[0] = if write {
            IoOp::Write { offset }
        } else {
            IoOp::Read { offset }
        };
        job.n_ops = 1;
        job.expect = len;
        job.iovecs
            .push_guest(mem, buf, u64::from(len))
            .expect("test buffer in guest RAM");
        job
    }
}

/// Parses chains into [`IoJob`]s: the device limits and the GET_ID answer.
#[derive(Debug, Clone)]
pub struct RequestParser {
    limits: DeviceLimits,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    metrics: Arc<DeviceMetrics>,
}

impl RequestParser {
    /// A parser enforcing `limits` and answering GET_ID with `serial` (truncated to 20
    /// bytes, NUL-padded).
    pub fn new(limits: DeviceLimits, serial: &str) -> Self {
        RequestParser {
            limits,
            id: encode_id(serial.as_bytes()),
            metrics: Arc::new(DeviceMetrics::new(serial)),
        }
    }

    /// Counts parsed requests in `metrics` (the device's counters).
    pub fn with_metrics(mut self, metrics: Arc<DeviceMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Parses `chain` into `job`. Returns `Some(used)` when the request finished at once
    /// (GET_ID, unsupported or invalid requests, empty ranges), `None` when `job` holds
    /// engine operations to run.
    pub fn prepare(
        &self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain,
        job: &mut IoJob,
    ) -> Option<Used> {
        let head = chain.head_index();
        job.head = head;
        job.n_ops = 0;
        job.failed = false;
        job.failure = None;
        job.ops_left = 0;
        job.iovecs.clear();
        let req = match parse_request(mem, chain.descriptors(), &self.limits) {
            Ok(req) => req,
            Err(e) => {
                let len = match (e.status_addr(), e.status()) {
                    (Some(addr), Some(status)) if mem.write(addr, &[status]).is_ok() => 1,
                    _ => 0,
                };
                return Some(Used::invalid(head, len));
            }
        };
        self.metrics.on_request(req.request_type());
        job.status_addr = req.status_addr();
        job.ok_len = req.used_len(Status::Ok);
        job.expect = 0;
        match req.request_type() {
            RequestType::GetId => return Some(self.get_id(mem, head, &req)),
            RequestType::In | RequestType::Out => {
                for seg in req.segments() {
                    if job
                        .iovecs
                        .push_guest(mem, seg.addr, u64::from(seg.len))
                        .is_err()
                    {
                        return Some(finish(mem, head, &req, Status::IoErr));
                    }
                }
                let offset = req.sector() * SECTOR_SIZE;
                job.ops[0] = if req.request_type() == RequestType::In {
                    IoOp::Read { offset }
                } else {
                    IoOp::Write { offset }
                };
                job.n_ops = 1;
                job.expect = req.data_len();
            }
            RequestType::Flush => {
                job.ops[0] = IoOp::Flush;
                job.n_ops = 1;
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                let zeroes = req.request_type() == RequestType::WriteZeroes;
                for (slot, r) in job.ops.iter_mut().zip(req.ranges()) {
                    let offset = r.sector * SECTOR_SIZE;
                    let len = u64::from(r.num_sectors) * SECTOR_SIZE;
                    *slot = if zeroes {
                        IoOp::WriteZeroes {
                            offset,
                            len,
                            unmap: r.unmap,
                        }
                    } else {
                        IoOp::Discard { offset, len }
                    };
                    job.n_ops += 1;
                }
                if job.n_ops == 0 {
                    return Some(finish(mem, head, &req, Status::Ok));
                }
            }
            RequestType::Unsupported(_) => return Some(finish(mem, head, &req, Status::Unsupp)),
        }
        None
    }

    /// GET_ID: the 20 ID bytes into the data buffers, then the status.
    fn get_id(&self, mem: &GuestMemoryMmap, head: u16, req: &Request) -> Used {
        let mut rest: &[u8] = &self.id;
        for seg in req.segments() {
            let (now, later) = rest.split_at((seg.len as usize).min(rest.len()));
            if mem.write(seg.addr, now).is_err() {
                return finish(mem, head, req, Status::IoErr);
            }
            rest = later;
        }
        finish(mem, head, req, Status::Ok)
    }
}

/// Completes `req` immediately with `status`.
fn finish(mem: &GuestMemoryMmap, head: u16, req: &Request, status: Status) -> Used {
    write_status(
        mem,
        head,
        req.status_addr(),
        status,
        req.used_len(status),
        0,
    )
}

/// Writes the status byte (the last thing the device writes) and builds the used element.
/// If even that byte cannot be written, the chain goes back with length 0.
fn write_status(
    mem: &GuestMemoryMmap,
    head: u16,
    status_addr: u64,
    status: Status,
    len: u32,
    bytes: u32,
) -> Used {
    match status.write_to(mem, status_addr) {
        Ok(()) if status == Status::Ok => Used {
            head,
            len,
            bytes,
            outcome: Outcome::Ok,
            failure: None,
        },
        Ok(()) => Used {
            head,
            len,
            bytes: 0,
            outcome: Outcome::Failed,
            failure: None,
        },
        Err(_) => Used {
            head,
            len: 0,
            bytes: 0,
            outcome: Outcome::Failed,
            failure: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_operation_its_offset_and_the_errno() {
        let op = IoOp::Write { offset: 4096 };
        assert_eq!(Failure::of(op, Ok(512), 512), None);
        let short = Failure::of(op, Ok(100), 512).expect("short transfer fails");
        assert_eq!(short.errno, libc::EIO);
        let enospc = Failure::of(op, Err(libc::ENOSPC), 512).expect("error fails");
        assert_eq!(enospc.errno, libc::ENOSPC);
        assert_eq!(enospc.to_string(), "write at offset 4096");
    }

    #[test]
    fn a_failed_job_carries_its_first_failure_and_a_good_one_none() {
        let mem =
            GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).expect("memory");
        let mut job = IoJob::test_read(0, 3, 8192, 0x100);
        assert!(job.complete_op(Err(libc::EIO)));
        let used = job.finish(&mem);
        assert_eq!(used.outcome, Outcome::Failed);
        assert_eq!(
            used.failure,
            Some(Failure {
                op: IoOp::Read { offset: 8192 },
                errno: libc::EIO
            })
        );
        let mut job = IoJob::test_read(0, 4, 0, 0x100);
        assert!(job.complete_op(Ok(0)));
        assert_eq!(job.finish(&mem).failure, None);
    }
}
