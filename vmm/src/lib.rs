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
//! use vmm::config::{parse_memory, DiskConfig, EngineKind};
//! assert_eq!(parse_memory("256M").unwrap(), 256 << 20);
//! let d = DiskConfig::parse("path=disk.img,engine=sync,queues=2").unwrap();
//! assert_eq!((d.engine, d.queues, d.serial.as_str()), (EngineKind::Sync, 2, "disk"));
//! ```

#![deny(missing_docs)]

pub mod affinity;
pub mod boot;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod error;
pub mod interrupts;
pub mod memory;
pub mod metrics;
pub mod pci;
pub mod pci_device;
pub mod platform;
pub mod seccomp;
pub mod signals;
pub mod stop;
pub mod trace;
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
use metrics::DeviceMetrics;
use platform::Platform;
use stop::{StopLatch, StopReason};
use trace::Tracer;
use vcpu::{Vcpu, VcpuThreads};
use virtio_blk::{DeviceContext, VirtioBlkPci};
use vm::Vm;

/// How often the main thread looks for a termination signal while the guest runs.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

/// Builds the VM, runs it until it stops and returns the process exit status (see the table in
/// the crate documentation). Errors are set-up failures; [`Error::exit_status`] maps them.
pub fn run(config: VmConfig) -> Result<i32> {
    // Fail at set-up, not inside a thread, if the kernel cannot take the filters.
    seccomp::probe(config.seccomp).map_err(Error::Seccomp)?;
    seccomp::set_process_mode(config.seccomp);
    signals::install()?;
    signals::block_termination();
    let started = start(&config);
    signals::unblock_termination();
    let running = started?;
    // Set-up is over: from here the main thread only waits, stops and writes results.
    seccomp::apply_thread(seccomp::ThreadKind::Main);
    let reason = wait_for_stop(&running.stop);

    running.threads.stop_and_join();
    let mut hooks = running.hooks;
    hooks.run();
    running.platform.flush_console();
    write_observations(&config, running.observers, &running._vm);
    if let Some(m) = reason.message() {
        eprintln!("vmm: {m}");
    }
    Ok(reason.exit_status())
}

/// The tracer and metrics of a run, written at exit.
struct Observers {
    tracer: Option<Arc<Tracer>>,
    metrics: Vec<Arc<DeviceMetrics>>,
    periodic: Option<metrics::PeriodicWriter>,
}

/// Writes the trace and metrics files (after the devices stopped, so every request is in).
/// A failure is reported on stderr; it does not change the exit status.
fn write_observations(config: &VmConfig, obs: Observers, vm: &Vm) {
    if let (Some(path), Some(tracer)) = (&config.trace, &obs.tracer) {
        let written = tracer.write_chrome_json(path, &vm.mem);
        match &written {
            Ok(s) => eprintln!(
                "vmm: trace {}: {} requests ({} matched to the guest's log), {} stamps, {} dropped",
                path.display(),
                s.requests,
                s.matched,
                s.device_stamps,
                s.dropped
            ),
            Err(e) => eprintln!("vmm: cannot write the trace {}: {e}", path.display()),
        }
        if let Ok(s) = &written {
            for r in s.table.rows.iter().chain(s.table.total.iter()) {
                eprintln!(
                    "vmm: trace   {:<16} n={:<8} p50={:>9.1} us  p99={:>9.1} us  share={:>5.1}%",
                    r.stage,
                    r.count,
                    r.p50_ns / 1e3,
                    r.p99_ns / 1e3,
                    r.share * 100.0
                );
            }
        }
    }
    if let Some(path) = &config.metrics {
        let result = match obs.periodic {
            // The periodic writer writes a last time when stopped.
            Some(w) => w.stop(),
            None => metrics::write_metrics(path, &obs.metrics),
        };
        if let Err(e) = result {
            eprintln!("vmm: cannot write the metrics {}: {e}", path.display());
        }
    }
}

/// A VM whose vCPUs run.
struct Running {
    _vm: Vm,
    platform: Platform,
    hooks: ShutdownHooks,
    threads: VcpuThreads,
    stop: Arc<StopLatch>,
    observers: Observers,
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
    let tracer = config.trace.as_ref().map(|_| Arc::new(Tracer::new()));
    let metrics = attach_disks(config, &vm, &platform, &mut hooks, tracer.clone())?;

