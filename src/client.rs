//! The public handle: refresh, subscriptions, status, shutdown; the reads are in `client/read.rs`.

mod read;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Config;
use crate::error::Error;
use crate::layers::{Layers, OverrideOp};
use crate::poller::{Command, Poller};
use crate::reply::{Refresh, Saved, SetEnabled, Shutdown};
use crate::runtime::Runtime;
use crate::shared::Shared;
use crate::snapshot::{Snapshot, Source};
use crate::status::Status;
use crate::store::Store;
use crate::transport::Transport;

/// A handle on the live flag set. Cheap to clone; every clone reads the same flags.
///
/// Reads ([`value`](Self::value) of a typed [`Flag`](crate::Flag), `get_*` by name,
/// [`snapshot`](Self::snapshot)) are plain synchronous calls: they load the
/// current [`Snapshot`] from an `ArcSwap` and never await, lock or (for scalars) allocate, so
/// they are safe on any hot path and in any thread. One background task, spawned by
/// [`FlagsBuilder::build`](crate::FlagsBuilder::build), does all I/O.
///
/// The poller stops when [`shutdown`](Self::shutdown) is called, the cancellation token given to
/// the builder is cancelled, or the last clone of the handle is dropped. Reads keep serving the
/// last snapshot after that.
///
/// ```
/// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
/// # struct Api; // a stand-in for the flag service
/// # impl Transport for Api {
/// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
/// #         let body = br#"[{"beta": true}, {"banner": "hi"}, {"max": 3}]"#.to_vec();
/// #         Box::pin(async move { Ok(Response::new(http::StatusCode::OK, Default::default(), body)) })
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flagpole::Error> {
/// use std::time::Duration;
/// use flagpole::{Flag, Flags, Source};
///
/// static BETA: Flag<bool> = Flag::new("beta", false);
///
/// let flags = Flags::builder()
///     .transport(Api) // the default is HTTP to the Client Config API
///     .default_flag("beta", false)
///     .build()?;
/// assert!(flags.wait_until_ready(Duration::from_secs(5)).await);
/// assert_eq!(flags.snapshot().source(), Source::Network);
/// assert!(flags.value(&BETA));
/// assert_eq!(flags.get_i64("max"), Some(3));
/// assert!(flags.status().is_fresh());
/// flags.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Flags {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// None for a handle of [fixed](Flags::fixed) values: there is no poller.
    poller: Option<Link>,
}

/// The way to the poller.
struct Link {
    commands: mpsc::UnboundedSender<Command>,
    token: CancellationToken,
    /// The poller's task on the caller's runtime; `None` once taken by a `shutdown`, and on a
    /// dedicated thread (whose end shows as the `Stopped` status).
    task: Mutex<Option<JoinHandle<()>>>,
    // Cancels the poller when the last handle goes away.
    _guard: DropGuard,
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.inner.shared.load();
        f.debug_struct("Flags")
            .field("source", &snapshot.source())
            .field("flags", &snapshot.len())
            .field("status", &self.status().as_str())
            .finish()
    }
}

