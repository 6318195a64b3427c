//! The poller's side of the [`Store`]: loads that retry until one succeeds, and saves that run
//! beside the loop (never awaited by it) where the latest record wins.

use std::future::pending;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::store::{CacheRecord, Store};

pub(crate) type SaveReply = oneshot::Sender<Result<(), Error>>;

/// A load or save that ended.
pub(super) enum Done {
    Loaded(Result<Option<CacheRecord>, Error>),
    /// The save's result, and the successful fetches it covers.
    Saved(Result<(), Error>, u64),
}

pub(super) struct Persist {
    store: Option<Arc<dyn Store>>,
    loading: Option<JoinHandle<Result<Option<CacheRecord>, Error>>>,
    /// A load has succeeded: from then on saves may replace the record.
    loaded: bool,
    /// The last load failed: callers asking for a save get this until a load succeeds.
    load_error: Option<Error>,
    retry_at: Option<Instant>,
    load_backoff: Backoff,
    saving: Option<(JoinHandle<Result<(), Error>>, u64)>,
    /// Something changed since the last save started.
    dirty: bool,
    /// Callers waiting for the next save to start and end.
    replies: Vec<SaveReply>,
}

impl Persist {
    pub(super) fn new(store: Option<Arc<dyn Store>>, config: &Config) -> Self {
        Persist {
            loaded: store.is_none(),
            store,
            loading: None,
            load_error: None,
            retry_at: None,
            load_backoff: Backoff::new(config.backoff_initial, config.fetch_interval),
            saving: None,
            dirty: false,
            replies: Vec::new(),
        }
    }

    /// Starts a load on the blocking pool; false when there is no store to load.
    pub(super) fn load(&mut self) -> bool {
        let Some(store) = self.store.clone() else {
            return false;
        };
        self.retry_at = None;
        self.loading = Some(tokio::task::spawn_blocking(move || store.load()));
        true
    }

    /// When to try the load again after a failure.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Failed loads since the last success.
    pub(super) fn load_failures(&self) -> u32 {
        self.load_backoff.attempt()
    }

    pub(super) fn load_succeeded(&mut self) {
        self.loaded = true;
        self.load_error = None;
        self.load_backoff.reset();
    }

    /// Plans the next load and answers the callers waiting for a save: none happens until a
    /// load succeeds, so that what the store holds is never written over unread.
    pub(super) fn load_failed(&mut self, error: &Error) {
        let delay = self.load_backoff.next().unwrap_or_default();
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "flag cache load retry scheduled"
        );
        self.retry_at = Some(super::after(delay));
        for reply in self.replies.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        self.load_error = Some(error.clone());
    }

    /// Whether a record saved now would reach the store soon (loaded, or a load in progress).
    pub(super) fn saves_soon(&self) -> bool {
        self.store.is_some() && (self.loaded || self.loading.is_some())
    }

    /// Asks for a save of the state held now.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = self.store.is_some();
    }

    /// A caller who waits for the next save of the state held now.
    pub(super) fn wait_for_save(&mut self, reply: SaveReply) {
        if self.store.is_none() {
            let _ = reply.send(Ok(()));
            return;
        }
        self.dirty = true;
        match &self.load_error {
            Some(error) => {
                let _ = reply.send(Err(error.clone()));
            }
            None => self.replies.push(reply),
        }
    }

    /// A save is wanted and may start now.
    pub(super) fn save_due(&self) -> bool {
        self.dirty && self.loaded && self.saving.is_none() && self.store.is_some()
    }

    /// Saves `record` on the blocking pool. The waiting callers are answered from there, so they
    /// get the store's own answer even when the poller stops meanwhile.
    pub(super) fn save(&mut self, record: CacheRecord, fetches: u64) {
        let Some(store) = self.store.clone() else {
            return;
        };
        self.dirty = false;
        let replies = std::mem::take(&mut self.replies);
        let task = tokio::task::spawn_blocking(move || save_and_answer(&*store, &record, replies));
        self.saving = Some((task, fetches));
    }

    /// The next load or save to end. Cancel-safe: the task stays in place until it ends.
    pub(super) async fn done(&mut self) -> Done {
        if let Some(loading) = &mut self.loading {
            let loaded = loading.await;
            self.loading = None;
            return Done::Loaded(loaded.unwrap_or_else(|e| Err(joined(e))));
        }
        if let Some((saving, fetches)) = &mut self.saving {
            let saved = saving.await.unwrap_or_else(|e| Err(joined(e)));
            let fetches = *fetches;
            self.saving = None;
            return Done::Saved(saved, fetches);
        }
        pending().await
    }

    /// Whether changes wait for a save that may still be made at stop (something was loaded).
    pub(super) fn wants_final_save(&self) -> bool {
        self.dirty && self.loaded && self.store.is_some()
    }

    /// At stop: `record`, the last changes (when [`wants_final_save`](Self::wants_final_save)),
    /// still goes to the store, after the save in progress if any (so that it cannot overwrite
    /// it with older data). The poller does not wait; callers who asked for the save get the
    /// store's answer.
    pub(super) fn stop(&mut self, record: Option<CacheRecord>) {
        match (&self.store, record, tokio::runtime::Handle::try_current()) {
            (Some(store), Some(record), Ok(runtime)) => {
                let store = Arc::clone(store);
                let replies = std::mem::take(&mut self.replies);
                let running = self.saving.take().map(|(task, _)| task);
                let handle = runtime.clone();
                drop(runtime.spawn_blocking(move || {
                    if let Some(running) = running {
                        let _ = handle.block_on(running);
                    }
                    save_and_answer(&*store, &record, replies)
                }));
            }
            _ => {
                for reply in self.replies.drain(..) {
                    let _ = reply.send(Err(Error::Stopped));
                }
            }
        }
    }
}

fn save_and_answer(
    store: &dyn Store,
    record: &CacheRecord,
    replies: Vec<SaveReply>,
) -> Result<(), Error> {
    let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.save(record)))
        .unwrap_or_else(|panic| Err(Error::panicked("store", &*panic)));
    for reply in replies {
        let _ = reply.send(saved.clone());
    }
    saved
}

/// A blocking store call that did not return: it panicked (the runtime was not stopping, or
/// the poller would not be asking).
fn joined(error: JoinError) -> Error {
    match error.try_into_panic() {
        Ok(panic) => Error::panicked("store", &*panic),
        Err(_) => Error::Stopped,
    }
}
