//! Constants and wire formats of the NBD protocol (`doc/proto.md` of the NBD project):
//! the fixed newstyle handshake, option haggling, and transmission requests and simple
//! replies. All integers are big-endian on the wire.

/// `NBDMAGIC`, the first eight bytes a newstyle server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the server speaks newstyle; also the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: the server supports the fixed newstyle protocol.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server may omit the 124 zero bytes (unused with `NBD_OPT_GO`).
pub const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// `NBD_OPT_ABORT`: end the handshake without entering transmission.
pub const NBD_OPT_ABORT: u32 = 2;
/// `NBD_OPT_GO`: choose an export and enter transmission.
pub const NBD_OPT_GO: u32 = 7;

/// Option reply: the option is done.
pub const NBD_REP_ACK: u32 = 1;
/// Option reply: a piece of information about the export.
pub const NBD_REP_INFO: u32 = 3;
/// Bit set in every option error reply.
pub const NBD_REP_FLAG_ERROR: u32 = 1 << 31;

/// Information type: size and transmission flags.
pub const NBD_INFO_EXPORT: u16 = 0;
/// Information type: block size constraints.
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the other flags are valid.
pub const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const NBD_FLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: the server accepts `NBD_CMD_FLUSH`.
pub const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the server accepts `NBD_CMD_TRIM`.
pub const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: the server accepts `NBD_CMD_WRITE_ZEROES`.
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: several connections to this export see one consistent disk, and a
/// flush on one covers writes completed on all.
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Command: read.
pub const NBD_CMD_READ: u16 = 0;
/// Command: write.
pub const NBD_CMD_WRITE: u16 = 1;
/// Command: disconnect (no reply).
pub const NBD_CMD_DISC: u16 = 2;
/// Command: flush.
pub const NBD_CMD_FLUSH: u16 = 3;
/// Command: trim (discard).
pub const NBD_CMD_TRIM: u16 = 4;
/// Command: write zeroes.
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
/// Command flag of `NBD_CMD_WRITE_ZEROES`: do not punch a hole.
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Error value: the server is shutting down; the request may be sent again elsewhere.
pub const NBD_ESHUTDOWN: u32 = 108;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;

/// A transmission request header (section "Request message").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Matches the reply to the request.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl RequestHeader {
    /// The 28 bytes on the wire.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses 28 bytes; `None` on a wrong magic (for test servers).
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Option<RequestHeader> {
        (be32(&b[0..4]) == REQUEST_MAGIC).then(|| RequestHeader {
            flags: u16::from_be_bytes([b[4], b[5]]),
            kind: u16::from_be_bytes([b[6], b[7]]),
            cookie: be64(&b[8..16]),
            offset: be64(&b[16..24]),
            length: be32(&b[24..28]),
        })
    }
}

/// A simple reply header (section "Simple reply message").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0 on success, else an NBD error value.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// Parses 16 bytes; `None` on a wrong magic.
    pub fn decode(b: &[u8; SIMPLE_REPLY_LEN]) -> Option<SimpleReply> {
        (be32(&b[0..4]) == SIMPLE_REPLY_MAGIC).then(|| SimpleReply {
            error: be32(&b[4..8]),
            cookie: be64(&b[8..16]),
        })
    }

    /// The 16 bytes on the wire (for test servers).
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut b = [0u8; SIMPLE_REPLY_LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b
    }
}

/// A big-endian `u32` from the first four bytes of `b`.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A big-endian `u64` from the first eight bytes of `b`.
pub fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let h = RequestHeader {
            flags: NBD_CMD_FLAG_NO_HOLE,
            kind: NBD_CMD_WRITE_ZEROES,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512,
        };
        let b = h.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(RequestHeader::decode(&b), Some(h));
    }

    #[test]
    fn reply_with_bad_magic_is_refused() {
        let mut b = SimpleReply {
            error: 0,
            cookie: 7,
        }
        .encode();
        assert!(SimpleReply::decode(&b).is_some());
        b[0] ^= 1;
        assert!(SimpleReply::decode(&b).is_none());
    }
}
