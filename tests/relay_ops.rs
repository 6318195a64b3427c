//! The relay's operations and defences on the wire: `/health` through an upstream outage,
//! `/metrics`, the header timeout against slow clients and the connection limit.

mod relay_support;

use std::time::Duration;

use relay_support::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const SET: &str = "extension-main-prod";

async fn health(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let response = client.get(format!("{base}/health")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

/// Waits until the set's health entry is in `state`; the status and body then.
async fn wait_health(client: &reqwest::Client, base: &str, state: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = health(client, base).await;
        if body["sets"][SET]["state"] == state {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "never {state}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_goes_starting_fresh_stale_and_an_outage_keeps_the_last_good_flags() {
    let body = json!([{"a": true}, {"b": [1, 2]}]);
    let (up, server) = Upstream::start(body.clone()).await;
    // Longer than the second a request waits for a starting set's first flags.
    up.set_delay(Duration::from_millis(1500));
    let relay = bind(builder(&server)).await;
    let base = format!("http://{}", relay.local_addr());
    let url = format!("{base}/v1/flags");
    let client = reqwest::Client::new();

    // Nothing started yet: healthy, no sets.
    let (status, idle) = health(&client, &base).await;
    assert_eq!((status, idle["sets"].clone()), (200, json!({})));
    // The first request starts the set and waits a second; its first fetch takes 1.5 s.
    let cold = client.get(&url).send().await.unwrap();
    assert_eq!(cold.status(), 503);
    assert_eq!(cold.headers()["retry-after"], "1");
    let (status, starting) = health(&client, &base).await;
    assert_eq!(status, 503, "{starting}");
    assert_eq!(starting["status"], "starting");
    assert_eq!(starting["sets"][SET]["state"], "starting");
    assert_eq!(starting["sets"][SET]["age_s"], Value::Null);

    let (status, fresh) = wait_health(&client, &base, "fresh").await;
    up.set_delay(Duration::ZERO);
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["status"], "ok");
    assert_eq!(fresh["sets"][SET]["source"], "network");
    assert_eq!(fresh["sets"][SET]["age_s"], 0);
    let good = client.get(&url).send().await.unwrap();
    assert_eq!(good.status(), 200);
    let etag = good.headers()["etag"].to_str().unwrap().to_owned();

    // Upstream fails: stale, with the error, and still serving the last good flags.
    up.set_status(500);
    let (status, stale) = wait_health(&client, &base, "stale").await;
    assert_eq!(status, 200, "serving flags is healthy: {stale}");
    let entry = &stale["sets"][SET];
    assert!(
        entry["last_error"].as_str().unwrap().contains("500"),
        "{entry}"
    );
    assert!(entry["stale_for_s"].is_u64(), "{entry}");
    assert_eq!(entry["source"], "network");
    for _ in 0..5 {
        let during = client.get(&url).send().await.unwrap();
        assert_eq!(during.status(), 200);
        assert_eq!(during.headers()["etag"].to_str().unwrap(), etag);
        assert_eq!(json_of(during).await, body);
        let revalidated = client
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), 304);
        tokio::time::sleep(Duration::from_millis(60)).await; // a fetch interval: more failures
    }
    let metrics = scrape(&client, &base).await;
    let failures = metric(
        &metrics,
        &format!("flagpole_relay_upstream_failures_total{{set=\"{SET}\"}}"),
    );
    assert!(failures.unwrap() >= 2.0, "{metrics}");

    // Upstream back: fresh again, same flags, same tag.
    up.set_status(200);
    wait_health(&client, &base, "fresh").await;
    let after = client.get(&url).send().await.unwrap();
    assert_eq!(after.headers()["etag"].to_str().unwrap(), etag);
    relay.shutdown().await;
}

