//! The per-stage latency table: for each segment name, its count, mean, median, 99th
//! percentile and share of the total request time.

use super::timeline::{Point, Request};

/// One row: the segments ending at one point, over all requests that have it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRow {
    /// The point that ends the segment (`"total"` for the whole request).
    pub stage: &'static str,
    /// Requests with this segment.
    pub count: usize,
    /// Mean duration, ns.
    pub mean_ns: f64,
    /// Median duration, ns (nearest rank).
    pub p50_ns: f64,
    /// 99th percentile, ns (nearest rank).
    pub p99_ns: f64,
    /// Sum of this segment over the sum of the requests' totals (0..=1).
    pub share: f64,
}

/// The table: rows in request order, then the total.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageTable {
    /// One row per segment that occurred.
    pub rows: Vec<StageRow>,
    /// The whole request (first point to last).
    pub total: Option<StageRow>,
}

/// The `q`-quantile of sorted `v` by nearest rank (0 if empty).
pub fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.max(1) - 1)
        .copied()
        .unwrap_or(sorted[sorted.len() - 1])
}

fn row(stage: &'static str, mut v: Vec<u64>, ns_per_cycle: f64, total_sum: u64) -> StageRow {
    v.sort_unstable();
    let sum: u64 = v.iter().sum();
    StageRow {
        stage,
        count: v.len(),
        mean_ns: if v.is_empty() {
            0.0
        } else {
            sum as f64 / v.len() as f64 * ns_per_cycle
        },
        p50_ns: nearest_rank(&v, 0.5) as f64 * ns_per_cycle,
        p99_ns: nearest_rank(&v, 0.99) as f64 * ns_per_cycle,
        share: if total_sum == 0 {
            0.0
        } else {
            sum as f64 / total_sum as f64
        },
    }
}

/// The requests a table is made of: those with a guest side if any has one, and their
/// first-to-last span in cycles.
fn eligible(requests: &[Request]) -> Vec<(&Request, u64)> {
    let with_guest = requests.iter().any(Request::has_guest);
    requests
        .iter()
        .filter(|r| r.has_guest() || !with_guest)
        .filter_map(|r| {
            let segs = r.segments();
            Some((r, segs.last()?.to - segs.first()?.from))
        })
        .collect()
}

impl StageTable {
    /// The table of `requests` (those with a guest side if any has one), with the host TSC
    /// running at `tsc_hz`.
    pub fn from_requests(requests: &[Request], tsc_hz: f64) -> Self {
        Self::build(eligible(requests).into_iter().map(|(r, _)| r), tsc_hz)
    }

    /// The table of the requests whose total is at most the `q`-quantile of all totals: the
    /// typical request, without the tail (on a loaded host, a few preempted requests
    /// otherwise dominate the means).
    pub fn up_to_quantile(requests: &[Request], tsc_hz: f64, q: f64) -> Self {
        let all = eligible(requests);
        let mut totals: Vec<u64> = all.iter().map(|(_, t)| *t).collect();
        totals.sort_unstable();
        let limit = nearest_rank(&totals, q);
        Self::build(
            all.into_iter().filter(|(_, t)| *t <= limit).map(|(r, _)| r),
            tsc_hz,
        )
    }

    fn build<'a>(requests: impl Iterator<Item = &'a Request>, tsc_hz: f64) -> Self {
        let ns_per_cycle = if tsc_hz > 0.0 { 1e9 / tsc_hz } else { 0.0 };
        let mut per_point: Vec<Vec<u64>> = vec![Vec::new(); Point::ALL.len()];
        let mut totals = Vec::new();
        for r in requests {
            let segs = r.segments();
            let (Some(first), Some(last)) = (segs.first(), segs.last()) else {
                continue;
            };
            totals.push(last.to - first.from);
            for s in &segs {
                if let Some(v) = per_point.get_mut(s.end as usize) {
                    v.push(s.to - s.from);
                }
            }
        }
        let total_sum: u64 = totals.iter().sum();
        let rows = Point::ALL
            .iter()
            .zip(per_point)
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| row(p.name(), v, ns_per_cycle, total_sum))
            .collect();
        let total = (!totals.is_empty()).then(|| row("total", totals, ns_per_cycle, total_sum));
        StageTable { rows, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::timeline::POINTS;

    fn req(points: &[(Point, u64)]) -> Request {
        let mut at = [None; POINTS];
        for &(p, t) in points {
            at[p as usize] = Some(t);
        }
        Request {
            id: 0,
            device: 0,
            queue: 0,
            head: 0,
            at,
        }
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.5), 50);
        assert_eq!(nearest_rank(&v, 0.99), 99);
        assert_eq!(nearest_rank(&v, 1.0), 100);
        assert_eq!(nearest_rank(&v, 0.0), 1);
        assert_eq!(nearest_rank(&[], 0.5), 0);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
    }

    #[test]
    fn rows_shares_and_totals() {
        use Point::*;
        // 1 GHz: one cycle is one ns.
        let reqs = [
            req(&[(GuestSubmit, 0), (Popped, 10), (GuestComplete, 40)]),
            req(&[(GuestSubmit, 100), (Popped, 130), (GuestComplete, 160)]),
            // No guest side: left out because the others have one.
            req(&[(Popped, 0), (UsedPublished, 1_000)]),
        ];
        let t = StageTable::from_requests(&reqs, 1e9);
        let names: Vec<_> = t.rows.iter().map(|r| r.stage).collect();
        assert_eq!(names, ["Popped", "GuestComplete"]);
        let popped = &t.rows[0];
        assert_eq!(popped.count, 2);
        assert!((popped.mean_ns - 20.0).abs() < 1e-9);
        assert_eq!((popped.p50_ns, popped.p99_ns), (10.0, 30.0));
        assert!((popped.share - 40.0 / 100.0).abs() < 1e-9);
        let share_sum: f64 = t.rows.iter().map(|r| r.share).sum();
        assert!((share_sum - 1.0).abs() < 1e-9);
        let total = t.total.unwrap();
        assert_eq!((total.count, total.mean_ns), (2, 50.0));
    }

    #[test]
    fn the_tail_can_be_left_out() {
        use Point::*;
        let mut reqs: Vec<Request> = (0..10u64)
            .map(|i| req(&[(GuestSubmit, i * 1000), (GuestComplete, i * 1000 + 100)]))
            .collect();
        reqs.push(req(&[(GuestSubmit, 50_000), (GuestComplete, 60_000)]));
        let all = StageTable::from_requests(&reqs, 1e9);
        let typical = StageTable::up_to_quantile(&reqs, 1e9, 0.9);
        assert_eq!(all.total.as_ref().unwrap().count, 11);
        assert_eq!(typical.total.as_ref().unwrap().count, 10);
        assert_eq!(typical.total.unwrap().mean_ns, 100.0);
        assert!(all.total.unwrap().mean_ns > 900.0);
    }

    #[test]
    fn device_only_requests_make_a_table_too() {
        let reqs = [req(&[(Point::Popped, 0), (Point::UsedPublished, 2_000)])];
        let t = StageTable::from_requests(&reqs, 2e9);
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].mean_ns, 1_000.0);
        assert_eq!(t.rows[0].share, 1.0);
    }
}
