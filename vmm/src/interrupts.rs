//! MSI routing for the VM: GSI allocation, the KVM GSI routing table, and irqfd-driven
//! interrupt lines with MSI-X mask/pending semantics (PCI MSI-X, VIRTIO 1.x 4.1.5.1.2).
//!
//! `KVM_SET_GSI_ROUTING` replaces the VM's whole routing table, so [`MsiRouter`] owns every
//! route and reinstalls all of them on each change. Creating the in-kernel irqchip installs
//! a default table (GSI 0..15 to the PIC and the IOAPIC, 16..23 to the IOAPIC); the guest
//! uses no legacy interrupt, but the platform may still pulse a legacy line (the serial port's
//! IRQ 4 through `KVM_IRQ_LINE`, which goes through the same table), so we keep that default
//! table in every table we install. If KVM refuses it (a split irqchip has no in-kernel
//! PIC/IOAPIC), we fall back to MSI routes only and remember that choice.
//!
//! Only configuration paths take the router's lock; the hot path is an `eventfd` write.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// First GSI handed out for MSI: 0..23 are the IOAPIC pins.
pub const FIRST_MSI_GSI: u32 = 24;
/// Number of IOAPIC pins covered by the default irqchip routes.
const IOAPIC_PINS: u32 = 24;
/// Number of PIC lines (GSI 0..15 are routed to the PIC as well as to the IOAPIC).
const PIC_LINES: u32 = 16;
/// KVM's routing table limit (`KVM_MAX_IRQ_ROUTES`).
const MAX_GSI: u32 = 4096;

/// Errors of MSI routing.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// All GSIs are in use.
    #[error("no free GSI left for MSI routing (KVM allows {MAX_GSI}); use fewer queues or disks")]
    GsiExhausted,
    /// `KVM_SET_GSI_ROUTING` failed.
    #[error("KVM_SET_GSI_ROUTING failed with {entries} routes: {source}; check that the VM has an in-kernel irqchip (KVM_CREATE_IRQCHIP)")]
    SetRouting {
        /// Number of routes in the rejected table.
        entries: usize,
        /// The kernel's error.
        source: io::Error,
    },
    /// The routing table could not be built.
    #[error("cannot build a KVM routing table of {0} entries")]
    TableTooLarge(usize),
    /// `KVM_IRQFD` failed.
    #[error("KVM_IRQFD for GSI {gsi} failed: {source}; check that /dev/kvm supports irqfd")]
    Irqfd {
        /// The GSI the eventfd was to be bound to.
        gsi: u32,
        /// The kernel's error.
        source: io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}; raise the open-files limit (ulimit -n)")]
    EventFd(io::Error),
}

/// One MSI route as the device last programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsiRoute {
    addr: u64,
    data: u32,
    masked: bool,
}

#[derive(Debug)]
struct RouterState {
    next_gsi: u32,
    free_gsis: Vec<u32>,
    routes: BTreeMap<u32, MsiRoute>,
    /// Whether the default irqchip routes go into the table (see the module comment).
    with_irqchip_routes: bool,
}

/// Owns the VM's GSI routing table: allocates GSIs for MSI, keeps every MSI route, and
/// installs the whole table on each change. Thread-safe; used only on configuration paths.
#[derive(Debug)]
pub struct MsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

