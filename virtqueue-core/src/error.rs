//! Error types of the device half ([`ChainError`], [`QueueError`]) and the driver half
//! ([`DriverError`]).

use core::fmt;

use crate::memory::MemoryError;

/// Why a descriptor chain was rejected (VIRTIO 1.x, 2.7.5 "The Virtqueue Descriptor Table").
///
/// Every variant is something a buggy or hostile driver can cause; none of them is a bug of
/// the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A `next` field points outside the descriptor table (or outside the indirect table).
    IndexOutOfRange {
        /// The offending descriptor index.
        index: u16,
        /// Number of entries of the table it indexes.
        limit: u32,
    },
    /// The chain has more descriptors than the queue size or than
    /// [`MAX_CHAIN_LEN`](crate::chain::MAX_CHAIN_LEN) allows, without coming back to a
    /// descriptor it had already visited (that is [`ChainError::ChainLoop`]).
    ChainTooLong {
        /// The maximum number of descriptors this chain could have had.
        limit: u32,
    },
    /// The walk came back to a descriptor it had already visited: the `next` fields form a
    /// loop, so the chain never ends (2.7.5.3.1 bounds a chain by the queue size). Reported
    /// instead of the [`ChainTooLong`](ChainError::ChainTooLong) or
    /// [`ReadableAfterWritable`](ChainError::ReadableAfterWritable) the endless walk runs
    /// into, whatever the loop's shape.
    ChainLoop {
        /// The descriptor index the walk came back to.
        index: u16,
        /// Whether `index` is an entry of the indirect table rather than of the queue's
        /// descriptor table.
        indirect: bool,
    },
    /// An indirect table whose length is zero or not a multiple of 16 bytes (2.7.5.3).
    IndirectBadLength {
        /// The `len` of the descriptor that refers to the table.
        len: u32,
    },
    /// A descriptor inside an indirect table has `VIRTQ_DESC_F_INDIRECT` set (2.7.5.3.1).
    NestedIndirect,
    /// A descriptor has both `VIRTQ_DESC_F_INDIRECT` and `VIRTQ_DESC_F_NEXT` set (2.7.5.3.1).
    IndirectWithNext,
    /// A device-readable descriptor follows a device-writable one (2.7.4.2).
    ReadableAfterWritable,
    /// `addr + len` of a buffer or indirect table overflows 64 bits.
    AddressOverflow {
        /// Start of the buffer.
        addr: u64,
        /// Length of the buffer.
        len: u32,
    },
    /// A buffer, an indirect table or a descriptor is not (entirely) inside guest memory.
    OutOfMemory(MemoryError),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::IndexOutOfRange { index, limit } => {
                write!(
                    f,
                    "descriptor index {index} is outside a table of {limit} entries"
                )
            }
            ChainError::ChainTooLong { limit } => {
                write!(f, "descriptor chain longer than {limit} descriptors")
            }
            ChainError::ChainLoop { index, indirect } => {
                let table = if *indirect {
                    "indirect table"
                } else {
                    "descriptor table"
                };
                write!(
                    f,
                    "descriptor chain loops back to entry {index} of the {table}"
                )
            }
            ChainError::IndirectBadLength { len } => {
                write!(
                    f,
                    "indirect table length {len} is zero or not a multiple of 16"
                )
            }
            ChainError::NestedIndirect => write!(f, "indirect descriptor inside an indirect table"),
            ChainError::IndirectWithNext => {
                write!(
                    f,
                    "descriptor has both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT"
                )
            }
            ChainError::ReadableAfterWritable => {
                write!(f, "device-readable descriptor after a device-writable one")
            }
            ChainError::AddressOverflow { addr, len } => {
                write!(
                    f,
                    "buffer of {len} bytes at {addr:#x} wraps around the address space"
                )
            }
            ChainError::OutOfMemory(e) => write!(f, "descriptor chain: {e}"),
        }
    }
}

impl core::error::Error for ChainError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ChainError::OutOfMemory(e) => Some(e),
            _ => None,
        }
    }
}

