//! The PCI capability list: IDs, and a walker shared by the device and driver sides.
//!
//! Capabilities form a singly linked list in configuration space starting at the Capabilities
//! Pointer (0x34), each entry beginning with `(id, next)` bytes. The device side appends to the
//! list with [`crate::ConfigSpace::add_capability`]; both sides walk it with
//! [`CapabilityIter`], which is bounded so a hostile or broken list (a loop, a pointer into the
//! header) cannot hang the walker.

/// Capability IDs (PCI Code and ID Assignment Specification).
pub mod id {
    /// PCI Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x01;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// Vendor specific; virtio uses it for its structure capabilities.
    pub const VENDOR_SPECIFIC: u8 = 0x09;
    /// PCI Express.
    pub const PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Offset of the Capabilities Pointer register.
pub const CAPABILITIES_POINTER: u16 = 0x34;

/// First offset after the type-0 header, where capabilities may start.
pub const FIRST_CAPABILITY_OFFSET: u8 = 0x40;

/// Most capabilities a 256-byte configuration space can hold (one per dword after the header).
pub const MAX_CAPABILITIES: usize = (256 - FIRST_CAPABILITY_OFFSET as usize) / 4;

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Capability ID (see [`id`]).
    pub id: u8,
}

/// Iterator over a capability list, reading bytes through a closure `read_u8(offset)`.
///
/// Stops at a null pointer, at a pointer into the header (< 0x40), or after
/// [`MAX_CAPABILITIES`] entries.
#[derive(Clone, Debug)]
pub struct CapabilityIter<F> {
    read_u8: F,
    next: u8,
    remaining: usize,
}

impl<F: FnMut(u16) -> u8> CapabilityIter<F> {
    /// Walks the list of a function whose Capabilities Pointer reads as `read_u8(0x34)`.
    /// Callers check the Capabilities List bit of the status register first.
    pub fn new(mut read_u8: F) -> Self {
        let next = read_u8(CAPABILITIES_POINTER);
        Self {
            read_u8,
            next,
            remaining: MAX_CAPABILITIES,
        }
    }

    /// An iterator that yields nothing (for a function without the Capabilities List bit).
    pub fn empty(read_u8: F) -> Self {
        Self {
            read_u8,
            next: 0,
            remaining: 0,
        }
    }
}

impl<F: FnMut(u16) -> u8> Iterator for CapabilityIter<F> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        // The bottom two bits of a capability pointer are reserved (PCI 3.0, 6.7).
        let offset = self.next & !0b11;
        if self.remaining == 0 || offset < FIRST_CAPABILITY_OFFSET {
            return None;
        }
        self.remaining -= 1;
        let id = (self.read_u8)(u16::from(offset));
        self.next = (self.read_u8)(u16::from(offset) + 1);
        Some(Capability { offset, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walker_is_bounded_and_skips_header_pointers() {
        // 0x40 -> 0x50 -> 0x40 -> ... a loop.
        let mut space = [0u8; 256];
        space[0x34] = 0x40;
        space[0x40] = id::VENDOR_SPECIFIC;
        space[0x41] = 0x50;
        space[0x50] = id::MSIX;
        space[0x51] = 0x40;
        let walked = CapabilityIter::new(|o| space[usize::from(o)]).count();
        assert_eq!(walked, MAX_CAPABILITIES);
        // A pointer into the header ends the walk; reserved low bits are ignored.
        space[0x51] = 0x3c;
        space[0x34] = 0x43;
        let caps: [Option<Capability>; 3] = {
            let mut it = CapabilityIter::new(|o| space[usize::from(o)]);
            [it.next(), it.next(), it.next()]
        };
        assert_eq!(
            caps[0],
            Some(Capability {
                offset: 0x40,
                id: id::VENDOR_SPECIFIC
            })
        );
        assert_eq!(
            caps[1],
            Some(Capability {
                offset: 0x50,
                id: id::MSIX
            })
        );
        assert_eq!(caps[2], None);
    }
}
