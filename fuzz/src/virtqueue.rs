//! Device-side split virtqueue driven by a hostile driver: arbitrary guest memory, arbitrary
//! queue configuration (VIRTIO 1.x, 2.7 "Split Virtqueues"), and an arbitrary sequence of
//! device operations interleaved with driver writes.
//!
//! [`run`] checks every result against [`Model`], a plain reading of the rules of
//! `virtqueue-core` (`queue.rs`, `chain.rs`) over the same memory. Shared by the fuzz target
//! `virtqueue_pop` and by `virtqueue-core/tests/fuzz_entry_points.rs` (included by path, so
//! this file depends on nothing but `virtqueue-core` and `std`).

use std::sync::atomic::Ordering;

use virtqueue_core::descriptor::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use virtqueue_core::layout::{
    avail_elem_offset, avail_event_offset, used_elem_offset, used_event_offset, AVAIL_FLAGS_OFFSET,
    AVAIL_IDX_OFFSET, DESC_SIZE, USED_FLAGS_OFFSET, USED_IDX_OFFSET, VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_USED_F_NO_NOTIFY,
};
use virtqueue_core::{
    Descriptor, DescriptorChain, GuestMemory, Queue, QueueError, SliceMemory, MAX_CHAIN_LEN,
};

/// One device queue over one guest memory.
#[derive(Debug, Clone)]
pub struct QueueCase {
    /// Guest memory contents (guest address 0 is `memory[0]`).
    pub memory: Vec<u8>,
    /// `Queue::new(max_size)`.
    pub max_size: u16,
    /// `queue_size` as the driver wrote it (not necessarily valid).
    pub size: u16,
    /// `queue_desc`.
    pub desc_table: u64,
    /// `queue_driver`.
    pub avail_ring: u64,
    /// `queue_device`.
    pub used_ring: u64,
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// `queue_enable`.
    pub ready: bool,
    /// Restored `next_avail` (migration), if any.
    pub next_avail: Option<u16>,
    /// Restored `next_used` (migration), if any.
    pub next_used: Option<u16>,
    /// What happens, in order.
    pub ops: Vec<QueueOp>,
}

/// One step: a device operation or a driver write.
#[derive(Debug, Clone, Copy)]
pub enum QueueOp {
    /// `Queue::pop`.
    Pop,
    /// `Queue::add_used` of the last chain popped (or rejected), if any.
    CompleteLast {
        /// Bytes written.
        len: u32,
    },
    /// `Queue::add_used` of an arbitrary head.
    AddUsed {
        /// Head index returned.
        head: u16,
        /// Bytes written.
        len: u32,
    },
    /// `Queue::needs_notification`.
    NeedsNotification,
    /// `Queue::set_notification`.
    SetNotification(bool),
    /// `Queue::enable_notification`.
    EnableNotification,
    /// The driver stores `value` at `addr` (ignored if outside memory).
    GuestWrite {
        /// Guest address.
        addr: u64,
        /// Little-endian value.
        value: u16,
    },
    /// `DescriptorChain::read` of an arbitrary table.
    ReadChain {
        /// Table address.
        desc_table: u64,
        /// Entries of the table.
        queue_size: u16,
        /// Head index.
        head: u16,
    },
}

/// What a run did, to check that generated cases reach the interesting paths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Chains popped (valid by the model).
    pub chains: usize,
    /// Chains rejected (`BadChain`).
    pub bad_chains: usize,
    /// Used elements published.
    pub used: usize,
    /// `needs_notification` answers of `true`.
    pub notifications: usize,
}

/// What [`Queue::pop`] should do, by the model.
#[derive(Debug, PartialEq, Eq)]
enum PopOutcome {
    NotReady,
    Memory,
    InvalidAvailIdx,
    Empty,
    InvalidHead(u16),
    BadChain(u16),
    Chain(u16, Vec<Descriptor>),
}

/// The device queue state, tracked independently of [`Queue`].
struct Model {
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    signalled: Option<u16>,
}

impl Model {
    fn check_ready(&self) -> bool {
        self.ready && self.size != 0
    }

