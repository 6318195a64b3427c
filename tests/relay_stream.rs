//! The relay's change stream and shutdown on the wire: reqwest and raw sockets against a relay in
//! this process, a wiremock upstream the tests change.

mod relay_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_support::*;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const QUERY: &str = "client=extension&distribution=main&environment=prod";

fn urls(relay: &flagpole::relay::Relay) -> (String, String, String) {
    let base = format!("http://{}", relay.local_addr());
    let flags = format!("{base}/v1/flags?{QUERY}");
    let stream = format!("{base}/v1/flags/stream?{QUERY}");
    (base, flags, stream)
}

#[tokio::test]
async fn the_stream_announces_the_flags_then_each_change_within_100ms() {
    let (up, server) = Upstream::start(json!([{"v": 0}])).await;
    let relay = bind(builder(&server)).await;
    let (_, flags_url, stream_url) = urls(&relay);
    let client = reqwest::Client::new();
    let first = get_ready(&client, &flags_url).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let mut sse = Sse::open(&client, &stream_url).await;
    let event = sse.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(event.event.as_deref(), Some("flags"));
    assert_eq!(event.id.as_deref(), Some(etag.as_str()));
    let data = event.data.unwrap();
    assert_eq!(data["etag"], Value::from(etag.clone()));
    assert!(
        data["cacheTimestamp"].as_u64().unwrap() > 1_600_000_000_000,
        "{data}"
    );

    let mut latencies = Vec::new();
    let mut last = etag;
    for v in 1..=5 {
        up.set_body(json!([{"v": v}]));
        let event = sse.next_event(Duration::from_secs(5)).await.unwrap();
        let received = Instant::now();
        // From the moment upstream answered the new body: the relay's fetch, parse and publish
        // are inside the measure, so it bounds the time from publish to event.
        let served = up.served().expect("the event follows the new body");
        latencies.push(received - served);
        let id = event.id.unwrap();
        assert_ne!(id, last, "an event without a change");
        // The event names what /v1/flags serves now.
        let now = client.get(&flags_url).send().await.unwrap();
        assert_eq!(now.headers()["etag"].to_str().unwrap(), id);
        let body = json_of(now).await;
        assert_eq!(body, json!([{"v": v}]));
        last = id;
    }
    // Fetches that bring the same flags (one every 50 ms) send nothing.
    assert!(
        sse.quiet(Duration::from_millis(300)).await,
        "an event without a change"
    );
    let max = latencies.iter().max().unwrap();
    eprintln!("change → event latencies: {latencies:?}");
    assert!(*max < Duration::from_millis(100), "{latencies:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn a_stream_opened_before_the_first_flags_gets_them_when_they_arrive() {
    let (up, server) = Upstream::start(json!([{"a": true}])).await;
    up.set_status(500);
    let relay = bind(builder(&server)).await;
    let (_, flags_url, stream_url) = urls(&relay);
    let client = reqwest::Client::new();
    let mut sse = Sse::open(&client, &stream_url).await;
    assert!(
        sse.quiet(Duration::from_millis(300)).await,
        "an event before any flags"
    );
    // Cold start: 503 with Retry-After while upstream fails.
    let cold = client.get(&flags_url).send().await.unwrap();
    assert_eq!(cold.status(), 503);
    assert_eq!(cold.headers()["retry-after"], "1");
    up.set_status(200);
    let event = sse.next_event(Duration::from_secs(5)).await.unwrap();
    let ready = client.get(&flags_url).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.headers()["etag"].to_str().unwrap(), event.id.unwrap());
    relay.shutdown().await;
}

