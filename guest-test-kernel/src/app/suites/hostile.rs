//! `tests=hostile`: the guest plays a hostile driver against its own disk, with raw rings it
//! writes by hand (no `DriverQueue`): descriptor loops, over-long chains, bad indirect tables,
//! addresses outside RAM, straddling the end of RAM or wrapping, short headers, read-only
//! status descriptors, impossible avail indices, bad queue sizes, notifies of missing
//! queues, ring addresses changed while enabled, device status written out of order, reset
//! with requests in flight.
//!
//! Each case must end with an error status, DEVICE_NEEDS_RESET, or the chain returned unused
//! or ignored (as the spec allows), within a deadline; no byte outside the writable buffers
//! of the case may change (canaries in RAM), no sector outside the case's allowance may
//! change (canary sectors on the disk), and afterwards the device must still serve correct
//! I/O (after a reset where the spec requires one). Prints `TEST hostile_<case> PASS|FAIL`.

use core::sync::atomic::Ordering;

use blk_proto::{OutHdr, RequestType, VIRTIO_BLK_S_OK};
use guest_test_kernel::pattern::{self, mix64, SECTOR_SIZE};
use pci_transport::driver;
use pci_transport::virtio_pci::common_cfg::offset as common;
use pci_transport::virtio_pci::device_status as st;
use pci_transport::virtio_pci::VIRTIO_MSI_NO_VECTOR;
use virtqueue_core::{GuestMemory, RingAddresses, RingLayout};

use crate::app::check::report::{fail, Tally, Why};
use crate::app::check::Env;
use crate::app::driver::blk::{Blk, Request};
use crate::app::driver::dma;
use crate::app::driver::limits::MAX_QUEUES;
use crate::app::driver::memory::IdentityMemory;
use crate::app::driver::mmio;
use crate::app::driver::pci::{Bdf, PortCam};
use crate::arch::tsc::{hz, rdtsc};

const QSIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const VERSION_1: u64 = 1 << 32;
const INDIRECT_DESC: u64 = 1 << 28;
/// A request not returned within this long counts as ignored.
const IGNORED_MS: u64 = 200;
/// Canary byte of guest memory no request may write.
const CANARY: u8 = 0xc5;
/// Disk sectors of the case area, from `base`: `[0, CHECK)` holds a pattern written at the
/// start that no case may change; the health check writes `[CHECK, HOSTILE)`; hostile
/// requests aim at `[HOSTILE, AREA)`, so one a device accepts changes nothing checked.
const AREA: u64 = 128;
const CHECK: u64 = 48;
const HOSTILE: u64 = 64;

/// Layout of the driver memory (one allocation, offsets from its start).
const RINGS: u64 = 0;
const HDR: u64 = 0x2000;
const STATUS: u64 = 0x2100;
const TABLE: u64 = 0x3000;
const DATA_OUT: u64 = 0x1_0000;
const DATA_IN: u64 = 0x2_0000;
/// Never writable by the device: canary.
const CANARY_ZONE: (u64, u64) = (0x3_0000, 0x4_0000);
const TOTAL: u64 = 0x4_0000;

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Used { len: u32, status: u8 },
    NeedsReset,
    Ignored,
}

impl Outcome {
    /// Returned with an error status or unused (length 0), or the device asked for a reset.
    /// A request never returned is not refused: a driver would wait for it forever.
    fn refused(self) -> bool {
        match self {
            Outcome::Used { len: 0, .. } => true,
            Outcome::Used { status, .. } => status != VIRTIO_BLK_S_OK,
            Outcome::NeedsReset => true,
            Outcome::Ignored => false,
        }
    }
}

/// The raw driver.
struct Raw {
    common: u64,
    notify: u64,
    notify_mult: u32,
    mem: IdentityMemory,
    base: u64,
    rings: RingAddresses,
    avail_idx: u16,
    used_idx: u16,
    ram_end: u64,
    capacity: u64,
    /// First sector of the case area.
    sector: u64,
    seed: u64,
    round: u64,
}

/// The request must have been refused; a device that asked for a reset gets one, so the
/// case can go on.
fn refuse(r: &mut Raw, o: Outcome, what: &str) -> Result<(), Why> {
    if !o.refused() {
        fail!("{what}: accepted ({o:?})");
    }
    if o == Outcome::NeedsReset {
        r.init()?;
    }
    Ok(())
}

