//! How handles are made: with a poller on a runtime, or with fixed values and none.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Flags, Inner, Link};
use crate::config::Config;
use crate::fleet::Fleet;
use crate::layers::Layers;
use crate::poller::Poller;
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::status::Status;
use crate::store::Store;
use crate::transport::Transport;

impl Flags {
    pub(crate) fn start(
        config: Config,
        transport: Arc<dyn Transport>,
        store: Option<Arc<dyn Store>>,
        fleet: Fleet,
        parent: CancellationToken,
        runtime: Runtime,
    ) -> Flags {
        let config = Arc::new(config);
        let status = if config.enabled {
            Status::initializing()
        } else {
            Status::Disabled
        };
        let layers = Layers::new(config.defaults.clone(), config.overrides.clone());
        let shared = Arc::new(Shared::new(layers, status));
        if config.stream && config.enabled {
            // The poller opens the stream as it starts: say so from the first status on.
            shared.set_stream(crate::status::StreamState::Connecting, None);
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        // A child token: cancelling ours (on drop or shutdown) leaves the caller's untouched.
        let token = parent.child_token();
        let poller = Poller::new(
            Arc::clone(&config),
            transport,
            store,
            Arc::clone(&shared),
            fleet,
            receiver,
            token.clone(),
        );
        let task = runtime.run(poller);
        Flags {
            inner: Arc::new(Inner {
                shared,
                poller: Some(Link {
                    commands,
                    _guard: token.clone().drop_guard(),
                    token,
                    task: Mutex::new(task),
                }),
            }),
        }
    }

    /// A handle that serves exactly `values` (source [`Defaults`](crate::Source::Defaults)) with no
    /// poller, no runtime and no I/O: for the unit tests of code that reads flags.
    ///
    /// Overrides work as on any handle (in memory only). Remote flags are off: the status is
    /// [`Disabled`](Status::Disabled), [`refresh`](Self::refresh) answers
    /// [`Error::Disabled`](crate::Error::Disabled), and [`set_enabled`](Self::set_enabled) changes nothing.
    ///
    /// ```
    /// use serde_json::json;
    ///
    /// let flags = flagpole::Flags::fixed([("new-checkout", json!(true)), ("max-items", json!(5))]);
    /// assert_eq!(flags.get_bool("new-checkout"), Some(true));
    /// assert_eq!(flags.get_i64("max-items"), Some(5));
    /// assert_eq!(flags.snapshot().source(), flagpole::Source::Defaults);
    /// ```
    pub fn fixed(values: impl IntoIterator<Item = (impl Into<String>, Value)>) -> Flags {
        let values = values.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let mut layers = Layers::new(values, Map::new());
        // No store: the (empty) persisted overrides are all there will be.
        layers.restore_overrides(Map::new());
        Flags {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(layers, Status::Disabled)),
                poller: None,
            }),
        }
    }
}
