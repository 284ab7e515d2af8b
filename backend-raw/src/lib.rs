#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod blocking;
mod bounce;
mod disk;
mod disk_info;
mod engine;
mod engine_fault;
mod engine_log;
mod engine_sync;
mod engine_uring;
mod error;
mod fault_spec;

pub use disk::{Disk, DiskOptions};
pub use disk_info::DioAlignment;
pub use engine::{
    rdtsc, Completion, Engine, EngineKind, IoOp, ParseEngineKindError, WireTimes, MAX_DEPTH,
    MAX_IOVECS,
};
pub use engine_fault::{with_faults, FaultEngine};
pub use engine_log::{durable_prefix, parse_log, rebuild_image, LogEngine, LogRecord, WriteLog};
pub use error::Error;
pub use fault_spec::{FaultOp, FaultRule, FaultSpec, FaultSpecError};
/// `struct iovec` (`libc::iovec`), the buffer description [`Engine::submit`] takes, so that a
/// caller needs no `libc` dependency of its own to name it.
pub use libc::iovec;
