//! Raw disk images and host block devices as virtio-blk backends.
#![deny(missing_docs)]
