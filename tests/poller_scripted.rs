//! The poller's behaviour end to end, on tokio's paused clock with `ScriptedTransport` and
//! `MemoryStore`: no sockets, no real sleeps.
//!
//! Timing is measured with [`Recorder`], a `Transport` wrapper that notes the tokio `Instant` at
//! which each request is sent and whether its future ran to completion or was dropped (aborted).
//! Under the paused clock tokio advances time only when every task is idle (and never while a
//! `spawn_blocking` store call runs), so the instants are exact, not subject to scheduling luck.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod support;
use support::{yield_until, GatedStore, Recorder};

use flagpole::{
    CacheRecord, CancellationToken, Environment, Error, Flags, FlagsBuilder, MemoryStore,
    ScriptedResponse, ScriptedTransport, Source, Status,
};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A 200 answer carrying `flags` as a plain JSON object.
fn ok(flags: Value) -> ScriptedResponse {
    ScriptedResponse::json(&flags)
}

/// A transport that gives `response` to every request.
fn answering(response: ScriptedResponse) -> ScriptedTransport {
    let transport = ScriptedTransport::new();
    transport.set(response);
    transport
}

/// A transport that gives `responses` in order, then repeats the last one.
fn answering_in_turn(responses: impl IntoIterator<Item = ScriptedResponse>) -> ScriptedTransport {
    let transport = ScriptedTransport::new();
    for response in responses {
        transport.push(response);
    }
    transport
}

/// A handle with the default configuration on `transport`.
fn default_flags(transport: &ScriptedTransport) -> Flags {
    Flags::builder()
        .transport(transport.clone())
        .build()
        .unwrap()
}

/// Lets every task run until idle, then moves the paused clock by 1 ms. Store calls run on the
/// blocking pool and hold the clock still, so they have finished when this returns.
async fn idle() {
    sleep(ms(1)).await;
}

/// Fails the test instead of hanging when `fut` never completes.
async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Waits (paused clock) until the status satisfies `pred`, and returns it.
async fn wait_status(flags: &Flags, what: &str, pred: impl FnMut(&Status) -> bool) -> Status {
    let mut rx = flags.status_receiver();
    let status = within(what, 30 * DAY, rx.wait_for(pred))
        .await
        .expect("status channel closed")
        .clone();
    status
}

fn is_stale(s: &Status) -> bool {
    matches!(s, Status::Stale { .. })
}

fn is_fresh(s: &Status) -> bool {
    matches!(s, Status::Fresh { .. })
}

/// Runs a first handle configured by `configure` against `body`, waits until it has saved its
/// cache record into a new `MemoryStore`, shuts it down and returns the store and the record.
async fn seeded_store(
    configure: impl FnOnce(FlagsBuilder) -> FlagsBuilder,
    body: Value,
) -> (MemoryStore, CacheRecord) {
    let store = MemoryStore::new();
    let transport = answering(ok(body).header("etag", "\"seed\""));
    let flags = configure(Flags::builder())
        .transport(transport)
        .store(store.clone())
        .build()
        .unwrap();
    assert!(
        matches!(
            tokio::time::timeout(secs(60), flags.ready()).await,
            Ok(Ok(_))
        ),
        "seed fetch"
    );
    for _ in 0..1000 {
        if store.get().is_some() {
            break;
        }
        idle().await;
    }
    flags.shutdown().await;
    let record = store.get().expect("the seed handle saved a record");
    (store, record)
}

fn same_params(b: FlagsBuilder) -> FlagsBuilder {
    b
}

/// A [`seeded_store`] (default parameters) whose record is then made 1000 s old: expired for the
/// 100 s fetch interval the tests use. Returns the store and the record's timestamp.
async fn expired_store(body: Value) -> (MemoryStore, u64) {
    let (store, mut record) = seeded_store(same_params, body).await;
    record.cache_timestamp -= 1_000_000;
    let cached_at = record.cache_timestamp;
    store.set(Some(record));
    (store, cached_at)
}

/// Shuts `flags` down and checks that it took less than a second.
async fn shutdown_promptly(flags: &Flags) {
    let start = Instant::now();
    flags.shutdown().await;
    assert!(
        start.elapsed() < secs(1),
        "shutdown took {:?}",
        start.elapsed()
    );
}

