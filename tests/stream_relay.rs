//! Streaming clients on a relay, on the wire: handles with `.stream(true)` and a fetch interval
//! no test lasts, so that only the change stream can explain a change that arrives; a relay in
//! this process over a wiremock upstream the tests change. Real time and real sockets on
//! 127.0.0.1. Measured latencies are printed, not asserted (`examples/stream_fleet.rs` checks
//! its goal); the assertions are about correctness, with generous deadlines.
//!
//! Then the faults: a relay restarted on the same port, an upstream outage behind the relay, a
//! server without the change stream.
#![cfg(all(feature = "stream", feature = "relay"))]

mod relay_support;
mod stream_wire_support;
mod support;

use std::time::Duration;

use flagpole::StreamState;
use relay_support::*;
use serde_json::json;
use stream_wire_support::*;
use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const HANDLES: usize = 100;
const CHANGES: i64 = 3;
/// Handles of the fault tests.
const FAULT_HANDLES: usize = 20;

/// 100 handles on one relay; the upstream changes three times. Every handle serves each change,
/// with one `/v1/flags` request per handle and change that brings it (a 200); the latency from
/// the moment upstream answered the relay with the new body to each handle's new snapshot is
/// printed. Besides those, at most one poll per handle (see [`LONG`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_100_streaming_handles_with_one_request_each() {
    let (up, server) = Upstream::start(json!([{ FLAG: 0 }])).await;
    let relay = bind(builder(&server)).await;
    let base = format!("http://{}", relay.local_addr());
    let handles = fleet(HANDLES, &format!("{base}/v1"), LONG);
    all_connected(&handles, 0, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let metrics = scrape(&client, &base).await;
    // One first fetch each (a tag heard on connect, before that fetch ended, fetched nothing
    // more), and one stream each.
    assert_eq!(flags_answers(&metrics, 200), HANDLES as f64, "{metrics}");
    assert_eq!(
        metric(&metrics, "flagpole_relay_sse_clients"),
        Some(HANDLES as f64)
    );

    let mut latencies = Vec::new();
    let mut rows = Vec::new();
    for v in 1..=CHANGES {
        let before = scrape(&client, &base).await;
        let upstream_before = support::requests(&server).await.len();
        let oks_before: Vec<usize> = handles.iter().map(|h| h.calls.answered(200)).collect();
        let seen = serve_after(&handles, v, Duration::from_secs(10), || {
            up.set_body(json!([{ FLAG: v }]));
        })
        .await;
        // The relay's fetch of the change: when upstream first answered the new body.
        let fetched = up.served().expect("the relay fetched the change");
        let change: Vec<Duration> = seen.iter().map(|t| *t - fetched).collect();
        let after = scrape(&client, &base).await;
        let (oks, polls) = (
            flags_answers(&after, 200) - flags_answers(&before, 200),
            flags_answers(&after, 304) - flags_answers(&before, 304),
        );
        let upstream_requests = support::requests(&server).await.len() - upstream_before;
        for (h, before) in handles.iter().zip(&oks_before) {
            assert_eq!(
                h.calls.answered(200) - before,
                1,
                "change {v}: a handle fetched the change other than once"
            );
        }
        // Not a storm: one request per handle brought the change, whatever the stream sent.
        assert_eq!(oks, HANDLES as f64, "change {v}");
        let (p50, p99, max) = percentiles(&change);
        rows.push(format!(
            "change {v}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; relay /v1/flags \
             requests {} ({polls} polls answered 304), upstream requests {upstream_requests} \
             (the relay polls every 50 ms)",
            oks + polls
        ));
        latencies.extend(change);
    }
    // Nothing trails behind: no handle fetches again, no stream reconnects.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for h in &handles {
        assert_eq!(h.calls.answered(200), 1 + CHANGES as usize);
        assert!(
            h.calls.sends().len() <= 2 + CHANGES as usize,
            "more than one poll"
        );
        assert_eq!(h.calls.opens().len(), 1);
    }
    let (p50, p99, max) = percentiles(&latencies);
    for row in rows {
        eprintln!("{row}");
    }
    eprintln!(
        "{HANDLES} handles × {CHANGES} changes, relay's fetch → handle's snapshot: p50 {p50:.1} \
         ms, p99 {p99:.1} ms, max {max:.1} ms"
    );
    for h in &handles {
        h.flags.shutdown().await;
    }
    relay.shutdown().await;
}

