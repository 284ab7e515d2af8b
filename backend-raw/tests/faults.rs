//! Injected faults: the spec grammar, exactly the chosen requests failing with the chosen
//! errno over both engines while the others keep the data right, completion order, and
//! epoll wake-ups for injected completions.

mod common;

use std::ops::Range;

use backend_raw::{
    with_faults, DiskOptions, Engine, EngineKind, Error, FaultEngine, FaultOp, FaultRule,
    FaultSpec, FaultSpecError, IoOp,
};
use common::{image, reap_n, Buf};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const KINDS: [EngineKind; 2] = [EngineKind::Sync, EngineKind::IoUring];
const RW: DiskOptions = DiskOptions {
    readonly: false,
    direct: false,
};
const SECTOR: u64 = 512;
const CAPACITY: u64 = 64 << 10;

fn rule(errno: i32, op: FaultOp) -> FaultRule {
    FaultRule {
        errno,
        op,
        range: None,
        after: 0,
        every: 1,
        times: None,
    }
}

#[test]
fn valid_specs_parse() {
    let cases: Vec<(&str, Vec<FaultRule>, &str)> = vec![
        ("eio@read", vec![rule(libc::EIO, FaultOp::Read)], "eio@read"),
        (
            "eio@write:after=100",
            vec![FaultRule {
                after: 100,
                ..rule(libc::EIO, FaultOp::Write)
            }],
            "eio@write:after=100",
        ),
        (
            "eio@any:every=7",
            vec![FaultRule {
                every: 7,
                ..rule(libc::EIO, FaultOp::Any)
            }],
            "eio@any:every=7",
        ),
        (
            "enospc@write",
            vec![rule(libc::ENOSPC, FaultOp::Write)],
            "enospc@write",
        ),
        (
            "eio@flush",
            vec![rule(libc::EIO, FaultOp::Flush)],
            "eio@flush",
        ),
        (
            "eio@offset=1048576-2097152",
            vec![FaultRule {
                range: Some(1 << 20..2 << 20),
                ..rule(libc::EIO, FaultOp::Any)
            }],
            "eio@offset=1048576-2097152",
        ),
        (
            "eio@read+enospc@write:times=2,every=3,after=1,offset=4K-1M\
             +5@discard+edquot@write-zeroes",
            vec![
                rule(libc::EIO, FaultOp::Read),
                FaultRule {
                    range: Some(4096..1 << 20),
                    after: 1,
                    every: 3,
                    times: Some(2),
                    ..rule(libc::ENOSPC, FaultOp::Write)
                },
                rule(5, FaultOp::Discard),
                rule(libc::EDQUOT, FaultOp::WriteZeroes),
            ],
            "eio@read+enospc@write:offset=4096-1048576,after=1,every=3,times=2+eio@discard\
             +edquot@write-zeroes",
        ),
        (
            "erofs@offset=0-1G:times=1+28@any",
            vec![
                FaultRule {
                    range: Some(0..1 << 30),
                    times: Some(1),
                    ..rule(libc::EROFS, FaultOp::Any)
                },
                rule(libc::ENOSPC, FaultOp::Any),
            ],
            "erofs@offset=0-1073741824:times=1+enospc@any",
        ),
    ];
    for (text, rules, shown) in cases {
        let spec: FaultSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(spec.rules(), rules.as_slice(), "{text}");
        assert_eq!(spec.to_string(), shown, "{text}");
        assert_eq!(shown.parse::<FaultSpec>().unwrap(), spec, "{shown}");
        assert_eq!(FaultSpec::new(rules), Some(spec));
    }
}

/// Whether a parse error is of the expected variant.
type IsKind = fn(&FaultSpecError) -> bool;

/// A request's result.
type Outcome = Result<u32, i32>;

