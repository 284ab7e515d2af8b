//! The buckets against a simple model, and the group's turn taking, on a manual clock.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const SEC: u64 = 1_000_000_000;

/// Admitted (time, cost) pairs of a bucket asked at the given times.
fn drive(rate: u64, burst: u64, asks: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut b = TokenBucket::new(rate, burst, 0);
    let mut now = 0;
    let mut admitted = Vec::new();
    for &(dt, cost) in asks {
        now += dt;
        if b.wait_ns(now, cost) == 0 {
            b.take(cost);
            admitted.push((now, cost));
        }
    }
    admitted
}

proptest! {
    /// Over any window, what was admitted never exceeds rate x window + burst.
    #[test]
    fn window_bound(
        rate in 1u64..100_000,
        burst in 1u64..5_000,
        asks in prop::collection::vec((0u64..SEC / 100, 1u64..64), 1..300),
    ) {
        let asks: Vec<_> = asks.into_iter().map(|(dt, c)| (dt, c.min(burst))).collect();
        let admitted = drive(rate, burst, &asks);
        for i in 0..admitted.len() {
            let mut sum = 0u128;
            for &(t, c) in &admitted[i..] {
                sum += u128::from(c);
                let window = u128::from(t - admitted[i].0);
                let bound = u128::from(rate) * window / u128::from(SEC) + u128::from(burst);
                prop_assert!(sum <= bound, "{sum} > {bound} over {window} ns");
            }
        }
    }

    /// With work always waiting (each request asked for as soon as the bucket allows), the
    /// long-run rate is the limit: rate x T + burst, less at most one request.
    #[test]
    fn saturated_rate(rate in 1u64..50_000, burst in 1u64..5_000, cost in 1u64..2_000, secs in 1u64..20) {
        let mut b = TokenBucket::new(rate, burst, 0);
        let (mut now, mut total) = (0u64, 0u128);
        let end = secs * SEC;
        loop {
            now += b.wait_ns(now, cost);
            if now > end {
                break;
            }
            b.take(cost);
            total += u128::from(cost);
        }
        let ideal = u128::from(rate) * u128::from(end) / u128::from(SEC) + u128::from(burst.max(cost));
        prop_assert!(total <= ideal, "{total} > {ideal}");
        prop_assert!(total + u128::from(cost) + u128::from(burst) >= ideal, "{total} far below {ideal}");
    }

    /// Two busy members of a group take turns whoever asks first.
    #[test]
    fn group_is_fair(order in prop::collection::vec(any::<bool>(), 200..400)) {
        let clock = Arc::new(ManualClock::at(0));
        let limits = Limits { iops: Some(1000), ..Limits::default() };
        let group = Arc::new(ThrottleGroup::new("g", &limits, 0));
        let disk = || DiskThrottle::new(None, Some(group.clone()), clock.clone()).unwrap();
        let (a, b) = (disk(), disk());
        let mut q = [a.queue().unwrap(), b.queue().unwrap()];
        let mut got = [0u32; 2];
        let read = Charge { dir: Direction::Read, bytes: 4096 };
        for first in order {
            let turn = if first { [0, 1] } else { [1, 0] };
            for i in turn {
                while q[i].admit(read) {
                    got[i] += 1;
                }
            }
            clock.advance(SEC / 1000);
        }
        // The first asker may take the initial burst alone (nobody else waited); after
        // that the two alternate.
        prop_assert!(got[0].abs_diff(got[1]) as u64 <= default_burst(1000) + 1, "{got:?}");
    }
}

/// Two disks sharing one group's IOPS limit (its burst `burst`, else the default) on a manual
/// clock.
fn two_disks(burst: Option<u64>) -> (Arc<ManualClock>, [Arc<DiskThrottle>; 2]) {
    let clock = Arc::new(ManualClock::at(0));
    let limits = Limits {
        iops: Some(1000),
        iops_burst: burst,
        ..Limits::default()
    };
    let group = Arc::new(ThrottleGroup::new("g", &limits, 0));
    let disk = || DiskThrottle::new(None, Some(group.clone()), clock.clone()).unwrap();
    (clock.clone(), [disk(), disk()])
}