impl Raw {
    fn probe(cam: PortCam, bdf: Bdf, ram_end: u64, capacity: u64, seed: u64) -> Result<Raw, Why> {
        let bars = cam.memory_bars(bdf);
        let mut c = cam;
        let caps = driver::find_virtio_caps(&mut c, bdf);
        let at = |cap: Option<pci_transport::virtio_pci::caps::VirtioCapInfo>| {
            let cap = cap?;
            let bar = bars.get(usize::from(cap.bar)).copied().flatten()?;
            Some((bar.addr + u64::from(cap.offset), cap.notify_off_multiplier))
        };
        let (Some((common, _)), Some((notify, notify_mult))) = (at(caps.common), at(caps.notify))
        else {
            fail!("virtio capabilities not found");
        };
        let base = dma::alloc(TOTAL, 4096).ok_or(Why::new(format_args!("out of DMA memory")))?;
        let rings = RingLayout::new(QSIZE)
            .ok_or(Why::new(format_args!("bad ring layout")))?
            .addresses(base + RINGS);
        if capacity < 4 * AREA {
            fail!("disk too small");
        }
        let sector = (capacity / 2) & !7;
        Ok(Raw {
            common,
            notify,
            notify_mult,
            mem: IdentityMemory::new(ram_end),
            base,
            rings,
            avail_idx: 0,
            used_idx: 0,
            ram_end,
            capacity,
            sector,
            seed,
            round: 0,
        })
    }

    fn a(&self, off: u64) -> u64 {
        self.base + off
    }

    fn status(&self) -> u8 {
        mmio::read8(self.common + common::DEVICE_STATUS)
    }

    fn set_status(&self, s: u8) {
        mmio::write8(self.common + common::DEVICE_STATUS, s);
    }

    fn kick(&self, q: u16) {
        mmio::write16(self.notify + u64::from(q) * u64::from(self.notify_mult), q);
    }

