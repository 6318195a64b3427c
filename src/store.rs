//! Persistence of the last good flags between runs.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use crate::error::Error;

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
/// #         Box::pin(async { Ok(Response::new(200, Default::default(), br#"{"beta":true}"#.to_vec())) })
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
    /// The record format; records of another version are ignored.
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
/// struct KvStore(Mutex<Option<String>>);
///
/// impl Store for KvStore {
///     fn load(&self) -> Result<Option<CacheRecord>, Error> {
///         let text = self.0.lock().unwrap().clone();
///         // A corrupt record is no record.
///         Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
///     }
///
///     fn save(&self, record: &CacheRecord) -> Result<(), Error> {
///         *self.0.lock().unwrap() = serde_json::to_string(record).ok();
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
    /// The saved record, or `None` when there is none (or none usable). A store that finds a
    /// corrupt record should log a warning and return `Ok(None)`.
    fn load(&self) -> Result<Option<CacheRecord>, Error>;

    /// Replaces the saved record.
    fn save(&self, record: &CacheRecord) -> Result<(), Error>;
}

/// A JSON file written atomically: a temporary file beside it, fsync, then rename, so a crash
/// leaves either the old record or the new one, never half of one.
///
/// A missing file is an empty cache; a corrupt file or one of another format version logs a
/// warning and is ignored (the next successful fetch overwrites it).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dir = std::env::temp_dir().join("flagpole-doc-filestore");
/// let flags = flagpole::Flags::builder()
///     .store(flagpole::FileStore::new(dir.join("flags.json")))
///     .enabled(false)
///     .build()
///     .unwrap();
/// # drop(flags);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`; the parent directory is created on the first save.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temp_path(&self) -> PathBuf {
        // Unique per process and per save so that two handles on one file never write into the
        // same temporary file.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = self
            .path
            .file_name()
            .map_or_else(|| "flags".into(), |n| n.to_string_lossy().into_owned());
        self.path
            .with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Option<CacheRecord>, Error> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::store(e)),
        };
        let record: CacheRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring corrupt flag cache file");
                return Ok(None);
            }
        };
        if record.version != CacheRecord::VERSION {
            tracing::warn!(
                path = %self.path.display(),
                version = record.version,
                "ignoring flag cache file of another format version"
            );
            return Ok(None);
        }
        Ok(Some(record))
    }

    fn save(&self, record: &CacheRecord) -> Result<(), Error> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(Error::store)?;
        }
        let bytes = serde_json::to_vec(record).map_err(Error::store)?;
        let tmp = self.temp_path();
        let written = (|| {
            let mut file = create_private(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::store(e));
        }
        sync_parent(&self.path);
        Ok(())
    }
}

/// The cache holds flags and a profile hash: readable by the owner only, where that exists.
fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

// The rename is durable only once the directory entry is; best effort where unsupported.
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
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
    use serde_json::json;

    fn record() -> CacheRecord {
        let mut record = CacheRecord::new(
            "k",
            1_700_000_000_000,
            Some("\"e\"".into()),
            json!({"a": true, "ü nicode": [1, {"x": null}], "": 1.5})
                .as_object()
                .unwrap()
                .clone(),
        );
        record.overrides.insert("o".into(), json!({"on": true}));
        record
    }

    #[test]
    fn records_without_overrides_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        fs::write(
            &path,
            r#"{"version":1,"key":"k","cache_timestamp":5,"etag":null,"flags":{"a":1}}"#,
        )
        .unwrap();
        let loaded = FileStore::new(&path).load().unwrap().unwrap();
        assert_eq!(loaded.flags["a"], json!(1));
        assert!(loaded.overrides.is_empty());
    }

    #[test]
    fn file_round_trip_creates_dirs_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("a/b/flags.json"));
        assert_eq!(store.load().unwrap(), None);
        store.save(&record()).unwrap();
        assert_eq!(store.load().unwrap(), Some(record()));
        let mut second = record();
        second.cache_timestamp += 1;
        store.save(&second).unwrap();
        assert_eq!(store.load().unwrap(), Some(second));
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["flags.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("a/b/flags.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_or_foreign_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        let store = FileStore::new(&path);
        for bad in [
            &b"{not json"[..],
            b"",
            b"[]",
            b"{\"version\":1}",
            b"\xff\xfe",
        ] {
            fs::write(&path, bad).unwrap();
            assert_eq!(store.load().unwrap(), None);
        }
        let mut other = record();
        other.version = 99;
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn truncated_write_of_target_is_ignored_and_leftover_temp_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        let store = FileStore::new(&path);
        store.save(&record()).unwrap();
        // A crash mid-write leaves only a partial temporary file; the target is untouched.
        let full = fs::read(&path).unwrap();
        fs::write(
            dir.path().join(".flags.json.1.0.tmp"),
            &full[..full.len() / 2],
        )
        .unwrap();
        assert_eq!(store.load().unwrap(), Some(record()));
        // A target truncated by other means is a warning, not a crash.
        fs::write(&path, &full[..full.len() / 2]).unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn unreadable_path_is_a_store_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be cannot be read as a file.
        let store = FileStore::new(dir.path());
        assert!(matches!(store.load(), Err(Error::Store { .. })));
        assert!(matches!(store.save(&record()), Err(Error::Store { .. })));
    }

    #[test]
    fn memory_store_shares_between_clones() {
        let a = MemoryStore::new();
        let b = a.clone();
        a.save(&record()).unwrap();
        assert_eq!(b.load().unwrap(), Some(record()));
    }
}
