//! The bridge from the engine's synchronous ports to the SDK's futures.

use std::future::Future;

use tokio::runtime::Handle;

/// Runs SDK futures to completion on a tokio runtime, from a thread outside it.
#[derive(Clone, Debug)]
pub struct Bridge {
    handle: Handle,
}

impl Bridge {
    /// A bridge onto the runtime `handle` belongs to.
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// The runtime's handle (to spawn concurrent requests).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Blocks the calling thread until `future` completes. The caller must not
    /// be a runtime worker thread (tokio would panic: it is a bug, not input).
    pub fn run<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }
}
