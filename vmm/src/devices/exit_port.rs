//! The exit port: a write of `v` at 0xF4 ends the VM with exit status `v` (like QEMU's
//! `isa-debug-exit`, without its `(v << 1) | 1` encoding).

use std::sync::Arc;

use super::BusDevice;
use crate::stop::{StopLatch, StopReason};

/// The port the guest writes its exit status to.
pub const EXIT_PORT: u64 = 0xf4;
/// Ports decoded (a 32-bit `out` at 0xF4 covers four).
pub const EXIT_PORT_LEN: u64 = 4;

/// Turns a write into a stop request.
#[derive(Debug)]
pub struct ExitPort {
    stop: Arc<StopLatch>,
}

impl ExitPort {
    /// An exit port that stops the VM through `stop`.
    pub fn new(stop: Arc<StopLatch>) -> Self {
        ExitPort { stop }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a write at the port itself counts; the value is little-endian of any width.
        if offset != 0 {
            return;
        }
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        self.stop
            .request(StopReason::ExitPort(u32::from_le_bytes(v)));
    }
}
