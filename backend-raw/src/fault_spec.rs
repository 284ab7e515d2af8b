//! Which requests a [`FaultEngine`](crate::FaultEngine) fails, parsed from a short string.
//!
//! Grammar (whitespace is not allowed; sizes take an optional binary `K`, `M`, `G` or `T`
//! suffix):
//!
//! ```text
//! spec      := rule ( '+' rule )*
//! rule      := errno '@' target ( ':' condition ( ',' condition )* )?
//!            | 'noflush'                     (every flush completes OK without syncing)
//! errno     := 'eio' | 'enospc' | 'edquot' | 'erofs' | 'eperm' | 'enomem' | 'ebadf'
//!            | 'einval' | 'etimedout' | a decimal errno in 1..=4095
//! target    := 'read' | 'write' | 'flush' | 'discard' | 'write-zeroes' | 'any'
//!            | 'offset=' range               (any request touching the range)
//! condition := 'after=' count                (the first `count` matches succeed)
//!            | 'every=' count                (then every `count`-th match fails, >= 1)
//!            | 'times=' count                (at most `count` failures in all)
//!            | 'offset=' range               (only requests touching the range match)
//! range     := size '-' size                 (bytes [start, end), start < end)
//! ```
//!
//! Each rule counts the requests it matches, on its own, per engine: with `after=A` and
//! `every=E` the matches numbered `A+E`, `A+2E`, ... fail (`every` defaults to 1: all after
//! the first `A`). A request fails with the errno of the first rule choosing it.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::IoOp;

/// Error names the grammar knows, with their numbers.
const ERRNO_NAMES: [(&str, i32); 9] = [
    ("eio", libc::EIO),
    ("enospc", libc::ENOSPC),
    ("edquot", libc::EDQUOT),
    ("erofs", libc::EROFS),
    ("eperm", libc::EPERM),
    ("enomem", libc::ENOMEM),
    ("ebadf", libc::EBADF),
    ("einval", libc::EINVAL),
    ("etimedout", libc::ETIMEDOUT),
];

/// Largest errno accepted as a number (Linux's `MAX_ERRNO`).
const MAX_ERRNO: i32 = 4095;

/// Which operations a [`FaultRule`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Every operation.
    Any,
    /// [`IoOp::Read`].
    Read,
    /// [`IoOp::Write`].
    Write,
    /// [`IoOp::Flush`].
    Flush,
    /// [`IoOp::Discard`].
    Discard,
    /// [`IoOp::WriteZeroes`].
    WriteZeroes,
}

const OP_NAMES: [(&str, FaultOp); 6] = [
    ("any", FaultOp::Any),
    ("read", FaultOp::Read),
    ("write", FaultOp::Write),
    ("flush", FaultOp::Flush),
    ("discard", FaultOp::Discard),
    ("write-zeroes", FaultOp::WriteZeroes),
];

impl FaultOp {
    /// The name used in specs: `any`, `read`, `write`, `flush`, `discard`, `write-zeroes`.
    pub fn name(self) -> &'static str {
        OP_NAMES
            .iter()
            .find(|(_, op)| *op == self)
            .map_or("any", |(name, _)| name)
    }

    /// Whether `op` is one of the operations this stands for.
    pub fn matches(self, op: IoOp) -> bool {
        matches!(
            (self, op),
            (FaultOp::Any, _)
                | (FaultOp::Read, IoOp::Read { .. })
                | (FaultOp::Write, IoOp::Write { .. })
                | (FaultOp::Flush, IoOp::Flush)
                | (FaultOp::Discard, IoOp::Discard { .. })
                | (FaultOp::WriteZeroes, IoOp::WriteZeroes { .. })
        )
    }
}

/// One rule of a [`FaultSpec`]: which requests it counts, which of those fail, and how.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaultRule {
    /// The positive errno the chosen requests complete with.
    pub errno: i32,
    /// The operations counted.
    pub op: FaultOp,
    /// When set, only requests whose bytes intersect this range are counted (flushes and
    /// zero-length requests never are).
    pub range: Option<Range<u64>>,
    /// How many counted requests succeed before the first failure.
    pub after: u64,
    /// After those, every `every`-th counted request fails (at least 1).
    pub every: u64,
    /// At most this many failures, when set.
    pub times: Option<u64>,
}

impl FaultRule {
    /// Whether the rule counts a request `op` moving `len` bytes (for reads and writes,
    /// the total of their iovecs; ignored for the other operations).
    pub fn counts(&self, op: IoOp, len: u64) -> bool {
        if !self.op.matches(op) {
            return false;
        }
        let Some(range) = &self.range else {
            return true;
        };
        let (offset, len) = match op {
            IoOp::Read { offset } | IoOp::Write { offset } => (offset, len),
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len, .. } => (offset, len),
            IoOp::Flush => return false,
        };
        len > 0 && offset < range.end && offset.saturating_add(len) > range.start
    }

    /// Whether the `nth` counted request (1-based) fails, `failed` failures having been
    /// injected by this rule so far.
    pub fn fires(&self, nth: u64, failed: u64) -> bool {
        nth > self.after
            && (nth - self.after) % self.every.max(1) == 0
            && self.times.is_none_or(|t| failed < t)
    }
}

