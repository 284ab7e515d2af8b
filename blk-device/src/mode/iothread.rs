//! `iothread`: kicks through ioeventfd to the VM's ONE event loop, shared by every disk, which
//! serves them under the VM-wide lock and never polls (QEMU's virtio-ioeventfd with its big
//! lock). The VM starts that loop ([`super::ServeOptions::shared_loop`]); a device only
//! attaches its queues to it.

use std::sync::Arc;

use super::{Activation, Serving};
use crate::error::DeviceError;
use crate::event_loop::EventLoop;

/// The device's queues inside the shared loop.
#[derive(Debug)]
struct Shared {
    event_loop: Arc<EventLoop>,
    slots: Vec<usize>,
}

/// Attaches the queues to the VM's shared loop.
pub fn start(act: Activation<'_>) -> Result<Box<dyn Serving>, DeviceError> {
    let Some(event_loop) = act.serve.shared_loop.clone() else {
        return Err(DeviceError::Config {
            path: act.disk.path().to_path_buf(),
            reason: "io mode iothread needs the VM's shared I/O thread, and none was started"
                .into(),
        });
    };
    let path = act.disk.path().to_path_buf();
    let queues = act.inline_queues()?;
    let slots = event_loop
        .attach(queues)
        .map_err(|source| DeviceError::Fd { path, source })?;
    Ok(Box::new(Shared { event_loop, slots }))
}

impl Serving for Shared {
    fn stop(self: Box<Self>) {
        self.event_loop.detach(&self.slots);
    }
}
