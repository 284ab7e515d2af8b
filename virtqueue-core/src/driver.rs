//! The driver half of a split virtqueue (VIRTIO 1.x, 2.7.13 "Supplying Buffers to The
//! Device" and 2.7.14 "Receiving Used Buffers From The Device").
//!
//! [`DriverQueue`] is used by the test guest and by tests: it writes real rings into a
//! [`GuestMemory`], so tests exercise the device half through the protocol. It never
//! allocates: the free list and the chain lengths live in fixed arrays of
//! [`MAX_DRIVER_QUEUE_SIZE`] entries, and it trusts nothing it reads back from the rings.
//!
//! [`DriverQueue::add`] and [`DriverQueue::add_indirect`] only build valid chains. Tests and
//! fuzzers of a device also need the chains a correct driver never builds (loops, indices
//! outside the table, readable after writable, nested indirect tables, heads outside the
//! queue): [`DriverQueue::write_raw_descriptor`], [`DriverQueue::write_raw_table`] and
//! [`DriverQueue::publish_raw_head`] write descriptors and avail entries verbatim, in the
//! manner of rust-vmm's `MockSplitQueue`.
//!
//! ```
//! use virtqueue_core::descriptor::VIRTQ_DESC_F_NEXT;
//! use virtqueue_core::{ChainError, Descriptor, DriverQueue, Queue, QueueError, RingLayout, SliceMemory};
//!
//! let mut bytes = vec![0u8; 0x4000];
//! let mem = SliceMemory::new(&mut bytes);
//! let addrs = RingLayout::new(8).unwrap().checked_addresses(0x1000).unwrap();
//! let mut driver = DriverQueue::new(&mem, 8, addrs, false).unwrap();
//!
//! // Descriptors 0 -> 1 -> 0: a loop.
//! let looping = |next| Descriptor { addr: 0x3000, len: 16, flags: VIRTQ_DESC_F_NEXT, next };
//! driver.write_raw_descriptor(&mem, 0, looping(1)).unwrap();
//! driver.write_raw_descriptor(&mem, 1, looping(0)).unwrap();
//! driver.publish_raw_head(&mem, 0).unwrap();
//!
//! let mut queue = Queue::new(8);
//! queue.set_desc_table_address(addrs.desc_table);
//! queue.set_avail_ring_address(addrs.avail_ring);
//! queue.set_used_ring_address(addrs.used_ring);
//! queue.set_ready(true);
//! let reason = ChainError::ChainLoop { index: 0, indirect: false };
//! assert_eq!(queue.pop(&mem).unwrap_err(), QueueError::BadChain { head: 0, reason });
//!
//! // The device returns the rejected chain; the driver gets it back like any other.
//! queue.add_used(&mem, 0, 0).unwrap();
//! assert_eq!(driver.pop_used(&mem).unwrap(), Some((0, 0)));
//! ```

use core::sync::atomic::{fence, Ordering};

use zerocopy::{FromBytes, IntoBytes};

