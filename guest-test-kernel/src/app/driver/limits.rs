//! How many request queues the driver sets up, and how large. These live apart from `blk`
//! because the trace log sizes its per-queue tables by them while `blk` calls the trace
//! hooks: both files depend on this one, and `trace` does not depend on `blk`.

/// Most request queues driven.
pub const MAX_QUEUES: usize = 4;
/// Largest queue size we ask for.
pub const QUEUE_SIZE_LIMIT: u16 = 256;
