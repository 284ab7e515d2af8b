//! The boot GDT and the matching hidden segment state for the PVH entry.
//!
//! The PVH ABI (xen/include/public/arch-x86/hvm/start_info.h) enters in 32-bit protected mode,
//! paging off, with flat 4 GiB code and data segments and a 32-bit TSS in TR "for as long as the
//! guest needs it". The guest loads its own GDT and TSS before relying on either; we still write
//! the descriptors to memory so a segment reload before that gets what the registers hold.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;

/// Selector of the flat 32-bit code segment.
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment (DS, ES, FS, GS, SS).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the placeholder TSS.
pub const TSS_SELECTOR: u16 = 0x20;

/// A descriptor: access/flags word (`flags` bits 0..8 = access byte, 12..16 = G/DB/L/AVL),
/// base and 20-bit limit.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    flags: u16,
    base: u32,
    limit: u32,
}

/// The table: null, null, code32, data, TSS (index = selector / 8).
const GDT: [Descriptor; 5] = [
    Descriptor {
        flags: 0,
        base: 0,
        limit: 0,
    },
    Descriptor {
        flags: 0,
        base: 0,
        limit: 0,
    },
    // G, D/B, present, S, execute/read, accessed.
    Descriptor {
        flags: 0xc09b,
        base: 0,
        limit: 0xfffff,
    },
    // G, D/B, present, S, read/write, accessed.
    Descriptor {
        flags: 0xc093,
        base: 0,
        limit: 0xfffff,
    },
    // Present, 32-bit busy TSS, 104 bytes.
    Descriptor {
        flags: 0x008b,
        base: 0,
        limit: 0x67,
    },
];

impl Descriptor {
    fn encode(self) -> u64 {
        let (f, b, l) = (
            u64::from(self.flags),
            u64::from(self.base),
            u64::from(self.limit),
        );
        ((b & 0xff00_0000) << 32)
            | ((f & 0xf0ff) << 40)
            | ((l & 0x000f_0000) << 32)
            | ((b & 0x00ff_ffff) << 16)
            | (l & 0xffff)
    }

    fn segment(self, selector: u16) -> kvm_segment {
        let bit = |n: u16| ((self.flags >> n) & 1) as u8;
        let g = bit(15);
        kvm_segment {
            base: u64::from(self.base),
            limit: if g == 1 {
                (self.limit << 12) | 0xfff
            } else {
                self.limit
            },
            selector,
            type_: (self.flags & 0xf) as u8,
            present: bit(7),
            dpl: ((self.flags >> 5) & 3) as u8,
            db: bit(14),
            s: bit(4),
            l: bit(13),
            g,
            avl: bit(12),
            unusable: 1 - bit(7),
            padding: 0,
        }
    }
}

/// The hidden state of the segment `selector` selects.
pub fn segment(selector: u16) -> kvm_segment {
    GDT[usize::from(selector / 8) % GDT.len()].segment(selector)
}

/// The GDT limit (size in bytes minus one).
pub fn gdt_limit() -> u16 {
    (GDT.len() * 8 - 1) as u16
}

/// Writes the GDT at `addr`.
pub fn write_gdt(mem: &GuestMemoryMmap, addr: u64) -> Result<(), BootError> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(d.encode(), GuestAddress(addr + 8 * i as u64))
            .map_err(|_| BootError::GuestWrite("the boot GDT"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_like_the_manual() {
        assert_eq!(GDT[2].encode(), 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[3].encode(), 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[4].encode(), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn segments_are_flat() {
        let cs = segment(CODE_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.db, cs.l, cs.g),
            (0, 0xffff_ffff, 0xb, 1, 0, 1)
        );
        let tr = segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.present), (0xb, 0, 0x67, 1));
    }
}
