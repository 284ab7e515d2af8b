//! The threads the device model starts, and the hook their owner runs in each of them first
//! (a VMM installs its per-thread seccomp filter there).

use std::sync::Arc;

/// What a thread started by the device model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Serves queues: pops, parses, publishes (and, but in `workers` mode, does the I/O).
    Queue,
    /// A pool worker: does the I/O of parsed requests.
    Worker,
    /// The thread of a connection to a network block server (NBD): reconnects (a socket,
    /// `connect`, the handshake) and finishes sends the socket could not take at once.
    Connection,
}

/// Called first thing in every thread the device model starts. Cheap to clone.
#[derive(Clone)]
pub struct ThreadHook(Arc<dyn Fn(ThreadRole) + Send + Sync>);

impl ThreadHook {
    /// A hook running `f`.
    ///
    /// ```
    /// use blk_device::threads::{ThreadHook, ThreadRole};
    /// let hook = ThreadHook::new(|role| assert_eq!(role, ThreadRole::Worker));
    /// hook.run(ThreadRole::Worker);
    /// ```
    pub fn new(f: impl Fn(ThreadRole) + Send + Sync + 'static) -> Self {
        ThreadHook(Arc::new(f))
    }

    /// A hook that does nothing.
    pub fn none() -> Self {
        ThreadHook::new(|_| {})
    }

    /// Runs the hook for a thread of `role`.
    pub fn run(&self, role: ThreadRole) {
        (self.0)(role)
    }
}

impl Default for ThreadHook {
    fn default() -> Self {
        ThreadHook::none()
    }
}

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}