    fn pop(&mut self, mem: &SliceMemory<'_>) -> PopOutcome {
        if !self.check_ready() {
            return PopOutcome::NotReady;
        }
        let Some(avail_idx) = load_u16(mem, self.avail_ring, AVAIL_IDX_OFFSET) else {
            return PopOutcome::Memory;
        };
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > self.size {
            return PopOutcome::InvalidAvailIdx;
        }
        if pending == 0 {
            return PopOutcome::Empty;
        }
        let slot = self.next_avail % self.size;
        let Some(head) = load_u16(mem, self.avail_ring, avail_elem_offset(slot)) else {
            return PopOutcome::Memory;
        };
        self.next_avail = self.next_avail.wrapping_add(1);
        if head >= self.size {
            return PopOutcome::InvalidHead(head);
        }
        match model_chain(mem, self.desc_table, self.size, head) {
            Some(descs) => PopOutcome::Chain(head, descs),
            None => PopOutcome::BadChain(head),
        }
    }

    /// `Ok(())`, or the error class `add_used` must report.
    fn add_used(&mut self, mem: &SliceMemory<'_>, head: u16, len: u32) -> Result<(), &'static str> {
        if !self.check_ready() {
            return Err("not ready");
        }
        if head >= self.size {
            return Err("invalid used head");
        }
        let slot = self.next_used % self.size;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let Some(addr) = self.used_ring.checked_add(used_elem_offset(slot)) else {
            return Err("memory");
        };
        if mem.write(addr, &elem).is_err() {
            return Err("memory");
        }
        self.next_used = self.next_used.wrapping_add(1);
        store_u16(mem, self.used_ring, USED_IDX_OFFSET, self.next_used).ok_or("memory")
    }

    fn needs_notification(&mut self, mem: &SliceMemory<'_>) -> Option<bool> {
        if !self.check_ready() {
            return None;
        }
        let new = self.next_used;
        let old = self.signalled.replace(new);
        if self.event_idx {
            let used_event = load_u16(mem, self.avail_ring, used_event_offset(self.size))?;
            return Some(old.is_none_or(|old| need_event(used_event, new, old)));
        }
        let flags = load_u16(mem, self.avail_ring, AVAIL_FLAGS_OFFSET)?;
        Some(old != Some(new) && flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }
}

/// 2.7.7.2: notify iff `event` lies in the window `[old, new)` of used indices just published.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn load_u16(mem: &SliceMemory<'_>, base: u64, offset: u64) -> Option<u16> {
    let addr = base.checked_add(offset)?;
    if addr % 2 != 0 {
        return None;
    }
    let mut raw = [0u8; 2];
    mem.read(addr, &mut raw).ok()?;
    Some(u16::from_le_bytes(raw))
}

fn store_u16(mem: &SliceMemory<'_>, base: u64, offset: u64, value: u16) -> Option<()> {
    let addr = base.checked_add(offset)?;
    if addr % 2 != 0 {
        return None;
    }
    mem.write(addr, &value.to_le_bytes()).ok()
}

fn inside(mem_len: u64, addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= mem_len)
}

fn read_desc(mem: &SliceMemory<'_>, table: u64, index: u16) -> Option<Descriptor> {
    let addr = table.checked_add(u64::from(index) * DESC_SIZE)?;
    let mut raw = [0u8; 16];
    mem.read(addr, &mut raw).ok()?;
    let le = |r: std::ops::Range<usize>| {
        raw[r]
            .iter()
            .rev()
            .fold(0u64, |a, &b| a << 8 | u64::from(b))
    };
    Some(Descriptor {
        addr: le(0..8),
        len: le(8..12) as u32,
        flags: le(12..14) as u16,
        next: le(14..16) as u16,
    })
}

/// The chain at `head` by the rules of 2.7.5 as `chain.rs` documents them, or `None` if it
/// must be rejected. At most `min(queue_size, MAX_CHAIN_LEN)` buffers; one indirect table at
/// the end; buffers inside memory; no readable buffer after a writable one.
fn model_chain(
    mem: &SliceMemory<'_>,
    table: u64,
    queue_size: u16,
    head: u16,
) -> Option<Vec<Descriptor>> {
    let mem_len = mem.len() as u64;
    let limit = usize::from(queue_size).min(MAX_CHAIN_LEN);
    let mut out: Vec<Descriptor> = Vec::new();
    let push = |out: &mut Vec<Descriptor>, d: Descriptor| -> Option<()> {
        let writable_seen = out.iter().any(|p| p.flags & VIRTQ_DESC_F_WRITE != 0);
        if !inside(mem_len, d.addr, u64::from(d.len))
            || (writable_seen && d.flags & VIRTQ_DESC_F_WRITE == 0)
        {
            return None;
        }
        out.push(d);
        Some(())
    };
    let mut index = head;
    loop {
        if index >= queue_size || out.len() >= limit {
            return None;
        }
        let d = read_desc(mem, table, index)?;
        if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            if d.flags & VIRTQ_DESC_F_NEXT != 0
                || d.len == 0
                || u64::from(d.len) % DESC_SIZE != 0
                || !inside(mem_len, d.addr, u64::from(d.len))
            {
                return None;
            }
            let entries = u64::from(d.len) / DESC_SIZE;
            let mut j = 0u16;
            loop {
                if u64::from(j) >= entries || out.len() >= limit {
                    return None;
                }
                let e = read_desc(mem, d.addr, j)?;
                if e.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                    return None;
                }
                push(&mut out, e)?;
                if e.flags & VIRTQ_DESC_F_NEXT == 0 {
                    return Some(out);
                }
                j = e.next;
            }
        }
        push(&mut out, d)?;
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Some(out);
        }
        index = d.next;
    }
}

