//! The front end's memory table (vhost-user `VHOST_USER_SET_MEM_TABLE`): each region arrives
//! as a file descriptor with an offset, a guest physical address and the front end's own
//! virtual address of it. The regions are mapped into this process and assembled into the same
//! bounds-checked `GuestMemoryMmap` the VMM hands its devices; ring addresses, which the
//! protocol gives in the front end's virtual address space, are translated through the table.

use std::fs::File;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// One region as the front end describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// The front end's virtual address of the region's first byte.
    pub user_addr: u64,
    /// Where the region starts in the file descriptor sent with it.
    pub mmap_offset: u64,
}

/// A memory table this back end refuses. The message names the region (its index in the
/// table) and what is wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryTableError {
    /// No region at all.
    #[error("the memory table has no region")]
    Empty,
    /// A region's length is 0.
    #[error("region {0} is empty")]
    EmptyRegion(usize),
    /// A region's guest, user or file range wraps around or does not fit this process.
    #[error("region {0}: its address range or file offset overflows")]
    Overflow(usize),
    /// Two regions share guest physical addresses.
    #[error("regions {0} and {1} overlap in guest physical memory")]
    GuestOverlap(usize, usize),
    /// Two regions share front-end virtual addresses: ring translation would be ambiguous.
    #[error("regions {0} and {1} overlap in the front end's address space")]
    UserOverlap(usize, usize),
    /// The file offset cannot be mapped (mmap needs a page-aligned offset).
    #[error("region {0}: mmap offset {1:#x} is not page aligned")]
    Unaligned(usize, u64),
    /// The descriptor is not a regular file or memfd: its size cannot be checked.
    #[error("region {0}: the file descriptor is not a regular file or memfd")]
    NotAFile(usize),
    /// The file is shorter than the region: touching the tail would raise SIGBUS.
    #[error("region {index}: it needs {need} bytes of its file, which has {have}")]
    FileTooShort {
        /// The region.
        index: usize,
        /// Offset plus length.
        need: u64,
        /// The file's size.
        have: u64,
    },
    /// A memfd that may shrink under us and accepts no new seal.
    #[error("region {0}: the memfd may be truncated under us and refuses F_SEAL_SHRINK")]
    Unsealable(usize),
    /// mmap or the memory map refused the region.
    #[error("region {0}: cannot map it: {1}")]
    Map(usize, String),
}

/// The mapped regions and the front end's addresses of them.
#[derive(Debug, Clone)]
pub struct MemoryTable {
    mem: GuestMemoryMmap,
    regions: Vec<RegionSpec>,
}

const PAGE_SIZE: u64 = 4096;

/// Checks a table without mapping anything: every region non-empty and without overflow, no
/// two overlapping in guest or user addresses. Holes between regions are allowed (a PC's RAM
/// has one below 1 MiB and one below 4 GiB); an access into a hole fails like any access
/// outside guest memory.
pub fn check_table(regions: &[RegionSpec]) -> Result<(), MemoryTableError> {
    if regions.is_empty() {
        return Err(MemoryTableError::Empty);
    }
    for (i, r) in regions.iter().enumerate() {
        if r.size == 0 {
            return Err(MemoryTableError::EmptyRegion(i));
        }
        let fits = r.guest_phys_addr.checked_add(r.size).is_some()
            && r.user_addr.checked_add(r.size).is_some()
            && r.mmap_offset.checked_add(r.size).is_some()
            && usize::try_from(r.size).is_ok()
            && i64::try_from(r.mmap_offset).is_ok();
        if !fits {
            return Err(MemoryTableError::Overflow(i));
        }
        if r.mmap_offset % PAGE_SIZE != 0 {
            return Err(MemoryTableError::Unaligned(i, r.mmap_offset));
        }
    }
    let overlaps = |a: u64, al: u64, b: u64, bl: u64| a < b + bl && b < a + al;
    for (i, a) in regions.iter().enumerate() {
        for (j, b) in regions.iter().enumerate().skip(i + 1) {
            if overlaps(a.guest_phys_addr, a.size, b.guest_phys_addr, b.size) {
                return Err(MemoryTableError::GuestOverlap(i, j));
            }
            if overlaps(a.user_addr, a.size, b.user_addr, b.size) {
                return Err(MemoryTableError::UserOverlap(i, j));
            }
        }
    }
    Ok(())
}

