//! The poller's promises under hostile conditions (issue 12): a hung store, a disable racing a
//! response, a long `Retry-After`, a store that cannot be read, a suspended machine, panicking
//! caller code, a rotating `ETag` and an oversized body from any transport.
//!
//! Paused clock with in-memory transports and stores. Under the paused clock tokio never
//! advances time while a `spawn_blocking` store call runs, so tests that hold the store wait by
//! yielding, never by sleeping.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flagpole::{
    BoxFuture, CacheRecord, Error, Flags, FlagsBuilder, MemoryStore, Request, Response,
    ScriptedResponse, ScriptedTransport, Source, Status, Store, Transport,
};
use http::HeaderMap;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::yield_now;
use tokio::time::sleep;

use support::{wait_status, within, yield_until, GatedStore, Recorder};

const HOUR: Duration = Duration::from_secs(3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------------------------
// 1. A hung store never delays the privacy switch, and no request starts after it
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_hung_save_never_delays_disable_and_no_request_starts_after_it() {
    let store = GatedStore::saves_gated();
    let _open = store.open_on_drop();
    let transport = ScriptedTransport::new();
    transport
        .push(ScriptedResponse::json(&json!({"remote": 1})))
        .push(ScriptedResponse::json(&json!({"remote": 2})).delay(secs(10)));
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .default_flag("remote", 0)
        .build()
        .unwrap();
    // The first fetch succeeds; its save hangs in the store.
    within("the save", HOUR, store.save.entered.notified()).await;
    assert_eq!(flags.get_i64("remote"), Some(1));

    // The user changes an override and refreshes, then opts out, while the store hangs.
    let saved = tokio::spawn(flags.set_override("o", true));
    let refresh = tokio::spawn(flags.refresh());
    assert!(
        yield_until(100, || transport.request_count() == 2).await,
        "the refresh fetch starts"
    );
    let disable = tokio::spawn(flags.set_enabled(false));
    assert!(
        yield_until(100, || disable.is_finished()).await,
        "set_enabled(false) waited for the store: {:?}",
        flags.status()
    );
    let requests = transport.request_count();
    assert!(
        matches!(flags.status(), Status::Disabled),
        "{:?}",
        flags.status()
    );
    assert_eq!(flags.get_i64("remote"), Some(0), "defaults only");
    assert_eq!(flags.get_bool("o"), Some(true), "overrides still served");
    let answer = refresh.await.unwrap();
    assert!(matches!(answer, Err(Error::Disabled)), "{answer:?}");

    // Nothing goes out while the store hangs, nor once it answers, nor later.
    for _ in 0..100 {
        yield_now().await;
    }
    assert_eq!(
        transport.request_count(),
        requests,
        "a request after the opt-out"
    );
    store.open();
    within("the override's save", HOUR, saved)
        .await
        .unwrap()
        .unwrap();
    sleep(24 * HOUR).await;
    assert_eq!(
        transport.request_count(),
        requests,
        "a request after the opt-out"
    );
    assert!(matches!(flags.status(), Status::Disabled));
    assert_eq!(store.inner.get().unwrap().overrides["o"], json!(true));
}

/// A change whose save had not started when the poller stopped still reaches the store, after
/// the save that was running (which must not overwrite it with older data).
#[tokio::test(start_paused = true)]
async fn a_change_not_yet_saved_at_shutdown_is_saved_after_the_running_save() {
    let store = GatedStore::saves_gated();
    let _open = store.open_on_drop();
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    let flags = Flags::builder()
        .transport(transport)
        .store(store.clone())
        .build()
        .unwrap();
    within("the fetch's save", HOUR, store.save.entered.notified()).await;
    let saved = tokio::spawn(flags.set_override("late", true));
    yield_until(10, || false).await;
    within("shutdown", secs(1), flags.shutdown()).await;
    assert!(store.inner.get().is_none(), "the first save still blocks");
    store.open();
    // Both saves run on the blocking pool, in order; wait for each to finish.
    for _ in 0..2 {
        within("a save", HOUR, store.save.finished.notified()).await;
        if store
            .inner
            .get()
            .is_some_and(|r| r.overrides.contains_key("late"))
        {
            break;
        }
    }
    let record = store.inner.get().expect("saved");
    assert_eq!(
        record.overrides["late"],
        json!(true),
        "the last change was lost"
    );
    assert_eq!(record.flags["a"], json!(1));
    assert!(
        matches!(saved.await.unwrap(), Ok(())),
        "the caller gets the store's answer"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_load_never_delays_disable_refresh_or_shutdown() {
    let store = GatedStore::default();
    let _open = store.open_on_drop();
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .build()
        .unwrap();
    within("the load", HOUR, store.load.entered.notified()).await;
    // A refresh does not wait for the cache: it fetches.
    let refresh = tokio::spawn(flags.refresh());
    assert!(
        yield_until(100, || refresh.is_finished()).await,
        "refresh waited for the load"
    );
    assert_eq!(refresh.await.unwrap().unwrap().get_i64("a"), Some(1));
    let disable = tokio::spawn(flags.set_enabled(false));
    assert!(
        yield_until(100, || disable.is_finished()).await,
        "disable waited for the load"
    );
    assert!(matches!(flags.status(), Status::Disabled));
    let shutdown = tokio::spawn(flags.shutdown());
    assert!(
        yield_until(100, || shutdown.is_finished()).await,
        "shutdown waited for the load"
    );
    assert!(flags.status().is_stopped());
}

// ---------------------------------------------------------------------------------------------
// 2. A disable already queued beats a response already ready
// ---------------------------------------------------------------------------------------------

/// Answers each request when the test says so.
#[derive(Clone, Default)]
struct HeldTransport {
    pending: Arc<Mutex<Vec<oneshot::Sender<Response>>>>,
}

impl HeldTransport {
    /// Makes the oldest request's answer ready (the poller sees it when it next runs).
    fn answer(&self, body: serde_json::Value) -> bool {
        let sender = {
            let mut pending = self.pending.lock().unwrap();
            (!pending.is_empty()).then(|| pending.remove(0))
        };
        let response = Response::new(
            http::StatusCode::OK,
            HeaderMap::new(),
            body.to_string().into_bytes(),
        );
        sender.is_some_and(|s| s.send(response).is_ok())
    }
}

impl Transport for HeldTransport {
    fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().push(tx);
        Box::pin(async move {
            rx.await.map_err(|e| Error::Connect {
                source: Arc::new(e),
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_disable_beats_a_ready_response() {
    let transport = HeldTransport::default();
    let store = MemoryStore::new();
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .default_flag("d", 1)
        .build()
        .unwrap();
    let mut snapshots = flags.subscribe();
    drop(snapshots.borrow_and_update());
    sleep(secs(1)).await;
    let waiting = tokio::spawn(flags.refresh());
    sleep(secs(1)).await;
    // In one step of this task, so the poller sees both at once: the answer is ready, the
    // disable is queued.
    assert!(
        transport.answer(json!({"remote": true})),
        "a request was in flight"
    );
    let disabled = flags.set_enabled(false);
    disabled.await;

    assert!(
        matches!(flags.status(), Status::Disabled),
        "{:?}",
        flags.status()
    );
    assert_eq!(
        flags.get_bool("remote"),
        None,
        "the discarded answer was served"
    );
    assert!(
        !snapshots.has_changed().unwrap(),
        "subscribers were woken by it"
    );
    let answer = waiting.await.unwrap();
    assert!(matches!(answer, Err(Error::Disabled)), "{answer:?}");
    flags.flush().await.unwrap();
    let record = store.get().expect("the flush saved");
    assert_eq!(record.cache_timestamp, 0, "the discarded answer was saved");
    assert!(record.flags.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. `Retry-After` never parks a caller, and re-enabling honours it
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn re_enabling_during_retry_after_waits_for_it() {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::status(503).header("retry-after", "600"));
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .build()
        .unwrap();
    wait_status(&flags, "stale", HOUR, Status::is_stale).await;
    let error = match flags.refresh().await {
        Err(error @ Error::RetryAfter { .. }) => error,
        other => panic!("expected RetryAfter, got {other:?}"),
    };
    let Error::RetryAfter { until } = &error else {
        unreachable!()
    };
    assert!(
        error.to_string().contains(&httpdate::fmt_http_date(*until)),
        "the message names the time: {error}"
    );
    flags.set_enabled(false).await;
    flags.set_enabled(true).await;
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    sleep(secs(590)).await;
    assert_eq!(
        recorder.count(),
        1,
        "re-enabling fetched during Retry-After"
    );
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    assert_eq!(recorder.count(), 2);
    let gap = recorder.times()[1] - recorder.times()[0];
    assert!(gap >= secs(600), "{gap:?}");
}

/// Found in review: re-enabling while flags were still fresh planned the next fetch at their
/// expiry, inside the server's `Retry-After`. Every planned fetch now waits for the window.
#[tokio::test(start_paused = true)]
async fn re_enabling_with_fresh_flags_sends_nothing_inside_retry_after() {
    // A wall clock that follows tokio's, so that the flags age as the test sleeps.
    let (start, base) = (tokio::time::Instant::now(), SystemTime::now());
    let transport = ScriptedTransport::new();
    transport.push(ScriptedResponse::json(&json!({"a": 1})));
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .wall_clock(move || base + start.elapsed())
        .fetch_interval(secs(100))
        .schedule_jitter(0.0)
        .build()
        .unwrap();
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    flags.refresh().await.unwrap(); // the regular schedule from now on: t + 100 s
    let fetched = recorder.times()[1];
    sleep(secs(90)).await;
    transport.set(ScriptedResponse::status(429).header("retry-after", "100"));
    let answer = flags.refresh().await;
    assert!(
        matches!(answer, Err(Error::Http { status: 429 })),
        "{answer:?}"
    );
    let window_start = recorder.times()[2];
    flags.set_enabled(false).await;
    flags.set_enabled(true).await; // the flags are still fresh for about 10 s
    transport.set(ScriptedResponse::json(&json!({"a": 2})));
    sleep(secs(95)).await;
    assert_eq!(recorder.count(), 3, "a request inside Retry-After");
    // Re-enabled with fresh flags, the status already says fresh: wait for the request.
    for _ in 0..200 {
        if recorder.count() > 3 {
            break;
        }
        sleep(secs(1)).await;
    }
    assert_eq!(flags.get_i64("a"), Some(2), "fetched once the window ended");
    let after = recorder.times()[3];
    assert!(
        after - window_start >= secs(100),
        "{:?}",
        after - window_start
    );
    assert!(after - fetched >= secs(190));
}

// ---------------------------------------------------------------------------------------------
// 4. A failed load never erases what the store holds
// ---------------------------------------------------------------------------------------------

/// A `MemoryStore` whose first `failures` loads fail like a flaky disk (EIO).
#[derive(Clone)]
struct FlakyStore {
    inner: MemoryStore,
    failures: Arc<AtomicUsize>,
    loads: Arc<AtomicUsize>,
}

impl Store for FlakyStore {
    fn load(&self) -> Result<Option<CacheRecord>, Error> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(Error::Store {
                source: Arc::new(std::io::Error::from_raw_os_error(5)),
            });
        }
        self.inner.load()
    }

    fn save(&self, record: &CacheRecord) -> Result<(), Error> {
        self.inner.save(record)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_is_retried_and_nothing_is_written_over_the_record_until_it_loads() {
    // What an earlier run saved: old flags under this key, and an override.
    let inner = MemoryStore::new();
    let key = {
        let seed = Flags::builder()
            .transport(ScriptedTransport::new())
            .store(inner.clone())
            .enabled(false)
            .build()
            .unwrap();
        seed.set_override("kept", "from last run").await.unwrap();
        seed.shutdown().await;
        inner.get().unwrap().key
    };
    let mut old = CacheRecord::new(
        key,
        1,
        None,
        json!({"v": "old"}).as_object().unwrap().clone(),
    );
    old.overrides = json!({"kept": "from last run"})
        .as_object()
        .unwrap()
        .clone();
    inner.set(Some(old.clone()));

    let store = FlakyStore {
        inner: inner.clone(),
        failures: Arc::new(AtomicUsize::new(3)),
        loads: Arc::default(),
    };
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"v": "fetched"})));
    let flags = Flags::builder()
        .transport(transport)
        .store(store.clone())
        .backoff_initial(secs(1))
        .build()
        .unwrap();
    // The poller fetches without its cache; the record stays as it was.
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    assert_eq!(flags.get_str("v").as_deref(), Some("fetched"));
    // Answered at once with the load error, not when the next load is due.
    let answer = within(
        "the override's answer",
        Duration::from_millis(1),
        flags.set_override("new", 1),
    )
    .await;
    assert!(
        matches!(answer, Err(Error::Store { .. })),
        "saved over an unread record: {answer:?}"
    );
    assert_eq!(
        inner.get(),
        Some(old.clone()),
        "the record was written over"
    );
    assert_eq!(
        flags.get_i64("new"),
        Some(1),
        "the override holds in memory"
    );

    // The load is retried with backoff; once it succeeds, the saved override comes back and
    // the next save keeps both.
    sleep(secs(60)).await;
    assert_eq!(
        store.loads.load(Ordering::SeqCst),
        4,
        "three failures, then a success"
    );
    assert_eq!(flags.get_str("kept").as_deref(), Some("from last run"));
    assert_eq!(
        flags.get_str("v").as_deref(),
        Some("fetched"),
        "newer flags kept"
    );
    flags.flush().await.unwrap();
    let record = inner.get().unwrap();
    assert_eq!(record.flags["v"], json!("fetched"));
    assert_eq!(record.overrides["kept"], json!("from last run"));
    assert_eq!(record.overrides["new"], json!(1));
}

// ---------------------------------------------------------------------------------------------
// 5. Flags stay fresh across a suspend
// ---------------------------------------------------------------------------------------------

/// A wall clock the test moves by hand.
#[derive(Clone)]
struct Wall(Arc<Mutex<SystemTime>>);

impl Wall {
    fn new() -> Self {
        Wall(Arc::new(Mutex::new(SystemTime::now())))
    }

    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }

    fn sleep_machine(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    fn on(&self, builder: FlagsBuilder) -> FlagsBuilder {
        let wall = self.clone();
        builder.wall_clock(move || wall.now())
    }
}

#[tokio::test(start_paused = true)]
async fn flags_expired_by_the_wall_clock_are_fetched_within_a_minute() {
    let wall = Wall::new();
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"v": 1})));
    let recorder = Recorder::new(&transport);
    let flags = wall
        .on(Flags::builder())
        .transport(recorder.clone())
        .fetch_interval(HOUR)
        .schedule_jitter(0.0)
        .build()
        .unwrap();
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    // The first flags schedule a refresh anywhere in the interval (a fleet started together
    // spreads out); from the second success on, with no jitter, it is exactly one interval.
    flags.refresh().await.unwrap();
    let fetched_at = flags.snapshot().cache_timestamp().unwrap();
    // Awake: no request before the interval, whatever the wall clock checks do.
    sleep(secs(40 * 60)).await;
    assert_eq!(recorder.count(), 2);
    wall.sleep_machine(secs(40 * 60));

    // The lid closes for two hours: tokio's clock stands still, the wall clock does not.
    wall.sleep_machine(2 * HOUR);
    transport.set(ScriptedResponse::json(&json!({"v": 2})));
    sleep(secs(60)).await;
    assert_eq!(recorder.count(), 3, "no fetch within a minute of waking");
    assert_eq!(flags.get_i64("v"), Some(2));
    let renewed = flags.snapshot().cache_timestamp().unwrap();
    assert!(
        renewed > fetched_at + 2 * 3_600_000,
        "the timestamp comes from the wall clock"
    );
    // Then the schedule goes on as usual: nothing more until the next interval.
    sleep(secs(40 * 60)).await;
    assert_eq!(recorder.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cache_expired_during_a_suspend_is_refetched_without_waiting_for_the_timer() {
    let wall = Wall::new();
    let store = MemoryStore::new();
    let seed_transport = ScriptedTransport::new();
    seed_transport.set(ScriptedResponse::json(&json!({"v": "cached"})));
    let seed = wall
        .on(Flags::builder())
        .transport(seed_transport)
        .store(store.clone())
        .fetch_interval(HOUR)
        .build()
        .unwrap();
    wait_status(&seed, "fresh", HOUR, Status::is_fresh).await;
    seed.shutdown().await;

    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"v": "new"})));
    let flags = wall
        .on(Flags::builder())
        .transport(transport.clone())
        .store(store)
        .fetch_interval(HOUR)
        .build()
        .unwrap();
    wait_status(&flags, "fresh from the cache", HOUR, Status::is_fresh).await;
    assert_eq!(flags.snapshot().source(), Source::Cache);
    wall.sleep_machine(3 * HOUR);
    sleep(secs(61)).await;
    assert_eq!(
        transport.request_count(),
        1,
        "the expired cache was refetched"
    );
    assert_eq!(flags.get_str("v").as_deref(), Some("new"));
}

