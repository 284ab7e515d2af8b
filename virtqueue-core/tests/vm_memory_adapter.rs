//! The `vm-memory` adapter over a multi-region `GuestMemoryMmap`.
#![cfg(feature = "vm-memory")]

use std::sync::atomic::Ordering;

use virtqueue_core::{
    ChainError, DriverQueue, GuestMemory, MemoryError, Queue, QueueError, RingLayout,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// RAM at [0, 0x10000) and [0x10000, 0x20000) (adjacent), then a hole, then [0x30000, 0x40000).
fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(0x30000), 0x10000),
    ])
    .unwrap()
}

#[test]
fn check_range_sees_holes_and_crosses_adjacent_regions() {
    let mem = memory();
    let m: &dyn Fn(u64, u64) -> bool = &|a, l| GuestMemory::check_range(&mem, a, l);
    assert!(m(0, 0x20000), "two adjacent regions");
    assert!(m(0xfff0, 0x20));
    assert!(!m(0x1fff0, 0x20), "runs into the hole");
    assert!(!m(0x20000, 1));
    assert!(m(0x30000, 0x10000));
    assert!(!m(0x30000, 0x10001));
    assert!(!m(0x10000, 0x30000), "spans the hole");
    assert!(!m(u64::MAX, 2));
}

#[test]
fn accesses_go_through_the_regions() {
    let mem = memory();
    GuestMemory::write(&mem, 0xfffe, &[1, 2, 3, 4]).unwrap();
    let mut buf = [0u8; 4];
    GuestMemory::read(&mem, 0xfffe, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
    assert_eq!(
        GuestMemory::read(&mem, 0x1fffe, &mut buf),
        Err(MemoryError {
            addr: 0x1fffe,
            len: 4
        })
    );
    mem.store_u16(0x30002, 0xbeef, Ordering::Release).unwrap();
    assert_eq!(mem.load_u16(0x30002, Ordering::Acquire), Ok(0xbeef));
    let mut raw = [0u8; 2];
    GuestMemory::read(&mem, 0x30002, &mut raw).unwrap();
    assert_eq!(raw, [0xef, 0xbe], "little-endian in memory");
    assert!(mem.load_u16(0x20000, Ordering::Acquire).is_err());
    assert!(mem.store_u16(0x20000, 1, Ordering::Release).is_err());
}

fn queue_pair(mem: &GuestMemoryMmap) -> (DriverQueue, Queue) {
    let addrs = RingLayout::new(16).unwrap().addresses(0x1000);
    let driver = DriverQueue::new(mem, 16, addrs, true).unwrap();
    let mut q = Queue::new(16);
    q.set_desc_table_address(addrs.desc_table);
    q.set_avail_ring_address(addrs.avail_ring);
    q.set_used_ring_address(addrs.used_ring);
    q.set_event_idx(true);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    (driver, q)
}

#[test]
fn queue_runs_over_guest_memory_mmap() {
    let mem = memory();
    let (mut d, mut q) = queue_pair(&mem);
    // A buffer across the adjacent regions is fine, one into the hole is not.
    let ok = d
        .add(&mem, &[(0xff00, 0x200)], &[(0x30000, 0x1000)])
        .unwrap();
    let bad = d.add(&mem, &[(0x1ff00, 0x200)], &[]).unwrap();
    let bad_table = d.add_indirect(&mem, 0x1fff0, &[(0x100, 1), (0x200, 1)], &[]);
    assert!(
        bad_table.is_err(),
        "the driver cannot write a table into the hole"
    );

    let chain = q.pop(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), ok);
    assert_eq!(
        (chain.readable_len(), chain.writable_len()),
        (0x200, 0x1000)
    );
    let reason = ChainError::OutOfMemory(MemoryError {
        addr: 0x1ff00,
        len: 0x200,
    });
    assert_eq!(q.pop(&mem), Err(QueueError::BadChain { head: bad, reason }));

    q.add_used(&mem, bad, 0).unwrap();
    q.add_used(&mem, ok, 0x1000).unwrap();
    assert!(q.needs_notification(&mem).unwrap());
    assert_eq!(d.pop_used(&mem), Ok(Some((bad, 0))));
    assert_eq!(d.pop_used(&mem), Ok(Some((ok, 0x1000))));
}

#[test]
fn indirect_table_straddling_the_hole_is_rejected() {
    let mem = memory();
    let (mut d, mut q) = queue_pair(&mem);
    // Write a valid indirect table that ends exactly at the hole, then point a descriptor at
    // a table one entry longer.
    let head = d
        .add_indirect(&mem, 0x1ffe0, &[(0x100, 1), (0x200, 1)], &[])
        .unwrap();
    let chain = q.pop(&mem).unwrap().unwrap();
    assert_eq!(chain.head_index(), head);
    assert_eq!(chain.descriptors().len(), 2);
    let desc = d.addresses().desc_table + 16 * u64::from(head);
    GuestMemory::write(&mem, desc + 8, &48u32.to_le_bytes()).unwrap();
    q.set_next_avail(0);
    let reason = ChainError::OutOfMemory(MemoryError {
        addr: 0x1ffe0,
        len: 48,
    });
    assert_eq!(q.pop(&mem), Err(QueueError::BadChain { head, reason }));
}
