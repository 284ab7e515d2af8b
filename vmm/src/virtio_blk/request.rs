//! Executing requests (VIRTIO 1.x, 5.2.6 "Device Operation"): a chain parsed by
//! `blk-proto` becomes engine operations over host iovecs; their completion writes the
//! status byte (last, after the data) and yields the used element.
//!
//! A request that fails validation is answered with the status `blk-proto` chose (IOERR or
//! UNSUPP) when its chain has a usable status byte, and returned with used length 0 when it
//! has none.

use backend_raw::{Completion, Engine, IoOp};
use blk_proto::{
    encode_id, parse_request, DeviceLimits, Request, RequestType, Status, MAX_DISCARD_SEGMENTS,
    SECTOR_SIZE, VIRTIO_BLK_ID_BYTES,
};
use virtqueue_core::{DescriptorChain, GuestMemory};
use vm_memory::GuestMemoryMmap;

use super::guest_iovec::IovecList;

/// A chain to return through the used ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub head: u16,
    /// Bytes the device wrote into the chain's device-writable buffers, status byte included.
    pub len: u32,
}

/// A request handed to the engine, waiting for its operations to complete.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    head: u16,
    status_addr: u64,
    /// Used length if the request succeeds.
    ok_len: u32,
    /// Bytes each operation must transfer (reads and writes; 0 for the others).
    expect: u32,
    /// Operations not completed yet (discard / write-zeroes have one per range).
    ops_left: u16,
    failed: bool,
}

/// Runs one queue's requests on its engine.
pub struct Executor {
    engine: Box<dyn Engine>,
    limits: DeviceLimits,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    iovecs: IovecList,
    completions: Vec<Completion>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("engine", &self.engine.kind())
            .field("in_flight", &self.engine.in_flight())
            .finish()
    }
}

/// Engine depth needed for `queue_size` requests in flight at once: every request is one
/// operation except discard / write-zeroes, which may have up to [`MAX_DISCARD_SEGMENTS`].
pub fn engine_depth(queue_size: u16) -> usize {
    usize::from(queue_size) + MAX_DISCARD_SEGMENTS
}

impl Executor {
    /// An executor over `engine` (built with [`engine_depth`]), enforcing `limits` and
    /// answering GET_ID with `serial` (truncated to 20 bytes, NUL-padded).
    pub fn new(engine: Box<dyn Engine>, limits: DeviceLimits, serial: &str) -> Self {
        Executor {
            engine,
            limits,
            id: encode_id(serial.as_bytes()),
            slots: Vec::new(),
            free: Vec::new(),
            iovecs: IovecList::new(),
            completions: Vec::new(),
        }
    }

    /// Whether a request of any type can be started without overfilling the engine.
    pub fn has_room(&self) -> bool {
        self.engine.in_flight() + MAX_DISCARD_SEGMENTS <= self.engine.capacity()
    }

    /// Operations submitted and not reaped.
    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    /// The engine's completion eventfd, for epoll.
    pub fn completion_fd(&self) -> Option<i32> {
        self.engine.completion_fd()
    }

    /// Clears the completion eventfd's readiness (after epoll reported it).
    pub fn drain_completion_fd(&self) {
        self.engine.drain_completion_fd();
    }

    /// Blocks until a completion can be reaped (or nothing is in flight).
    pub fn wait(&mut self) {
        // An error here means io_uring_enter failed; the caller reaps what there is and
        // comes back, so a transient error costs a retry, not a hang.
        let _ = self.engine.wait();
    }

    /// Pushes the batch of submissions to the kernel. A failure completes nothing: the
    /// submissions stay queued and the next call retries them.
    pub fn flush_submissions(&mut self) {
        let _ = self.engine.flush_submissions();
    }

