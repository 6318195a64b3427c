//! The layers a snapshot is built from (defaults < processed remote < overrides). Plain data:
//! publishing them is [`shared`](crate::shared)'s job.

use std::collections::HashMap;

use serde_json::{Map, Value};

pub(crate) use crate::snapshot::RemoteLayer;
use crate::snapshot::Snapshot;

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
