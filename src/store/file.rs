//! [`FileStore`]: the record as a JSON file, replaced atomically, kept aside when unusable.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{CacheRecord, Store};
use crate::error::Error;

#[cfg(test)]
mod tests;

/// The largest cache file `load` reads. A record is kilobytes, rarely a megabyte; a file this
/// large is not one we wrote (or something went badly wrong), and reading it whole at every
/// start would hold that much memory for nothing.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// How old a temporary file must be before `load` removes it as a crashed writer's leftover.
/// A live writer creates, writes, fsyncs and renames its file within seconds, and each write
/// refreshes the modification time; ten minutes leaves room for a disk stalled under load or a
/// writer paused by a debugger. Removing a live writer's file would only fail that one save
/// (its rename finds nothing), and a leftover merely waits for a later start to go.
const STALE_TEMP_AGE: Duration = Duration::from_secs(10 * 60);

/// How often `load` reads again a file that a writer replaced while it was judged unusable,
/// before giving up with an error: two writers racing can replace it twice, not forever.
const READ_ATTEMPTS: usize = 3;

/// A JSON file written atomically: a temporary file beside it, fsync, then rename, so a crash
/// leaves either the old record or the new one, never half of one.
///
/// # Saving
///
/// The temporary file, named `.<name>.<pid>.<random>.<n>.tmp` beside the target, is always a new
/// file (an existing file or a planted symlink at that name makes the save fail rather than be
/// followed or reused), readable and writable by the owner only (mode `0600` on unix), since the
/// record holds flags and a hash of the profile id. After the rename the directory is fsynced on
/// unix; if that fails, `save` returns [`Error::Store`]: the new record is in place but might
/// not survive a power loss.
///
/// # Loading
///
/// - A missing file is an empty cache: `Ok(None)`.
/// - A file over 64 MiB is refused with [`Error::Store`] naming its path, its size and the limit,
///   without being read whole (a file growing past the limit while it is read is refused too),
///   and left where it is.
/// - A file that cannot be parsed as a record (not JSON, truncated, invalid UTF-8, the wrong
///   shape) or that holds a record of another format [`version`](CacheRecord::version) is
///   renamed to `<name>.corrupt` beside it (replacing an older one: the newest is kept), a
///   warning naming that path is logged, and `load` returns `Ok(None)`; the next successful
///   fetch writes a new file. If the rename fails, `load` returns [`Error::Store`] and the file
///   stays where it is: a store that cannot read its record says so, and the poller must not
///   overwrite it (see [`Store::load`]).
/// - Temporary files of writers that crashed (`.<name>.*.tmp` beside the target) are removed
///   once they are at least ten minutes old; younger ones may belong to a writer still at work
///   and are left alone.
/// - Other I/O errors (a directory at the path, no permission) are [`Error::Store`].
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
///
/// A corrupt file is kept aside, not lost:
///
/// ```
/// use flagpole::{FileStore, Store};
///
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("flags.json"), "{half a rec").unwrap();
/// let store = FileStore::new(dir.path().join("flags.json"));
/// assert_eq!(store.load().unwrap(), None);
/// let kept = std::fs::read_to_string(dir.path().join("flags.json.corrupt")).unwrap();
/// assert_eq!(kept, "{half a rec");
/// ```
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

/// What can go wrong with the file, with the path it happened to; wrapped in [`Error::Store`].
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("cache file {} is {size} bytes, over the {limit}-byte limit", .path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cache file {} grew past the {limit}-byte limit while it was read", .path.display())]
    Grew { path: PathBuf, limit: u64 },
    #[error("cache file {} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("could not read cache file {}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("could not move unusable cache file {} to {}", .path.display(), .aside.display())]
    KeepAside {
        path: PathBuf,
        aside: PathBuf,
        source: io::Error,
    },
    #[error("cache file {} kept changing while it was read", .path.display())]
    Unsettled { path: PathBuf },
    #[cfg(unix)]
    #[error("could not sync directory {} after replacing the cache file", .dir.display())]
    SyncDir { dir: PathBuf, source: io::Error },
}

