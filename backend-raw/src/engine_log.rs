//! A write log in the spirit of Linux's dm-log-writes: an engine wrapper that appends every
//! write, zeroing and flush the disk performed to a log file, so that a crash test can rebuild
//! the images a disk with a volatile write cache could hold after a power cut.
//!
//! Records are appended when a request completes successfully (a write the guest was told
//! about is in the log), except a flush, which leaves a `FlushBegin` when it is submitted and a
//! `FlushDone` when it completes: a flush makes durable what completed before it was submitted
//! (VIRTIO 1.x, 5.2.6.1), so the writes logged before its `FlushBegin` are the ones it covers.
//! [`rebuild_image`] keeps everything up to the `FlushBegin` of the last completed flush and any
//! subset of what came after. One [`WriteLog`] is shared by every engine of a disk; each record
//! is one `write(2)` under its lock, so a process killed with SIGKILL leaves whole records in
//! the page cache (a torn last record is ignored by [`parse_log`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{bounce, Completion, Engine, EngineKind, Error, IoOp};

const WRITE: u8 = b'W';
const ZERO: u8 = b'Z';
const FLUSH_BEGIN: u8 = b'B';
const FLUSH_DONE: u8 = b'S';

/// One entry of a write log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// `data` was written at byte `offset`.
    Write {
        /// Byte offset on the disk.
        offset: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// `len` bytes at `offset` were zeroed (write-zeroes) or discarded (reads back as zeros
    /// on this backend: it punches holes).
    Zero {
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Flush number `id` was submitted.
    FlushBegin(u64),
    /// Flush number `id` completed: what was logged before its `FlushBegin` is durable.
    FlushDone(u64),
}

/// The log file of one disk, shared by its engines.
#[derive(Debug)]
pub struct WriteLog {
    file: Mutex<File>,
    flushes: AtomicU64,
}

impl WriteLog {
    /// Creates (or truncates) the log at `path`.
    pub fn create(path: &Path) -> std::io::Result<Arc<WriteLog>> {
        Ok(Arc::new(WriteLog {
            file: Mutex::new(File::create(path)?),
            flushes: AtomicU64::new(0),
        }))
    }

    fn append(&self, record: &[u8]) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // A failed append makes the log say less than happened, which a crash check turns
        // into a reported loss rather than a silent pass.
        let _ = file.write_all(record);
    }

    fn append_header(&self, kind: u8, a: u64, b: u64, data: &[u8]) {
        let mut rec = Vec::with_capacity(17 + data.len());
        rec.push(kind);
        rec.extend_from_slice(&a.to_le_bytes());
        rec.extend_from_slice(&b.to_le_bytes());
        rec.extend_from_slice(data);
        self.append(&rec);
    }
}

/// Parses a log; a record cut short at the end (the process was killed while appending it) is
/// left out.
///
/// ```
/// use backend_raw::{parse_log, LogRecord};
/// let mut log = vec![b'B'];
/// log.extend_from_slice(&1u64.to_le_bytes());
/// log.extend_from_slice(&0u64.to_le_bytes());
/// log.push(b'W'); // cut short
/// assert_eq!(parse_log(&log), vec![LogRecord::FlushBegin(1)]);
/// ```
pub fn parse_log(bytes: &[u8]) -> Vec<LogRecord> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some((&kind, tail)) = rest.split_first() {
        let (Some(a), Some(b)) = (word(tail, 0), word(tail, 8)) else {
            break;
        };
        let body = tail.get(16..).unwrap_or(&[]);
        let (record, used) = match kind {
            WRITE => {
                let Some(data) = usize::try_from(b).ok().and_then(|n| body.get(..n)) else {
                    break;
                };
                let record = LogRecord::Write {
                    offset: a,
                    data: data.to_vec(),
                };
                (record, data.len())
            }
            ZERO => (LogRecord::Zero { offset: a, len: b }, 0),
            FLUSH_BEGIN => (LogRecord::FlushBegin(a), 0),
            FLUSH_DONE => (LogRecord::FlushDone(a), 0),
            _ => break,
        };
        out.push(record);
        rest = body.get(used..).unwrap_or(&[]);
    }
    out
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The index in `records` before which everything is durable: the `FlushBegin` of the last
/// completed flush, or 0 when no flush completed.
pub fn durable_prefix(records: &[LogRecord]) -> usize {
    let last_done = records.iter().rev().find_map(|r| match r {
        LogRecord::FlushDone(id) => Some(*id),
        _ => None,
    });
    let Some(id) = last_done else {
        return 0;
    };
    records
        .iter()
        .position(|r| *r == LogRecord::FlushBegin(id))
        .unwrap_or(0)
}

/// Applies `records` to `image` as a disk with a volatile write cache may hold them after a
/// power cut: every write and zeroing before [`durable_prefix`], and of those after it the
/// ones `keep` chooses (given their index), in log order.
pub fn rebuild_image(image: &mut [u8], records: &[LogRecord], mut keep: impl FnMut(usize) -> bool) {
    let durable = durable_prefix(records);
    for (i, r) in records.iter().enumerate() {
        if i >= durable && !keep(i) {
            continue;
        }
        match r {
            LogRecord::Write { offset, data } => {
                let Ok(at) = usize::try_from(*offset) else {
                    continue;
                };
                if let Some(dst) = image.get_mut(at..at.saturating_add(data.len())) {
                    dst.copy_from_slice(data);
                }
            }
            LogRecord::Zero { offset, len } => {
                let (Ok(at), Ok(n)) = (usize::try_from(*offset), usize::try_from(*len)) else {
                    continue;
                };
                let end = at.saturating_add(n).min(image.len());
                if let Some(dst) = image.get_mut(at.min(end)..end) {
                    dst.fill(0);
                }
            }
            LogRecord::FlushBegin(_) | LogRecord::FlushDone(_) => {}
        }
    }
}

