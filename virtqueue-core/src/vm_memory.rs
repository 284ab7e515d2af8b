//! [`GuestMemory`] for any [`vm_memory::GuestMemory`], e.g.
//! `GuestMemoryMmap` (feature `vm-memory`).
//!
//! Every access goes through vm-memory's volatile slice copies or its atomic
//! `load`/`store`, never through references, and ranges may span several regions.

use core::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, Permissions};

use crate::memory::{GuestMemory, MemoryError};

impl<T: vm_memory::GuestMemory + ?Sized> GuestMemory for T {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Bytes::read_slice(self, buf, GuestAddress(addr)).map_err(|_| MemoryError {
            addr,
            len: buf.len() as u64,
        })
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        Bytes::write_slice(self, buf, GuestAddress(addr)).map_err(|_| MemoryError {
            addr,
            len: buf.len() as u64,
        })
    }

    fn load_u16(&self, addr: u64, order: Ordering) -> Result<u16, MemoryError> {
        Bytes::load::<u16>(self, GuestAddress(addr), order)
            .map(u16::from_le)
            .map_err(|_| MemoryError { addr, len: 2 })
    }

    fn store_u16(&self, addr: u64, value: u16, order: Ordering) -> Result<(), MemoryError> {
        Bytes::store(self, value.to_le(), GuestAddress(addr), order)
            .map_err(|_| MemoryError { addr, len: 2 })
    }

    fn check_range(&self, addr: u64, len: u64) -> bool {
        let Ok(count) = usize::try_from(len) else {
            return false;
        };
        // vm-memory walks the regions covering the range, so a hole anywhere fails it.
        addr.checked_add(len).is_some()
            && vm_memory::GuestMemory::check_range(
                self,
                GuestAddress(addr),
                count,
                Permissions::ReadWrite,
            )
    }
}