#[test]
fn invalid_specs_name_the_bad_part() {
    let cases: [(&str, IsKind, &str); 17] = [
        (
            "",
            |e| matches!(e, FaultSpecError::EmptyRule { .. }),
            "empty fault rule",
        ),
        (
            "eio@read+",
            |e| matches!(e, FaultSpecError::EmptyRule { .. }),
            "`eio@read+`",
        ),
        (
            "eio",
            |e| matches!(e, FaultSpecError::MissingAt { .. }),
            "`eio` has no `@`",
        ),
        (
            "eoi@read",
            |e| matches!(e, FaultSpecError::UnknownErrno { .. }),
            "unknown error `eoi`",
        ),
        (
            "0@read",
            |e| matches!(e, FaultSpecError::UnknownErrno { .. }),
            "`0`",
        ),
        (
            "4096@read",
            |e| matches!(e, FaultSpecError::UnknownErrno { .. }),
            "`4096`",
        ),
        (
            "eio@reed",
            |e| matches!(e, FaultSpecError::UnknownTarget { .. }),
            "unknown target `reed`",
        ),
        (
            "eio@",
            |e| matches!(e, FaultSpecError::UnknownTarget { .. }),
            "unknown target ``",
        ),
        (
            "eio@read:afterr=1",
            |e| matches!(e, FaultSpecError::UnknownCondition { .. }),
            "`afterr=1`",
        ),
        (
            "eio@read:",
            |e| matches!(e, FaultSpecError::UnknownCondition { .. }),
            "in fault rule `eio@read:`",
        ),
        (
            "eio@read:after=x",
            |e| matches!(e, FaultSpecError::BadNumber { .. }),
            "invalid number `x`",
        ),
        (
            "eio@read:times=-1",
            |e| matches!(e, FaultSpecError::BadNumber { .. }),
            "`-1`",
        ),
        (
            "eio@any:every=0",
            |e| matches!(e, FaultSpecError::ZeroEvery { .. }),
            "`every=0`",
        ),
        (
            "eio@offset=2M-1M",
            |e| matches!(e, FaultSpecError::BadRange { .. }),
            "invalid range `2M-1M`",
        ),
        (
            "eio@write:offset=5",
            |e| matches!(e, FaultSpecError::BadRange { .. }),
            "invalid range `5`",
        ),
        (
            "eio@flush:offset=0-1",
            |e| matches!(e, FaultSpecError::RangeOnFlush { .. }),
            "range on flush",
        ),
        (
            "eio@offset=0-1:offset=1-2",
            |e| matches!(e, FaultSpecError::Repeated { .. }),
            "`offset` given twice",
        ),
    ];
    for (text, kind, needle) in cases {
        let err = text
            .parse::<FaultSpec>()
            .expect_err(&format!("`{text}` was accepted"));
        let msg = err.to_string();
        assert!(kind(&err), "`{text}`: wrong error {err:?}");
        assert!(msg.contains(needle), "`{text}`: {msg}");
    }
    // The rule at fault is named, not the whole spec.
    let err = "eio@read+eio@wrte".parse::<FaultSpec>().unwrap_err();
    assert!(err.to_string().contains("rule `eio@wrte`"), "{err}");
    assert_eq!(
        FaultSpec::new(vec![FaultRule {
            every: 0,
            ..rule(libc::EIO, FaultOp::Read)
        }]),
        None
    );
    assert_eq!(FaultSpec::new(Vec::new()), None);
}

fn fault_op() -> impl Strategy<Value = FaultOp> {
    prop::sample::select(vec![
        FaultOp::Any,
        FaultOp::Read,
        FaultOp::Write,
        FaultOp::Flush,
        FaultOp::Discard,
        FaultOp::WriteZeroes,
    ])
}

fn sector_range() -> impl Strategy<Value = Range<u64>> {
    (0..CAPACITY / SECTOR, 1..16u64).prop_map(|(s, n)| s * SECTOR..(s + n) * SECTOR)
}

