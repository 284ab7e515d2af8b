//! `vhost-user-blk`: a vhost-user-blk back end (QEMU, Cloud Hypervisor... as front ends) whose
//! rings are processed by the project's device model. See the crate's README.

mod backend;
mod cli;
mod memory;
mod notify;
mod server;
mod vring;

use std::sync::{Arc, Mutex};

use blk_device::device::BlockDevice;
use blk_device::metrics::DeviceMetrics;
use blk_device::mode::ServeOptions;

use crate::backend::VhostUserBlk;
use crate::cli::{CliError, Options};
use crate::server::TerminationSignals;

fn main() {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(CliError::Help) => {
            println!("{}", cli::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("vhost-user-blk: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(opts) {
        eprintln!("vhost-user-blk: {e}");
        std::process::exit(1);
    }
}

fn run(opts: Options) -> Result<(), String> {
    // Before any thread exists, so that every ring thread inherits the mask and only the
    // signalfd sees the termination signals.
    let signals = TerminationSignals::block().map_err(|e| format!("signals: {e}"))?;
    let mut serve = ServeOptions::new(opts.mode);
    if let Some(us) = opts.poll_us {
        serve.poll_us = us;
    }
    serve.thread_name = "vublk".into();
    let name = opts.disk.path.display().to_string();
    let device = BlockDevice::open(&opts.disk, serve, Arc::new(DeviceMetrics::new(&name)))
        .map_err(|e| e.to_string())?;
    let listener = server::bind(&opts.socket)
        .map_err(|e| format!("cannot listen on {}: {e}", opts.socket.display()))?;
    eprintln!(
        "vhost-user-blk: serving {name} ({} queues) on {}",
        device.num_queues(),
        opts.socket.display()
    );
    let backend = Arc::new(Mutex::new(VhostUserBlk::new(device)));
    let served = server::serve(&listener, &backend, &signals);
    let _ = std::fs::remove_file(&opts.socket);
    let backend = backend.lock().unwrap_or_else(|p| p.into_inner());
    // `serve` returned with every ring stopped after its in-flight requests.
    backend.device().sync().map_err(|e| format!("sync: {e}"))?;
    served.map_err(|e| e.to_string())?;
    eprintln!("vhost-user-blk: stopped");
    Ok(())
}
