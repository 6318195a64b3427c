//! Shared mode when things go wrong, against a real `redis-server` and a wiremock API in real
//! time: Redis killed and restarted mid-run, a lease holder stopped mid-fetch, and records in
//! Redis that must never replace good flags.
//!
//! `cargo test --all-features --test shared_redis_faults -- --nocapture` prints the measurements.

mod support;

use std::time::{Duration, Instant};

use flagpole::{Error, Flags, FlagsBuilder, RedisStore, SharedState, Source};
use serde_json::{json, Value};
use support::fleet::{builder, builder_with_store, fleet_with_stores, now_ms, serve, until, Api};
use support::redis_server::RedisServer;
use support::Captured;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

async fn shutdown(handles: &[Flags]) {
    for h in handles {
        h.shutdown().await;
    }
}

fn all(handles: &[Flags], pred: impl Fn(&Flags) -> bool) -> bool {
    handles.iter().all(pred)
}

fn is_down(store: &RedisStore) -> bool {
    matches!(store.state(), SharedState::Down { .. })
}

fn is_joined(store: &RedisStore) -> bool {
    matches!(store.state(), SharedState::Joined)
}

/// The requests the API gets while `window` passes (a measurement, not a wait for a condition).
async fn requests_during(api: &Api, window: Duration) -> usize {
    let before = api.requests().await;
    tokio::time::sleep(window).await;
    api.requests().await - before
}

/// Redis killed mid-run: every handle keeps serving its flags and fetches on its own schedule
/// (about one request per handle and interval), and says Redis is down. Redis restarted, empty:
/// every handle rejoins and the fleet is back to about one request per interval within two
/// intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_then_restarted() {
    const HANDLES: usize = 8;
    let interval = Duration::from_secs(2);
    let mut redis = RedisServer::start();
    let api = Api::start(0).await;
    let (handles, stores) = fleet_with_stores(&api, &redis, interval, HANDLES);
    until("every handle to serve the first fetch", interval, || {
        std::future::ready(serve(&handles, 0) && stores.iter().all(is_joined))
    })
    .await;
    let joined = requests_during(&api, 2 * interval).await;
    println!("joined: {joined} requests in 2 intervals");
    assert!(
        (1..=3).contains(&joined),
        "{joined} requests in 2 intervals"
    );

    api.set(1);
    redis.kill();
    let killed = Instant::now();
    until("every handle to see Redis down", interval, || {
        std::future::ready(stores.iter().all(is_down))
    })
    .await;
    println!("down: every handle saw it in {:?}", killed.elapsed());
    for store in &stores {
        let SharedState::Down {
            last_error,
            next_retry,
            ..
        } = store.state()
        else {
            unreachable!()
        };
        assert!(matches!(last_error, Error::Shared { .. }), "{last_error:?}");
        // Redis is tried again within the interval (the backoff's cap).
        assert!(next_retry <= std::time::Instant::now() + interval);
    }
    // Each handle fetches the change itself, on its own schedule, within about an interval.
    until(
        "every handle to fetch version 1 alone",
        2 * interval,
        || {
            std::future::ready(all(&handles, |h| {
                h.get_i64("n") == Some(1) && h.snapshot().source() == Source::Network
            }))
        },
    )
    .await;
    let alone = requests_during(&api, 2 * interval).await;
    println!(
        "down: {alone} requests in 2 intervals ({:.1} per interval, {HANDLES} handles)",
        alone as f64 / 2.0
    );
    assert!(
        (HANDLES * 3 / 2..=HANDLES * 3).contains(&alone),
        "{alone} requests in 2 intervals for {HANDLES} handles alone"
    );
    for (i, (h, store)) in handles.iter().zip(&stores).enumerate() {
        assert!(is_down(store), "handle {i}: {:?}", store.state());
        assert!(h.status().is_fresh(), "handle {i}: {:?}", h.status());
        assert_eq!(h.get_i64("n"), Some(1), "handle {i}");
    }

    redis.restart();
    let restarted = Instant::now();
    until("every handle to rejoin", 2 * interval, || {
        std::future::ready(stores.iter().all(is_joined))
    })
    .await;
    println!(
        "restarted: every handle rejoined in {:?}",
        restarted.elapsed()
    );
    tokio::time::sleep((2 * interval).saturating_sub(restarted.elapsed())).await;
    // From the third interval on, one request per interval again, and everyone adopts it.
    api.set(2);
    let rejoined = requests_during(&api, 2 * interval).await;
    println!("restarted: {rejoined} requests in intervals 3 and 4 after the restart");
    assert!(
        (1..=3).contains(&rejoined),
        "{rejoined} requests in 2 intervals after rejoining"
    );
    until("every handle to serve version 2", interval, || {
        std::future::ready(serve(&handles, 2))
    })
    .await;
    let shared = handles
        .iter()
        .filter(|h| h.snapshot().source() == Source::Shared)
        .count();
    assert!(
        shared >= HANDLES - 2,
        "{shared} of {HANDLES} adopted version 2"
    );
    shutdown(&handles).await;
}

