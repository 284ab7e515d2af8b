//! Time stamps: the host TSC, its rate, and the offset between the host's and a guest's TSC.
//!
//! The guest stamps with its own TSC, which KVM runs at `guest_tsc = host_tsc + offset`
//! (no scaling: the VMM does not set a TSC frequency). [`measure_tsc_offset`] reads the
//! guest's TSC through `KVM_GET_MSRS` (IA32_TSC) between two host `rdtsc`s; the tightest of
//! [`TRIES`] brackets bounds the error. When the kernel offers the `KVM_VCPU_TSC_OFFSET` vCPU
//! attribute (Linux 5.16+), its exact value is used instead and the MSR read cross-checks it.

use std::os::unix::io::AsRawFd;
use std::time::Instant;

use kvm_bindings::{kvm_device_attr, kvm_msr_entry, Msrs, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET};
use kvm_ioctls::VcpuFd;

/// IA32_TIME_STAMP_COUNTER (Intel SDM vol. 4, table 2-2).
const MSR_IA32_TSC: u32 = 0x10;
/// Measurements taken; the narrowest bracket wins.
pub const TRIES: usize = 20;
/// `KVM_GET_DEVICE_ATTR` = `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`.
const KVM_GET_DEVICE_ATTR: libc::c_ulong = 0x4018_aee2;

pub use blk_device::trace::rdtsc;

/// How the guest/host offset was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscMethod {
    /// The `KVM_VCPU_TSC_OFFSET` attribute: exact.
    Attribute,
    /// `KVM_GET_MSRS(IA32_TSC)` bracketed by host `rdtsc`s.
    Msr,
    /// Not measured: offset 0, accuracy unknown.
    Unmeasured,
}

impl TscMethod {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            TscMethod::Attribute => "kvm-vcpu-tsc-offset",
            TscMethod::Msr => "msr-bracket",
            TscMethod::Unmeasured => "unmeasured",
        }
    }
}

/// The map from host TSC to guest TSC: `guest_tsc = host_tsc + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscMapping {
    /// `guest_tsc - host_tsc`, in cycles (wrapping arithmetic).
    pub offset: i64,
    /// Half-width of the bracket the offset is known within, in cycles (0 when exact).
    pub accuracy_cycles: u64,
    /// How the offset was found.
    pub method: TscMethod,
    /// The MSR-bracket estimate, when taken (cross-check of the attribute).
    pub msr_offset: Option<i64>,
    /// Half-width of the MSR bracket, in cycles.
    pub msr_accuracy_cycles: Option<u64>,
}

impl TscMapping {
    /// A mapping with a known offset (tests, or a VMM that sets the offset itself).
    pub fn exact(offset: i64) -> Self {
        TscMapping {
            offset,
            accuracy_cycles: 0,
            method: TscMethod::Attribute,
            msr_offset: None,
            msr_accuracy_cycles: None,
        }
    }

    /// No measurement: the identity, accuracy unknown.
    pub fn unmeasured() -> Self {
        TscMapping {
            offset: 0,
            accuracy_cycles: u64::MAX,
            method: TscMethod::Unmeasured,
            msr_offset: None,
            msr_accuracy_cycles: None,
        }
    }

    /// The host TSC at which the guest's TSC read `guest_tsc`.
    pub fn guest_to_host(&self, guest_tsc: u64) -> u64 {
        guest_tsc.wrapping_sub(self.offset as u64)
    }

    /// The guest TSC at host TSC `host_tsc`.
    pub fn host_to_guest(&self, host_tsc: u64) -> u64 {
        host_tsc.wrapping_add(self.offset as u64)
    }
}

/// One bracketed read: the offset estimate and the bracket's half-width.
fn msr_sample(vcpu: &VcpuFd) -> Option<(i64, u64)> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .ok()?;
    let before = rdtsc();
    let n = vcpu.get_msrs(&mut msrs).ok()?;
    let after = rdtsc();
    let guest = msrs.as_slice().first()?.data;
    if n != 1 || after < before {
        return None;
    }
    let half = (after - before) / 2;
    Some((guest.wrapping_sub(before + half) as i64, half))
}

/// The offset by the MSR bracket: the narrowest of [`TRIES`] samples.
fn measure_by_msr(vcpu: &VcpuFd) -> Option<(i64, u64)> {
    (0..TRIES)
        .filter_map(|_| msr_sample(vcpu))
        .min_by_key(|&(_, half)| half)
}