/// Errors of the device-side [`Queue`](crate::queue::Queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is not ready or its size is zero.
    NotReady,
    /// The avail `idx` moved more than the queue size ahead of the device (2.7.13.3:
    /// the driver published more buffers than the ring holds). Nothing was consumed; the
    /// device should set `DEVICE_NEEDS_RESET`.
    InvalidAvailIdx {
        /// The avail `idx` read from the ring.
        avail_idx: u16,
        /// The device's next avail index.
        next_avail: u16,
    },
    /// The avail ring entry names a head descriptor outside the table. The entry was
    /// consumed, but the head cannot be returned through the used ring (it is not a valid
    /// id); the device should set `DEVICE_NEEDS_RESET`.
    InvalidHead {
        /// The head index read from the avail ring.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// The chain starting at `head` is malformed. The avail entry was consumed; the device
    /// should complete `head` (e.g. with length 0 and a device-specific error status).
    BadChain {
        /// Head descriptor index of the rejected chain (always `< size`).
        head: u16,
        /// What was wrong with it.
        reason: ChainError,
    },
    /// [`Queue::add_used`](crate::queue::Queue::add_used) was given an id outside the table.
    InvalidUsedHead {
        /// The id passed by the device.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A ring (not a buffer) lies outside guest memory. Nothing was consumed.
    Memory(MemoryError),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::NotReady => write!(f, "virtqueue is not ready"),
            QueueError::InvalidAvailIdx {
                avail_idx,
                next_avail,
            } => write!(
                f,
                "avail idx {avail_idx} is more than the queue size ahead of {next_avail}"
            ),
            QueueError::InvalidHead { head, size } => {
                write!(
                    f,
                    "avail ring names head {head} outside a queue of size {size}"
                )
            }
            QueueError::BadChain { head, reason } => {
                write!(f, "bad descriptor chain at head {head}: {reason}")
            }
            QueueError::InvalidUsedHead { head, size } => {
                write!(f, "used id {head} is outside a queue of size {size}")
            }
            QueueError::Memory(e) => write!(f, "virtqueue ring: {e}"),
        }
    }
}

impl core::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            QueueError::BadChain { reason, .. } => Some(reason),
            QueueError::Memory(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> Self {
        QueueError::Memory(e)
    }
}

/// Errors of the driver-side [`DriverQueue`](crate::driver::DriverQueue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError {
    /// The queue size is zero, not a power of two, or above
    /// [`MAX_DRIVER_QUEUE_SIZE`](crate::driver::MAX_DRIVER_QUEUE_SIZE).
    InvalidQueueSize(u16),
    /// A chain needs at least one buffer.
    EmptyChain,
    /// Not enough free descriptors for the chain.
    NoFreeDescriptors {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors currently free.
        available: usize,
    },
    /// The chain is longer than the queue size (2.7.5.3.1) or than
    /// [`MAX_CHAIN_LEN`](crate::chain::MAX_CHAIN_LEN).
    ChainTooLong(usize),
    /// A raw descriptor index is outside the descriptor table
    /// ([`DriverQueue::write_raw_descriptor`](crate::driver::DriverQueue::write_raw_descriptor)).
    IndexOutOfRange {
        /// The index given.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// The device returned an id that is not the head of a chain in flight.
    InvalidUsedId(u32),
    /// The used `idx` moved more than the queue size ahead of the driver.
    InvalidUsedIdx {
        /// The used `idx` read from the ring.
        used_idx: u16,
        /// The driver's last seen used index.
        last_used: u16,
    },
    /// A ring or table access fell outside memory.
    Memory(MemoryError),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::InvalidQueueSize(s) => write!(f, "invalid driver queue size {s}"),
            DriverError::EmptyChain => write!(f, "descriptor chain without buffers"),
            DriverError::NoFreeDescriptors { needed, available } => {
                write!(f, "chain needs {needed} descriptors, {available} free")
            }
            DriverError::ChainTooLong(n) => write!(f, "chain of {n} descriptors is too long"),
            DriverError::IndexOutOfRange { index, size } => {
                write!(
                    f,
                    "descriptor index {index} is outside a queue of size {size}"
                )
            }
            DriverError::InvalidUsedId(id) => write!(f, "device used id {id} is not in flight"),
            DriverError::InvalidUsedIdx {
                used_idx,
                last_used,
            } => write!(
                f,
                "used idx {used_idx} is more than the queue size ahead of {last_used}"
            ),
            DriverError::Memory(e) => write!(f, "driver queue: {e}"),
        }
    }
}

impl core::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DriverError::Memory(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MemoryError> for DriverError {
    fn from(e: MemoryError) -> Self {
        DriverError::Memory(e)
    }
}
