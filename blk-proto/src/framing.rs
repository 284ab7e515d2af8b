//! How a request lies in its descriptor chain (VIRTIO 1.x, 2.6.4 "Message Framing",
//! 2.7.4.2 "Driver Requirements: The Virtqueue Descriptor Table").
//!
//! The chain is seen as two byte streams: the concatenation of its device-readable buffers
//! and the concatenation of its device-writable buffers. Buffer boundaries carry no meaning.

use virtqueue_core::{Descriptor, GuestMemory, MemoryError};

use crate::error::{ParseError, ParseErrorKind};
use crate::segment::DataSegment;

/// A chain checked for framing: readable part, writable part, status byte.
pub(crate) struct Framing<'a> {
    /// Descriptors up to the first non-empty writable one.
    pub(crate) readable: &'a [Descriptor],
    /// The rest (non-empty ones are all writable).
    pub(crate) writable: &'a [Descriptor],
    /// Bytes in the readable stream.
    pub(crate) readable_len: u64,
    /// Bytes in the writable stream, the status byte included.
    pub(crate) writable_len: u64,
    /// Guest address of the status byte: the last writable byte.
    pub(crate) status_addr: u64,
}

impl<'a> Framing<'a> {
    /// Splits `descs` and checks that every non-empty buffer lies in `mem`. Only
    /// `VIRTQ_DESC_F_WRITE` is consulted: indirect tables must already be resolved.
    pub(crate) fn new<M: GuestMemory + ?Sized>(
        mem: &M,
        descs: &'a [Descriptor],
    ) -> Result<Self, ParseError> {
        let non_empty = |d: &&Descriptor| d.len != 0;
        let status_addr = status_byte(mem, descs)?;
        let fail = |kind| ParseError::new(kind, Some(status_addr));
        let split = descs
            .iter()
            .position(|d| d.len != 0 && d.is_device_writable())
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(split);
        if writable
            .iter()
            .filter(non_empty)
            .any(|d| !d.is_device_writable())
        {
            return Err(fail(ParseErrorKind::ReadableAfterWritable));
        }
        if let Some(d) = descs
            .iter()
            .filter(non_empty)
            .find(|d| !mem.check_range(d.addr, u64::from(d.len)))
        {
            return Err(fail(ParseErrorKind::BufferNotInMemory {
                addr: d.addr,
                len: d.len,
            }));
        }
        Ok(Framing {
            readable,
            writable,
            readable_len: stream_len(readable),
            writable_len: stream_len(writable),
            status_addr,
        })
    }
}

/// The address of the last byte of the last non-empty writable buffer.
fn status_byte<M: GuestMemory + ?Sized>(mem: &M, descs: &[Descriptor]) -> Result<u64, ParseError> {
    let last = descs
        .iter()
        .rev()
        .find(|d| d.len != 0 && d.is_device_writable());
    let Some(last) = last else {
        return Err(ParseError::new(ParseErrorKind::NoStatusByte, None));
    };
    let addr = last.addr.checked_add(u64::from(last.len) - 1);
    match addr {
        Some(addr) if mem.check_range(addr, 1) => Ok(addr),
        _ => {
            let addr = last.addr.wrapping_add(u64::from(last.len) - 1);
            Err(ParseError::new(
                ParseErrorKind::StatusNotInMemory { addr },
                None,
            ))
        }
    }
}

fn stream_len(descs: &[Descriptor]) -> u64 {
    descs
        .iter()
        .fold(0u64, |sum, d| sum.saturating_add(u64::from(d.len)))
}

/// The guest buffers holding bytes `[start, end)` of the stream formed by `descs`, in order,
/// without empty pieces. The buffers must have passed the range check of [`Framing::new`].
pub(crate) fn pieces(
    descs: &[Descriptor],
    start: u64,
    end: u64,
) -> impl Iterator<Item = DataSegment> + '_ {
    let mut pos = 0u64;
    descs.iter().filter_map(move |d| {
        let d_start = pos;
        let d_end = pos.saturating_add(u64::from(d.len));
        pos = d_end;
        let lo = d_start.max(start);
        let hi = d_end.min(end);
        // hi - lo <= d.len, so it fits in u32; addr + (lo - d_start) stays inside the buffer.
        (lo < hi).then(|| DataSegment {
            addr: d.addr.wrapping_add(lo - d_start),
            len: (hi - lo) as u32,
        })
    })
}

/// Reads `buf.len()` bytes from `offset` of the stream formed by `descs`.
pub(crate) fn read_stream<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), MemoryError> {
    let short = MemoryError {
        addr: offset,
        len: buf.len() as u64,
    };
    let end = offset.checked_add(buf.len() as u64).ok_or(short)?;
    let mut filled = 0usize;
    for piece in pieces(descs, offset, end) {
        let next = filled.checked_add(piece.len as usize).ok_or(short)?;
        let dst = buf.get_mut(filled..next).ok_or(short)?;
        mem.read(piece.addr, dst)?;
        filled = next;
    }
    if filled == buf.len() {
        Ok(())
    } else {
        Err(short)
    }
}
