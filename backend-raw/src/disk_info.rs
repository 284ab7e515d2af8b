//! What an engine is told about the disk it serves: the geometry found by
//! [`Disk::open`](crate::Disk::open) and the descriptors it owns.

use std::fs::File;

/// What `O_DIRECT` requires of a request, from `statx(STATX_DIOALIGN)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DioAlignment {
    /// Alignment of each buffer address, in bytes.
    pub memory: u32,
    /// Alignment of the file offset and of each buffer length, in bytes.
    pub offset: u32,
}

/// Everything an engine needs to know about the disk; copied into each engine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DiskInfo {
    pub capacity: u64,
    pub logical_block_size: u32,
    pub block_device: bool,
    pub readonly: bool,
    /// `Some` when the disk is open with `O_DIRECT`.
    pub dio: Option<DioAlignment>,
    pub discard: bool,
}

/// The file descriptors one engine owns.
pub(crate) struct EngineFiles {
    /// Used for every request the kernel can take as is (`O_DIRECT` when direct=on).
    pub file: File,
    /// Without `O_DIRECT`, for requests whose offset or length `O_DIRECT` refuses.
    pub buffered: Option<File>,
}
