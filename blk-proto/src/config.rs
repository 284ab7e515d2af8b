//! The device configuration space `struct virtio_blk_config`
//! (VIRTIO 1.x, 5.2.4 "Device configuration layout").

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `struct virtio_blk_geometry`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct Geometry {
    /// Number of cylinders.
    pub cylinders: U16,
    /// Number of heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

/// `struct virtio_blk_topology`: alignment hints, in logical blocks.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct Topology {
    /// log2 of logical blocks per physical block.
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in blocks.
    pub min_io_size: U16,
    /// Optimal (suggested maximum) I/O size in blocks.
    pub opt_io_size: U32,
}

/// `struct virtio_blk_zoned_characteristics` (only meaningful with `VIRTIO_BLK_F_ZONED`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ZonedCharacteristics {
    /// Zone size in sectors.
    pub zone_sectors: U32,
    /// Maximum number of open zones.
    pub max_open_zones: U32,
    /// Maximum number of active zones.
    pub max_active_zones: U32,
    /// Maximum size of a zone append in sectors.
    pub max_append_sectors: U32,
    /// Write alignment in bytes.
    pub write_granularity: U32,
    /// `VIRTIO_BLK_Z_*` zoned model.
    pub model: u8,
    /// Padding.
    pub unused2: [u8; 3],
}

/// `struct virtio_blk_config`, little-endian, exactly as the driver reads it.
///
/// Fields other than `capacity` are only meaningful when their feature bit is offered
/// (5.2.3); the device keeps the others at 0.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct VirtioBlkConfig {
    /// Size of the disk in 512-byte sectors.
    pub capacity: U64,
    /// Maximum size of one data segment in bytes (`VIRTIO_BLK_F_SIZE_MAX`).
    pub size_max: U32,
    /// Maximum number of data segments in a request (`VIRTIO_BLK_F_SEG_MAX`).
    pub seg_max: U32,
    /// Disk geometry (`VIRTIO_BLK_F_GEOMETRY`).
    pub geometry: Geometry,
    /// Optimal block size in bytes (`VIRTIO_BLK_F_BLK_SIZE`); sectors stay 512 bytes.
    pub blk_size: U32,
    /// I/O alignment hints (`VIRTIO_BLK_F_TOPOLOGY`).
    pub topology: Topology,
    /// Cache mode, 0 writethrough, 1 writeback (`VIRTIO_BLK_F_CONFIG_WCE`; driver-writable).
    pub writeback: u8,
    /// Padding; the device MUST keep it 0.
    pub unused0: u8,
    /// Number of request queues (`VIRTIO_BLK_F_MQ`).
    pub num_queues: U16,
    /// Maximum sectors of one discard segment (`VIRTIO_BLK_F_DISCARD`).
    pub max_discard_sectors: U32,
    /// Maximum discard segments in one request.
    pub max_discard_seg: U32,
    /// Discard alignment hint in sectors.
    pub discard_sector_alignment: U32,
    /// Maximum sectors of one write-zeroes segment (`VIRTIO_BLK_F_WRITE_ZEROES`).
    pub max_write_zeroes_sectors: U32,
    /// Maximum write-zeroes segments in one request.
    pub max_write_zeroes_seg: U32,
    /// 1 if a write-zeroes with `unmap` may deallocate.
    pub write_zeroes_may_unmap: u8,
    /// Padding; the device MUST keep it 0.
    pub unused1: [u8; 3],
    /// Maximum sectors of one secure-erase segment (`VIRTIO_BLK_F_SECURE_ERASE`).
    pub max_secure_erase_sectors: U32,
    /// Maximum secure-erase segments in one request.
    pub max_secure_erase_seg: U32,
    /// Secure-erase alignment hint in sectors.
    pub secure_erase_sector_alignment: U32,
    /// Zoned characteristics (`VIRTIO_BLK_F_ZONED`).
    pub zoned: ZonedCharacteristics,
}

/// Size of [`VirtioBlkConfig`] in bytes.
pub const VIRTIO_BLK_CONFIG_SIZE: usize = 96;

/// Offset of the `writeback` byte, the only field a driver may write.
pub const VIRTIO_BLK_CONFIG_WRITEBACK_OFFSET: usize = 32;

impl VirtioBlkConfig {
    /// A configuration for a disk of `capacity` sectors with every optional field 0.
    pub fn new(capacity: u64) -> Self {
        VirtioBlkConfig {
            capacity: capacity.into(),
            ..Default::default()
        }
    }

    /// Sets `seg_max` (offer `VIRTIO_BLK_F_SEG_MAX` with it).
    pub fn with_seg_max(mut self, seg_max: u32) -> Self {
        self.seg_max = seg_max.into();
        self
    }

    /// Sets `size_max` (offer `VIRTIO_BLK_F_SIZE_MAX` with it).
    pub fn with_size_max(mut self, size_max: u32) -> Self {
        self.size_max = size_max.into();
        self
    }

    /// Sets `blk_size` (offer `VIRTIO_BLK_F_BLK_SIZE` with it).
    pub fn with_blk_size(mut self, blk_size: u32) -> Self {
        self.blk_size = blk_size.into();
        self
    }

    /// Sets `num_queues` (offer `VIRTIO_BLK_F_MQ` with it).
    pub fn with_num_queues(mut self, num_queues: u16) -> Self {
        self.num_queues = num_queues.into();
        self
    }

    /// Sets the initial `writeback` cache mode (offer `VIRTIO_BLK_F_CONFIG_WCE` with it).
    pub fn with_writeback(mut self, writeback: bool) -> Self {
        self.writeback = u8::from(writeback);
        self
    }

