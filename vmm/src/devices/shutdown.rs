//! Device shutdown hooks, run once after every vCPU has stopped and before the VMM exits.
//!
//! A device with work in flight (a disk with queued requests, dirty page cache) registers here;
//! its hook must return only when that work is complete and the image is synced. Hooks run in
//! registration order on the main thread; no vCPU runs any more, so no new guest request arrives.

use std::sync::{Arc, Mutex};

/// Something that must be stopped cleanly when the VM ends.
pub trait Shutdown: Send {
    /// Completes in-flight work, syncs, and stops the device's threads.
    fn shutdown(&mut self);
}

/// The registered shutdown hooks.
#[derive(Default)]
pub struct ShutdownHooks {
    hooks: Vec<(String, Box<dyn FnOnce() + Send>)>,
}

impl std::fmt::Debug for ShutdownHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.hooks.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ShutdownHooks")
            .field("hooks", &names)
            .finish()
    }
}

impl ShutdownHooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a closure; `name` appears in diagnostics.
    pub fn register(&mut self, name: impl Into<String>, hook: impl FnOnce() + Send + 'static) {
        self.hooks.push((name.into(), Box::new(hook)));
    }

    /// Registers a shared device implementing [`Shutdown`].
    pub fn register_device<D: Shutdown + ?Sized + 'static>(
        &mut self,
        name: impl Into<String>,
        dev: Arc<Mutex<D>>,
    ) {
        self.register(name, move || {
            // A poisoned lock means a vCPU panicked inside the device; still try to sync.
            let mut d = dev.lock().unwrap_or_else(|p| p.into_inner());
            d.shutdown();
        });
    }

    /// Runs every hook once, in registration order.
    pub fn run(&mut self) {
        for (_, hook) in self.hooks.drain(..) {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dev(Arc<Mutex<Vec<&'static str>>>);
    impl Shutdown for Dev {
        fn shutdown(&mut self) {
            self.0.lock().unwrap().push("dev");
        }
    }

    #[test]
    fn hooks_run_once_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut hooks = ShutdownHooks::new();
        let l = log.clone();
        hooks.register("first", move || l.lock().unwrap().push("first"));
        hooks.register_device("dev", Arc::new(Mutex::new(Dev(log.clone()))));
        hooks.run();
        hooks.run();
        assert_eq!(*log.lock().unwrap(), ["first", "dev"]);
    }
}
