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
use blk_device::threads::{ThreadHook, ThreadRole};
use vmm::seccomp::{SeccompMode, ThreadKind};

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
    serve.hook = confine(opts.seccomp);
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
    if let Some(path) = &opts.metrics {
        std::fs::write(path, backend.device().metrics().to_json())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    served.map_err(|e| e.to_string())?;
    eprintln!("vhost-user-blk: stopped");
    Ok(())
}

/// Confines every ring and worker thread to the VMM's allowlist for the same role: they run
/// the same device-model code (epoll on kicks, disk I/O, eventfd writes). The thread that
/// talks to the front end (accept, recvmsg with descriptors, mmap of its memory) is not
/// filtered.
fn confine(mode: SeccompMode) -> ThreadHook {
    ThreadHook::new(move |role| {
        let Some(violation) = mode.violation() else {
            return;
        };
        let kind = match role {
            ThreadRole::Queue => ThreadKind::Device,
            ThreadRole::Worker => ThreadKind::Worker,
            ThreadRole::Connection => ThreadKind::Network,
        };
        if let Err(e) = vmm::seccomp::apply(kind, violation) {
            // An unconfined ring thread would serve a hostile guest without its filter.
            eprintln!("vhost-user-blk: {e}");
            std::process::abort();
        }
    })
}
