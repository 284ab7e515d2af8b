//! A virtio-blk driver over one or more request queues (VIRTIO 1.x, 5.2 "Block Device"),
//! with many requests in flight, kicks suppressed through `VIRTIO_F_EVENT_IDX`, and
//! completions found by polling the used ring or by waiting for an MSI-X interrupt.

use core::fmt;

use blk_proto::config::VIRTIO_BLK_CONFIG_SIZE;
use blk_proto::features::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use blk_proto::{OutHdr, RequestType, VirtioBlkConfig};
use guest_test_kernel::{Completion, DriverOptions, Features, Kick};
use virtqueue_core::{DriverError, DriverQueue, GuestMemory, RingLayout};
use zerocopy::FromBytes;

use super::dma;
use super::limits::{MAX_QUEUES, QUEUE_SIZE_LIMIT};
use super::memory::IdentityMemory;
use super::pci::{Bdf, PortCam, Show};
use super::virtio_pci::{status, TransportError, VirtioPci, VIRTIO_MSI_NO_VECTOR};
use crate::arch::tsc::rdtsc;

/// Most data segments in one request we build.
pub const MAX_SEGS: usize = 64;
/// First interrupt vector; queue `q` uses `VECTOR_BASE + q`.
pub const VECTOR_BASE: u8 = 0x40;
/// Bytes of driver memory per request slot for its indirect table.
const TABLE_BYTES: u64 = (MAX_SEGS as u64 + 2) * 16;
/// A device that completes nothing for this long is declared broken (instead of hanging).
const COMPLETION_TIMEOUT_SECS: u64 = 10;
/// Features we accept when offered.
const WANTED: [u32; 12] = [
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VIRTIO_BLK_F_BLK_SIZE,
    VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_MQ,
    // Topology is harmless to accept and lets the config's hints be printed.
    blk_proto::features::VIRTIO_BLK_F_TOPOLOGY,
];

/// What can go wrong driving the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// Transport bring-up failed.
    Transport(TransportError),
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    NotModern,
    /// Out of DMA memory.
    OutOfMemory,
    /// The ring refused the chain (full, or too long), or returned garbage.
    Ring(DriverError),
    /// No free request slot on the queue.
    QueueFull,
    /// More data segments than this driver or the device allows.
    TooManySegments(usize),
    /// No such queue.
    BadQueue(usize),
    /// A request never completed.
    Lost,
    /// Nothing completed within the timeout, with this many requests in flight.
    Timeout(usize),
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlkError::Transport(e) => write!(f, "transport: {e}"),
            BlkError::NotModern => f.write_str("device does not offer VIRTIO_F_VERSION_1"),
            BlkError::OutOfMemory => f.write_str("out of DMA memory"),
            BlkError::Ring(e) => write!(f, "ring: {e}"),
            BlkError::QueueFull => f.write_str("queue full"),
            BlkError::TooManySegments(n) => write!(f, "{n} data segments is too many"),
            BlkError::BadQueue(q) => write!(f, "no queue {q}"),
            BlkError::Lost => f.write_str("request vanished without a completion"),
            BlkError::Timeout(n) => write!(
                f,
                "no completion within {COMPLETION_TIMEOUT_SECS} s, {n} request(s) in flight"
            ),
        }
    }
}

impl core::error::Error for BlkError {}

impl From<TransportError> for BlkError {
    fn from(e: TransportError) -> Self {
        BlkError::Transport(e)
    }
}

impl From<DriverError> for BlkError {
    fn from(e: DriverError) -> Self {
        BlkError::Ring(e)
    }
}

/// One request to submit. `data` buffers are `(guest address, length)`; their direction
/// follows from the type (the device writes them for IN and GET_ID, reads them otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `VIRTIO_BLK_T_*`.
    pub kind: RequestType,
    /// First sector (0 for requests without one).
    pub sector: u64,
    /// Data buffers.
    pub data: &'a [(u64, u32)],
    /// Put the chain in an indirect table (needs `VIRTIO_RING_F_INDIRECT_DESC`).
    pub indirect: bool,
    /// Returned with the completion.
    pub tag: u64,
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The request's tag.
    pub tag: u64,
    /// The status byte (`VIRTIO_BLK_S_*`).
    pub status: u8,
    /// Bytes the device reports having written.
    pub len: u32,
}

