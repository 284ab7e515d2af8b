//! `--cpu-affinity`: which host CPUs the vCPU threads and the I/O threads may run on.
//!
//! On a small host a polling vCPU and a polling queue thread each want a core; pinning them to
//! different ones keeps the scheduler from stacking them on one core while the other idles.

use crate::config::ConfigError;

/// The CPU sets of the VMM's thread kinds; `None` leaves a kind wherever the host puts it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuAffinity {
    /// CPUs for vCPU threads.
    pub vcpu: Option<Vec<usize>>,
    /// CPUs for queue threads, pool workers and the shared I/O thread.
    pub io: Option<Vec<usize>>,
}

/// CPUs above this are refused (the kernel's `cpu_set_t` holds 1024).
const MAX_CPU: usize = 1023;

impl CpuAffinity {
    /// Parses `vcpu=LIST,io=LIST`, a LIST being CPU numbers and ranges joined by `:`
    /// (`0`, `1-3`, `0:2-3`).
    ///
    /// ```
    /// use vmm::affinity::CpuAffinity;
    /// let a = CpuAffinity::parse("vcpu=0,io=1-2").unwrap();
    /// assert_eq!((a.vcpu, a.io), (Some(vec![0]), Some(vec![1, 2])));
    /// assert!(CpuAffinity::parse("vcpu=x").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::CpuAffinity(s.to_string(), why.to_string());
        let mut a = CpuAffinity::default();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (key, list) = item
                .split_once('=')
                .ok_or_else(|| bad("items are key=LIST"))?;
            let cpus = parse_list(list)
                .ok_or_else(|| bad("a LIST is CPU numbers or ranges joined by ':'"))?;
            let slot = match key {
                "vcpu" => &mut a.vcpu,
                "io" => &mut a.io,
                _ => return Err(bad("the keys are vcpu and io")),
            };
            if slot.replace(cpus).is_some() {
                return Err(bad("a key is given twice"));
            }
        }
        Ok(a)
    }

    /// The CPUs of the I/O threads: `io=` when given; with only `vcpu=`, every CPU this
    /// process may use but the vCPUs' (the I/O threads are started by a vCPU thread and would
    /// otherwise inherit its pin, stacking a queue thread on the core a polling vCPU holds);
    /// `None` without either.
    ///
    /// ```
    /// use vmm::affinity::CpuAffinity;
    /// let a = CpuAffinity::parse("vcpu=0").unwrap();
    /// assert!(a.io_cpus().is_some_and(|io| !io.contains(&0) || io == [0]));
    /// assert_eq!(CpuAffinity::default().io_cpus(), None);
    /// ```
    pub fn io_cpus(&self) -> Option<Vec<usize>> {
        match (&self.io, &self.vcpu) {
            (Some(io), _) => Some(io.clone()),
            (None, Some(vcpu)) => Some(others(&allowed_cpus(), vcpu)),
            (None, None) => None,
        }
    }
}

/// The CPUs in `allowed` that are not in `taken`; all of `allowed` if none is left.
fn others(allowed: &[usize], taken: &[usize]) -> Vec<usize> {
    let rest: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !taken.contains(c))
        .collect();
    if rest.is_empty() {
        allowed.to_vec()
    } else {
        rest
    }
}

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the set is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: `set` was filled by the kernel; every index is inside its 1024 bits.
    (0..=MAX_CPU)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

fn parse_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus: Vec<usize> = Vec::new();
    for part in list.split(':') {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
            None => {
                let n = part.parse().ok()?;
                (n, n)
            }
        };
        if lo > hi || hi > MAX_CPU {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// Pins the calling thread to `cpus`; a failure (a CPU the host lacks) is reported once per
/// thread and otherwise ignored: the thread runs unpinned.
pub fn pin_current_thread(cpus: &[usize]) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `c` is at most MAX_CPU, inside the set's 1024 bits.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is this thread; the set is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        eprintln!(
            "vmm: cannot pin a thread to CPUs {cpus:?}: {}; it runs unpinned",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_threads_avoid_the_vcpus_when_only_vcpus_are_pinned() {
        assert_eq!(others(&[0, 1, 2, 3], &[0, 2]), [1, 3]);
        assert_eq!(others(&[0], &[0]), [0]);
        let io = CpuAffinity::parse("io=3").unwrap();
        assert_eq!(io.io_cpus(), Some(vec![3]));
    }

    #[test]
    fn lists_and_errors() {
        assert_eq!(parse_list("0:2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("1024"), None);
        assert_eq!(parse_list(""), None);
        assert!(CpuAffinity::parse("vcpu=0,vcpu=1").is_err());
        assert!(CpuAffinity::parse("gpu=0").is_err());
        assert_eq!(CpuAffinity::parse("").unwrap(), CpuAffinity::default());
    }
}
