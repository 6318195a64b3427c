//! The shared record in Redis: the file store's format, read with a size cap and checked before
//! anything in it may replace the flags a process holds.

use serde::Serialize;
use serde_json::Map;

use crate::parse::RawFlags;
use crate::store::CacheRecord;

/// Records above this are not read (Redis is asked for one byte more, to tell them apart).
pub(crate) const MAX_RECORD_BYTES: usize = 4 << 20;

/// The record Redis holds, when it is one this process may use: `None` for no record, and
/// (with a warning) for an oversized, corrupt, other-version or other-request record, which
/// never replaces good flags. The next successful fetch overwrites it.
pub(super) fn decode(bytes: &[u8], key: &str) -> Option<CacheRecord> {
    if bytes.is_empty() {
        return None;
    }
    if bytes.len() > MAX_RECORD_BYTES {
        tracing::warn!(
            limit = MAX_RECORD_BYTES,
            "ignoring an oversized shared flag record; the next fetch replaces it"
        );
        return None;
    }
    let record: CacheRecord = match serde_json::from_slice(bytes) {
        Ok(record) => record,
        Err(error) => {
            match serde_json::from_slice::<Version>(bytes) {
                Ok(Version { version }) if version != CacheRecord::VERSION => warn_version(version),
                _ => {
                    tracing::warn!(%error, "ignoring a corrupt shared flag record; the next fetch replaces it")
                }
            }
            return None;
        }
    };
    if record.version != CacheRecord::VERSION {
        warn_version(record.version);
        return None;
    }
    if record.key != key {
        // Another request's flags under this key: a hash collision or a hand-written record.
        tracing::warn!("ignoring a shared flag record saved for other request parameters");
        return None;
    }
    (record.cache_timestamp > 0).then_some(record)
}

fn warn_version(version: u32) {
    tracing::warn!(
        version,
        "ignoring a shared flag record of another format version; the next fetch replaces it"
    );
}

#[derive(serde::Deserialize)]
struct Version {
    version: u32,
}

/// The record of a fetch, in the file store's format, without copying the flags. Overrides stay
/// with each process: the shared record has none.
pub(super) fn encode(
    key: &str,
    cache_timestamp: u64,
    etag: Option<&str>,
    flags: &RawFlags,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Record<'a> {
        version: u32,
        key: &'a str,
        cache_timestamp: u64,
        etag: Option<&'a str>,
        flags: &'a RawFlags,
        overrides: Map<String, serde_json::Value>,
    }
    let record = Record {
        version: CacheRecord::VERSION,
        key,
        cache_timestamp,
        etag,
        flags,
        overrides: Map::new(),
    };
    // A map of JSON values always serializes.
    serde_json::to_vec(&record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flags() -> RawFlags {
        json!({"a": 1, "b": {"c": [true]}})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_record_survives_the_round_trip() {
        let bytes = encode("k", 42, Some("\"v1\""), &flags());
        let record = decode(&bytes, "k").unwrap();
        assert_eq!(record.cache_timestamp, 42);
        assert_eq!(record.etag.as_deref(), Some("\"v1\""));
        assert_eq!(record.flags, flags());
        assert!(record.overrides.is_empty());
    }

    #[test]
    fn records_that_must_not_replace_flags_are_refused() {
        let good = encode("k", 42, None, &flags());
        assert!(decode(&good, "other").is_none());
        assert!(decode(b"", "k").is_none());
        assert!(decode(b"{not json", "k").is_none());
        assert!(decode(br#"{"version":99,"whatever":true}"#, "k").is_none());
        let mut other = serde_json::from_slice::<serde_json::Value>(&good).unwrap();
        other["version"] = json!(2);
        assert!(decode(&serde_json::to_vec(&other).unwrap(), "k").is_none());
        other["version"] = json!(1);
        other["cache_timestamp"] = json!(0);
        assert!(decode(&serde_json::to_vec(&other).unwrap(), "k").is_none());
        let mut big = good.clone();
        big.resize(MAX_RECORD_BYTES + 1, b' ');
        assert!(decode(&big, "k").is_none());
        let mut fits = good;
        fits.resize(MAX_RECORD_BYTES, b' ');
        assert!(decode(&fits, "k").is_some());
    }
}
