//! The virtio-blk PCI function: configuration space, BAR0 and the reactions to what the
//! driver does through the virtio-pci transport (VIRTIO 1.x, 4.1).
//!
//! The transport state machine (`pci-transport`) answers every config-space and BAR access;
//! this file acts on the events it returns: ioeventfds for enabled queues (moved when BAR0
//! moves), MSI routes for the MSI-X table, and the device model's activation at DRIVER_OK and
//! stop at reset. What the device offers and how its queues are served is `blk-device`'s.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use blk_device::config::DiskConfig;
use blk_device::device::{Active, BlockDevice};
use blk_device::interrupt::Interrupt;
use blk_device::mode::QueueSetup;
use blk_proto::features::VIRTIO_RING_F_EVENT_IDX;
use blk_proto::Features;
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use pci_transport::virtio_pci::layout::BAR_SIZE;
use pci_transport::virtio_pci::VIRTIO_ID_BLOCK;
use pci_transport::{
    Event, Events, VirtioPciFunction, VirtioPciParams, MAX_MSIX_VECTORS, MAX_QUEUES,
};
use virtqueue_core::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::context::{DeviceContext, DeviceError};
use crate::interrupts::{MsixVectors, NO_VECTOR};
use crate::pci_device::{BarInfo, PciDevice};

/// The device model's notifications, as MSI-X interrupts: queue `q` is interrupt source `q`,
/// the configuration change is the source after the last queue.
#[derive(Debug)]
struct MsixInterrupt {
    vectors: Arc<MsixVectors>,
    config_source: usize,
}

impl Interrupt for MsixInterrupt {
    fn notify_queue(&self, queue: u16) {
        self.vectors.trigger_source(usize::from(queue));
    }

    fn notify_config(&self) {
        self.vectors.trigger_source(self.config_source);
    }
}

/// A virtio-blk PCI function backed by a raw image or block device.
pub struct VirtioBlkPci {
    path: PathBuf,
    blk: BlockDevice,
    transport: VirtioPciFunction,
    ctx: DeviceContext,
    interrupt: Arc<MsixInterrupt>,
    vectors: Arc<MsixVectors>,
    /// One kick eventfd per queue; registered as an ioeventfd at `ioevents[q]` when `Some`.
    kicks: Vec<EventFd>,
    ioevents: Vec<Option<u64>>,
    /// The served queues, between DRIVER_OK and reset.
    active: Option<Active>,
}