    /// Sets the discard limits (offer `VIRTIO_BLK_F_DISCARD` with them).
    pub fn with_discard(mut self, max_sectors: u32, max_seg: u32, sector_alignment: u32) -> Self {
        self.max_discard_sectors = max_sectors.into();
        self.max_discard_seg = max_seg.into();
        self.discard_sector_alignment = sector_alignment.into();
        self
    }

    /// Sets the write-zeroes limits (offer `VIRTIO_BLK_F_WRITE_ZEROES` with them).
    pub fn with_write_zeroes(mut self, max_sectors: u32, max_seg: u32, may_unmap: bool) -> Self {
        self.max_write_zeroes_sectors = max_sectors.into();
        self.max_write_zeroes_seg = max_seg.into();
        self.write_zeroes_may_unmap = u8::from(may_unmap);
        self
    }

    /// The configuration space bytes.
    pub fn to_bytes(&self) -> [u8; VIRTIO_BLK_CONFIG_SIZE] {
        zerocopy::transmute!(*self)
    }

    /// A driver's read of `data.len()` bytes at `offset`; bytes beyond the structure read as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.as_bytes();
        for (i, out) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|a| usize::try_from(a).ok());
            *out = at.and_then(|a| bytes.get(a)).copied().unwrap_or(0);
        }
    }

    /// A driver's write at `offset`: only the `writeback` byte is writable (with
    /// `VIRTIO_BLK_F_CONFIG_WCE` negotiated); any other write is ignored. Returns whether
    /// `writeback` changed.
    pub fn write(&mut self, offset: u64, data: &[u8], config_wce: bool) -> bool {
        let Some(&value) = data.first() else {
            return false;
        };
        if !config_wce
            || offset != VIRTIO_BLK_CONFIG_WRITEBACK_OFFSET as u64
            || data.len() != 1
            || value > 1
        {
            return false;
        }
        let changed = self.writeback != value;
        self.writeback = value;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn offsets_follow_the_spec() {
        assert_eq!(size_of::<VirtioBlkConfig>(), VIRTIO_BLK_CONFIG_SIZE);
        assert_eq!(size_of::<Geometry>(), 4);
        assert_eq!(size_of::<Topology>(), 8);
        assert_eq!(size_of::<ZonedCharacteristics>(), 24);
        let expected = [
            (offset_of!(VirtioBlkConfig, capacity), 0),
            (offset_of!(VirtioBlkConfig, size_max), 8),
            (offset_of!(VirtioBlkConfig, seg_max), 12),
            (offset_of!(VirtioBlkConfig, geometry), 16),
            (offset_of!(VirtioBlkConfig, blk_size), 20),
            (offset_of!(VirtioBlkConfig, topology), 24),
            (
                offset_of!(VirtioBlkConfig, writeback),
                VIRTIO_BLK_CONFIG_WRITEBACK_OFFSET,
            ),
            (offset_of!(VirtioBlkConfig, unused0), 33),
            (offset_of!(VirtioBlkConfig, num_queues), 34),
            (offset_of!(VirtioBlkConfig, max_discard_sectors), 36),
            (offset_of!(VirtioBlkConfig, max_discard_seg), 40),
            (offset_of!(VirtioBlkConfig, discard_sector_alignment), 44),
            (offset_of!(VirtioBlkConfig, max_write_zeroes_sectors), 48),
            (offset_of!(VirtioBlkConfig, max_write_zeroes_seg), 52),
            (offset_of!(VirtioBlkConfig, write_zeroes_may_unmap), 56),
            (offset_of!(VirtioBlkConfig, unused1), 57),
            (offset_of!(VirtioBlkConfig, max_secure_erase_sectors), 60),
            (offset_of!(VirtioBlkConfig, max_secure_erase_seg), 64),
            (
                offset_of!(VirtioBlkConfig, secure_erase_sector_alignment),
                68,
            ),
            (offset_of!(VirtioBlkConfig, zoned), 72),
        ];
        for (i, (got, want)) in expected.iter().enumerate() {
            assert_eq!(got, want, "field #{i}");
        }
        assert_eq!(offset_of!(Geometry, heads), 2);
        assert_eq!(offset_of!(Topology, min_io_size), 2);
        assert_eq!(offset_of!(Topology, opt_io_size), 4);
        assert_eq!(offset_of!(ZonedCharacteristics, model), 20);
    }

    #[test]
    fn bytes_and_reads() {
        let cfg = VirtioBlkConfig::new(0x1_0000_0001)
            .with_seg_max(126)
            .with_discard(8, 2, 1)
            .with_num_queues(2);
        let bytes = cfg.to_bytes();
        assert_eq!(&bytes[0..8], &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&bytes[12..16], &[126, 0, 0, 0]);
        assert_eq!(&bytes[34..36], &[2, 0]);
        assert_eq!(&bytes[40..44], &[2, 0, 0, 0]);
        let mut buf = [0xff; 4];
        cfg.read(94, &mut buf);
        assert_eq!(buf, [0, 0, 0, 0]);
        cfg.read(u64::MAX, &mut buf);
        assert_eq!(buf, [0, 0, 0, 0]);
        cfg.read(12, &mut buf);
        assert_eq!(buf, [126, 0, 0, 0]);
    }

    #[test]
    fn only_writeback_is_writable() {
        let mut cfg = VirtioBlkConfig::new(8);
        assert!(!cfg.write(0, &[1], true));
        assert!(!cfg.write(32, &[1], false));
        assert!(!cfg.write(32, &[2], true));
        assert!(cfg.write(32, &[1], true));
        assert_eq!(cfg.writeback, 1);
        assert_eq!(cfg.capacity.get(), 8);
    }
}
