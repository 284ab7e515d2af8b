//! An independent client: the `virtio-drivers` crate drives the same disk, and data written
//! by either driver must read back identically through the other.

use core::ptr::NonNull;

use blk_proto::{RequestType, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, mix64, SECTOR_SIZE};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use blk_proto::features::VIRTIO_BLK_F_RO;
use pci_transport::driver::ConfigAccess;

use crate::app::check::report::{fail, Why};
use crate::app::driver::blk::{Blk, Request};
use crate::app::driver::dma;
use crate::app::driver::pci::{Bdf, PortCam};

/// Sectors moved in each direction.
const SECTORS: usize = 64;

/// [`Hal`] over the identity map and the bump allocator.
struct GuestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, identity-mapped memory no one else uses
// (the bump allocator never hands it out twice before a `release` after the test);
// `mmio_phys_to_virt` and `share` return the identity mapping, valid for all of 0..4 GiB.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let addr = dma::alloc((pages * PAGE_SIZE) as u64, PAGE_SIZE as u64).unwrap_or(0);
        // A null pointer is never produced: on failure the address 0 tells `Dma::new` so and
        // the dangling pointer is never used.
        (
            addr,
            NonNull::new(addr as *mut u8).unwrap_or(NonNull::dangling()),
        )
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Freed wholesale when the test releases its DMA mark.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// `virtio-drivers`' configuration access over our port-I/O mechanism.
struct PortAccess(PortCam);

impl ConfigurationAccess for PortAccess {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        let mut cam = self.0;
        cam.read_u32(df.bus, df.device, df.function, u16::from(register_offset))
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        self.0.write_u32(
            df.bus,
            df.device,
            df.function,
            u16::from(register_offset),
            data,
        );
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortAccess(self.0)
    }
}

/// Ours writes, theirs reads and writes, ours (re-initialized) reads back; on a read-only
/// disk both only read and must agree.
pub fn cross_check(
    blk: &mut Blk,
    cam: PortCam,
    at: Bdf,
    ram_end: u64,
    seed: u64,
) -> Result<(), Why> {
    let ro = blk.has(VIRTIO_BLK_F_RO);
    let cap = blk.capacity();
    let bytes = SECTORS * SECTOR_SIZE;
    if cap < 4 * SECTORS as u64 {
        fail!("disk too small");
    }
    let mut rng = pattern::Rng::new(seed);
    let ours_sector = rng.below(cap / 2 - SECTORS as u64);
    let theirs_sector = cap / 2 + rng.below(cap / 2 - SECTORS as u64);
    let (seed_ours, seed_theirs) = (mix64(seed ^ 1), mix64(seed ^ 2));
    let buf = dma::alloc(bytes as u64, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
    let reference =
        dma::alloc(bytes as u64, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
    let id_buf = dma::alloc(VIRTIO_BLK_ID_BYTES as u64, 64)
        .ok_or(Why::new(format_args!("out of DMA memory")))?;

    // 1. Our driver: write (or, read-only, read a reference) and fetch the device ID.
    let kind = if ro {
        RequestType::In
    } else {
        RequestType::Out
    };
    if !ro {
        // SAFETY: no request uses the buffer yet.
        pattern::fill(unsafe { dma::bytes(buf, bytes) }, ours_sector, seed_ours);
    }
    let target = if ro { reference } else { buf };
    let status = blk.execute(&Request {
        kind,
        sector: ours_sector,
        data: &[(target, bytes as u32)],
        indirect: false,
        tag: 10,
    })?;
    if status != VIRTIO_BLK_S_OK {
        fail!("our {kind} status {status}");
    }
    let status = blk.execute(&Request {
        kind: RequestType::GetId,
        sector: 0,
        data: &[(id_buf, VIRTIO_BLK_ID_BYTES as u32)],
        indirect: false,
        tag: 11,
    })?;
    if status != VIRTIO_BLK_S_OK {
        fail!("our GET_ID status {status}");
    }
    let queues = blk.num_queues();
    let driver = blk.driver();
    blk.reset()?;

    // 2. Their driver on the same function.
    {
        let mut root = PciRoot::new(PortAccess(cam));
        let df = DeviceFunction {
            bus: at.bus,
            device: at.device,
            function: at.function,
        };
        let transport = PciTransport::new::<GuestHal, _>(&mut root, df)?;
        let mut theirs = VirtIOBlk::<GuestHal, _>::new(transport)?;
        if theirs.capacity() != cap {
            fail!(
                "virtio-drivers sees {} sectors, we saw {cap}",
                theirs.capacity()
            );
        }
        if theirs.readonly() != ro {
            fail!(
                "virtio-drivers read-only {} but we negotiated {ro}",
                theirs.readonly()
            );
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        let len = theirs.device_id(&mut id)?;
        // SAFETY: our GET_ID completed before the reset.
        let our_id = unsafe { dma::bytes(id_buf, VIRTIO_BLK_ID_BYTES) };
        if id.get(..len) != our_id.get(..len) {
            fail!("device IDs differ between drivers");
        }
        // SAFETY: nothing of ours is in flight (the device was reset).
        let data = unsafe { dma::bytes(buf, bytes) };
        data.fill(0x5a);
        theirs.read_blocks(ours_sector as usize, data)?;
        if ro {
            // SAFETY: as above.
            if data != unsafe { dma::bytes(reference, bytes) } {
                fail!("virtio-drivers read different data than our driver");
            }
        } else {
            if let Err(m) = pattern::verify(data, ours_sector, seed_ours) {
                fail!("virtio-drivers read of our write: {m}");
            }
            pattern::fill(data, theirs_sector, seed_theirs);
            theirs.write_blocks(theirs_sector as usize, data)?;
            theirs.flush()?;
        }
        // Dropping `theirs` detaches its queue.
    }

    // 3. Our driver again, from a reset.
    *blk = Blk::init(cam, at, ram_end, driver, queues, true)?;
    let (sector, check_seed) = if ro {
        (ours_sector, 0)
    } else {
        (theirs_sector, seed_theirs)
    };
    // SAFETY: nothing is in flight.
    unsafe { dma::bytes(buf, bytes) }.fill(0xa5);
    let status = blk.execute(&Request {
        kind: RequestType::In,
        sector,
        data: &[(buf, bytes as u32)],
        indirect: false,
        tag: 12,
    })?;
    if status != VIRTIO_BLK_S_OK {
        fail!("our read after re-init: status {status}");
    }
    // SAFETY: the read completed.
    let data = unsafe { dma::bytes(buf, bytes) };
    if ro {
        // SAFETY: as above.
        if data != unsafe { dma::bytes(reference, bytes) } {
            fail!("data changed across drivers on a read-only disk");
        }
    } else if let Err(m) = pattern::verify(data, sector, check_seed) {
        fail!("our read of virtio-drivers' write: {m}");
    }
    Ok(())
}
