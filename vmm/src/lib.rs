//! A KVM userspace VMM for a freestanding PVH guest with virtio-blk-pci disks.
//!
//! [`run`] builds the VM from a [`config::VmConfig`], boots the kernel and returns the exit
//! status once the guest ends it. Reading order: [`config`] and [`cli`] (what the user asks for),
//! [`vm`] and [`memory`] (the VM and its memory map), [`boot`] (loading the PVH kernel),
//! [`cpu`] and [`vcpu`] (vCPU state and run loops), [`platform`] with [`devices`] and [`pci`]
//! (what the guest sees), then [`virtio_blk`] and [`interrupts`] (the disks).
//!
//! # Ending the VM
//!
//! | how | exit status |
//! | --- | --- |
//! | guest writes `v` to port 0xF4 | `v` (255 if larger) |
//! | SIGINT / SIGTERM | 130 / 143 |
//! | triple fault, HLT exit, unhandled exit, KVM error | 1 (with a message on stderr) |
//! | bad command line, files, kernel image, `/dev/kvm` | 2 (one line on stderr) |
//!
//! In every case but a set-up error, the vCPUs are stopped first, then every device's shutdown
//! hook runs (in-flight I/O completes, images are synced), then the VMM exits.
//!
//! ```
//! use vmm::config::{parse_memory, DiskConfig, EngineChoice};
//! assert_eq!(parse_memory("256M").unwrap(), 256 << 20);
//! let d = DiskConfig::parse("path=disk.img,engine=sync,queues=2").unwrap();
//! assert_eq!((d.engine, d.queues, d.serial.as_str()), (EngineChoice::Sync, 2, "disk"));
//! ```

#![deny(missing_docs)]

pub mod boot;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod interrupts;
pub mod memory;
pub mod pci;
pub mod pci_device;
pub mod platform;
pub mod signals;
pub mod stop;
pub mod vcpu;
pub mod virtio_blk;
pub mod vm;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::VmConfig;
pub use error::{Error, Result};

use boot::gdt::write_gdt;
use boot::pvh::load_kernel;
use boot::start_info::write_start_info;
use devices::ShutdownHooks;
use interrupts::MsiRouter;
use platform::Platform;
use stop::{StopLatch, StopReason};
use vcpu::{Vcpu, VcpuThreads};
use virtio_blk::{DeviceContext, VirtioBlkPci};
use vm::Vm;

/// How often the main thread looks for a termination signal while the guest runs.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// Builds the VM, runs it until it stops and returns the process exit status (see the table in
/// the crate documentation). Errors are set-up failures; [`Error::exit_status`] maps them.
pub fn run(config: VmConfig) -> Result<i32> {
    signals::install()?;
    signals::block_termination();
    let started = start(&config);
    signals::unblock_termination();
    let running = started?;
    let reason = wait_for_stop(&running.stop);

    running.threads.stop_and_join();
    let mut hooks = running.hooks;
    hooks.run();
    running.platform.flush_console();
    if let Some(m) = reason.message() {
        eprintln!("vmm: {m}");
    }
    Ok(reason.exit_status())
}

/// A VM whose vCPUs run.
struct Running {
    _vm: Vm,
    platform: Platform,
    hooks: ShutdownHooks,
    threads: VcpuThreads,
    stop: Arc<StopLatch>,
}

/// Builds the VM, loads the kernel, plugs the devices and starts the vCPUs.
fn start(config: &VmConfig) -> Result<Running> {
    let vm = Vm::new(vm::open_kvm()?, config.memory_bytes)?;
    let entry = load_boot_image(&vm, config)?;

    let stop = Arc::new(StopLatch::new());
    let platform = Platform::new(
        config.memory_bytes,
        Box::new(std::io::stdout()),
        stop.clone(),
    )?;
    let mut hooks = ShutdownHooks::new();
    attach_disks(config, &vm, &platform, &mut hooks)?;

    let vcpus = (0..config.cpus)
        .map(|i| {
            let (pio, mmio) = (platform.pio.clone(), platform.mmio.clone());
            Vcpu::new(&vm, i, entry, pio, mmio, stop.clone())
        })
        .collect::<Result<Vec<_>>>()?;
    let threads = VcpuThreads::start(vcpus)?;
    Ok(Running {
        _vm: vm,
        platform,
        hooks,
        threads,
        stop,
    })
}

/// Loads the kernel and writes the boot data; returns the PVH entry.
fn load_boot_image(vm: &Vm, config: &VmConfig) -> Result<u32> {
    let path = &config.kernel;
    let boot_err = |source| Error::Boot {
        path: path.clone(),
        source,
    };
    let image = std::fs::read(path).map_err(|source| Error::KernelRead {
        path: path.clone(),
        source,
    })?;
    let entry = load_kernel(&vm.mem, vm.memory_bytes, &image).map_err(boot_err)?;
    write_start_info(&vm.mem, vm.memory_bytes, &config.cmdline).map_err(boot_err)?;
    write_gdt(&vm.mem, memory::BOOT_GDT_ADDR).map_err(boot_err)?;
    Ok(entry)
}

/// Waits for the first stop request, turning SIGINT/SIGTERM into one.
fn wait_for_stop(stop: &StopLatch) -> StopReason {
    loop {
        if let Some(reason) = stop.wait_timeout(SIGNAL_POLL) {
            return reason;
        }
        if let Some(signal) = signals::pending() {
            stop.request(StopReason::Signal(signal));
        }
    }
}

/// Creates one virtio-blk-pci function per `--disk`, in slots 1, 2, ... of bus 0, each with
/// BAR0 preassigned from the BAR window, and registers each device's shutdown.
pub fn attach_disks(
    config: &VmConfig,
    vm: &Vm,
    platform: &Platform,
    hooks: &mut ShutdownHooks,
) -> Result<()> {
    if config.disks.is_empty() {
        return Ok(());
    }
    let msi = Arc::new(MsiRouter::new(vm.fd.clone()));
    let mut bars = platform.bars.clone();
    for disk in &config.disks {
        let ctx = DeviceContext {
            vm: vm.fd.clone(),
            mem: vm.mem.clone(),
            msi: msi.clone(),
            bar0_addr: bars.allocate(pci_transport::virtio_pci::layout::BAR_SIZE)?,
            io_mode: config.io_mode,
            poll_us: config.poll_us,
        };
        let dev = VirtioBlkPci::new(disk, ctx).map_err(|e| Error::Device {
            path: disk.path.clone(),
            reason: e.to_string(),
        })?;
        let dev = Arc::new(Mutex::new(dev));
        platform.add_pci_device(dev.clone())?;
        hooks.register(format!("virtio-blk {}", disk.path.display()), move || {
            dev.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        });
    }
    Ok(())
}
