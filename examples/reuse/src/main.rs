//! The crates of this workspace used from outside, as a new user would (issue 15): no VMM, no
//! KVM, no `unsafe` and no `libc`.
//!
//! 1. A driver ([`DriverQueue`]) publishes a 4 KiB read and a FLUSH into guest memory.
//! 2. A device ([`Queue`], [`parse_request`]) pops, parses and serves them from an in-memory
//!    disk.
//! 3. The same requests again, served from a file through backend-raw's sync and io_uring
//!    engines, with guest buffers turned into iovecs by [`GuestEngine`].
//! 4. Malformed chains written raw: a descriptor loop, rejected by the queue with its reason,
//!    and a header cut short, answered with IOERR in its status byte.
//!
//! `cargo run -p reuse-example` prints what it did; `cargo test -p reuse-example` runs the
//! same `main` with its assertions.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::error::Error;

use backend_raw::{Disk, DiskOptions, EngineKind, IoOp};
use blk_device::guest_iovec::GuestEngine;
use blk_proto::features::{VIRTIO_BLK_F_FLUSH, VIRTIO_F_VERSION_1};
use blk_proto::{
    parse_request, DeviceLimits, Features, OutHdr, Request, RequestType, Status, VirtioBlkConfig,
    SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use virtqueue_core::descriptor::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use virtqueue_core::{
    ChainError, Descriptor, DriverQueue, GuestMemory, Queue, QueueError, RingAddresses, RingLayout,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const QUEUE_SIZE: u16 = 16;
const RINGS: u64 = 0x1000;
/// Two regions: the read's 4 KiB buffer straddles them, as guest RAM split around a hole does.
const REGIONS: [(u64, usize); 2] = [(0, 0x2_0000), (0x2_0000, 0x2_0000)];
const READ_HDR: u64 = 0x8000;
const READ_STATUS: u64 = 0x8010;
const FLUSH_HDR: u64 = 0x8100;
const FLUSH_STATUS: u64 = 0x8110;
const DATA: u64 = 0x1_f800;
const READ_SECTOR: u64 = 3;
const DISK_SECTORS: u64 = 64;

fn main() -> Result<()> {
    let disk = disk_image();
    let config = VirtioBlkConfig::new(DISK_SECTORS);
    // The driver acknowledged FLUSH, so the device must serve it.
    let features = Features::bit(VIRTIO_F_VERSION_1).with(VIRTIO_BLK_F_FLUSH);
    let limits = DeviceLimits::from_config(&config, features, features);

    let mem =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(addr, len)| (GuestAddress(addr), len)))?;
    let addrs = RingLayout::new(QUEUE_SIZE)
        .and_then(|l| l.checked_addresses(RINGS))
        .ok_or("ring layout")?;

    // 1 and 2: an in-memory disk.
    let (mut driver, mut queue) = start(&mem, addrs)?;
    publish_read_and_flush(&mem, &mut driver)?;
    while let Some(chain) = queue.pop(&mem)? {
        let used_len = match parse_request(&mem, chain.descriptors(), &limits) {
            Ok(req) => req.complete(&mem, serve_from_memory(&mem, &req, &disk)?)?,
            Err(e) => answer_parse_error(&mem, e.status_addr(), e.status()),
        };
        queue.add_used(&mem, chain.head_index(), used_len)?;
    }
    check_read_and_flush(&mem, &mut driver, &disk)?;
    println!("in-memory disk: 4 KiB read and FLUSH served");

    // 3: a file, through each engine.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.img");
    std::fs::write(&path, &disk)?;
    let file = Disk::open(
        &path,
        DiskOptions {
            readonly: false,
            direct: false,
        },
    )?;
    for kind in [EngineKind::Sync, EngineKind::IoUring] {
        let (inner, fell_back) = file.engine_or_sync(kind, usize::from(QUEUE_SIZE))?;
        let mut engine = GuestEngine::new(inner, &mem);
        zero_buffers(&mem)?;
        let (mut driver, mut queue) = start(&mem, addrs)?;
        publish_read_and_flush(&mem, &mut driver)?;
        serve_with_engine(&mem, &mut queue, &limits, &mut engine)?;
        check_read_and_flush(&mem, &mut driver, &disk)?;
        let ran = engine.engine().kind();
        match fell_back {
            None => println!("{kind} engine: 4 KiB read and FLUSH served"),
            Some(why) => println!("{kind} engine unavailable ({why}), {ran} served them"),
        }
    }

    // 4: malformed chains.
    malformed_chains(&mem, addrs, &limits)?;
    println!("malformed chains: a loop rejected as ChainLoop, a short header answered IOERR");
    Ok(())
}

