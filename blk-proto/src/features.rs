//! Feature bits (VIRTIO 1.x, 5.2.3 "Feature bits", 6 "Reserved Feature Bits") and the check
//! of the driver's acknowledgement.
//!
//! The values are those of Linux's `virtio_blk.h`, `virtio_config.h` and `virtio_ring.h`
//! (the `virtio-bindings` crate); tests compare them. They are defined here rather than
//! re-exported because `virtio-bindings` needs `std`, which the freestanding guest cannot link.

use core::fmt;

/// `VIRTIO_BLK_F_SIZE_MAX`: `size_max` is valid.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// `VIRTIO_BLK_F_GEOMETRY`: `geometry` is valid.
pub const VIRTIO_BLK_F_GEOMETRY: u32 = 4;
/// `VIRTIO_BLK_F_RO`: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// `VIRTIO_BLK_F_BLK_SIZE`: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// `VIRTIO_BLK_F_FLUSH`: `VIRTIO_BLK_T_FLUSH` is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// `VIRTIO_BLK_F_TOPOLOGY`: `topology` is valid.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// `VIRTIO_BLK_F_CONFIG_WCE`: the driver may switch the cache mode through `writeback`.
pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
/// `VIRTIO_BLK_F_MQ`: `num_queues` request queues.
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// `VIRTIO_BLK_F_DISCARD`: `VIRTIO_BLK_T_DISCARD` is supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// `VIRTIO_BLK_F_WRITE_ZEROES`: `VIRTIO_BLK_T_WRITE_ZEROES` is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
/// `VIRTIO_RING_F_INDIRECT_DESC`: descriptors may point at indirect tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// `VIRTIO_F_VERSION_1`: the device follows VIRTIO 1.x, not the legacy interface.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// A set of feature bits (bit `n` of the 64-bit feature word is feature `n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u64);

impl Features {
    /// No features.
    pub const EMPTY: Features = Features(0);

    /// The set holding only feature `bit`; empty when `bit >= 64`.
    pub const fn bit(bit: u32) -> Self {
        Features(match 1u64.checked_shl(bit) {
            Some(mask) => mask,
            None => 0,
        })
    }

    /// This set plus feature `bit`.
    pub const fn with(self, bit: u32) -> Self {
        Features(self.0 | Self::bit(bit).0)
    }

    /// Whether feature `bit` is in the set.
    pub const fn contains(self, bit: u32) -> bool {
        let mask = Self::bit(bit).0;
        mask != 0 && self.0 & mask == mask
    }

    /// The 64-bit feature word.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// 32 bits of the word as the transport exposes them (`select` 0: bits 0..31, 1: bits 32..63,
    /// others: 0), as in `device_feature_select` of 4.1.4.3 "Common configuration structure layout".
    pub const fn word(self, select: u32) -> u32 {
        match select {
            0 => self.0 as u32,
            1 => (self.0 >> 32) as u32,
            _ => 0,
        }
    }
}

/// The driver acknowledged features the device cannot accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureError {
    /// Bits acknowledged that the device never offered (3.1.1: the driver MUST NOT accept them).
    NotOffered {
        /// The offending bits.
        bits: u64,
    },
    /// `VIRTIO_F_VERSION_1` was offered but not acknowledged: this device has no legacy interface.
    Version1NotAcked,
}

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeatureError::NotOffered { bits } => write!(
                f,
                "driver acknowledged features {bits:#x} that were not offered"
            ),
            FeatureError::Version1NotAcked => {
                f.write_str("driver did not acknowledge VIRTIO_F_VERSION_1")
            }
        }
    }
}

impl core::error::Error for FeatureError {}

/// Checks the driver's acknowledged features against the offered ones (the device's side of
/// setting FEATURES_OK, 3.1.1 "Driver Requirements: Device Initialization"); returns the
/// negotiated set.
pub fn validate_ack(offered: Features, acked: Features) -> Result<Features, FeatureError> {
    let extra = acked.0 & !offered.0;
    if extra != 0 {
        return Err(FeatureError::NotOffered { bits: extra });
    }
    if offered.contains(VIRTIO_F_VERSION_1) && !acked.contains(VIRTIO_F_VERSION_1) {
        return Err(FeatureError::Version1NotAcked);
    }
    Ok(acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_linux_headers() {
        use virtio_bindings::{virtio_blk as b, virtio_config as c, virtio_ring as r};
        assert_eq!(VIRTIO_BLK_F_SIZE_MAX, b::VIRTIO_BLK_F_SIZE_MAX);
        assert_eq!(VIRTIO_BLK_F_SEG_MAX, b::VIRTIO_BLK_F_SEG_MAX);
        assert_eq!(VIRTIO_BLK_F_GEOMETRY, b::VIRTIO_BLK_F_GEOMETRY);
        assert_eq!(VIRTIO_BLK_F_RO, b::VIRTIO_BLK_F_RO);
        assert_eq!(VIRTIO_BLK_F_BLK_SIZE, b::VIRTIO_BLK_F_BLK_SIZE);
        assert_eq!(VIRTIO_BLK_F_FLUSH, b::VIRTIO_BLK_F_FLUSH);
        assert_eq!(VIRTIO_BLK_F_TOPOLOGY, b::VIRTIO_BLK_F_TOPOLOGY);
        assert_eq!(VIRTIO_BLK_F_CONFIG_WCE, b::VIRTIO_BLK_F_CONFIG_WCE);
        assert_eq!(VIRTIO_BLK_F_MQ, b::VIRTIO_BLK_F_MQ);
        assert_eq!(VIRTIO_BLK_F_DISCARD, b::VIRTIO_BLK_F_DISCARD);
        assert_eq!(VIRTIO_BLK_F_WRITE_ZEROES, b::VIRTIO_BLK_F_WRITE_ZEROES);
        assert_eq!(VIRTIO_RING_F_INDIRECT_DESC, r::VIRTIO_RING_F_INDIRECT_DESC);
        assert_eq!(VIRTIO_RING_F_EVENT_IDX, r::VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(VIRTIO_F_VERSION_1, c::VIRTIO_F_VERSION_1);
    }

    #[test]
    fn bits_and_words() {
        let f = Features::EMPTY
            .with(VIRTIO_BLK_F_FLUSH)
            .with(VIRTIO_F_VERSION_1);
        assert!(f.contains(VIRTIO_BLK_F_FLUSH) && f.contains(VIRTIO_F_VERSION_1));
        assert!(!f.contains(VIRTIO_BLK_F_RO));
        assert!(!f.contains(64));
        assert_eq!(Features::bit(200), Features::EMPTY);
        assert_eq!(f.word(0), 1 << 9);
        assert_eq!(f.word(1), 1);
        assert_eq!(f.word(2), 0);
    }

    #[test]
    fn ack_must_be_a_subset_with_version_1() {
        let offered = Features::EMPTY
            .with(VIRTIO_F_VERSION_1)
            .with(VIRTIO_BLK_F_FLUSH);
        let v1 = Features::bit(VIRTIO_F_VERSION_1);
        assert_eq!(validate_ack(offered, v1), Ok(v1));
        assert_eq!(validate_ack(offered, offered), Ok(offered));
        assert_eq!(
            validate_ack(offered, v1.with(VIRTIO_BLK_F_RO)),
            Err(FeatureError::NotOffered {
                bits: 1 << VIRTIO_BLK_F_RO
            })
        );
        assert_eq!(
            validate_ack(offered, Features::bit(VIRTIO_BLK_F_FLUSH)),
            Err(FeatureError::Version1NotAcked)
        );
    }
}
