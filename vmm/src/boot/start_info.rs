//! `hvm_start_info` and its memory map (xen/include/public/arch-x86/hvm/start_info.h, version 1).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;
use crate::memory::{
    ram_ranges, CMDLINE_ADDR, CMDLINE_MAX_BYTES, KERNEL_MIN_ADDR, LOW_RAM_END, MEMMAP_ADDR,
    MEMMAP_MAX_ENTRIES, START_INFO_ADDR,
};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM` (the E820 RAM type).
pub const MEMMAP_TYPE_RAM: u32 = 1;

/// `struct hvm_start_info` (56 bytes, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// Guest physical address of the NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// Guest physical address of the `hvm_memmap_table_entry` array.
    pub memmap_paddr: u64,
    /// Number of memory map entries.
    pub memmap_entries: u32,
}

impl HvmStartInfo {
    /// The structure's bytes: magic, version 1, flags 0, no modules, no RSDP.
    pub fn encode(&self) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[0..4].copy_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes()); // version
                                                      // flags (8), nr_modules (12), modlist_paddr (16): zero.
        b[24..32].copy_from_slice(&self.cmdline_paddr.to_le_bytes());
        // rsdp_paddr (32): zero, no ACPI.
        b[40..48].copy_from_slice(&self.memmap_paddr.to_le_bytes());
        b[48..52].copy_from_slice(&self.memmap_entries.to_le_bytes());
        b
    }
}

/// `struct hvm_memmap_table_entry` (24 bytes).
pub fn encode_memmap_entry(addr: u64, size: u64, kind: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..16].copy_from_slice(&size.to_le_bytes());
    b[16..20].copy_from_slice(&kind.to_le_bytes());
    b
}

/// The RAM the guest may use: low memory below the VGA hole, then RAM from 1 MiB (and above
/// 4 GiB when the RAM is split around the MMIO hole).
pub fn memmap(memory_bytes: u64) -> Vec<(u64, u64)> {
    let mut map = Vec::new();
    for (start, len) in ram_ranges(memory_bytes) {
        if start == 0 {
            map.push((0, LOW_RAM_END.min(len)));
            if len > KERNEL_MIN_ADDR {
                map.push((KERNEL_MIN_ADDR, len - KERNEL_MIN_ADDR));
            }
        } else {
            map.push((start, len));
        }
    }
    map
}

/// Writes the command line, the memory map and `hvm_start_info` at their fixed addresses.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    cmdline: &str,
) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX_BYTES || cmdline.contains('\0') {
        return Err(BootError::CmdlineTooLong(cmdline.len()));
    }
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write_slice(&c, GuestAddress(CMDLINE_ADDR))
        .map_err(|_| BootError::GuestWrite("the command line"))?;

    let map = memmap(memory_bytes);
    if map.len() > MEMMAP_MAX_ENTRIES {
        return Err(BootError::MemmapTooLarge(map.len()));
    }
    for (i, &(addr, size)) in map.iter().enumerate() {
        let at = MEMMAP_ADDR + 24 * i as u64;
        mem.write_slice(
            &encode_memmap_entry(addr, size, MEMMAP_TYPE_RAM),
            GuestAddress(at),
        )
        .map_err(|_| BootError::GuestWrite("the memory map"))?;
    }
    let info = HvmStartInfo {
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
    };
    mem.write_slice(&info.encode(), GuestAddress(START_INFO_ADDR))
        .map_err(|_| BootError::GuestWrite("hvm_start_info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_layout() {
        let b = HvmStartInfo {
            cmdline_paddr: 0x7000,
            memmap_paddr: 0x6040,
            memmap_entries: 2,
        }
        .encode();
        assert_eq!(&b[0..4], &[0x78, 0xc5, 0x6e, 0x33]);
        assert_eq!(b[4], 1);
        assert_eq!(&b[24..26], &[0x00, 0x70]);
        assert_eq!(&b[40..42], &[0x40, 0x60]);
        assert_eq!(b[48], 2);
    }

    #[test]
    fn memmap_covers_ram_but_the_legacy_hole() {
        assert_eq!(
            memmap(256 << 20),
            vec![(0, 0xA_0000), (0x10_0000, (256 << 20) - 0x10_0000)]
        );
        assert_eq!(memmap(4 << 30).len(), 3);
    }

    #[test]
    fn written_where_documented() {
        let mem = crate::memory::create_guest_memory(16 << 20).unwrap();
        write_start_info(&mem, 16 << 20, "console=ttyS0").unwrap();
        let magic: u32 = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC);
        let mut c = [0u8; 14];
        mem.read_slice(&mut c, GuestAddress(CMDLINE_ADDR)).unwrap();
        assert_eq!(&c, b"console=ttyS0\0");
        let ty: u32 = mem.read_obj(GuestAddress(MEMMAP_ADDR + 24 + 16)).unwrap();
        assert_eq!(ty, MEMMAP_TYPE_RAM);
        assert!(write_start_info(&mem, 16 << 20, &"x".repeat(5000)).is_err());
    }
}
