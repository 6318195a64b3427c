//! Persistence of the last good flags between runs.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::error::Error;

mod file;

pub use file::FileStore;

/// What a [`Store`] keeps: the raw remote flags of the last successful fetch, how to judge them,
/// and the local overrides.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flagpole::Error> {
/// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
/// # struct Api;
/// # impl Transport for Api {
/// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
/// #         Box::pin(async { Ok(Response::new(http::StatusCode::OK, Default::default(), br#"{"beta":true}"#.to_vec())) })
/// #     }
/// # }
/// let store = flagpole::MemoryStore::new();
/// let flags = flagpole::Flags::builder().transport(Api).store(store.clone()).build()?;
/// flags.refresh().await?;
/// flags.flush().await?; // saves run beside the poller: wait for this one
/// let record = store.get().expect("saved");
/// assert_eq!(record.version, flagpole::CacheRecord::VERSION);
/// assert_eq!(record.flags["beta"], true);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct CacheRecord {
    /// The record format; records of another version are not used (a [`FileStore`] keeps such a
    /// file aside).
    pub version: u32,
    /// Identifies the request the flags answer and who they are processed for (base URL, client,
    /// distribution, environment, hashes of the profile and metrics ids, client version). The
    /// flags of a record with another key are not used.
    pub key: String,
    /// When the flags were fetched, in milliseconds since the Unix epoch; 0 when no fetch has
    /// succeeded yet (the record then holds only overrides).
    pub cache_timestamp: u64,
    /// The server's entity tag, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// The flags as the server sent them, before processing.
    pub flags: Map<String, Value>,
    /// Local overrides set with [`Flags::set_override`](crate::Flags::set_override), restored at
    /// start whatever the key. Absent in records written before overrides existed.
    #[serde(default)]
    pub overrides: Map<String, Value>,
}

impl CacheRecord {
    /// The record format this crate writes.
    pub const VERSION: u32 = 1;

    /// A record of the current format with no overrides, for stores that keep the parts
    /// separately.
    pub fn new(
        key: impl Into<String>,
        cache_timestamp: u64,
        etag: Option<String>,
        flags: Map<String, Value>,
    ) -> Self {
        CacheRecord {
            version: Self::VERSION,
            key: key.into(),
            cache_timestamp,
            etag,
            flags,
            overrides: Map::new(),
        }
    }
}

/// Where the poller loads flags at start and saves them after each successful fetch.
///
/// Methods are blocking; the poller calls them on tokio's blocking pool. Implement this to keep
/// flags in a database or a platform key-value store.
///
/// ```
/// use std::sync::Mutex;
/// use flagpole::{CacheRecord, Error, Store};
///
/// /// Keeps the record as JSON text, as a key-value store would.
/// #[derive(Default)]
/// struct KvStore(Mutex<Kv>);
///
/// #[derive(Default)]
/// struct Kv {
///     record: Option<String>,
///     /// The last record that could not be parsed, for a human to look at.
///     corrupt: Option<String>,
/// }
///
/// impl Store for KvStore {
///     fn load(&self) -> Result<Option<CacheRecord>, Error> {
///         let mut kv = self.0.lock().unwrap();
///         let Some(text) = kv.record.as_deref() else { return Ok(None) };
///         match serde_json::from_str(text) {
///             Ok(record) => Ok(Some(record)),
///             // Kept aside rather than dropped: the next save must not erase the evidence.
///             Err(_) => {
///                 kv.corrupt = kv.record.take();
///                 Ok(None)
///             }
///         }
///     }
///
///     fn save(&self, record: &CacheRecord) -> Result<(), Error> {
///         self.0.lock().unwrap().record = serde_json::to_string(record).ok();
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flags = flagpole::Flags::builder().store(KvStore::default()).enabled(false).build().unwrap();
/// # drop(flags);
/// # }
/// ```
pub trait Store: Send + Sync + 'static {
    /// The saved record, or `None` when there is none (or none usable).
    ///
    /// A store that cannot read its record (an I/O error, a record too large to read, a corrupt
    /// record it could not set aside) must return `Err`, so that the poller never overwrites
    /// what it holds. A store that finds a corrupt record, or one of another format
    /// [`version`](CacheRecord::version), should keep it aside where a human can find it (as
    /// [`FileStore`] does with a `.corrupt` file), log a warning and return `Ok(None)`.
    fn load(&self) -> Result<Option<CacheRecord>, Error>;

    /// Replaces the saved record.
    fn save(&self, record: &CacheRecord) -> Result<(), Error>;
}

/// A store in memory: survives handles within one process, not restarts. Clones share the
/// record, so a test can keep one clone to inspect what the poller saved (see [`CacheRecord`]).
///
/// ```
/// let store = flagpole::MemoryStore::new();
/// assert!(store.get().is_none());
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    record: Arc<Mutex<Option<CacheRecord>>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("has_record", &self.get().is_some())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record held now.
    pub fn get(&self) -> Option<CacheRecord> {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the record held, e.g. to start a test from a stale cache.
    pub fn set(&self, record: Option<CacheRecord>) {
        *self.record.lock().unwrap_or_else(|e| e.into_inner()) = record;
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Option<CacheRecord>, Error> {
        Ok(self.get())
    }

    fn save(&self, record: &CacheRecord) -> Result<(), Error> {
        self.set(Some(record.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_shares_between_clones() {
        let a = MemoryStore::new();
        let b = a.clone();
        let record = CacheRecord::new("k", 5, None, Map::new());
        a.save(&record).unwrap();
        assert_eq!(b.load().unwrap(), Some(record));
    }
}
