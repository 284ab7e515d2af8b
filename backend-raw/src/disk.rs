//! Opening an image file or block device and learning its geometry.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::blocking::BlockingIo;
use crate::disk_info::{DioAlignment, DiskInfo, EngineFiles};
use crate::engine_sync::SyncEngine;
use crate::engine_uring::UringEngine;
use crate::{with_faults, Engine, EngineKind, Error, FaultSpec, MAX_DEPTH};

/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes (not in the libc crate).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Logical block size reported for regular files (the virtio-blk sector).
const FILE_LOGICAL_BLOCK_SIZE: u32 = 512;

/// Direct I/O alignment assumed when the kernel cannot tell (`statx` without
/// `STATX_DIOALIGN`, before Linux 6.1): a page satisfies every filesystem.
const FALLBACK_DIO_ALIGN: u32 = 4096;

/// How to open a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DiskOptions {
    /// Open with `O_RDONLY`: writes, discards and write-zeroes complete with `EBADF`.
    pub readonly: bool,
    /// Open with `O_DIRECT`, bypassing the host page cache. Requests whose memory is not
    /// aligned as the kernel requires go through a bounce buffer (see [`DioAlignment`]).
    pub direct: bool,
}

/// An open raw image file or host block device.
///
/// ```
/// use backend_raw::{Disk, DiskOptions, EngineKind, IoOp};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("disk.img");
/// std::fs::File::create(&path)?.set_len(1 << 20)?;
///
/// let disk = Disk::open(&path, DiskOptions::default())?;
/// assert_eq!(disk.capacity(), 1 << 20);
/// let mut engine = disk.engine(EngineKind::Sync, 8)?;
///
/// let mut data = [0xa5u8; 512];
/// let iov = [libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() }];
/// // SAFETY: `data` outlives the request, which is reaped below.
/// unsafe { engine.submit(IoOp::Write { offset: 4096 }, &iov, 1)? };
/// engine.flush_submissions()?;
/// engine.wait()?;
/// let mut done = Vec::new();
/// engine.reap(&mut done);
/// assert_eq!(done[0].result, Ok(512));
///
/// let mut back = [0u8; 512];
/// let iov = [libc::iovec { iov_base: back.as_mut_ptr().cast(), iov_len: back.len() }];
/// // SAFETY: as above.
/// unsafe { engine.submit(IoOp::Read { offset: 4096 }, &iov, 2)? };
/// engine.flush_submissions()?;
/// engine.wait()?;
/// engine.reap(&mut done);
/// assert_eq!(done[1].user_data, 2);
/// assert_eq!(back, data);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    file: File,
    buffered: Option<File>,
    info: DiskInfo,
}