/// Driver state of one request queue.
struct BlkQueue {
    index: u16,
    ring: DriverQueue,
    notify: u64,
    vector: u8,
    /// Per slot: 16-byte header, then 16 bytes whose first holds the status.
    hdrs: u64,
    /// Per slot: an indirect table of `TABLE_BYTES`.
    tables: u64,
    free_slots: [u16; QUEUE_SIZE_LIMIT as usize],
    num_free_slots: u16,
    slot_of_head: [u16; QUEUE_SIZE_LIMIT as usize],
    tag_of_slot: [u64; QUEUE_SIZE_LIMIT as usize],
    /// The avail index at the last kick decision: `kick=always` notifies whenever it moved.
    kicked_avail: u16,
}

impl BlkQueue {
    fn hdr_addr(&self, slot: u16) -> u64 {
        self.hdrs + 32 * u64::from(slot)
    }

    fn status_addr(&self, slot: u16) -> u64 {
        self.hdr_addr(slot) + 16
    }
}

/// The driver of one virtio-blk device.
pub struct Blk {
    dev: VirtioPci,
    mem: IdentityMemory,
    queues: [Option<BlkQueue>; MAX_QUEUES],
    num_queues: usize,
    features: u64,
    offered: u64,
    config: VirtioBlkConfig,
    driver: DriverOptions,
}

