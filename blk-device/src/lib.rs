#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod config;
pub mod device;
pub mod disk;
pub mod error;
pub mod event_loop;
pub mod failure_log;
pub mod features;
pub mod guest_iovec;
pub mod handoff;
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
pub mod throttle;
pub mod trace;
