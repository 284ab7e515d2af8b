//! A validated descriptor chain (VIRTIO 1.x, 2.7.5 "The Virtqueue Descriptor Table").
//!
//! [`DescriptorChain::read`] walks a chain through the descriptor table (and at most one
//! indirect table at its end), copying every descriptor exactly once and validating it on the
//! way. What it returns is owned: a hostile driver rewriting the table after validation
//! cannot change what the device acts on.
//!
//! Rules enforced, in the order they are checked for each descriptor:
//! 1. the index is inside its table ([`ChainError::IndexOutOfRange`]);
//! 2. the chain has no more descriptors than the queue size (2.7.5.3.1 "A driver MUST NOT
//!    create a descriptor chain longer than the Queue Size") nor than [`MAX_CHAIN_LEN`]
//!    ([`ChainError::ChainTooLong`]);
//! 3. the descriptor itself is readable from memory;
//! 4. for an indirect descriptor (2.7.5.3): not also `NEXT`, not inside an indirect table,
//!    table length a non-zero multiple of 16, table inside memory;
//! 5. for a buffer: `addr + len` does not overflow and the buffer is inside memory, and no
//!    device-readable buffer follows a device-writable one (2.7.4.2).
//!
//! A `next` loop is reported as [`ChainError::ChainLoop`]: a walk that came back to an index
//! it had visited in the same table before failing rule 2 or the direction rule of 5 (the
//! only two ways an endless walk over unchanged descriptors can end) is a loop. The check
//! runs only on those failures, from the `next` fields already copied, so a valid chain
//! pays nothing for it. It is the same answer as checking every index on the way: the
//! first revisited index is reported.
//!
//! Zero-length buffers are accepted: the spec does not forbid them and Linux drivers never
//! send them, so rejecting them would only add a failure mode. Their address must still be
//! inside memory (as an empty range).

use core::slice::Iter;

use zerocopy::FromBytes;

use crate::descriptor::{Descriptor, VirtqDesc};
use crate::error::ChainError;
use crate::layout::{field_addr, DESC_SIZE};
use crate::memory::{GuestMemory, MemoryError};

/// Most descriptors one chain may have after flattening indirect tables.
pub const MAX_CHAIN_LEN: usize = 256;

/// A validated descriptor chain, copied out of guest memory.
///
/// Indirect tables are flattened: [`descriptors`](Self::descriptors) lists the buffers in
/// chain order, never the descriptor that pointed at an indirect table. All device-readable
/// buffers come first, then all device-writable ones.
#[derive(Clone)]
pub struct DescriptorChain {
    head_index: u16,
    len: u16,
    readable: u16,
    readable_len: u64,
    writable_len: u64,
    descriptors: [Descriptor; MAX_CHAIN_LEN],
}

impl core::fmt::Debug for DescriptorChain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DescriptorChain")
            .field("head_index", &self.head_index)
            .field("descriptors", &self.descriptors())
            .finish()
    }
}

impl PartialEq for DescriptorChain {
    fn eq(&self, other: &Self) -> bool {
        self.head_index == other.head_index && self.descriptors() == other.descriptors()
    }
}

impl Eq for DescriptorChain {}

/// Iterator over a part of a chain (see [`DescriptorChain::readable`]).
pub type Buffers<'a> = core::iter::Copied<Iter<'a, Descriptor>>;

impl DescriptorChain {
    /// An empty chain, to be filled by [`DescriptorChain::read_into`].
    pub fn new() -> Self {
        DescriptorChain {
            head_index: 0,
            len: 0,
            readable: 0,
            readable_len: 0,
            writable_len: 0,
            descriptors: [Descriptor::default(); MAX_CHAIN_LEN],
        }
    }

    /// Reads and validates the chain whose head is descriptor `head` of the table at
    /// `desc_table` holding `queue_size` entries.
    pub fn read<M: GuestMemory + ?Sized>(
        mem: &M,
        desc_table: u64,
        queue_size: u16,
        head: u16,
    ) -> Result<Self, ChainError> {
        let mut chain = DescriptorChain::new();
        chain.read_into(mem, desc_table, queue_size, head)?;
        Ok(chain)
    }