fn fault_rule() -> impl Strategy<Value = FaultRule> {
    (
        prop::sample::select(vec![libc::EIO, libc::ENOSPC, libc::EROFS, 77]),
        fault_op(),
        prop::option::of(sector_range()),
        0..5u64,
        1..4u64,
        prop::option::of(0..4u64),
    )
        .prop_map(|(errno, op, range, after, every, times)| FaultRule {
            errno,
            op,
            range: range.filter(|_| op != FaultOp::Flush),
            after,
            every,
            times,
        })
}

fn fault_spec() -> impl Strategy<Value = FaultSpec> {
    prop::collection::vec(fault_rule(), 1..4).prop_map(|rules| FaultSpec::new(rules).unwrap())
}

proptest! {
    #[test]
    fn display_round_trips(spec in fault_spec()) {
        let shown = spec.to_string();
        prop_assert_eq!(shown.parse::<FaultSpec>(), Ok(spec), "{}", shown);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Read { sector: u64, sectors: u64 },
    Write { sector: u64, sectors: u64, seed: u8 },
    Flush,
    Discard { sector: u64, sectors: u64 },
    WriteZeroes { sector: u64, sectors: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let span =
        (0..CAPACITY / SECTOR).prop_flat_map(|s| (Just(s), 0..=(CAPACITY / SECTOR - s).min(16)));
    prop_oneof![
        3 => span.clone().prop_map(|(sector, sectors)| Op::Read { sector, sectors }),
        3 => (span.clone(), any::<u8>())
            .prop_map(|((sector, sectors), seed)| Op::Write { sector, sectors, seed }),
        1 => Just(Op::Flush),
        1 => span.clone().prop_map(|(sector, sectors)| Op::Discard { sector, sectors }),
        1 => span.prop_map(|(sector, sectors)| Op::WriteZeroes { sector, sectors }),
    ]
}

/// The model of a spec: each rule counts what it matches and fails as the grammar says.
struct ModelRule {
    rule: FaultRule,
    counted: u64,
    failed: u64,
}

impl ModelRule {
    fn counts(&self, op: &Op) -> bool {
        let (name, span) = match *op {
            Op::Read { sector, sectors } => (FaultOp::Read, Some((sector, sectors))),
            Op::Write {
                sector, sectors, ..
            } => (FaultOp::Write, Some((sector, sectors))),
            Op::Flush => (FaultOp::Flush, None),
            Op::Discard { sector, sectors } => (FaultOp::Discard, Some((sector, sectors))),
            Op::WriteZeroes { sector, sectors } => (FaultOp::WriteZeroes, Some((sector, sectors))),
        };
        let op_matches = self.rule.op == FaultOp::Any || self.rule.op == name;
        let range_matches = match (&self.rule.range, span) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(r), Some((sector, sectors))) => (sector..sector + sectors)
                .any(|s| (s * SECTOR..(s + 1) * SECTOR).any(|b| r.contains(&b))),
        };
        op_matches && range_matches
    }

    /// Counts `op`; returns whether this rule fails it.
    fn step(&mut self, op: &Op) -> bool {
        if !self.counts(op) {
            return false;
        }
        self.counted += 1;
        let fires = self.counted > self.rule.after
            && (self.counted - self.rule.after) % self.rule.every == 0
            && self.rule.times.is_none_or(|t| self.failed < t);
        self.failed += u64::from(fires);
        fires
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 7) as u8).wrapping_mul(31) | 1)
        .collect()
}

