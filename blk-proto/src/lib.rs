//! The virtio-blk protocol (VIRTIO 1.x, 5.2 "Block Device").
#![no_std]
#![deny(missing_docs)]