    /// Like [`DescriptorChain::read`], but reuses `self` (no 4 KiB initialisation or move
    /// per chain). On error `self` is left empty.
    pub fn read_into<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        desc_table: u64,
        queue_size: u16,
        head: u16,
    ) -> Result<(), ChainError> {
        self.clear(head);
        let mut walk = Walk {
            chain: self,
            limit: usize::from(queue_size).min(MAX_CHAIN_LEN),
            table_start: 0,
            first_index: head,
            indirect: false,
        };
        let result = walk
            .run(mem, desc_table, queue_size, head)
            .map_err(|e| walk.loop_or(e));
        if result.is_err() {
            self.clear(head);
        }
        result
    }

    fn clear(&mut self, head: u16) {
        self.head_index = head;
        self.len = 0;
        self.readable = 0;
        self.readable_len = 0;
        self.writable_len = 0;
    }

    /// Index of the head descriptor: the id to return through the used ring.
    pub fn head_index(&self) -> u16 {
        self.head_index
    }

    /// All buffers, device-readable ones first.
    pub fn descriptors(&self) -> &[Descriptor] {
        self.descriptors.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The device-readable buffers (driver to device), in chain order.
    pub fn readable(&self) -> Buffers<'_> {
        let all = self.descriptors();
        all.get(..usize::from(self.readable))
            .unwrap_or(&[])
            .iter()
            .copied()
    }

    /// The device-writable buffers (device to driver), in chain order.
    pub fn writable(&self) -> Buffers<'_> {
        let all = self.descriptors();
        all.get(usize::from(self.readable)..)
            .unwrap_or(&[])
            .iter()
            .copied()
    }

    /// Number of device-readable buffers.
    pub fn readable_count(&self) -> usize {
        usize::from(self.readable)
    }

    /// Number of device-writable buffers.
    pub fn writable_count(&self) -> usize {
        usize::from(self.len - self.readable)
    }

    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }
}

impl Default for DescriptorChain {
    fn default() -> Self {
        DescriptorChain::new()
    }
}

/// State of one chain walk: the chain built so far, its length limit, and where the walk
/// of the current table (the queue's, then an indirect one) started.
struct Walk<'c> {
    chain: &'c mut DescriptorChain,
    limit: usize,
    /// Position in the chain of the first buffer copied from the current table.
    table_start: usize,
    /// Index the walk of the current table started at: the head, or 0 in an indirect table.
    first_index: u16,
    /// Whether the current table is an indirect one.
    indirect: bool,
}

