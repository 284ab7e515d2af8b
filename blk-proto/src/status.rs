//! The request status byte (VIRTIO 1.x, 5.2.6 "Device Operation").

use core::fmt;

use virtqueue_core::{GuestMemory, MemoryError};

/// `VIRTIO_BLK_S_OK`: the request succeeded.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`: device or driver error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`: the request is not supported by the device.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The final `status` byte the device writes for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// [`VIRTIO_BLK_S_OK`].
    Ok = VIRTIO_BLK_S_OK,
    /// [`VIRTIO_BLK_S_IOERR`].
    IoErr = VIRTIO_BLK_S_IOERR,
    /// [`VIRTIO_BLK_S_UNSUPP`].
    Unsupp = VIRTIO_BLK_S_UNSUPP,
}

impl Status {
    /// The byte written into the request's status field.
    pub const fn raw(self) -> u8 {
        self as u8
    }

    /// Decodes a status byte (driver side); `None` for values this crate does not know.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            VIRTIO_BLK_S_OK => Some(Status::Ok),
            VIRTIO_BLK_S_IOERR => Some(Status::IoErr),
            VIRTIO_BLK_S_UNSUPP => Some(Status::Unsupp),
            _ => None,
        }
    }

    /// Writes this status as the single byte at `status_addr`.
    pub fn write_to<M: GuestMemory + ?Sized>(
        self,
        mem: &M,
        status_addr: u64,
    ) -> Result<(), MemoryError> {
        mem.write(status_addr, &[self.raw()])
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> Self {
        s.raw()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "VIRTIO_BLK_S_OK",
            Status::IoErr => "VIRTIO_BLK_S_IOERR",
            Status::Unsupp => "VIRTIO_BLK_S_UNSUPP",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_linux_headers() {
        use virtio_bindings::virtio_blk as b;
        assert_eq!(u32::from(VIRTIO_BLK_S_OK), b::VIRTIO_BLK_S_OK);
        assert_eq!(u32::from(VIRTIO_BLK_S_IOERR), b::VIRTIO_BLK_S_IOERR);
        assert_eq!(u32::from(VIRTIO_BLK_S_UNSUPP), b::VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn raw_round_trips() {
        for s in [Status::Ok, Status::IoErr, Status::Unsupp] {
            assert_eq!(Status::from_raw(s.raw()), Some(s));
        }
        assert_eq!(Status::from_raw(3), None);
    }
}