    fn reset(&mut self) -> Result<(), Why> {
        self.set_status(0);
        for _ in 0..1_000_000 {
            if self.status() == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        fail!("reset did not complete")
    }

    fn clear_rings(&mut self) {
        // SAFETY: our allocation; the device is reset (or the queue is not live).
        unsafe { dma::bytes(self.a(RINGS), 0x2000) }.fill(0);
        self.avail_idx = 0;
        self.used_idx = 0;
    }

    fn until_queues(&mut self) -> Result<(), Why> {
        self.set_status(st::ACKNOWLEDGE | st::DRIVER);
        let f = VERSION_1 | INDIRECT_DESC;
        for sel in 0..2u32 {
            mmio::write32(self.common + common::DRIVER_FEATURE_SELECT, sel);
            mmio::write32(
                self.common + common::DRIVER_FEATURE,
                (f >> (32 * sel)) as u32,
            );
        }
        self.set_status(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK);
        if self.status() & st::FEATURES_OK == 0 {
            fail!("features refused");
        }
        mmio::write16(
            self.common + common::CONFIG_MSIX_VECTOR,
            VIRTIO_MSI_NO_VECTOR,
        );
        Ok(())
    }

    fn setup_queue(&self, size: u16, r: RingAddresses) {
        let c = self.common;
        mmio::write16(c + common::QUEUE_SELECT, 0);
        mmio::write16(c + common::QUEUE_SIZE, size);
        mmio::write16(c + common::QUEUE_MSIX_VECTOR, VIRTIO_MSI_NO_VECTOR);
        mmio::write64(c + common::QUEUE_DESC, r.desc_table);
        mmio::write64(c + common::QUEUE_DRIVER, r.avail_ring);
        mmio::write64(c + common::QUEUE_DEVICE, r.used_ring);
    }

    fn driver_ok(&self) {
        self.set_status(st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK);
    }

    fn init(&mut self) -> Result<(), Why> {
        self.reset()?;
        self.clear_rings();
        self.until_queues()?;
        self.setup_queue(QSIZE, self.rings);
        mmio::write16(self.common + common::QUEUE_ENABLE, 1);
        self.driver_ok();
        Ok(())
    }

    fn desc_at(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        let _ = self.mem.write(table + 16 * u64::from(i), &d);
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.desc_at(self.rings.desc_table, i, addr, len, flags, next);
    }

    fn publish(&mut self, head: u16) {
        let a = self.rings.avail_ring;
        let slot = self.avail_idx % QSIZE;
        let _ = self
            .mem
            .store_u16(a + 4 + 2 * u64::from(slot), head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = self.mem.store_u16(a + 2, self.avail_idx, Ordering::Release);
    }

    fn header(&self, kind: RequestType, sector: u64) {
        let _ = self
            .mem
            .write(self.a(HDR), &OutHdr::new(kind, sector).to_bytes());
        let _ = self.mem.write(self.a(STATUS), &[0xee]);
    }

    fn status_byte(&self) -> u8 {
        let mut b = [0u8];
        let _ = self.mem.read(self.a(STATUS), &mut b);
        b[0]
    }

    fn outcome(&mut self) -> Outcome {
        let deadline = rdtsc() + IGNORED_MS * hz() / 1000;
        let u = self.rings.used_ring;
        loop {
            let idx = self
                .mem
                .load_u16(u + 2, Ordering::Acquire)
                .unwrap_or(self.used_idx);
            if idx != self.used_idx {
                let slot = self.used_idx % QSIZE;
                let mut e = [0u8; 8];
                let _ = self.mem.read(u + 4 + 8 * u64::from(slot), &mut e);
                self.used_idx = self.used_idx.wrapping_add(1);
                let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                return Outcome::Used {
                    len,
                    status: self.status_byte(),
                };
            }
            if self.status() & st::DEVICE_NEEDS_RESET != 0 {
                return Outcome::NeedsReset;
            }
            if rdtsc() > deadline {
                return Outcome::Ignored;
            }
            core::hint::spin_loop();
        }
    }

    fn submit(&mut self, head: u16) -> Outcome {
        self.publish(head);
        self.kick(0);
        self.outcome()
    }

    /// Publishes `head`, kicks, and requires the request to be refused.
    fn refused(&mut self, head: u16, what: &str) -> Result<(), Why> {
        let o = self.submit(head);
        refuse(self, o, what)
    }

    /// Requires the request already published to be refused.
    fn refused_outcome(&mut self, what: &str) -> Result<(), Why> {
        let o = self.outcome();
        refuse(self, o, what)
    }

    fn used_idx_now(&self) -> u16 {
        self.mem
            .load_u16(self.rings.used_ring + 2, Ordering::Acquire)
            .unwrap_or(0)
    }

    /// A 3-descriptor request `hdr, data, status`.
    fn chain(&self, kind: RequestType, sector: u64, data: (u64, u32), data_flags: u16) {
        self.header(kind, sector);
        self.desc(0, self.a(HDR), 16, F_NEXT, 1);
        self.desc(1, data.0, data.1, F_NEXT | data_flags, 2);
        self.desc(2, self.a(STATUS), 1, F_WRITE, 0);
    }

    fn out_chain(&self, sector: u64, data: (u64, u32)) {
        self.chain(RequestType::Out, sector, data, 0);
    }

    fn in_chain(&self, sector: u64, data: (u64, u32)) {
        self.chain(RequestType::In, sector, data, F_WRITE);
    }

    /// Sector `k` of the hostile part of the case area.
    fn s(&self, k: u64) -> u64 {
        self.sector + HOSTILE + k
    }

    /// Sector `k` of the case area.
    fn area(&self, k: u64) -> u64 {
        self.sector + k
    }

    /// Writes `n` sectors at `sector` with the pattern of `seed` and reads them back.
    fn write_read(&mut self, sector: u64, n: u64, seed: u64) -> Result<(), Why> {
        let bytes = (n as usize) * SECTOR_SIZE;
        // SAFETY: our buffers; no request is in flight.
        pattern::fill(unsafe { dma::bytes(self.a(DATA_OUT), bytes) }, sector, seed);
        // Through an indirect table, head at descriptor 5.
        self.header(RequestType::Out, sector);
        self.desc_at(self.a(TABLE), 0, self.a(HDR), 16, F_NEXT, 1);
        self.desc_at(self.a(TABLE), 1, self.a(DATA_OUT), bytes as u32, F_NEXT, 2);
        self.desc_at(self.a(TABLE), 2, self.a(STATUS), 1, F_WRITE, 0);
        self.desc(5, self.a(TABLE), 48, F_INDIRECT, 0);
        let o = self.submit(5);
        if o != (Outcome::Used {
            len: 1,
            status: VIRTIO_BLK_S_OK,
        }) {
            fail!("write of {n} sectors at {sector}: {o:?}");
        }
        self.read_verify(sector, n, seed)
    }

    fn read_verify(&mut self, sector: u64, n: u64, seed: u64) -> Result<(), Why> {
        let bytes = (n as usize) * SECTOR_SIZE;
        // SAFETY: as in `write_read`.
        unsafe { dma::bytes(self.a(DATA_IN), bytes) }.fill(0x5a);
        self.in_chain(sector, (self.a(DATA_IN), bytes as u32));
        let o = self.submit(0);
        if o != (Outcome::Used {
            len: bytes as u32 + 1,
            status: VIRTIO_BLK_S_OK,
        }) {
            fail!("read of {n} sectors at {sector}: {o:?}");
        }
        // SAFETY: the read completed.
        if let Err(m) = pattern::verify(unsafe { dma::bytes(self.a(DATA_IN), bytes) }, sector, seed)
        {
            fail!("{m}");
        }
        Ok(())
    }

    /// Canaries intact, disk area intact, correct I/O served (after a reset when asked or
    /// when the device needs one).
    fn check(&mut self, force_reset: bool) -> Result<(), Why> {
        self.check_canaries()?;
        if force_reset || self.status() & st::DEVICE_NEEDS_RESET != 0 {
            self.init()?;
        }
        self.round += 1;
        let seed = mix64(self.seed ^ self.round);
        self.write_read(self.area(CHECK + self.round % 8), 8, seed)?;
        self.read_verify(self.area(0), CHECK, self.seed)?;
        self.check_canaries()
    }

    fn check_canaries(&self) -> Result<(), Why> {
        // SAFETY: our allocation; the device never gets it as writable.
        let zone = unsafe {
            dma::bytes(
                self.a(CANARY_ZONE.0),
                (CANARY_ZONE.1 - CANARY_ZONE.0) as usize,
            )
        };
        if let Some(i) = zone.iter().position(|b| *b != CANARY) {
            fail!(
                "canary at {:#x} overwritten",
                self.a(CANARY_ZONE.0) + i as u64
            );
        }
        Ok(())
    }
}

type Case = fn(&mut Raw) -> Result<(), Why>;

const CASES: [(&str, Case); 18] = [
    ("descriptor_loop", descriptor_loop),
    ("indices_out_of_range", indices_out_of_range),
    ("chain_longer_than_queue", chain_longer_than_queue),
    ("indirect_inside_indirect", indirect_inside_indirect),
    ("indirect_with_next", indirect_with_next),
    ("indirect_table_bad_length", indirect_table_bad_length),
    ("addresses_outside_ram", addresses_outside_ram),
    ("straddling_ram_end", straddling_ram_end),
    ("zero_length_and_oversized", zero_length_and_oversized),
    ("read_only_status", read_only_status),
    ("short_header", short_header),
    ("avail_idx_jump", avail_idx_jump),
    ("queue_size_invalid", queue_size_invalid),
    ("notify_missing_queue", notify_missing_queue),
    ("ring_addresses_changed", ring_addresses_changed),
    ("status_out_of_order", status_out_of_order),
    ("reset_in_flight", reset_in_flight),
    ("read_over_rings", read_over_rings),
];

/// `tests=hostile`: runs every case, then brings the regular driver `blk` back up (a fresh
/// `Blk::init`) and checks it with a write and a read (`TEST hostile_recovery`).
pub fn run_mode(blk: &mut Blk, env: &Env<'_>, tally: &mut Tally) {
    let t = run_all(
        env.cam,
        env.bdf,
        env.ram_end,
        blk.capacity(),
        mix64(env.seed ^ 0x4057),
    );
    tally.passed += t.passed;
    tally.failed += t.failed;
    let outcome = Blk::init(
        env.cam,
        env.bdf,
        env.ram_end,
        blk.driver(),
        MAX_QUEUES,
        true,
    )
    .map_err(Why::from)
    .and_then(|fresh| {
        *blk = fresh;
        recovery_io(blk, env.seed)
    });
    tally.record("hostile_recovery", outcome);
}

/// A pattern write then a verified read through the regular driver.
fn recovery_io(blk: &mut Blk, seed: u64) -> Result<(), Why> {
    const N: usize = 16;
    let buf = dma::alloc((N * SECTOR_SIZE) as u64, 4096)
        .ok_or(Why::new(format_args!("out of DMA memory")))?;
    let sector = blk.capacity() / 3;
    // SAFETY: fresh allocation, not in any request.
    pattern::fill(unsafe { dma::bytes(buf, N * SECTOR_SIZE) }, sector, seed);
    let data = [(buf, (N * SECTOR_SIZE) as u32)];
    let req = |kind, tag| Request {
        kind,
        sector,
        data: &data,
        indirect: false,
        tag,
    };
    let s = blk.execute(&req(RequestType::Out, 1))?;
    if s != VIRTIO_BLK_S_OK {
        fail!("write after the hostile cases: status {s}");
    }
    // SAFETY: the write completed.
    unsafe { dma::bytes(buf, N * SECTOR_SIZE) }.fill(0x5a);
    let s = blk.execute(&req(RequestType::In, 2))?;
    if s != VIRTIO_BLK_S_OK {
        fail!("read after the hostile cases: status {s}");
    }
    // SAFETY: the read completed.
    if let Err(m) = pattern::verify(unsafe { dma::bytes(buf, N * SECTOR_SIZE) }, sector, seed) {
        fail!("{m}");
    }
    Ok(())
}

/// Runs every hostile case on the device at `bdf` (reset first; left reset at the end).
pub fn run_all(cam: PortCam, bdf: Bdf, ram_end: u64, capacity: u64, seed: u64) -> Tally {
    let mut tally = Tally::default();
    let mark = dma::mark();
    let mut raw = match Raw::probe(cam, bdf, ram_end, capacity, seed) {
        Ok(r) => r,
        Err(why) => {
            tally.record("hostile_setup", Err(why));
            return tally;
        }
    };
    // SAFETY: our fresh allocation.
    unsafe {
        dma::bytes(
            raw.a(CANARY_ZONE.0),
            (CANARY_ZONE.1 - CANARY_ZONE.0) as usize,
        )
    }
    .fill(CANARY);
    let setup = raw.init().and_then(|()| {
        let s = raw.area(0);
        raw.write_read(s, CHECK, seed)
    });
    if let Err(why) = setup {
        tally.record("hostile_setup", Err(why));
        return tally;
    }
    let mut name = [0u8; 64];
    for (case_name, case) in CASES {
        let start = rdtsc();
        let outcome = case(&mut raw).and_then(|()| raw.check(false));
        if outcome.is_err() {
            // Start the next case from a known state: a fresh device and a fresh canary
            // pattern, so one failure does not cascade.
            let s = raw.area(0);
            let _ = raw.init().and_then(|()| raw.write_read(s, CHECK, seed));
        }
        let ms = (rdtsc() - start) / (hz() / 1000).max(1);
        crate::println!("# hostile_{case_name}: {ms} ms");
        let full = join(&mut name, "hostile_", case_name);
        tally.record(full, outcome);
    }
    let _ = raw.reset();
    dma::release(mark);
    tally
}

fn join<'a>(buf: &'a mut [u8; 64], a: &str, b: &str) -> &'a str {
    let n = (a.len() + b.len()).min(64);
    for (i, c) in a.bytes().chain(b.bytes()).take(n).enumerate() {
        buf[i] = c;
    }
    core::str::from_utf8(&buf[..n]).unwrap_or("hostile_?")
}

