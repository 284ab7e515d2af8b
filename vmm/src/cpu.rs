//! Per-vCPU architectural set-up: CPUID (with the KVM hypervisor leaves and the TSC frequency),
//! the local APIC's LINT pins, the FPU, and the PVH entry state of the boot CPU.

use kvm_bindings::{kvm_cpuid_entry2, kvm_fpu, kvm_regs, CpuId};
use kvm_ioctls::VcpuFd;

use crate::boot::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::error::{kvm, Error, Result};
use crate::memory::{BOOT_GDT_ADDR, START_INFO_ADDR};

/// Hypervisor CPUID base leaf: max hypervisor leaf in EAX, signature in EBX/ECX/EDX.
pub const CPUID_HYPERVISOR_BASE: u32 = 0x4000_0000;
/// The VMware-style timing leaf: EAX = TSC frequency in kHz (Linux reads it after the KVM
/// signature, as `CPUID 0x40000010`).
pub const CPUID_TIMING_INFO: u32 = 0x4000_0010;
/// CPUID.1:ECX bit 31, "running under a hypervisor".
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
/// Local APIC register offsets of the LVT LINT0/LINT1 entries.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index: 0,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
        padding: [0; 3],
    }
}

/// The CPUID table of vCPU `apic_id`: KVM's supported leaves with the APIC id filled in, the
/// hypervisor bit set, and leaves 0x40000000 ("KVMKVMKVM", max leaf 0x40000010) and 0x40000010
/// (TSC kHz, when known).
pub fn cpuid_for(supported: &CpuId, apic_id: u8, tsc_khz: Option<u32>) -> Result<CpuId> {
    let id = u32::from(apic_id);
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| e.function != CPUID_HYPERVISOR_BASE && e.function != CPUID_TIMING_INFO)
        .copied()
        .collect();
    for e in &mut entries {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24);
                e.ecx |= CPUID1_ECX_HYPERVISOR;
            }
            0xb | 0x1f => e.edx = id,
            _ => {}
        }
    }
    let sig = b"KVMKVMKVM\0\0\0";
    let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    entries.push(leaf(
        CPUID_HYPERVISOR_BASE,
        CPUID_TIMING_INFO,
        word(0),
        word(4),
        word(8),
    ));
    if let Some(khz) = tsc_khz {
        // EBX would be the APIC bus frequency in kHz; KVM's APIC timer runs at 1 GHz.
        entries.push(leaf(CPUID_TIMING_INFO, khz, 1_000_000, 0, 0));
    }
    CpuId::from_entries(&entries).map_err(|_| Error::Kvm {
        op: "building the CPUID table",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

/// Sets CPUID, the FPU and the LAPIC LINT pins of any vCPU.
pub fn setup_vcpu(vcpu: &VcpuFd, supported: &CpuId, apic_id: u8) -> Result<()> {
    let tsc_khz = vcpu.get_tsc_khz().ok().filter(|&k| k > 0);
    vcpu.set_cpuid2(&cpuid_for(supported, apic_id, tsc_khz)?)
        .map_err(kvm("KVM_SET_CPUID2"))?;
    // The x87 and SSE control words a reset CPU has (FNINIT / power-on MXCSR).
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    setup_lint(vcpu)
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, what firmware programs on a PC.
fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let mut b = [0u8; 4];
        for (i, v) in b.iter_mut().enumerate() {
            *v = lapic.regs[reg + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, v) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *v as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

/// The PVH entry state: 32-bit protected mode, paging off, flat segments, EBX = start info,
/// EIP = the kernel's entry (xen/include/public/arch-x86/hvm/start_info.h).
pub fn setup_boot_cpu(vcpu: &VcpuFd, entry: u32) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    sregs.cs = gdt::segment(CODE_SELECTOR);
    let data = gdt::segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = gdt::gdt_limit();
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: u64::from(entry),
        rbx: START_INFO_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypervisor_leaves_and_apic_id() {
        let base = CpuId::from_entries(&[
            leaf(1, 0, 0x0000_0800, 0, 0),
            leaf(0xb, 0, 0, 0, 0),
            leaf(CPUID_HYPERVISOR_BASE, 0x4000_0001, 0, 0, 0),
        ])
        .unwrap();
        let c = cpuid_for(&base, 3, Some(2_000_000)).unwrap();
        let find = |f: u32| *c.as_slice().iter().find(|e| e.function == f).unwrap();
        assert_eq!(find(1).ebx >> 24, 3);
        assert_ne!(find(1).ecx & CPUID1_ECX_HYPERVISOR, 0);
        assert_eq!(find(0xb).edx, 3);
        let h = find(CPUID_HYPERVISOR_BASE);
        assert_eq!(h.eax, CPUID_TIMING_INFO);
        assert_eq!(&h.ebx.to_le_bytes(), b"KVMK");
        assert_eq!(find(CPUID_TIMING_INFO).eax, 2_000_000);
        assert_eq!(
            c.as_slice()
                .iter()
                .filter(|e| e.function == CPUID_HYPERVISOR_BASE)
                .count(),
            1
        );
    }
}