impl Disk {
    /// Opens `path`, a regular file or a block device.
    ///
    /// Errors name the file and the fix: a missing file suggests `truncate`, a permission
    /// error suggests `readonly=on`, a filesystem refusing `O_DIRECT` suggests `direct=off`.
    pub fn open(path: impl AsRef<Path>, opts: DiskOptions) -> Result<Disk, Error> {
        let path = path.as_ref().to_path_buf();
        let file = open_file(&path, opts)?;
        let meta = file.metadata().map_err(|source| Error::Query {
            path: path.clone(),
            what: "type",
            source,
        })?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            return Err(Error::UnsupportedFileType { path });
        }
        let query = |what: &'static str| {
            let path = path.clone();
            move |source| Error::Query { path, what, source }
        };
        let (capacity, device_block_size) = if block_device {
            (
                block_device_size(&file).map_err(query("size"))?,
                block_device_logical_block_size(&file).map_err(query("logical block size"))?,
            )
        } else {
            (meta.len(), FILE_LOGICAL_BLOCK_SIZE)
        };
        let dio = opts.direct.then(|| dio_alignment(&file, device_block_size));
        // Files report 512-byte sectors, unless O_DIRECT needs more: a guest told the larger
        // size issues requests that never take the slow unaligned path.
        let logical_block_size = dio.map_or(device_block_size, |d| d.offset.max(device_block_size));
        let buffered = match opts.direct {
            true => Some(reopen_buffered(&file, opts).map_err(|source| Error::Dup {
                path: path.clone(),
                source,
            })?),
            false => None,
        };
        // DISCARD only where it does something: punched holes in sparse files, or a device
        // whose queue accepts discards. Never on read-only disks.
        let discard = !opts.readonly
            && match block_device {
                true => block_device_discards(&meta),
                false => file_punches_holes(&file, capacity),
            };
        let info = DiskInfo {
            capacity,
            logical_block_size,
            block_device,
            readonly: opts.readonly,
            dio,
            discard,
        };
        Ok(Disk {
            path,
            file,
            buffered,
            info,
        })
    }

    /// Builds an engine of `kind` able to hold `depth` requests in flight, with its own
    /// file descriptor.
    ///
    /// For [`EngineKind::IoUring`], fails with [`Error::UringSetup`] when the kernel refuses
    /// io_uring; see [`Disk::engine_or_sync`] for a fallback.
    pub fn engine(&self, kind: EngineKind, depth: usize) -> Result<Box<dyn Engine>, Error> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(Error::InvalidDepth {
                depth,
                max: MAX_DEPTH,
            });
        }
        let io = self.blocking_io()?;
        Ok(match kind {
            EngineKind::Sync => Box::new(SyncEngine::new(io, depth)),
            EngineKind::IoUring => Box::new(UringEngine::new(io, depth)?),
        })
    }

    /// Like [`Disk::engine`], but falls back to the sync engine when io_uring cannot be set
    /// up; the second value is then the io_uring error, for the caller to log.
    pub fn engine_or_sync(
        &self,
        kind: EngineKind,
        depth: usize,
    ) -> Result<(Box<dyn Engine>, Option<Error>), Error> {
        match self.engine(kind, depth) {
            Err(e @ Error::UringSetup { .. }) => {
                Ok((self.engine(EngineKind::Sync, depth)?, Some(e)))
            }
            other => other.map(|engine| (engine, None)),
        }
    }

    /// Like [`Disk::engine_or_sync`], then wrapped in a [`FaultEngine`](crate::FaultEngine)
    /// when `faults` is given (see [`with_faults`]).
    pub fn engine_with_faults(
        &self,
        kind: EngineKind,
        depth: usize,
        faults: Option<&FaultSpec>,
    ) -> Result<(Box<dyn Engine>, Option<Error>), Error> {
        let (engine, fallback) = self.engine_or_sync(kind, depth)?;
        Ok((with_faults(engine, faults), fallback))
    }

    /// Blocking request execution on descriptors of its own, the core of every engine.
    pub(crate) fn blocking_io(&self) -> Result<BlockingIo, Error> {
        Ok(BlockingIo::new(self.engine_files()?, self.info))
    }

    fn engine_files(&self) -> Result<EngineFiles, Error> {
        let dup = |file: &File| {
            file.try_clone().map_err(|source| Error::Dup {
                path: self.path.clone(),
                source,
            })
        };
        Ok(EngineFiles {
            file: dup(&self.file)?,
            buffered: self.buffered.as_ref().map(dup).transpose()?,
        })
    }

    /// The path the disk was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes: the file size, or `BLKGETSIZE64` for a block device.
    pub fn capacity(&self) -> u64 {
        self.info.capacity
    }

    /// Size in 512-byte virtio-blk sectors (the `capacity` field of the device config),
    /// rounded down.
    pub fn capacity_sectors(&self) -> u64 {
        self.info.capacity / 512
    }

    /// The block size to report to the guest (`blk_size`): `BLKSSZGET` for a block device,
    /// 512 for a file, raised to the `O_DIRECT` offset alignment when direct=on.
    pub fn logical_block_size(&self) -> u32 {
        self.info.logical_block_size
    }

    /// Whether the disk was opened read-only (the device offers `VIRTIO_BLK_F_RO`).
    pub fn readonly(&self) -> bool {
        self.info.readonly
    }

    /// Whether the disk is a host block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.info.block_device
    }

    /// The `O_DIRECT` alignment, or `None` when the disk was opened with direct=off.
    pub fn direct(&self) -> Option<DioAlignment> {
        self.info.dio
    }

    /// Whether discard deallocates anything (`VIRTIO_BLK_F_DISCARD` is worth offering): a
    /// writable regular file on a filesystem that punches holes, or a writable block device
    /// that accepts discards.
    pub fn discard_supported(&self) -> bool {
        self.info.discard
    }

    /// Whether write-zeroes is available (`VIRTIO_BLK_F_WRITE_ZEROES`): on every writable
    /// disk, through `fallocate` or, where that is missing, by writing zeros.
    pub fn write_zeroes_supported(&self) -> bool {
        !self.info.readonly
    }
}

fn open_file(path: &Path, opts: DiskOptions) -> Result<File, Error> {
    let mut open = OpenOptions::new();
    open.read(true).write(!opts.readonly);
    if opts.direct {
        open.custom_flags(libc::O_DIRECT);
    }
    match open.open(path) {
        Ok(file) => Ok(file),
        Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
            Err(Error::DirectUnsupported {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(Error::open(path.to_path_buf(), e, opts.readonly)),
    }
}

/// Opens the same file again without `O_DIRECT` (a `dup` would share the flag).
fn reopen_buffered(file: &File, opts: DiskOptions) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(!opts.readonly)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

fn block_device_logical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `size`.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET as _, &mut size as *mut _) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && *s >= 512)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The `O_DIRECT` alignment from `statx(STATX_DIOALIGN)`, or a safe guess.
fn dio_alignment(file: &File, device_block_size: u32) -> DioAlignment {
    let fallback = DioAlignment {
        memory: FALLBACK_DIO_ALIGN,
        offset: FALLBACK_DIO_ALIGN.max(device_block_size),
    };
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the path is a valid C string, and statx writes at most one `struct statx`
    // into `stx`, which is that large.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            stx.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return fallback;
    }
    // SAFETY: zero is a valid `statx`, and the call succeeded.
    let stx = unsafe { stx.assume_init() };
    let valid = |a: u32| a.is_power_of_two().then_some(a);
    match (
        stx.stx_mask & libc::STATX_DIOALIGN != 0,
        valid(stx.stx_dio_mem_align),
        valid(stx.stx_dio_offset_align),
    ) {
        (true, Some(memory), Some(offset)) => DioAlignment { memory, offset },
        _ => fallback,
    }
}

/// Probes hole punching where it cannot change data: one page past the end of the file.
fn file_punches_holes(file: &File, capacity: u64) -> bool {
    let Some(offset) = capacity
        .checked_next_multiple_of(4096)
        .and_then(|o| libc::off_t::try_from(o).ok())
    else {
        return false;
    };
    // SAFETY: fallocate takes no pointers; the range lies beyond the end of the file and
    // KEEP_SIZE keeps the size, so no data changes.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            4096,
        )
    };
    ret == 0
}

/// Reads the device queue's `discard_max_bytes` from sysfs (a partition shares its disk's).
fn block_device_discards(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let rdev = meta.rdev();
    let dev = format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev));
    ["queue/discard_max_bytes", "../queue/discard_max_bytes"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("{dev}/{f}")).ok())
        .filter_map(|s| s.trim().parse::<u64>().ok())
        .any(|max| max > 0)
}
