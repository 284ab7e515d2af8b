//! The device half of a split virtqueue (VIRTIO 1.x, 2.7).
//!
//! [`Queue`] is plain state, as configured through the transport (virtio-pci
//! `queue_size`, `queue_desc`, `queue_driver`, `queue_device`, `queue_enable`). Guest memory is
//! passed to every call that touches the rings, so the same queue runs over a VMM's guest
//! memory or over a test buffer.

use core::sync::atomic::{fence, Ordering};

use zerocopy::IntoBytes;

use crate::chain::DescriptorChain;
use crate::error::QueueError;
use crate::event::vring_need_event;
use crate::layout::{
    avail_elem_offset, avail_event_offset, avail_ring_size, desc_table_size, field_addr,
    used_elem_offset, used_event_offset, used_ring_size, VirtqUsedElem, AVAIL_FLAGS_OFFSET,
    AVAIL_IDX_OFFSET, AVAIL_RING_ALIGN, DESC_TABLE_ALIGN, MAX_QUEUE_SIZE, USED_FLAGS_OFFSET,
    USED_IDX_OFFSET, USED_RING_ALIGN, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY,
};
use crate::memory::GuestMemory;

/// Device-side state of one split virtqueue.
///
/// Check [`Queue::is_valid`] when the driver enables the queue; on an invalid configuration
/// the other operations return errors, never panic, but may touch memory the driver did not
/// mean to hand over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    /// Used `idx` at the last [`Queue::needs_notification`]; `None` when unknown (after a
    /// state restore), which makes the next decision notify.
    signalled_used: Option<u16>,
}

