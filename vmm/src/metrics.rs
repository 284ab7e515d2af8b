//! Writing device metrics: at the end of the run and, optionally, periodically while it runs.
//! The counters themselves are the device model's ([`blk_device::metrics`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use blk_device::metrics::{DeviceMetrics, Histogram};

/// Writes `{"devices":[...]}` to `path`, atomically (a temporary file renamed over it), so a
/// reader never sees half a file.
pub fn write_metrics(path: &Path, devices: &[Arc<DeviceMetrics>]) -> io::Result<()> {
    let mut s = String::from("{\"devices\":[");
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&d.to_json());
    }
    s.push_str("]}\n");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, s)?;
    std::fs::rename(&tmp, path)
}

/// A thread rewriting the metrics file every interval; [`stop`](Self::stop) (or drop) writes
/// it one last time and joins the thread.
#[derive(Debug)]
pub struct PeriodicWriter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl PeriodicWriter {
    /// Stops the thread after a final write; returns that write's result.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("metrics writer thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for PeriodicWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Starts a thread writing [`write_metrics`]`(path, devices)` every `interval` and once more
/// when stopped.
pub fn spawn_periodic_writer(
    path: PathBuf,
    devices: Vec<Arc<DeviceMetrics>>,
    interval: Duration,
) -> io::Result<PeriodicWriter> {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            crate::seccomp::apply_thread(crate::seccomp::ThreadKind::Metrics);
            let (lock, cv) = &*flag;
            let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if *stopped {
                    return write_metrics(&path, &devices);
                }
                // A failed periodic write is retried next period; the final one is reported.
                let _ = write_metrics(&path, &devices);
                stopped = cv
                    .wait_timeout(stopped, interval)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        })?;
    Ok(PeriodicWriter {
        stop,
        handle: Some(handle),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blk_proto::RequestType;

    #[test]
    fn periodic_writer_writes_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let m = Arc::new(DeviceMetrics::new("d"));
        let w =
            spawn_periodic_writer(path.clone(), vec![m.clone()], Duration::from_millis(5)).unwrap();
        m.on_request(RequestType::Flush);
        w.stop().unwrap();
        let s = std::fs::read_to_string(&path).unwrap();
        assert!(s.contains("\"flush\":1"), "{s}");
    }
}
