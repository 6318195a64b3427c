//! The publishing hub between the poller and the handles: the current snapshot in an
//! `ArcSwap` for readers, `watch` channels for subscribers (snapshots and status), and the layers
//! the snapshots are built from. Its fields are private: writers publish through
//! [`Shared::update`] and [`Shared::set_status`], readers go through [`Shared::load`].

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::Guard;
use tokio::sync::watch;

use crate::current::Current;
use crate::layers::Layers;
use crate::snapshot::Snapshot;
use crate::status::{Status, StreamState};

/// What the poller publishes and the handles read.
#[derive(Debug)]
pub(crate) struct Shared {
    current: Current,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: watch::Sender<Status>,
    layers: Mutex<Layers>,
    /// Requests that ended, and those of them that brought no flags (for the relay's metrics).
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    /// The change stream's [`StreamState`], as a number.
    stream: AtomicU8,
}

impl Shared {
    pub(crate) fn new(layers: Layers, status: Status) -> Self {
        let initial = Arc::new(layers.snapshot());
        Shared {
            current: Current::new(Arc::clone(&initial)),
            snapshots: watch::Sender::new(initial),
            status: watch::Sender::new(status),
            layers: Mutex::new(layers),
            fetches: AtomicU64::new(0),
            fetch_failures: AtomicU64::new(0),
            stream: AtomicU8::new(StreamState::Off.to_u8()),
        }
    }

    /// The current snapshot, for a short read: no reference count is touched.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot with its scalars, for the fastest typed reads.
    #[inline]
    pub(crate) fn current(&self) -> &Current {
        &self.current
    }

    /// The current snapshot, to keep.
    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A receiver of every published snapshot that changes what is served.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.subscribe()
    }

    /// The poller's status now.
    pub(crate) fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub(crate) fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Publishes `status`, waking receivers only when the state changes: a repeated
    /// `Initializing`, `Fresh`, `Disabled` or `Stopped` is not news (a new `Stale` always is,
    /// since its error or retry time moved).
    pub(crate) fn set_status(&self, mut status: Status) {
        self.status.send_if_modified(|current| {
            // Read under the channel's lock, which `set_stream` also takes after its store: the
            // two writers never undo each other.
            status.set_stream(self.stream_state());
            let changed = !matches!(
                (&*current, &status),
                (Status::Initializing { .. }, Status::Initializing { .. })
                    | (Status::Fresh { .. }, Status::Fresh { .. })
                    | (Status::Disabled, Status::Disabled)
                    | (Status::Stopped, Status::Stopped)
            ) || current.stream() != status.stream();
            if changed {
                *current = status;
            }
            changed
        });
    }

    /// The change stream's state, kept across status changes.
    pub(crate) fn stream_state(&self) -> StreamState {
        StreamState::from_u8(self.stream.load(Ordering::Acquire))
    }

    /// Publishes the change stream's state in the status, waking receivers when it changed;
    /// nothing when `live` is given and cancelled (a closed stream's task must not undo the
    /// handle's `Off`: both writes happen under the channel's lock).
    pub(crate) fn set_stream(
        &self,
        state: StreamState,
        live: Option<&tokio_util::sync::CancellationToken>,
    ) {
        self.status.send_if_modified(|current| {
            if live.is_some_and(|token| token.is_cancelled()) {
                return false;
            }
            self.stream.store(state.to_u8(), Ordering::Release);
            current.set_stream(state)
        });
    }

    /// Changes the layers and publishes the snapshot they make. Writers hold the lock through the
    /// publish, so snapshots are published in the order the changes were made; readers never
    /// take it.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Layers)) -> Arc<Snapshot> {
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut layers);
        self.publish(layers.snapshot())
    }

    /// Publishes to readers and subscribers. A snapshot that serves the same flag names as the
    /// current one takes over its layout first, so that pre-resolved
    /// [`FlagKey`](crate::FlagKey)s stay resolved. Outside [`update`](Self::update) only for the
    /// benchmark hooks, which publish without layers.
    pub(crate) fn publish(&self, mut snapshot: Snapshot) -> Arc<Snapshot> {
        snapshot.share_layout(&self.current.load());
        let snapshot = Arc::new(snapshot);
        self.store(Arc::clone(&snapshot));
        snapshot
    }

    /// Publishes a snapshot as it is.
    pub(crate) fn store(&self, snapshot: Arc<Snapshot>) {
        self.current.store(Arc::clone(&snapshot));
        // A change that alters nothing visible (a fetch that only renews the timestamp) updates
        // the value without waking anyone.
        self.snapshots.send_if_modified(|current| {
            let changed = !current.same_content(&snapshot);
            *current = snapshot;
            changed
        });
    }

    /// Counts a request that ended: with flags (a 200 or a 304) or not.
    pub(crate) fn count_fetch(&self, failed: bool) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.fetch_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests that ended so far, and the failed ones among them.
    #[cfg_attr(not(feature = "relay"), allow(dead_code))]
    pub(crate) fn fetch_counts(&self) -> (u64, u64) {
        (
            self.fetches.load(Ordering::Relaxed),
            self.fetch_failures.load(Ordering::Relaxed),
        )
    }

    /// Reads the layers without publishing.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Layers) -> T) -> T {
        read(&self.layers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