impl std::fmt::Debug for VirtioBlkPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlkPci")
            .field("path", &self.path)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl VirtioBlkPci {
    /// Opens the disk and builds the function, with BAR0 at `ctx.bar0_addr`.
    pub fn new(cfg: &DiskConfig, ctx: DeviceContext) -> Result<Self, DeviceError> {
        let path = cfg.path.clone();
        let max = MAX_QUEUES.min(MAX_MSIX_VECTORS - 1);
        if usize::from(cfg.queues) > max {
            return Err(DeviceError::Config {
                path,
                reason: format!("num-queues={} is out of range: use 1..={max}", cfg.queues),
            });
        }
        let blk = BlockDevice::open(cfg, ctx.serve_options(cfg.queues), ctx.metrics.clone())?;
        let num_vectors = cfg.queues + 1;
        let params = VirtioPciParams::new(
            VIRTIO_ID_BLOCK,
            cfg.queues,
            cfg.queue_size,
            num_vectors,
            blk.offered_features().bits(),
            ctx.bar0_addr,
        );
        let transport = VirtioPciFunction::new(&params, &blk.config().to_bytes()).map_err(|e| {
            DeviceError::Transport {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let vectors = MsixVectors::new(&ctx.msi, num_vectors, usize::from(cfg.queues) + 1)
            .map_err(|source| DeviceError::Interrupt {
                path: path.clone(),
                source,
            })?;
        let kicks = (0..cfg.queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| DeviceError::Fd {
                path: path.clone(),
                source,
            })?;
        let vectors = Arc::new(vectors);
        Ok(VirtioBlkPci {
            path,
            blk,
            transport,
            ctx,
            interrupt: Arc::new(MsixInterrupt {
                vectors: vectors.clone(),
                config_source: usize::from(cfg.queues),
            }),
            vectors,
            ioevents: vec![None; usize::from(cfg.queues)],
            kicks,
            active: None,
        })
    }

    /// Stops serving (in-flight requests complete first), then makes every completed write
    /// durable (`fdatasync`). Call once at VMM exit.
    pub fn shutdown(&mut self) {
        self.deactivate();
        for q in 0..self.kicks.len() {
            self.unregister_ioevent(q);
        }
        if let Err(e) = self.blk.sync() {
            eprintln!(
                "virtio-blk {}: fdatasync at shutdown failed: {e}",
                self.path.display()
            );
        }
        self.vectors.release(&self.ctx.msi);
    }

    /// Acts on what a guest access did.
    fn handle_events(&mut self, events: &Events) {
        for event in events {
            match *event {
                Event::QueueEnabled(q) => self.register_ioevent(usize::from(q)),
                Event::BarReprogrammed { index: 0, .. } => self.move_ioevents(),
                Event::MsixEntryChanged(v) => self.update_vector(v),
                Event::MsixEnableChanged { .. } => {
                    (0..self.vectors.len()).for_each(|v| self.update_vector(v))
                }
                Event::MsixPendingDelivered { vector, .. } => {
                    if let Some(line) = self.vectors.line(vector) {
                        line.trigger();
                    }
                }
                Event::QueueMsixVectorChanged { queue, vector } => {
                    self.vectors.set_source_vector(usize::from(queue), vector)
                }
                Event::ConfigMsixVectorChanged(vector) => self
                    .vectors
                    .set_source_vector(usize::from(self.num_queues()), vector),
                Event::DriverOk => self.activate(),
                Event::Reset => self.reset(),
                Event::QueueNotify(q) => self.notify(q),
                _ => {}
            }
        }
    }

    fn num_queues(&self) -> u16 {
        self.kicks.len() as u16
    }

    /// Mirrors MSI-X vector `v` into its route and its line's mask.
    fn update_vector(&mut self, v: u16) {
        let table = self.transport.msix_table();
        let Some(message) = table.message(v) else {
            return;
        };
        let masked = !table.is_deliverable(v);
        let Some(line) = self.vectors.line(v) else {
            return;
        };
        if masked {
            line.set_masked(true);
        }
        if let Err(e) = self
            .ctx
            .msi
            .update_route(line.gsi(), message.address, message.data, masked)
        {
            eprintln!("virtio-blk {}: MSI-X vector {v}: {e}", self.path.display());
        }
        if !masked {
            line.set_masked(false);
        }
    }

    /// The guest wrote a queue's notify register through an MMIO exit: the mode serves it
    /// here (`vcpu`), or the ioeventfd is missing or not yet moved and the kick is passed on.
    fn notify(&mut self, q: u16) {
        if self.active.as_mut().is_some_and(|a| a.notify(q)) {
            return;
        }
        if let Some(k) = self.kicks.get(usize::from(q)) {
            let _ = k.write(1);
        }
    }

    fn register_ioevent(&mut self, q: usize) {
        if !self.ctx.io_mode.properties().ioeventfd {
            return;
        }
        self.unregister_ioevent(q);
        let Some(addr) = self.transport.notify_address(q as u16) else {
            return;
        };
        let Some(kick) = self.kicks.get(q) else {
            return;
        };
        match self
            .ctx
            .vm
            .register_ioevent(kick, &IoEventAddress::Mmio(addr), NoDatamatch)
        {
            Ok(()) => {
                if let Some(slot) = self.ioevents.get_mut(q) {
                    *slot = Some(addr);
                }
            }
            // Kicks still arrive as MMIO exits (`Event::QueueNotify`), only slower.
            Err(e) => eprintln!(
                "virtio-blk {}: {}",
                self.path.display(),
                DeviceError::Ioeventfd {
                    path: self.path.clone(),
                    addr,
                    source: io::Error::from_raw_os_error(e.errno())
                }
            ),
        }
    }

    fn unregister_ioevent(&mut self, q: usize) {
        let Some(addr) = self.ioevents.get_mut(q).and_then(Option::take) else {
            return;
        };
        if let Some(kick) = self.kicks.get(q) {
            let _ = self
                .ctx
                .vm
                .unregister_ioevent(kick, &IoEventAddress::Mmio(addr), NoDatamatch);
        }
    }

    /// BAR0 moved: every registered ioeventfd follows it.
    fn move_ioevents(&mut self) {
        for q in 0..self.kicks.len() {
            if self.ioevents.get(q).is_some_and(Option::is_some) {
                self.register_ioevent(q);
            }
        }
    }

    /// DRIVER_OK: hands the enabled queues to the device model.
    fn activate(&mut self) {
        if self.active.is_some() {
            return;
        }
        let negotiated = Features(self.transport.negotiated_features().unwrap_or(0));
        let mut queues = Vec::new();
        for q in 0..self.num_queues() {
            match self.queue_setup(q, negotiated) {
                Ok(Some(setup)) => queues.push(setup),
                Ok(None) => {}
                Err(e) => self.needs_reset(&format!("queue {q}: {e}")),
            }
        }
        if queues.is_empty() {
            return;
        }
        let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
        match self
            .blk
            .activate(negotiated, self.ctx.mem.clone(), queues, interrupt)
        {
            Ok(active) => self.active = Some(active),
            Err(e) => self.needs_reset(&e.to_string()),
        }
    }

    /// A queue or the whole device cannot be served: DEVICE_NEEDS_RESET and the
    /// configuration interrupt.
    fn needs_reset(&self, why: &str) {
        eprintln!("virtio-blk {}: {why}", self.path.display());
        self.blk.health().report_needs_reset();
        self.interrupt.notify_config();
    }

    /// The enabled queue `q` with its kick eventfd, `None` when the driver did not enable it.
    fn queue_setup(&self, q: u16, negotiated: Features) -> Result<Option<QueueSetup>, String> {
        let Some(queue) = self.build_queue(q, negotiated)? else {
            return Ok(None);
        };
        let kick = self
            .kicks
            .get(usize::from(q))
            .ok_or("no kick eventfd")?
            .try_clone()
            .map_err(|e| format!("cannot duplicate its kick eventfd: {e}"))?;
        Ok(Some(QueueSetup {
            index: q,
            queue,
            kick,
        }))
    }

    /// The queue state of `q`, or `None` when the driver did not enable it.
    fn build_queue(&self, q: u16, negotiated: Features) -> Result<Option<Queue>, String> {
        let Some(state) = self.transport.queue(q) else {
            return Ok(None);
        };
        if !state.enabled() {
            return Ok(None);
        }
        let mut queue = Queue::new(self.transport.common_config().max_queue_size());
        queue.set_size(state.size());
        queue.set_desc_table_address(state.desc());
        queue.set_avail_ring_address(state.driver());
        queue.set_used_ring_address(state.device());
        queue.set_event_idx(negotiated.contains(VIRTIO_RING_F_EVENT_IDX));
        queue.set_ready(true);
        if !queue.is_valid(&self.ctx.mem) {
            return Err(format!(
                "invalid ring (size {}, desc {:#x}, driver {:#x}, device {:#x}): needs reset",
                state.size(),
                state.desc(),
                state.driver(),
                state.device()
            ));
        }
        self.vectors
            .set_source_vector(usize::from(q), state.msix_vector());
        Ok(Some(queue))
    }

    /// Stops serving the queues, after in-flight requests complete.
    fn deactivate(&mut self) {
        if let Some(a) = self.active.take() {
            a.stop();
        }
    }

    /// Device reset (status 0): stop, forget kicks, interrupts and queue state.
    fn reset(&mut self) {
        self.deactivate();
        for q in 0..self.kicks.len() {
            self.unregister_ioevent(q);
            if let Some(k) = self.kicks.get(q) {
                let _ = k.read();
            }
        }
        for s in 0..=usize::from(self.num_queues()) {
            self.vectors.set_source_vector(s, NO_VECTOR);
        }
        for v in 0..self.vectors.len() {
            if let Some(line) = self.vectors.line(v) {
                line.clear_pending();
            }
        }
        self.blk.health().take_needs_reset();
    }

    /// Moves a DEVICE_NEEDS_RESET request from the dataplane into the transport, before
    /// the driver looks at `device_status`. The dataplane has already raised the
    /// configuration interrupt.
    fn sync_health(&mut self) {
        if self.blk.health().take_needs_reset() {
            let _ = self.transport.set_needs_reset();
        }
    }
}

impl PciDevice for VirtioBlkPci {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.transport.config_read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let events = self.transport.config_write(offset, data);
        self.handle_events(&events);
    }

    fn bars(&self) -> Vec<BarInfo> {
        vec![BarInfo {
            index: 0,
            addr: self.transport.bar0_address(),
            size: BAR_SIZE,
        }]
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.sync_health();
        self.transport.bar_read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.sync_health();
        let events = self.transport.bar_write(bar, offset, data);
        self.handle_events(&events);
    }
}

impl Drop for VirtioBlkPci {
    fn drop(&mut self) {
        self.deactivate();
    }
}
