//! Helpers of the streaming clients' wire tests (`stream_relay.rs`): streaming handles over real
//! sockets, each with a transport that records when it sent a flags request and when it opened a
//! change stream.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flagpole::{
    BoxFuture, Error, Flags, HttpTransport, Request, Response, StreamResponse, StreamState,
    Transport,
};
use tokio::time::Instant;

/// The flag every test body carries: `[{"v": <n>}]`.
pub const FLAG: &str = "v";

/// A fetch interval no test lasts: a change that arrives fast came through the stream. A
/// handle's first refresh after its first flags is drawn anywhere in the interval (FLEET.md,
/// rule 2), so one poll per handle may still come during a test: a 304, unless it happens to
/// bring a change before the stream's event does.
pub const LONG: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Calls {
    sends: Vec<Instant>,
    /// The status of each answer, in the order they came.
    answers: Vec<u16>,
    opens: Vec<Instant>,
}

/// `HttpTransport` recording when each flags request was sent and each stream open was tried
/// (when the poller or the stream task called it), and how each request was answered.
#[derive(Clone)]
pub struct Counting {
    inner: HttpTransport,
    calls: Arc<Mutex<Calls>>,
}

impl Counting {
    /// Over a client of its own, like a process of a fleet.
    pub fn new() -> Self {
        Counting {
            inner: HttpTransport::new().unwrap(),
            calls: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When each flags request was sent, oldest first.
    pub fn sends(&self) -> Vec<Instant> {
        self.lock().sends.clone()
    }

    /// Flags requests answered with `status` so far.
    pub fn answered(&self, status: u16) -> usize {
        self.lock().answers.iter().filter(|s| **s == status).count()
    }

    /// When each stream open was tried, oldest first.
    pub fn opens(&self) -> Vec<Instant> {
        self.lock().opens.clone()
    }
}

impl Transport for Counting {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        self.lock().sends.push(Instant::now());
        let send = self.inner.send(request);
        let calls = Arc::clone(&self.calls);
        Box::pin(async move {
            let result = send.await;
            if let Ok(response) = &result {
                let mut calls = calls.lock().unwrap_or_else(|e| e.into_inner());
                calls.answers.push(response.status.as_u16());
            }
            result
        })
    }

    fn open(&self, request: Request) -> BoxFuture<'static, Result<StreamResponse, Error>> {
        self.lock().opens.push(Instant::now());
        self.inner.open(request)
    }
}

/// One handle of a fleet and its transport's record.
pub struct Handle {
    pub flags: Flags,
    pub calls: Counting,
}

impl Handle {
    /// A handle on `base` (`http://…/v1`) polling every `interval` (no jitter), streaming or
    /// not.
    pub fn new(base: &str, interval: Duration, stream: bool) -> Handle {
        let calls = Counting::new();
        let flags = Flags::builder()
            .base_url(base)
            .fetch_interval(interval)
            .schedule_jitter(0.0)
            .stream(stream)
            .transport(calls.clone())
            .build()
            .unwrap();
        Handle { flags, calls }
    }

    pub fn value(&self) -> Option<i64> {
        self.flags.get_i64(FLAG)
    }

    pub fn stream(&self) -> StreamState {
        self.flags.status().stream()
    }
}

/// `n` streaming handles on `base` polling every `interval`.
pub fn fleet(n: usize, base: &str, interval: Duration) -> Vec<Handle> {
    (0..n).map(|_| Handle::new(base, interval, true)).collect()
}

/// Waits until `done` holds for every handle, checking every 10 ms; panics after `limit` with
/// how many did not get there.
pub async fn until_all(
    handles: &[Handle],
    what: &str,
    limit: Duration,
    done: impl Fn(&Handle) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let behind = handles.iter().filter(|h| !done(h)).count();
        if behind == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{behind} of {} handles not {what} after {limit:?}",
            handles.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every handle serves `value` with fresh flags and its stream connected.
pub async fn all_connected(handles: &[Handle], value: i64, limit: Duration) {
    until_all(handles, "connected", limit, |h| {
        let status = h.flags.status();
        status.is_fresh() && status.stream() == StreamState::Connected && h.value() == Some(value)
    })
    .await;
}

/// Runs `change`, then waits until every handle serves `value`: for each, the moment its
/// snapshot showed it (from `subscribe()`, watched since before the change). Panics after
/// `limit` with how many never did.
pub async fn serve_after(
    handles: &[Handle],
    value: i64,
    limit: Duration,
    change: impl FnOnce(),
) -> Vec<Instant> {
    let watchers: Vec<_> = handles
        .iter()
        .map(|h| {
            let mut changes = h.flags.subscribe();
            tokio::spawn(async move {
                let seen = changes.wait_for(|s| s.get_i64(FLAG) == Some(value));
                tokio::time::timeout(limit, seen).await.ok()?.ok()?;
                Some(Instant::now())
            })
        })
        .collect();
    change();
    let mut seen = Vec::with_capacity(handles.len());
    for watcher in watchers {
        seen.push(watcher.await.unwrap());
    }
    let missed = seen.iter().filter(|s| s.is_none()).count();
    assert_eq!(
        missed,
        0,
        "{missed} of {} handles did not serve {FLAG}={value} within {limit:?}",
        handles.len()
    );
    seen.into_iter().flatten().collect()
}

/// p50, p99 and max (nearest rank), in milliseconds.
pub fn percentiles(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let r = (p * ms.len() as f64).ceil() as usize;
        ms.get(r.clamp(1, ms.len().max(1)) - 1)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (
        rank(0.50),
        rank(0.99),
        ms.last().copied().unwrap_or(f64::NAN),
    )
}

/// The most stream opens a handle can try within `window` of its stream dropping: the k-th
/// reconnection waits at least half of `1 s × 2^(k-1)`, so the k-th try comes no sooner than
/// `0.5 s × (2^k − 1)` after the drop.
pub fn max_reconnects(window: Duration) -> usize {
    let mut k = 0;
    while Duration::from_millis(500) * (2u32.pow(k + 1) - 1) <= window {
        k += 1;
    }
    k as usize
}
