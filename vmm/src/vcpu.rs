//! vCPU threads: one per vCPU, each running `KVM_RUN` and dispatching port I/O and MMIO exits to
//! the platform's buses until the VM stops.
//!
//! vCPU 0 starts at the PVH entry; the others stay in wait-for-SIPI inside the in-kernel LAPIC
//! until the guest starts them with INIT/SIPI.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::cpu;
use crate::devices::Bus;
use crate::error::{kvm, Error, Result};
use crate::signals;
use crate::stop::{StopLatch, StopReason};
use crate::vm::Vm;

/// Everything a vCPU thread needs.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    stop: Arc<StopLatch>,
    vm_lock: Option<Arc<Mutex<()>>>,
}

/// What the loop does after an exit.
enum Next {
    Continue,
    Stop(StopReason),
    InternalError,
}

impl Vcpu {
    /// Creates vCPU `index`, with CPUID, FPU and LAPIC set; vCPU 0 also gets the PVH entry state.
    pub fn new(
        vm: &Vm,
        index: u8,
        entry: u32,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        stop: Arc<StopLatch>,
    ) -> Result<Self> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        cpu::setup_vcpu(&fd, &vm.supported_cpuid, index)?;
        if index == 0 {
            cpu::setup_boot_cpu(&fd, entry)?;
        }
        Ok(Vcpu {
            index,
            fd,
            pio,
            mmio,
            stop,
            vm_lock: None,
        })
    }

    /// Makes the thread hold `lock` (the platform's VM-wide lock) around every port I/O and
    /// MMIO dispatch, as the `vcpu` and `iothread` I/O modes require.
    pub fn with_vm_lock(mut self, lock: Arc<Mutex<()>>) -> Self {
        self.vm_lock = Some(lock);
        self
    }

    /// The vCPU's file descriptor (TSC measurements, diagnostics).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the guest until the VM stops, requesting the stop itself on a fatal exit.
    pub fn run(mut self) {
        while !self.stop.is_stopping() {
            let next = self.step();
            let reason = match next {
                Next::Continue => continue,
                Next::Stop(r) => r,
                Next::InternalError => self.internal_error(),
            };
            self.stop.request(reason);
            return;
        }
    }

    fn failed(&self, message: String) -> StopReason {
        StopReason::VcpuFailed {
            cpu: self.index,
            message,
        }
    }

    fn step(&mut self) -> Next {
        let (index, pio, mmio) = (self.index, &self.pio, &self.mmio);
        let run: *const kvm_run = self.fd.get_kvm_run();
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            // A kick (or a signal meant for another thread) interrupted KVM_RUN.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Next::Continue
            }
            Err(e) => {
                return Next::Stop(StopReason::VcpuFailed {
                    cpu: index,
                    message: format!("KVM_RUN failed: {e}"),
                })
            }
        };
        // Held until the end of this exit's dispatch (dropped when `step` returns).
        let _vm_guard = match exit {
            VcpuExit::IoIn(..)
            | VcpuExit::IoOut(..)
            | VcpuExit::MmioRead(..)
            | VcpuExit::MmioWrite(..) => self
                .vm_lock
                .as_ref()
                .map(|l| l.lock().unwrap_or_else(|p| p.into_inner())),
            _ => None,
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                // SAFETY: `run` is this vCPU's kvm_run mapping, alive as long as `self.fd`; the
                // exit is KVM_EXIT_IO, so `io` is the active union member, and its header does
                // not overlap the data area `data` borrows.
                let size = unsafe { io_size(run) };
                for element in data.chunks_mut(size) {
                    if !pio.read(u64::from(port), element) {
                        element.fill(0xff);
                    }
                }
            }
            VcpuExit::IoOut(port, data) => {
                // SAFETY: as for IoIn.
                let size = unsafe { io_size(run) };
                for element in data.chunks(size) {
                    pio.write(u64::from(port), element);
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                if !mmio.read(addr, data) {
                    data.fill(0);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                mmio.write(addr, data);
            }
            VcpuExit::Intr => {}
            VcpuExit::Hlt => return Next::Stop(StopReason::Halted(index)),
            VcpuExit::Shutdown => return Next::Stop(StopReason::TripleFault(index)),
            VcpuExit::InternalError => return Next::InternalError,
            VcpuExit::FailEntry(reason, cpu) => {
                return Next::Stop(StopReason::VcpuFailed {
                    cpu: index,
                    message: format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}"),
                })
            }
            VcpuExit::SystemEvent(kind, _) => {
                return Next::Stop(StopReason::VcpuFailed {
                    cpu: index,
                    message: format!("guest requested system event {kind} (1 shutdown, 2 reset, 3 crash); use the exit port 0xf4 to end the VM"),
                })
            }
            other => {
                return Next::Stop(StopReason::VcpuFailed { cpu: index, message: format!("unhandled exit {other:?}") })
            }
        }
        Next::Continue
    }

    fn internal_error(&mut self) -> StopReason {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union member
        // the kernel filled in.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        // Suberror 1 is KVM_INTERNAL_ERROR_EMULATION: the instruction emulator gave up.
        self.failed(format!(
            "KVM_EXIT_INTERNAL_ERROR suberror {suberror} (1 = emulation failure) at rip {rip:#x}"
        ))
    }
}

/// The element size of the port I/O exit in `run`: `rep ins`/`rep outs` give `count` elements.
///
/// # Safety
/// `run` must point to a live `kvm_run` whose last exit was `KVM_EXIT_IO`.
unsafe fn io_size(run: *const kvm_run) -> usize {
    // SAFETY: guaranteed by the caller; a raw read, no reference into the union is made.
    let size = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() };
    usize::from(size).max(1)
}

/// The running vCPU threads.
#[derive(Debug)]
pub struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU, pinned to `cpus` when given.
    pub fn start(vcpus: Vec<Vcpu>, cpus: Option<Vec<usize>>) -> Result<Self> {
        let mut handles = Vec::with_capacity(vcpus.len());
        for v in vcpus {
            let name = format!("vcpu{}", v.index);
            let cpus = cpus.clone();
            let h = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    if let Some(cpus) = &cpus {
                        crate::affinity::pin_current_thread(cpus);
                    }
                    crate::seccomp::apply_thread(crate::seccomp::ThreadKind::Vcpu);
                    v.run()
                })
                .map_err(|source| Error::Thread {
                    what: "a vCPU",
                    source,
                })?;
            handles.push(h);
        }
        Ok(VcpuThreads { handles })
    }

    /// Kicks every thread out of `KVM_RUN` until all have returned, then joins them. The stop
    /// latch must already be set, or the threads re-enter the guest.
    pub fn stop_and_join(self) {
        // A kick sent just before a thread enters KVM_RUN is lost, so kick again until done.
        while self.handles.iter().any(|h| !h.is_finished()) {
            self.handles.iter().for_each(signals::kick);
            std::thread::sleep(Duration::from_millis(5));
        }
        for h in self.handles {
            let _ = h.join();
        }
    }
}
