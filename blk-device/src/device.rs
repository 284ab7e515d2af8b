//! A virtio-blk device without a transport: the disk, what it offers, and starting and
//! stopping the service of its queues. A transport (virtio-pci in the VMM, vhost-user) owns
//! the registers and the notifications, and calls [`BlockDevice::activate`] at DRIVER_OK and
//! [`Active::stop`] at reset.

use std::sync::Arc;

use blk_proto::{DeviceLimits, Features, VirtioBlkConfig};
use vm_memory::GuestMemoryMmap;

use crate::config::{DiskConfig, MAX_QUEUES, MAX_QUEUE_SIZE};
use crate::disk::OpenDisk;
use crate::error::DeviceError;
use crate::failure_log::FailureLog;
use crate::features::{device_config, offered_features};
use crate::health::DeviceHealth;
use crate::interrupt::Interrupt;
use crate::metrics::DeviceMetrics;
use crate::mode::{Activation, QueueSetup, ServeOptions, Serving};
use crate::request::RequestParser;
use crate::service::Observers;
use crate::throttle::{DiskThrottle, MonotonicClock};

/// A virtio-blk device over a raw image or block device.
#[derive(Debug)]
pub struct BlockDevice {
    disk: OpenDisk,
    serial: String,
    queues: u16,
    offered: Features,
    config: VirtioBlkConfig,
    serve: ServeOptions,
    health: Arc<DeviceHealth>,
    metrics: Arc<DeviceMetrics>,
    /// Failed requests of every queue, logged up to a cap.
    failures: Arc<FailureLog>,
    /// The disk's limits and group (`None`: unlimited).
    throttle: Option<Arc<DiskThrottle>>,
}

/// The device while its queues are served; [`Active::stop`] (or drop) ends that.
#[derive(Debug)]
pub struct Active {
    serving: Option<Box<dyn Serving>>,
}

impl Active {
    /// A kick for `queue` that arrived on the caller's thread. Returns `true` when the mode
    /// served it here (`vcpu`); otherwise the transport passes it on to the queue's eventfd.
    pub fn notify(&mut self, queue: u16) -> bool {
        self.serving.as_mut().is_some_and(|s| s.notify(queue))
    }

    /// Stops serving after in-flight requests complete.
    pub fn stop(mut self) {
        if let Some(s) = self.serving.take() {
            s.stop();
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(s) = self.serving.take() {
            s.stop();
        }
    }
}

impl BlockDevice {
    /// Opens the disk of `cfg`; its queues will be served as `serve` says, counted in
    /// `metrics`.
    pub fn open(
        cfg: &DiskConfig,
        serve: ServeOptions,
        metrics: Arc<DeviceMetrics>,
    ) -> Result<Self, DeviceError> {
        check_config(cfg, &serve)?;
        let disk = OpenDisk::open(cfg, &serve.hook)?;
        let offered = offered_features(&disk, cfg);
        let config = device_config(&disk, cfg, offered);
        if let Some(nbd) = disk.nbd_stats() {
            metrics.set_nbd(nbd);
        }
        let throttle = DiskThrottle::new(
            Some(&cfg.limits),
            serve.throttle_group.clone(),
            Arc::new(MonotonicClock),
        );
        Ok(BlockDevice {
            throttle,
            failures: Arc::new(FailureLog::new(&cfg.path)),
            disk,
            serial: cfg.serial.clone(),
            queues: cfg.queues,
            offered,
            config,
            serve,
            health: Arc::new(DeviceHealth::default()),
            metrics,
        })
    }

    /// The disk.
    pub fn disk(&self) -> &OpenDisk {
        &self.disk
    }

    /// Request queues the device has.
    pub fn num_queues(&self) -> u16 {
        self.queues
    }

    /// The features the device offers.
    pub fn offered_features(&self) -> Features {
        self.offered
    }

    /// The configuration space.
    pub fn config(&self) -> &VirtioBlkConfig {
        &self.config
    }

    /// Where serving threads report DEVICE_NEEDS_RESET.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.health
    }

    /// The device's counters.
    pub fn metrics(&self) -> &Arc<DeviceMetrics> {
        &self.metrics
    }

    /// How the queues are served.
    pub fn serve_options(&self) -> &ServeOptions {
        &self.serve
    }

    /// DRIVER_OK: serves `queues` (the enabled ones) of guest memory `mem` with the limits of
    /// the `negotiated` features, notifying through `interrupt`.
    pub fn activate(
        &self,
        negotiated: Features,
        mem: GuestMemoryMmap,
        queues: Vec<QueueSetup>,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<Active, DeviceError> {
        let limits = DeviceLimits::from_config(&self.config, self.offered, negotiated);
        let parser = RequestParser::new(limits, &self.serial).with_metrics(self.metrics.clone());
        let act = Activation {
            queues,
            mem,
            parser,
            observers: Observers {
                interrupt,
                health: self.health.clone(),
                metrics: self.metrics.clone(),
                failures: self.failures.clone(),
            },
            disk: &self.disk,
            serve: &self.serve,
            throttle: self.throttle.clone(),
        };
        let serving = (self.serve.mode.properties().start)(act)?;
        Ok(Active {
            serving: Some(serving),
        })
    }

    /// Makes every completed write durable (`fdatasync`); a transport calls it at exit.
    pub fn sync(&self) -> Result<(), String> {
        self.disk.sync()
    }
}

/// Checks what the `--disk` grammar cannot: the transport-independent bounds.
fn check_config(cfg: &DiskConfig, serve: &ServeOptions) -> Result<(), DeviceError> {
    let bad = |reason: String| {
        Err(DeviceError::Config {
            path: cfg.path.clone(),
            reason,
        })
    };
    if cfg.queues == 0 || cfg.queues > MAX_QUEUES {
        return bad(format!(
            "num-queues={} is out of range: use 1..={MAX_QUEUES}",
            cfg.queues
        ));
    }
    if !cfg.queue_size.is_power_of_two() || cfg.queue_size > MAX_QUEUE_SIZE {
        return bad(format!(
            "queue-size={} must be a power of two up to {MAX_QUEUE_SIZE}",
            cfg.queue_size
        ));
    }
    if cfg.group.is_some() != serve.throttle_group.is_some() {
        return bad(format!(
            "group={} has no --throttle-group of that name: add --throttle-group name=G,iops=N",
            cfg.group.as_deref().unwrap_or("")
        ));
    }
    Ok(())
}