/// Sector `s` holds bytes `s, s+1, s+2, ...` (mod 251), so a misplaced sector shows.
fn disk_image() -> Vec<u8> {
    (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| ((i / SECTOR_SIZE + i % SECTOR_SIZE) % 251) as u8)
        .collect()
}

/// A fresh driver and device on the rings at `addrs`, as a transport would set them up.
fn start(mem: &GuestMemoryMmap, addrs: RingAddresses) -> Result<(DriverQueue, Queue)> {
    let driver = DriverQueue::new(mem, QUEUE_SIZE, addrs, false)?;
    let mut queue = Queue::new(QUEUE_SIZE);
    queue.set_desc_table_address(addrs.desc_table);
    queue.set_avail_ring_address(addrs.avail_ring);
    queue.set_used_ring_address(addrs.used_ring);
    queue.set_ready(true);
    assert!(queue.is_valid(mem));
    Ok((driver, queue))
}

fn publish_read_and_flush(mem: &GuestMemoryMmap, driver: &mut DriverQueue) -> Result<()> {
    mem.write(READ_HDR, &OutHdr::read(READ_SECTOR).to_bytes())?;
    mem.write(FLUSH_HDR, &OutHdr::flush().to_bytes())?;
    mem.write(READ_STATUS, &[0xff])?;
    mem.write(FLUSH_STATUS, &[0xff])?;
    driver.add(mem, &[(READ_HDR, 16)], &[(DATA, 4096), (READ_STATUS, 1)])?;
    driver.add(mem, &[(FLUSH_HDR, 16)], &[(FLUSH_STATUS, 1)])?;
    assert!(driver.should_kick(mem));
    Ok(())
}

fn zero_buffers(mem: &GuestMemoryMmap) -> Result<()> {
    Ok(mem.write(DATA, &[0u8; 4096])?)
}

/// The driver's view: both completions, the data of sectors 3..11 and two OK status bytes.
fn check_read_and_flush(
    mem: &GuestMemoryMmap,
    driver: &mut DriverQueue,
    disk: &[u8],
) -> Result<()> {
    let mut lens = HashMap::new();
    while let Some((head, len)) = driver.pop_used(mem)? {
        lens.insert(head, len);
    }
    let mut sorted: Vec<u32> = lens.into_values().collect();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [1, 4097],
        "FLUSH used 1 byte (status), the read 4096 + 1"
    );
    let mut data = vec![0u8; 4096];
    mem.read(DATA, &mut data)?;
    let start = (READ_SECTOR * SECTOR_SIZE) as usize;
    assert!(
        data == disk[start..start + 4096],
        "the read returned sectors 3..11"
    );
    let mut status = [0u8; 2];
    mem.read(READ_STATUS, &mut status[..1])?;
    mem.read(FLUSH_STATUS, &mut status[1..])?;
    assert_eq!(status, [VIRTIO_BLK_S_OK; 2]);
    assert_eq!(driver.num_free(), QUEUE_SIZE);
    Ok(())
}

/// The device's I/O against a disk held in memory.
fn serve_from_memory(mem: &dyn GuestMemory, req: &Request, disk: &[u8]) -> Result<Status> {
    Ok(match req.request_type() {
        RequestType::In => {
            let mut at = usize::try_from(req.sector() * SECTOR_SIZE)?;
            for seg in req.segments() {
                let len = seg.len as usize;
                mem.write(seg.addr, disk.get(at..at + len).ok_or("past the disk")?)?;
                at += len;
            }
            Status::Ok
        }
        RequestType::Flush => Status::Ok, // nothing volatile to write back
        _ => Status::Unsupp,
    })
}