#[tokio::test]
async fn metrics_count_requests_streams_and_upstream_fetches() {
    let (up, server) = Upstream::start(json!([{"a": 1}])).await;
    let relay = bind(builder(&server)).await;
    let base = format!("http://{}", relay.local_addr());
    let url = format!("{base}/v1/flags");
    let client = reqwest::Client::new();
    let etag = get_ready(&client, &url).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let not_modified = client.get(&url).header("if-none-match", &etag);
    assert_eq!(not_modified.send().await.unwrap().status(), 304);
    let missing = client.get(format!("{base}/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let bad = client.get(format!("{url}?client=x")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let mut sse = Sse::open(&client, &format!("{base}/v1/flags/stream")).await;
    sse.next_event(Duration::from_secs(5)).await.unwrap();

    let m = scrape(&client, &base).await;
    let requests = |route: &str, status: &str| {
        metric(
            &m,
            &format!("flagpole_relay_requests_total{{route=\"{route}\",status=\"{status}\"}}"),
        )
    };
    assert!(requests("flags", "200").unwrap() >= 1.0, "{m}");
    assert_eq!(requests("flags", "304"), Some(1.0), "{m}");
    assert_eq!(requests("flags", "400"), Some(1.0), "{m}");
    assert_eq!(requests("other", "404"), Some(1.0), "{m}");
    assert_eq!(requests("stream", "200"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "flagpole_relay_sse_clients"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "flagpole_relay_sse_dropped_total"), Some(0.0));
    assert_eq!(
        metric(&m, "flagpole_relay_connections_refused_total"),
        Some(0.0)
    );
    let per_set = |name: &str, m: &str| metric(m, &format!("{name}{{set=\"{SET}\"}}"));
    let fetches = per_set("flagpole_relay_upstream_fetches_total", &m).unwrap();
    assert!(fetches >= 1.0, "{m}");
    assert_eq!(
        per_set("flagpole_relay_upstream_failures_total", &m),
        Some(0.0)
    );
    assert_eq!(per_set("flagpole_relay_flags_age_seconds", &m), Some(0.0));
    for name in [
        "requests_total",
        "connections_refused_total",
        "sse_clients",
        "sse_dropped_total",
        "upstream_fetches_total",
        "upstream_failures_total",
        "flags_age_seconds",
    ] {
        assert!(
            m.contains(&format!("# TYPE flagpole_relay_{name} ")),
            "{name}"
        );
        assert!(
            m.contains(&format!("# HELP flagpole_relay_{name} ")),
            "{name}"
        );
    }

    // The stream closes: the gauge follows. Upstream fails: failures count, fetches go on.
    drop(sse);
    up.set_status(503);
    let m = wait_metrics(&client, &base, Duration::from_secs(5), |m| {
        metric(m, "flagpole_relay_sse_clients") == Some(0.0)
            && per_set("flagpole_relay_upstream_failures_total", m).unwrap() >= 2.0
    })
    .await;
    assert!(per_set("flagpole_relay_upstream_fetches_total", &m).unwrap() >= fetches + 2.0);
    relay.shutdown().await;
}

/// Waits for the relay to close `stream`: the time it took, and whether a response came first.
async fn closed(stream: &mut TcpStream, limit: Duration) -> (Duration, bool) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), got.starts_with(b"HTTP/1.1 200")),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected_after_the_header_timeout() {
    let (_up, server) = Upstream::start(json!([])).await;
    let timeout = Duration::from_millis(300);
    let relay = bind(builder(&server).header_read_timeout(timeout)).await;
    let addr = relay.local_addr();

    // Slow-loris: a header line every 50 ms, never the end of the headers.
    let mut loris = TcpStream::connect(addr).await.unwrap();
    loris
        .write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = loris.into_split();
    let trickle = tokio::spawn(async move {
        while write.write_all(b"X-Slow: 1\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut got)).await;
    let took = started.elapsed();
    assert!(ended.is_ok(), "still open");
    assert!(!got.starts_with(b"HTTP/1.1 200"), "answered");
    eprintln!("slow-loris disconnected after {took:?}");
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    trickle.abort();

    // A connection that sends nothing goes the same way.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (took, answered) = closed(&mut idle, Duration::from_secs(5)).await;
    assert!(!answered);
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
    // The relay still answers.
    assert_eq!(raw_get(addr, "/health").await.unwrap().0, 200);
    relay.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once_and_counted() {
    let (_up, server) = Upstream::start(json!([])).await;
    let relay = bind(builder(&server).max_connections(3)).await;
    let addr = relay.local_addr();
    // Three connections, each served once and kept open (idle, keep-alive).
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        send_get(&mut stream, "/health", false).await;
        assert_eq!(read_response(&mut stream).await.unwrap().0, 200);
        open.push(stream);
    }
    // The fourth is accepted by the kernel, then closed by the relay without an answer.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await;
    let (took, answered) = closed(&mut fourth, Duration::from_secs(5)).await;
    assert!(!answered);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // The open ones are still served.
    send_get(&mut open[0], "/health", false).await;
    assert_eq!(read_response(&mut open[0]).await.unwrap().0, 200);

    // One closes; its slot frees up once the relay sees the end (retries meanwhile are
    // refused and counted too).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = 1;
    let metrics = loop {
        match raw_get(addr, "/metrics").await {
            Ok((200, body)) => break body,
            other => {
                assert!(other.is_err(), "{other:?}");
                refused += 1;
            }
        }
        assert!(Instant::now() < deadline, "the slot never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        metric(&metrics, "flagpole_relay_connections_refused_total"),
        Some(f64::from(refused)),
        "{metrics}"
    );
    relay.shutdown().await;
}