fn run_model(kind: EngineKind, spec: FaultSpec, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let img = image(CAPACITY, RW);
    let discard_zeroes = img.disk.discard_supported();
    let inner = img.disk.engine(kind, 4).unwrap();
    let mut engine = FaultEngine::new(inner, spec.clone());
    let mut model = vec![0u8; CAPACITY as usize];
    let mut rules: Vec<ModelRule> = spec
        .rules()
        .iter()
        .map(|r| ModelRule {
            rule: r.clone(),
            counted: 0,
            failed: 0,
        })
        .collect();
    let mut injected = 0;
    for (i, op) in ops.iter().enumerate() {
        if matches!(op, Op::Discard { .. }) && !discard_zeroes {
            continue;
        }
        // Every rule counts, the first firing one decides.
        let fired: Vec<i32> = rules
            .iter_mut()
            .filter_map(|r| r.step(op).then_some(r.rule.errno))
            .collect();
        let expected_errno = fired.first().copied();
        let bytes = |sector: u64, sectors: u64| {
            (sector * SECTOR) as usize..((sector + sectors) * SECTOR) as usize
        };
        let mut buf = Buf::new(0, 0);
        let io = match *op {
            Op::Read { sector, sectors } => {
                buf = Buf::new((sectors * SECTOR) as usize, 0);
                IoOp::Read {
                    offset: sector * SECTOR,
                }
            }
            Op::Write {
                sector,
                sectors,
                seed,
            } => {
                buf = Buf::filled(&pattern(seed, (sectors * SECTOR) as usize), 0);
                IoOp::Write {
                    offset: sector * SECTOR,
                }
            }
            Op::Flush => IoOp::Flush,
            Op::Discard { sector, sectors } => IoOp::Discard {
                offset: sector * SECTOR,
                len: sectors * SECTOR,
            },
            Op::WriteZeroes { sector, sectors } => IoOp::WriteZeroes {
                offset: sector * SECTOR,
                len: sectors * SECTOR,
                unmap: false,
            },
        };
        let iov = [buf.iovec()];
        let iovecs: &[libc::iovec] = match io {
            IoOp::Read { .. } | IoOp::Write { .. } => &iov,
            _ => &[],
        };
        // SAFETY: `buf` outlives the request, which is reaped below.
        unsafe { engine.submit(io, iovecs, i as u64).unwrap() };
        let done = reap_n(&mut engine, 1);
        prop_assert_eq!(done.len(), 1);
        prop_assert_eq!(done[0].user_data, i as u64);
        let len = match *op {
            Op::Read { sectors, .. } | Op::Write { sectors, .. } => (sectors * SECTOR) as u32,
            _ => 0,
        };
        match expected_errno {
            Some(errno) => {
                injected += 1;
                prop_assert_eq!(done[0].result, Err(errno), "op {} {:?}", i, op);
            }
            None => {
                prop_assert_eq!(done[0].result, Ok(len), "op {} {:?}", i, op);
                match *op {
                    Op::Read { sector, sectors } => {
                        prop_assert!(
                            buf.bytes() == &model[bytes(sector, sectors)],
                            "op {} read wrong data",
                            i
                        )
                    }
                    Op::Write {
                        sector, sectors, ..
                    } => model[bytes(sector, sectors)].copy_from_slice(buf.bytes()),
                    Op::Discard { sector, sectors } | Op::WriteZeroes { sector, sectors } => {
                        model[bytes(sector, sectors)].fill(0)
                    }
                    Op::Flush => {}
                }
            }
        }
        prop_assert_eq!(engine.in_flight(), 0);
    }
    prop_assert_eq!(engine.injected(), injected);
    drop(engine);
    let on_disk = std::fs::read(&img.path).unwrap();
    prop_assert!(on_disk == model, "the image differs from the model");
    Ok(())
}

/// Every kind of fault fails exactly the requests the model says, with its errno, over
/// both engines; every other request succeeds and the data matches the model.
#[test]
fn faults_fail_exactly_the_chosen_requests() {
    for kind in KINDS {
        eprintln!("faults_fail_exactly_the_chosen_requests: engine={kind}");
        let mut runner = TestRunner::new(Config {
            cases: 48,
            ..Config::default()
        });
        runner
            .run(
                &(fault_spec(), prop::collection::vec(op(), 1..40)),
                |(spec, ops)| run_model(kind, spec, ops),
            )
            .unwrap();
    }
}

