//! The JSON written on stdout, one object per line.

use std::io::Write;
use std::time::Instant;

use flagpole::{Snapshot, Status};
use serde_json::{json, Value};

pub(crate) fn snapshot_fields(snapshot: &Snapshot) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    out.insert("source".into(), json!(snapshot.source()));
    out.insert("cache_timestamp".into(), json!(snapshot.cache_timestamp()));
    out.insert("flags".into(), Value::Object(snapshot.to_json()));
    out
}

pub(crate) fn get(snapshot: &Snapshot, error: Option<String>) -> Value {
    let mut out = snapshot_fields(snapshot);
    out.insert("error".into(), json!(error));
    Value::Object(out)
}

pub(crate) fn snapshot_event(snapshot: &Snapshot) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("event".into(), json!("snapshot"));
    out.extend(snapshot_fields(snapshot));
    Value::Object(out)
}

pub(crate) fn status_event(status: &Status) -> Value {
    let next_retry_ms = match status {
        Status::Stale {
            next_retry: Some(at),
            ..
        } => Some(at.saturating_duration_since(Instant::now()).as_millis() as u64),
        _ => None,
    };
    json!({
        "event": "status",
        "status": status.as_str(),
        "error": status.last_error().map(ToString::to_string),
        "next_retry_ms": next_retry_ms,
    })
}

pub(crate) fn refresh_event(result: Result<(), String>) -> Value {
    json!({
        "event": "refresh",
        "ok": result.is_ok(),
        "error": result.err(),
    })
}

/// Writes one line and flushes, so a reader on a pipe sees each event at once.
pub(crate) fn emit(value: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()
}