impl Flags {
    pub(crate) fn start(
        config: Config,
        transport: Arc<dyn Transport>,
        store: Option<Arc<dyn Store>>,
        parent: CancellationToken,
        runtime: Runtime,
    ) -> Flags {
        let config = Arc::new(config);
        let status = if config.enabled {
            Status::Initializing
        } else {
            Status::Disabled
        };
        let layers = Layers::new(config.defaults.clone(), config.overrides.clone());
        let shared = Arc::new(Shared::new(layers, status));
        let (commands, receiver) = mpsc::unbounded_channel();
        // A child token: cancelling ours (on drop or shutdown) leaves the caller's untouched.
        let token = parent.child_token();
        let poller = Poller::new(
            Arc::clone(&config),
            transport,
            store,
            Arc::clone(&shared),
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

    /// A handle that serves exactly `values` (source [`Defaults`](Source::Defaults)) with no
    /// poller, no runtime and no I/O: for the unit tests of code that reads flags.
    ///
    /// Overrides work as on any handle (in memory only). Remote flags are off: the status is
    /// [`Disabled`](Status::Disabled), [`refresh`](Self::refresh) answers
    /// [`Error::Disabled`], and [`set_enabled`](Self::set_enabled) changes nothing.
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

    /// Sends `command` to the poller; `Err` with what the caller should hear when there is none.
    fn send(&self, command: Command) -> Result<(), Error> {
        match &self.inner.poller {
            Some(link) => link.commands.send(command).map_err(|_| Error::Stopped),
            None => Err(Error::Disabled),
        }
    }

    /// Fetches now and returns the resulting snapshot.
    ///
    /// The request is queued when this is called, and the answer always comes from a fetch that
    /// started after that. Concurrent calls share fetches: at most one request is in flight and
    /// one queued, however many callers wait.
    ///
    /// # Errors
    /// The fetch's error (the last good flags stay served); [`Error::Disabled`] at once when remote
    /// flags are off; [`Error::RetryAfter`] at once while the server's `Retry-After` runs (no
    /// request is made; the poller retries when it ends); [`Error::Stopped`] at once when the
    /// poller has stopped.
    ///
    /// The answer comes as soon as the new flags are published, before they are saved; await
    /// [`flush`](Self::flush) to wait for the store.
    ///
    /// # Cancellation safety
    /// Dropping the future does not cancel the fetch; other callers still get its result.
    ///
    /// ```
    /// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
    /// # struct Api; // a stand-in for the flag service
    /// # impl Transport for Api {
    /// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
    /// #         let body = br#"[{"beta": true}, {"banner": "hi"}, {"max": 3}]"#.to_vec();
    /// #         Box::pin(async move { Ok(Response::new(http::StatusCode::OK, Default::default(), body)) })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = flagpole::Flags::builder().transport(Api).build()?;
    /// // Three callers, at most two requests (one in flight, one queued).
    /// let (a, b, c) = tokio::join!(flags.refresh(), flags.refresh(), flags.refresh());
    /// assert_eq!(a?.get_bool("beta"), Some(true));
    /// assert!(b.is_ok() && c.is_ok());
    ///
    /// flags.set_enabled(false).await;
    /// assert!(matches!(flags.refresh().await, Err(flagpole::Error::Disabled)));
    /// # Ok(()) }
    /// ```
    pub fn refresh(&self) -> Refresh {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Command::Refresh(reply));
        Refresh::new(async move {
            sent?;
            answer.await.unwrap_or(Err(Error::Stopped))
        })
    }

    /// Switches remote flags on or off (privacy). Off: the request in flight is aborted, no
    /// further request is made, and only defaults are served. On again: the last remote flags come
    /// back and a fetch starts at once unless they are still fresh.
    ///
    /// The change is queued when this is called; the future completes once it is in effect
    /// (reads from then on see it).
    ///
    /// # Cancellation safety
    /// Dropping the future does not undo the change.
    ///
    /// ```
    /// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
    /// # struct Api; // a stand-in for the flag service
    /// # impl Transport for Api {
    /// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
    /// #         let body = br#"[{"beta": true}, {"banner": "hi"}, {"max": 3}]"#.to_vec();
    /// #         Box::pin(async move { Ok(Response::new(http::StatusCode::OK, Default::default(), body)) })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// use std::time::Duration;
    ///
    /// let flags = flagpole::Flags::builder()
    ///     .transport(Api)
    ///     .default_flag("beta", false)
    ///     .build()?;
    /// flags.wait_until_ready(Duration::from_secs(5)).await;
    /// assert_eq!(flags.get_bool("beta"), Some(true)); // remote
    /// flags.set_enabled(false).await; // the user opted out
    /// assert_eq!(flags.get_bool("beta"), Some(false)); // defaults only
    /// assert_eq!(flags.status().as_str(), "disabled");
    /// # Ok(()) }
    /// ```
    pub fn set_enabled(&self, enabled: bool) -> SetEnabled {
        let (ack, done) = oneshot::channel();
        let sent = self.send(Command::SetEnabled(enabled, ack));
        SetEnabled::new(async move {
            if sent.is_ok() {
                let _ = done.await;
            }
        })
    }

    /// Serves `value` for the flag `name` over remote flags and defaults, as given (never
    /// processed), until removed. Persisted in the store and restored at the next start.
    ///
    /// The new snapshot is published before this returns, without a fetch; the future only
    /// waits for the save (`drop` it to not wait).
    ///
    /// # Errors
    /// The store's error if the save failed (the override still holds in memory); the load
    /// error while the store could not be read (nothing is written over a record that was not
    /// read; the override is saved once a load succeeds); [`Error::Stopped`] when the poller
    /// has stopped (nothing more is saved).
    ///
    /// # Cancellation safety
    /// Dropping the future does not undo the change or stop the save.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("theme", "light")
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// let saved = flags.set_override("theme", "dark");
    /// assert_eq!(flags.get_str("theme").as_deref(), Some("dark")); // already served
    /// saved.await.unwrap();
    /// flags.remove_override("theme").await.unwrap();
    /// assert_eq!(flags.get_str("theme").as_deref(), Some("light"));
    /// # }
    /// ```
    pub fn set_override(&self, name: impl Into<String>, value: impl Into<Value>) -> Saved {
        self.change_override(OverrideOp::Set(name.into(), value.into()))
    }

    /// Removes the override of `name`: the remote value (or the default) is served again.
    /// Published at once and persisted as [`set_override`](Self::set_override) is.
    pub fn remove_override(&self, name: &str) -> Saved {
        self.change_override(OverrideOp::Remove(name.to_owned()))
    }

    /// Removes every override set with [`set_override`](Self::set_override) (those given to
    /// the builder stay). Published at once and persisted as `set_override` is.
    pub fn clear_overrides(&self) -> Saved {
        self.change_override(OverrideOp::Clear)
    }

    /// The overrides set with [`set_override`](Self::set_override), by name.
    pub fn overrides(&self) -> Map<String, Value> {
        self.inner.shared.read(|layers| layers.overrides().clone())
    }

    fn change_override(&self, op: OverrideOp) -> Saved {
        self.inner
            .shared
            .update(|layers| layers.change_override(op));
        self.save()
    }

    /// Asks the poller for a save of the state held now; with no poller there is nothing to
    /// save.
    fn save(&self) -> Saved {
        let (reply, saved) = oneshot::channel();
        let sent = self.send(Command::Save(reply));
        Saved::new(async move {
            match sent {
                Ok(()) => saved.await.unwrap_or(Err(Error::Stopped)),
                Err(Error::Disabled) => Ok(()),
                Err(error) => Err(error),
            }
        })
    }

    /// Waits until the store holds the flags and overrides served now: a save of the state held
    /// when this is called, whether or not a save was due (a store that is not configured
    /// answers at once).
    ///
    /// Saves run beside the poller and never delay reads, refreshes or
    /// [`shutdown`](Self::shutdown); a refresh answers before its save ends. Await this before a
    /// process exits to be sure the next start finds what this one fetched.
    ///
    /// # Errors
    /// The store's error; the load error while the store could not be read (nothing is written
    /// over a record that was not read); [`Error::Stopped`] when the poller has stopped.
    ///
    /// # Cancellation safety
    /// Dropping the future does not stop the save.
    ///
    /// ```
    /// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
    /// # struct Api; // a stand-in for the flag service
    /// # impl Transport for Api {
    /// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
    /// #         Box::pin(async { Ok(Response::new(http::StatusCode::OK, Default::default(), br#"{"beta":true}"#.to_vec())) })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let store = flagpole::MemoryStore::new();
    /// let flags = flagpole::Flags::builder().transport(Api).store(store.clone()).build()?;
    /// flags.refresh().await?;
    /// flags.flush().await?;
    /// assert_eq!(store.get().expect("saved").flags["beta"], true);
    /// # Ok(()) }
    /// ```
    pub fn flush(&self) -> Saved {
        self.save()
    }

    /// A receiver of snapshots that wakes only when flag values or their source change; a fetch
    /// that brings identical flags updates the value without waking it.
    ///
    /// ```
    /// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
    /// # struct Api; // a stand-in for the flag service
    /// # impl Transport for Api {
    /// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
    /// #         let body = br#"[{"beta": true}, {"banner": "hi"}, {"max": 3}]"#.to_vec();
    /// #         Box::pin(async move { Ok(Response::new(http::StatusCode::OK, Default::default(), body)) })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = flagpole::Flags::builder().transport(Api).build()?;
    /// let mut changes = flags.subscribe();
    /// changes.changed().await.expect("the poller publishes the first fetch");
    /// assert_eq!(changes.borrow_and_update().get_bool("beta"), Some(true));
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.shared.subscribe()
    }