/// A busy member keeps its turn while it is away between two of its requests (submitting the
/// last one, popping the next): the other, asking twice as often, does not take the tokens
/// that come back meanwhile.
#[test]
fn a_member_between_two_requests_keeps_its_turn() {
    let (clock, [a, b]) = two_disks(None);
    let mut q = [a.queue().unwrap(), b.queue().unwrap()];
    let mut got = [0u32; 2];
    let read = Charge {
        dir: Direction::Read,
        bytes: 4096,
    };
    for _ in 0..500 {
        clock.advance(SEC / 200);
        loop {
            let mut served = false;
            for i in [0, 0, 1] {
                if q[i].admit(read) {
                    got[i] += 1;
                    served = true;
                }
            }
            if !served {
                break;
            }
        }
    }
    // Beyond the initial burst, which goes to whoever asks while the limit does not bite.
    assert!(
        u64::from(got[0].abs_diff(got[1])) <= default_burst(1000) + 1,
        "{got:?}"
    );
}

/// Below the limits nobody waits for a turn: that would cost a thread wake-up and save no
/// token.
#[test]
fn no_turns_while_the_limits_do_not_bite() {
    let (clock, [a, b]) = two_disks(None);
    let (mut qa, mut qb) = (a.queue().unwrap(), b.queue().unwrap());
    let read = Charge {
        dir: Direction::Read,
        bytes: 512,
    };
    for _ in 0..100 {
        // Both busy (neither settles), at half the limit between them.
        assert!(qa.admit(read));
        assert!(qb.admit(read));
        assert!(qb.admit(read), "B waited for A's turn below the limit");
        clock.advance(SEC / 300);
    }
}

/// A member that settles (nothing more to ask) leaves the turn order, handing the turn on.
#[test]
fn a_settled_member_hands_the_turn_on() {
    let (clock, [a, b]) = two_disks(Some(1));
    let (mut qa, mut qb) = (a.queue().unwrap(), b.queue().unwrap());
    let read = Charge {
        dir: Direction::Read,
        bytes: 512,
    };
    // The limit bites: the bucket is empty and A is refused.
    assert!(qa.admit(read));
    assert!(!qa.admit(read));
    clock.advance(SEC / 1000);
    assert!(qa.admit(read));
    clock.advance(SEC / 1000);
    // A was admitted and has not settled: its turn comes first.
    assert!(!qb.admit(read));
    qa.settle();
    assert!(qb.admit(read), "A settled: the turn is B's");
}

/// Turns go to disks, not queues: a disk with three busy queues gets what a disk with one
/// gets (first come first served would give the first asker every token).
#[test]
fn group_turns_are_per_disk() {
    let (clock, [a, b]) = two_disks(None);
    let mut queues = [
        (0, a.queue().unwrap()),
        (0, a.queue().unwrap()),
        (0, a.queue().unwrap()),
        (1, b.queue().unwrap()),
    ];
    let mut got = [0u32; 2];
    let read = Charge {
        dir: Direction::Read,
        bytes: 512,
    };
    for _ in 0..1000 {
        // A queue with work always waiting asks again at once after an admission.
        for (disk, q) in queues.iter_mut() {
            while q.admit(read) {
                got[*disk] += 1;
            }
        }
        clock.advance(SEC / 1000);
    }
    // Beyond the initial burst, which the first asker may take alone.
    assert!(
        u64::from(got[0].abs_diff(got[1])) <= default_burst(1000) + 1,
        "{got:?}"
    );
}

#[test]
fn oversize_request_waits_for_a_full_bucket_then_leaves_debt() {
    let mut b = TokenBucket::new(1000, 10, 0);
    b.take(5);
    assert!(b.wait_ns(0, 50) > 0, "not full: the oversize request waits");
    assert_eq!(b.wait_ns(5 * SEC / 1000, 50), 0, "full again: admitted");
    b.take(50);
    assert_eq!(b.tokens(), -40);
    // The debt is paid at the rate before even one token is back, and the wake-up waits for
    // a batch of 5 ms of refill more.
    assert_eq!(b.wait_ns(5 * SEC / 1000, 1), 46 * SEC / 1000);
}

#[test]
fn a_wake_up_waits_for_a_batch_but_never_past_a_full_bucket() {
    // 5 ms of refill at 2000/s is 10 tokens more than the one asked for.
    let mut b = TokenBucket::new(2000, 40, 0);
    b.take(40);
    assert_eq!(b.wait_ns(0, 1), 11 * SEC / 2000);
    // A bucket of 2 tokens: the batch is cut to what it holds, so no token overflows.
    let mut b = TokenBucket::new(2000, 2, 0);
    b.take(2);
    assert_eq!(b.wait_ns(0, 1), 2 * SEC / 2000);
}

