//! What the device accepts: capacity, read-only, negotiated request types and their limits.

use crate::config::VirtioBlkConfig;
use crate::features::{
    Features, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};
use crate::request_type::RequestType;
use crate::segment::{MAX_DISCARD_SEGMENTS, MAX_SEGMENTS};

/// The device's side of a request's validity, fixed at feature negotiation (and when the
/// capacity changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Disk size in 512-byte sectors.
    pub capacity: u64,
    /// `VIRTIO_BLK_F_RO` offered: writes fail with IOERR.
    pub read_only: bool,
    /// `VIRTIO_BLK_F_FLUSH` negotiated.
    pub flush: bool,
    /// `VIRTIO_BLK_F_DISCARD` negotiated.
    pub discard: bool,
    /// `VIRTIO_BLK_F_WRITE_ZEROES` negotiated.
    pub write_zeroes: bool,
    /// Maximum data buffers per IN/OUT request; values above [`MAX_SEGMENTS`] act as it.
    pub seg_max: u32,
    /// Maximum sectors of one discard segment.
    pub max_discard_sectors: u32,
    /// Maximum segments of a discard; values above [`MAX_DISCARD_SEGMENTS`] act as it.
    pub max_discard_seg: u32,
    /// Maximum sectors of one write-zeroes segment.
    pub max_write_zeroes_sectors: u32,
    /// Maximum segments of a write-zeroes; values above [`MAX_DISCARD_SEGMENTS`] act as it.
    pub max_write_zeroes_seg: u32,
}

impl DeviceLimits {
    /// A writable disk of `capacity` sectors accepting IN, OUT, FLUSH and GET_ID, with the
    /// largest segment counts this crate handles; DISCARD and WRITE_ZEROES answer UNSUPP.
    ///
    /// FLUSH is accepted because a device author who does not think about it expects a
    /// flush to flush: a driver sends FLUSH only if `VIRTIO_BLK_F_FLUSH` was negotiated, so
    /// accepting it costs nothing, while refusing it would fail the one request that makes
    /// writes durable. A device that does not offer the feature says so visibly:
    /// `DeviceLimits { flush: false, ..DeviceLimits::new(capacity) }`. DISCARD and
    /// WRITE_ZEROES stay off because they need limits that only the device's configuration
    /// knows (`max_discard_sectors`, ...); turn them on the same way, or derive every field
    /// from the negotiated features with [`DeviceLimits::from_config`].
    pub const fn new(capacity: u64) -> Self {
        DeviceLimits {
            capacity,
            read_only: false,
            flush: true,
            discard: false,
            write_zeroes: false,
            seg_max: MAX_SEGMENTS as u32,
            max_discard_sectors: u32::MAX,
            max_discard_seg: MAX_DISCARD_SEGMENTS as u32,
            max_write_zeroes_sectors: u32::MAX,
            max_write_zeroes_seg: MAX_DISCARD_SEGMENTS as u32,
        }
    }

    /// The limits a device with configuration `config` enforces, given the features it
    /// `offered` and those `negotiated`. `seg_max` binds only when `VIRTIO_BLK_F_SEG_MAX` was
    /// negotiated (a driver that did not read it cannot honour it).
    pub fn from_config(config: &VirtioBlkConfig, offered: Features, negotiated: Features) -> Self {
        let seg_max = if negotiated.contains(VIRTIO_BLK_F_SEG_MAX) {
            config.seg_max.get()
        } else {
            MAX_SEGMENTS as u32
        };
        DeviceLimits {
            capacity: config.capacity.get(),
            // 5.2.6.2: IOERR for writes "if the VIRTIO_BLK_F_RO feature is offered".
            read_only: offered.contains(VIRTIO_BLK_F_RO),
            flush: negotiated.contains(VIRTIO_BLK_F_FLUSH),
            discard: negotiated.contains(VIRTIO_BLK_F_DISCARD),
            write_zeroes: negotiated.contains(VIRTIO_BLK_F_WRITE_ZEROES),
            seg_max,
            max_discard_sectors: config.max_discard_sectors.get(),
            max_discard_seg: config.max_discard_seg.get(),
            max_write_zeroes_sectors: config.max_write_zeroes_sectors.get(),
            max_write_zeroes_seg: config.max_write_zeroes_seg.get(),
        }
    }

    /// Whether the negotiated features allow requests of type `t` at all.
    pub const fn supports(&self, t: RequestType) -> bool {
        match t {
            RequestType::In | RequestType::Out | RequestType::GetId => true,
            RequestType::Flush => self.flush,
            RequestType::Discard => self.discard,
            RequestType::WriteZeroes => self.write_zeroes,
            RequestType::Unsupported(_) => false,
        }
    }

    /// The effective data-buffer limit.
    pub(crate) fn data_segment_limit(&self) -> u32 {
        self.seg_max.min(MAX_SEGMENTS as u32)
    }

    /// The effective (segment count, sectors per segment) limits for DISCARD or WRITE_ZEROES.
    pub(crate) fn range_limits(&self, t: RequestType) -> (u32, u32) {
        let (seg, sectors) = match t {
            RequestType::WriteZeroes => (self.max_write_zeroes_seg, self.max_write_zeroes_sectors),
            _ => (self.max_discard_seg, self.max_discard_sectors),
        };
        (seg.min(MAX_DISCARD_SEGMENTS as u32), sectors)
    }
}
