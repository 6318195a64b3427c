//! What the relay serves for one parameter set, built once per new snapshot: the flags as
//! upstream sent them, encoded once, with a strong entity tag.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::snapshot::{Snapshot, Source};

/// One parameter set's flags, ready to serve; shared by every request until the next change.
#[derive(Debug)]
pub(crate) struct View {
    /// The snapshot this view was built from (compared by pointer to spot a new one).
    pub(crate) snapshot: Arc<Snapshot>,
    /// The remote flags as upstream sent them, for OFREP's per-request processing.
    pub(crate) raw: Arc<Map<String, Value>>,
    /// The Client Config API body: an array of single-key objects.
    pub(crate) body: Bytes,
    /// `"<16 hex digits of the body's SHA-256>"`: strong, equal bodies have equal tags.
    pub(crate) etag: HeaderValue,
    pub(crate) cache_timestamp: u64,
    pub(crate) source: Source,
}

impl View {
    /// The view of `snapshot`, reusing `previous`'s body when the raw flags are the same
    /// (a renewal by a 304 only moves the timestamp). `None` while no remote flags are served.
    pub(crate) fn build(snapshot: Arc<Snapshot>, previous: Option<&View>) -> Option<View> {
        let raw = Arc::clone(snapshot.raw_remote()?);
        let (body, etag) = match previous {
            Some(previous) if Arc::ptr_eq(&previous.raw, &raw) || previous.raw == raw => {
                (previous.body.clone(), previous.etag.clone())
            }
            _ => encode(&raw),
        };
        Some(View {
            cache_timestamp: snapshot.cache_timestamp().unwrap_or(0),
            source: snapshot.source(),
            snapshot,
            raw,
            body,
            etag,
        })
    }

    /// The entity tag's text, with its quotes.
    pub(crate) fn etag_str(&self) -> &str {
        self.etag.to_str().unwrap_or_default()
    }
}

/// The body and its tag. Names come out in the order the flag map keeps them (sorted).
pub(crate) fn encode(raw: &Map<String, Value>) -> (Bytes, HeaderValue) {
    let items: Vec<Map<String, Value>> = raw
        .iter()
        .map(|(name, value)| {
            let mut item = Map::new();
            item.insert(name.clone(), value.clone());
            item
        })
        .collect();
    // A list of JSON maps always serializes.
    let body = Bytes::from(serde_json::to_vec(&items).unwrap_or_default());
    let digest = Sha256::digest(&body);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let etag = HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex digits are a valid header");
    (body, etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_body_is_the_wire_format_and_the_tag_follows_the_content() {
        let raw = json!({"b": [1, 2], "a": true}).as_object().unwrap().clone();
        let (body, etag) = encode(&raw);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, json!([{"a": true}, {"b": [1, 2]}]));
        let (again, same) = encode(&raw);
        assert_eq!((again, same.clone()), (body, etag.clone()));
        let other = json!({"a": false}).as_object().unwrap().clone();
        assert_ne!(encode(&other).1, etag);
        assert_eq!(etag.to_str().unwrap().len(), 18);
    }
}