#[test]
fn what_each_request_is_charged() {
    use blk_proto::RequestType as T;
    assert_eq!(Charge::of(T::GetId, 20), None);
    assert_eq!(Charge::of(T::Flush, 0).map(|c| c.bytes), Some(0));
    assert_eq!(Charge::of(T::Discard, 1 << 20).map(|c| c.bytes), Some(0));
    assert_eq!(
        Charge::of(T::WriteZeroes, 1 << 20).map(|c| c.bytes),
        Some(0)
    );
    assert_eq!(Charge::of(T::In, 4096).map(|c| c.bytes), Some(4096));
    // A read does not draw from the write bucket.
    let limits = Limits {
        iops_wr: Some(1),
        iops_burst: Some(1),
        ..Limits::default()
    };
    let mut set = BucketSet::new(&limits, 0);
    let read = Charge::of(T::In, 4096).unwrap();
    let write = Charge::of(T::Out, 4096).unwrap();
    for _ in 0..10 {
        assert_eq!(set.wait_ns(0, read), 0);
        set.take(read);
    }
    assert_eq!(set.wait_ns(0, write), 0);
    set.take(write);
    assert!(set.wait_ns(0, write) > 0);
    // Bytes: FLUSH passes a drained bandwidth bucket.
    let limits = Limits {
        bw: Some(4096),
        ..Limits::default()
    };
    let mut set = BucketSet::new(&limits, 0);
    set.take(write);
    assert!(set.wait_ns(0, write) > 0);
    assert_eq!(set.wait_ns(0, Charge::of(T::Flush, 0).unwrap()), 0);
}

#[test]
fn default_burst_is_20ms_of_rate() {
    assert_eq!(default_burst(2000), 40);
    assert_eq!(default_burst(10), 1);
    let mut b = TokenBucket::new(2000, default_burst(2000), 0);
    let n = (0..100).take_while(|_| {
        let ok = b.wait_ns(0, 1) == 0;
        b.take(1);
        ok
    });
    assert_eq!(n.count(), 40);
}

#[test]
fn unlimited_disk_has_no_throttle() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    assert!(DiskThrottle::new(None, None, clock.clone()).is_none());
    assert!(DiskThrottle::new(Some(&Limits::default()), None, clock).is_none());
}

#[test]
fn limits_grammar() {
    let mut l = Limits::default();
    assert!(l.set("bw", "20M").unwrap());
    assert!(l.set("iops", "2000").unwrap());
    assert!(!l.set("path", "x").unwrap());
    assert_eq!(l.bw, Some(20 << 20));
    assert_eq!(parse_size("128k"), Some(128 << 10));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("M"), None);
    assert_eq!(parse_size("99999999999G"), None);
    let bad = |pairs: &[(&str, &str)]| {
        let mut l = Limits::default();
        for (k, v) in pairs {
            l.set(k, v)?;
        }
        l.check()
    };
    assert!(matches!(bad(&[("iops", "0")]), Err(LimitsError::Value(..))));
    assert!(matches!(
        bad(&[("bw", "fast")]),
        Err(LimitsError::Value(..))
    ));
    assert!(matches!(
        bad(&[("iops", "10"), ("iops-rd", "5")]),
        Err(LimitsError::TotalAndDirection("iops"))
    ));
    assert!(matches!(
        bad(&[("bw", "1M"), ("bw-wr", "5")]),
        Err(LimitsError::TotalAndDirection("bw"))
    ));
    assert!(matches!(
        bad(&[("iops-burst", "10")]),
        Err(LimitsError::BurstWithoutRate("iops"))
    ));
    assert!(bad(&[("iops-rd", "10"), ("iops-wr", "5"), ("iops-burst", "9")]).is_ok());
}

#[test]
fn group_grammar() {
    let g: GroupSpec = "name=g1,iops=4000,bw=100M".parse().unwrap();
    assert_eq!(g.name, "g1");
    assert_eq!(g.limits.iops, Some(4000));
    for (s, want) in [
        ("iops=4000", "no name"),
        ("name=g", "sets no limit"),
        ("name=g,colour=red", "unknown key"),
        ("name=g,iops", "not key=value"),
        ("name=g,iops=0", "iops=0 is invalid"),
    ] {
        let e = s.parse::<GroupSpec>().unwrap_err().to_string();
        assert!(e.contains(want) && !e.contains('\n'), "{s}: {e}");
        assert!(e.starts_with("--throttle-group"), "{e}");
    }
}
