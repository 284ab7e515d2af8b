//! The KVM VM: in-kernel irqchip and PIT, guest RAM registered as memory slots.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::{kvm, Error, Result};
use crate::memory::create_guest_memory;

/// Where KVM puts the three pages of its real-mode TSS (VMX needs them; just below the BIOS).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Where KVM puts its identity-map page table (the page before the TSS).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// A VM with its RAM.
#[derive(Debug)]
pub struct Vm {
    /// The `/dev/kvm` handle.
    pub kvm: Kvm,
    /// The VM file descriptor, shared with devices (ioeventfd, irqfd, routing).
    pub fd: Arc<VmFd>,
    /// Guest RAM (cheap to clone).
    pub mem: GuestMemoryMmap,
    /// RAM size in bytes.
    pub memory_bytes: u64,
    /// The CPUID leaves KVM supports, the base of every vCPU's table.
    pub supported_cpuid: CpuId,
}

/// Opens `/dev/kvm`; failing here is a set-up problem for the user (exit status 2).
pub fn open_kvm() -> Result<Kvm> {
    Kvm::new().map_err(Error::KvmOpen)
}

impl Vm {
    /// Creates the VM with `memory_bytes` of RAM, the in-kernel irqchip (PIC, IOAPIC, LAPICs)
    /// and the PIT (the guest calibrates its TSC with PIT channel 2 and port 0x61).
    pub fn new(kvm: Kvm, memory_bytes: u64) -> Result<Self> {
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config::default())
            .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let mem = create_guest_memory(memory_bytes)?;
        for (slot, region) in mem.iter().enumerate() {
            let host =
                mem.get_host_address(region.start_addr())
                    .map_err(|e| Error::GuestMemory {
                        bytes: memory_bytes,
                        reason: e.to_string(),
                    })?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
            // `Vm` keeps (and every device clones) for as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(Vm {
            kvm,
            fd: Arc::new(fd),
            mem,
            memory_bytes,
            supported_cpuid,
        })
    }
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    kvm(op)
}
