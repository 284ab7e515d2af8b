//! PCI configuration space and the virtio-pci modern transport (VIRTIO 1.x, 4.1 "Virtio Over PCI Bus").
#![no_std]
#![deny(missing_docs)]
