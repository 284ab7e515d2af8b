//! A virtio-blk device model (VIRTIO 1.x, 5.2 "Block Device") that knows nothing of KVM or
//! PCI: a transport hands it the enabled queues at DRIVER_OK and a way to notify the driver,
//! and it serves them with one request lifecycle in any of four I/O modes.
//!
//! Reading order, following one request:
//! - [`device::BlockDevice`]: the disk, its features and config ([`features`]), and
//!   activation: the I/O mode's row of the table in [`mode`] starts the serving threads.
//! - [`event_loop::EventLoop`] (or the vCPU thread, in [`mode::vcpu`]) calls
//!   [`service::QueueService::process`] when the queue's kick eventfd fires.
//! - [`service`]: pop a chain, [`request`] parses it into a preallocated job over guest
//!   iovecs ([`guest_iovec`]), the [`scheduler`] runs it: on the serving thread's own engine
//!   ([`scheduler::Inline`]) or on a pool worker ([`pool`]); both keep their requests in one
//!   generation-tagged [`inflight`] table, which writes the status byte when the I/O is done.
//! - back in [`service`]: used elements in completion order, one notification decision per
//!   batch, and the transport's [`interrupt::Interrupt`].
//!
//! ```
//! use std::sync::Arc;
//! use blk_device::config::DiskConfig;
//! use blk_device::device::BlockDevice;
//! use blk_device::metrics::DeviceMetrics;
//! use blk_device::mode::{IoMode, ServeOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.img");
//! std::fs::File::create(&path)?.set_len(1 << 20)?;
//! let cfg = DiskConfig::parse(&format!("path={},queues=2", path.display()))?;
//! let dev = BlockDevice::open(&cfg, ServeOptions::new(IoMode::Dataplane), Arc::new(DeviceMetrics::new("d")))?;
//! assert_eq!(dev.config().capacity.get(), 2048);
//! assert_eq!(dev.num_queues(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod config;
pub mod device;
pub mod disk;
pub mod error;
pub mod event_loop;
pub mod failure_log;
pub mod features;
pub mod guest_iovec;
pub mod health;
pub mod inflight;
pub mod interrupt;
pub mod metrics;
pub mod mode;
pub mod poll;
pub mod pool;
pub mod request;
pub mod scheduler;
pub mod service;
pub mod threads;
pub mod trace;
