//! Helpers for the streaming-client suites (`stream_scripted.rs`, `stream_scripted_more.rs`):
//! a `ScriptedTransport` wrapper that notes when each request and each stream open happened
//! (tokio time), SSE text, and the waits every test uses. Each suite uses a subset.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flagpole::{
    BoxFuture, Error, Flags, FlagsBuilder, Request, Response, ScriptedResponse, ScriptedTransport,
    Status, StreamResponse, StreamState, Transport,
};
use serde_json::json;
use tokio::time::{sleep, Instant};

pub const HOUR: Duration = Duration::from_secs(60 * 60);
/// The stream's inactivity limit, its backoff's first ceiling and cap, and the connection length
/// after which the backoff starts over (`src/stream.rs`).
pub const INACTIVITY: Duration = Duration::from_secs(45);
pub const RECONNECT_INITIAL: Duration = Duration::from_secs(1);
pub const RECONNECT_CAP: Duration = Duration::from_secs(60);
pub const HEALTHY: Duration = Duration::from_secs(60);
/// The relay's keep-alive comment.
pub const KEEP_ALIVE: &str = ": keep-alive\n\n";
/// The timer wheel has millisecond ticks: an instant may be late by up to one.
pub const TICK: Duration = Duration::from_millis(1);

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `"name"`: a strong entity tag.
pub fn tag(name: &str) -> String {
    format!("\"{name}\"")
}

/// A 200 with `{"v": v}` and the entity tag `"name"`.
pub fn flags_v(v: i64, name: &str) -> ScriptedResponse {
    ScriptedResponse::json(&json!({ "v": v })).header("etag", &tag(name))
}

/// A change event as the relay sends it: `event: flags`, the tag as `id` and in the data.
pub fn event(etag: &str) -> String {
    let data = json!({ "etag": etag, "cacheTimestamp": 1_700_000_000_000u64 });
    format!("event: flags\nid: {etag}\ndata: {data}\n\n")
}

/// A change event that names no tag (no `id`, no `etag` in its data).
pub fn untagged_event() -> String {
    "event: flags\ndata: {}\n\n".to_owned()
}

/// Lets every task run until idle, then moves the paused clock by 1 ms.
pub async fn idle() {
    sleep(ms(1)).await;
}

/// Fails the test instead of hanging when `fut` never completes (tokio time).
pub async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Waits (at most a day of paused time) until the status satisfies `pred`, and returns it.
pub async fn wait_status(flags: &Flags, what: &str, pred: impl FnMut(&Status) -> bool) -> Status {
    let mut rx = flags.status_receiver();
    let status = within(what, 24 * HOUR, rx.wait_for(pred))
        .await
        .expect("status channel closed")
        .clone();
    status
}

/// Waits until the stream is in `state`.
pub async fn wait_stream(flags: &Flags, state: StreamState) -> Status {
    wait_status(flags, state.as_str(), |s| s.stream() == state).await
}

/// A handle that follows the stream on `wire`, polling every hour.
pub fn streaming(wire: &Wire) -> FlagsBuilder {
    Flags::builder()
        .transport(wire.clone())
        .stream(true)
        .fetch_interval(HOUR)
}

/// A handle built from `builder` (polling every hour, see [`streaming`]) on `wire`, which serves
/// v1 from now on, once its stream is connected: the handle and the stream's feed.
pub async fn connected_with(
    wire: &Wire,
    builder: impl FnOnce(FlagsBuilder) -> FlagsBuilder,
) -> (Flags, flagpole::StreamFeed) {
    wire.script.set(flags_v(1, "v1"));
    let (stream, feed) = flagpole::ScriptedStream::events();
    wire.script.push_stream(stream);
    let flags = builder(streaming(wire)).build().unwrap();
    settle(&flags).await;
    wait_stream(&flags, StreamState::Connected).await;
    (flags, feed)
}

/// Waits for the first flags, then refreshes once: the next scheduled fetch is then the regular
/// one, at least 90% of the interval away (after the first fetch it is drawn anywhere in the
/// interval, which would make request counts over a window a matter of luck).
pub async fn settle(flags: &Flags) {
    within("the first flags", secs(60), flags.ready())
        .await
        .expect("first flags");
    within("the settling refresh", secs(60), flags.refresh())
        .await
        .expect("settling refresh");
}

