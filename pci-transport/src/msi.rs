//! What a function sends to signal an MSI-X vector, and how many vectors it stores: shared by
//! the [`msix`](crate::msix) table and the [`Event`](crate::Event)s it reports.

/// Most MSI-X vectors this crate stores per function (the PCI limit is 2048).
pub const MAX_MSIX_VECTORS: usize = 64;

/// An MSI message: write `data` (32 bits) to `address`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixMessage {
    /// Message address (a LAPIC address on x86).
    pub address: u64,
    /// Message data.
    pub data: u32,
}