/// The relay goes away for 5 s and comes back on the same port. Every handle keeps serving its
/// flags, reports its stream `Connecting`, tries to reconnect no more often than the backoff
/// allows (delays in `[b/2, b]`, `b` = 1 s doubling), reconnects to the new relay, and gets the
/// next change through the new relay's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restart_keeps_every_handle_serving_and_reconnects_within_the_backoff() {
    const DOWN: Duration = Duration::from_secs(5);
    let (up, server) = Upstream::start(json!([{ FLAG: 0 }])).await;
    let relay = bind(builder(&server)).await;
    let addr = relay.local_addr();
    let handles = fleet(FAULT_HANDLES, &format!("http://{addr}/v1"), LONG);
    all_connected(&handles, 0, Duration::from_secs(20)).await;

    // When each handle reported its stream down: as soon as it saw it drop, which is before
    // its first reconnection attempt (that one waits 0.5 s at least).
    let watchers: Vec<_> = handles
        .iter()
        .map(|h| {
            let mut status = h.flags.status_receiver();
            tokio::spawn(async move {
                let down = status.wait_for(|s| s.stream() != StreamState::Connected);
                let state = tokio::time::timeout(Duration::from_secs(10), down)
                    .await
                    .expect("the stream still reads connected")
                    .unwrap()
                    .stream();
                (state, Instant::now())
            })
        })
        .collect();
    let down_at = Instant::now();
    relay.shutdown().await;
    let closed_at = Instant::now();
    let mut connecting = Vec::new();
    for watcher in watchers {
        let (state, at) = watcher.await.unwrap();
        assert_eq!(state, StreamState::Connecting);
        connecting.push(at);
    }
    let after_close: Vec<Duration> = connecting.iter().map(|t| *t - closed_at).collect();
    let (p50, _, max) = percentiles(&after_close);
    eprintln!(
        "relay shutdown took {:?}; streams reported connecting p50 {p50:.1} ms, max {max:.1} ms \
         after it",
        closed_at - down_at
    );
    // Down: every read still serves the last flags. (A handle whose first poll falls here, see
    // `LONG`, reads stale until its next one.)
    while Instant::now() < down_at + DOWN {
        for h in &handles {
            assert_eq!(h.value(), Some(0), "a handle stopped serving its flags");
            assert_eq!(h.stream(), StreamState::Connecting);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let relay = bind_same_port(&server, addr).await;
    let up_at = Instant::now();
    until_all(&handles, "connected", Duration::from_secs(30), |h| {
        h.stream() == StreamState::Connected && h.value() == Some(0)
    })
    .await;
    let reconnected = Instant::now();
    let allowed = max_reconnects(up_at - down_at);
    let mut tries = Vec::new();
    for h in &handles {
        let opens = h.calls.opens();
        let down = opens
            .iter()
            .filter(|t| **t >= down_at && **t < up_at)
            .count();
        assert!(down >= 1, "a handle never tried to reconnect: {opens:?}");
        assert!(
            down <= allowed,
            "{down} opens in the {:?} down, the backoff allows {allowed}",
            up_at - down_at
        );
        for pair in opens.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_millis(500), "two opens {gap:?} apart");
        }
        tries.push(down);
    }
    eprintln!(
        "opens while down ({:?}, at most {allowed} allowed): {tries:?}; every handle connected \
         to the new relay {:?} after it started",
        up_at - down_at,
        reconnected - up_at
    );

    // The next change comes through the new relay's stream (the interval is an hour). The new
    // relay named the same tag on connect: nothing was fetched until the change (a 304 is a
    // poll, see `LONG`).
    for h in &handles {
        assert_eq!(h.calls.answered(200), 1);
    }
    serve_after(&handles, 1, Duration::from_secs(10), || {
        up.set_body(json!([{ FLAG: 1 }]));
    })
    .await;
    for h in &handles {
        assert_eq!(h.calls.answered(200), 2);
    }
    for h in &handles {
        h.flags.shutdown().await;
    }
    relay.shutdown().await;
}