/// A handle with a short request timeout and Redis timeout: a short lease.
fn handle_builder(
    api: &Api,
    redis: &RedisServer,
    request_timeout: Duration,
    redis_timeout: Duration,
    id: usize,
) -> FlagsBuilder {
    builder(api, redis, Duration::from_secs(600), id)
        .timeout(request_timeout)
        .shared_store(
            RedisStore::new(&redis.url())
                .unwrap()
                .timeout(redis_timeout),
        )
}

/// A handle takes the lease and its request hangs; it is shut down (or its remote flags
/// disabled): the lease goes back at once, and a waiting handle fetches at its next look (within
/// a second), long before the 6 s lease would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_stopped_mid_fetch_gives_the_lease_back() {
    let (request_timeout, redis_timeout) = (Duration::from_secs(5), Duration::from_millis(250));
    let redis = RedisServer::start();
    let api = Api::start(1).await;
    Mock::given(method("GET"))
        .and(path("/flags"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(20)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&api.server)
        .await;
    let build = |id| {
        handle_builder(&api, &redis, request_timeout, redis_timeout, id)
            .build()
            .unwrap()
    };
    let holder = build(0);
    until("the holder's request", Duration::from_secs(5), || async {
        api.requests().await == 1
    })
    .await;
    let waiter = build(1);
    // The waiter has looked at the lease (it waits on it: no request of its own yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.requests().await, 1);
    let stopped = Instant::now();
    holder.shutdown().await;
    until("the waiter's request", Duration::from_secs(3), || async {
        api.requests().await == 2
    })
    .await;
    let waited = stopped.elapsed();
    println!("the waiter fetched {waited:?} after the holder stopped (lease 6 s)");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    until("the waiter's flags", Duration::from_secs(2), || {
        std::future::ready(serve(std::slice::from_ref(&waiter), 1))
    })
    .await;
    shutdown(&[waiter]).await;
}

/// A handle takes the lease and its request hangs; then it dies (its runtime is dropped: no
/// goodbye, as in a crash). Another handle fetches when the lease runs out (request timeout +
/// 2 × Redis timeout + 500 ms), and only one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_that_dies_mid_fetch_costs_the_fleet_one_lease_at_most() {
    let request_timeout = Duration::from_secs(1);
    let redis_timeout = Duration::from_millis(250);
    let lease = request_timeout + 2 * redis_timeout + Duration::from_millis(500);
    let redis = RedisServer::start();
    let api = Api::start(1).await;
    // The first request hangs; later ones answer at once.
    Mock::given(method("GET"))
        .and(path("/flags"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{ "n": 666 }]))
                .set_delay(Duration::from_secs(20)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&api.server)
        .await;
    let handle = |id| {
        handle_builder(&api, &redis, request_timeout, redis_timeout, id)
            .build()
            .unwrap()
    };

    // The holder lives on a runtime of its own, dropped while its request hangs.
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let holder_builder = handle_builder(&api, &redis, request_timeout, redis_timeout, 0);
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let flags = runtime.block_on(async { holder_builder.build().unwrap() });
        started_tx.send(()).unwrap();
        // Keep the runtime turning (the request in flight) until told to die.
        runtime.block_on(async {
            while die_rx.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        drop(runtime);
        flags
    });
    started_rx.recv().unwrap();
    until("the holder's request", Duration::from_secs(5), || async {
        api.requests().await == 1
    })
    .await;
    let leases = redis.key_names("flagpole:*:lease");
    assert_eq!(leases.len(), 1, "{leases:?}");
    let pttl = redis.command(&["PTTL", &leases[0]]).unwrap();
    let left: u64 = pttl.trim_start_matches(':').parse().unwrap();
    let lease_ends = Instant::now() + Duration::from_millis(left);
    assert!(Duration::from_millis(left) <= lease, "{left} ms left");

    let others: Vec<Flags> = (1..4).map(handle).collect();
    die_tx.send(()).unwrap();
    let holder = holder.join().unwrap();
    let stopped = Instant::now();
    assert!(holder.status().is_stopped());

    until(
        "another handle's request",
        lease + Duration::from_secs(1),
        || async { api.requests().await >= 2 },
    )
    .await;
    let fetched = Instant::now();
    println!(
        "lease {lease:?}: the next request came {:?} after the holder stopped, {:?} after the \
         lease ended",
        fetched - stopped,
        fetched.saturating_duration_since(lease_ends)
    );
    // Nobody fetched while the lease held, and someone did as soon as it ended: within the
    // lease of the holder's stop (the waiters look 10 ms after the end; this polls every 10 ms).
    let slack = Duration::from_millis(250);
    assert!(
        fetched + Duration::from_millis(100) >= lease_ends,
        "fetched {:?} before the lease ended",
        lease_ends - fetched
    );
    assert!(fetched <= lease_ends + slack, "{:?}", fetched - lease_ends);
    assert!(
        fetched - stopped <= lease + slack,
        "{:?}",
        fetched - stopped
    );
    until(
        "the others to serve the flags",
        Duration::from_secs(2),
        || std::future::ready(serve(&others, 1)),
    )
    .await;
    assert_eq!(
        api.requests().await,
        2,
        "one of the waiting handles fetched"
    );
    let sources: Vec<Source> = others.iter().map(|h| h.snapshot().source()).collect();
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Shared).count(),
        2,
        "{sources:?}"
    );
    assert_eq!(holder.get_i64("n"), None);
    assert_eq!(redis.key_names("flagpole:*:lease"), Vec::<String>::new());
    shutdown(&others).await;
}