// --- the cases ----------------------------------------------------------------------------

fn descriptor_loop(r: &mut Raw) -> Result<(), Why> {
    r.header(RequestType::Out, r.s(1));
    r.desc(0, r.a(HDR), 16, F_NEXT, 1);
    r.desc(1, r.a(DATA_OUT), 512, F_NEXT, 0);
    r.refused(0, "next loop")?;
    r.desc(3, r.a(DATA_IN), 512, F_NEXT | F_WRITE, 3);
    r.refused(3, "self loop")
}

fn chain_longer_than_queue(r: &mut Raw) -> Result<(), Why> {
    r.header(RequestType::Out, r.s(2));
    r.desc(0, r.a(HDR), 16, F_NEXT, 1);
    for i in 1..QSIZE {
        r.desc(i, r.a(DATA_OUT), 512, F_NEXT, (i + 1) % QSIZE);
    }
    r.refused(0, "direct chain through the whole table")?;
    let n = QSIZE + 4;
    let t = r.a(TABLE);
    r.desc_at(t, 0, r.a(HDR), 16, F_NEXT, 1);
    for i in 1..n - 1 {
        r.desc_at(t, i, r.a(DATA_OUT), 512, F_NEXT, i + 1);
    }
    r.desc_at(t, n - 1, r.a(STATUS), 1, F_WRITE, 0);
    r.desc(4, t, 16 * u32::from(n), F_INDIRECT, 0);
    r.refused(4, "indirect chain longer than the queue")
}

