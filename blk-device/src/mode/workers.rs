//! `workers`: a loop per queue pops and parses (polling while the pool is idle), a pool of
//! worker threads does the I/O, each with its own engine; finished requests come back over a
//! channel and are published in completion order. The design card's shape: handlers hand
//! parsed requests to workers over lock-free channels.

use super::dataplane::PerQueueLoops;
use super::{Activation, Serving};
use crate::error::DeviceError;
use crate::inflight::engine_depth;
use crate::pool::WorkerPool;

/// The queue loops and the pool behind them.
#[derive(Debug)]
struct WithPool {
    loops: Box<PerQueueLoops>,
    pool: WorkerPool,
}

/// Requests one worker's engine holds at most: one maximal ring's worth.
const MAX_WORKER_REQUESTS: usize = 256;

/// Starts the pool (`workers` threads, at least one) and a loop per queue feeding it.
pub fn start(mut act: Activation<'_>) -> Result<Box<dyn Serving>, DeviceError> {
    let path = act.disk.path().to_path_buf();
    let thread_err = |source| DeviceError::Thread {
        path: path.clone(),
        source,
    };
    let setups = std::mem::take(&mut act.queues);
    let sizes: Vec<(u16, u16)> = setups.iter().map(|s| (s.index, s.queue.size())).collect();
    let ring_total: usize = sizes.iter().map(|s| usize::from(s.1)).sum();
    let requests = ring_total.min(MAX_WORKER_REQUESTS);
    let depth = engine_depth(u16::try_from(requests).unwrap_or(u16::MAX));
    let kind = act.engine_kind();
    let engines = (0..act.serve.workers.max(1))
        .map(|_| act.disk.engine(kind, depth))
        .collect::<Result<Vec<_>, _>>()?;
    let traces = (0..=sizes.iter().map(|s| s.0).max().unwrap_or(0))
        .map(|q| act.trace(q))
        .collect();
    let (pool, links) = WorkerPool::start(
        engines,
        act.mem.clone(),
        &sizes,
        traces,
        &act.serve.thread_name,
        &act.serve.hook,
    )
    .map_err(thread_err)?;
    let queues = setups
        .into_iter()
        .zip(links)
        .map(|(setup, link)| act.served(setup, Box::new(link)))
        .collect();
    let loops = PerQueueLoops::start(queues, act.serve.poll_us, act.serve).map_err(thread_err)?;
    Ok(Box::new(WithPool {
        loops: Box::new(loops),
        pool,
    }))
}

impl Serving for WithPool {
    fn stop(self: Box<Self>) {
        // Loops first: each waits for its jobs to come back; dropping their links then lets
        // the workers run out of senders and end.
        let WithPool { loops, mut pool } = *self;
        loops.stop();
        pool.stop();
    }
}
