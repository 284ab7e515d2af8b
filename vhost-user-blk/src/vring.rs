//! What the front end set up for one ring, and the ring's service while it runs.

use blk_device::device::Active;
use vmm_sys_util::eventfd::EventFd;

/// A ring's areas in the front end's address space (`VHOST_USER_SET_VRING_ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// The descriptor table.
    pub desc: u64,
    /// The available (driver) ring.
    pub avail: u64,
    /// The used (device) ring.
    pub used: u64,
}

/// One ring (virtqueue) of the device.
///
/// Started when it has memory, addresses and a kick eventfd (`VHOST_USER_SET_VRING_KICK`),
/// served while also enabled, stopped by `VHOST_USER_GET_VRING_BASE` (vhost-user.rst, "Ring
/// states"). While stopped it keeps the avail index it resumes at.
#[derive(Debug, Default)]
pub struct Vring {
    /// Queue size (`VHOST_USER_SET_VRING_NUM`); 0 until set.
    pub size: u16,
    /// The ring's areas.
    pub addrs: Option<RingAddrs>,
    /// The avail index the ring (re)starts at (`VHOST_USER_SET_VRING_BASE`).
    pub base: u16,
    /// Readable when the driver kicks.
    pub kick: Option<EventFd>,
    /// `VHOST_USER_SET_VRING_ENABLE`.
    pub enabled: bool,
    /// The ring's service while it runs.
    pub active: Option<Active>,
    /// Guest physical address of the running ring's used ring.
    pub used_gpa: u64,
}