fn indirect_inside_indirect(r: &mut Raw) -> Result<(), Why> {
    r.header(RequestType::Out, r.s(3));
    let inner = r.a(TABLE + 0x400);
    r.desc_at(inner, 0, r.a(HDR), 16, F_NEXT, 1);
    r.desc_at(inner, 1, r.a(DATA_OUT), 512, F_NEXT, 2);
    r.desc_at(inner, 2, r.a(STATUS), 1, F_WRITE, 0);
    r.desc_at(r.a(TABLE), 0, inner, 48, F_INDIRECT, 0);
    r.desc(0, r.a(TABLE), 16, F_INDIRECT, 0);
    r.refused(0, "nested indirect table")
}

fn indirect_with_next(r: &mut Raw) -> Result<(), Why> {
    r.header(RequestType::Out, r.s(4));
    r.desc_at(r.a(TABLE), 0, r.a(HDR), 16, F_NEXT, 1);
    r.desc_at(r.a(TABLE), 1, r.a(DATA_OUT), 512, 0, 0);
    r.desc(0, r.a(TABLE), 32, F_INDIRECT | F_NEXT, 1);
    r.desc(1, r.a(STATUS), 1, F_WRITE, 0);
    r.refused(0, "INDIRECT | NEXT")
}

fn indirect_table_bad_length(r: &mut Raw) -> Result<(), Why> {
    r.header(RequestType::Out, r.s(5));
    r.desc_at(r.a(TABLE), 0, r.a(HDR), 16, F_NEXT, 1);
    r.desc_at(r.a(TABLE), 1, r.a(DATA_OUT), 512, F_NEXT, 2);
    r.desc_at(r.a(TABLE), 2, r.a(STATUS), 1, F_WRITE, 0);
    for len in [0u32, 8, 47, 49, 0xffff_fff0, u32::MAX] {
        r.desc(0, r.a(TABLE), len, F_INDIRECT, 0);
        r.refused(0, "indirect table of a bad length")?;
    }
    r.desc(0, r.ram_end - 16, 48, F_INDIRECT, 0);
    r.refused(0, "indirect table past the end of RAM")
}