impl Queue {
    /// A queue in its reset state whose size may be at most `max_size` (the transport's
    /// maximum, e.g. virtio-pci `queue_size` on reset). The size starts at `max_size`.
    pub fn new(max_size: u16) -> Self {
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: 0,
            next_used: 0,
            event_idx_enabled: false,
            signalled_used: Some(0),
        }
    }

    /// Back to the state of [`Queue::new`] (device reset, 2.1.2 / 4.1.4.3.2 `queue_reset`).
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Largest size the driver may choose.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// Queue size: number of descriptors and ring entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Sets the queue size (virtio-pci `queue_size`). Validity is checked by [`Queue::is_valid`].
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }

    /// Whether the driver enabled the queue (virtio-pci `queue_enable`).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Enables or disables the queue (virtio-pci `queue_enable`).
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Address of the Descriptor Table.
    pub fn desc_table_address(&self) -> u64 {
        self.desc_table
    }

    /// Sets the Descriptor Table address (virtio-pci `queue_desc`).
    pub fn set_desc_table_address(&mut self, addr: u64) {
        self.desc_table = addr;
    }

    /// Address of the Available Ring.
    pub fn avail_ring_address(&self) -> u64 {
        self.avail_ring
    }

    /// Sets the Available Ring address (virtio-pci `queue_driver`).
    pub fn set_avail_ring_address(&mut self, addr: u64) {
        self.avail_ring = addr;
    }

    /// Address of the Used Ring.
    pub fn used_ring_address(&self) -> u64 {
        self.used_ring
    }

    /// Sets the Used Ring address (virtio-pci `queue_device`).
    pub fn set_used_ring_address(&mut self, addr: u64) {
        self.used_ring = addr;
    }

    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn event_idx_enabled(&self) -> bool {
        self.event_idx_enabled
    }

    /// Records whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx_enabled = enabled;
    }

    /// Avail ring index of the next chain [`Queue::pop`] will return (free running).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Restores the next avail index (e.g. migration).
    pub fn set_next_avail(&mut self, idx: u16) {
        self.next_avail = idx;
    }

    /// Used ring index the next [`Queue::add_used`] will fill (free running).
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Restores the next used index (e.g. migration). The next notification decision will
    /// notify, since what the driver has seen is unknown.
    pub fn set_next_used(&mut self, idx: u16) {
        self.next_used = idx;
        self.signalled_used = None;
    }

    /// Whether the configuration lets the device use the queue (2.7 "Split Virtqueues"):
    /// size a power of two in `1..=max_size`, areas aligned (desc 16, avail 2, used 4) and
    /// entirely inside `mem`.
    pub fn is_valid<M: GuestMemory + ?Sized>(&self, mem: &M) -> bool {
        let size = self.size;
        size != 0
            && size.is_power_of_two()
            && size <= self.max_size
            && size <= MAX_QUEUE_SIZE
            && area_valid(
                mem,
                self.desc_table,
                DESC_TABLE_ALIGN,
                desc_table_size(size),
            )
            && area_valid(
                mem,
                self.avail_ring,
                AVAIL_RING_ALIGN,
                avail_ring_size(size),
            )
            && area_valid(mem, self.used_ring, USED_RING_ALIGN, used_ring_size(size))
    }

    fn check_ready(&self) -> Result<(), QueueError> {
        if !self.ready || self.size == 0 {
            return Err(QueueError::NotReady);
        }
        Ok(())
    }

    /// Number of chains the driver has made available that [`Queue::pop`] has not returned.
    ///
    /// Fails with [`QueueError::InvalidAvailIdx`] if the driver claims more than a ring full.
    pub fn avail_pending<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<u16, QueueError> {
        self.check_ready()?;
        // Acquire: pairs with the driver's release store of avail `idx` (2.7.13.2 "Updating
        // idx"), so the ring entries and descriptors written before it are visible to the
        // reads that follow.
        let avail_idx = mem.load_u16(
            field_addr(self.avail_ring, AVAIL_IDX_OFFSET)?,
            Ordering::Acquire,
        )?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending > self.size {
            return Err(QueueError::InvalidAvailIdx {
                avail_idx,
                next_avail: self.next_avail,
            });
        }
        Ok(pending)
    }

    /// Takes the next available chain, fully validated and copied out of guest memory.
    ///
    /// - `Ok(None)`: the ring is empty.
    /// - [`QueueError::InvalidAvailIdx`], [`QueueError::Memory`], [`QueueError::NotReady`]:
    ///   ring-level failures; nothing is consumed and the device should set
    ///   `DEVICE_NEEDS_RESET`.
    /// - [`QueueError::InvalidHead`]: the avail entry is consumed but its head is not a
    ///   descriptor index, so it cannot be completed; the device should set
    ///   `DEVICE_NEEDS_RESET`.
    /// - [`QueueError::BadChain`]: the avail entry is consumed; the device should complete
    ///   `head` through [`Queue::add_used`] (length 0, device-specific error status if any)
    ///   and carry on.
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        let mut chain = DescriptorChain::new();
        Ok(self.pop_into(mem, &mut chain)?.then_some(chain))
    }

    /// [`Queue::pop`] into a caller-owned chain, for hot paths that reuse one chain buffer.
    /// Returns whether a chain was read; errors and consumption exactly as [`Queue::pop`].
    pub fn pop_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        chain: &mut DescriptorChain,
    ) -> Result<bool, QueueError> {
        if self.avail_pending(mem)? == 0 {
            return Ok(false);
        }
        let slot = self.next_avail % self.size;
        // Relaxed: ordered after the acquire load of avail `idx` in `avail_pending`.
        let head_addr = field_addr(self.avail_ring, avail_elem_offset(slot))?;
        let head = mem.load_u16(head_addr, Ordering::Relaxed)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        if head >= self.size {
            return Err(QueueError::InvalidHead {
                head,
                size: self.size,
            });
        }
        chain
            .read_into(mem, self.desc_table, self.size, head)
            .map_err(|reason| QueueError::BadChain { head, reason })?;
        Ok(true)
    }

    /// Writes a used element for chain `head` with `len` bytes written, without publishing it
    /// to the driver. Publish a batch with [`Queue::publish_used`].
    pub fn push_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.check_ready()?;
        if head >= self.size {
            return Err(QueueError::InvalidUsedHead {
                head,
                size: self.size,
            });
        }
        let slot = self.next_used % self.size;
        let elem = VirtqUsedElem {
            id: u32::from(head).into(),
            len: len.into(),
        };
        mem.write(
            field_addr(self.used_ring, used_elem_offset(slot))?,
            elem.as_bytes(),
        )?;
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Makes every element pushed so far visible to the driver by storing used `idx`.
    pub fn publish_used<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), QueueError> {
        self.check_ready()?;
        // Release: the used elements (and the data the device wrote into the buffers) must
        // be visible before the driver can observe the new `idx` (2.7.8 "The Virtqueue Used
        // Ring"); pairs with the driver's acquire load of used `idx`.
        mem.store_u16(
            field_addr(self.used_ring, USED_IDX_OFFSET)?,
            self.next_used,
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Pushes a used element for chain `head` with `len` bytes written **and publishes it**
    /// (stores used `idx`): [`Queue::push_used`] followed by [`Queue::publish_used`].
    ///
    /// The name is the one rust-vmm's `virtio-queue` gives the same operation. To complete a
    /// batch with one store of used `idx` (and one [`Queue::needs_notification`] decision),
    /// call `push_used` for each chain and `publish_used` once instead.
    #[doc(alias = "push_and_publish_used")]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.push_used(mem, head, len)?;
        self.publish_used(mem)
    }

    /// Whether the driver wants an interrupt for the used entries published since the last
    /// call (2.7.7 "Used Buffer Notification Suppression").
    ///
    /// With `VIRTIO_F_EVENT_IDX`: notify iff the published range `[last, next_used)` crossed
    /// `used_event` ([`vring_need_event`]). Without: notify iff something was published and
    /// the driver did not set `VIRTQ_AVAIL_F_NO_INTERRUPT`. Call it once per published batch.
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.check_ready()?;
        let new = self.next_used;
        let old = self.signalled_used.replace(new);
        // SeqCst fence: our store of used `idx` must be ordered before the load of
        // `used_event`/`flags` below. The driver does the mirror image (store `used_event`,
        // fence, load used `idx`); with both fences at least one side sees the other's
        // store, so an interrupt cannot be lost. Release/acquire alone do not order a store
        // before a later load.
        fence(Ordering::SeqCst);
        if self.event_idx_enabled {
            let used_event = mem.load_u16(
                field_addr(self.avail_ring, used_event_offset(self.size))?,
                Ordering::Relaxed,
            )?;
            return Ok(match old {
                Some(old) => vring_need_event(used_event, new, old),
                None => true,
            });
        }
        let flags = mem.load_u16(
            field_addr(self.avail_ring, AVAIL_FLAGS_OFFSET)?,
            Ordering::Relaxed,
        )?;
        Ok(old != Some(new) && flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }

    /// Asks the driver to kick (`enable`) or not to kick (2.7.10 "Available Buffer
    /// Notification Suppression").
    ///
    /// With `VIRTIO_F_EVENT_IDX`, enabling writes `avail_event = next_avail` (kick when the
    /// next chain is made available); disabling writes nothing, since not moving
    /// `avail_event` forward already suppresses kicks after at most one. Without it, the
    /// `VIRTQ_USED_F_NO_NOTIFY` flag is cleared or set. Use [`Queue::enable_notification`]
    /// when re-enabling before going to sleep.
    pub fn set_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        enable: bool,
    ) -> Result<(), QueueError> {
        self.check_ready()?;
        if self.event_idx_enabled {
            if enable {
                let addr = field_addr(self.used_ring, avail_event_offset(self.size))?;
                mem.store_u16(addr, self.next_avail, Ordering::Relaxed)?;
            }
            return Ok(());
        }
        let flags = if enable { 0 } else { VIRTQ_USED_F_NO_NOTIFY };
        mem.store_u16(
            field_addr(self.used_ring, USED_FLAGS_OFFSET)?,
            flags,
            Ordering::Relaxed,
        )?;
        Ok(())
    }

    /// Re-enables kicks and reports whether chains arrived meanwhile (`true`: keep
    /// processing instead of sleeping).
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        self.set_notification(mem, true)?;
        // SeqCst fence: the store enabling kicks must be ordered before the re-check of
        // avail `idx`. The driver stores avail `idx`, fences, then loads `avail_event` /
        // `flags`; with a fence on both sides either it sees kicks enabled and kicks, or we
        // see its new `idx` here. Without the fence, both loads could see stale values and
        // the chain would sit unnoticed.
        fence(Ordering::SeqCst);
        Ok(self.avail_pending(mem)? != 0)
    }
}