    /// The poller's status now.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// use flagpole::Status;
    ///
    /// let flags = flagpole::Flags::builder().enabled(false).build()?;
    /// assert!(matches!(flags.status(), Status::Disabled));
    /// let mut status = flags.status_receiver();
    /// flags.shutdown().await;
    /// status.wait_for(Status::is_stopped).await.unwrap();
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> Status {
        self.inner.shared.status()
    }

    /// A receiver of every status change.
    pub fn status_receiver(&self) -> watch::Receiver<Status> {
        self.inner.shared.subscribe_status()
    }

    /// Waits until remote flags (from the network or the cache) are served, for at most
    /// `timeout`. True when they are; false on timeout, or when the poller is disabled or stopped
    /// before any arrived (defaults are still served then).
    ///
    /// # Cancellation safety
    /// Cancel-safe: it only observes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// use std::time::Duration;
    ///
    /// // Remote flags off: nothing will arrive, so it answers false at once.
    /// let flags = flagpole::Flags::builder().enabled(false).build()?;
    /// assert!(!flags.wait_until_ready(Duration::from_secs(5)).await);
    /// # Ok(()) }
    /// ```
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        let mut snapshots = self.subscribe();
        let mut status = self.status_receiver();
        let ready = async {
            loop {
                if snapshots.borrow_and_update().source() != Source::Defaults {
                    return true;
                }
                if matches!(
                    *status.borrow_and_update(),
                    Status::Disabled | Status::Stopped
                ) {
                    return false;
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return false },
                    changed = status.changed() => if changed.is_err() { return false },
                }
            }
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or(false)
    }

    /// Stops the poller and waits for it to finish, even mid-request or mid-backoff. Idempotent;
    /// reads keep serving the last snapshot.
    ///
    /// # Cancellation safety
    /// The stop is requested when this is called; dropping the future only stops the waiting.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = flagpole::Flags::builder().default_flag("beta", true).enabled(false).build()?;
    /// flags.shutdown().await;
    /// assert!(flags.status().is_stopped());
    /// assert_eq!(flags.get_bool("beta"), Some(true)); // reads go on
    /// assert!(matches!(flags.refresh().await, Err(flagpole::Error::Stopped)));
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) -> Shutdown {
        let Some(link) = &self.inner.poller else {
            self.inner.shared.set_status(Status::Stopped);
            return Shutdown::new(async {});
        };
        link.token.cancel();
        let task = link.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut status = self.status_receiver();
        Shutdown::new(async move {
            match task {
                Some(task) => {
                    let _ = task.await;
                }
                // Another caller holds the task, or the poller runs on its own thread: wait for
                // it to say it stopped.
                None => {
                    let _ = status.wait_for(Status::is_stopped).await;
                }
            }
        })
    }
}

impl Flags {
    #[cfg(feature = "test-util")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}