/// Properties of any chain the device hands out, whatever the model says.
fn check_chain(mem_len: u64, chain: &DescriptorChain, queue_size: u16) {
    let descs = chain.descriptors();
    assert!(
        chain.head_index() < queue_size,
        "head {} >= size {queue_size}",
        chain.head_index()
    );
    assert!(!descs.is_empty(), "empty chain");
    assert!(
        descs.len() <= usize::from(queue_size).min(MAX_CHAIN_LEN),
        "chain of {} > size {queue_size}",
        descs.len()
    );
    for d in descs {
        assert!(
            inside(mem_len, d.addr, u64::from(d.len)),
            "buffer {d:?} outside {mem_len} bytes"
        );
        assert_eq!(
            d.flags & VIRTQ_DESC_F_INDIRECT,
            0,
            "indirect descriptor left in chain"
        );
    }
    assert_eq!(chain.readable_count() + chain.writable_count(), descs.len());
    assert!(chain.readable().all(|d| !d.is_device_writable()));
    assert!(chain.writable().all(|d| d.is_device_writable()));
    let sum = |it: &mut dyn Iterator<Item = Descriptor>| it.map(|d| u64::from(d.len)).sum::<u64>();
    assert_eq!(chain.readable_len(), sum(&mut chain.readable()));
    assert_eq!(chain.writable_len(), sum(&mut chain.writable()));
}

fn pop_outcome(result: Result<Option<DescriptorChain>, QueueError>) -> PopOutcome {
    match result {
        Ok(None) => PopOutcome::Empty,
        Ok(Some(chain)) => PopOutcome::Chain(chain.head_index(), chain.descriptors().to_vec()),
        Err(QueueError::NotReady) => PopOutcome::NotReady,
        Err(QueueError::Memory(_)) => PopOutcome::Memory,
        Err(QueueError::InvalidAvailIdx { .. }) => PopOutcome::InvalidAvailIdx,
        Err(QueueError::InvalidHead { head, .. }) => PopOutcome::InvalidHead(head),
        Err(QueueError::BadChain { head, .. }) => PopOutcome::BadChain(head),
        Err(e) => panic!("pop returned an error it does not document: {e:?}"),
    }
}

fn add_used_class(result: Result<(), QueueError>) -> Result<(), &'static str> {
    match result {
        Ok(()) => Ok(()),
        Err(QueueError::NotReady) => Err("not ready"),
        Err(QueueError::InvalidUsedHead { .. }) => Err("invalid used head"),
        Err(QueueError::Memory(_)) => Err("memory"),
        Err(e) => panic!("add_used returned an error it does not document: {e:?}"),
    }
}