#[tokio::test]
async fn a_quiet_stream_gets_keep_alive_comments_on_the_interval() {
    let (_up, server) = Upstream::start(json!([{"a": true}])).await;
    let relay = bind(builder(&server).keep_alive(Duration::from_millis(150))).await;
    let (_, flags_url, stream_url) = urls(&relay);
    let client = reqwest::Client::new();
    get_ready(&client, &flags_url).await;
    let mut sse = Sse::open(&client, &stream_url).await;
    sse.next_event(Duration::from_secs(5)).await.unwrap();
    let first = sse.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(first.comment.as_deref(), Some("keep-alive"), "{first:?}");
    let at = Instant::now();
    let second = sse.next(Duration::from_secs(2)).await.unwrap();
    assert_eq!(second.comment.as_deref(), Some("keep-alive"), "{second:?}");
    let gap = at.elapsed();
    assert!(
        gap >= Duration::from_millis(100) && gap < Duration::from_secs(1),
        "{gap:?}"
    );
    relay.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_the_others_keep_going() {
    let (up, server) = Upstream::start(json!([{"v": 0}])).await;
    // A frame every millisecond, and sockets that fill in kilobytes.
    let relay = bind(
        builder(&server)
            .keep_alive(Duration::from_millis(1))
            .stall_timeout(Duration::from_millis(300))
            .send_buffer_size(4096),
    )
    .await;
    let (base, flags_url, stream_url) = urls(&relay);
    let client = reqwest::Client::new();
    get_ready(&client, &flags_url).await;

    let mut good = Sse::open(&client, &stream_url).await;
    good.next_event(Duration::from_secs(5)).await.unwrap();
    let good_events = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let good_events = Arc::clone(&good_events);
        async move {
            while let Some(block) = good.next(Duration::from_secs(5)).await {
                if block.event.is_some() {
                    good_events.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let changes = tokio::spawn({
        let up = up.clone();
        async move {
            for v in 1.. {
                up.set_body(json!([{ "v": v }]));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });

    let mut slow = small_window(relay.local_addr()).await;
    send_get(&mut slow, &format!("/v1/flags/stream?{QUERY}"), false).await;
    let started = Instant::now();
    wait_metrics(&client, &base, Duration::from_secs(20), |m| {
        metric(m, "flagpole_relay_sse_dropped_total") == Some(1.0)
    })
    .await;
    let dropped_after = started.elapsed();
    // The relay closed the socket: what the kernel buffered, then the end.
    let mut buffered = 0;
    let mut buf = vec![0; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => buffered += n,
            Err(_) => panic!("the slow client's connection is still open"),
        }
    }
    eprintln!("slow client dropped after {dropped_after:?}; {buffered} bytes were in buffers");
    // Sockets and hyper's write buffer hold a bounded amount; no queue grew behind them.
    assert!(buffered < 256 * 1024, "{buffered}");

    // The reading client is still served: it stays open and keeps getting changes.
    let metrics = scrape(&client, &base).await;
    assert_eq!(metric(&metrics, "flagpole_relay_sse_clients"), Some(1.0));
    let seen = good_events.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while good_events.load(Ordering::Relaxed) < seen + 3 {
        assert!(
            Instant::now() < deadline,
            "the reading client stopped getting events"
        );
        assert!(!reader.is_finished(), "the reading client's stream ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    changes.abort();
    relay.shutdown().await;
    reader.await.unwrap();
}

/// Flags of about 1 MB: a response that takes a while through small socket buffers.
fn big_flags() -> Value {
    Value::Array(
        (0..2000)
            .map(|i| json!({ format!("flag{i:04}"): "x".repeat(500) }))
            .collect(),
    )
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_ends_streams_and_refuses_new_connections() {
    let (_up, server) = Upstream::start(big_flags()).await;
    let relay = bind(builder(&server).send_buffer_size(4096)).await;
    let addr = relay.local_addr();
    let (_, flags_url, stream_url) = urls(&relay);
    let client = reqwest::Client::new();
    let expected = get_ready(&client, &flags_url).await.bytes().await.unwrap();
    assert!(expected.len() > 1_000_000, "{}", expected.len());
    let mut sse = Sse::open(&client, &stream_url).await;
    sse.next_event(Duration::from_secs(5)).await.unwrap();

    // A response in flight: the client has read its first bytes only.
    let mut slow = small_window(addr).await;
    send_get(&mut slow, &format!("/v1/flags?{QUERY}"), true).await;
    let mut response = vec![0; 4096];
    let n = slow.read(&mut response).await.unwrap();
    response.truncate(n);
    assert!(response.starts_with(b"HTTP/1.1 200"));

    let started = Instant::now();
    let shutdown = tokio::spawn(async move {
        relay.shutdown().await;
        started.elapsed()
    });
    // New connections are refused once the shutdown has started.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stream ends at once instead of holding the drain up.
    assert_eq!(sse.next(Duration::from_secs(1)).await, None);
    let stream_ended = started.elapsed();
    // The response in flight still completes, most of it sent after the shutdown began.
    let before = response.len();
    slow.read_to_end(&mut response).await.unwrap();
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&response[head_end..], &expected[..]);
    assert!(
        response.len() - before > 500_000,
        "sent before the shutdown"
    );
    let took = shutdown.await.unwrap();
    eprintln!("stream ended {stream_ended:?} into the shutdown, which took {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn shutdown_gives_up_on_a_stuck_client_after_the_5_s_drain() {
    let (_up, server) = Upstream::start(big_flags()).await;
    let relay = bind(builder(&server).send_buffer_size(4096)).await;
    let addr = relay.local_addr();
    let (base, flags_url, _) = urls(&relay);
    let client = reqwest::Client::new();
    get_ready(&client, &flags_url).await;
    // A client that asks for 1 MB and reads none of it.
    let mut stuck = small_window(addr).await;
    send_get(&mut stuck, &format!("/v1/flags?{QUERY}"), true).await;
    let answered = r#"flagpole_relay_requests_total{route="flags",status="200"}"#;
    wait_metrics(&client, &base, Duration::from_secs(5), |m| {
        metric(m, answered) == Some(2.0)
    })
    .await;
    let started = Instant::now();
    relay.shutdown().await;
    let took = started.elapsed();
    eprintln!("shutdown with a stuck client took {took:?}");
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_secs(7),
        "{took:?}"
    );
    // Its connection was closed: reading ends well short of the body.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut got))
        .await
        .expect("closed");
    assert!(got.len() < 500_000, "{}", got.len());
}

#[tokio::test]
async fn bad_stream_requests_get_400_and_405() {
    let (_up, server) = Upstream::start(json!([])).await;
    let relay = bind(builder(&server)).await;
    let (base, _, _) = urls(&relay);
    let client = reqwest::Client::new();
    let bad = client
        .get(format!("{base}/v1/flags/stream?environment=staging"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error = json_of(bad).await;
    assert_eq!(error["parameter"], "environment");
    let post = client
        .post(format!("{base}/v1/flags/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let odd = client
        .get(format!("{base}/v1/flags/stream?client=%FF%FE&&=&client"))
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 400);
    relay.shutdown().await;
}
