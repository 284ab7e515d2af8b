//! Time-stamp counter: reading it (ring 3 allowed, CR4.TSD is clear) and its frequency.

use core::arch::x86_64::{__cpuid, _rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

use super::pio::{inb, outb};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// TSC frequency read from kvmclock by [`init_kvmclock`] in ring 0 (0 = unavailable).
static KVMCLOCK_HZ: AtomicU64 = AtomicU64::new(0);

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4B56_4D01;
/// CPUID 0x40000001 EAX: KVM_FEATURE_CLOCKSOURCE2 (the MSR above).
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// `struct pvclock_vcpu_time_info` (32 bytes): the fields we need are
/// `tsc_to_system_mul` (u32 @ 24) and `tsc_shift` (i8 @ 28).
#[repr(C, align(32))]
struct PvclockTimeInfo([u32; 8]);

static mut PVCLOCK: PvclockTimeInfo = PvclockTimeInfo([0; 8]);

/// Reads the TSC.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is available on every x86-64 CPU and allowed in ring 3 (CR4.TSD clear).
    unsafe { _rdtsc() }
}

/// TSC frequency in Hz, determined on first use (the boot does it, in ring 3) and cached.
pub fn hz() -> u64 {
    let cached = TSC_HZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let measured = from_hypervisor()
        .or_else(from_cpuid_15h)
        .or_else(from_kvmclock)
        .or_else(calibrate_with_pit)
        .unwrap_or(0);
    TSC_HZ.store(measured, Ordering::Relaxed);
    measured
}

/// Where the frequency came from, for the boot banner.
pub fn source() -> &'static str {
    if from_hypervisor().is_some() {
        "hypervisor leaf 0x40000010"
    } else if from_cpuid_15h().is_some() {
        "cpuid 0x15"
    } else if from_kvmclock().is_some() {
        "kvmclock"
    } else if TSC_HZ.load(Ordering::Relaxed) != 0 {
        "PIT calibration"
    } else {
        "unknown"
    }
}

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = __cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Hypervisor timing leaf 0x40000010 (EAX = TSC kHz), offered by our VMM and by some others.
/// Preferred over CPUID 0x15: in a VM it reflects the guest's (possibly scaled) TSC.
fn from_hypervisor() -> Option<u64> {
    const CPUID_HYPERVISOR_PRESENT: u32 = 1 << 31;
    if cpuid(1).2 & CPUID_HYPERVISOR_PRESENT == 0 || cpuid(0x4000_0000).0 < 0x4000_0010 {
        return None;
    }
    let khz = cpuid(0x4000_0010).0;
    (khz != 0).then(|| u64::from(khz) * 1000)
}

fn is_kvm() -> bool {
    let (_, ebx, ecx, edx) = cpuid(0x4000_0000);
    cpuid(1).2 & (1 << 31) != 0 && (ebx, ecx, edx) == (0x4B4D_564B, 0x564B_4D56, 0x4D)
}

/// Ring 0, once: reads the TSC-to-nanoseconds scale of KVM's paravirtual clock, when offered.
/// KVM fills the structure before the `wrmsr` returns; the clock is switched off again after.
pub fn init_kvmclock() {
    if !is_kvm() || cpuid(0x4000_0001).0 & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return;
    }
    let info = core::ptr::addr_of_mut!(PVCLOCK);
    super::msr::write(MSR_KVM_SYSTEM_TIME_NEW, info as u64 | 1);
    // SAFETY: PVCLOCK is a static that KVM just wrote; volatile because the compiler cannot see
    // that write.
    let (mul, shift_field) = unsafe {
        let words = info.cast::<u32>();
        (words.add(6).read_volatile(), words.add(7).read_volatile())
    };
    super::msr::write(MSR_KVM_SYSTEM_TIME_NEW, 0);
    let shift = shift_field as u8 as i8;
    if mul == 0 {
        return;
    }
    // ns = (ticks * 2^shift * mul) >> 32, so Hz = 1e9 * 2^32 / (mul * 2^shift).
    let base = (1_000_000_000u64 << 32) / u64::from(mul);
    let hz = if shift >= 0 {
        base >> shift
    } else {
        base << -shift
    };
    KVMCLOCK_HZ.store(hz, Ordering::Relaxed);
}

fn from_kvmclock() -> Option<u64> {
    let hz = KVMCLOCK_HZ.load(Ordering::Relaxed);
    (hz != 0).then_some(hz)
}

/// CPUID 0x15: TSC = crystal Hz * EBX / EAX, when all three are reported.
fn from_cpuid_15h() -> Option<u64> {
    if cpuid(0).0 < 0x15 {
        return None;
    }
    let (denominator, numerator, crystal_hz, _) = cpuid(0x15);
    if denominator == 0 || numerator == 0 || crystal_hz == 0 {
        return None;
    }
    Some(u64::from(crystal_hz) * u64::from(numerator) / u64::from(denominator))
}

/// Measures the TSC over 10 ms of PIT channel 2 (gated through port 0x61, mode 0 one-shot).
/// None if there is no working PIT / port 0x61 (e.g. QEMU microvm).
pub fn calibrate_with_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const WINDOW_MS: u64 = 10;
    const COUNT: u64 = PIT_HZ * WINDOW_MS / 1000;
    // Port 0x61: bit 0 = channel 2 gate, bit 1 = speaker enable, bit 5 = channel 2 output.
    let port61 = inb(0x61);
    outb(0x61, (port61 & !0x02) | 0x01);
    // Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
    outb(0x43, 0b1011_0000);
    outb(0x42, COUNT as u8);
    outb(0x42, (COUNT >> 8) as u8);
    // Mode 0 drives OUT2 low once programmed: a high OUT2 now means no PIT behind the ports.
    if inb(0x61) & 0x20 != 0 {
        outb(0x61, port61);
        return None;
    }
    let start = rdtsc();
    // Bounded: about 10 ms is expected; give up after 1 s of TSC at 10 GHz.
    let mut end = start;
    let mut expired = false;
    while !expired {
        expired = inb(0x61) & 0x20 != 0;
        end = rdtsc();
        if end.wrapping_sub(start) > 10_000_000_000 {
            break;
        }
    }
    outb(0x61, port61);
    let hz = end.wrapping_sub(start) * (1000 / WINDOW_MS);
    (expired && hz != 0).then_some(hz)
}
