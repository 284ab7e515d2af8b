//! `vcpu`: no ioeventfd; a kick exits to the vCPU thread, which serves the queue to completion
//! right there (pop, parse, blocking I/O, notify) while holding the VM-wide lock, as an
//! unmodified QEMU without ioeventfd does under its global mutex.

use super::{Activation, Serving};
use crate::error::DeviceError;
use crate::service::QueueService;

/// The queues, served by whichever vCPU thread exits on a notify.
#[derive(Debug)]
struct OnVcpu {
    services: Vec<QueueService>,
}

/// Builds the queue services; nothing runs until the first notify exit.
pub fn start(act: Activation<'_>) -> Result<Box<dyn Serving>, DeviceError> {
    let services = act
        .inline_queues()?
        .into_iter()
        .map(|q| q.service)
        .collect();
    Ok(Box::new(OnVcpu { services }))
}

impl Serving for OnVcpu {
    fn notify(&mut self, queue: u16) -> bool {
        if let Some(s) = self.services.iter_mut().find(|s| s.index() == queue) {
            s.serve_kick();
        }
        true
    }

    fn stop(mut self: Box<Self>) {
        self.services.iter_mut().for_each(QueueService::quiesce);
    }
}
