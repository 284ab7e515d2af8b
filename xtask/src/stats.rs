//! Throughput and latency figures of one benchmark run, and medians over repeats.

/// One run's figures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Completed requests per second.
    pub iops: f64,
    /// Mebibytes per second.
    pub mib_s: f64,
    /// Median latency in microseconds.
    pub lat_p50_us: f64,
    /// 99th percentile latency in microseconds.
    pub lat_p99_us: f64,
    /// Completed requests.
    pub ios: u64,
    /// Host CPU time (user + system) per completed request in microseconds, when measured.
    pub cpu_us_per_io: Option<f64>,
}

impl Summary {
    /// Figures from per-request latencies (nanoseconds), bytes moved and elapsed seconds.
    pub fn from_latencies(mut ns: Vec<u64>, bytes: u64, secs: f64) -> Self {
        ns.sort_unstable();
        let pct = |p: f64| -> f64 {
            if ns.is_empty() {
                return 0.0;
            }
            let i = ((ns.len() as f64 * p).ceil() as usize).clamp(1, ns.len()) - 1;
            ns[i] as f64 / 1000.0
        };
        Summary {
            iops: ns.len() as f64 / secs,
            mib_s: bytes as f64 / secs / (1 << 20) as f64,
            lat_p50_us: pct(0.50),
            lat_p99_us: pct(0.99),
            ios: ns.len() as u64,
            cpu_us_per_io: None,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// CPU time per I/O in microseconds; `None` without I/Os.
pub fn cpu_us_per_io(cpu: std::time::Duration, ios: u64) -> Option<f64> {
    (ios > 0).then(|| cpu.as_secs_f64() * 1e6 / ios as f64)
}

/// Spread of `values` as (max - min) / median, in percent; 0 for fewer than two values.
pub fn spread_pct(values: &[f64]) -> f64 {
    let m = median(values);
    if values.len() < 2 || m == 0.0 {
        return 0.0;
    }
    let max = values.iter().cloned().fold(f64::MIN, f64::max);
    let min = values.iter().cloned().fold(f64::MAX, f64::min);
    (max - min) / m * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let s = Summary::from_latencies(ns, 100 * 4096, 2.0);
        assert_eq!(s.iops, 50.0);
        assert_eq!(s.lat_p50_us, 50.0);
        assert_eq!(s.lat_p99_us, 99.0);
        assert!((s.mib_s - 0.1953125).abs() < 1e-9);
        assert_eq!((s.ios, s.cpu_us_per_io), (100, None));
        let cpu = std::time::Duration::from_millis(3);
        assert_eq!(cpu_us_per_io(cpu, 100), Some(30.0));
        assert_eq!(cpu_us_per_io(cpu, 0), None);
    }

    #[test]
    fn medians_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(spread_pct(&[90.0, 100.0, 110.0]), 20.0);
        assert_eq!(spread_pct(&[5.0]), 0.0);
    }
}