impl MsiRouter {
    /// A router for `vm`, with no MSI route yet.
    pub fn new(vm: Arc<VmFd>) -> Self {
        MsiRouter {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: FIRST_MSI_GSI,
                free_gsis: Vec::new(),
                routes: BTreeMap::new(),
                with_irqchip_routes: true,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        // A panic while holding the lock leaves a consistent map behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a GSI (24 and up) for an MSI route. It has no route until [`Self::update_route`].
    pub fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let mut st = self.lock();
        if let Some(gsi) = st.free_gsis.pop() {
            return Ok(gsi);
        }
        if st.next_gsi >= MAX_GSI {
            return Err(InterruptError::GsiExhausted);
        }
        let gsi = st.next_gsi;
        st.next_gsi += 1;
        Ok(gsi)
    }

    /// Drops `gsi`'s route and returns the GSI to the pool.
    pub fn release_gsi(&self, gsi: u32) -> Result<(), InterruptError> {
        let mut st = self.lock();
        let had_route = st.routes.remove(&gsi).is_some();
        if gsi >= FIRST_MSI_GSI && !st.free_gsis.contains(&gsi) {
            st.free_gsis.push(gsi);
        }
        if had_route {
            self.install(&mut st)?;
        }
        Ok(())
    }

    /// Binds `evt` to `gsi`: each write to `evt` injects the GSI's route (`KVM_IRQFD`).
    pub fn register_irqfd(&self, gsi: u32, evt: &EventFd) -> Result<(), InterruptError> {
        self.vm
            .register_irqfd(evt, gsi)
            .map_err(|e| InterruptError::Irqfd {
                gsi,
                source: io::Error::from_raw_os_error(e.errno()),
            })
    }

    /// Unbinds `evt` from `gsi`.
    pub fn unregister_irqfd(&self, gsi: u32, evt: &EventFd) -> Result<(), InterruptError> {
        self.vm
            .unregister_irqfd(evt, gsi)
            .map_err(|e| InterruptError::Irqfd {
                gsi,
                source: io::Error::from_raw_os_error(e.errno()),
            })
    }

    /// Sets `gsi`'s MSI message. A masked route, or one with address 0 (an MSI-X entry the
    /// driver has not programmed), is left out of the table so KVM never delivers it; the
    /// device keeps the interrupt pending meanwhile (see [`IrqLine`]).
    pub fn update_route(
        &self,
        gsi: u32,
        addr: u64,
        data: u32,
        masked: bool,
    ) -> Result<(), InterruptError> {
        let mut st = self.lock();
        let route = MsiRoute { addr, data, masked };
        if st.routes.get(&gsi) == Some(&route) {
            return Ok(());
        }
        st.routes.insert(gsi, route);
        self.install(&mut st)
    }

    fn install(&self, st: &mut RouterState) -> Result<(), InterruptError> {
        if st.with_irqchip_routes {
            match self.set_table(st, true) {
                Ok(()) => return Ok(()),
                // EINVAL: no in-kernel PIC/IOAPIC (split irqchip); retry with MSI routes only.
                Err(InterruptError::SetRouting { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) =>
                {
                    st.with_irqchip_routes = false;
                }
                Err(e) => return Err(e),
            }
        }
        self.set_table(st, false)
    }

    fn set_table(&self, st: &RouterState, with_irqchip: bool) -> Result<(), InterruptError> {
        let mut entries = Vec::with_capacity(st.routes.len() + 40);
        if with_irqchip {
            entries.extend(default_irqchip_routes());
        }
        entries.extend(
            st.routes
                .iter()
                .filter(|(_, r)| !r.masked && r.addr != 0)
                .map(|(&gsi, r)| msi_entry(gsi, r.addr, r.data)),
        );
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| InterruptError::TableTooLarge(entries.len()))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| InterruptError::SetRouting {
                entries: entries.len(),
                source: io::Error::from_raw_os_error(e.errno()),
            })
    }
}

fn msi_entry(gsi: u32, addr: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = addr as u32;
    e.u.msi.address_hi = (addr >> 32) as u32;
    e.u.msi.data = data;
    e
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// The table `KVM_CREATE_IRQCHIP` installs: GSI n to IOAPIC pin n, and GSI 0..15 also to
/// the PIC (master for 0..7, slave for 8..15).
fn default_irqchip_routes() -> impl Iterator<Item = kvm_irq_routing_entry> {
    (0..IOAPIC_PINS).flat_map(|gsi| {
        let pic = (gsi < PIC_LINES).then(|| {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            irqchip_entry(gsi, chip, gsi % 8)
        });
        pic.into_iter()
            .chain(std::iter::once(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)))
    })
}

const LINE_MASKED: u8 = 1;
const LINE_PENDING: u8 = 2;

/// One interrupt source of a device (a queue's or the config change's MSI-X vector), raised
/// by writing an irqfd. Carries the MSI-X Pending Bit semantics: while masked, raising only
/// records a pending interrupt, which [`IrqLine::set_masked`] delivers on unmask.
///
/// Shared (`Arc`) between the dataplane thread that raises it and the configuration path
/// that retargets or masks it; raising is lock-free.
#[derive(Debug)]
pub struct IrqLine {
    irqfd: EventFd,
    gsi: u32,
    state: AtomicU8,
}