impl Walk<'_> {
    /// `e`, or [`ChainError::ChainLoop`] if the walk of the current table revisited an
    /// index before failing with `e`.
    ///
    /// The indices walked in the current table are `first_index` followed by the `next` of
    /// every buffer copied from it; the last of them is the descriptor the walk failed on.
    /// Over unchanged memory an endless walk fails only on its length or on a readable
    /// buffer after a writable one, so only those errors are examined. Quadratic in the
    /// chain length (at most 257 indices), and only on a rejected chain.
    fn loop_or(&self, e: ChainError) -> ChainError {
        if !matches!(
            e,
            ChainError::ChainTooLong { .. } | ChainError::ReadableAfterWritable
        ) {
            return e;
        }
        let copied = self
            .chain
            .descriptors
            .get(self.table_start..usize::from(self.chain.len))
            .unwrap_or(&[]);
        let walked = || core::iter::once(self.first_index).chain(copied.iter().map(|d| d.next));
        for (i, index) in walked().enumerate() {
            if walked().take(i).any(|earlier| earlier == index) {
                return ChainError::ChainLoop {
                    index,
                    indirect: self.indirect,
                };
            }
        }
        e
    }

    fn run<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        desc_table: u64,
        queue_size: u16,
        head: u16,
    ) -> Result<(), ChainError> {
        let mut index = head;
        loop {
            let desc = self.fetch(mem, desc_table, index, u32::from(queue_size))?;
            if desc.is_indirect() {
                if desc.has_next() {
                    return Err(ChainError::IndirectWithNext);
                }
                return self.indirect(mem, &desc);
            }
            self.push(mem, desc)?;
            if !desc.has_next() {
                return Ok(());
            }
            index = desc.next;
        }
    }

    /// Copies entry `index` of the table at `table` holding `entries` entries. Every buffer
    /// pushed counts towards the length limit, which bounds any `next` loop; the one
    /// descriptor that points at an indirect table is not a buffer and ends the outer walk.
    fn fetch<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        table: u64,
        index: u16,
        entries: u32,
    ) -> Result<Descriptor, ChainError> {
        if u32::from(index) >= entries {
            return Err(ChainError::IndexOutOfRange {
                index,
                limit: entries,
            });
        }
        if usize::from(self.chain.len) >= self.limit {
            return Err(ChainError::ChainTooLong {
                limit: self.limit as u32,
            });
        }
        let addr =
            field_addr(table, u64::from(index) * DESC_SIZE).map_err(ChainError::OutOfMemory)?;
        let mut raw = [0u8; DESC_SIZE as usize];
        mem.read(addr, &mut raw).map_err(ChainError::OutOfMemory)?;
        let desc = VirtqDesc::read_from_bytes(&raw).map_err(|_| {
            ChainError::OutOfMemory(MemoryError {
                addr,
                len: DESC_SIZE,
            })
        })?;
        Ok(desc.into())
    }

    /// Flattens the indirect table `desc` points at into the chain (2.7.5.3).
    fn indirect<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        desc: &Descriptor,
    ) -> Result<(), ChainError> {
        if desc.len == 0 || u64::from(desc.len) % DESC_SIZE != 0 {
            return Err(ChainError::IndirectBadLength { len: desc.len });
        }
        check_buffer(mem, desc)?;
        let entries = desc.len / DESC_SIZE as u32;
        self.table_start = usize::from(self.chain.len);
        self.first_index = 0;
        self.indirect = true;
        let mut index = 0u16;
        loop {
            let entry = self.fetch(mem, desc.addr, index, entries)?;
            if entry.is_indirect() {
                return Err(ChainError::NestedIndirect);
            }
            self.push(mem, entry)?;
            if !entry.has_next() {
                return Ok(());
            }
            index = entry.next;
        }
    }

    /// Appends a buffer descriptor after checking its range and its direction.
    fn push<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        desc: Descriptor,
    ) -> Result<(), ChainError> {
        check_buffer(mem, &desc)?;
        let chain = &mut *self.chain;
        let writable_seen = chain.readable != chain.len;
        if writable_seen && !desc.is_device_writable() {
            return Err(ChainError::ReadableAfterWritable);
        }
        let too_long = ChainError::ChainTooLong {
            limit: MAX_CHAIN_LEN as u32,
        };
        *chain
            .descriptors
            .get_mut(usize::from(chain.len))
            .ok_or(too_long)? = desc;
        chain.len += 1;
        if desc.is_device_writable() {
            chain.writable_len += u64::from(desc.len);
        } else {
            chain.readable += 1;
            chain.readable_len += u64::from(desc.len);
        }
        Ok(())
    }
}

