//! `dataplane`: one event loop per queue, outside any VM-wide lock; kicks through ioeventfd,
//! the I/O on the loop's own engine, notifications through irqfd, adaptive polling before
//! each sleep.

use super::{Activation, Serving};
use crate::error::DeviceError;
use crate::event_loop::{EventLoop, LoopOptions, ServedQueue};

/// One loop per queue.
#[derive(Debug)]
pub(super) struct PerQueueLoops {
    loops: Vec<(EventLoop, Vec<usize>)>,
}

/// Starts a polling loop per queue, each serving its queue on its own engine.
pub fn start(act: Activation<'_>) -> Result<Box<dyn Serving>, DeviceError> {
    let (path, serve) = (act.disk.path().to_path_buf(), act.serve);
    let queues = act.inline_queues()?;
    let loops = PerQueueLoops::start(queues, serve.poll_us, serve).map_err(|source| {
        DeviceError::Thread {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Box::new(loops))
}

impl PerQueueLoops {
    /// A loop per queue, polling up to `poll_us`.
    pub(super) fn start(
        queues: Vec<ServedQueue>,
        poll_us: u32,
        serve: &super::ServeOptions,
    ) -> std::io::Result<Self> {
        let mut loops = PerQueueLoops { loops: Vec::new() };
        for q in queues {
            let index = q.service.index();
            let l = EventLoop::start(LoopOptions {
                name: format!("{}-q{index}", serve.thread_name),
                poll_us,
                poll_in_flight: serve.poll_in_flight,
                lock: None,
                hook: serve.hook.clone(),
            });
            // On failure `loops` drops: the loops started so far stop and their queues go.
            let l = l?;
            let slots = l.attach(vec![q])?;
            loops.loops.push((l, slots));
        }
        Ok(loops)
    }
}

impl Serving for PerQueueLoops {
    fn stop(self: Box<Self>) {
        for (l, slots) in self.loops {
            l.stop();
            l.detach(&slots);
        }
    }
}
