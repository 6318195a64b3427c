//! Where the poller runs: on the caller's tokio runtime when there is one, else on a thread of
//! its own with a single-threaded runtime, so that synchronous programs can use flagpole too.

use tokio::runtime::{Builder, Handle};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::poller::Poller;

pub(crate) enum Runtime {
    /// The runtime `build()` was called on.
    Caller(Handle),
    /// A runtime for a dedicated `flagpole` thread.
    Own(tokio::runtime::Runtime),
}

impl Runtime {
    /// The current runtime, or a new one for a dedicated thread when there is none.
    pub(crate) fn current_or_own() -> Result<Self, Error> {
        if let Ok(handle) = Handle::try_current() {
            return Ok(Runtime::Caller(handle));
        }
        Builder::new_current_thread()
            .enable_all()
            .thread_name("flagpole")
            .build()
            .map(Runtime::Own)
            .map_err(|e| Error::config(format!("cannot start a runtime for the poller: {e}")))
    }

    /// Runs the poller: a task on the caller's runtime (its handle returned), or a thread named
    /// `flagpole` that ends when the poller stops.
    pub(crate) fn run(self, poller: Poller) -> Option<JoinHandle<()>> {
        match self {
            Runtime::Caller(handle) => Some(handle.spawn(poller.run())),
            Runtime::Own(runtime) => {
                let spawned = std::thread::Builder::new()
                    .name("flagpole".into())
                    .spawn(move || runtime.block_on(poller.run()));
                // On failure the poller is dropped with the closure: its status says Stopped.
                if let Err(error) = spawned {
                    tracing::error!(%error, "cannot start the flagpole thread; serving defaults only");
                }
                None
            }
        }
    }
}