impl IrqLine {
    /// A new line on a freshly allocated GSI of `router`, bound through an irqfd, masked
    /// until its route is programmed.
    pub fn new(router: &MsiRouter) -> Result<Self, InterruptError> {
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        let gsi = router.allocate_gsi()?;
        if let Err(e) = router.register_irqfd(gsi, &irqfd) {
            let _ = router.release_gsi(gsi);
            return Err(e);
        }
        Ok(IrqLine {
            irqfd,
            gsi,
            state: AtomicU8::new(LINE_MASKED),
        })
    }

    /// A line whose eventfd is bound to nothing: raising it only makes the eventfd readable.
    /// For running a device without a VM (tests) and for counting interrupts.
    pub fn unbound() -> Result<Self, InterruptError> {
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        Ok(IrqLine {
            irqfd,
            gsi: u32::MAX,
            state: AtomicU8::new(0),
        })
    }

    /// The eventfd that raises the interrupt.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The GSI this line injects.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// Raises the interrupt, or records it as pending while masked.
    pub fn trigger(&self) {
        if self.state.load(Ordering::Acquire) & LINE_MASKED != 0 {
            self.state.fetch_or(LINE_PENDING, Ordering::AcqRel);
            // Unmasked between the load and the fetch_or: deliver what we just recorded.
            if self.state.load(Ordering::Acquire) & LINE_MASKED == 0 {
                self.deliver_pending();
            }
            return;
        }
        self.write_irqfd();
        // Masked while we wrote: KVM may have dropped the message (the route left the
        // table), so keep it pending too; at worst the driver sees one spurious interrupt.
        if self.state.load(Ordering::Acquire) & LINE_MASKED != 0 {
            self.state.fetch_or(LINE_PENDING, Ordering::AcqRel);
        }
    }

    /// Whether an interrupt is pending (MSI-X Pending Bit).
    pub fn is_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) & LINE_PENDING != 0
    }

    /// Masks or unmasks the line; unmasking delivers a pending interrupt.
    pub fn set_masked(&self, masked: bool) {
        if masked {
            self.state.fetch_or(LINE_MASKED, Ordering::AcqRel);
        } else {
            self.state.fetch_and(!LINE_MASKED, Ordering::AcqRel);
            self.deliver_pending();
        }
    }

    /// Forgets a pending interrupt (device reset).
    pub fn clear_pending(&self) {
        self.state.fetch_and(!LINE_PENDING, Ordering::AcqRel);
    }

    fn deliver_pending(&self) {
        if self.state.fetch_and(!LINE_PENDING, Ordering::AcqRel) & LINE_PENDING != 0 {
            self.write_irqfd();
        }
    }

    fn write_irqfd(&self) {
        // EAGAIN means the counter is saturated: an interrupt is already on its way.
        let _ = self.irqfd.write(1);
    }

    /// Unbinds the irqfd and releases the GSI.
    pub fn release(&self, router: &MsiRouter) {
        if self.gsi == u32::MAX {
            return;
        }
        let _ = router.unregister_irqfd(self.gsi, &self.irqfd);
        let _ = router.release_gsi(self.gsi);
    }
}

/// `VIRTIO_MSI_NO_VECTOR`: a source mapped to no MSI-X vector raises nothing
/// (VIRTIO 1.x, 4.1.5.1.2 "MSI-X Vector Configuration").
pub const NO_VECTOR: u16 = 0xffff;

/// The MSI-X vectors of one function, each an [`IrqLine`], and which vector each interrupt
/// source (a queue, the config change) currently uses. Sources are switched with an atomic
/// store, so a dataplane thread never takes a lock to raise its interrupt.
#[derive(Debug)]
pub struct MsixVectors {
    lines: Vec<IrqLine>,
    sources: Vec<std::sync::atomic::AtomicU16>,
}

impl MsixVectors {
    /// `vectors` lines on fresh GSIs of `router`, all masked, and `sources` sources mapped
    /// to no vector.
    pub fn new(router: &MsiRouter, vectors: u16, sources: usize) -> Result<Self, InterruptError> {
        let mut lines = Vec::with_capacity(usize::from(vectors));
        for _ in 0..vectors {
            match IrqLine::new(router) {
                Ok(line) => lines.push(line),
                Err(e) => {
                    lines.iter().for_each(|l| l.release(router));
                    return Err(e);
                }
            }
        }
        let sources = (0..sources)
            .map(|_| std::sync::atomic::AtomicU16::new(NO_VECTOR))
            .collect();
        Ok(MsixVectors { lines, sources })
    }