/// A memfd the front end could truncate after the check above would make our accesses fault:
/// forbid shrinking it (`F_SEAL_SHRINK`; QEMU's memfd back end seals it already). A memfd
/// sealed against new seals but not against shrinking is refused. A regular file cannot be
/// sealed: a front end that truncates one under us can still make this process fault.
fn seal_against_shrinking(file: &File, index: usize) -> Result<(), MemoryTableError> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; F_GET_SEALS takes no argument.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK != 0 {
        // Not a memfd (EINVAL), or already sealed.
        return Ok(());
    }
    if seals & libc::F_SEAL_SEAL != 0 {
        return Err(MemoryTableError::Unsealable(index));
    }
    // SAFETY: fcntl on a descriptor we own with an integer argument.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    if rc < 0 {
        return Err(MemoryTableError::Map(
            index,
            format!(
                "cannot seal the memfd against shrinking: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

impl MemoryTable {
    /// Checks `regions` and maps each from its file (`files[i]` for `regions[i]`).
    pub fn map(regions: &[RegionSpec], files: Vec<File>) -> Result<Self, MemoryTableError> {
        check_table(regions)?;
        let mut mapped: Vec<(u64, GuestRegionMmap)> = Vec::with_capacity(regions.len());
        for (i, (r, file)) in regions.iter().zip(files).enumerate() {
            let meta = file
                .metadata()
                .map_err(|e| MemoryTableError::Map(i, e.to_string()))?;
            if !meta.is_file() {
                return Err(MemoryTableError::NotAFile(i));
            }
            // A mapping past the end of the file faults (SIGBUS) when touched: refuse it here.
            // Checked sums: `check_table` bounded offset + size.
            let need = r.mmap_offset + r.size;
            if need > meta.len() {
                return Err(MemoryTableError::FileTooShort {
                    index: i,
                    need,
                    have: meta.len(),
                });
            }
            seal_against_shrinking(&file, i)?;
            let size = usize::try_from(r.size).map_err(|_| MemoryTableError::Overflow(i))?;
            let region = GuestRegionMmap::from_range(
                GuestAddress(r.guest_phys_addr),
                size,
                Some(FileOffset::new(file, r.mmap_offset)),
            )
            .map_err(|e| MemoryTableError::Map(i, e.to_string()))?;
            mapped.push((r.guest_phys_addr, region));
        }
        mapped.sort_by_key(|(gpa, _)| *gpa);
        let mem = GuestMemoryMmap::from_regions(mapped.into_iter().map(|(_, r)| r).collect())
            .map_err(|e| MemoryTableError::Map(0, e.to_string()))?;
        Ok(MemoryTable {
            mem,
            regions: regions.to_vec(),
        })
    }

    /// The guest memory, bounds-checked on every access.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The guest physical address of the front end's virtual address `user_addr`, if a
    /// region holds it.
    pub fn to_guest(&self, user_addr: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = user_addr.checked_sub(r.user_addr)?;
            (off < r.size).then(|| r.guest_phys_addr + off)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(gpa: u64, size: u64, ua: u64) -> RegionSpec {
        RegionSpec {
            guest_phys_addr: gpa,
            size,
            user_addr: ua,
            mmap_offset: 0,
        }
    }

    #[test]
    fn holes_are_fine_overlaps_are_not() {
        assert_eq!(check_table(&[]), Err(MemoryTableError::Empty));
        check_table(&[r(0, 0xa0000, 0x1000_0000), r(0xc0000, 0x10000, 0x2000_0000)]).unwrap();
        assert_eq!(
            check_table(&[r(0, 0x2000, 0x1000_0000), r(0x1000, 0x1000, 0x2000_0000)]),
            Err(MemoryTableError::GuestOverlap(0, 1))
        );
        assert_eq!(
            check_table(&[r(0, 0x1000, 0x1000_0000), r(0x1000, 0x1000, 0x1000_0800)]),
            Err(MemoryTableError::UserOverlap(0, 1))
        );
        assert_eq!(
            check_table(&[r(u64::MAX - 10, 0x1000, 0)]),
            Err(MemoryTableError::Overflow(0))
        );
        assert_eq!(
            check_table(&[r(0, 0, 0)]),
            Err(MemoryTableError::EmptyRegion(0))
        );
        let mut odd = r(0, 0x1000, 0);
        odd.mmap_offset = 0x10;
        assert_eq!(
            check_table(&[odd]),
            Err(MemoryTableError::Unaligned(0, 0x10))
        );
    }

    #[test]
    fn a_short_file_is_refused_and_addresses_translate() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(0x2000).unwrap();
        let err = MemoryTable::map(&[r(0, 0x3000, 0x7000_0000)], vec![f.try_clone().unwrap()])
            .unwrap_err();
        assert!(
            matches!(err, MemoryTableError::FileTooShort { .. }),
            "{err}"
        );
        let t = MemoryTable::map(&[r(0x10000, 0x2000, 0x7000_0000)], vec![f]).unwrap();
        assert_eq!(t.to_guest(0x7000_0010), Some(0x10010));
        assert_eq!(t.to_guest(0x7000_2000), None);
        assert_eq!(t.to_guest(0x6fff_ffff), None);
    }
}