fn addresses_outside_ram(r: &mut Raw) -> Result<(), Why> {
    let bar = r.common;
    let bad = [
        (r.ram_end + 0x1000, 512u32),
        (u64::MAX - 255, 512),
        (u64::MAX, 1),
        (1u64 << 48, 4096),
        // The device's own registers.
        (bar, 512),
    ];
    for (addr, len) in bad {
        r.out_chain(r.s(6), (addr, len));
        r.refused(0, "OUT buffer outside RAM")?;
        r.in_chain(r.s(6), (addr, len));
        r.refused(0, "IN buffer outside RAM")?;
    }
    r.desc(0, u64::MAX - 7, 16, F_NEXT, 1);
    r.desc(1, r.a(STATUS), 1, F_WRITE, 0);
    r.refused(0, "header wrapping around")?;
    r.header(RequestType::Flush, 0);
    r.desc(0, r.a(HDR), 16, F_NEXT, 1);
    r.desc(1, r.ram_end + 5, 1, F_WRITE, 0);
    match r.submit(0) {
        Outcome::Used { len, .. } if len != 0 => fail!("status byte outside RAM: used len {len}"),
        _ => {}
    }
    // A descriptor table outside RAM: the device must not serve it.
    r.reset()?;
    r.clear_rings();
    r.until_queues()?;
    let rings = RingAddresses {
        desc_table: r.ram_end + 0x100_0000,
        ..r.rings
    };
    r.setup_queue(QSIZE, rings);
    mmio::write16(r.common + common::QUEUE_ENABLE, 1);
    r.driver_ok();
    r.publish(0);
    r.kick(0);
    r.refused_outcome("descriptor table outside RAM")?;
    r.init()
}

fn straddling_ram_end(r: &mut Raw) -> Result<(), Why> {
    let end = r.ram_end;
    // The last page of RAM: canary, then buffers that run past its end.
    // SAFETY: the top page of free RAM is never handed out by this test run's allocations
    // (they are far below) and is identity mapped.
    let top = unsafe { core::slice::from_raw_parts_mut((end - 4096) as *mut u8, 4096) };
    top.fill(CANARY);
    r.out_chain(r.s(7), (end - 512, 1024));
    r.refused(0, "OUT straddling the end of RAM")?;
    r.in_chain(r.s(7), (end - 512, 1024));
    r.refused(0, "IN straddling the end of RAM")?;
    if let Some(i) = top[..4096 - 512].iter().position(|b| *b != CANARY) {
        fail!(
            "RAM at {:#x} written by a refused request",
            end - 4096 + i as u64
        );
    }
    Ok(())
}

fn zero_length_and_oversized(r: &mut Raw) -> Result<(), Why> {
    r.out_chain(r.s(8), (r.a(DATA_OUT), 0));
    let o = r.submit(0);
    if o == Outcome::Ignored {
        fail!("zero-length write ignored");
    }
    r.check(false)?;
    r.header(RequestType::Flush, 0);
    r.desc(0, r.a(HDR), 16, F_NEXT, 1);
    r.desc(1, r.a(STATUS), 0, F_WRITE, 0);
    match r.submit(0) {
        Outcome::Used { len, status } if len != 0 || status != 0xee => {
            fail!("status written into a 0-byte buffer (len {len}, status {status})")
        }
        _ => {}
    }
    // Past the end of RAM; longer than the whole disk (from sector 0); not a multiple of
    // 512 bytes.
    let whole_disk = u32::try_from(r.capacity * SECTOR_SIZE as u64 + 512).unwrap_or(u32::MAX);
    for (sector, len) in [(r.s(9), u32::MAX), (0, whole_disk), (r.s(9), 700)] {
        if u64::from(len) > r.ram_end - r.a(DATA_OUT) && len != u32::MAX {
            continue;
        }
        r.out_chain(sector, (r.a(DATA_OUT), len));
        r.refused(0, "oversized or unaligned OUT")?;
    }
    r.in_chain(r.s(9), (r.a(DATA_IN), 700));
    r.refused(0, "IN of 700 bytes")?;
    // A read running past the end of the disk.
    r.in_chain(r.capacity - 8, (r.a(DATA_IN), 8192));
    r.refused(0, "IN past the end of the disk")
}

fn read_only_status(r: &mut Raw) -> Result<(), Why> {
    // The spec leaves open whether the data of a chain without a writable status byte is
    // written; only the status byte and the used length are checked.
    let s = r.s(10);
    // SAFETY: our buffer.
    pattern::fill(unsafe { dma::bytes(r.a(DATA_OUT), SECTOR_SIZE) }, s, r.seed);
    r.out_chain(s, (r.a(DATA_OUT), 512));
    r.desc(2, r.a(STATUS), 1, 0, 0);
    if let Outcome::Used { len, status } = r.submit(0) {
        if status != 0xee || len != 0 {
            fail!("device-readable status descriptor written (len {len}, status {status})");
        }
    }
    r.in_chain(s, (r.a(DATA_IN), 512));
    r.desc(2, r.a(STATUS), 1, 0, 0);
    if let Outcome::Used { status, .. } = r.submit(0) {
        if status != 0xee {
            fail!("device-readable status descriptor written");
        }
    }
    Ok(())
}