    /// Like [`MsixVectors::new`] with [`IrqLine::unbound`] lines, unmasked.
    pub fn unbound(vectors: u16, sources: usize) -> Result<Self, InterruptError> {
        let lines = (0..vectors)
            .map(|_| IrqLine::unbound())
            .collect::<Result<_, _>>()?;
        let sources = (0..sources)
            .map(|_| std::sync::atomic::AtomicU16::new(NO_VECTOR))
            .collect();
        Ok(MsixVectors { lines, sources })
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.lines.len() as u16
    }

    /// Whether the table has no vector.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The line of MSI-X vector `vector`, if the table has it.
    pub fn line(&self, vector: u16) -> Option<&IrqLine> {
        self.lines.get(usize::from(vector))
    }

    /// Maps interrupt source `source` to `vector` ([`NO_VECTOR`] to silence it).
    pub fn set_source_vector(&self, source: usize, vector: u16) {
        if let Some(s) = self.sources.get(source) {
            s.store(vector, Ordering::Release);
        }
    }

    /// Raises interrupt source `source` through its current vector.
    pub fn trigger_source(&self, source: usize) {
        let Some(s) = self.sources.get(source) else {
            return;
        };
        if let Some(line) = self.line(s.load(Ordering::Acquire)) {
            line.trigger();
        }
    }

    /// Unbinds every irqfd and releases the GSIs.
    pub fn release(&self, router: &MsiRouter) {
        self.lines.iter().for_each(|l| l.release(router));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_line_keeps_the_interrupt_pending_until_unmasked() {
        let line = IrqLine::unbound().expect("line");
        line.set_masked(true);
        line.trigger();
        assert!(line.is_pending());
        assert!(
            line.irqfd().read().is_err(),
            "nothing delivered while masked"
        );
        line.set_masked(false);
        assert!(!line.is_pending());
        assert_eq!(line.irqfd().read().expect("delivered on unmask"), 1);
        line.trigger();
        assert_eq!(line.irqfd().read().expect("delivered"), 1);
    }

    #[test]
    fn sources_follow_their_vector() {
        let v = MsixVectors::unbound(2, 3).expect("vectors");
        v.trigger_source(0);
        assert!(
            v.line(0).and_then(|l| l.irqfd().read().ok()).is_none(),
            "no vector: silent"
        );
        v.set_source_vector(0, 1);
        v.trigger_source(0);
        assert_eq!(v.line(1).and_then(|l| l.irqfd().read().ok()), Some(1));
        v.set_source_vector(2, 7);
        v.trigger_source(2); // a vector outside the table raises nothing and does not panic
        v.trigger_source(99);
    }

    #[test]
    fn router_installs_routes_and_reuses_gsis() {
        // Needs /dev/kvm: fail loudly without it, never skip.
        let kvm = kvm_ioctls::Kvm::new()
            .unwrap_or_else(|e| panic!("this test needs read-write access to /dev/kvm: {e}"));
        let vm = Arc::new(kvm.create_vm().expect("create_vm"));
        vm.create_irq_chip().expect("irqchip");
        let router = MsiRouter::new(vm);
        let line = IrqLine::new(&router).expect("line");
        assert_eq!(line.gsi(), FIRST_MSI_GSI);
        router
            .update_route(line.gsi(), 0xfee0_0000, 0x31, false)
            .expect("route");
        router
            .update_route(line.gsi(), 0xfee0_0000, 0x31, true)
            .expect("masked route");
        let other = router.allocate_gsi().expect("gsi");
        assert_eq!(other, FIRST_MSI_GSI + 1);
        router
            .update_route(other, 0xfee0_1000, 0x32, false)
            .expect("second route");
        line.release(&router);
        assert_eq!(
            router.allocate_gsi().expect("gsi"),
            FIRST_MSI_GSI,
            "released GSI reused"
        );
        assert!(
            router.lock().with_irqchip_routes,
            "in-kernel irqchip keeps its legacy routes"
        );
    }
}
