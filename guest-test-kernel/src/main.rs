//! The test guest: a freestanding PVH kernel that boots, drops to ring 3 and runs `app::run`.
//!
//! Ring 0 (emulated instruction by instruction on this platform) only loads the descriptor
//! tables and enables the LAPIC; everything else runs in ring 3 at native speed, with IOPL = 3
//! and every page user-accessible.
#![no_std]
#![no_main]

mod app;
pub mod arch;
pub mod exit;
mod pvh;
mod rt;
pub mod serial;

use arch::{apic, irq, tsc};

/// Facts about the machine, gathered at boot and handed to `app::run`.
pub struct BootInfo {
    /// Kernel command line (e.g. `tests=all`), empty if none.
    pub cmdline: &'static str,
    /// RAM size in bytes (sum of the RAM ranges of the memory map).
    pub ram_size: u64,
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// First byte of free RAM (2 MiB aligned, after the kernel image, its stacks and tables).
    pub free_mem_start: u64,
    /// End (exclusive) of free RAM: end of that RAM range, at most 3 GiB.
    pub free_mem_end: u64,
}

/// Vector of the boot-time self-IPI that checks interrupt delivery into ring 3.
const SELF_TEST_VECTOR: u8 = 0xF0;
/// Exit code when interrupt delivery into ring 3 does not work.
const SELF_TEST_EXIT_CODE: u32 = 0x7D;

extern "C" {
    /// End of the kernel image including `.bss` and the stacks (linker script).
    static __kernel_end: u8;
}

/// Rust entry from `boot.rs`, ring 0, long mode, rsp = 16n - 8.
extern "C" fn kernel_main() -> ! {
    serial::init();
    arch::gdt::init();
    arch::idt::init();
    apic::init();
    tsc::init_kvmclock();
    arch::ring3::enter(user_main)
}

/// First code in ring 3.
extern "C" fn user_main() -> ! {
    let info = boot_info();
    println!(
        "guest-test-kernel: ring {} | RAM {} MiB | free {:#x}..{:#x} | TSC {} Hz ({}) | APIC id {} | cmdline \"{}\"",
        arch::cpl(),
        info.ram_size >> 20,
        info.free_mem_start,
        info.free_mem_end,
        info.tsc_hz,
        tsc::source(),
        apic::id(),
        info.cmdline
    );
    irq_self_test();
    let code = app::run(&info);
    exit::exit(code)
}

fn boot_info() -> BootInfo {
    const ALIGN_2M: u64 = (2 << 20) - 1;
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let free_mem_start = (kernel_end + ALIGN_2M) & !ALIGN_2M;
    // SAFETY: written once by the entry code before any Rust ran.
    let start_info = u64::from(unsafe { arch::PVH_START_INFO_PADDR });
    let pvh = pvh::read(start_info, free_mem_start);
    if !pvh.has_memmap {
        println!(
            "guest-test-kernel: no PVH memory map, assuming {} MiB of RAM",
            pvh.free_end >> 20
        );
    }
    BootInfo {
        cmdline: pvh.cmdline,
        ram_size: pvh.ram_size,
        tsc_hz: tsc::hz(),
        free_mem_start,
        free_mem_end: pvh.free_end,
    }
}

/// Checks interrupt delivery into ring 3 with self-IPIs: held while disabled, taken once
/// enabled. Ends the guest if that fails, since the tests' interrupt mode would hang.
fn irq_self_test() {
    let before = irq::count(SELF_TEST_VECTOR);
    apic::self_ipi(SELF_TEST_VECTOR);
    let leaked = wait_for_count(before, 10_000);
    let start = tsc::rdtsc();
    irq::enable();
    let delivered = wait_for_count(before, 1_000_000);
    let cycles = tsc::rdtsc().wrapping_sub(start);
    irq::disable();
    if leaked || !delivered {
        println!(
            "guest-test-kernel: interrupt self-test failed (vector {SELF_TEST_VECTOR:#x}: delivered while masked: {leaked}, delivered once enabled: {delivered})"
        );
        exit::exit(SELF_TEST_EXIT_CODE);
    }
    let micros = cycles * 1_000_000 / tsc::hz().max(1);
    println!("guest-test-kernel: interrupt into ring 3 ok (vector {SELF_TEST_VECTOR:#x}, unmask to handled {micros} us)");
}

/// Spins (bounded) until the self-test vector's count moves past `before`.
fn wait_for_count(before: u64, spins: u32) -> bool {
    (0..spins).any(|_| {
        core::hint::spin_loop();
        irq::count(SELF_TEST_VECTOR) != before
    })
}