/// Sends a keep-alive every 15 s for `total` (paused time), as the relay does.
pub async fn keep_alive_for(feed: &flagpole::StreamFeed, total: Duration) {
    let end = Instant::now() + total;
    while Instant::now() < end {
        assert!(feed.send(KEEP_ALIVE), "the client closed the stream");
        sleep(secs(15).min(end - Instant::now())).await;
    }
}

#[derive(Default)]
struct Log {
    sends: Vec<Instant>,
    opens: Vec<Instant>,
}

/// A `ScriptedTransport` that also notes the tokio instant of each request and each stream
/// open (when its future is first polled, as the script records them). Clones share the log.
#[derive(Clone, Default)]
pub struct Wire {
    pub script: ScriptedTransport,
    log: Arc<Mutex<Log>>,
}

impl Wire {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When each flags request was sent, oldest first.
    pub fn fetch_times(&self) -> Vec<Instant> {
        self.lock().sends.clone()
    }

    pub fn fetches(&self) -> usize {
        self.lock().sends.len()
    }

    /// When each stream open was tried, oldest first.
    pub fn open_times(&self) -> Vec<Instant> {
        self.lock().opens.clone()
    }

    pub fn opens(&self) -> usize {
        self.lock().opens.len()
    }

    /// The `If-None-Match` of each flags request, oldest first.
    pub fn if_none_match(&self) -> Vec<Option<String>> {
        crate::support::if_none_match(&self.script.requests())
    }
}

impl Transport for Wire {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let send = self.script.send(request);
        let log = self.clone();
        Box::pin(async move {
            log.lock().sends.push(Instant::now());
            send.await
        })
    }

    fn open(&self, request: Request) -> BoxFuture<'static, Result<StreamResponse, Error>> {
        let open = self.script.open(request);
        let log = self.clone();
        Box::pin(async move {
            log.lock().opens.push(Instant::now());
            open.await
        })
    }
}

/// A transport written before streams existed: it implements `send` only, so `open` is the
/// trait's default (`Error::Config`).
#[derive(Clone)]
pub struct PollOnly(pub Wire);

impl Transport for PollOnly {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        self.0.send(request)
    }
}

/// The gaps between consecutive instants.
pub fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The ceiling `b` of the n-th reconnection delay (n from 0): 1 s doubling, capped at 60 s.
pub fn ceiling(n: usize) -> Duration {
    let factor = 2u32.saturating_pow(n.min(31) as u32);
    RECONNECT_INITIAL.saturating_mul(factor).min(RECONNECT_CAP)
}

/// Checks that each gap lies in the equal-jitter bounds `[b/2, b]` of its step, starting from
/// step `first` (the timer may add one tick).
pub fn assert_backoff(gaps: &[Duration], first: usize) {
    for (i, gap) in gaps.iter().enumerate() {
        let b = ceiling(first + i);
        assert!(
            *gap >= b / 2 && *gap <= b + TICK,
            "reconnection {i}: waited {gap:?}, outside [{:?}, {b:?}]; all gaps: {gaps:?}",
            b / 2
        );
    }
}

/// The most opens `span` of downtime allows after a first one: each wait at its floor `b/2`.
pub fn max_opens(span: Duration, first: usize) -> usize {
    let (mut opens, mut elapsed, mut n) = (1, Duration::ZERO, first);
    loop {
        elapsed += ceiling(n) / 2;
        if elapsed > span {
            return opens;
        }
        opens += 1;
        n += 1;
    }
}

/// The fewest opens `span` of downtime allows after a first one: each wait at its ceiling.
pub fn min_opens(span: Duration, first: usize) -> usize {
    let (mut opens, mut elapsed, mut n) = (1, Duration::ZERO, first);
    loop {
        elapsed += ceiling(n) + TICK;
        if elapsed > span {
            return opens;
        }
        opens += 1;
        n += 1;
    }
}