/// Submits one request with data in `buf` (reads and writes) and returns its result.
fn one(engine: &mut dyn Engine, op: IoOp, buf: &mut Buf, tag: u64) -> Result<u32, i32> {
    let iov = [buf.iovec()];
    let iovecs: &[libc::iovec] = match op {
        IoOp::Read { .. } | IoOp::Write { .. } => &iov,
        _ => &[],
    };
    // SAFETY: `buf` outlives the request, which is reaped before returning.
    unsafe { engine.submit(op, iovecs, tag).unwrap() };
    let done = reap_n(engine, 1);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].user_data, tag);
    done[0].result
}

/// The examples of the brief, one by one, over both engines; failed writes leave the
/// image untouched.
#[test]
fn each_example_spec_over_both_engines() {
    let w = |offset| IoOp::Write { offset };
    let r = |offset| IoOp::Read { offset };
    // (spec, requests, expected result of each)
    let cases: Vec<(&str, Vec<IoOp>, Vec<Outcome>)> = vec![
        (
            "eio@read",
            vec![w(0), r(0), r(4096), IoOp::Flush],
            vec![Ok(4096), Err(libc::EIO), Err(libc::EIO), Ok(0)],
        ),
        (
            "eio@write:after=2",
            vec![w(0), r(0), w(4096), w(8192), w(0), IoOp::Flush],
            vec![
                Ok(4096),
                Ok(4096),
                Ok(4096),
                Err(libc::EIO),
                Err(libc::EIO),
                Ok(0),
            ],
        ),
        (
            "eio@any:every=3",
            vec![w(0), r(0), IoOp::Flush, w(0), r(0), r(0)],
            vec![
                Ok(4096),
                Ok(4096),
                Err(libc::EIO),
                Ok(4096),
                Ok(4096),
                Err(libc::EIO),
            ],
        ),
        (
            "enospc@write",
            vec![w(0), r(0), IoOp::Flush],
            vec![Err(libc::ENOSPC), Ok(4096), Ok(0)],
        ),
        (
            "eio@flush",
            vec![w(0), IoOp::Flush, r(0), IoOp::Flush],
            vec![Ok(4096), Err(libc::EIO), Ok(4096), Err(libc::EIO)],
        ),
        (
            "eio@offset=8K-12K",
            vec![
                w(4096),
                w(8192),
                r(8192 - 512),
                r(12288),
                IoOp::Flush,
                IoOp::Discard {
                    offset: 0,
                    len: 8193,
                },
                IoOp::WriteZeroes {
                    offset: 12288,
                    len: 4096,
                    unmap: false,
                },
            ],
            vec![
                Ok(4096),
                Err(libc::EIO),
                Err(libc::EIO),
                Ok(4096),
                Ok(0),
                Err(libc::EIO),
                Ok(0),
            ],
        ),
        (
            "eio@read:times=1+enospc@write:offset=0-4K",
            vec![r(0), r(0), w(0), w(4096)],
            vec![Err(libc::EIO), Ok(4096), Err(libc::ENOSPC), Ok(4096)],
        ),
    ];
    for kind in KINDS {
        for (text, ops, expected) in &cases {
            let img = image(64 << 10, RW);
            std::fs::write(&img.path, vec![0xee; 64 << 10]).unwrap();
            let spec: FaultSpec = text.parse().unwrap();
            let (engine, _) = img.disk.engine_with_faults(kind, 4, Some(&spec)).unwrap();
            let mut engine = engine;
            let mut model = vec![0xeeu8; 64 << 10];
            for (i, (op, want)) in ops.iter().zip(expected).enumerate() {
                let mut buf = Buf::filled(&pattern(i as u8, 4096), 0);
                let got = one(engine.as_mut(), *op, &mut buf, i as u64);
                assert_eq!(got, *want, "{kind} `{text}` request {i} {op:?}");
                match (*op, got) {
                    (IoOp::Write { offset }, Ok(_)) => {
                        model[offset as usize..offset as usize + 4096].copy_from_slice(buf.bytes())
                    }
                    (IoOp::Read { offset }, Ok(_)) => assert!(
                        buf.bytes() == &model[offset as usize..offset as usize + 4096],
                        "{kind} `{text}` request {i}: wrong data"
                    ),
                    (IoOp::WriteZeroes { offset, len, .. }, Ok(_)) => {
                        model[offset as usize..(offset + len) as usize].fill(0)
                    }
                    _ => {}
                }
            }
            drop(engine);
            assert!(
                std::fs::read(&img.path).unwrap() == model,
                "{kind} `{text}`: image differs"
            );
        }
    }
}