use crate::chain::MAX_CHAIN_LEN;
use crate::descriptor::{
    Descriptor, VirtqDesc, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use crate::error::DriverError;
use crate::event::vring_need_event;
use crate::layout::{
    avail_elem_offset, avail_event_offset, avail_ring_size, desc_table_size, field_addr,
    used_elem_offset, used_event_offset, used_ring_size, RingAddresses, VirtqUsedElem,
    AVAIL_FLAGS_OFFSET, AVAIL_IDX_OFFSET, DESC_SIZE, USED_FLAGS_OFFSET, USED_IDX_OFFSET,
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY,
};
use crate::memory::GuestMemory;

/// Largest queue size a [`DriverQueue`] supports.
pub const MAX_DRIVER_QUEUE_SIZE: u16 = 256;

const TABLE: usize = MAX_DRIVER_QUEUE_SIZE as usize;

/// Driver-side state of one split virtqueue whose rings the caller placed in memory
/// (see [`RingLayout`](crate::layout::RingLayout)).
#[derive(Debug, Clone)]
pub struct DriverQueue {
    size: u16,
    addrs: RingAddresses,
    event_idx: bool,
    /// Our own copy of each descriptor's `next`: the free list and the chains in flight.
    /// The device could rewrite the table, so freeing never reads it back.
    next: [u16; TABLE],
    /// Descriptors held by the chain whose head is `i`; 0 when `i` is not a head in flight.
    chain_len: [u16; TABLE],
    /// Times `i` was published with [`DriverQueue::publish_raw_head`] and not yet used.
    raw_in_flight: [u16; TABLE],
    free_head: u16,
    num_free: u16,
    avail_idx: u16,
    avail_flags: u16,
    /// Avail `idx` at the last [`DriverQueue::should_kick`].
    kicked_avail: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Takes over rings of `size` entries at `addrs`, zeroing them. `event_idx`: whether
    /// `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn new<M: GuestMemory + ?Sized>(
        mem: &M,
        size: u16,
        addrs: RingAddresses,
        event_idx: bool,
    ) -> Result<Self, DriverError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_DRIVER_QUEUE_SIZE {
            return Err(DriverError::InvalidQueueSize(size));
        }
        zero(mem, addrs.desc_table, desc_table_size(size))?;
        zero(mem, addrs.avail_ring, avail_ring_size(size))?;
        zero(mem, addrs.used_ring, used_ring_size(size))?;
        let mut next = [0u16; TABLE];
        for (i, n) in next.iter_mut().enumerate() {
            *n = (i as u16).wrapping_add(1);
        }
        Ok(DriverQueue {
            size,
            addrs,
            event_idx,
            next,
            chain_len: [0; TABLE],
            raw_in_flight: [0; TABLE],
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            avail_flags: 0,
            kicked_avail: 0,
            last_used: 0,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the three areas are.
    pub fn addresses(&self) -> RingAddresses {
        self.addrs
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Avail `idx` the driver has published (free running).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Used index up to which the driver has consumed completions (free running).
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Publishes a chain of direct descriptors: `readable` buffers (device reads them) then
    /// `writable` ones, each `(addr, len)`. Returns the head index, which the device will
    /// hand back through the used ring.
    pub fn add<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, DriverError> {
        let n = self.check_chain(readable, writable)?;
        self.reserve(n)?;
        let head = self.free_head;
        let mut index = head;
        for (i, desc) in chain_descriptors(readable, writable).enumerate() {
            let last = i + 1 == n;
            let next = if last { 0 } else { self.next_of(index) };
            let flags = if last {
                desc.flags
            } else {
                desc.flags | VIRTQ_DESC_F_NEXT
            };
            let desc = Descriptor {
                flags,
                next,
                ..desc
            };
            write_desc(mem, self.addrs.desc_table, index, desc)?;
            if !last {
                index = next;
            }
        }
        self.free_head = self.next_of(index);
        self.take(head, n as u16);
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Publishes a chain as one indirect descriptor (2.7.5.3): writes the table of
    /// `readable` then `writable` buffers at `table_addr` (16-aligned, `16 * n` bytes owned
    /// by the caller until the chain is used) and uses a single ring descriptor.
    pub fn add_indirect<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        table_addr: u64,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<u16, DriverError> {
        let n = self.check_chain(readable, writable)?;
        self.reserve(1)?;
        for (i, desc) in chain_descriptors(readable, writable).enumerate() {
            let last = i + 1 == n;
            let (flags, next) = if last {
                (desc.flags, 0)
            } else {
                (desc.flags | VIRTQ_DESC_F_NEXT, i as u16 + 1)
            };
            write_desc(
                mem,
                table_addr,
                i as u16,
                Descriptor {
                    flags,
                    next,
                    ..desc
                },
            )?;
        }
        let head = self.free_head;
        let table = Descriptor {
            addr: table_addr,
            len: (n as u64 * DESC_SIZE) as u32,
            flags: VIRTQ_DESC_F_INDIRECT,
            next: 0,
        };
        write_desc(mem, self.addrs.desc_table, head, table)?;
        self.free_head = self.next_of(head);
        self.take(head, 1);
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Writes `desc` verbatim (flags, `next` and buffer as given) as entry `index` of the
    /// descriptor table, for tests and fuzzers that need chains no correct driver builds.
    ///
    /// Nothing is taken from the free list: use indices that no chain added with
    /// [`DriverQueue::add`] holds while that chain is in flight (e.g. a queue used only for
    /// raw chains), since `add` reuses free descriptors. Fails with
    /// [`DriverError::IndexOutOfRange`] for `index >= size` (a `next` may still point
    /// there).
    pub fn write_raw_descriptor<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        index: u16,
        desc: Descriptor,
    ) -> Result<(), DriverError> {
        if index >= self.size {
            return Err(DriverError::IndexOutOfRange {
                index,
                size: self.size,
            });
        }
        write_desc(mem, self.addrs.desc_table, index, desc)
    }

    /// Writes `descs` verbatim as a descriptor table at `table` (16 bytes each), e.g. an
    /// indirect table for a raw descriptor with `VIRTQ_DESC_F_INDIRECT` to point at.
    pub fn write_raw_table<M: GuestMemory + ?Sized>(
        mem: &M,
        table: u64,
        descs: &[Descriptor],
    ) -> Result<(), DriverError> {
        for (index, desc) in (0..=u16::MAX).zip(descs) {
            write_desc(mem, table, index, *desc)?;
        }
        Ok(())
    }

    /// Puts `head` verbatim in the next avail ring slot and publishes it (stores avail
    /// `idx`), for tests and fuzzers. `head` may be anything, even outside the table (the
    /// device then reports an invalid head and cannot return it).
    ///
    /// [`DriverQueue::pop_used`] hands the completion of a raw head below the queue size
    /// back as `(head, len)` and frees nothing: raw descriptors never left the free list.
    pub fn publish_raw_head<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
    ) -> Result<(), DriverError> {
        self.publish(mem, head)?;
        if head < self.size {
            if let Some(n) = self.raw_in_flight.get_mut(usize::from(head)) {
                *n = n.saturating_add(1);
            }
        }
        Ok(())
    }

    fn check_chain(
        &self,
        readable: &[(u64, u32)],
        writable: &[(u64, u32)],
    ) -> Result<usize, DriverError> {
        let n = readable.len() + writable.len();
        if n == 0 {
            return Err(DriverError::EmptyChain);
        }
        if n > usize::from(self.size) || n > MAX_CHAIN_LEN {
            return Err(DriverError::ChainTooLong(n));
        }
        Ok(n)
    }

    fn reserve(&self, n: usize) -> Result<(), DriverError> {
        if n > usize::from(self.num_free) {
            return Err(DriverError::NoFreeDescriptors {
                needed: n,
                available: usize::from(self.num_free),
            });
        }
        Ok(())
    }

    fn next_of(&self, index: u16) -> u16 {
        self.next.get(usize::from(index)).copied().unwrap_or(0)
    }

    fn take(&mut self, head: u16, n: u16) {
        if let Some(len) = self.chain_len.get_mut(usize::from(head)) {
            *len = n;
        }
        self.num_free -= n;
    }

    /// Puts `head` in the next avail ring slot and publishes it (2.7.13.2).
    fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M, head: u16) -> Result<(), DriverError> {
        let slot = self.avail_idx % self.size;
        mem.store_u16(
            field_addr(self.addrs.avail_ring, avail_elem_offset(slot))?,
            head,
            Ordering::Relaxed,
        )?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry must be visible before the device can
        // observe the new `idx` (2.7.13.3); pairs with the device's acquire load.
        mem.store_u16(
            field_addr(self.addrs.avail_ring, AVAIL_IDX_OFFSET)?,
            self.avail_idx,
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Whether the device wants a kick for the chains published since the last call
    /// (2.7.10 "Available Buffer Notification Suppression"): with `VIRTIO_F_EVENT_IDX`, iff
    /// they crossed `avail_event`; otherwise iff there are any and `VIRTQ_USED_F_NO_NOTIFY` is
    /// clear. Kicks (returns `true`) if the ring cannot be read, since a spurious kick is
    /// harmless and a lost one is not.
    pub fn should_kick<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> bool {
        let new = self.avail_idx;
        let old = core::mem::replace(&mut self.kicked_avail, new);
        // SeqCst fence: our store of avail `idx` must be ordered before the load of
        // `avail_event`/`flags`; the device stores those, fences, then re-reads avail `idx`
        // (see `Queue::enable_notification`), so one of us sees the other's store.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let addr = field_addr(self.addrs.used_ring, avail_event_offset(self.size));
            return match addr.and_then(|a| mem.load_u16(a, Ordering::Relaxed)) {
                Ok(avail_event) => vring_need_event(avail_event, new, old),
                Err(_) => true,
            };
        }
        let addr = field_addr(self.addrs.used_ring, USED_FLAGS_OFFSET);
        match addr.and_then(|a| mem.load_u16(a, Ordering::Relaxed)) {
            Ok(flags) => new != old && flags & VIRTQ_USED_F_NO_NOTIFY == 0,
            Err(_) => true,
        }
    }

    /// Takes the next completion `(head, len)` the device published, freeing the chain's
    /// descriptors; `Ok(None)` if there is none.
    ///
    /// A used element naming something that is not a chain in flight is consumed and
    /// reported as [`DriverError::InvalidUsedId`].
    pub fn pop_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<(u16, u32)>, DriverError> {
        // Acquire: pairs with the device's release store of used `idx`, making the used
        // element and the data written into the buffers visible (2.7.14).
        let used_idx = mem.load_u16(
            field_addr(self.addrs.used_ring, USED_IDX_OFFSET)?,
            Ordering::Acquire,
        )?;
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(DriverError::InvalidUsedIdx {
                used_idx,
                last_used: self.last_used,
            });
        }
        let slot = self.last_used % self.size;
        let mut raw = [0u8; size_of::<VirtqUsedElem>()];
        mem.read(
            field_addr(self.addrs.used_ring, used_elem_offset(slot))?,
            &mut raw,
        )?;
        self.last_used = self.last_used.wrapping_add(1);
        let elem = VirtqUsedElem::read_from_bytes(&raw).unwrap_or_default();
        let id = elem.id.get();
        let head = u16::try_from(id).ok().filter(|&h| h < self.size);
        // A chain published raw holds no descriptors of the free list: nothing to free.
        let raw = head.and_then(|h| self.raw_in_flight.get_mut(usize::from(h)));
        if let (Some(h), Some(n)) = (head, raw.filter(|n| **n > 0)) {
            *n -= 1;
            return Ok(Some((h, elem.len.get())));
        }
        let n = head
            .and_then(|h| self.chain_len.get(usize::from(h)).copied())
            .unwrap_or(0);
        let Some(head) = head.filter(|_| n != 0) else {
            return Err(DriverError::InvalidUsedId(id));
        };
        self.free(head, n);
        Ok(Some((head, elem.len.get())))
    }

    /// Returns the `n` descriptors of the chain at `head` to the free list.
    fn free(&mut self, head: u16, n: u16) {
        let mut tail = head;
        for _ in 1..n {
            tail = self.next_of(tail);
        }
        if let Some(next) = self.next.get_mut(usize::from(tail)) {
            *next = self.free_head;
        }
        if let Some(len) = self.chain_len.get_mut(usize::from(head)) {
            *len = 0;
        }
        self.free_head = head;
        self.num_free += n;
    }

    /// Asks the device not to interrupt (2.7.7): sets `VIRTQ_AVAIL_F_NO_INTERRUPT`. With
    /// `VIRTIO_F_EVENT_IDX` the device ignores the flag, and at most one more interrupt
    /// arrives for the current `used_event`.
    pub fn disable_interrupts<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), DriverError> {
        self.avail_flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
        mem.store_u16(
            field_addr(self.addrs.avail_ring, AVAIL_FLAGS_OFFSET)?,
            self.avail_flags,
            Ordering::Relaxed,
        )?;
        Ok(())
    }

    /// Asks for an interrupt on the next completion and reports whether completions are
    /// already pending (`true`: poll [`DriverQueue::pop_used`] instead of waiting).
    ///
    /// Clears `VIRTQ_AVAIL_F_NO_INTERRUPT` and, with `VIRTIO_F_EVENT_IDX`, writes
    /// `used_event = last_used`.
    pub fn enable_interrupts<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, DriverError> {
        self.avail_flags = 0;
        mem.store_u16(
            field_addr(self.addrs.avail_ring, AVAIL_FLAGS_OFFSET)?,
            0,
            Ordering::Relaxed,
        )?;
        if self.event_idx {
            self.set_used_event(mem, self.last_used)?;
        }
        // SeqCst fence: the store enabling interrupts must be ordered before re-reading used
        // `idx`; the device stores used `idx`, fences, then loads `used_event`/`flags`
        // (`Queue::needs_notification`), so a completion cannot slip between the two.
        fence(Ordering::SeqCst);
        let used_idx = mem.load_u16(
            field_addr(self.addrs.used_ring, USED_IDX_OFFSET)?,
            Ordering::Acquire,
        )?;
        Ok(used_idx != self.last_used)
    }

    /// Writes `used_event` (2.7.10): with `VIRTIO_F_EVENT_IDX`, interrupt once the used
    /// `idx` passes `idx`. Lets a driver delay interrupts until several completions arrived.
    pub fn set_used_event<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        idx: u16,
    ) -> Result<(), DriverError> {
        mem.store_u16(
            field_addr(self.addrs.avail_ring, used_event_offset(self.size))?,
            idx,
            Ordering::Relaxed,
        )?;
        Ok(())
    }
}