/// Runs `case`, panicking on any divergence from the model or broken invariant.
pub fn run(case: &mut QueueCase) -> Stats {
    let mut stats = Stats::default();
    let mem = SliceMemory::new(&mut case.memory);
    let mem_len = mem.len() as u64;
    let mut q = Queue::new(case.max_size);
    q.set_size(case.size);
    q.set_desc_table_address(case.desc_table);
    q.set_avail_ring_address(case.avail_ring);
    q.set_used_ring_address(case.used_ring);
    q.set_event_idx(case.event_idx);
    q.set_ready(case.ready);
    let mut model = Model {
        size: case.size,
        ready: case.ready,
        desc_table: case.desc_table,
        avail_ring: case.avail_ring,
        used_ring: case.used_ring,
        event_idx: case.event_idx,
        next_avail: 0,
        next_used: 0,
        signalled: Some(0),
    };
    if let Some(n) = case.next_avail {
        q.set_next_avail(n);
        model.next_avail = n;
    }
    if let Some(n) = case.next_used {
        q.set_next_used(n);
        model.next_used = n;
        model.signalled = None;
    }
    let _ = q.is_valid(&mem);
    let mut last_head = None;
    for op in &case.ops {
        match *op {
            QueueOp::Pop => {
                let expected = model.pop(&mem);
                let result = q.pop(&mem);
                if let Ok(Some(chain)) = &result {
                    check_chain(mem_len, chain, q.size());
                }
                let got = pop_outcome(result);
                assert_eq!(got, expected, "pop diverged from the model");
                last_head = match got {
                    PopOutcome::Chain(head, _) => {
                        stats.chains += 1;
                        Some(head)
                    }
                    PopOutcome::BadChain(head) => {
                        stats.bad_chains += 1;
                        Some(head)
                    }
                    _ => last_head,
                };
            }
            QueueOp::CompleteLast { len } => {
                if let Some(head) = last_head.take() {
                    stats.used += usize::from(add_used(&mem, &mut q, &mut model, head, len));
                }
            }
            QueueOp::AddUsed { head, len } => {
                stats.used += usize::from(add_used(&mem, &mut q, &mut model, head, len));
            }
            QueueOp::NeedsNotification => {
                let expected = model.needs_notification(&mem);
                let got = q.needs_notification(&mem).ok();
                assert_eq!(got, expected, "needs_notification");
                stats.notifications += usize::from(got == Some(true));
            }
            QueueOp::SetNotification(enable) => {
                if q.set_notification(&mem, enable).is_ok() {
                    check_notification_written(&mem, &q, enable);
                }
            }
            QueueOp::EnableNotification => {
                if let Ok(more) = q.enable_notification(&mem) {
                    check_notification_written(&mem, &q, true);
                    let pending = q.avail_pending(&mem);
                    assert_eq!(pending.map(|n| n != 0), Ok(more), "enable_notification");
                }
            }
            QueueOp::GuestWrite { addr, value } => {
                let _ = mem.write(addr, &value.to_le_bytes());
            }
            QueueOp::ReadChain {
                desc_table,
                queue_size,
                head,
            } => {
                let expected = model_chain(&mem, desc_table, queue_size, head);
                let got = DescriptorChain::read(&mem, desc_table, queue_size, head);
                if let Ok(chain) = &got {
                    check_chain(mem_len, chain, queue_size);
                }
                assert_eq!(
                    got.ok().map(|c| c.descriptors().to_vec()),
                    expected,
                    "DescriptorChain::read diverged from the model"
                );
            }
        }
        assert_eq!(q.next_avail(), model.next_avail, "next_avail");
        assert_eq!(q.next_used(), model.next_used, "next_used");
        if let Ok(n) = q.avail_pending(&mem) {
            assert!(
                n <= q.size(),
                "{n} chains pending in a ring of {}",
                q.size()
            );
        }
    }
    stats
}

/// `add_used` checked against the model; whether it succeeded.
fn add_used(mem: &SliceMemory<'_>, q: &mut Queue, model: &mut Model, head: u16, len: u32) -> bool {
    let expected = model.add_used(mem, head, len);
    let got = add_used_class(q.add_used(mem, head, len));
    assert_eq!(
        got, expected,
        "add_used({head}, {len}) diverged from the model"
    );
    if got.is_ok() {
        // Published: used idx and the element are in memory as the driver will read them.
        let slot = q.next_used().wrapping_sub(1) % q.size();
        let used = q.used_ring_address();
        assert_eq!(
            mem.load_u16(used + USED_IDX_OFFSET, Ordering::Relaxed),
            Ok(q.next_used())
        );
        let mut elem = [0u8; 8];
        mem.read(used + used_elem_offset(slot), &mut elem)
            .expect("element was written");
        assert_eq!(
            u32::from_le_bytes(elem[..4].try_into().unwrap()),
            u32::from(head)
        );
        assert_eq!(u32::from_le_bytes(elem[4..].try_into().unwrap()), len);
    }
    got.is_ok()
}

/// After a successful `set_notification(enable)`: the flag or `avail_event` says so (2.7.10).
fn check_notification_written(mem: &SliceMemory<'_>, q: &Queue, enable: bool) {
    if q.event_idx_enabled() {
        if enable {
            let addr = q.used_ring_address() + avail_event_offset(q.size());
            assert_eq!(
                mem.load_u16(addr, Ordering::Relaxed),
                Ok(q.next_avail()),
                "avail_event"
            );
        }
        return;
    }
    let flags = mem.load_u16(q.used_ring_address() + USED_FLAGS_OFFSET, Ordering::Relaxed);
    let expected = if enable { 0 } else { VIRTQ_USED_F_NO_NOTIFY };
    assert_eq!(flags, Ok(expected), "used flags");
}
