//! `workers`: a loop per queue pops and parses (polling while the pool is idle) and hands
//! parsed requests over lock-free channels to a pool of worker threads, each with its own
//! engine, when that gains parallelism ([`crate::handoff`]); otherwise the loop runs them on
//! its own engine. Finished requests are published in completion order. With no workers (a
//! host with no core to spare) every request runs inline, as in `dataplane`.

use super::dataplane::PerQueueLoops;
use super::{Activation, Serving};
use crate::error::DeviceError;
use crate::handoff::Handoff;
use crate::inflight::engine_depth;
use crate::pool::WorkerPool;
use crate::scheduler::Inline;

/// The queue loops and the pool behind them (none with zero workers).
#[derive(Debug)]
struct WithPool {
    loops: Box<PerQueueLoops>,
    pool: Option<WorkerPool>,
}

/// Requests one worker's engine holds at most: one maximal ring's worth.
const MAX_WORKER_REQUESTS: usize = 256;

/// Starts the pool (`workers` threads) and a loop per queue feeding it.
pub fn start(mut act: Activation<'_>) -> Result<Box<dyn Serving>, DeviceError> {
    let path = act.disk.path().to_path_buf();
    let thread_err = |source| DeviceError::Thread {
        path: path.clone(),
        source,
    };
    if act.serve.workers == 0 {
        let serve = act.serve;
        let queues = act.inline_queues()?;
        let loops = PerQueueLoops::start(queues, serve.poll_us, serve).map_err(thread_err)?;
        return Ok(Box::new(WithPool {
            loops: Box::new(loops),
            pool: None,
        }));
    }
    let setups = std::mem::take(&mut act.queues);
    let sizes: Vec<(u16, u16)> = setups.iter().map(|s| (s.index, s.queue.size())).collect();
    let ring_total: usize = sizes.iter().map(|s| usize::from(s.1)).sum();
    let requests = ring_total.min(MAX_WORKER_REQUESTS);
    let depth = engine_depth(u16::try_from(requests).unwrap_or(u16::MAX));
    let kind = act.engine_kind();
    let engines = (0..act.serve.workers)
        .map(|_| act.disk.engine_over(kind, depth, &act.mem))
        .collect::<Result<Vec<_>, _>>()?;
    let traces = (0..=sizes.iter().map(|s| s.0).max().unwrap_or(0))
        .map(|q| act.trace(q))
        .collect();
    let (pool, links) = WorkerPool::start(
        engines,
        act.disk.merge(),
        act.mem.clone(),
        &sizes,
        traces,
        &act.serve.thread_name,
        &act.serve.hook,
        Some(act.observers.metrics.clone()),
    )
    .map_err(thread_err)?;
    let mut queues = Vec::with_capacity(setups.len());
    for (setup, link) in setups.into_iter().zip(links) {
        let engine = act
            .disk
            .engine_over(kind, engine_depth(setup.queue.size()), &act.mem)?;
        let inline = Inline::new(engine, act.disk.merge())
            .recording_threads_in(act.observers.metrics.clone());
        queues.push(act.served(
            setup,
            Box::new(Handoff::new(inline, kind, link, act.serve.handoff_depth)),
        )?);
    }
    let loops = PerQueueLoops::start(queues, act.serve.poll_us, act.serve).map_err(thread_err)?;
    Ok(Box::new(WithPool {
        loops: Box::new(loops),
        pool: Some(pool),
    }))
}

impl Serving for WithPool {
    fn stop(self: Box<Self>) {
        // Loops first: each waits for its jobs to come back; dropping their links then lets
        // the workers run out of senders and end.
        let WithPool { loops, pool } = *self;
        loops.stop();
        if let Some(mut pool) = pool {
            pool.stop();
        }
    }
}