/// Checks that `desc`'s bytes neither wrap around nor leave memory.
fn check_buffer<M: GuestMemory + ?Sized>(mem: &M, desc: &Descriptor) -> Result<(), ChainError> {
    let len = u64::from(desc.len);
    if desc.addr.checked_add(len).is_none() {
        return Err(ChainError::AddressOverflow {
            addr: desc.addr,
            len: desc.len,
        });
    }
    if !mem.check_range(desc.addr, len) {
        return Err(ChainError::OutOfMemory(MemoryError {
            addr: desc.addr,
            len,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::{
        VIRTQ_DESC_F_INDIRECT as I, VIRTQ_DESC_F_NEXT as N, VIRTQ_DESC_F_WRITE as W,
    };
    use crate::memory::SliceMemory;
    use crate::testing::{bytes, put, MEM_SIZE};

    const TABLE: u64 = 0x1000;
    const IND: u64 = 0x2000;
    const SIZE: u16 = 16;

    fn read(mem: &SliceMemory<'_>, head: u16) -> Result<DescriptorChain, ChainError> {
        DescriptorChain::read(mem, TABLE, SIZE, head)
    }

    #[test]
    fn direct_chain_is_split_into_readable_and_writable() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 3, (0x4000, 16, N, 7));
        put(&mem, TABLE, 7, (0x5000, 100, N | W, 1));
        put(&mem, TABLE, 1, (0x6000, 1, W, 0));
        let chain = read(&mem, 3).unwrap();
        assert_eq!(chain.head_index(), 3);
        assert_eq!(chain.descriptors().len(), 3);
        assert_eq!(
            chain
                .readable()
                .map(|d| d.addr)
                .collect::<std::vec::Vec<_>>(),
            [0x4000]
        );
        assert_eq!(
            chain
                .writable()
                .map(|d| d.addr)
                .collect::<std::vec::Vec<_>>(),
            [0x5000, 0x6000]
        );
        assert_eq!((chain.readable_len(), chain.writable_len()), (16, 101));
        assert_eq!((chain.readable_count(), chain.writable_count()), (1, 2));
    }

    #[test]
    fn indirect_table_is_flattened_after_direct_descriptors() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (0x4000, 8, N, 5));
        put(&mem, TABLE, 5, (IND, 32, I | W, 0)); // WRITE on the table descriptor is ignored
        put(&mem, IND, 0, (0x5000, 8, N, 1));
        put(&mem, IND, 1, (0x6000, 512, W, 0));
        let chain = read(&mem, 0).unwrap();
        let addrs: std::vec::Vec<_> = chain.descriptors().iter().map(|d| d.addr).collect();
        assert_eq!(addrs, [0x4000, 0x5000, 0x6000]);
        assert_eq!((chain.readable_len(), chain.writable_len()), (16, 512));
    }

    #[test]
    fn zero_length_buffers_are_accepted() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (MEM_SIZE as u64, 0, 0, 0));
        assert_eq!(read(&mem, 0).unwrap().readable_len(), 0);
    }

    #[test]
    fn next_outside_table_is_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (0x4000, 8, N, SIZE));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::IndexOutOfRange {
                index: SIZE,
                limit: 16
            })
        );
        assert_eq!(
            read(&mem, 99),
            Err(ChainError::IndexOutOfRange {
                index: 99,
                limit: 16
            })
        );
    }

    #[test]
    fn next_outside_indirect_table_is_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (IND, 32, I, 0));
        put(&mem, IND, 0, (0x4000, 8, N, 2));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::IndexOutOfRange { index: 2, limit: 2 })
        );
    }

    #[test]
    fn loops_are_reported_as_loops() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let direct = |index| {
            Err(ChainError::ChainLoop {
                index,
                indirect: false,
            })
        };
        // 0 -> 1 -> 0: would run into the length limit.
        put(&mem, TABLE, 0, (0x4000, 8, N, 1));
        put(&mem, TABLE, 1, (0x4000, 8, N, 0));
        assert_eq!(read(&mem, 0), direct(0));
        // A loop into the middle of the chain: 3 -> 4 -> 5 -> 4.
        put(&mem, TABLE, 3, (0x4000, 8, N, 4));
        put(&mem, TABLE, 4, (0x4000, 8, N, 5));
        put(&mem, TABLE, 5, (0x4000, 8, N, 4));
        assert_eq!(read(&mem, 3), direct(4));
        // A loop through a writable and then a readable buffer: would fail on the order.
        put(&mem, TABLE, 6, (0x4000, 8, N, 7));
        put(&mem, TABLE, 7, (0x5000, 8, W | N, 6));
        assert_eq!(read(&mem, 6), direct(6));
        // Inside an indirect table.
        put(&mem, TABLE, 2, (IND, 32, I, 0));
        put(&mem, IND, 0, (0x4000, 8, N, 1));
        put(&mem, IND, 1, (0x4000, 8, N, 1));
        let looped = ChainError::ChainLoop {
            index: 1,
            indirect: true,
        };
        assert_eq!(read(&mem, 2), Err(looped));
        // The same shape in a queue big enough for no limit to bind before MAX_CHAIN_LEN.
        assert_eq!(DescriptorChain::read(&mem, TABLE, 1024, 0), direct(0));
    }

    #[test]
    fn order_errors_without_a_revisit_are_not_loops() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        // 0 (writable) -> 1 (readable) -> 0: the order fails before the walk comes back.
        put(&mem, TABLE, 0, (0x4000, 8, W | N, 1));
        put(&mem, TABLE, 1, (0x5000, 8, N, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::ReadableAfterWritable));
    }

    #[test]
    fn indirect_chain_longer_than_queue_is_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (IND, 17 * 16, I, 0));
        for i in 0..17 {
            put(&mem, IND, i, (0x4000, 8, N, i + 1));
        }
        put(&mem, IND, 16, (0x4000, 8, 0, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::ChainTooLong { limit: 16 }));
        // The same table is fine in a queue of 32.
        assert_eq!(
            DescriptorChain::read(&mem, TABLE, 32, 0)
                .unwrap()
                .descriptors()
                .len(),
            17
        );
    }

    #[test]
    fn chain_capacity_bounds_big_queues() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (IND, 300 * 16, I, 0));
        for i in 0..300 {
            put(&mem, IND, i, (0x100, 1, N, i + 1));
        }
        let err = DescriptorChain::read(&mem, TABLE, 1024, 0);
        assert_eq!(
            err,
            Err(ChainError::ChainTooLong {
                limit: MAX_CHAIN_LEN as u32
            })
        );
    }

    #[test]
    fn bad_indirect_lengths_are_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (IND, 0, I, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::IndirectBadLength { len: 0 }));
        put(&mem, TABLE, 0, (IND, 24, I, 0));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::IndirectBadLength { len: 24 })
        );
    }

    #[test]
    fn nested_indirect_is_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (IND, 16, I, 0));
        put(&mem, IND, 0, (IND, 16, I, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::NestedIndirect));
    }

    #[test]
    fn indirect_with_next_is_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (IND, 16, I | N, 1));
        put(&mem, IND, 0, (0x4000, 8, 0, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::IndirectWithNext));
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (0x4000, 8, W | N, 1));
        put(&mem, TABLE, 1, (0x5000, 8, 0, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::ReadableAfterWritable));
        // Across the boundary into an indirect table too.
        put(&mem, TABLE, 1, (IND, 16, I, 0));
        put(&mem, IND, 0, (0x5000, 8, 0, 0));
        assert_eq!(read(&mem, 0), Err(ChainError::ReadableAfterWritable));
    }

    #[test]
    fn wrapping_buffers_are_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (u64::MAX - 3, 8, 0, 0));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::AddressOverflow {
                addr: u64::MAX - 3,
                len: 8
            })
        );
        put(&mem, TABLE, 0, (u64::MAX - 15, 32, I, 0));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::AddressOverflow {
                addr: u64::MAX - 15,
                len: 32
            })
        );
    }

    #[test]
    fn buffers_outside_memory_are_rejected() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        let end = MEM_SIZE as u64;
        put(&mem, TABLE, 0, (end - 4, 8, 0, 0));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::OutOfMemory(MemoryError {
                addr: end - 4,
                len: 8
            }))
        );
        put(&mem, TABLE, 0, (end - 16, 32, I, 0));
        assert_eq!(
            read(&mem, 0),
            Err(ChainError::OutOfMemory(MemoryError {
                addr: end - 16,
                len: 32
            }))
        );
        // The descriptor table itself outside memory.
        let err = DescriptorChain::read(&mem, end - 8, SIZE, 0);
        assert_eq!(
            err,
            Err(ChainError::OutOfMemory(MemoryError {
                addr: end - 8,
                len: 16
            }))
        );
        let err = DescriptorChain::read(&mem, u64::MAX - 8, SIZE, 1);
        assert!(matches!(err, Err(ChainError::OutOfMemory(_))));
    }

    #[test]
    fn descriptors_are_copied_once() {
        let mut b = bytes();
        let mem = SliceMemory::new(&mut b);
        put(&mem, TABLE, 0, (0x4000, 8, 0, 0));
        let chain = read(&mem, 0).unwrap();
        put(&mem, TABLE, 0, (u64::MAX, 8, 0, 0));
        assert_eq!(chain.descriptors()[0].addr, 0x4000);
    }
}