/// What a request in flight will log when it completes.
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    Flush(u64),
}

/// Wraps an [`Engine`] and logs what it performs to a [`WriteLog`].
pub struct LogEngine {
    inner: Box<dyn Engine>,
    log: Arc<WriteLog>,
    pending: HashMap<u64, Pending>,
}

impl LogEngine {
    /// Wraps `inner`, logging to `log`.
    pub fn new(inner: Box<dyn Engine>, log: Arc<WriteLog>) -> LogEngine {
        LogEngine {
            inner,
            log,
            pending: HashMap::new(),
        }
    }

    fn completed(&mut self, c: &Completion) {
        let Some(p) = self.pending.remove(&c.user_data) else {
            return;
        };
        if c.result.is_err() {
            return;
        }
        match p {
            Pending::Write { offset, data } => {
                self.log
                    .append_header(WRITE, offset, data.len() as u64, &data)
            }
            Pending::Zero { offset, len } => self.log.append_header(ZERO, offset, len, &[]),
            Pending::Flush(id) => self.log.append_header(FLUSH_DONE, id, 0, &[]),
        }
    }
}

impl Engine for LogEngine {
    unsafe fn submit(
        &mut self,
        op: IoOp,
        iovecs: &[libc::iovec],
        user_data: u64,
    ) -> Result<(), Error> {
        let pending = match op {
            IoOp::Read { .. } => None,
            IoOp::Write { offset } => {
                let len: usize = iovecs.iter().map(|v| v.iov_len).sum();
                let mut data = vec![0u8; len];
                // SAFETY: the caller keeps the iovecs readable until the completion (the
                // contract of `submit`); this copies them now, as the engine will write them.
                unsafe { bounce::gather(iovecs, 0, &mut data) };
                Some(Pending::Write { offset, data })
            }
            IoOp::Discard { offset, len } | IoOp::WriteZeroes { offset, len, .. } => {
                Some(Pending::Zero { offset, len })
            }
            IoOp::Flush => {
                let id = self.log.flushes.fetch_add(1, Ordering::Relaxed) + 1;
                self.log.append_header(FLUSH_BEGIN, id, 0, &[]);
                Some(Pending::Flush(id))
            }
        };
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.submit(op, iovecs, user_data)? };
        if let Some(p) = pending {
            self.pending.insert(user_data, p);
        }
        Ok(())
    }

    fn flush_submissions(&mut self) -> Result<(), Error> {
        self.inner.flush_submissions()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        let n = self.inner.reap(out);
        for i in before..out.len() {
            if let Some(c) = out.get(i).copied() {
                self.completed(&c);
            }
        }
        n
    }

    fn wait(&mut self) -> Result<(), Error> {
        self.inner.wait()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.inner.completion_fd()
    }

    unsafe fn register_memory(&mut self, regions: &[libc::iovec]) -> Result<bool, Error> {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.register_memory(regions) }
    }

    fn drain_completion_fd(&self) {
        self.inner.drain_completion_fd();
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn capacity(&self) -> usize {
        self.inner.capacity()
    }

    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn spin_for_completions(&self) -> bool {
        self.inner.spin_for_completions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(offset: u64, byte: u8) -> LogRecord {
        LogRecord::Write {
            offset,
            data: vec![byte; 4],
        }
    }

    #[test]
    fn keeps_what_the_last_completed_flush_covers_and_chosen_later_writes() {
        let records = vec![
            w(0, 1),
            LogRecord::FlushBegin(1),
            w(4, 2),
            LogRecord::FlushDone(1),
            LogRecord::FlushBegin(2),
            w(8, 3),
        ];
        assert_eq!(durable_prefix(&records), 1);
        let mut img = vec![0u8; 12];
        rebuild_image(&mut img, &records, |_| false);
        assert_eq!(img, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut img = vec![0u8; 12];
        rebuild_image(&mut img, &records, |i| i == 5);
        assert_eq!(img, [1, 1, 1, 1, 0, 0, 0, 0, 3, 3, 3, 3]);
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let path = std::env::temp_dir().join(format!("wlog-{}", std::process::id()));
        let log = WriteLog::create(&path).unwrap();
        log.append_header(WRITE, 512, 3, &[7, 8, 9]);
        log.append_header(ZERO, 1024, 4096, &[]);
        log.append_header(FLUSH_BEGIN, 1, 0, &[]);
        log.append_header(FLUSH_DONE, 1, 0, &[]);
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let want = vec![
            LogRecord::Write {
                offset: 512,
                data: vec![7, 8, 9],
            },
            LogRecord::Zero {
                offset: 1024,
                len: 4096,
            },
            LogRecord::FlushBegin(1),
            LogRecord::FlushDone(1),
        ];
        assert_eq!(parse_log(&bytes), want);
        bytes.extend_from_slice(&[WRITE, 1, 2, 3]);
        assert_eq!(parse_log(&bytes), want, "torn record dropped");
    }
}