/// Which requests to fail, and with which errno: a list of [`FaultRule`]s.
///
/// Parsed from the string grammar documented in the crate's README and shown by
/// `Display` in the same form.
///
/// ```
/// use backend_raw::{FaultOp, FaultSpec};
///
/// let spec: FaultSpec = "eio@write:after=100+enospc@offset=1M-2M".parse()?;
/// assert_eq!(spec.rules().len(), 2);
/// assert_eq!(spec.rules()[0].op, FaultOp::Write);
/// assert_eq!(spec.rules()[1].range, Some(1 << 20..2 << 20));
/// assert_eq!(spec.to_string(), "eio@write:after=100+enospc@offset=1048576-2097152");
///
/// let err = "eio@reed".parse::<FaultSpec>().unwrap_err();
/// assert!(err.to_string().contains("`reed`"), "{err}");
/// # Ok::<(), backend_raw::FaultSpecError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FaultSpec {
    rules: Vec<FaultRule>,
    /// Flushes complete OK without reaching the disk (`noflush`): a device that loses its
    /// write cache, for crash tests that must see it.
    drop_flush: bool,
}

impl FaultSpec {
    /// A spec of the given rules; `None` if there are none, or one has `every == 0`, an
    /// empty range, a range on flushes or an errno outside `1..=4095`.
    pub fn new(rules: Vec<FaultRule>) -> Option<FaultSpec> {
        let valid = |r: &FaultRule| {
            r.every > 0
                && (1..=MAX_ERRNO).contains(&r.errno)
                && r.range
                    .as_ref()
                    .is_none_or(|range| range.start < range.end && r.op != FaultOp::Flush)
        };
        (!rules.is_empty() && rules.iter().all(valid)).then_some(FaultSpec {
            rules,
            drop_flush: false,
        })
    }

    /// Whether flushes complete OK without reaching the disk (`noflush`).
    pub fn drops_flushes(&self) -> bool {
        self.drop_flush
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }
}

/// Why a fault spec string was refused; every message quotes the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// The spec or one of its `+`-separated rules is empty.
    #[error("empty fault rule in `{spec}`: expected ERRNO@TARGET, e.g. eio@read")]
    EmptyRule {
        /// The whole spec.
        spec: String,
    },
    /// A rule lacks the `@` between errno and target.
    #[error("fault rule `{rule}` has no `@`: expected ERRNO@TARGET, e.g. eio@read")]
    MissingAt {
        /// The rule.
        rule: String,
    },
    /// The errno is neither a known name nor a number in 1..=4095.
    #[error(
        "unknown error `{errno}` in fault rule `{rule}`: expected eio, enospc, edquot, erofs, \
         eperm, enomem, ebadf, einval, etimedout or a number in 1..=4095"
    )]
    UnknownErrno {
        /// The rule.
        rule: String,
        /// The errno part.
        errno: String,
    },
    /// The target is not an operation name or `offset=START-END`.
    #[error(
        "unknown target `{target}` in fault rule `{rule}`: expected read, write, flush, \
         discard, write-zeroes, any or offset=START-END"
    )]
    UnknownTarget {
        /// The rule.
        rule: String,
        /// The target part.
        target: String,
    },
    /// A condition is not `after=`, `every=`, `times=` or `offset=`.
    #[error(
        "unknown condition `{condition}` in fault rule `{rule}`: expected after=N, every=N, \
         times=N or offset=START-END"
    )]
    UnknownCondition {
        /// The rule.
        rule: String,
        /// The condition.
        condition: String,
    },
    /// A count or size is not a number (sizes may end in K, M, G or T).
    #[error("invalid number `{value}` in fault rule `{rule}`")]
    BadNumber {
        /// The rule.
        rule: String,
        /// The text that should have been a number.
        value: String,
    },
    /// `every=0`.
    #[error("`every=0` in fault rule `{rule}`: every must be at least 1")]
    ZeroEvery {
        /// The rule.
        rule: String,
    },
    /// A range that is not `START-END` with START < END.
    #[error(
        "invalid range `{range}` in fault rule `{rule}`: expected START-END in bytes with \
         START < END (e.g. 1M-2M)"
    )]
    BadRange {
        /// The rule.
        rule: String,
        /// The range text.
        range: String,
    },
    /// A byte range on flushes, which have none.
    #[error("fault rule `{rule}` puts a byte range on flush, which has none")]
    RangeOnFlush {
        /// The rule.
        rule: String,
    },
    /// The same condition twice, or `offset=` both as target and condition.
    #[error("`{condition}` given twice in fault rule `{rule}`")]
    Repeated {
        /// The rule.
        rule: String,
        /// The repeated condition's name.
        condition: String,
    },
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let drop_flush = spec.split('+').any(|rule| rule == "noflush");
        let rules = spec
            .split('+')
            .filter(|rule| *rule != "noflush")
            .map(|rule| match rule {
                "" => Err(FaultSpecError::EmptyRule {
                    spec: spec.to_string(),
                }),
                rule => parse_rule(rule),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FaultSpec { rules, drop_flush })
    }
}

