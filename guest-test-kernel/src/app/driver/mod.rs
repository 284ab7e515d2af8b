//! The guest's virtio-blk driver and what it stands on: PCI configuration access, the
//! virtio-pci transport, device registers, DMA memory, the ring memory accessor and the
//! request trace hooks. Nothing here knows about the test suites.

pub mod blk;
pub mod dma;
pub mod limits;
pub mod memory;
pub mod mmio;
pub mod pci;
pub mod trace;
pub mod virtio_pci;