/// A relay on `addr` again (the old one's port); retried for a while in case the port is not
/// free at once.
async fn bind_same_port(server: &MockServer, addr: std::net::SocketAddr) -> flagpole::relay::Relay {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match builder(server).bind(addr).await {
            Ok(relay) => return relay,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot bind {addr} again: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Upstream answers 503 for 4 s. The relay keeps serving its cached flags; every handle keeps
/// serving them, fresh (its polls get 304s from the relay), with its stream connected the whole
/// time: no reconnection at all, and polling goes on. The next change then arrives as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_keeps_streams_connected_and_polling_going() {
    const OUTAGE: Duration = Duration::from_secs(4);
    const POLL: Duration = Duration::from_millis(500);
    let (up, server) = Upstream::start(json!([{ FLAG: 0 }])).await;
    let relay = bind(builder(&server).keep_alive(Duration::from_millis(500))).await;
    let base = format!("http://{}", relay.local_addr());
    let handles = fleet(FAULT_HANDLES, &format!("{base}/v1"), POLL);
    all_connected(&handles, 0, Duration::from_secs(20)).await;
    let client = reqwest::Client::new();

    up.set_status(503);
    let start = Instant::now();
    let failures = r#"flagpole_relay_upstream_failures_total{set="extension-main-prod"}"#;
    let before = metric(&scrape(&client, &base).await, failures).unwrap_or(0.0);
    let sends: Vec<usize> = handles.iter().map(|h| h.calls.sends().len()).collect();
    while start.elapsed() < OUTAGE {
        for h in &handles {
            assert_eq!(h.value(), Some(0));
            let status = h.flags.status();
            assert!(status.is_fresh(), "{status:?}");
            assert_eq!(status.stream(), StreamState::Connected);
        }
        let now = client.get(format!("{base}/v1/flags")).send().await.unwrap();
        assert_eq!(
            now.status(),
            200,
            "the relay stopped serving its cached flags"
        );
        assert_eq!(json_of(now).await, json!([{ FLAG: 0 }]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = scrape(&client, &base).await;
    let failed = metric(&metrics, failures).unwrap_or(0.0) - before;
    assert!(
        failed >= 2.0,
        "the relay's upstream did not fail: {metrics}"
    );
    let polls: Vec<usize> = handles
        .iter()
        .zip(&sends)
        .map(|(h, before)| h.calls.sends().len() - before)
        .collect();
    eprintln!(
        "{OUTAGE:?} of upstream outage: {failed} failed upstream fetches; polls per handle \
         (every {POLL:?}): {polls:?}"
    );
    for (h, polled) in handles.iter().zip(&polls) {
        // Every 500 ms for 4 s: 7 or 8; at least 3 even on a starved machine.
        assert!(*polled >= 3, "polling stalled: {polled} polls");
        assert_eq!(h.calls.opens().len(), 1, "a stream reconnected");
    }

    up.set_status(200);
    serve_after(&handles, 1, Duration::from_secs(10), || {
        up.set_body(json!([{ FLAG: 1 }]));
    })
    .await;
    for h in &handles {
        assert_eq!(h.calls.opens().len(), 1, "a stream reconnected");
        h.flags.shutdown().await;
    }
    relay.shutdown().await;
}

/// A server with `/v1/flags` and no change stream (404): each streaming handle logs it once,
/// reports `Unsupported`, tries once, and polls exactly like a handle without a stream.
#[tokio::test]
async fn a_server_without_the_stream_is_tried_once_and_polling_goes_on() {
    const POLL: Duration = Duration::from_millis(300);
    const STREAMING: usize = 3;
    let logs = support::Captured::default();
    let _capture = logs.install();
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{ FLAG: 0 }])))
        .mount(&server)
        .await;
    let base = format!("{}/v1", server.uri());
    let streaming: Vec<Handle> = (0..STREAMING)
        .map(|_| Handle::new(&base, POLL, true))
        .collect();
    let plain = Handle::new(&base, POLL, false);
    until_all(&streaming, "unsupported", Duration::from_secs(10), |h| {
        h.stream() == StreamState::Unsupported
    })
    .await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = |h: &Handle| h.calls.sends().iter().filter(|t| **t >= start).count();
    let plain_polls = count(&plain);
    // Every 300 ms for 3 s.
    assert!(
        plain_polls >= 5,
        "the handle without a stream polled {plain_polls} times"
    );
    for h in &streaming {
        assert_eq!(h.calls.opens().len(), 1);
        assert_eq!(h.stream(), StreamState::Unsupported);
        assert!(h.flags.status().is_fresh());
        // As many polls as without a stream (give or take the drift of a busy machine: each
        // poll is scheduled from the end of the previous one), none sooner than the interval
        // after the previous one (the first is drawn anywhere in the first interval).
        let polls = count(h);
        assert!(
            polls * 2 >= plain_polls && polls <= plain_polls * 2,
            "{polls} polls with the stream unsupported, {plain_polls} without a stream"
        );
        for pair in h.calls.sends()[1..].windows(2) {
            assert!(pair[1] - pair[0] >= POLL, "{:?}", pair[1] - pair[0]);
        }
    }
    let opened = support::requests(&server)
        .await
        .iter()
        .filter(|r| r.url.path() == "/v1/flags/stream")
        .count();
    assert_eq!(opened, STREAMING);
    assert_eq!(
        logs.count("WARN", "has no change stream"),
        STREAMING,
        "{}",
        logs.text()
    );
    for h in streaming.iter().chain([&plain]) {
        h.flags.shutdown().await;
    }
}