// ---------------------------------------------------------------------------------------------
// 6. A panic in caller code does not stop the poller
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Panic {
    InSend,
    InFuture,
}

/// Panics on the first request (where `how` says), then answers from `inner`.
struct PanickingTransport {
    how: Panic,
    calls: AtomicUsize,
    inner: ScriptedTransport,
}

impl Transport for PanickingTransport {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        match (first, self.how) {
            (true, Panic::InSend) => panic!("transport bug in send"),
            (true, Panic::InFuture) => Box::pin(async { panic!("transport bug in the future") }),
            _ => self.inner.send(request),
        }
    }
}

async fn survives(builder: FlagsBuilder, what: &str, message: &str) {
    let flags = builder.backoff_initial(secs(1)).build().unwrap();
    let stale = wait_status(&flags, "stale", HOUR, Status::is_stale).await;
    match stale.last_error() {
        Some(Error::Panicked {
            what: w,
            message: m,
        }) => {
            assert_eq!((*w, m.as_str()), (what, message));
        }
        other => panic!("expected a Panicked error, got {other:?}"),
    }
    assert!(stale.last_error().unwrap().to_string().contains(message));
    // The backoff retry comes, and succeeds.
    wait_status(&flags, "fresh after the retry", HOUR, Status::is_fresh).await;
    assert_eq!(flags.get_i64("a"), Some(1));
    assert_eq!(flags.refresh().await.unwrap().get_i64("a"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_transport_or_header_hook_is_a_failed_fetch() {
    for (how, message) in [
        (Panic::InSend, "transport bug in send"),
        (Panic::InFuture, "transport bug in the future"),
    ] {
        let inner = ScriptedTransport::new();
        inner.set(ScriptedResponse::json(&json!({"a": 1})));
        let transport = PanickingTransport {
            how,
            calls: AtomicUsize::new(0),
            inner,
        };
        survives(Flags::builder().transport(transport), "transport", message).await;
    }

    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    let calls = AtomicUsize::new(0);
    let builder = Flags::builder()
        .transport(transport)
        .header_hook(move |_: &mut HeaderMap| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("hook bug");
            }
        });
    survives(builder, "header hook", "hook bug").await;
}

/// A store that panics on every save.
struct PanickingSaves(MemoryStore);

impl Store for PanickingSaves {
    fn load(&self) -> Result<Option<CacheRecord>, Error> {
        self.0.load()
    }

    fn save(&self, _: &CacheRecord) -> Result<(), Error> {
        panic!("store bug")
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_store_is_a_failed_save_and_the_poller_goes_on() {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    let flags = Flags::builder()
        .transport(transport)
        .store(PanickingSaves(MemoryStore::new()))
        .build()
        .unwrap();
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    let answer = flags.set_override("o", 1).await;
    assert!(
        matches!(&answer, Err(Error::Panicked { what: "store", message }) if message == "store bug"),
        "{answer:?}"
    );
    assert_eq!(flags.refresh().await.unwrap().get_i64("o"), Some(1));
}

// ---------------------------------------------------------------------------------------------
// 7. ETag rotation, 9. the body limit for every transport, and when a request counts as sent
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_304_with_a_new_etag_replaces_the_held_one() {
    let transport = ScriptedTransport::new();
    transport
        .push(ScriptedResponse::json(&json!({"a": 1})).header("etag", "\"v1\""))
        .push(ScriptedResponse::status(304).header("etag", "\"v2\""))
        .push(ScriptedResponse::status(304));
    let store = MemoryStore::new();
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .build()
        .unwrap();
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    flags.refresh().await.unwrap();
    assert_eq!(flags.snapshot().etag(), Some("\"v2\""));
    flags.refresh().await.unwrap();
    let sent = support::if_none_match(&transport.requests());
    assert_eq!(sent, [None, Some("\"v1\"".into()), Some("\"v2\"".into())]);
    assert_eq!(
        flags.snapshot().etag(),
        Some("\"v2\""),
        "a 304 without a tag keeps it"
    );
    flags.flush().await.unwrap();
    assert_eq!(store.get().unwrap().etag.as_deref(), Some("\"v2\""));
}

/// A transport that ignores the body limit and returns a huge body.
struct Careless(usize);

impl Transport for Careless {
    fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let body = format!("{{\"big\":\"{}\"}}", "x".repeat(self.0)).into_bytes();
        Box::pin(async move { Ok(Response::new(http::StatusCode::OK, HeaderMap::new(), body)) })
    }
}

#[tokio::test(start_paused = true)]
async fn the_poller_enforces_the_body_limit_on_every_transport() {
    let flags = Flags::builder()
        .transport(Careless(1 << 20))
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let stale = wait_status(&flags, "stale", HOUR, Status::is_stale).await;
    assert!(
        matches!(stale.last_error(), Some(Error::TooLarge { limit: 1024 })),
        "{stale:?}"
    );
    assert_eq!(flags.get_str("big"), None);
    // Under the limit the same transport is served.
    let flags = Flags::builder()
        .transport(Careless(10))
        .max_body_bytes(1024)
        .build()
        .unwrap();
    wait_status(&flags, "fresh", HOUR, Status::is_fresh).await;
    assert_eq!(flags.get_str("big").as_deref(), Some("xxxxxxxxxx"));
}

#[tokio::test]
async fn a_scripted_request_counts_once_its_future_is_first_polled() {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    let url = url::Url::parse("http://127.0.0.1:9/v1/flags").unwrap();
    let never_polled = transport.send(Request::new(url.clone()));
    assert_eq!(transport.request_count(), 0);
    drop(never_polled);
    assert_eq!(
        transport.request_count(),
        0,
        "a future dropped unpolled sent nothing"
    );
    let polled = transport.send(Request::new(url));
    assert_eq!(transport.request_count(), 0);
    let response = polled.await.unwrap();
    assert_eq!(
        (response.status.as_u16(), transport.request_count()),
        (200, 1)
    );
}
