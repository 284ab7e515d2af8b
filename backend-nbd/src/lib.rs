#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod connection;
mod engine;
mod error;
mod export;
mod handshake;
pub mod proto;
mod stats;
mod uri;

pub use engine::NbdEngine;
pub use error::NbdError;
pub use export::{NbdExport, NbdOptions, ThreadStart};
pub use handshake::{ExportInfo, DEFAULT_MAX_PAYLOAD};
pub use stats::{NbdStats, NbdStatsHandle};
pub use uri::{NbdAddress, NbdUri, UriError, NBD_DEFAULT_PORT};