/// The device's I/O through an engine: submit every chain, push the batch, reap, complete.
fn serve_with_engine(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    limits: &DeviceLimits,
    engine: &mut GuestEngine,
) -> Result<()> {
    let mut in_flight: HashMap<u64, Request> = HashMap::new();
    while let Some(chain) = queue.pop(mem)? {
        let head = chain.head_index();
        let req = match parse_request(mem, chain.descriptors(), limits) {
            Ok(req) => req,
            Err(e) => {
                let len = answer_parse_error(mem, e.status_addr(), e.status());
                queue.push_used(mem, head, len)?;
                continue;
            }
        };
        let op = match req.request_type() {
            RequestType::In => IoOp::Read {
                offset: req.sector() * SECTOR_SIZE,
            },
            RequestType::Out => IoOp::Write {
                offset: req.sector() * SECTOR_SIZE,
            },
            RequestType::Flush => IoOp::Flush,
            _ => {
                let len = req.complete(mem, Status::Unsupp)?;
                queue.push_used(mem, head, len)?;
                continue;
            }
        };
        engine.submit(op, req.segments(), u64::from(head))?;
        in_flight.insert(u64::from(head), req);
    }
    engine.flush_submissions()?;
    let mut done = Vec::new();
    while !in_flight.is_empty() {
        engine.wait()?;
        done.clear();
        engine.reap(&mut done);
        for c in &done {
            let req = in_flight
                .remove(&c.user_data)
                .ok_or("completion of no request")?;
            let status = if c.result == Ok(req.data_len()) {
                Status::Ok
            } else {
                Status::IoErr
            };
            queue.push_used(mem, u16::try_from(c.user_data)?, req.complete(mem, status)?)?;
        }
    }
    // One store of used `idx` for the whole batch.
    queue.publish_used(mem)?;
    Ok(())
}

/// A request that does not parse: its status byte, if it has one, says why.
fn answer_parse_error(mem: &dyn GuestMemory, addr: Option<u64>, status: Option<u8>) -> u32 {
    match (addr, status) {
        (Some(addr), Some(status)) if mem.write(addr, &[status]).is_ok() => 1,
        _ => 0,
    }
}

fn malformed_chains(
    mem: &GuestMemoryMmap,
    addrs: RingAddresses,
    limits: &DeviceLimits,
) -> Result<()> {
    let (mut driver, mut queue) = start(mem, addrs)?;
    // Descriptors 0 -> 1 -> 0: a loop. Raw descriptors never leave the driver's free list,
    // so this queue carries raw chains only.
    let desc = |addr, len, flags, next| Descriptor {
        addr,
        len,
        flags,
        next,
    };
    driver.write_raw_descriptor(mem, 0, desc(READ_HDR, 16, VIRTQ_DESC_F_NEXT, 1))?;
    driver.write_raw_descriptor(
        mem,
        1,
        desc(DATA, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0),
    )?;
    driver.publish_raw_head(mem, 0)?;
    // Descriptor 2 -> 3: an 8-byte header, then the status byte.
    driver.write_raw_descriptor(mem, 2, desc(READ_HDR, 8, VIRTQ_DESC_F_NEXT, 3))?;
    driver.write_raw_descriptor(mem, 3, desc(READ_STATUS, 1, VIRTQ_DESC_F_WRITE, 0))?;
    driver.publish_raw_head(mem, 2)?;

    let reason = ChainError::ChainLoop {
        index: 0,
        indirect: false,
    };
    assert_eq!(
        queue.pop(mem),
        Err(QueueError::BadChain { head: 0, reason })
    );
    // A rejected chain has no status byte the device may trust: return it with length 0.
    queue.add_used(mem, 0, 0)?;

    let chain = queue.pop(mem)?.ok_or("the short header was published")?;
    let err = parse_request(mem, chain.descriptors(), limits).expect_err("8-byte header");
    assert_eq!(
        (err.status(), err.status_addr()),
        (Some(VIRTIO_BLK_S_IOERR), Some(READ_STATUS))
    );
    let used_len = answer_parse_error(mem, err.status_addr(), err.status());
    queue.add_used(mem, chain.head_index(), used_len)?;

    assert_eq!(driver.pop_used(mem)?, Some((0, 0)));
    assert_eq!(driver.pop_used(mem)?, Some((2, 1)));
    let mut status = [0u8];
    mem.read(READ_STATUS, &mut status)?;
    assert_eq!(status, [VIRTIO_BLK_S_IOERR]);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The program itself is the test: every step asserts what it expects.
    #[test]
    fn main_runs() {
        super::main().expect("the reuse example runs");
    }
}