/// Over the sync engine, injected completions come back in submission order among the
/// others; the queue limit counts them, and a refused submission is not counted.
#[test]
fn injected_completions_keep_order_and_count_against_the_depth() {
    let img = image(64 << 10, RW);
    let inner = img.disk.engine(EngineKind::Sync, 6).unwrap();
    let mut engine = with_faults(inner, Some(&"eio@any:every=2".parse().unwrap()));
    let mut bufs: Vec<Buf> = (0..7).map(|i| Buf::filled(&pattern(i, 512), 0)).collect();
    for (i, buf) in bufs.iter_mut().enumerate().take(6) {
        // SAFETY: `bufs` outlives the requests, which are reaped below.
        unsafe {
            engine
                .submit(
                    IoOp::Write {
                        offset: 512 * i as u64,
                    },
                    &[buf.iovec()],
                    i as u64,
                )
                .unwrap()
        };
    }
    assert_eq!(engine.in_flight(), 6);
    let iov = [bufs[6].iovec()];
    // SAFETY: as above; refused, so never used.
    let full = unsafe { engine.submit(IoOp::Write { offset: 0 }, &iov, 6) };
    assert!(
        matches!(full, Err(Error::QueueFull { capacity: 6 })),
        "{full:?}"
    );
    let done = reap_n(engine.as_mut(), 6);
    let got: Vec<(u64, Result<u32, i32>)> = done.iter().map(|c| (c.user_data, c.result)).collect();
    let want: Vec<(u64, Result<u32, i32>)> = (0..6)
        .map(|i| (i, if i % 2 == 1 { Err(libc::EIO) } else { Ok(512) }))
        .collect();
    assert_eq!(got, want);
    assert_eq!(engine.in_flight(), 0);
    // The refused request was not counted: the 7th counted request is the next one, odd.
    let mut buf = Buf::new(512, 0);
    assert_eq!(
        one(engine.as_mut(), IoOp::Read { offset: 0 }, &mut buf, 7),
        Ok(512)
    );
    assert_eq!(
        one(engine.as_mut(), IoOp::Read { offset: 0 }, &mut buf, 8),
        Err(libc::EIO)
    );
}

