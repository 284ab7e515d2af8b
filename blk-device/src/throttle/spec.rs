//! The limits grammar shared by `--disk` and `--throttle-group`: `iops`, `iops-rd`,
//! `iops-wr` (operations a second), `bw`, `bw-rd`, `bw-wr` (bytes a second, with K, M or G
//! suffixes of 1024), `iops-burst` (operations) and `bw-burst` (bytes) that a bucket may hold.

/// A rejected limit. The message names the key and the fix; the option prefixes itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// Not a positive number (with an optional suffix for byte values).
    #[error("{0}={1} is invalid: give a positive whole number{2}")]
    Value(&'static str, String, &'static str),
    /// A total and a per-direction limit of one kind together.
    #[error("{0} cannot be given with {0}-rd or {0}-wr: limit the total or each direction")]
    TotalAndDirection(&'static str),
    /// A burst without a rate to refill it.
    #[error("{0}-burst needs a rate: add {0}=, {0}-rd= or {0}-wr=")]
    BurstWithoutRate(&'static str),
}

/// The limits of one disk or group; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Operations a second, both directions.
    pub iops: Option<u64>,
    /// Read operations a second.
    pub iops_rd: Option<u64>,
    /// Write operations a second (writes, discards, write-zeroes).
    pub iops_wr: Option<u64>,
    /// Bytes a second, both directions.
    pub bw: Option<u64>,
    /// Bytes read a second.
    pub bw_rd: Option<u64>,
    /// Bytes written a second.
    pub bw_wr: Option<u64>,
    /// Operations an ops bucket may hold (default: 20 ms of its rate).
    pub iops_burst: Option<u64>,
    /// Bytes a bytes bucket may hold (default: 20 ms of its rate).
    pub bw_burst: Option<u64>,
}

/// Parses `N`, `NK`, `NM` or `NG` (powers of 1024); `None` for anything else or overflow.
pub fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (v.get(..i)?, 10),
        (i, 'm' | 'M') => (v.get(..i)?, 20),
        (i, 'g' | 'G') => (v.get(..i)?, 30),
        _ => (v, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

impl Limits {
    /// The keys this grammar knows.
    pub const KEYS: [&'static str; 8] = [
        "iops",
        "iops-rd",
        "iops-wr",
        "bw",
        "bw-rd",
        "bw-wr",
        "iops-burst",
        "bw-burst",
    ];

    /// Takes `key=value` if `key` is a limit; `Ok(false)` when it is not one.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, LimitsError> {
        let (slot, name, bytes) = match key {
            "iops" => (&mut self.iops, "iops", false),
            "iops-rd" => (&mut self.iops_rd, "iops-rd", false),
            "iops-wr" => (&mut self.iops_wr, "iops-wr", false),
            "iops-burst" => (&mut self.iops_burst, "iops-burst", false),
            "bw" => (&mut self.bw, "bw", true),
            "bw-rd" => (&mut self.bw_rd, "bw-rd", true),
            "bw-wr" => (&mut self.bw_wr, "bw-wr", true),
            "bw-burst" => (&mut self.bw_burst, "bw-burst", true),
            _ => return Ok(false),
        };
        let n = if bytes {
            parse_size(value)
        } else {
            value.parse().ok()
        };
        let suffix = if bytes { " of bytes, e.g. 20M" } else { "" };
        *slot = Some(
            n.filter(|&n| n > 0)
                .ok_or_else(|| LimitsError::Value(name, value.to_string(), suffix))?,
        );
        Ok(true)
    }

    /// Checks the combination: no total with a per-direction limit of the same kind (as QEMU
    /// refuses), no burst without a rate.
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.iops.is_some() && (self.iops_rd.is_some() || self.iops_wr.is_some()) {
            return Err(LimitsError::TotalAndDirection("iops"));
        }
        if self.bw.is_some() && (self.bw_rd.is_some() || self.bw_wr.is_some()) {
            return Err(LimitsError::TotalAndDirection("bw"));
        }
        if self.iops_burst.is_some() && [self.iops, self.iops_rd, self.iops_wr] == [None; 3] {
            return Err(LimitsError::BurstWithoutRate("iops"));
        }
        if self.bw_burst.is_some() && [self.bw, self.bw_rd, self.bw_wr] == [None; 3] {
            return Err(LimitsError::BurstWithoutRate("bw"));
        }
        Ok(())
    }

    /// No rate at all.
    pub fn is_unlimited(&self) -> bool {
        [
            self.iops,
            self.iops_rd,
            self.iops_wr,
            self.bw,
            self.bw_rd,
            self.bw_wr,
        ] == [None; 6]
    }
}

/// A rejected `--throttle-group`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupSpecError {
    /// A limit that does not parse or does not fit.
    #[error("--throttle-group {0}")]
    Limit(#[from] LimitsError),
    /// An item without `=`.
    #[error("--throttle-group item '{0}' is not key=value: write e.g. --throttle-group name=g1,iops=4000")]
    Syntax(String),
    /// A key neither `name` nor a limit.
    #[error("--throttle-group has unknown key '{0}': use name, iops, iops-rd, iops-wr, bw, bw-rd, bw-wr, iops-burst or bw-burst")]
    UnknownKey(String),
    /// No `name=`.
    #[error("--throttle-group '{0}' has no name: add name=G and use group=G in --disk")]
    NoName(String),
    /// No rate.
    #[error("--throttle-group '{0}' sets no limit: add iops=, bw= or a per-direction one")]
    NoLimit(String),
}

/// One `--throttle-group name=G,...` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// The name disks refer to with `group=`.
    pub name: String,
    /// The limits the members share.
    pub limits: Limits,
}

impl std::str::FromStr for GroupSpec {
    type Err = GroupSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut name = None;
        let mut limits = Limits::default();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| GroupSpecError::Syntax(item.to_string()))?;
            if k == "name" {
                name = Some(v.to_string()).filter(|n| !n.is_empty());
            } else if !limits.set(k, v)? {
                return Err(GroupSpecError::UnknownKey(k.to_string()));
            }
        }
        let name = name.ok_or_else(|| GroupSpecError::NoName(s.to_string()))?;
        limits.check()?;
        if limits.is_unlimited() {
            return Err(GroupSpecError::NoLimit(s.to_string()));
        }
        Ok(GroupSpec { name, limits })
    }
}
