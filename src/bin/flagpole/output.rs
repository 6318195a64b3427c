//! The JSON written on stdout, one object per line, keys in the documented order.

use std::io::Write;
use std::time::Instant;

use flagpole::{Snapshot, Source, Status};
use serde::Serialize;
use serde_json::{Map, Value};

/// `flagpole get`.
#[derive(Serialize)]
pub(crate) struct Get {
    source: Source,
    cache_timestamp: Option<u64>,
    flags: Map<String, Value>,
    threshold_groups: Map<String, Value>,
    error: Option<String>,
    /// With --redis-url only: `connecting`, `joined` or `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared: Shared,
}

impl Get {
    pub(crate) fn new(snapshot: &Snapshot, error: Option<String>, shared: Shared) -> Self {
        Get {
            source: snapshot.source(),
            cache_timestamp: snapshot.cache_timestamp(),
            flags: snapshot.to_json(),
            threshold_groups: groups(snapshot),
            error,
            shared,
        }
    }
}

/// The shared store's state as printed (`SharedState::as_str`); `None` without --redis-url,
/// and then the `shared` key is left out, so that output without it is unchanged.
pub(crate) type Shared = Option<&'static str>;

/// `{flag: group}` for every flag placed in a rollout group.
fn groups(snapshot: &Snapshot) -> Map<String, Value> {
    snapshot
        .threshold_groups()
        .map(|(flag, group)| (flag.to_owned(), Value::from(group)))
        .collect()
}

/// `flagpole watch` lines.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(crate) enum Event {
    Snapshot {
        source: Source,
        cache_timestamp: Option<u64>,
        flags: Map<String, Value>,
        threshold_groups: Map<String, Value>,
    },
    Status {
        status: &'static str,
        error: Option<String>,
        next_retry_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        shared: Shared,
        /// With --stream only: `off`, `connecting`, `connected` or `unsupported`.
        #[serde(skip_serializing_if = "Option::is_none")]
        stream: Option<&'static str>,
    },
    Refresh {
        ok: bool,
        error: Option<String>,
    },
}

impl Event {
    pub(crate) fn snapshot(snapshot: &Snapshot) -> Self {
        Event::Snapshot {
            source: snapshot.source(),
            cache_timestamp: snapshot.cache_timestamp(),
            flags: snapshot.to_json(),
            threshold_groups: groups(snapshot),
        }
    }

    /// `streaming`: --stream was given, so the line says how the change stream is doing.
    pub(crate) fn status(status: &Status, shared: Shared, streaming: bool) -> Self {
        let next_retry_ms = match status {
            Status::Stale {
                next_retry: Some(at),
                ..
            } => Some(at.saturating_duration_since(Instant::now()).as_millis() as u64),
            _ => None,
        };
        Event::Status {
            status: status.as_str(),
            error: status.last_error().map(ToString::to_string),
            next_retry_ms,
            shared,
            stream: streaming.then(|| status.stream().as_str()),
        }
    }

    pub(crate) fn refresh(result: Result<(), String>) -> Self {
        Event::Refresh {
            ok: result.is_ok(),
            error: result.err(),
        }
    }
}

/// Writes one line and flushes, so a reader on a pipe sees each event at once.
pub(crate) fn emit(value: &impl Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}