/// The offset from the `KVM_VCPU_TSC_OFFSET` vCPU attribute, if the kernel has it.
fn read_offset_attribute(vcpu: &VcpuFd) -> Option<i64> {
    let mut value: u64 = 0;
    let attr = kvm_device_attr {
        flags: 0,
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr: &mut value as *mut u64 as u64,
    };
    // SAFETY: KVM_GET_DEVICE_ATTR reads `attr` and writes 8 bytes to `attr.addr`, which points
    // to `value`, alive for the call; the fd is a vCPU fd.
    let ret = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_DEVICE_ATTR, &attr) };
    (ret == 0).then_some(value as i64)
}

/// Measures `guest_tsc - host_tsc` for `vcpu`. Call it from any thread before the vCPU first
/// runs (or any time: the offset does not change unless the guest writes IA32_TSC).
pub fn measure_tsc_offset(vcpu: &VcpuFd) -> TscMapping {
    let msr = measure_by_msr(vcpu);
    let attr = read_offset_attribute(vcpu);
    match (attr, msr) {
        (Some(offset), _) => TscMapping {
            offset,
            accuracy_cycles: 0,
            method: TscMethod::Attribute,
            msr_offset: msr.map(|m| m.0),
            msr_accuracy_cycles: msr.map(|m| m.1),
        },
        (None, Some((offset, half))) => TscMapping {
            offset,
            accuracy_cycles: half,
            method: TscMethod::Msr,
            msr_offset: Some(offset),
            msr_accuracy_cycles: Some(half),
        },
        (None, None) => TscMapping::unmeasured(),
    }
}

/// Converts host TSC cycles to time, calibrated against the monotonic clock over the whole
/// run (from [`TscClock::start`] to [`TscClock::hz`]), so the rate costs nothing up front.
#[derive(Debug, Clone, Copy)]
pub struct TscClock {
    tsc0: u64,
    t0: Instant,
}

/// Shortest calibration baseline; below it [`TscClock::hz`] waits.
const MIN_BASELINE_NS: u128 = 20_000_000;

impl TscClock {
    /// Starts the calibration.
    pub fn start() -> Self {
        TscClock {
            tsc0: rdtsc(),
            t0: Instant::now(),
        }
    }

    /// The host TSC rate in Hz, measured from the start until now.
    pub fn hz(&self) -> f64 {
        let elapsed = self.t0.elapsed().as_nanos();
        if elapsed < MIN_BASELINE_NS {
            std::thread::sleep(std::time::Duration::from_nanos(
                (MIN_BASELINE_NS - elapsed) as u64,
            ));
        }
        let (tsc, ns) = (rdtsc(), self.t0.elapsed().as_nanos());
        tsc.wrapping_sub(self.tsc0) as f64 * 1e9 / ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_round_trips() {
        for offset in [0i64, 12345, -987_654_321, i64::MIN / 3] {
            let m = TscMapping::exact(offset);
            for host in [0u64, 1, 1 << 40, u64::MAX - 5] {
                assert_eq!(m.guest_to_host(m.host_to_guest(host)), host);
                assert_eq!(m.host_to_guest(host), host.wrapping_add(offset as u64));
            }
        }
    }

    #[test]
    fn clock_rate_is_plausible() {
        let hz = TscClock::start().hz();
        assert!((1e8..1e11).contains(&hz), "TSC at {hz} Hz");
    }

    #[test]
    fn measures_a_real_vcpu_offset() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            panic!("/dev/kvm is required for this test");
        };
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let m = measure_tsc_offset(&vcpu);
        assert_ne!(m.method, TscMethod::Unmeasured);
        let (msr, half) = (m.msr_offset.unwrap(), m.msr_accuracy_cycles.unwrap());
        // The MSR estimate must agree with the exact attribute within its own bracket.
        if m.method == TscMethod::Attribute {
            assert!(msr.abs_diff(m.offset) <= half + 1, "{m:?}");
        }
        // A guest TSC read now maps back into [before, after].
        let before = rdtsc();
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .unwrap();
        vcpu.get_msrs(&mut msrs).unwrap();
        let after = rdtsc();
        let host = m.guest_to_host(msrs.as_slice()[0].data);
        let slack = m.accuracy_cycles;
        assert!(
            host + slack >= before && host <= after + slack,
            "{before} <= {host} <= {after} (+-{slack})"
        );
    }
}
