//! Test outcomes: the reason of a failure (or of a skip) as a fixed-size string (no
//! allocation), and the `TEST <name> PASS|FAIL <why>|SKIP <why>` lines.

use core::fmt::{self, Write};

/// Bytes of a failure reason kept (the rest is cut); small enough for `Result<_, Why>` to
/// stay cheap to return.
const WHY_BYTES: usize = 120;

/// Why a test failed, or why it did not run (a skip), formatted into a fixed buffer
/// (truncated if long).
pub struct Why {
    buf: [u8; WHY_BYTES],
    len: u8,
    /// The test did not run: the device lacks what it tests. Not a failure, not a pass.
    skipped: bool,
}

impl Why {
    /// Formats `args`.
    pub fn new(args: fmt::Arguments<'_>) -> Self {
        let mut w = Why {
            buf: [0; WHY_BYTES],
            len: 0,
            skipped: false,
        };
        // Truncation is the only failure, and a truncated reason is still useful.
        let _ = w.write_fmt(args);
        w
    }

    /// A test that did not run, for the reason `args`.
    pub fn skip(args: fmt::Arguments<'_>) -> Self {
        Why {
            skipped: true,
            ..Why::new(args)
        }
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        let bytes = self.buf.get(..usize::from(self.len)).unwrap_or(&[]);
        core::str::from_utf8(bytes).unwrap_or("(unprintable reason)")
    }
}

impl Write for Why {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut tmp = [0u8; 4];
            let enc = c.encode_utf8(&mut tmp).as_bytes();
            let start = usize::from(self.len);
            let end = start + enc.len();
            let dst = self.buf.get_mut(start..end).ok_or(fmt::Error)?;
            dst.copy_from_slice(enc);
            self.len = end as u8;
        }
        Ok(())
    }
}

impl fmt::Debug for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<E: fmt::Display> From<E> for Why
where
    E: core::error::Error,
{
    fn from(e: E) -> Self {
        Why::new(format_args!("{e}"))
    }
}

/// Returns early from a test with a formatted reason.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::app::check::report::Why::new(format_args!($($arg)*)))
    };
}
pub(crate) use fail;

/// Returns early from a test that cannot run here (the device lacks the feature it tests):
/// it prints `SKIP`, which counts neither as a pass nor as a failure.
macro_rules! skip {
    ($($arg:tt)*) => {
        return Err($crate::app::check::report::Why::skip(format_args!($($arg)*)))
    };
}
pub(crate) use skip;

/// Counts of finished tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Tests that passed.
    pub passed: u32,
    /// Tests that failed.
    pub failed: u32,
    /// Tests that did not run (`SKIP`).
    pub skipped: u32,
}

impl Tally {
    /// Prints the outcome line of test `name` and counts it.
    pub fn record(&mut self, name: &str, outcome: Result<(), Why>) {
        match outcome {
            Ok(()) => {
                self.passed += 1;
                crate::println!("TEST {name} PASS");
            }
            Err(why) if why.skipped => {
                self.skipped += 1;
                crate::println!("TEST {name} SKIP {}", why.as_str());
            }
            Err(why) => {
                self.failed += 1;
                crate::println!("TEST {name} FAIL {}", why.as_str());
            }
        }
    }
}