/// An epoll loop that sleeps on `completion_fd`, drains it and reaps sees injected
/// completions, alone and mixed with real ones, and is not woken once all were reaped.
#[test]
fn epoll_on_completion_fd_sees_injected_completions() {
    let img = image(64 << 10, RW);
    let inner = img.disk.engine(EngineKind::IoUring, 8).unwrap();
    let mut engine = FaultEngine::new(inner, "eio@read:offset=0-4K".parse().unwrap());
    let fd = engine
        .completion_fd()
        .expect("io_uring has a completion fd");
    // SAFETY: epoll_create1 takes no pointers.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epfd >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 1,
    };
    // SAFETY: `ev` is a valid epoll_event for the call.
    let ret = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(ret, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    let wait = |timeout_ms: i32| {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `out` holds 4 events.
        unsafe { libc::epoll_wait(epfd, out.as_mut_ptr(), 4, timeout_ms) }
    };
    let epoll_loop = |engine: &mut FaultEngine, n: usize| {
        let mut done = Vec::new();
        while done.len() < n {
            assert_eq!(
                wait(5000),
                1,
                "epoll did not wake with {} of {n} reaped",
                done.len()
            );
            engine.drain_completion_fd();
            engine.reap(&mut done);
        }
        done
    };
    assert_eq!(wait(0), 0);

    // Only an injected completion.
    let mut a = Buf::new(4096, 0);
    // SAFETY: `a` outlives the request, reaped by the loop.
    unsafe {
        engine
            .submit(IoOp::Read { offset: 0 }, &[a.iovec()], 1)
            .unwrap()
    };
    engine.flush_submissions().unwrap();
    let done = epoll_loop(&mut engine, 1);
    assert_eq!((done[0].user_data, done[0].result), (1, Err(libc::EIO)));
    assert_eq!(wait(0), 0, "woken with nothing to reap");

    // Mixed with real ones, submitted around it.
    let mut w = Buf::filled(&pattern(3, 4096), 0);
    let mut b = Buf::new(4096, 0);
    let mut c = Buf::new(4096, 0);
    // SAFETY: the buffers outlive the requests, reaped by the loop.
    unsafe {
        engine
            .submit(IoOp::Write { offset: 8192 }, &[w.iovec()], 2)
            .unwrap();
        engine.flush_submissions().unwrap();
        engine
            .submit(IoOp::Read { offset: 2048 }, &[b.iovec()], 3)
            .unwrap();
        engine
            .submit(IoOp::Read { offset: 4096 }, &[c.iovec()], 4)
            .unwrap();
    }
    engine.flush_submissions().unwrap();
    let mut done = epoll_loop(&mut engine, 3);
    done.sort_by_key(|c| c.user_data);
    let got: Vec<_> = done.iter().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(got, vec![(2, Ok(4096)), (3, Err(libc::EIO)), (4, Ok(4096))]);
    assert_eq!(engine.in_flight(), 0);
    assert_eq!(engine.injected(), 2);
    drop(engine);
    // SAFETY: closes the epoll descriptor this test created.
    unsafe { libc::close(epfd) };
}

/// A full queue of writes to distinct blocks, every third failing: exactly those fail,
/// the image has the others' data and the old data where they failed.
#[test]
fn injected_failures_among_many_in_flight() {
    const BLOCKS: usize = 16;
    for kind in KINDS {
        let img = image((BLOCKS * 4096) as u64, RW);
        std::fs::write(&img.path, vec![0xee; BLOCKS * 4096]).unwrap();
        let spec = "eio@write:every=3".parse().unwrap();
        let (mut engine, _) = img
            .disk
            .engine_with_faults(kind, BLOCKS, Some(&spec))
            .unwrap();
        let mut bufs: Vec<Buf> = (0..BLOCKS)
            .map(|i| Buf::filled(&pattern(i as u8, 4096), 0))
            .collect();
        for (i, buf) in bufs.iter_mut().enumerate() {
            let op = IoOp::Write {
                offset: (i * 4096) as u64,
            };
            // SAFETY: `bufs` outlives the requests, reaped below.
            unsafe { engine.submit(op, &[buf.iovec()], i as u64).unwrap() };
        }
        let mut done = reap_n(engine.as_mut(), BLOCKS);
        assert_eq!(engine.in_flight(), 0);
        done.sort_by_key(|c| c.user_data);
        let mut model = vec![0xeeu8; BLOCKS * 4096];
        for (i, c) in done.iter().enumerate() {
            assert_eq!(c.user_data, i as u64);
            if i % 3 == 2 {
                assert_eq!(c.result, Err(libc::EIO), "{kind}: write {i}");
            } else {
                assert_eq!(c.result, Ok(4096), "{kind}: write {i}");
                model[i * 4096..(i + 1) * 4096].copy_from_slice(bufs[i].bytes());
            }
        }
        drop(engine);
        assert!(
            std::fs::read(&img.path).unwrap() == model,
            "{kind}: image differs"
        );
    }
}