/// Cancels `token` and checks that `flags` reports `Stopped` within a second.
async fn cancel_promptly(token: &CancellationToken, flags: &Flags) {
    let start = Instant::now();
    token.cancel();
    let mut rx = flags.status_receiver();
    within("stopped", secs(1), rx.wait_for(Status::is_stopped))
        .await
        .unwrap();
    assert!(start.elapsed() < secs(1), "took {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 1-3: the persisted cache
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fresh_cache_is_served_at_once_without_request_until_interval() {
    let (store, _) = seeded_store(same_params, json!({"a": true, "n": 1})).await;
    let transport = answering(ok(json!({"a": false, "n": 2})));
    let recorder = Recorder::new(&transport);

    let start = Instant::now();
    let flags = Flags::builder()
        .transport(recorder.clone())
        .store(store)
        .fetch_interval(secs(100))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the cache is served at once"
    );
    let snap = flags.snapshot();
    assert_eq!(snap.source(), Source::Cache);
    assert_eq!(flags.get_bool("a"), Some(true));
    assert_eq!(flags.get_i64("n"), Some(1));
    assert!(is_fresh(&flags.status()), "{:?}", flags.status());

    assert_eq!(
        recorder.count(),
        0,
        "a fresh cache needs no request at start"
    );

    // Changed deliberately with the fleet policy (FLEET.md): the first refresh comes at a point
    // drawn over the cache's remaining life (the fleet's steady state), at the latest at expiry,
    // so that a fleet restarted with caches saved together does not refresh in one burst.
    sleep(secs(101)).await;
    assert!(recorder.count() >= 1, "refreshed by expiry");
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(flags.get_i64("n"), Some(2));
    let at = recorder.times()[0] - start;
    assert!(
        at > Duration::ZERO && at <= secs(100),
        "first request at {at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fresh_caches_saved_together_refresh_spread_over_their_remaining_life() {
    // 200 handles restarted together, each with the same fresh cache: their first refreshes
    // spread over the interval instead of all coming at expiry.
    let (store, _) = seeded_store(same_params, json!({"a": true})).await;
    let record = store.get().unwrap();
    let transport = answering(ok(json!({"a": false})));
    let recorder = Recorder::new(&transport);
    let start = Instant::now();
    let mut fleet = Vec::new();
    for _ in 0..200 {
        let store = MemoryStore::new();
        store.set(Some(record.clone()));
        fleet.push(
            Flags::builder()
                .transport(recorder.clone())
                .store(store)
                .fetch_interval(secs(100))
                .build()
                .unwrap(),
        );
    }
    sleep(secs(100)).await;
    let mut firsts: Vec<Duration> = recorder.times().iter().map(|t| *t - start).collect();
    firsts.truncate(200);
    assert_eq!(firsts.len(), 200, "every handle refreshed by expiry");
    let early = firsts.iter().filter(|t| **t < secs(50)).count();
    // The steady state puts half of the first refreshes (0.5 / 0.95 with jitter 0.1) in the
    // first half of the interval.
    assert!(
        (70..=140).contains(&early),
        "{early} of 200 in the first half"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_cache_is_served_and_one_request_is_made_at_start() {
    let (store, _) = expired_store(json!({"a": "cached"})).await;

    let transport = answering(ok(json!({"a": "network"})).delay(secs(5)));
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .store(store)
        .fetch_interval(secs(100))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    idle().await;
    assert_eq!(flags.snapshot().source(), Source::Cache);
    assert_eq!(flags.get_str("a").as_deref(), Some("cached"));
    assert_eq!(recorder.count(), 1, "one request at start");

    sleep(secs(5)).await;
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(flags.get_str("a").as_deref(), Some("network"));
    assert!(is_fresh(&flags.status()));
    assert_eq!(recorder.count(), 1, "no second request");
}

#[tokio::test(start_paused = true)]
async fn cache_saved_for_another_environment_is_ignored() {
    let (store, _) = seeded_store(|b| b.environment(Environment::Dev), json!({"a": "dev"})).await;
    let transport = answering(ScriptedResponse::hang());
    let flags = Flags::builder()
        .environment(Environment::Prod)
        .transport(transport.clone())
        .store(store)
        .default_flag("d", 1)
        .build()
        .unwrap();
    sleep(secs(1)).await;
    assert_eq!(flags.snapshot().source(), Source::Defaults);
    assert_eq!(flags.get("a"), None, "the dev cache must not be served");
    assert_eq!(flags.snapshot().names(), vec!["d"]);
    assert!(matches!(flags.status(), Status::Initializing { .. }));
    assert_eq!(
        transport.request_count(),
        1,
        "no usable cache: fetch at once"
    );
    assert!(transport.requests()[0]
        .url
        .as_str()
        .contains("environment=prod"));
}

#[tokio::test(start_paused = true)]
async fn cache_saved_for_another_profile_is_ignored() {
    let (store, first) = seeded_store(|b| b.profile_id("alice"), json!({"a": "alice"})).await;
    let transport = answering(ok(json!({"a": "bob"})).delay(secs(10)));
    let flags = Flags::builder()
        .profile_id("bob")
        .transport(transport.clone())
        .store(store.clone())
        .build()
        .unwrap();
    sleep(secs(1)).await;
    assert_eq!(flags.snapshot().source(), Source::Defaults);
    assert_eq!(
        flags.get("a"),
        None,
        "alice's cache must not be served to bob"
    );
    assert!(flags.snapshot().is_empty());
    assert_eq!(transport.request_count(), 1);

    sleep(secs(10)).await;
    assert_eq!(flags.get_str("a").as_deref(), Some("bob"));
    // Bob's record replaces Alice's, under another key.
    idle().await;
    let second = store.get().unwrap();
    assert_ne!(first.key, second.key);
}

// ---------------------------------------------------------------------------------------------
// 4-6: failures, backoff, Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn api_down_with_cache_serves_cache_as_stale() {
    let (store, cached_at) = expired_store(json!({"a": 7})).await;
    let transport = answering(ScriptedResponse::status(500));
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store)
        .fetch_interval(secs(100))
        .default_flag("a", 0)
        .default_flag("d", "default")
        .build()
        .unwrap();
    let status = wait_status(&flags, "stale", is_stale).await;
    match &status {
        Status::Stale { last_error, .. } => {
            assert!(
                matches!(last_error, Error::Http { status: 500 }),
                "{last_error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let snap = flags.snapshot();
    assert_eq!(snap.source(), Source::Cache);
    assert_eq!(snap.get_i64("a"), Some(7), "the cache wins over defaults");
    assert_eq!(
        snap.get_str("d").as_deref(),
        Some("default"),
        "defaults fill missing names"
    );
    assert_eq!(snap.cache_timestamp(), Some(cached_at));
    assert_eq!(transport.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn api_down_without_cache_serves_defaults() {
    let transport = answering(ScriptedResponse::status(500));
    let flags = Flags::builder()
        .transport(transport.clone())
        .default_flag("d", true)
        .build()
        .unwrap();
    let status = wait_status(&flags, "stale", is_stale).await;
    assert!(matches!(
        status.last_error(),
        Some(Error::Http { status: 500 })
    ));
    let snap = flags.snapshot();
    assert_eq!(snap.source(), Source::Defaults);
    assert_eq!(snap.cache_timestamp(), None);
    assert_eq!(flags.get_bool("d"), Some(true));
    assert_eq!(flags.snapshot().names(), vec!["d"]);
    let err = flags.refresh().await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 500 }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn api_down_without_cache_or_defaults_serves_empty_snapshot() {
    let transport = answering(ScriptedResponse::status(500));
    let flags = default_flags(&transport);
    wait_status(&flags, "stale", is_stale).await;
    let snap = flags.snapshot();
    assert!(snap.is_empty());
    assert_eq!(snap.source(), Source::Defaults);
    assert_eq!(snap.cache_timestamp(), None);
    assert_eq!(flags.get("anything"), None);
    assert!(!matches!(
        tokio::time::timeout(secs(5), flags.ready()).await,
        Ok(Ok(_))
    ));
}

/// A handle whose first request gets `first` and every later one good flags, with a 1 s
/// backoff; returns it, its recorder and the stale status that `first` caused.
async fn stale_after_first_answer(first: ScriptedResponse) -> (Flags, Recorder, Status) {
    let transport = answering_in_turn([first, ok(json!({"a": 1}))]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .backoff_initial(secs(1))
        .build()
        .unwrap();
    let status = wait_status(&flags, "stale", is_stale).await;
    (flags, recorder, status)
}

/// Waits for the one retry to succeed; returns the time from the first request to the retry.
async fn retry_gap(flags: &Flags, recorder: &Recorder) -> Duration {
    wait_status(flags, "fresh", is_fresh).await;
    let times = recorder.times();
    assert_eq!(times.len(), 2);
    times[1] - times[0]
}

/// Ceiling of the n-th retry delay (n from 1): min(initial * 2^(n-1), cap).
fn ceiling(n: u32, initial: Duration, cap: Duration) -> Duration {
    initial.saturating_mul(2u32.pow(n - 1)).min(cap)
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_are_jittered_exponential_and_reset_after_success() {
    let initial = secs(1);
    let cap = secs(8);
    let transport = ScriptedTransport::new();
    let failures = 7u32;
    for _ in 0..failures {
        transport.push(ScriptedResponse::status(500));
    }
    transport.push(ok(json!({"a": 1})));
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .backoff_initial(initial)
        .backoff_max(cap)
        .build()
        .unwrap();
    let mut rx_status = flags.status_receiver();

    // Each failure publishes Stale { next_retry }; record it at the instant it is published.
    let mut since_first = None;
    for n in 1..=failures {
        within("a failure", DAY, rx_status.changed()).await.unwrap();
        let now = Instant::now();
        let status = rx_status.borrow_and_update().clone();
        let Status::Stale {
            since,
            last_error,
            next_retry,
            ..
        } = status
        else {
            panic!("failure {n}: {status:?}");
        };
        assert!(matches!(last_error, Error::Http { status: 500 }));
        let first_since = *since_first.get_or_insert(since);
        assert_eq!(since, first_since, "since stays the first failure");
        if n == 1 {
            assert_eq!(since, now.into_std());
        }
        let b = ceiling(n, initial, cap);
        let wait = next_retry.expect("a retry is scheduled") - now.into_std();
        assert!(
            wait >= b / 2 && wait <= b,
            "failure {n}: next_retry in {wait:?}, expected within [{:?}, {b:?}]",
            b / 2
        );
    }
    within("success", DAY, rx_status.wait_for(is_fresh))
        .await
        .unwrap();

    let times = recorder.times();
    assert_eq!(times.len(), failures as usize + 1);
    for n in 1..=failures {
        let d = times[n as usize] - times[n as usize - 1];
        let b = ceiling(n, initial, cap);
        assert!(
            d >= b / 2 && d <= b,
            "delay {n} was {d:?}, expected within [{:?}, {b:?}]",
            b / 2
        );
    }
    assert_eq!(flags.get_i64("a"), Some(1));

    // Changed deliberately with the fleet policy (FLEET.md): after the success the handle serves
    // good flags, and a failure is retried on the regular schedule (the last `schedule_jitter`
    // part of the fetch interval, a day here), not with the fast backoff meant for a handle that
    // has nothing but defaults.
    transport.set(ScriptedResponse::status(500));
    let failed_at = Instant::now();
    let err = flags.refresh().await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 500 }));
    assert_eq!(
        Instant::now(),
        failed_at,
        "the scripted failure is immediate"
    );
    match flags.status() {
        Status::Stale {
            next_retry: Some(next),
            since,
            ..
        } => {
            let wait = next - failed_at.into_std();
            assert!(wait >= DAY.mul_f64(0.9) && wait <= DAY, "{wait:?}");
            assert_eq!(since, failed_at.into_std(), "a new stale period begins");
        }
        other => panic!("{other:?}"),
    }
    sleep(DAY.mul_f64(0.9) - secs(1)).await;
    assert_eq!(
        recorder.times().len(),
        failures as usize + 2,
        "no retry before the schedule"
    );
    assert_eq!(flags.get_i64("a"), Some(1), "the failure kept the flags");
}

#[tokio::test(start_paused = true)]
async fn stale_since_is_the_first_failure() {
    let transport = answering(ScriptedResponse::status(503));
    let flags = default_flags(&transport);
    let start = Instant::now();
    let first = wait_status(&flags, "stale", is_stale).await;
    sleep(secs(30)).await;
    assert!(transport.request_count() >= 3);
    let Status::Stale { since: s1, .. } = first else {
        unreachable!()
    };
    let Status::Stale { since: s2, .. } = flags.status() else {
        panic!("{:?}", flags.status())
    };
    assert_eq!(s1, start.into_std());
    assert_eq!(s1, s2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_on_429_is_honoured() {
    let (flags, recorder, status) =
        stale_after_first_answer(ScriptedResponse::status(429).header("retry-after", "7")).await;
    let failed_at = recorder.times()[0];
    let Status::Stale {
        last_error,
        next_retry,
        ..
    } = status
    else {
        unreachable!()
    };
    assert!(matches!(last_error, Error::Http { status: 429 }));
    let wait = next_retry.unwrap() - failed_at.into_std();
    assert!(wait >= secs(7) && wait < secs(8), "next_retry in {wait:?}");

    sleep(secs(6)).await;
    assert_eq!(recorder.count(), 1, "no request before Retry-After");
    let d = retry_gap(&flags, &recorder).await;
    assert!(d >= secs(7) && d < secs(8), "retried after {d:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_on_503_is_honoured() {
    // SystemTime does not follow the paused clock; a date 30 s ahead of it is 30 s of waiting.
    let date = httpdate::fmt_http_date(SystemTime::now() + secs(30));
    let (flags, recorder, status) =
        stale_after_first_answer(ScriptedResponse::status(503).header("retry-after", &date)).await;
    let Status::Stale { next_retry, .. } = status else {
        unreachable!()
    };
    // The date has whole seconds, so the wait is a little under 30 s.
    let wait = next_retry.unwrap() - recorder.times()[0].into_std();
    assert!(
        wait >= secs(28) && wait <= secs(30),
        "next_retry in {wait:?}"
    );

    sleep(secs(27)).await;
    assert_eq!(
        recorder.count(),
        1,
        "no request before the Retry-After date"
    );
    let d = retry_gap(&flags, &recorder).await;
    assert!(d >= secs(28) && d <= secs(30), "retried after {d:?}");
}

#[tokio::test(start_paused = true)]
async fn hanging_request_times_out_and_is_retried() {
    let transport = answering_in_turn([ScriptedResponse::hang(), ok(json!({"a": 1}))]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .timeout(secs(5))
        .backoff_initial(secs(1))
        .build()
        .unwrap();
    let status = wait_status(&flags, "stale", is_stale).await;
    assert!(
        matches!(status.last_error(), Some(Error::Timeout { after }) if *after == secs(5)),
        "{status:?}"
    );
    assert_eq!(recorder.times()[0].elapsed(), secs(5));
    assert_eq!(recorder.abandoned(), 1, "the hanging request was dropped");
    wait_status(&flags, "fresh", is_fresh).await;
    let times = recorder.times();
    let d = times[1] - times[0];
    assert!(
        d >= ms(5500) && d <= secs(6),
        "retry {d:?} after the request began"
    );
}

// ---------------------------------------------------------------------------------------------
// 7-9: refresh coalescing and subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn thousand_concurrent_refreshes_share_at_most_two_requests() {
    let transport = answering(ok(json!({"v": 1})).delay(ms(100)));
    let flags = default_flags(&transport);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let flags = flags.clone();
            tokio::spawn(async move { flags.refresh().await })
        })
        .collect();
    let start = Instant::now();
    let mut oks = 0;
    for task in tasks {
        let snapshot = within("refresh", secs(60), task)
            .await
            .unwrap()
            .expect("refresh succeeded");
        assert_eq!(snapshot.get_i64("v"), Some(1));
        oks += 1;
    }
    assert_eq!(oks, 1000);
    let n = transport.request_count();
    assert!((1..=2).contains(&n), "{n} requests for 1000 refreshes");
    assert!(start.elapsed() <= ms(200), "took {:?}", start.elapsed());
    sleep(secs(60)).await;
    assert_eq!(transport.request_count(), n, "nothing left queued");
}

#[tokio::test(start_paused = true)]
async fn refresh_during_a_fetch_gets_the_next_fetch() {
    let transport = answering_in_turn([ok(json!({"v": 1})).delay(secs(1)), ok(json!({"v": 2}))]);
    let flags = default_flags(&transport);
    // Let the start-up fetch go out; it answers 1 s after it was sent.
    idle().await;
    assert_eq!(transport.request_count(), 1);
    assert_eq!(
        flags.snapshot().source(),
        Source::Defaults,
        "still in flight"
    );
    let start = Instant::now();
    let snapshot = flags.refresh().await.unwrap();
    assert_eq!(
        snapshot.get_i64("v"),
        Some(2),
        "the fetch in flight started before the call; its answer must not be returned"
    );
    assert!(
        start.elapsed() < secs(1),
        "waited only for the first fetch to end"
    );
    assert_eq!(transport.request_count(), 2);
    assert_eq!(flags.get_i64("v"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn refresh_when_idle_starts_a_new_fetch() {
    let transport = answering_in_turn([ok(json!({"v": 1})), ok(json!({"v": 2}))]);
    let flags = default_flags(&transport);
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(flags.get_i64("v"), Some(1));
    let snapshot = flags.refresh().await.unwrap();
    assert_eq!(snapshot.get_i64("v"), Some(2));
    assert_eq!(transport.request_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn subscribers_wake_on_changes_only() {
    let transport = answering(ok(json!({"a": 1})));
    let flags = default_flags(&transport);
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    let mut rx = flags.subscribe();
    rx.borrow_and_update();
    let before = flags.snapshot();

    let same = flags.refresh().await.unwrap();
    assert_eq!(transport.request_count(), 2);
    assert!(
        !rx.has_changed().unwrap(),
        "an identical fetch must not wake subscribers"
    );
    let after = flags.snapshot();
    assert!(Arc::ptr_eq(&same, &after));
    assert!(
        !Arc::ptr_eq(&before, &after),
        "a new snapshot was published"
    );
    assert!(after.cache_timestamp().unwrap() >= before.cache_timestamp().unwrap());
    assert!(
        Arc::ptr_eq(&rx.borrow(), &after),
        "the watch value carries the renewed timestamp without waking"
    );

    transport.set(ok(json!({"a": 2})));
    flags.refresh().await.unwrap();
    assert!(
        rx.has_changed().unwrap(),
        "a changed value wakes subscribers"
    );
    assert_eq!(rx.borrow_and_update().get_i64("a"), Some(2));
}

// ---------------------------------------------------------------------------------------------
// 10: enabled / disabled
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn disabled_at_build_makes_no_request_and_serves_defaults_only() {
    // Even a fresh matching cache is not served while disabled.
    let (store, _) = seeded_store(same_params, json!({"a": "remote"})).await;
    let transport = answering(ok(json!({"a": "remote"})));
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store)
        .enabled(false)
        .default_flag("d", true)
        .build()
        .unwrap();
    sleep(30 * DAY).await;
    assert_eq!(transport.request_count(), 0);
    assert!(matches!(flags.status(), Status::Disabled));
    let snap = flags.snapshot();
    assert_eq!(snap.source(), Source::Defaults);
    assert_eq!(flags.snapshot().names(), vec!["d"]);
    assert_eq!(flags.get("a"), None);
    assert!(!matches!(
        tokio::time::timeout(secs(5), flags.ready()).await,
        Ok(Ok(_))
    ));

    let start = Instant::now();
    let err = flags.refresh().await.unwrap_err();
    assert!(matches!(err, Error::Disabled), "{err:?}");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(transport.request_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn enabling_makes_exactly_one_request() {
    let transport = answering(ok(json!({"a": 1})));
    // The first refresh after the first flags is drawn anywhere in the interval (the fleet's
    // steady state): with a year, one inside the next minute is a 2-in-a-million draw.
    let flags = Flags::builder()
        .transport(transport.clone())
        .fetch_interval(365 * 24 * 60 * 60 * secs(1))
        .enabled(false)
        .default_flag("d", 0)
        .build()
        .unwrap();
    sleep(secs(10)).await;
    assert_eq!(transport.request_count(), 0);
    flags.set_enabled(true).await;
    sleep(secs(60)).await;
    assert_eq!(transport.request_count(), 1);
    assert!(is_fresh(&flags.status()));
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(flags.get_i64("a"), Some(1));
    assert_eq!(flags.get_i64("d"), Some(0));
}

#[tokio::test(start_paused = true)]
async fn disabling_mid_request_aborts_it_and_stops_requests() {
    let transport = answering_in_turn([ok(json!({"a": 1})), ok(json!({"a": 2})).delay(secs(10))]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .fetch_interval(secs(100))
        .default_flag("d", "default")
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(flags.get_i64("a"), Some(1));

    let pending = tokio::spawn(flags.refresh());
    idle().await;
    assert_eq!(recorder.count(), 2, "the refresh is in flight");
    flags.set_enabled(false).await;
    // In effect when set_enabled returns.
    assert!(matches!(flags.status(), Status::Disabled));
    assert_eq!(flags.snapshot().source(), Source::Defaults);
    assert_eq!(flags.get("a"), None);
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Disabled), "{err:?}");
    assert_eq!(recorder.abandoned(), 1, "the request in flight was dropped");

    sleep(30 * DAY).await;
    assert_eq!(recorder.count(), 2, "no request while disabled");
    assert_eq!(recorder.completed(), 1);
    assert_eq!(flags.get("a"), None, "the aborted answer never lands");
    assert_eq!(flags.snapshot().names(), vec!["d"]);
    assert!(matches!(flags.refresh().await, Err(Error::Disabled)));
}

#[tokio::test(start_paused = true)]
async fn re_enabling_with_fresh_flags_serves_them_without_request() {
    let transport = answering(ok(json!({"a": 1})));
    let flags = Flags::builder()
        .transport(transport.clone())
        .fetch_interval(secs(100))
        .schedule_jitter(0.0)
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    // The first fetch's next refresh is drawn anywhere in the interval (the fleet policy); after
    // this one it is exactly one interval away (no jitter).
    flags.refresh().await.unwrap();
    flags.set_enabled(false).await;
    assert_eq!(flags.get("a"), None);
    flags.set_enabled(true).await;
    assert_eq!(
        flags.get_i64("a"),
        Some(1),
        "the last remote flags come back"
    );
    assert!(is_fresh(&flags.status()));
    sleep(secs(50)).await;
    assert_eq!(transport.request_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 11: shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_mid_request_is_prompt() {
    let token = CancellationToken::new();
    let transport = answering_in_turn([ok(json!({"a": 1})), ok(json!({"a": 2})).delay(secs(30))]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .timeout(secs(60))
        .cancellation_token(token.clone())
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    let pending = tokio::spawn(flags.refresh());
    idle().await;
    assert_eq!(recorder.count(), 2, "a request is in flight");

    shutdown_promptly(&flags).await;
    assert!(flags.status().is_stopped());
    assert_eq!(recorder.abandoned(), 1, "the request in flight was dropped");
    assert!(matches!(pending.await.unwrap(), Err(Error::Stopped)));
    assert_eq!(flags.get_i64("a"), Some(1), "reads serve the last snapshot");
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert!(matches!(flags.refresh().await, Err(Error::Stopped)));
    assert!(!token.is_cancelled(), "the caller's token is left alone");
    // Idempotent.
    flags.shutdown().await;
    sleep(DAY).await;
    assert_eq!(recorder.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_mid_backoff_is_prompt() {
    let transport = answering(ScriptedResponse::status(500));
    let flags = Flags::builder()
        .transport(transport.clone())
        .backoff_initial(secs(120))
        .backoff_max(secs(240))
        .default_flag("d", 5)
        .build()
        .unwrap();
    wait_status(&flags, "stale", is_stale).await;
    sleep(secs(10)).await;
    assert_eq!(transport.request_count(), 1, "backing off");
    shutdown_promptly(&flags).await;
    assert!(flags.status().is_stopped());
    assert_eq!(flags.get_i64("d"), Some(5));
    assert!(matches!(flags.refresh().await, Err(Error::Stopped)));
    sleep(DAY).await;
    assert_eq!(transport.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_callers_token_stops_mid_request() {
    let token = CancellationToken::new();
    let transport = answering(ok(json!({"a": 1})).delay(secs(30)));
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .timeout(secs(60))
        .cancellation_token(token.clone())
        .default_flag("d", 1)
        .build()
        .unwrap();
    idle().await;
    assert_eq!(recorder.count(), 1);
    cancel_promptly(&token, &flags).await;
    assert_eq!(recorder.abandoned(), 1);
    assert_eq!(flags.get_i64("d"), Some(1));
    assert!(matches!(flags.refresh().await, Err(Error::Stopped)));
    shutdown_promptly(&flags).await;
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_callers_token_stops_mid_backoff() {
    let token = CancellationToken::new();
    let transport = answering(ScriptedResponse::status(502));
    let flags = Flags::builder()
        .transport(transport.clone())
        .backoff_initial(secs(120))
        .backoff_max(secs(240))
        .cancellation_token(token.clone())
        .build()
        .unwrap();
    wait_status(&flags, "stale", is_stale).await;
    cancel_promptly(&token, &flags).await;
    sleep(DAY).await;
    assert_eq!(transport.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_poller() {
    let transport = answering_in_turn([ok(json!({"a": 1})), ok(json!({"a": 2})).delay(secs(30))]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .timeout(secs(60))
        .fetch_interval(secs(100))
        .schedule_jitter(0.0)
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    let mut rx = flags.status_receiver();
    let clone = flags.clone();

    // Dropping one of two handles changes nothing. The second request comes within the interval
    // (the first refresh after a start is drawn anywhere in it); it takes 30 s.
    drop(flags);
    within("the second request", secs(101), async {
        while recorder.count() < 2 {
            sleep(secs(1)).await;
        }
    })
    .await;
    assert!(!rx.borrow().is_stopped());
    assert_eq!(recorder.count(), 2, "the poller still runs");
    assert_eq!(clone.get_i64("a"), Some(1), "mid-request");

    let start = Instant::now();
    drop(clone);
    // Either the receiver sees `Stopped` or the channel closes because the poller is gone.
    within("stop", secs(1), async {
        let _ = rx.wait_for(Status::is_stopped).await;
    })
    .await;
    assert!(start.elapsed() < secs(1), "took {:?}", start.elapsed());
    assert_eq!(recorder.abandoned(), 1, "the request in flight was dropped");
    sleep(DAY).await;
    assert_eq!(recorder.count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 12-13: ETag, body size
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn etag_is_sent_back_and_304_keeps_flags() {
    let transport = answering_in_turn([
        ok(json!({"a": 1})).header("etag", "\"v1\""),
        ScriptedResponse::status(304),
    ]);
    let flags = default_flags(&transport);
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    let before = flags.snapshot();
    assert_eq!(before.etag(), Some("\"v1\""));
    let mut rx = flags.subscribe();
    rx.borrow_and_update();

    let after = flags.refresh().await.expect("a 304 is a success");
    let requests = transport.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].headers.get("if-none-match").is_none());
    assert_eq!(requests[1].headers["if-none-match"], "\"v1\"");
    assert_eq!(requests[1].headers["accept"], "application/json");

    assert_eq!(after.get_i64("a"), Some(1));
    assert_eq!(after.source(), Source::Network);
    assert_eq!(after.etag(), Some("\"v1\""));
    assert!(!Arc::ptr_eq(&before, &after));
    assert!(after.cache_timestamp().unwrap() >= before.cache_timestamp().unwrap());
    assert!(Arc::ptr_eq(&flags.snapshot(), &after));
    assert!(
        !rx.has_changed().unwrap(),
        "a 304 does not wake subscribers"
    );
    assert!(is_fresh(&flags.status()));
}

#[tokio::test(start_paused = true)]
async fn stale_cache_etag_is_revalidated_by_304() {
    let (store, old_timestamp) = expired_store(json!({"a": "cached"})).await;
    let transport = answering(ScriptedResponse::status(304));
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .fetch_interval(secs(100))
        .build()
        .unwrap();
    wait_status(&flags, "fresh", is_fresh).await;
    idle().await;
    assert_eq!(transport.requests()[0].headers["if-none-match"], "\"seed\"");
    let snap = flags.snapshot();
    assert_eq!(snap.get_str("a").as_deref(), Some("cached"));
    assert_eq!(snap.source(), Source::Network, "confirmed by the network");
    assert_eq!(snap.etag(), Some("\"seed\""));
    assert!(
        snap.cache_timestamp().unwrap() > old_timestamp,
        "timestamp renewed"
    );
    let saved = store.get().unwrap();
    assert_eq!(
        Some(saved.cache_timestamp),
        snap.cache_timestamp(),
        "renewal saved"
    );
    assert_eq!(saved.etag.as_deref(), Some("\"seed\""));
}

#[tokio::test(start_paused = true)]
async fn unexpected_304_without_etag_is_an_error() {
    let transport = answering_in_turn([ok(json!({"a": 1})), ScriptedResponse::status(304)]);
    let flags = default_flags(&transport);
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(flags.snapshot().etag(), None);
    let err = flags.refresh().await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 304 }), "{err:?}");
    assert!(transport.requests()[1]
        .headers
        .get("if-none-match")
        .is_none());
    assert!(matches!(
        flags.status().last_error(),
        Some(Error::Http { status: 304 })
    ));
    assert_eq!(flags.get_i64("a"), Some(1));
    assert_eq!(flags.snapshot().source(), Source::Network);
}

#[tokio::test(start_paused = true)]
async fn oversized_body_is_too_large_and_keeps_flags() {
    let big = json!({"a": 2, "pad": "x".repeat(500)}).to_string();
    let transport = answering_in_turn([ok(json!({"a": 1})), ScriptedResponse::body(200, big)]);
    let flags = Flags::builder()
        .transport(transport.clone())
        .max_body_bytes(64)
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    let err = flags.refresh().await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { limit: 64 }), "{err:?}");
    assert!(matches!(
        flags.status().last_error(),
        Some(Error::TooLarge { limit: 64 })
    ));
    assert_eq!(flags.get_i64("a"), Some(1));
    assert_eq!(flags.get("pad"), None);
    assert_eq!(transport.requests()[1].max_body_bytes, 64);
}

// ---------------------------------------------------------------------------------------------
// 14: schedule jitter
// ---------------------------------------------------------------------------------------------

/// When each request went out during the first `run_for` of a handle with a 100 s fetch interval
/// and `jitter`, every answer good.
async fn request_times(jitter: f64, run_for: Duration) -> Vec<Instant> {
    let transport = answering(ok(json!({"a": 1})));
    let recorder = Recorder::new(&transport);
    let _flags = Flags::builder()
        .transport(recorder.clone())
        .fetch_interval(secs(100))
        .schedule_jitter(jitter)
        .build()
        .unwrap();
    sleep(run_for).await;
    recorder.times()
}

#[tokio::test(start_paused = true)]
async fn schedule_jitter_spreads_the_next_fetch_over_the_last_fifth() {
    let times = request_times(0.2, secs(2000)).await;
    assert!(times.len() >= 20, "{} requests", times.len());
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // The first refresh after the first flags is drawn anywhere in the interval (the fleet
    // policy, FLEET.md); the regular jitter applies from then on.
    assert!(gaps[0] > Duration::ZERO && gaps[0] <= secs(100), "{gaps:?}");
    for gap in &gaps[1..] {
        assert!(*gap >= secs(80) && *gap <= secs(100), "{gaps:?}");
    }
    assert!(gaps.iter().any(|g| *g != gaps[0]), "no jitter: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn zero_schedule_jitter_fetches_exactly_at_the_interval() {
    let times = request_times(0.0, secs(1000)).await;
    // At 0, then at a point t drawn in (0, 100] (the fleet policy), then t + 100, t + 200, ...
    assert!(times.len() >= 10, "{} requests", times.len());
    assert!(times[1] - times[0] <= secs(100));
    for w in times[1..].windows(2) {
        assert_eq!(w[1] - w[0], secs(100));
    }
}

// ---------------------------------------------------------------------------------------------
// 15-17: failures keep good flags, readiness, the saved record
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn malformed_body_never_replaces_good_flags() {
    let store = MemoryStore::new();
    let transport = answering_in_turn([
        ok(json!({"a": 1, "b": "x"})),
        ScriptedResponse::body(200, "{not json"),
        ScriptedResponse::body(200, "\"a string\""),
    ]);
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    idle().await;
    let good = flags.snapshot();
    let saved = store.get().expect("saved after the good fetch");
    let mut rx = flags.subscribe();
    rx.borrow_and_update();

    for attempt in 0..2 {
        let err = flags.refresh().await.unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{attempt}: {err:?}");
        assert!(matches!(
            flags.status().last_error(),
            Some(Error::Parse { .. })
        ));
        let now = flags.snapshot();
        assert!(Arc::ptr_eq(&good, &now), "the good snapshot stays");
        assert_eq!(flags.get_i64("a"), Some(1));
        assert_eq!(flags.get_str("b").as_deref(), Some("x"));
        assert!(!rx.has_changed().unwrap());
        idle().await;
        assert_eq!(
            store.get().as_ref(),
            Some(&saved),
            "a failure saves nothing"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ready_resolves_once_a_fetch_succeeds() {
    let transport = answering(ok(json!({"a": 1})).delay(secs(2)));
    let flags = default_flags(&transport);
    let start = Instant::now();
    assert!(matches!(
        tokio::time::timeout(secs(5), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(flags.get_i64("a"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn ready_keeps_waiting_while_the_api_fails() {
    let transport = answering(ScriptedResponse::status(500));
    let flags = Flags::builder()
        .transport(transport.clone())
        .backoff_initial(secs(1))
        .default_flag("d", 1)
        .build()
        .unwrap();
    let start = Instant::now();
    assert!(!matches!(
        tokio::time::timeout(secs(10), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(start.elapsed(), secs(10));
    assert!(transport.request_count() >= 3, "retried meanwhile");
    assert_eq!(flags.snapshot().source(), Source::Defaults);

    // It turns true as soon as the API recovers.
    transport.set(ok(json!({"a": 1})));
    assert!(matches!(
        tokio::time::timeout(secs(60), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(flags.get_i64("a"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn saved_record_holds_flags_and_etag_but_not_the_profile_id() {
    let profile = "profile-5ecret-0123456789";
    let store = MemoryStore::new();
    let transport = answering(ok(json!({"a": 1, "b": {"k": [1, 2]}})).header("etag", "\"e1\""));
    let flags = Flags::builder()
        .transport(transport.clone())
        .store(store.clone())
        .profile_id(profile)
        .environment(Environment::Rc)
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    idle().await;
    let record = store.get().expect("a record was saved");
    let snap = flags.snapshot();

    assert_eq!(record.version, CacheRecord::VERSION);
    assert_eq!(
        Value::Object(record.flags.clone()),
        json!({"a": 1, "b": {"k": [1, 2]}})
    );
    assert_eq!(record.etag.as_deref(), Some("\"e1\""));
    assert_eq!(Some(record.cache_timestamp), snap.cache_timestamp());
    assert!(!record.key.contains(profile), "key: {}", record.key);
    let serialized = serde_json::to_string(&record).unwrap();
    assert!(!serialized.contains(profile), "{serialized}");
    // The request itself does carry it, as user=.
    let url = transport.requests()[0].url.clone();
    assert!(url.query_pairs().any(|(k, v)| k == "user" && v == profile));
}

// ---------------------------------------------------------------------------------------------
// ordering and manual mode
// ---------------------------------------------------------------------------------------------

/// Regression: `flagpole get` stopped on seeing "fresh" and sometimes lost the cache save.
#[tokio::test(start_paused = true)]
async fn fresh_status_comes_only_after_the_save() {
    let store = GatedStore::saves_gated();
    let transport = answering(ok(json!({"a": 1})));
    let flags = Flags::builder()
        .transport(transport)
        .store(store.clone())
        .build()
        .unwrap();
    let _open = store.open_on_drop();
    // The new flags are served at once, while the save is still blocked...
    let mut snapshots = flags.subscribe();
    snapshots
        .wait_for(|s| s.source() == Source::Network)
        .await
        .unwrap();
    assert_eq!(flags.get_i64("a"), Some(1));
    // ...but "fresh" waits for the save.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        matches!(flags.status(), Status::Initializing { .. }),
        "status said {:?} before the save finished",
        flags.status()
    );
    store.open();
    let mut status = flags.status_receiver();
    status.wait_for(is_fresh).await.unwrap();
    let record = store
        .inner
        .get()
        .expect("saved before the status said fresh");
    assert_eq!(Value::Object(record.flags), json!({"a": 1}));
}

/// Regression: a fresh cache reported "fresh" before its flags were published. The race needs
/// a second thread to observe it, so this runs on real worker threads (no sockets, no sleeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_cache_flags_are_served_when_the_status_says_fresh() {
    let (store, _) = seeded_store(same_params, json!({"a": "cached"})).await;
    for _ in 0..200 {
        let flags = Flags::builder()
            .transport(ScriptedTransport::new())
            .store(store.clone())
            .build()
            .unwrap();
        let mut status = flags.status_receiver();
        status.wait_for(is_fresh).await.unwrap();
        let snapshot = flags.snapshot();
        assert_eq!(snapshot.source(), Source::Cache);
        assert_eq!(snapshot.get_str("a").as_deref(), Some("cached"));
    }
}

#[tokio::test(start_paused = true)]
async fn manual_mode_fetches_once_then_only_on_refresh_and_never_retries() {
    let transport = answering_in_turn([
        ok(json!({"v": 1})),
        ScriptedResponse::status(500),
        ok(json!({"v": 3})),
    ]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .polling(false)
        .fetch_interval(secs(10))
        .backoff_initial(secs(1))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(recorder.count(), 1, "one fetch at start: no fresh cache");
    sleep(secs(100)).await;
    assert_eq!(recorder.count(), 1, "no scheduled fetch after the interval");

    let err = flags.refresh().await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    match flags.status() {
        Status::Stale { next_retry, .. } => assert_eq!(next_retry, None, "no retry planned"),
        other => panic!("expected stale, got {other:?}"),
    }
    sleep(secs(100)).await;
    assert_eq!(recorder.count(), 2, "no retry after a failure");
    assert_eq!(flags.get_i64("v"), Some(1), "last good flags kept");

    assert_eq!(flags.refresh().await.unwrap().get_i64("v"), Some(3));
    assert_eq!(recorder.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn manual_mode_with_a_fresh_cache_makes_no_request() {
    let (store, _) = seeded_store(same_params, json!({"a": true})).await;
    let transport = answering(ok(json!({"a": false})));
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .store(store)
        .polling(false)
        .fetch_interval(secs(10))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(secs(1), flags.ready()).await,
        Ok(Ok(_))
    ));
    sleep(secs(100)).await;
    assert_eq!(recorder.count(), 0, "neither at start nor at expiry");
    assert_eq!(flags.get_bool("a"), Some(true));
}

/// A refresh never overrides the server's `Retry-After`, nor waits it out: it is told when the
/// wait ends, at once, and the poller's own retry comes when the wait is over.
#[tokio::test(start_paused = true)]
async fn refresh_during_retry_after_answers_at_once() {
    let (flags, recorder, _) =
        stale_after_first_answer(ScriptedResponse::status(429).header("retry-after", "600")).await;
    let asked = SystemTime::now();
    for _ in 0..5 {
        let answer = within("a refresh during Retry-After", ms(1), flags.refresh()).await;
        match answer {
            Err(Error::RetryAfter { until }) => {
                let wait = until.duration_since(asked).unwrap_or_default();
                assert!(wait > secs(590) && wait <= secs(600), "{wait:?}");
            }
            other => panic!("expected RetryAfter, got {other:?}"),
        }
    }
    sleep(secs(590)).await;
    assert_eq!(recorder.count(), 1, "no request while Retry-After runs");
    wait_status(&flags, "the retry after the wait", is_fresh).await;
    let times = recorder.times();
    assert_eq!(times.len(), 2, "the poller's own retry, once");
    assert!(
        times[1] - times[0] >= secs(600),
        "{:?}",
        times[1] - times[0]
    );
}

/// A save that blocks delays neither refreshes nor their answers: callers who ask during the
/// save are answered by new fetches while the store still holds it.
#[tokio::test(start_paused = true)]
async fn refreshes_are_answered_while_a_save_blocks() {
    let store = GatedStore::saves_gated();
    let _open = store.open_on_drop();
    let transport = answering_in_turn([ok(json!({"a": 1})).delay(secs(1)), ok(json!({"a": 2}))]);
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .store(store.clone())
        .build()
        .unwrap();
    idle().await;
    assert_eq!(recorder.count(), 1, "the start fetch is in flight");
    let during_fetch = tokio::spawn(flags.refresh());
    within("the save", secs(10), store.save.entered.notified()).await;
    let during_save = tokio::spawn(flags.refresh());
    // The paused clock stands still while a store call blocks: yield, do not sleep.
    assert!(
        yield_until(1000, || during_fetch.is_finished()
            && during_save.is_finished())
        .await,
        "refreshes waited for the save"
    );
    assert_eq!(during_fetch.await.unwrap().unwrap().get_i64("a"), Some(2));
    assert_eq!(during_save.await.unwrap().unwrap().get_i64("a"), Some(2));
    assert_eq!(recorder.count(), 3, "a fetch for each: no save in the way");
    assert!(store.inner.get().is_none(), "the first save still blocks");
    assert!(
        matches!(flags.status(), Status::Initializing { .. }),
        "fresh only after the save: {:?}",
        flags.status()
    );
    store.open();
    wait_status(&flags, "fresh after the save", is_fresh).await;
    flags.flush().await.unwrap();
    assert_eq!(store.inner.get().unwrap().flags["a"], json!(2));
}