fn parse_rule(rule: &str) -> Result<FaultRule, FaultSpecError> {
    let owned = || rule.to_string();
    let (errno, rest) = rule
        .split_once('@')
        .ok_or_else(|| FaultSpecError::MissingAt { rule: owned() })?;
    let errno = parse_errno(errno).ok_or_else(|| FaultSpecError::UnknownErrno {
        rule: owned(),
        errno: errno.to_string(),
    })?;
    let (target, conditions) = match rest.split_once(':') {
        Some((target, conditions)) => (target, Some(conditions)),
        None => (rest, None),
    };
    let mut parsed = FaultRule {
        errno,
        op: FaultOp::Any,
        range: None,
        after: 0,
        every: 1,
        times: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    match OP_NAMES.iter().find(|(name, _)| *name == target) {
        Some((_, op)) => parsed.op = *op,
        None if target.starts_with("offset=") => apply_condition(rule, target, &mut parsed)?,
        None => {
            return Err(FaultSpecError::UnknownTarget {
                rule: owned(),
                target: target.to_string(),
            })
        }
    }
    if target.starts_with("offset=") {
        seen.push("offset");
    }
    for condition in conditions.into_iter().flat_map(|c| c.split(',')) {
        let name = condition.split_once('=').map_or(condition, |(n, _)| n);
        if seen.contains(&name) {
            return Err(FaultSpecError::Repeated {
                rule: owned(),
                condition: name.to_string(),
            });
        }
        apply_condition(rule, condition, &mut parsed)?;
        seen.push(name);
    }
    if parsed.op == FaultOp::Flush && parsed.range.is_some() {
        return Err(FaultSpecError::RangeOnFlush { rule: owned() });
    }
    Ok(parsed)
}

fn apply_condition(rule: &str, condition: &str, out: &mut FaultRule) -> Result<(), FaultSpecError> {
    let unknown = || FaultSpecError::UnknownCondition {
        rule: rule.to_string(),
        condition: condition.to_string(),
    };
    let (name, value) = condition.split_once('=').ok_or_else(unknown)?;
    let number = |value: &str| {
        parse_size(value).ok_or_else(|| FaultSpecError::BadNumber {
            rule: rule.to_string(),
            value: value.to_string(),
        })
    };
    match name {
        "after" => out.after = number(value)?,
        "every" => {
            out.every = number(value)?;
            if out.every == 0 {
                return Err(FaultSpecError::ZeroEvery {
                    rule: rule.to_string(),
                });
            }
        }
        "times" => out.times = Some(number(value)?),
        "offset" => out.range = Some(parse_range(rule, value)?),
        _ => return Err(unknown()),
    }
    Ok(())
}

fn parse_range(rule: &str, text: &str) -> Result<Range<u64>, FaultSpecError> {
    let bad = || FaultSpecError::BadRange {
        rule: rule.to_string(),
        range: text.to_string(),
    };
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    match (parse_size(start), parse_size(end)) {
        (Some(start), Some(end)) if start < end => Ok(start..end),
        _ => Err(bad()),
    }
}

fn parse_errno(text: &str) -> Option<i32> {
    match ERRNO_NAMES.iter().find(|(name, _)| *name == text) {
        Some((_, errno)) => Some(*errno),
        None if text.bytes().all(|b| b.is_ascii_digit()) => text
            .parse::<i32>()
            .ok()
            .filter(|e| (1..=MAX_ERRNO).contains(e)),
        None => None,
    }
}

/// A decimal number with an optional binary suffix (`K`, `M`, `G`, `T`).
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        b'T' | b't' => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ERRNO_NAMES.iter().find(|(_, e)| *e == self.errno) {
            Some((name, _)) => f.write_str(name)?,
            None => write!(f, "{}", self.errno)?,
        }
        let mut sep = ':';
        let mut condition = |f: &mut fmt::Formatter<'_>, text: fmt::Arguments<'_>| {
            let s = sep;
            sep = ',';
            write!(f, "{s}{text}")
        };
        match (&self.range, self.op) {
            (Some(r), FaultOp::Any) => write!(f, "@offset={}-{}", r.start, r.end)?,
            (range, op) => {
                write!(f, "@{}", op.name())?;
                if let Some(r) = range {
                    condition(f, format_args!("offset={}-{}", r.start, r.end))?;
                }
            }
        }
        if self.after > 0 {
            condition(f, format_args!("after={}", self.after))?;
        }
        if self.every != 1 {
            condition(f, format_args!("every={}", self.every))?;
        }
        if let Some(times) = self.times {
            condition(f, format_args!("times={times}"))?;
        }
        Ok(())
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{rule}")?;
        }
        if self.drop_flush {
            let sep = if self.rules.is_empty() { "" } else { "+" };
            write!(f, "{sep}noflush")?;
        }
        Ok(())
    }
}