/// Why a file read whole holds no record this crate can use.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("not a cache record: {0}")]
    Corrupt(serde_json::Error),
    #[error("a record of format version {0}, not {current}", current = CacheRecord::VERSION)]
    Version(u32),
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

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(|| "flags".into(), |n| n.to_string_lossy().into_owned())
    }

    fn temp_path(&self) -> PathBuf {
        // The counter keeps the saves of one process apart; the random part keeps apart two
        // processes that got the same pid (a recycled pid, or containers with their own).
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let random = fastrand::u64(..);
        let (name, pid) = (self.file_name(), std::process::id());
        self.path
            .with_file_name(format!(".{name}.{pid}.{random:016x}.{n}.tmp"))
    }

    fn corrupt_path(&self) -> PathBuf {
        self.path
            .with_file_name(format!("{}.corrupt", self.file_name()))
    }

    /// Writes `bytes` into a new file at `tmp`, then renames it over the target.
    fn replace_via(&self, tmp: &Path, bytes: &[u8]) -> Result<(), Error> {
        // Not cleaned up on failure: a file already at `tmp` is someone else's.
        let mut file = create_private(tmp).map_err(Error::store)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            // Closed first: some platforms cannot rename a file that is open.
            .and_then(|()| {
                drop(file);
                fs::rename(tmp, &self.path)
            });
        if let Err(e) = written {
            let _ = fs::remove_file(tmp);
            return Err(Error::store(e));
        }
        sync_dir(parent_dir(&self.path))
    }

    /// Removes the temporary files that writers which crashed left beside the target.
    /// Best effort: a leftover that cannot be removed does no harm, so it never fails a load.
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(parent_dir(&self.path)) else {
            return;
        };
        let (name, now) = (self.file_name(), SystemTime::now());
        for entry in entries.flatten() {
            if !is_temp_name(&name, &entry.file_name().to_string_lossy()) {
                continue;
            }
            // Not followed: a symlink is never one of our files.
            let stale = entry
                .metadata()
                .is_ok_and(|m| m.is_file() && is_stale(&m, now));
            if stale {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(path = %path.display(), "removed a stale temp file"),
                    Err(error) => tracing::debug!(
                        path = %path.display(),
                        %error,
                        "could not remove a stale temp file"
                    ),
                }
            }
        }
    }

    /// Moves the unusable file just read (`read` is its metadata) to `<name>.corrupt`,
    /// replacing an older one. False when the file at the path is no longer the one read: a
    /// writer replaced it, or another loader moved it first; the caller reads again.
    fn keep_aside(&self, read: &fs::Metadata, why: &Unusable) -> Result<bool, Error> {
        // Narrows, without closing, the window in which a record saved after the read would be
        // moved aside instead; should that happen, the good record sits in `.corrupt` and the
        // flags are fetched and saved again, as after any unusable file.
        match fs::metadata(&self.path) {
            Ok(now) if same_file(read, &now) => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(self.keep_aside_error(source)),
        }
        let aside = self.corrupt_path();
        match fs::rename(&self.path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(self.keep_aside_error(source)),
        }
        tracing::warn!(
            path = %self.path.display(),
            kept_as = %aside.display(),
            reason = %why,
            "unusable flag cache file kept aside as {}",
            aside.display()
        );
        Ok(true)
    }

    fn keep_aside_error(&self, source: io::Error) -> Error {
        Error::store(FileError::KeepAside {
            path: self.path.clone(),
            aside: self.corrupt_path(),
            source,
        })
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Option<CacheRecord>, Error> {
        self.remove_stale_temps();
        for _ in 0..READ_ATTEMPTS {
            let Some((bytes, read)) = read_bounded(&self.path, MAX_FILE_BYTES)? else {
                return Ok(None);
            };
            match parse(&bytes) {
                Ok(record) => return Ok(Some(record)),
                Err(why) => {
                    if self.keep_aside(&read, &why)? {
                        return Ok(None);
                    }
                }
            }
        }
        Err(Error::store(FileError::Unsettled {
            path: self.path.clone(),
        }))
    }

    fn save(&self, record: &CacheRecord) -> Result<(), Error> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(Error::store)?;
        }
        let bytes = serde_json::to_vec(record).map_err(Error::store)?;
        self.replace_via(&self.temp_path(), &bytes)
    }
}

