//! The device ID string returned by `VIRTIO_BLK_T_GET_ID` (VIRTIO 1.x, 5.2.6 "Device Operation"):
//! NUL-padded ASCII, up to 20 bytes, no terminator when all 20 are used.

use core::fmt;

/// Length of the device ID string buffer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Device side: the 20 bytes to return for ID `id` (truncated to 20 bytes, NUL-padded).
pub fn encode_id(id: &[u8]) -> [u8; VIRTIO_BLK_ID_BYTES] {
    let mut out = [0; VIRTIO_BLK_ID_BYTES];
    for (o, b) in out.iter_mut().zip(id) {
        *o = *b;
    }
    out
}

/// A `GET_ID` response that is not a NUL-padded ASCII string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// The response is not [`VIRTIO_BLK_ID_BYTES`] long.
    WrongLength {
        /// Length received.
        len: usize,
    },
    /// A byte before the padding is not printable ASCII.
    NotAscii {
        /// Position of the byte.
        at: usize,
    },
    /// A non-NUL byte follows the first NUL.
    BadPadding {
        /// Position of the byte.
        at: usize,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::WrongLength { len } => write!(
                f,
                "device ID is {len} bytes, expected {VIRTIO_BLK_ID_BYTES}"
            ),
            IdError::NotAscii { at } => write!(f, "device ID byte {at} is not printable ASCII"),
            IdError::BadPadding { at } => {
                write!(f, "device ID byte {at} follows a NUL but is not NUL")
            }
        }
    }
}

impl core::error::Error for IdError {}

/// Driver side: checks a 20-byte `GET_ID` response and returns the ID without its padding.
pub fn check_id_response(response: &[u8]) -> Result<&[u8], IdError> {
    if response.len() != VIRTIO_BLK_ID_BYTES {
        return Err(IdError::WrongLength {
            len: response.len(),
        });
    }
    let end = response
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(response.len());
    let (id, padding) = response.split_at(end);
    if let Some(at) = id
        .iter()
        .position(|b| !(b.is_ascii_graphic() || *b == b' '))
    {
        return Err(IdError::NotAscii { at });
    }
    if let Some(at) = padding.iter().position(|&b| b != 0) {
        return Err(IdError::BadPadding { at: end + at });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(check_id_response(&encode_id(b"disk0")), Ok(&b"disk0"[..]));
        let full = encode_id(b"abcdefghijklmnopqrstuvwxyz");
        assert_eq!(check_id_response(&full), Ok(&b"abcdefghijklmnopqrst"[..]));
        assert_eq!(check_id_response(&encode_id(b"")), Ok(&b""[..]));
    }

    #[test]
    fn rejects_bad_responses() {
        assert_eq!(
            check_id_response(&[0; 19]),
            Err(IdError::WrongLength { len: 19 })
        );
        let mut r = encode_id(b"ab");
        r[5] = b'x';
        assert_eq!(check_id_response(&r), Err(IdError::BadPadding { at: 5 }));
        let r = encode_id(b"a\x01");
        assert_eq!(check_id_response(&r), Err(IdError::NotAscii { at: 1 }));
    }

    #[test]
    fn matches_linux_headers() {
        assert_eq!(
            VIRTIO_BLK_ID_BYTES as u32,
            virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES
        );
    }
}
