//! The layers a snapshot is built from (defaults < processed remote < overrides) and the one
//! place that publishes snapshots, shared by the poller and the handles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::current::Current;
pub(crate) use crate::snapshot::RemoteLayer;
use crate::snapshot::Snapshot;
use crate::status::Status;

/// A change to the local overrides.
#[derive(Debug, Clone)]
pub(crate) enum OverrideOp {
    Set(String, Value),
    Remove(String),
    Clear,
}

/// Everything a snapshot is made of.
#[derive(Debug)]
pub(crate) struct Layers {
    defaults: HashMap<String, Value>,
    /// Overrides given to the builder: for this handle only, never persisted.
    fixed: Map<String, Value>,
    pub(crate) remote: Option<RemoteLayer>,
    /// Overrides set at run time: persisted and restored at start.
    overrides: Map<String, Value>,
    /// Changes made before the persisted overrides were loaded, replayed over them.
    early: Option<Vec<OverrideOp>>,
}

impl Layers {
    pub(crate) fn new(defaults: HashMap<String, Value>, fixed: Map<String, Value>) -> Self {
        Layers {
            defaults,
            fixed,
            remote: None,
            overrides: Map::new(),
            early: Some(Vec::new()),
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot::build(
            &self.defaults,
            self.remote.as_ref(),
            [&self.fixed, &self.overrides],
        )
    }

    pub(crate) fn overrides(&self) -> &Map<String, Value> {
        &self.overrides
    }

    pub(crate) fn change_override(&mut self, op: OverrideOp) {
        if let Some(early) = &mut self.early {
            early.push(op.clone());
        }
        apply(&mut self.overrides, op);
    }

    /// Installs the persisted overrides (once), then the changes made while they loaded.
    pub(crate) fn restore_overrides(&mut self, persisted: Map<String, Value>) {
        let Some(early) = self.early.take() else {
            return;
        };
        self.overrides = persisted;
        for op in early {
            apply(&mut self.overrides, op);
        }
    }
}

fn apply(overrides: &mut Map<String, Value>, op: OverrideOp) {
    match op {
        OverrideOp::Set(name, value) => {
            overrides.insert(name, value);
        }
        OverrideOp::Remove(name) => {
            overrides.remove(&name);
        }
        OverrideOp::Clear => overrides.clear(),
    }
}

/// What the poller publishes and the handles read.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) current: Current,
    pub(crate) snapshots: watch::Sender<Arc<Snapshot>>,
    pub(crate) status: watch::Sender<Status>,
    layers: Mutex<Layers>,
}

impl Shared {
    pub(crate) fn new(layers: Layers, status: Status) -> Self {
        let initial = Arc::new(layers.snapshot());
        Shared {
            current: Current::new(Arc::clone(&initial)),
            snapshots: watch::Sender::new(initial),
            status: watch::Sender::new(status),
            layers: Mutex::new(layers),
        }
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
    /// [`Flag`](crate::Flag)s stay resolved. Outside [`update`](Self::update) only for the
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

    /// Reads the layers without publishing.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Layers) -> T) -> T {
        read(&self.layers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
