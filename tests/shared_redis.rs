//! Shared mode against a real `redis-server` and a wiremock API, in real time: one request per
//! interval for a fleet, and how fast a change reaches every handle. The faults (Redis killed,
//! a lease holder stopped, bad records) are in `shared_redis_faults.rs`.
//!
//! `cargo test --all-features --test shared_redis -- --nocapture` prints the measurements.

mod support;

use std::time::{Duration, Instant};

use flagpole::{Flags, SharedState, Source};
use support::fleet::{
    all_serve, fleet, fleet_with_stores, propagation, quantile, serve, until, watch, Api,
};
use support::redis_server::RedisServer;

const FLEET: usize = 20;

/// Prints the propagation delays and asserts a generous bound on their p99 (the target on the
/// 2-core development machine is 100 ms).
fn report_propagation(what: &str, delays: &[u64]) {
    let (p50, p99, max) = (
        quantile(delays, 0.5),
        quantile(delays, 0.99),
        delays[delays.len() - 1],
    );
    println!(
        "{what}: {} samples, write to snapshot p50 {p50} ms, p99 {p99} ms, max {max} ms",
        delays.len()
    );
    assert!(p99 < 1000, "{what}: p99 {p99} ms; delays {delays:?}");
}

async fn shutdown(handles: &[Flags]) {
    for h in handles {
        h.shutdown().await;
    }
}

/// Five handles started together without flags: one request, the others adopt its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_handles_start_with_one_request() {
    let redis = RedisServer::start();
    let api = Api::start(1).await;
    let handles = fleet(&api, &redis, Duration::from_secs(60), 5);
    for h in &handles {
        let source = tokio::time::timeout(Duration::from_secs(10), h.ready())
            .await
            .expect("ready in time")
            .unwrap();
        assert!(
            matches!(source, Source::Network | Source::Shared),
            "{source:?}"
        );
        assert_eq!(h.get_i64("n"), Some(1));
    }
    let sources: Vec<Source> = handles.iter().map(|h| h.snapshot().source()).collect();
    assert_eq!(
        sources.iter().filter(|s| **s == Source::Network).count(),
        1,
        "{sources:?}"
    );
    assert_eq!(api.requests().await, 1);
    shutdown(&handles).await;
}

/// 20 handles (each with its own Redis connections) for 10 intervals, the API's answer changing
/// every interval: one request per interval between them (about 210 without shared mode), and
/// every handle serves every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_handles_share_one_request_per_interval_and_serve_every_change() {
    const CHANGES: i64 = 10;
    let interval = Duration::from_secs(1);
    let redis = RedisServer::start();
    let api = Api::start(0).await;
    let (handles, stores) = fleet_with_stores(&api, &redis, interval, FLEET);
    let logs: Vec<_> = handles.iter().map(watch).collect();
    until(
        "every handle to serve the first fetch",
        5 * interval,
        || std::future::ready(serve(&handles, 0)),
    )
    .await;

    let start = Instant::now();
    let mut per_change = Vec::new();
    for version in 1..=CHANGES {
        let before = api.requests().await;
        api.set(version);
        // The fleet's next fetch comes at the end of the interval (each handle draws its refresh
        // in the last 10%, and the first one due fetches), then every handle adopts it.
        until(
            &format!("every handle to serve version {version}"),
            3 * interval,
            || std::future::ready(all_serve(&handles, &logs, version)),
        )
        .await;
        per_change.push(api.requests().await - before);
    }
    let elapsed = start.elapsed();
    let total = api.requests().await;
    let intervals = elapsed.as_secs_f64() / interval.as_secs_f64();
    println!(
        "{FLEET} handles, {CHANGES} changes in {elapsed:.2?} ({intervals:.2} intervals): {total} \
         requests in all (the start's included), per change {per_change:?}: {:.2} per interval \
         (alone: about {:.0})",
        (total - 1) as f64 / intervals,
        FLEET as f64 / 0.95,
    );
    assert!(total <= 12, "{total} requests: per change {per_change:?}");
    // Each change came with the fleet's next fetch, within the interval after the last one.
    assert!(
        intervals <= CHANGES as f64 * 1.05,
        "{intervals:.2} intervals for {CHANGES} changes"
    );

    // The last fetch's leader got its flags from the API; the others adopted them.
    let sources: Vec<Source> = handles.iter().map(|h| h.snapshot().source()).collect();
    let shared = sources.iter().filter(|s| **s == Source::Shared).count();
    assert!(shared >= FLEET - 2, "{sources:?}");
    for (h, store) in handles.iter().zip(&stores) {
        assert!(matches!(store.state(), SharedState::Joined));
        assert!(h.status().is_fresh(), "{:?}", h.status());
    }
    let delays = propagation(&logs, 1..=CHANGES);
    report_propagation("scheduled fetches, 20 handles", &delays);
    shutdown(&handles).await;
}

