//! The public handle: refresh, subscriptions, status, shutdown; the reads are in `client/read.rs`.

mod new;
mod read;

use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::Error;
use crate::layers::OverrideOp;
use crate::poller::Command;
use crate::reply::{Refresh, Saved, SetEnabled, Shutdown};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::status::Status;

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
/// assert!(matches!(tokio::time::timeout(Duration::from_secs(5), flags.ready()).await, Ok(Ok(_))));
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
    /// let _ = tokio::time::timeout(Duration::from_secs(5), flags.ready()).await;
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
    ///
    /// ```
    /// let flags = flagpole::Flags::fixed([("theme", serde_json::json!("light"))]);
    /// drop(flags.set_override("theme", "dark")); // served at once; the future reports the save
    /// assert_eq!(flags.get_str("theme").as_deref(), Some("dark"));
    /// drop(flags.remove_override("theme"));
    /// assert_eq!(flags.get_str("theme").as_deref(), Some("light"));
    /// ```
    pub fn remove_override(&self, name: &str) -> Saved {
        self.change_override(OverrideOp::Remove(name.to_owned()))
    }

    /// Removes every override set with [`set_override`](Self::set_override) (those given to
    /// the builder stay). Published at once and persisted as `set_override` is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = flagpole::Flags::fixed([("a", serde_json::json!(1))]);
    /// flags.set_override("a", 2).await?;
    /// flags.set_override("b", true).await?;
    /// flags.clear_overrides().await?;
    /// assert!(flags.snapshot().overrides().is_empty());
    /// assert_eq!(flags.get_i64("a"), Some(1));
    /// # Ok(()) }
    /// ```
    pub fn clear_overrides(&self) -> Saved {
        self.change_override(OverrideOp::Clear)
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

    /// Requests this handle's poller made that ended, and those that brought no flags (for the
    /// relay's metrics).
    #[cfg(feature = "relay")]
    pub(crate) fn fetch_counts(&self) -> (u64, u64) {
        self.inner.shared.fetch_counts()
    }

    /// A receiver of every status change: `changed().await` wakes on each, `wait_for` waits for
    /// one that matches.
    ///
    /// ```
    /// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
    /// # struct Down; // a flag service that refuses connections
    /// # impl Transport for Down {
    /// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
    /// #         Box::pin(async { Err(Error::Http { status: 503 }) })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// use flagpole::Status;
    ///
    /// let flags = flagpole::Flags::builder().transport(Down).build()?;
    /// let mut status = flags.status_receiver();
    /// let stale = status.wait_for(Status::is_stale).await.expect("the poller runs");
    /// assert!(stale.last_error().is_some());
    /// # Ok(()) }
    /// ```
    pub fn status_receiver(&self) -> watch::Receiver<Status> {
        self.inner.shared.subscribe_status()
    }

    /// Stops the poller and waits for it to finish, even mid-request or mid-backoff. Idempotent;
    /// reads keep serving the last snapshot.
    ///
    /// It never waits for the store: a change whose save had not started is handed to the
    /// runtime's blocking pool as the poller stops. A runtime that is itself shutting down may
    /// not run it, so await [`flush`](Self::flush) first when the store must hold the last
    /// changes before the process exits.
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