/// The whole file with the metadata of what was read, or `None` when there is no file; a file
/// over `limit` bytes is refused without being read whole.
fn read_bounded(path: &Path, limit: u64) -> Result<Option<(Vec<u8>, fs::Metadata)>, Error> {
    let read_error = |source| {
        Error::store(FileError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let metadata = file.metadata().map_err(read_error)?;
    let path = path.to_owned();
    if !metadata.is_file() {
        return Err(Error::store(FileError::NotAFile { path }));
    }
    if metadata.len() > limit {
        let size = metadata.len();
        return Err(Error::store(FileError::TooLarge { path, size, limit }));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // One byte more than the limit tells a file that grew since the metadata was read.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| {
            Error::store(FileError::Read {
                path: path.clone(),
                source,
            })
        })?;
    if bytes.len() as u64 > limit {
        return Err(Error::store(FileError::Grew { path, limit }));
    }
    Ok(Some((bytes, metadata)))
}

fn parse(bytes: &[u8]) -> Result<CacheRecord, Unusable> {
    match serde_json::from_slice::<CacheRecord>(bytes) {
        Ok(record) if record.version == CacheRecord::VERSION => Ok(record),
        Ok(record) => Err(Unusable::Version(record.version)),
        Err(error) => {
            // Another format may have another shape: its version says more than the shape error.
            #[derive(serde::Deserialize)]
            struct Versioned {
                version: u32,
            }
            match serde_json::from_slice::<Versioned>(bytes) {
                Ok(v) if v.version != CacheRecord::VERSION => Err(Unusable::Version(v.version)),
                _ => Err(Unusable::Corrupt(error)),
            }
        }
    }
}

/// True for `.<target>.<parts>.tmp` where the parts are those of [`FileStore::temp_path`]
/// (pid, random, counter) or of earlier versions (pid, counter): hex digits, so that a sibling
/// file named `<target>.<something>` never has its temporary files taken for ours.
fn is_temp_name(target: &str, candidate: &str) -> bool {
    candidate
        .strip_prefix('.')
        .and_then(|rest| rest.strip_prefix(target))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .is_some_and(|middle| {
            (2..=3).contains(&middle.split('.').count())
                && middle
                    .split('.')
                    .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_hexdigit()))
        })
}

/// A modification time in the future (clock skew, a network file system) is not stale.
fn is_stale(metadata: &fs::Metadata, now: SystemTime) -> bool {
    metadata
        .modified()
        .ok()
        .and_then(|modified| now.duration_since(modified).ok())
        .is_some_and(|age| age >= STALE_TEMP_AGE)
}

/// Whether two metadata describe the same file with the same contents, as far as can be told
/// without reading it again.
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return false;
        }
    }
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// `.` for a bare file name, whose parent is the empty path.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Always a new file, so a planted symlink or a file left at the name is never followed or
/// reused; readable by the owner only where that exists, as the cache holds flags and a profile
/// hash.
fn create_private(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The rename is durable only once the directory entry is; a caller told "saved" must be able
/// to count on it after a power loss, so a failure is reported.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| {
            Error::store(FileError::SyncDir {
                dir: dir.to_owned(),
                source,
            })
        })
}

/// std cannot open a directory as a file elsewhere (Windows needs a special flag); NTFS
/// journals the rename itself.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}
