//! Helpers for the unit tests: a memory buffer and raw descriptor writes.

use std::vec;
use std::vec::Vec;

use zerocopy::IntoBytes;

use crate::descriptor::{Descriptor, VirtqDesc};
use crate::memory::{GuestMemory, SliceMemory};

/// Bytes of test memory.
pub const MEM_SIZE: usize = 0x10000;

/// Fresh zeroed test memory.
pub fn bytes() -> Vec<u8> {
    vec![0u8; MEM_SIZE]
}

/// Writes `(addr, len, flags, next)` as entry `index` of the table at `table`.
pub fn put(mem: &SliceMemory<'_>, table: u64, index: u16, d: (u64, u32, u16, u16)) {
    let desc = Descriptor {
        addr: d.0,
        len: d.1,
        flags: d.2,
        next: d.3,
    };
    mem.write(
        table + 16 * u64::from(index),
        VirtqDesc::from(desc).as_bytes(),
    )
    .unwrap();
}
