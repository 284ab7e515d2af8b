//! The fixed machine around the guest: the port I/O and MMIO buses, the serial console, the
//! exit port, PCI bus 0 with its two configuration mechanisms, and the BAR allocator.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::devices::exit_port::{ExitPort, EXIT_PORT, EXIT_PORT_LEN};
use crate::devices::serial::{Serial, COM1_BASE, SERIAL_PORTS};
use crate::devices::{Bus, BusDevice};
use crate::error::{Error, Result};
use crate::memory::{ECAM_BASE, ECAM_SIZE, PCI_MMIO_END, PCI_MMIO_START};
use crate::pci::bus::SharedPciDevice;
use crate::pci::config_access::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use crate::pci::{BarAllocator, PciBus, PciConfigEcam, PciConfigIo, PciError};
use crate::stop::StopLatch;

/// The buses and fixed devices of one VM.
#[derive(Debug)]
pub struct Platform {
    /// Port I/O bus (`KVM_EXIT_IO`).
    pub pio: Arc<Bus>,
    /// MMIO bus (`KVM_EXIT_MMIO`): ECAM and the PCI BARs.
    pub mmio: Arc<Bus>,
    /// PCI bus 0.
    pub pci: Arc<Mutex<PciBus>>,
    /// Addresses for the BARs of devices still to be plugged.
    pub bars: BarAllocator,
    /// The console, flushed at exit.
    pub serial: Arc<Mutex<Serial>>,
    /// The VM-wide device lock ("big VM lock", QEMU's global mutex): vCPU threads hold it
    /// around every port I/O and MMIO dispatch in the `vcpu` and `iothread` I/O modes, and
    /// the shared I/O thread holds it while it processes. Unused in the other modes.
    pub vm_lock: Arc<Mutex<()>>,
}

fn insert(bus: &Bus, base: u64, len: u64, dev: Arc<Mutex<dyn BusDevice>>) -> Result<()> {
    if bus.insert(base, len, dev) {
        Ok(())
    } else {
        Err(Error::BusOverlap(base))
    }
}

impl Platform {
    /// Builds the platform for a VM with `memory_bytes` of RAM; the console writes to `console`,
    /// the exit port stops the VM through `stop`.
    pub fn new(
        memory_bytes: u64,
        console: Box<dyn Write + Send>,
        stop: Arc<StopLatch>,
    ) -> Result<Self> {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let serial = Arc::new(Mutex::new(Serial::new(console)));
        insert(&pio, COM1_BASE, SERIAL_PORTS, serial.clone())?;
        insert(
            &pio,
            EXIT_PORT,
            EXIT_PORT_LEN,
            Arc::new(Mutex::new(ExitPort::new(stop))),
        )?;
        let pci = Arc::new(Mutex::new(PciBus::new(mmio.clone(), memory_bytes)));
        insert(
            &pio,
            PCI_CONFIG_IO_BASE,
            PCI_CONFIG_IO_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
        )?;
        insert(
            &mmio,
            ECAM_BASE,
            ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigEcam::new(pci.clone()))),
        )?;
        let bars = BarAllocator::new(PCI_MMIO_START, PCI_MMIO_END);
        Ok(Platform {
            pio,
            mmio,
            pci,
            bars,
            serial,
            vm_lock: Arc::new(Mutex::new(())),
        })
    }

    /// Plugs a PCI function into the next free slot of bus 0 and routes its BARs.
    pub fn add_pci_device(&self, dev: SharedPciDevice) -> std::result::Result<u8, PciError> {
        self.pci
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_device(dev)
    }

    /// Flushes the console.
    pub fn flush_console(&self) {
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush();
    }
}