/// A lease holder whose fetch fails gives the lease back at once: a handle waiting on it tries
/// within about a second (it looks at the lease every second) instead of waiting out the
/// 6.5 s lease (nor can the holder's own retry take a lease it still holds).
#[tokio::test]
async fn a_failed_fetch_gives_the_lease_back() {
    let request_timeout = Duration::from_secs(4);
    let lease = request_timeout + 2 * Duration::from_secs(1) + Duration::from_millis(500);
    let redis = RedisServer::start();
    let api = Api::start(1).await;
    // The first request fails after 300 ms; later ones answer.
    Mock::given(method("GET"))
        .and(path("/flags"))
        .respond_with(ResponseTemplate::new(500).set_delay(Duration::from_millis(300)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&api.server)
        .await;
    let handle = |id| {
        builder(&api, &redis, Duration::from_secs(600), id)
            .timeout(request_timeout)
            .build()
            .unwrap()
    };
    let holder = handle(0);
    until("the holder's request", Duration::from_secs(5), || async {
        api.requests().await == 1
    })
    .await;
    let started = Instant::now();
    let waiter = handle(1);
    until("the waiter's request", lease, || async {
        api.requests().await >= 2
    })
    .await;
    let waited = started.elapsed();
    println!("lease {lease:?}: the waiter fetched {waited:?} after the holder's request");
    assert!(waited < Duration::from_millis(1800), "{waited:?}");
    until("the waiter's flags", Duration::from_secs(2), || {
        std::future::ready(serve(std::slice::from_ref(&waiter), 1))
    })
    .await;
    // Whoever took the lease first (the waiter, or the holder retrying after its fast backoff)
    // fetched for both: one request more, and both serve it.
    until("the holder's flags", Duration::from_secs(3), || {
        std::future::ready(serve(std::slice::from_ref(&holder), 1))
    })
    .await;
    assert_eq!(api.requests().await, 2);
    shutdown(&[holder, waiter]).await;
}

/// Records written into Redis that must never replace good flags: stamped an hour ahead (a writer's
/// clock ahead), corrupt, oversized (over 4 MiB), of another format version, for another request.
/// Each is announced on the channel, so that every handle reads it: each warns and keeps its flags.
/// The next fetch (a caller's refresh, or a new handle's first fetch) replaces it.
#[tokio::test]
async fn bad_records_are_ignored_with_a_warning_and_replaced() {
    const MAX_RECORD_BYTES: usize = 4 << 20;
    let logs = Captured::default();
    let _guard = logs.install();
    let redis = RedisServer::start();
    let api = Api::start(1).await;
    let (mut handles, mut stores) = fleet_with_stores(&api, &redis, Duration::from_secs(600), 3);
    until(
        "every handle to serve the first fetch",
        Duration::from_secs(5),
        || std::future::ready(serve(&handles, 1)),
    )
    .await;
    let keys = redis.key_names("flagpole:*");
    assert_eq!(keys.len(), 1, "only the record remains: {keys:?}");
    let key = keys[0].clone();
    let channel = format!("{key}:changed");
    let good: Value = serde_json::from_slice(&redis.get(&key).unwrap()).unwrap();
    assert_eq!(good["version"], json!(1));
    assert_eq!(good["flags"], json!({ "n": 1 }), "{good}");

    // Each would be adopted if it were read: newer than any flags held, with other flags.
    let future = now_ms() + 3_600_000;
    let mut newer = good.clone();
    newer["cache_timestamp"] = json!(future);
    newer["flags"] = json!({ "n": 666 });
    let mut oversized = serde_json::to_vec(&newer).unwrap();
    oversized.resize(MAX_RECORD_BYTES + 1, b' ');
    let mut other_version = newer.clone();
    other_version["version"] = json!(2);
    let mut other_key = newer.clone();
    other_key["key"] = json!("someone else's request");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "stamped in the future",
            serde_json::to_vec(&newer).unwrap(),
            "stamped in the future",
        ),
        (
            "corrupt",
            br#"{"version":1,"key":"#.to_vec(),
            "ignoring a corrupt shared flag record",
        ),
        (
            "oversized",
            oversized,
            "ignoring an oversized shared flag record",
        ),
        (
            "other version",
            serde_json::to_vec(&other_version).unwrap(),
            "of another format version",
        ),
        (
            "other key",
            serde_json::to_vec(&other_key).unwrap(),
            "saved for other request parameters",
        ),
    ];

    let mut version = 1;
    for (i, (case, bytes, warning)) in cases.into_iter().enumerate() {
        let held: Vec<Option<u64>> = handles
            .iter()
            .map(|h| h.snapshot().cache_timestamp())
            .collect();
        // A new handle subscribes as it starts: wait until every handle listens.
        until("every handle to subscribe", Duration::from_secs(5), || {
            std::future::ready(redis.subscribers(&channel) == handles.len() as i64)
        })
        .await;
        redis.set(&key, &bytes);
        let before = logs.count("WARN", warning);
        let subscribers = redis.publish(&channel, &future.to_string());
        assert_eq!(subscribers, handles.len() as i64, "{case}");
        // Every handle read it, warned, and kept its flags.
        until(
            &format!("every handle to warn about the {case} record"),
            Duration::from_secs(5),
            || std::future::ready(logs.count("WARN", warning) >= before + handles.len()),
        )
        .await;
        for ((h, held), store) in handles.iter().zip(&held).zip(&stores) {
            assert_eq!(h.get_i64("n"), Some(version), "{case}");
            assert_eq!(h.snapshot().cache_timestamp(), *held, "{case}");
            assert!(h.status().is_fresh(), "{case}: {:?}", h.status());
            assert!(matches!(store.state(), SharedState::Joined));
        }

        // The next fetch replaces it: a caller's refresh, or a new handle's first fetch (which
        // would adopt the record if it took it for a good one).
        version += 1;
        api.set(version);
        let requests = api.requests().await;
        if i % 2 == 0 {
            let snapshot = handles[i % handles.len()].refresh().await.unwrap();
            assert_eq!(snapshot.get_i64("n"), Some(version), "{case}");
        } else {
            let (builder, store) =
                builder_with_store(&api, &redis, Duration::from_secs(600), i + 10);
            handles.push(builder.build().unwrap());
            stores.push(store);
        }
        until(
            &format!("every handle to serve the fetch after the {case} record"),
            Duration::from_secs(5),
            || std::future::ready(serve(&handles, version)),
        )
        .await;
        assert_eq!(api.requests().await, requests + 1, "{case}");
        let stored: Value = serde_json::from_slice(&redis.get(&key).unwrap()).unwrap();
        assert_eq!(stored["version"], json!(1), "{case}");
        assert_eq!(stored["key"], good["key"], "{case}");
        assert_eq!(stored["flags"], json!({ "n": version }), "{case}");
        assert!(
            stored["cache_timestamp"].as_u64().unwrap() < future,
            "{case}"
        );
    }
    shutdown(&handles).await;
}
