//! What a virtio-blk device offers: its features and its configuration space (5.2.3
//! "Feature bits", 5.2.4 "Device configuration layout"), each decided here and nowhere else,
//! so every transport (virtio-pci in the VMM, vhost-user) offers the same device.

use blk_proto::features::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use blk_proto::{Features, VirtioBlkConfig, MAX_DISCARD_SEGMENTS, SECTOR_SIZE};

use crate::config::DiskConfig;
use crate::disk::OpenDisk;

/// Largest discard / write-zeroes segment offered, in sectors (just under 2 GiB, so a
/// segment's byte length stays far from overflow everywhere).
pub const MAX_RANGE_SECTORS: u32 = (1 << 22) - 1;

/// The features this device offers, each decided here and nowhere else.
pub fn offered_features(disk: &OpenDisk, cfg: &DiskConfig) -> Features {
    // Modern device only (4.1.2.1: non-transitional, device ID 0x1042).
    let mut f = Features::bit(VIRTIO_F_VERSION_1);
    // virtqueue-core implements used_event / avail_event suppression: fewer kicks and
    // interrupts, each an exit or a wake-up.
    f = f.with(VIRTIO_RING_F_EVENT_IDX);
    // The chain walker flattens indirect tables (one level, 2.7.5.3).
    f = f.with(VIRTIO_RING_F_INDIRECT_DESC);
    // Tell the driver how many data buffers a request may have (queue_size - 2).
    f = f.with(VIRTIO_BLK_F_SEG_MAX);
    // The disk's logical block size, so the guest issues aligned I/O (no bounce buffers
    // with O_DIRECT).
    f = f.with(VIRTIO_BLK_F_BLK_SIZE);
    // Writes land in the host page cache (or the disk's volatile cache): the guest must be
    // able to make them durable.
    f = f.with(VIRTIO_BLK_F_FLUSH);
    if disk.discard_supported() {
        // Only where discarding frees space: a regular file whose filesystem punches holes,
        // or a block device accepting discards.
        f = f.with(VIRTIO_BLK_F_DISCARD);
    }
    if disk.write_zeroes_supported() {
        // fallocate(ZERO_RANGE/PUNCH_HOLE) or written zeros: any writable disk.
        f = f.with(VIRTIO_BLK_F_WRITE_ZEROES);
    }
    if disk.readonly() || cfg.readonly {
        // 5.2.6.2: writes then fail with IOERR, and the driver knows before trying.
        f = f.with(VIRTIO_BLK_F_RO);
    }
    if cfg.queues > 1 {
        f = f.with(VIRTIO_BLK_F_MQ);
    }
    // Not offered: SIZE_MAX (no per-buffer limit), GEOMETRY and TOPOLOGY (legacy hints),
    // CONFIG_WCE (the cache mode is the host's), RING_PACKED, RING_RESET,
    // NOTIFICATION_DATA, ACCESS_PLATFORM (no IOMMU).
    f
}

/// `struct virtio_blk_config` for `disk` (5.2.4 "Device configuration layout").
pub fn device_config(disk: &OpenDisk, cfg: &DiskConfig, features: Features) -> VirtioBlkConfig {
    let blk_size = disk.logical_block_size().max(SECTOR_SIZE as u32);
    let mut c = VirtioBlkConfig::new(disk.capacity_sectors())
        .with_seg_max(u32::from(cfg.queue_size).saturating_sub(2).max(1))
        .with_blk_size(blk_size)
        .with_num_queues(cfg.queues);
    if features.contains(VIRTIO_BLK_F_DISCARD) {
        c = c.with_discard(
            MAX_RANGE_SECTORS,
            MAX_DISCARD_SEGMENTS as u32,
            blk_size / SECTOR_SIZE as u32,
        );
    }
    if features.contains(VIRTIO_BLK_F_WRITE_ZEROES) {
        c = c.with_write_zeroes(
            MAX_RANGE_SECTORS,
            MAX_DISCARD_SEGMENTS as u32,
            disk.discard_supported(),
        );
    }
    c
}