impl Blk {
    /// Resets and initializes the device at `bdf` (3.1.1 "Driver Requirements: Device
    /// Initialization"), with up to `max_queues` request queues, behaving as `driver` says.
    pub fn init(
        cam: PortCam,
        bdf: Bdf,
        ram_end: u64,
        driver: DriverOptions,
        max_queues: usize,
        quiet: bool,
    ) -> Result<Self, BlkError> {
        let dev = VirtioPci::probe(cam, bdf)?;
        dev.reset()?;
        dev.add_status(status::ACKNOWLEDGE);
        dev.add_status(status::DRIVER);
        let offered = dev.device_features();
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            dev.add_status(status::FAILED);
            return Err(BlkError::NotModern);
        }
        let wanted = match driver.features {
            Features::All => WANTED.iter().fold(0u64, |acc, b| acc | bit(*b)),
            Features::Minimal => bit(VIRTIO_F_VERSION_1),
        };
        let features = offered & wanted;
        if let Err(e) = dev.negotiate(features) {
            dev.add_status(status::FAILED);
            return Err(e.into());
        }
        if !quiet {
            crate::println!(
                "virtio-blk {}: features offered {offered:#x} accepted {features:#x}",
                Show(bdf)
            );
            print_features(features);
        }
        let mut raw = [0u8; VIRTIO_BLK_CONFIG_SIZE];
        dev.read_device_config(&mut raw);
        let config = VirtioBlkConfig::read_from_bytes(&raw).unwrap_or_default();
        let mut blk = Blk {
            dev,
            mem: IdentityMemory::new(ram_end),
            queues: [const { None }; MAX_QUEUES],
            num_queues: 0,
            features,
            offered,
            config,
            driver,
        };
        let device_queues = if features & bit(VIRTIO_BLK_F_MQ) != 0 {
            usize::from(config.num_queues.get()).max(1)
        } else {
            1
        };
        let n = device_queues.min(max_queues).clamp(1, MAX_QUEUES);
        let vectors: [u8; MAX_QUEUES] = core::array::from_fn(|i| VECTOR_BASE + i as u8);
        let use_msix = blk.dev.msix_entries() as usize >= n;
        if use_msix {
            blk.dev.set_config_vector(VIRTIO_MSI_NO_VECTOR);
            blk.dev
                .enable_msix(crate::arch::apic::msi_address(), &vectors[..n])?;
        } else if driver.completion == Completion::Irq {
            return Err(TransportError::NoMsix.into());
        }
        for (q, vector) in vectors.iter().enumerate().take(n) {
            let entry = if use_msix {
                q as u16
            } else {
                VIRTIO_MSI_NO_VECTOR
            };
            let queue = blk.setup_queue(q as u16, entry, *vector)?;
            if let Some(slot) = blk.queues.get_mut(q) {
                *slot = Some(queue);
            }
        }
        blk.num_queues = n;
        blk.dev.add_status(status::DRIVER_OK);
        if !quiet {
            crate::println!(
                "virtio-blk {}: capacity {} sectors ({} MiB), {} queue(s) of {}, seg_max {}, size_max {}, msix {}",
                Show(bdf),
                blk.capacity(),
                blk.capacity() >> 11,
                n,
                blk.queue_size(0),
                blk.config.seg_max.get(),
                blk.config.size_max.get(),
                use_msix,
            );
        }
        Ok(blk)
    }

    fn setup_queue(
        &mut self,
        index: u16,
        msix_entry: u16,
        vector: u8,
    ) -> Result<BlkQueue, BlkError> {
        let size = self.dev.queue_max_size(index).min(QUEUE_SIZE_LIMIT);
        // Split rings need a power-of-two size (2.7 "Split Virtqueues").
        let size = if size.is_power_of_two() {
            size
        } else {
            1 << (15 - size.leading_zeros())
        };
        let layout =
            RingLayout::new(size).ok_or(BlkError::Transport(TransportError::NoSuchQueue(index)))?;
        let base = dma::alloc(layout.total_size, 4096).ok_or(BlkError::OutOfMemory)?;
        let rings = layout.addresses(base);
        let mut ring = DriverQueue::new(&self.mem, size, rings, self.has(VIRTIO_RING_F_EVENT_IDX))?;
        let hdrs = dma::alloc(32 * u64::from(size), 64).ok_or(BlkError::OutOfMemory)?;
        let tables = dma::alloc(TABLE_BYTES * u64::from(size), 64).ok_or(BlkError::OutOfMemory)?;
        if self.driver.completion == Completion::Poll {
            ring.disable_interrupts(&self.mem)?;
            // With EVENT_IDX the flag is ignored: park `used_event` where the used index
            // only arrives after wrapping (see `poll`).
            ring.set_used_event(&self.mem, u16::MAX)?;
        }
        let notify = self.dev.setup_queue(index, size, rings, msix_entry)?;
        Ok(BlkQueue {
            index,
            ring,
            notify,
            vector,
            hdrs,
            tables,
            free_slots: core::array::from_fn(|i| i as u16),
            num_free_slots: size,
            slot_of_head: [0; QUEUE_SIZE_LIMIT as usize],
            tag_of_slot: [0; QUEUE_SIZE_LIMIT as usize],
            kicked_avail: 0,
        })
    }

    /// Resets the device, leaving it to someone else (the queues' memory stays allocated).
    pub fn reset(&self) -> Result<(), BlkError> {
        Ok(self.dev.reset()?)
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, feature: u32) -> bool {
        self.features & bit(feature) != 0
    }

    /// Whether feature `bit` was offered.
    pub fn offered(&self, feature: u32) -> bool {
        self.offered & bit(feature) != 0
    }

    /// The device configuration read at init.
    pub fn config(&self) -> &VirtioBlkConfig {
        &self.config
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.config.capacity.get()
    }

    /// Request queues in use.
    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// Size of queue `q` (0 if absent).
    pub fn queue_size(&self, q: usize) -> u16 {
        self.queues
            .get(q)
            .and_then(|o| o.as_ref())
            .map_or(0, |bq| bq.ring.size())
    }

    /// How the driver learns of completions.
    pub fn completion(&self) -> Completion {
        self.driver.completion
    }

    /// How the driver behaves towards the device (for bringing it up again the same way).
    pub fn driver(&self) -> DriverOptions {
        self.driver
    }

    /// The most data segments one request may carry: our limit, the device's `seg_max`,
    /// and room in the ring for the header and status descriptors.
    pub fn max_segments(&self) -> usize {
        let ring_room = usize::from(self.queue_size(0)).saturating_sub(2);
        let mut max = MAX_SEGS.min(ring_room);
        if self.has(VIRTIO_BLK_F_SEG_MAX) && self.config.seg_max.get() != 0 {
            max = max.min(self.config.seg_max.get() as usize);
        }
        max.max(1)
    }

    /// The largest data segment the device accepts (`size_max`, or unlimited).
    pub fn max_segment_bytes(&self) -> u32 {
        match self.config.size_max.get() {
            s if self.has(VIRTIO_BLK_F_SIZE_MAX) && s >= 512 => s,
            _ => 1 << 30,
        }
    }

    /// Requests in flight on queue `q`.
    pub fn in_flight(&self, q: usize) -> usize {
        self.queues
            .get(q)
            .and_then(|o| o.as_ref())
            .map_or(0, |bq| usize::from(bq.ring.size() - bq.num_free_slots))
    }

    /// Publishes `req` on queue `q` without notifying the device (see [`Blk::kick`]), unless
    /// the driver kicks after every request (`kick=always`).
    pub fn submit(&mut self, q: usize, req: &Request<'_>) -> Result<(), BlkError> {
        let max_segs = self.max_segments();
        let indirect = req.indirect && self.has(VIRTIO_RING_F_INDIRECT_DESC);
        let mem = self.mem;
        let bq = self
            .queues
            .get_mut(q)
            .and_then(|o| o.as_mut())
            .ok_or(BlkError::BadQueue(q))?;
        if req.data.len() > max_segs {
            return Err(BlkError::TooManySegments(req.data.len()));
        }
        if bq.num_free_slots == 0 {
            return Err(BlkError::QueueFull);
        }
        let slot = bq.free_slots[usize::from(bq.num_free_slots - 1)];
        let hdr = bq.hdr_addr(slot);
        let status = bq.status_addr(slot);
        mem.write(hdr, &OutHdr::new(req.kind, req.sector).to_bytes())
            .map_err(DriverError::from)?;
        // A value the device never writes, so a completion without a status shows up.
        mem.write(status, &[0xff]).map_err(DriverError::from)?;

        let device_writes = matches!(req.kind, RequestType::In | RequestType::GetId);
        let mut readable = [(0u64, 0u32); MAX_SEGS + 1];
        let mut writable = [(0u64, 0u32); MAX_SEGS + 1];
        readable[0] = (hdr, 16);
        let (mut nr, mut nw) = (1, 0);
        for seg in req.data {
            if device_writes {
                writable[nw] = *seg;
                nw += 1;
            } else {
                readable[nr] = *seg;
                nr += 1;
            }
        }
        writable[nw] = (status, 1);
        nw += 1;
        let submitted = super::trace::now();
        let head = if indirect {
            let table = bq.tables + TABLE_BYTES * u64::from(slot);
            bq.ring
                .add_indirect(&mem, table, &readable[..nr], &writable[..nw])?
        } else {
            bq.ring.add(&mem, &readable[..nr], &writable[..nw])?
        };
        super::trace::on_submit(q, head, submitted);
        bq.num_free_slots -= 1;
        if let Some(s) = bq.slot_of_head.get_mut(usize::from(head)) {
            *s = slot;
        }
        bq.tag_of_slot[usize::from(slot)] = req.tag;
        if self.driver.kick == Kick::Always {
            self.kick(q);
        }
        Ok(())
    }

    /// Notifies queue `q` if the device asked for it (2.7.10; with EVENT_IDX only when the
    /// new requests crossed `avail_event`), or with `kick=always` if any request was published
    /// since the last kick. Returns whether it notified.
    pub fn kick(&mut self, q: usize) -> bool {
        let mem = self.mem;
        let always = self.driver.kick == Kick::Always;
        let Some(bq) = self.queues.get_mut(q).and_then(|o| o.as_mut()) else {
            return false;
        };
        // Asked even when ignored: it keeps the ring's record of what was kicked.
        let asked = bq.ring.should_kick(&mem);
        let fresh = bq.ring.avail_idx() != bq.kicked_avail;
        bq.kicked_avail = bq.ring.avail_idx();
        let kick = if always { fresh } else { asked };
        super::trace::on_kick(q, kick);
        if kick {
            VirtioPci::notify(bq.notify, bq.index);
        }
        kick
    }

    /// Hands every completion already in queue `q`'s used ring to `f`; returns how many.
    pub fn poll(&mut self, q: usize, f: &mut impl FnMut(Done)) -> Result<usize, BlkError> {
        let mem = self.mem;
        let completion = self.driver.completion;
        let event_idx = self.has(VIRTIO_RING_F_EVENT_IDX);
        let bq = self
            .queues
            .get_mut(q)
            .and_then(|o| o.as_mut())
            .ok_or(BlkError::BadQueue(q))?;
        let mut n = 0;
        while let Some((head, len)) = bq.ring.pop_used(&mem)? {
            super::trace::on_complete(q, head);
            let slot = bq.slot_of_head.get(usize::from(head)).copied().unwrap_or(0);
            let mut status = [0xffu8];
            mem.read(bq.status_addr(slot), &mut status)
                .map_err(DriverError::from)?;
            let tag = bq.tag_of_slot.get(usize::from(slot)).copied().unwrap_or(0);
            if let Some(free) = bq.free_slots.get_mut(usize::from(bq.num_free_slots)) {
                *free = slot;
            }
            bq.num_free_slots += 1;
            n += 1;
            f(Done {
                tag,
                status: status[0],
                len,
            });
        }
        if n > 0 && completion == Completion::Poll && event_idx {
            // With EVENT_IDX the NO_INTERRUPT flag is ignored (2.7.10): keep `used_event`
            // just behind what we consumed, which the used index can only reach again after
            // wrapping, so the device never interrupts a poller.
            let behind = bq.ring.last_used().wrapping_sub(1);
            bq.ring.set_used_event(&mem, behind)?;
        }
        Ok(n)
    }

    /// Requests in flight on all queues.
    pub fn total_in_flight(&self) -> usize {
        (0..self.num_queues).map(|q| self.in_flight(q)).sum()
    }

    /// Waits until some queue has completions and hands them all to `f`; returns how many
    /// (0 only when nothing is in flight). Poll mode spins on the used rings; irq mode arms
    /// every busy queue's interrupt and spins on the interrupt counters.
    pub fn wait_any(&mut self, f: &mut impl FnMut(usize, Done)) -> Result<usize, BlkError> {
        let deadline = rdtsc().saturating_add(COMPLETION_TIMEOUT_SECS * crate::arch::tsc::hz());
        loop {
            let mut n = 0;
            for q in 0..self.num_queues {
                n += self.poll(q, &mut |d| f(q, d))?;
            }
            if n > 0 || self.total_in_flight() == 0 {
                return Ok(n);
            }
            match self.driver.completion {
                Completion::Poll => core::hint::spin_loop(),
                Completion::Irq => self.wait_irq(deadline)?,
            }
            if rdtsc() > deadline {
                return Err(BlkError::Timeout(self.total_in_flight()));
            }
        }
    }

    /// Arms the interrupts of the queues with requests in flight and spins until one fires
    /// (or a completion raced the arming).
    fn wait_irq(&mut self, deadline: u64) -> Result<(), BlkError> {
        let mem = self.mem;
        let mut before = [0u64; MAX_QUEUES];
        let mut vectors = [0u8; MAX_QUEUES];
        let mut armed = 0;
        for q in 0..self.num_queues {
            if self.in_flight(q) == 0 {
                continue;
            }
            let Some(bq) = self.queues.get_mut(q).and_then(|o| o.as_mut()) else {
                continue;
            };
            before[armed] = crate::arch::irq::count(bq.vector);
            vectors[armed] = bq.vector;
            armed += 1;
            // enable_interrupts re-reads the used index after arming (2.7.14): a completion
            // that raced the arming is picked up by polling instead of being waited for.
            if bq.ring.enable_interrupts(&mem)? {
                return Ok(());
            }
        }
        while (0..armed).all(|i| crate::arch::irq::count(vectors[i]) == before[i]) {
            if rdtsc() > deadline {
                break;
            }
            core::hint::spin_loop();
        }
        Ok(())
    }

    /// Submits one request on queue 0, kicks, and waits for it; returns its status byte.
    /// Other requests completing meanwhile are dropped, so use it with nothing else in flight.
    pub fn execute(&mut self, req: &Request<'_>) -> Result<u8, BlkError> {
        self.submit(0, req)?;
        self.kick(0);
        let mut status = None;
        while status.is_none() && self.total_in_flight() > 0 {
            self.wait_any(&mut |_, d: Done| {
                if d.tag == req.tag {
                    status = Some(d.status);
                }
            })?;
        }
        status.ok_or(BlkError::Lost)
    }
}

const fn bit(b: u32) -> u64 {
    1u64 << b
}

fn print_features(features: u64) {
    const NAMES: [(u32, &str); 12] = [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
        (VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE"),
        (VIRTIO_BLK_F_SEG_MAX, "SEG_MAX"),
        (VIRTIO_BLK_F_SIZE_MAX, "SIZE_MAX"),
        (VIRTIO_BLK_F_FLUSH, "FLUSH"),
        (VIRTIO_BLK_F_DISCARD, "DISCARD"),
        (VIRTIO_BLK_F_WRITE_ZEROES, "WRITE_ZEROES"),
        (VIRTIO_BLK_F_RO, "RO"),
        (VIRTIO_BLK_F_MQ, "MQ"),
        (blk_proto::features::VIRTIO_BLK_F_TOPOLOGY, "TOPOLOGY"),
    ];
    crate::print!("virtio-blk: accepted");
    for (b, name) in NAMES {
        if features & bit(b) != 0 {
            crate::print!(" {name}");
        }
    }
    crate::println!();
}
