//! A fixed-size log-linear histogram of `u64` samples (e.g. TSC ticks), no allocation.
//!
//! Values below 16 get a bucket each; above, every power of two is split into 16 linear
//! sub-buckets, so a reported percentile is within 1/16 (6.25 %) of the true value.

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Number of buckets: 16 exact ones, then 16 per power of two from 2^4 to 2^63.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// Counts of samples by magnitude, plus exact count, sum and maximum.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Histogram {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, value: u64) {
        if let Some(b) = self.buckets.get_mut(bucket_of(value)) {
            *b += 1;
        }
        self.count += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the samples (0 when empty).
    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            return 0;
        }
        (self.sum / u128::from(self.count)) as u64
    }

    /// The value below which `pct` percent of the samples lie, as the upper bound of its bucket
    /// (capped at the maximum seen); 0 when empty.
    pub fn percentile(&self, pct: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // ceil() without libm: truncate, then round up if something was cut off.
        let exact = (pct / 100.0) * self.count as f64;
        let mut rank = exact as u64;
        if (rank as f64) < exact {
            rank += 1;
        }
        let rank = rank.max(1);
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(i).min(self.max);
            }
        }
        self.max
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    (exp - SUB_BITS + 1) as usize * SUB + sub
}

/// The largest value that falls into bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    let low = (1u64 << exp) | (sub << (exp - SUB_BITS));
    low + ((1u64 << (exp - SUB_BITS)) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values() {
        for v in (0..5000u64).chain([u64::MAX, 1 << 40, (1 << 40) + 12345]) {
            let b = bucket_of(v);
            assert!(b < BUCKETS);
            assert!(bucket_upper(b) >= v, "v={v}");
            if b > 0 {
                assert!(bucket_upper(b - 1) < v, "v={v}");
            }
        }
    }

    #[test]
    fn percentiles_within_one_sixteenth() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (p, exact) in [(50.0, 5000u64), (99.0, 9900), (100.0, 10_000)] {
            let got = h.percentile(p);
            assert!(got >= exact && got <= exact + exact / 16, "p{p}: {got}");
        }
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.mean(), 5000);
    }

    #[test]
    fn empty_is_zero() {
        let h = Histogram::new();
        assert_eq!((h.percentile(50.0), h.max(), h.mean()), (0, 0, 0));
    }

    #[test]
    fn single_outlier_only_moves_the_max() {
        let mut h = Histogram::new();
        for _ in 0..999 {
            h.record(100);
        }
        h.record(1_000_000);
        assert!(h.percentile(99.0) <= 103);
        assert_eq!(h.percentile(100.0), 1_000_000);
    }
}