/// A change fetched by one handle (a caller's `refresh()`, each handle in turn) reaches all 20
/// handles' snapshots: p99 of the delay from the leader's write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_twenty_handles_at_once() {
    const CHANGES: i64 = 20;
    let redis = RedisServer::start();
    let api = Api::start(0).await;
    // No scheduled fetch during the test: every request is a refresh.
    let handles = fleet(&api, &redis, Duration::from_secs(600), FLEET);
    let logs: Vec<_> = handles.iter().map(watch).collect();
    until(
        "every handle to serve the first fetch",
        Duration::from_secs(5),
        || std::future::ready(serve(&handles, 0)),
    )
    .await;

    for version in 1..=CHANGES {
        api.set(version);
        let leader = &handles[version as usize % FLEET];
        let snapshot = leader.refresh().await.expect("the refresh fetches");
        assert_eq!(snapshot.get_i64("n"), Some(version));
        assert_eq!(snapshot.source(), Source::Network);
        until(
            &format!("every handle to serve version {version}"),
            Duration::from_secs(2),
            || std::future::ready(all_serve(&handles, &logs, version)),
        )
        .await;
    }
    // One request per change: the other 19 handles adopted each one.
    assert_eq!(api.requests().await, 1 + CHANGES as usize);
    let delays = propagation(&logs, 1..=CHANGES);
    report_propagation("refreshes, 20 handles", &delays);
    shutdown(&handles).await;
}

/// Privacy: a handle whose remote flags are off reads nothing about its profile, from Redis
/// either: its subscription ends when it is disabled, and starts again when it is enabled.
#[tokio::test]
async fn a_disabled_handle_stops_following_the_fleet() {
    let redis = RedisServer::start();
    let api = Api::start(1).await;
    let handles = fleet(&api, &redis, Duration::from_secs(600), 2);
    until("both handles to serve", Duration::from_secs(5), || {
        std::future::ready(serve(&handles, 1))
    })
    .await;
    let keys = redis.key_names("flagpole:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let channel = format!("{}:changed", keys[0]);
    let subscribers = || std::future::ready(redis.subscribers(&channel));
    until("both to subscribe", Duration::from_secs(5), || async {
        subscribers().await == 2
    })
    .await;
    handles[1].set_enabled(false).await;
    until(
        "the disabled one to leave",
        Duration::from_secs(5),
        || async { subscribers().await == 1 },
    )
    .await;
    // A change fetched by the other reaches nobody disabled.
    api.set(2);
    handles[0].refresh().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handles[1].get_i64("n"), None, "disabled: defaults only");
    handles[1].set_enabled(true).await;
    until(
        "the enabled one to subscribe again",
        Duration::from_secs(5),
        || async { subscribers().await == 2 },
    )
    .await;
    until(
        "it to serve the latest flags",
        Duration::from_secs(5),
        || std::future::ready(serve(&handles, 2)),
    )
    .await;
    assert_eq!(api.requests().await, 2, "no request of its own");
    shutdown(&handles).await;
}