    let vcpus = (0..config.cpus)
        .map(|i| {
            let (pio, mmio) = (platform.pio.clone(), platform.mmio.clone());
            let vcpu = Vcpu::new(&vm, i, entry, pio, mmio, stop.clone())?;
            Ok(if config.io_mode.uses_vm_lock() {
                vcpu.with_vm_lock(platform.vm_lock.clone())
            } else {
                vcpu
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if let (Some(t), Some(v)) = (&tracer, vcpus.first()) {
        t.set_tsc_mapping(trace::measure_tsc_offset(v.fd()));
    }
    let periodic = match (&config.metrics, config.metrics_interval_secs) {
        (Some(path), secs) if secs > 0 => Some(
            metrics::spawn_periodic_writer(
                path.clone(),
                metrics.clone(),
                Duration::from_secs(secs),
            )
            .map_err(|source| Error::Thread {
                what: "the metrics writer",
                source,
            })?,
        ),
        _ => None,
    };
    let threads = VcpuThreads::start(vcpus, config.cpu_affinity.vcpu.clone())?;
    Ok(Running {
        _vm: vm,
        platform,
        hooks,
        threads,
        stop,
        observers: Observers {
            tracer,
            metrics,
            periodic,
        },
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
/// BAR0 preassigned from the BAR window, and registers each device's shutdown (and, in a mode
/// with a shared loop, the loop's, after the devices'). Returns the devices'
/// metrics, in `--disk` order; their queues stamp into `tracer` when given.
pub fn attach_disks(
    config: &VmConfig,
    vm: &Vm,
    platform: &Platform,
    hooks: &mut ShutdownHooks,
    tracer: Option<Arc<Tracer>>,
) -> Result<Vec<Arc<DeviceMetrics>>> {
    if config.disks.is_empty() {
        return Ok(Vec::new());
    }
    let msi = Arc::new(MsiRouter::new(vm.fd.clone()));
    let mut bars = platform.bars.clone();
    let iothread = if config.io_mode.properties().shared_loop {
        Some(Arc::new(
            virtio_blk::shared_loop(platform.vm_lock.clone(), config.cpu_affinity.io_cpus())
                .map_err(|source| Error::Thread {
                    what: "the I/O thread",
                    source,
                })?,
        ))
    } else {
        None
    };
    let workers = pool_workers(config);
    let clock = blk_device::throttle::MonotonicClock;
    let groups: Vec<_> = config
        .throttle_groups
        .iter()
        .map(|g| {
            use blk_device::throttle::Clock;
            Arc::new(blk_device::throttle::ThrottleGroup::new(
                &g.name,
                &g.limits,
                clock.now_ns(),
            ))
        })
        .collect();
    let mut all_metrics = Vec::with_capacity(config.disks.len());
    for (index, disk) in config.disks.iter().enumerate() {
        let metrics = Arc::new(DeviceMetrics::new(&disk.path.display().to_string()));
        all_metrics.push(metrics.clone());
        let ctx = DeviceContext {
            vm: vm.fd.clone(),
            mem: vm.mem.clone(),
            msi: msi.clone(),
            bar0_addr: bars.allocate(pci_transport::virtio_pci::layout::BAR_SIZE)?,
            io_mode: config.io_mode,
            poll_us: config.poll_us,
            poll_in_flight: config.poll_in_flight,
            workers,
            handoff_depth: config.handoff_depth,
            io_cpus: config.cpu_affinity.io_cpus(),
            iothread: iothread.clone(),
            tracer: tracer.clone(),
            device_index: index,
            metrics,
            throttle_group: disk
                .group
                .as_ref()
                .and_then(|name| groups.iter().find(|g| g.name() == name).cloned()),
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
    if let Some(io) = iothread {
        hooks.register("the I/O thread", move || io.stop());
    }
    Ok(all_metrics)
}

/// Pool workers per disk: `--workers`, with `auto` resolved against the host's cores, the
/// vCPUs and, in a mode with a thread per queue, the queue threads.
fn pool_workers(config: &VmConfig) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let queue_threads = if config.io_mode.properties().thread_per_queue {
        config.disks.iter().map(|d| usize::from(d.queues)).sum()
    } else {
        0
    };
    config.workers.resolve(
        cores,
        usize::from(config.cpus) + queue_threads,
        config.disks.len(),
    )
}