    /// Parses `chain` and starts its request; a request that finishes at once (GET_ID,
    /// invalid requests) is appended to `used`.
    pub fn start(&mut self, mem: &GuestMemoryMmap, chain: &DescriptorChain, used: &mut Vec<Used>) {
        let head = chain.head_index();
        let req = match parse_request(mem, chain.descriptors(), &self.limits) {
            Ok(req) => req,
            Err(e) => {
                let len = match (e.status_addr(), e.status()) {
                    (Some(addr), Some(status)) if mem.write(addr, &[status]).is_ok() => 1,
                    _ => 0,
                };
                used.push(Used { head, len });
                return;
            }
        };
        match req.request_type() {
            RequestType::GetId => used.push(self.get_id(mem, head, &req)),
            RequestType::In => self.start_rw(
                mem,
                head,
                &req,
                IoOp::Read {
                    offset: req.sector() * SECTOR_SIZE,
                },
                used,
            ),
            RequestType::Out => self.start_rw(
                mem,
                head,
                &req,
                IoOp::Write {
                    offset: req.sector() * SECTOR_SIZE,
                },
                used,
            ),
            RequestType::Flush => self.submit(mem, head, &req, &[IoOp::Flush], 0, used),
            RequestType::Discard | RequestType::WriteZeroes => {
                self.start_ranges(mem, head, &req, used)
            }
            RequestType::Unsupported(_) => used.push(finish(mem, head, &req, Status::Unsupp)),
        }
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

    fn start_rw(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        req: &Request,
        op: IoOp,
        used: &mut Vec<Used>,
    ) {
        self.iovecs.clear();
        for seg in req.segments() {
            if self
                .iovecs
                .push_guest(mem, seg.addr, u64::from(seg.len))
                .is_err()
            {
                used.push(finish(mem, head, req, Status::IoErr));
                return;
            }
        }
        self.submit(mem, head, req, &[op], req.data_len(), used);
    }

    fn start_ranges(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        req: &Request,
        used: &mut Vec<Used>,
    ) {
        let zeroes = req.request_type() == RequestType::WriteZeroes;
        let mut ops = [IoOp::Flush; MAX_DISCARD_SEGMENTS];
        let mut n = 0;
        for (slot, r) in ops.iter_mut().zip(req.ranges()) {
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
            n += 1;
        }
        self.iovecs.clear();
        match ops.get(..n) {
            Some(ops) if !ops.is_empty() => self.submit(mem, head, req, ops, 0, used),
            _ => used.push(finish(mem, head, req, Status::Ok)),
        }
    }

    /// Submits `ops` (sharing `self.iovecs`) as one request; `expect` bytes each.
    fn submit(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        req: &Request,
        ops: &[IoOp],
        expect: u32,
        used: &mut Vec<Used>,
    ) {
        let flight = InFlight {
            head,
            status_addr: req.status_addr(),
            ok_len: req.used_len(Status::Ok),
            expect,
            ops_left: 0,
            failed: false,
        };
        let slot = self.alloc(flight);
        let mut submitted = 0u16;
        let mut failed = false;
        for op in ops {
            // SAFETY: the iovecs point into guest RAM (bounds-checked by `IovecList::push_guest`),
            // which stays mapped for the VM's life, i.e. past this request's completion.
            // The guest owns those bytes and may touch them meanwhile; that only affects the
            // data of its own request, as with real DMA.
            match unsafe {
                self.engine
                    .submit(*op, self.iovecs.as_slice(), u64::from(slot))
            } {
                Ok(()) => submitted += 1,
                // QueueFull cannot happen while `has_room` gates `start`; fail the request
                // rather than lose it if it ever does.
                Err(_) => failed = true,
            }
        }
        if let Some(Some(f)) = self.slots.get_mut(slot as usize) {
            f.ops_left = submitted;
            f.failed |= failed;
        }
        if submitted == 0 {
            if let Some(done) = self.release(mem, slot) {
                used.push(done);
            }
        }
    }

    /// Reaps finished operations; completes the requests whose last operation finished.
    /// Returns how many operations were reaped.
    pub fn reap(&mut self, mem: &GuestMemoryMmap, used: &mut Vec<Used>) -> usize {
        self.completions.clear();
        let n = self.engine.reap(&mut self.completions);
        for i in 0..self.completions.len() {
            let Some(c) = self.completions.get(i).copied() else {
                break;
            };
            let Ok(slot) = u32::try_from(c.user_data) else {
                continue;
            };
            let Some(Some(f)) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            if c.result != Ok(f.expect) {
                f.failed = true;
            }
            f.ops_left = f.ops_left.saturating_sub(1);
            if f.ops_left == 0 {
                if let Some(done) = self.release(mem, slot) {
                    used.push(done);
                }
            }
        }
        n
    }

    fn alloc(&mut self, flight: InFlight) -> u32 {
        if let Some(slot) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                *s = Some(flight);
                return slot;
            }
        }
        self.slots.push(Some(flight));
        (self.slots.len() - 1) as u32
    }

    /// Frees `slot` and writes its request's status.
    fn release(&mut self, mem: &GuestMemoryMmap, slot: u32) -> Option<Used> {
        let f = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        let status = if f.failed { Status::IoErr } else { Status::Ok };
        let len = if f.failed { 1 } else { f.ok_len };
        Some(write_status(mem, f.head, f.status_addr, status, len))
    }
}

/// Completes `req` immediately with `status`.
fn finish(mem: &GuestMemoryMmap, head: u16, req: &Request, status: Status) -> Used {
    write_status(mem, head, req.status_addr(), status, req.used_len(status))
}

/// Writes the status byte (the last thing the device writes) and builds the used element.
/// If even that byte cannot be written, the chain goes back with length 0.
fn write_status(
    mem: &GuestMemoryMmap,
    head: u16,
    status_addr: u64,
    status: Status,
    len: u32,
) -> Used {
    match status.write_to(mem, status_addr) {
        Ok(()) => Used { head, len },
        Err(_) => Used { head, len: 0 },
    }
}