/// The buffers of a chain as descriptors with their direction flag (no `NEXT` yet).
fn chain_descriptors<'a>(
    readable: &'a [(u64, u32)],
    writable: &'a [(u64, u32)],
) -> impl Iterator<Item = Descriptor> + 'a {
    let desc = |flags| {
        move |&(addr, len): &(u64, u32)| Descriptor {
            addr,
            len,
            flags,
            next: 0,
        }
    };
    readable
        .iter()
        .map(desc(0))
        .chain(writable.iter().map(desc(VIRTQ_DESC_F_WRITE)))
}

/// Writes `desc` as entry `index` of the table at `table`.
fn write_desc<M: GuestMemory + ?Sized>(
    mem: &M,
    table: u64,
    index: u16,
    desc: Descriptor,
) -> Result<(), DriverError> {
    let addr = field_addr(table, u64::from(index) * DESC_SIZE)?;
    mem.write(addr, VirtqDesc::from(desc).as_bytes())?;
    Ok(())
}

/// Zeroes `len` bytes at `addr` without a buffer of that size.
fn zero<M: GuestMemory + ?Sized>(mem: &M, addr: u64, len: u64) -> Result<(), DriverError> {
    const CHUNK: u64 = 64;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        mem.write(field_addr(addr, done)?, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RingLayout;
    use crate::memory::SliceMemory;
    use crate::testing::bytes;

    fn driver(mem: &SliceMemory<'_>, size: u16) -> DriverQueue {
        DriverQueue::new(
            mem,
            size,
            RingLayout::new(size).unwrap().addresses(0x1000),
            false,
        )
        .unwrap()
    }

    #[test]
    fn sizes_are_checked() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let a = RingLayout::new(4).unwrap().addresses(0);
        for size in [0, 3, 512] {
            let err = DriverQueue::new(&mem, size, a, false).map(|_| ());
            assert_eq!(err, Err(DriverError::InvalidQueueSize(size)));
        }
    }

    #[test]
    fn descriptors_are_accounted_for() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut d = driver(&mem, 4);
        assert_eq!(d.add(&mem, &[], &[]), Err(DriverError::EmptyChain));
        assert_eq!(
            d.add(&mem, &[(0, 1); 5], &[]),
            Err(DriverError::ChainTooLong(5))
        );
        d.add(&mem, &[(0, 1); 3], &[]).unwrap();
        assert_eq!(d.num_free(), 1);
        let err = d.add(&mem, &[(0, 1)], &[(0, 1)]);
        assert_eq!(
            err,
            Err(DriverError::NoFreeDescriptors {
                needed: 2,
                available: 1
            })
        );
        d.add_indirect(&mem, 0x8000, &[(0, 1); 4], &[]).unwrap();
        assert_eq!(d.num_free(), 0);
        assert_eq!(d.avail_idx(), 2);
    }

    #[test]
    fn raw_chains_are_written_verbatim_and_come_back() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut d = driver(&mem, 4);
        let table = d.addresses().desc_table;
        let desc = Descriptor {
            addr: 0x5000,
            len: 7,
            flags: VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
            next: 9,
        };
        d.write_raw_descriptor(&mem, 3, desc).unwrap();
        let mut raw = [0u8; DESC_SIZE as usize];
        mem.read(table + 3 * DESC_SIZE, &mut raw).unwrap();
        assert_eq!(
            Descriptor::from(VirtqDesc::read_from_bytes(&raw).unwrap()),
            desc
        );
        let err = d.write_raw_descriptor(&mem, 4, desc);
        assert_eq!(err, Err(DriverError::IndexOutOfRange { index: 4, size: 4 }));

        DriverQueue::write_raw_table(&mem, 0x6000, &[desc, desc]).unwrap();
        mem.read(0x6000 + DESC_SIZE, &mut raw).unwrap();
        assert_eq!(
            Descriptor::from(VirtqDesc::read_from_bytes(&raw).unwrap()),
            desc
        );

        // Published twice, and a head outside the queue once.
        for head in [3, 3, 77] {
            d.publish_raw_head(&mem, head).unwrap();
        }
        assert_eq!(d.avail_idx(), 3);
        let avail = d.addresses().avail_ring;
        let entry = |slot| mem.load_u16(avail + avail_elem_offset(slot), Ordering::Relaxed);
        assert_eq!((entry(0), entry(1), entry(2)), (Ok(3), Ok(3), Ok(77)));

        // Both completions of 3 come back; nothing is freed; a third is not in flight.
        let used = d.addresses().used_ring;
        for (slot, len) in [(0u16, 5u32), (1, 6), (2, 7)] {
            let elem = VirtqUsedElem {
                id: 3.into(),
                len: len.into(),
            };
            mem.write(used + used_elem_offset(slot), elem.as_bytes())
                .unwrap();
        }
        mem.store_u16(used + USED_IDX_OFFSET, 3, Ordering::Relaxed)
            .unwrap();
        assert_eq!(d.pop_used(&mem), Ok(Some((3, 5))));
        assert_eq!(d.pop_used(&mem), Ok(Some((3, 6))));
        assert_eq!(d.pop_used(&mem), Err(DriverError::InvalidUsedId(3)));
        assert_eq!(d.num_free(), 4);
    }

    #[test]
    fn bogus_used_ids_are_reported() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut d = driver(&mem, 4);
        let used = d.addresses().used_ring;
        let elem = VirtqUsedElem {
            id: 70000.into(),
            len: 0.into(),
        };
        mem.write(used + used_elem_offset(0), elem.as_bytes())
            .unwrap();
        mem.store_u16(used + USED_IDX_OFFSET, 1, Ordering::Relaxed)
            .unwrap();
        assert_eq!(d.pop_used(&mem), Err(DriverError::InvalidUsedId(70000)));
        assert_eq!(d.pop_used(&mem), Ok(None), "the bad element was consumed");
        mem.store_u16(used + USED_IDX_OFFSET, 9, Ordering::Relaxed)
            .unwrap();
        let err = DriverError::InvalidUsedIdx {
            used_idx: 9,
            last_used: 1,
        };
        assert_eq!(d.pop_used(&mem), Err(err));
    }
}