/// Whether an area of `len` bytes at `addr` is aligned to `align` and inside `mem`.
fn area_valid<M: GuestMemory + ?Sized>(mem: &M, addr: u64, align: u64, len: u64) -> bool {
    addr % align == 0 && mem.check_range(addr, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::VIRTQ_DESC_F_NEXT;
    use crate::driver::DriverQueue;
    use crate::error::ChainError;
    use crate::layout::{RingAddresses, RingLayout};
    use crate::memory::{MemoryError, SliceMemory};
    use crate::testing::{bytes, put, MEM_SIZE};

    const SIZE: u16 = 8;
    const BASE: u64 = 0x1000;

    fn addrs() -> RingAddresses {
        RingLayout::new(SIZE).unwrap().addresses(BASE)
    }

    fn queue(event_idx: bool) -> Queue {
        let a = addrs();
        let mut q = Queue::new(SIZE);
        q.set_desc_table_address(a.desc_table);
        q.set_avail_ring_address(a.avail_ring);
        q.set_used_ring_address(a.used_ring);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn pair(mem: &SliceMemory<'_>, event_idx: bool) -> (DriverQueue, Queue) {
        (
            DriverQueue::new(mem, SIZE, addrs(), event_idx).unwrap(),
            queue(event_idx),
        )
    }

    #[test]
    fn validity_checks_size_alignment_and_ranges() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let q = queue(false);
        assert!(q.is_valid(&mem));
        for size in [0, 3, 16] {
            let mut bad = q.clone();
            bad.set_size(size);
            assert!(!bad.is_valid(&mem), "size {size}");
        }
        let mut bad = q.clone();
        bad.set_desc_table_address(BASE + 8);
        assert!(!bad.is_valid(&mem));
        let mut bad = q.clone();
        bad.set_avail_ring_address(q.avail_ring_address() + 1);
        assert!(!bad.is_valid(&mem));
        let mut bad = q.clone();
        bad.set_used_ring_address(q.used_ring_address() + 2);
        assert!(!bad.is_valid(&mem));
        let mut bad = q.clone();
        bad.set_used_ring_address(MEM_SIZE as u64 - 16);
        assert!(!bad.is_valid(&mem));
    }

    #[test]
    fn not_ready_queue_refuses_work() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut q = queue(false);
        q.set_ready(false);
        assert_eq!(q.pop(&mem), Err(QueueError::NotReady));
        assert_eq!(q.add_used(&mem, 0, 0), Err(QueueError::NotReady));
        q.set_ready(true);
        q.set_size(0);
        assert_eq!(q.pop(&mem), Err(QueueError::NotReady));
    }

    #[test]
    fn pop_returns_published_chains_in_order() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, false);
        assert_eq!(q.pop(&mem), Ok(None));
        let h1 = d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        let h2 = d.add(&mem, &[], &[(0x9000, 8), (0xa000, 8)]).unwrap();
        assert_eq!(q.avail_pending(&mem), Ok(2));
        assert_eq!(q.pop(&mem).unwrap().unwrap().head_index(), h1);
        let c2 = q.pop(&mem).unwrap().unwrap();
        assert_eq!((c2.head_index(), c2.writable_len()), (h2, 16));
        assert_eq!(q.pop(&mem), Ok(None));
        assert_eq!(q.next_avail(), 2);
    }

    #[test]
    fn avail_idx_too_far_ahead_is_a_ring_error() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut q = queue(false);
        let idx = q.avail_ring_address() + AVAIL_IDX_OFFSET;
        mem.store_u16(idx, SIZE + 1, Ordering::Relaxed).unwrap();
        let err = QueueError::InvalidAvailIdx {
            avail_idx: SIZE + 1,
            next_avail: 0,
        };
        assert_eq!(q.pop(&mem), Err(err));
        assert_eq!(q.next_avail(), 0, "nothing consumed");
        // Exactly a full ring is fine (the chains are all zero-length at address 0).
        mem.store_u16(idx, SIZE, Ordering::Relaxed).unwrap();
        assert_eq!(q.avail_pending(&mem), Ok(SIZE));
    }

    #[test]
    fn bad_head_and_bad_chain_consume_the_entry() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut q = queue(false);
        let avail = q.avail_ring_address();
        mem.store_u16(avail + avail_elem_offset(0), 9, Ordering::Relaxed)
            .unwrap();
        mem.store_u16(avail + avail_elem_offset(1), 2, Ordering::Relaxed)
            .unwrap();
        mem.store_u16(avail + AVAIL_IDX_OFFSET, 2, Ordering::Relaxed)
            .unwrap();
        put(
            &mem,
            q.desc_table_address(),
            2,
            (0x8000, 4, VIRTQ_DESC_F_NEXT, 100),
        );
        assert_eq!(
            q.pop(&mem),
            Err(QueueError::InvalidHead {
                head: 9,
                size: SIZE
            })
        );
        let reason = ChainError::IndexOutOfRange {
            index: 100,
            limit: u32::from(SIZE),
        };
        assert_eq!(q.pop(&mem), Err(QueueError::BadChain { head: 2, reason }));
        assert_eq!(q.next_avail(), 2);
        // The bad chain's head can be completed.
        q.add_used(&mem, 2, 0).unwrap();
        assert_eq!(
            q.add_used(&mem, 9, 0),
            Err(QueueError::InvalidUsedHead {
                head: 9,
                size: SIZE
            })
        );
    }

    #[test]
    fn rings_outside_memory_are_errors_not_panics() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let mut q = queue(false);
        q.set_avail_ring_address(u64::MAX - 1);
        q.set_used_ring_address(u64::MAX - 1);
        assert!(matches!(
            q.pop(&mem),
            Err(QueueError::Memory(MemoryError { .. }))
        ));
        assert!(matches!(q.add_used(&mem, 0, 0), Err(QueueError::Memory(_))));
        assert!(matches!(
            q.needs_notification(&mem),
            Err(QueueError::Memory(_))
        ));
        assert!(matches!(
            q.set_notification(&mem, false),
            Err(QueueError::Memory(_))
        ));
    }

    #[test]
    fn batch_is_published_with_one_idx_store() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, false);
        let h1 = d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        let h2 = d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        q.push_used(&mem, h2, 1).unwrap();
        q.push_used(&mem, h1, 2).unwrap();
        assert_eq!(d.pop_used(&mem), Ok(None), "not yet published");
        q.publish_used(&mem).unwrap();
        assert!(q.needs_notification(&mem).unwrap());
        assert!(!q.needs_notification(&mem).unwrap(), "nothing new since");
        assert_eq!(d.pop_used(&mem), Ok(Some((h2, 1))));
        assert_eq!(d.pop_used(&mem), Ok(Some((h1, 2))));
    }

    #[test]
    fn interrupts_follow_the_no_interrupt_flag() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, false);
        let h = d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        d.disable_interrupts(&mem).unwrap();
        q.add_used(&mem, h, 0).unwrap();
        assert!(!q.needs_notification(&mem).unwrap());
        assert!(
            d.enable_interrupts(&mem).unwrap(),
            "completion already pending"
        );
    }

    #[test]
    fn interrupts_follow_used_event() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, true);
        let heads: std::vec::Vec<u16> = (0..4)
            .map(|_| d.add(&mem, &[(0x8000, 4)], &[]).unwrap())
            .collect();
        d.set_used_event(&mem, 2).unwrap(); // interrupt once used idx passes 2
        q.add_used(&mem, heads[0], 0).unwrap();
        assert!(!q.needs_notification(&mem).unwrap());
        q.add_used(&mem, heads[1], 0).unwrap();
        assert!(!q.needs_notification(&mem).unwrap());
        q.add_used(&mem, heads[2], 0).unwrap();
        q.add_used(&mem, heads[3], 0).unwrap();
        assert!(q.needs_notification(&mem).unwrap());
    }

    #[test]
    fn kick_suppression_writes_flag_or_avail_event() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, false);
        q.set_notification(&mem, false).unwrap();
        d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        assert!(!d.should_kick(&mem));
        assert!(
            q.enable_notification(&mem).unwrap(),
            "a chain arrived meanwhile"
        );
        d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        assert!(d.should_kick(&mem));

        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, true);
        assert!(!q.enable_notification(&mem).unwrap());
        d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        assert!(d.should_kick(&mem), "avail_event 0 crossed");
        d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        assert!(!d.should_kick(&mem), "device has not re-armed");
        q.pop(&mem).unwrap();
        assert!(q.enable_notification(&mem).unwrap());
        let event = q.used_ring_address() + avail_event_offset(SIZE);
        assert_eq!(mem.load_u16(event, Ordering::Relaxed), Ok(1));
    }

    #[test]
    fn pop_into_reuses_the_chain_and_empties_it_on_error() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, false);
        let mut chain = DescriptorChain::new();
        let h = d.add(&mem, &[(0x8000, 4)], &[(0x9000, 4)]).unwrap();
        assert_eq!(q.pop_into(&mem, &mut chain), Ok(true));
        assert_eq!((chain.head_index(), chain.descriptors().len()), (h, 2));
        let h = d.add(&mem, &[(u64::MAX, 4)], &[]).unwrap();
        assert!(
            matches!(q.pop_into(&mem, &mut chain), Err(QueueError::BadChain { head, .. }) if head == h)
        );
        assert!(chain.descriptors().is_empty());
        assert_eq!((chain.readable_len(), chain.writable_len()), (0, 0));
        assert_eq!(q.pop_into(&mem, &mut chain), Ok(false));
    }

    #[test]
    fn reset_forgets_everything_but_max_size() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let (mut d, mut q) = pair(&mem, true);
        d.add(&mem, &[(0x8000, 4)], &[]).unwrap();
        q.pop(&mem).unwrap();
        q.reset();
        assert_eq!(q, Queue::new(SIZE));
        assert!(!q.ready());
    }
}
