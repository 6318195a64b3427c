//! Helpers of the shared-mode tests (`shared_redis.rs`, `shared_redis_faults.rs`): a flag API
//! whose answer the test sets, handles on a real Redis, a log of every snapshot each handle
//! publishes, and bounded waits in real time.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flagpole::{Flags, FlagsBuilder, HttpTransport, RedisStore, Source};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::redis_server::RedisServer;

/// A flag API answering `[{"n": version}]`, with the version the test sets.
pub struct Api {
    pub server: MockServer,
    version: Arc<AtomicI64>,
    /// One HTTP client for every handle of the test: building one takes about 0.2 s in a debug
    /// build (twenty handles would spend seconds starting one by one). Each handle still has
    /// its own `RedisStore`, its own Redis connections.
    transport: HttpTransport,
}

struct Versioned(Arc<AtomicI64>);

impl Respond for Versioned {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!([{ "n": self.0.load(Ordering::SeqCst) }]))
    }
}

impl Api {
    pub async fn start(version: i64) -> Api {
        let server = MockServer::start().await;
        let api = Api {
            server,
            version: Arc::new(AtomicI64::new(version)),
            transport: HttpTransport::new().unwrap(),
        };
        api.mount().await;
        api
    }

    /// Mounts the versioned answer (after other mocks: those mounted earlier win).
    pub async fn mount(&self) {
        Mock::given(method("GET"))
            .and(path("/flags"))
            .respond_with(Versioned(Arc::clone(&self.version)))
            .mount(&self.server)
            .await;
    }

    /// What the API answers from now on.
    pub fn set(&self, version: i64) {
        self.version.store(version, Ordering::SeqCst);
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Requests received so far.
    pub async fn requests(&self) -> usize {
        self.server.received_requests().await.unwrap().len()
    }

    /// Requests received so far that carry `x-handle: {handle}`.
    pub async fn requests_of(&self, handle: usize) -> usize {
        let handle = handle.to_string();
        self.server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| {
                r.headers
                    .get("x-handle")
                    .is_some_and(|v| v == handle.as_str())
            })
            .count()
    }
}

/// A handle in shared mode on `redis` (its own `RedisStore`: its own connections), fetching
/// from `api` every `interval`, sending `x-handle: {id}`.
pub fn builder(api: &Api, redis: &RedisServer, interval: Duration, id: usize) -> FlagsBuilder {
    builder_with_store(api, redis, interval, id).0
}

/// [`builder`] and a clone of its store, whose `state()` tells how Redis is doing for it.
pub fn builder_with_store(
    api: &Api,
    redis: &RedisServer,
    interval: Duration,
    id: usize,
) -> (FlagsBuilder, RedisStore) {
    let store = RedisStore::new(&redis.url()).unwrap();
    let builder = Flags::builder()
        .transport(api.transport.clone())
        .base_url(api.uri())
        .fetch_interval(interval)
        .header("x-handle", id.to_string())
        .shared_store(store.clone());
    (builder, store)
}

/// `size` handles of [`builder`], numbered from 0.
pub fn fleet(api: &Api, redis: &RedisServer, interval: Duration, size: usize) -> Vec<Flags> {
    fleet_with_stores(api, redis, interval, size).0
}

/// [`fleet`] and each handle's store, in the same order.
pub fn fleet_with_stores(
    api: &Api,
    redis: &RedisServer,
    interval: Duration,
    size: usize,
) -> (Vec<Flags>, Vec<RedisStore>) {
    (0..size)
        .map(|id| {
            let (builder, store) = builder_with_store(api, redis, interval, id);
            (builder.build().unwrap(), store)
        })
        .unzip()
}

/// Milliseconds since the Unix epoch, as `cache_timestamp` counts them.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One snapshot a handle published, and the wall-clock time its subscriber saw it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub at_ms: u64,
    pub n: Option<i64>,
    pub cache_timestamp: Option<u64>,
    pub source: Source,
}

pub type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// Notes every snapshot `flags` publishes from now on, with the time it was seen.
pub fn watch(flags: &Flags) -> SeenLog {
    let log = SeenLog::default();
    let mut changes = flags.subscribe();
    let noted = Arc::clone(&log);
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let at_ms = now_ms();
            let snapshot = changes.borrow_and_update().clone();
            noted.lock().unwrap().push(Seen {
                at_ms,
                n: snapshot.get_i64("n"),
                cache_timestamp: snapshot.cache_timestamp(),
                source: snapshot.source(),
            });
        }
    });
    log
}

/// For each version: the milliseconds from the record's write (the `cache_timestamp` that the
/// followers' snapshots carry, stamped just before the leader's `SET`) to each handle's first
/// snapshot with that version, the leader's own included. Panics when a handle never saw a
/// version or no handle adopted it.
pub fn propagation(logs: &[SeenLog], versions: impl IntoIterator<Item = i64>) -> Vec<u64> {
    let logs: Vec<Vec<Seen>> = logs.iter().map(|l| l.lock().unwrap().clone()).collect();
    let mut delays = Vec::new();
    for version in versions {
        let seen = |log: &Vec<Seen>| log.iter().find(|s| s.n == Some(version)).copied();
        // The first write of this version (a second fetch of it, if any, came later).
        let written = logs
            .iter()
            .filter_map(seen)
            .filter(|s| s.source == Source::Shared)
            .filter_map(|s| s.cache_timestamp)
            .min()
            .unwrap_or_else(|| panic!("no handle adopted version {version}"));
        for (handle, log) in logs.iter().enumerate() {
            let first = seen(log)
                .unwrap_or_else(|| panic!("handle {handle} never served version {version}"));
            delays.push(first.at_ms.saturating_sub(written));
        }
    }
    delays.sort_unstable();
    delays
}

/// The `q` quantile (0 to 1) of sorted values: the smallest value with at least `q` of them at
/// or below it.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Waits until `done` answers true, checking every 10 ms; panics after `limit`.
pub async fn until<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether every handle serves `n == version`.
pub fn serve(handles: &[Flags], version: i64) -> bool {
    handles.iter().all(|h| h.get_i64("n") == Some(version))
}

/// Whether every handle serves `n == version`, and its [`watch`] log noted it.
pub fn all_serve(handles: &[Flags], logs: &[SeenLog], version: i64) -> bool {
    serve(handles, version)
        && logs
            .iter()
            .all(|log| log.lock().unwrap().iter().any(|s| s.n == Some(version)))
}
