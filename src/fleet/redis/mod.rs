//! Shared mode on Redis: the record, the lease and the change channel of one request's flags.

mod lead;
mod link;
mod listen;
mod record;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::WallClock;
use crate::config::Config;
use crate::error::Error;
use crate::fleet::SharedState;
use crate::parse::RawFlags;
use crate::store::CacheRecord;

pub(crate) use lead::coordinate;
use link::Link;
pub(crate) use record::MAX_RECORD_BYTES;

/// How far ahead of this host's clock a record may be stamped before it is refused.
const MAX_AHEAD: Duration = Duration::from_secs(60);

/// The longest [`RedisStore::timeout`]: a lease lasts the request timeout plus twice this.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The default [`RedisStore::timeout`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A Redis server that a fleet of processes shares, so that one of them fetches per interval and
/// the others adopt its flags the moment they are written. Give it to
/// [`FlagsBuilder::shared_store`](crate::FlagsBuilder::shared_store).
///
/// For each request (base URL, client, distribution, environment and a hash of the profile id:
/// never the id itself) Redis holds three keys under the [`prefix`](Self::prefix):
///
/// - `{prefix}:{hash}`: the last fetch's record, in [`FileStore`](crate::FileStore)'s format
///   ([`CacheRecord`], with `cache_timestamp` and the `ETag`; no overrides, which stay with each
///   process). It expires after seven fetch intervals.
/// - `{prefix}:{hash}:lease`: who is fetching now (`SET NX PX`, the request timeout plus a margin).
/// - `{prefix}:{hash}:changed`: the channel on which a new record is announced.
///
/// When a handle's flags are due it reads the record first: one newer than its own, written
/// within the interval, is adopted without a request. Otherwise the handle that takes the lease
/// fetches, writes the record and announces it; every handle subscribed adopts it at once.
///
/// Redis is an optimisation, never a dependency: when it is down, slow, full, or holds a record
/// that is corrupt, oversized (over 4 MiB), of another format version or for another request, a
/// handle keeps its last good flags and fetches on its own schedule (logged once, visible in
/// [`RedisStore::state`]), tries Redis again with backoff (1 s
/// doubling to a minute, or to half the fetch interval when that is shorter), and rejoins when it
/// answers.
///
/// ```
/// use std::time::Duration;
/// use flagpole::RedisStore;
///
/// let shared = RedisStore::new("redis://:secret@127.0.0.1:6379/0")?
///     .prefix("myapp-flags")
///     .timeout(Duration::from_millis(500));
/// // The password is never shown.
/// assert_eq!(format!("{shared:?}"), r#"RedisStore { url: "redis://127.0.0.1:6379/0", prefix: "myapp-flags" }"#);
/// # Ok::<(), flagpole::Error>(())
/// ```
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    /// The URL without user or password, for `Debug`.
    shown: String,
    prefix: String,
    timeout: Duration,
    state: Arc<watch::Sender<SharedState>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store at `url`: `redis://[user][:password@]host[:port][/db]`, or `rediss://` for TLS
    /// (rustls with the platform's certificates). Nothing connects until a handle starts.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse or has another scheme. The message never
    /// includes the password.
    pub fn new(url: &str) -> Result<Self, Error> {
        let parsed = url::Url::parse(url).map_err(|e| Error::config(format!("Redis URL: {e}")))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            return Err(Error::config(format!(
                "Redis URL: scheme must be redis or rediss, not `{}`",
                parsed.scheme()
            )));
        }
        let mut shown = parsed.clone();
        // Both setters only fail for URLs that cannot have credentials, which these can.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        let shown = shown.to_string();
        let client = redis::Client::open(url)
            .map_err(|e| Error::config(format!("Redis URL `{shown}`: {}", e.category())))?;
        Ok(RedisStore {
            client,
            shown,
            prefix: "flagpole".to_owned(),
            timeout: DEFAULT_TIMEOUT,
            state: Arc::new(watch::Sender::new(SharedState::Connecting)),
        })
    }

    /// How this store is doing for the handle using it: `Connecting` until Redis first answers,
    /// `Joined` while it answers (the handle coordinates with the fleet), `Down` while it fails
    /// (the handle fetches on its own). Clones share it: keep a clone before giving the store to
    /// the builder. A store shared by several handles shows the latest report of any of them.
    ///
    /// ```
    /// let shared = flagpole::RedisStore::new("redis://127.0.0.1:6379")?;
    /// let flags = flagpole::Flags::builder().shared_store(shared.clone()).enabled(false).build()?;
    /// assert_eq!(shared.state().as_str(), "connecting");
    /// # drop(flags);
    /// # Ok::<(), flagpole::Error>(())
    /// ```
    pub fn state(&self) -> SharedState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of [`state`](Self::state).
    pub fn state_receiver(&self) -> watch::Receiver<SharedState> {
        self.state.subscribe()
    }

    /// The prefix of every key (default `flagpole`): processes that share flags use the same.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one Redis command may take (default 1 s) before Redis counts as down and the
    /// handle fetches on its own. Taken within 1 ms to 60 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMEOUT);
        self
    }
}