fn short_header(r: &mut Raw) -> Result<(), Why> {
    for len in [0u32, 1, 8, 15] {
        r.out_chain(r.s(11), (r.a(DATA_OUT), 512));
        r.desc(0, r.a(HDR), len, F_NEXT, 1);
        r.refused(0, "short header")?;
    }
    // Split 8 + 8 is legal (2.6.4 "Message Framing").
    let s = r.s(11);
    // SAFETY: our buffer.
    pattern::fill(unsafe { dma::bytes(r.a(DATA_OUT), SECTOR_SIZE) }, s, r.seed);
    r.header(RequestType::Out, s);
    r.desc(0, r.a(HDR), 8, F_NEXT, 1);
    r.desc(1, r.a(HDR) + 8, 8, F_NEXT, 2);
    r.desc(2, r.a(DATA_OUT), 512, F_NEXT, 3);
    r.desc(3, r.a(STATUS), 1, F_WRITE, 0);
    let o = r.submit(0);
    if o != (Outcome::Used {
        len: 1,
        status: VIRTIO_BLK_S_OK,
    }) {
        fail!("header split over two descriptors: {o:?}");
    }
    Ok(())
}

fn avail_idx_jump(r: &mut Raw) -> Result<(), Why> {
    let _ = r
        .mem
        .store_u16(r.rings.avail_ring + 2, QSIZE + 3, Ordering::Release);
    r.kick(0);
    let o = r.outcome();
    if matches!(o, Outcome::Used { .. }) || r.used_idx_now() != r.used_idx {
        fail!("device consumed an impossible avail index ({o:?})");
    }
    // Either NEEDS_RESET or ignored; a reset is needed to use the ring again.
    r.init()
}

fn queue_size_invalid(r: &mut Raw) -> Result<(), Why> {
    r.reset()?;
    r.clear_rings();
    r.until_queues()?;
    let c = r.common;
    mmio::write16(c + common::QUEUE_SELECT, 0);
    let max = mmio::read16(c + common::QUEUE_SIZE);
    for bad in [12u16, 3, max.wrapping_add(1), 1024, u16::MAX, 0] {
        mmio::write16(c + common::QUEUE_SIZE, bad);
        let now = mmio::read16(c + common::QUEUE_SIZE);
        if !now.is_power_of_two() || now > max {
            fail!("queue_size {bad} accepted as {now} (max {max})");
        }
    }
    r.setup_queue(QSIZE, r.rings);
    mmio::write16(c + common::QUEUE_ENABLE, 1);
    r.driver_ok();
    Ok(())
}

fn notify_missing_queue(r: &mut Raw) -> Result<(), Why> {
    for q in [1u16, 7, 63, 64, 1000, u16::MAX] {
        r.kick(q);
    }
    mmio::write8(r.notify + 1, 1);
    mmio::write32(r.notify + 0x800, u32::MAX);
    if r.status() & st::DEVICE_NEEDS_RESET != 0 {
        fail!("a notify of a missing queue broke the device");
    }
    Ok(())
}

fn ring_addresses_changed(r: &mut Raw) -> Result<(), Why> {
    let c = r.common;
    mmio::write16(c + common::QUEUE_SELECT, 0);
    let before = u64::from(mmio::read32(c + common::QUEUE_DESC))
        | u64::from(mmio::read32(c + common::QUEUE_DESC + 4)) << 32;
    mmio::write64(c + common::QUEUE_DESC, r.ram_end + 0x1000);
    mmio::write64(c + common::QUEUE_DRIVER, u64::MAX - 1);
    mmio::write64(c + common::QUEUE_DEVICE, r.a(CANARY_ZONE.0));
    mmio::write16(c + common::QUEUE_SIZE, 2);
    let after = u64::from(mmio::read32(c + common::QUEUE_DESC))
        | u64::from(mmio::read32(c + common::QUEUE_DESC + 4)) << 32;
    if after != before {
        fail!("queue_desc changed while the queue is enabled ({before:#x} -> {after:#x})");
    }
    if mmio::read16(c + common::QUEUE_SIZE) != QSIZE {
        fail!("queue_size changed while the queue is enabled");
    }
    mmio::write16(c + common::QUEUE_ENABLE, 0);
    Ok(())
}

fn status_out_of_order(r: &mut Raw) -> Result<(), Why> {
    r.reset()?;
    r.clear_rings();
    r.set_status(st::ACKNOWLEDGE);
    r.set_status(st::ACKNOWLEDGE | st::DRIVER | st::DRIVER_OK);
    r.setup_queue(QSIZE, r.rings);
    mmio::write16(r.common + common::QUEUE_ENABLE, 1);
    r.in_chain(r.s(12), (r.a(DATA_IN), 512));
    let o = r.submit(0);
    let status = r.status();
    crate::println!("# hostile: DRIVER_OK before FEATURES_OK: {o:?}, status {status:#x}");
    // 3.1.1: DRIVER_OK comes after FEATURES_OK; a device that has not accepted features is
    // not live, and must not use buffers (3.1.1, 2.7: before DRIVER_OK nothing is consumed).
    if status & st::DRIVER_OK != 0 {
        fail!("DRIVER_OK accepted before FEATURES_OK (status {status:#x})");
    }
    if o != Outcome::Ignored {
        fail!("a request was served by a device that is not live: {o:?}");
    }
    r.set_status(st::ACKNOWLEDGE | st::DRIVER | st::DRIVER_OK | st::FEATURES_OK);
    r.set_status(st::ACKNOWLEDGE);
    r.set_status(st::FAILED);
    r.set_status(0xff);
    let status = r.status();
    crate::println!("# hostile: status after out-of-order writes: {status:#x}");
    // No features were written (VERSION_1 missing), so FEATURES_OK, and with it DRIVER_OK,
    // can never have been accepted (2.2.2: the device fails to set FEATURES_OK).
    if status & (st::FEATURES_OK | st::DRIVER_OK) != 0 {
        fail!("FEATURES_OK or DRIVER_OK accepted without VERSION_1 (status {status:#x})");
    }
    r.init()?;
    // A feature write after FEATURES_OK must not take effect or break the device.
    mmio::write32(r.common + common::DRIVER_FEATURE_SELECT, 1);
    mmio::write32(r.common + common::DRIVER_FEATURE, 0);
    r.driver_ok();
    if r.status() & st::DRIVER_OK == 0 {
        fail!("device dropped DRIVER_OK after a late feature write");
    }
    r.init()
}

fn reset_in_flight(r: &mut Raw) -> Result<(), Why> {
    for i in 0..5u16 {
        let d = 3 * i;
        let hdr = r.a(HDR) + 0x40 + 0x10 * u64::from(i);
        let s = r.s(8 * u64::from(i % 4));
        let _ = r
            .mem
            .write(hdr, &OutHdr::new(RequestType::In, s).to_bytes());
        r.desc(d, hdr, 16, F_NEXT, d + 1);
        r.desc(
            d + 1,
            r.a(DATA_IN) + 0x1000 * u64::from(i),
            4096,
            F_NEXT | F_WRITE,
            d + 2,
        );
        r.desc(d + 2, r.a(STATUS) + 1 + u64::from(i), 1, F_WRITE, 0);
        r.publish(d);
    }
    r.kick(0);
    r.reset()?;
    // Once reset reads back 0, the device must leave the rings alone.
    let mut before = [0u8; 0x200];
    let _ = r.mem.read(r.rings.used_ring, &mut before);
    let deadline = rdtsc() + 50 * hz() / 1000;
    while rdtsc() < deadline {
        core::hint::spin_loop();
    }
    let mut after = [0u8; 0x200];
    let _ = r.mem.read(r.rings.used_ring, &mut after);
    if before != after {
        fail!("used ring written after reset completed");
    }
    r.init()
}

fn indices_out_of_range(r: &mut Raw) -> Result<(), Why> {
    for head in [QSIZE, QSIZE + 1, 0x7fff, u16::MAX] {
        r.in_chain(r.s(13), (r.a(DATA_IN), 512));
        r.refused(head, "avail head past the table")?;
    }
    for next in [QSIZE, 0x1234, u16::MAX] {
        r.in_chain(r.s(13), (r.a(DATA_IN), 512));
        r.desc(1, r.a(DATA_IN), 512, F_NEXT | F_WRITE, next);
        r.refused(0, "next index past the table")?;
    }
    r.header(RequestType::In, r.s(13));
    r.desc_at(r.a(TABLE), 0, r.a(HDR), 16, F_NEXT, 7);
    r.desc_at(r.a(TABLE), 1, r.a(STATUS), 1, F_WRITE, 0);
    r.desc(0, r.a(TABLE), 32, F_INDIRECT, 0);
    r.refused(0, "next past the end of an indirect table")
}

/// A read whose data lands on the rings themselves, with two more copies of the chain
/// behind it: the device finds garbage in its own rings while requests are in flight. It
/// must refuse or ask for a reset, and come back after one. (It once hung the vCPU thread in
/// `--io-mode vcpu`: see the VMM's `hostile_read_over_the_rings_with_requests_in_flight`.)
fn read_over_rings(r: &mut Raw) -> Result<(), Why> {
    let s = r.s(14);
    r.write_read(s, 8, mix64(r.seed ^ 0x0e))?;
    r.in_chain(s, (r.a(RINGS), 4096));
    r.publish(0);
    r.publish(0);
    r.publish(0);
    r.kick(0);
    // The first read is a valid request and may be served (the sync engine of the vcpu mode
    // finishes it before the next is popped); what the device must not do is leave the
    // driver without an answer: a used element or DEVICE_NEEDS_RESET.
    let o = r.outcome();
    if o == Outcome::Ignored {
        fail!("a read over its own rings was never answered");
    }
    r.init()
}