/// One handle's view of the shared tier: its request's keys in Redis, the connection, and the
/// latest record announced.
pub(crate) struct Tier {
    link: Link,
    /// What the records of this request hold as their `key`.
    record_key: String,
    key: String,
    lease: String,
    channel: String,
    /// This handle's lease value, so that it releases only its own lease.
    holder: String,
    interval: Duration,
    lease_for: Duration,
    ttl: Duration,
    clock: WallClock,
    /// The newest usable record announced on the channel (or read when joining).
    latest: watch::Sender<Option<Arc<CacheRecord>>>,
    token: CancellationToken,
    /// Flags too large to share were reported (once).
    oversize_warned: std::sync::atomic::AtomicBool,
}

impl Tier {
    pub(crate) fn new(store: RedisStore, config: &Config) -> Self {
        let record_key = config.request_key();
        let digest = Sha256::digest(record_key.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("{}:{hex}", store.prefix);
        // Long enough for a slow answer and the write after it; a holder that dies costs this.
        let lease_for = config.timeout + store.timeout * 2 + Duration::from_millis(500);
        Tier {
            link: Link::new(
                store.client,
                store.timeout,
                config.fetch_interval,
                store.state,
            ),
            lease: format!("{key}:lease"),
            channel: format!("{key}:changed"),
            key,
            record_key,
            holder: format!("{:016x}", fastrand::u64(..)),
            interval: config.fetch_interval,
            lease_for,
            ttl: (config.fetch_interval * 7).max(Duration::from_secs(60)),
            clock: config.wall_clock.clone(),
            latest: watch::Sender::new(None),
            token: CancellationToken::new(),
            oversize_warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn latest(&self) -> watch::Receiver<Option<Arc<CacheRecord>>> {
        self.latest.subscribe()
    }

    pub(crate) fn stop(&self) {
        self.token.cancel();
    }

    /// Starts following the change channel, on the current runtime, until the returned token
    /// is cancelled (or the tier stops).
    pub(crate) fn listen(self: &Arc<Self>) -> CancellationToken {
        let token = self.token.child_token();
        tokio::spawn(listen::run(Arc::clone(self), token.clone()));
        token
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The record Redis holds now, if it is usable. Read with a size cap: Redis sends at most
    /// one byte past the limit.
    async fn read(&self) -> Result<Option<CacheRecord>, Error> {
        let bytes: Vec<u8> = self
            .link
            .query(
                redis::cmd("GETRANGE")
                    .arg(&self.key)
                    .arg(0)
                    .arg(MAX_RECORD_BYTES),
            )
            .await?;
        let record = record::decode(&bytes, &self.record_key);
        // Stamped by a host whose clock runs ahead: adopted, it would make every record
        // written after it look older until the clocks met. Refused; the next fetch replaces it.
        let ahead = |r: &CacheRecord| {
            Duration::from_millis(r.cache_timestamp.saturating_sub(self.now_ms()))
        };
        Ok(record.filter(|r| {
            let refused = ahead(r) > MAX_AHEAD;
            if refused {
                tracing::warn!(ahead_ms = ahead(r).as_millis() as u64, "ignoring a shared flag record stamped in the future (a clock ahead?); the next fetch replaces it");
            }
            !refused
        }))
    }

    /// Keeps `record` as the latest announced, unless it is the one kept. Any other timestamp
    /// counts, an earlier one too: a writer whose clock ran ahead must not hide the records
    /// written after it (the poller decides what it adopts).
    fn announce(&self, record: CacheRecord) {
        self.latest.send_if_modified(|latest| {
            let other = latest
                .as_ref()
                .is_none_or(|held| held.cache_timestamp != record.cache_timestamp);
            if other {
                *latest = Some(Arc::new(record));
            }
            other
        });
    }

    /// The timestamp of the latest record announced.
    fn latest_timestamp(&self) -> Option<u64> {
        self.latest.borrow().as_ref().map(|r| r.cache_timestamp)
    }

    /// Takes the lease when nobody holds it.
    async fn try_lease(&self) -> Result<bool, Error> {
        let set: Option<String> = self
            .link
            .query(
                redis::cmd("SET")
                    .arg(&self.lease)
                    .arg(&self.holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(self.lease_for)),
            )
            .await?;
        Ok(set.is_some())
    }

    /// How long the lease has left (none when nobody holds it).
    async fn lease_left(&self) -> Result<Option<Duration>, Error> {
        let ms: i64 = self.link.query(redis::cmd("PTTL").arg(&self.lease)).await?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    /// Writes a fetch's record and announces it. False when nothing was written.
    async fn write(&self, cache_timestamp: u64, etag: Option<&str>, flags: &RawFlags) -> bool {
        let bytes = record::encode(&self.record_key, cache_timestamp, etag, flags);
        if bytes.len() > MAX_RECORD_BYTES {
            if !self
                .oversize_warned
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    limit = MAX_RECORD_BYTES,
                    "flags too large for the shared store; the fleet fetches them one by one"
                );
            }
            return false;
        }
        let set = redis::cmd("SET")
            .arg(&self.key)
            .arg(bytes)
            .arg("PX")
            .arg(millis(self.ttl))
            .to_owned();
        if self.link.query::<()>(&set).await.is_err() {
            return false;
        }
        let publish = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(cache_timestamp)
            .to_owned();
        let _ = self.link.query::<i64>(&publish).await;
        true
    }

    /// Deletes the lease if this handle still holds it (another may hold it after an expiry).
    async fn release(&self) {
        let release = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.lease)
            .arg(&self.holder)
            .to_owned();
        let _ = self.link.query::<i64>(&release).await;
    }
}

/// Compare-and-delete, atomic on the server.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
