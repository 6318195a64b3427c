//! Wire-level integration tests: the real `HttpTransport` (reqwest) against a wiremock server (or
//! a tiny raw TCP server) on 127.0.0.1, in real time.
//!
//! Every test uses a one-hour fetch interval and a one-hour backoff so that the poller makes no
//! request on its own except the one at start; fetches are driven with `Flags::refresh`, and the
//! start fetch is awaited (status leaves `Initializing`) before requests are counted.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flagpole::{
    CacheRecord, Client, Distribution, Environment, Error, FileStore, Flags, FlagsBuilder, Source,
    Status, Store,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{
    any, header, header_exists, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

use support::{closed_port_base, requests, LogBuffer};

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

/// A builder for `base_url` that never fetches on its own after the start fetch.
fn builder_for_url(base_url: String) -> FlagsBuilder {
    Flags::builder()
        .base_url(base_url)
        .fetch_interval(HOUR)
        .backoff_initial(HOUR)
        .backoff_max(HOUR)
}

/// A builder pointing at `{server}/v1` that never fetches on its own after the start fetch.
fn builder(base: &str) -> FlagsBuilder {
    builder_for_url(format!("{base}/v1"))
}

/// Waits until the start fetch (or cache load) has finished: the status leaves `Initializing`.
async fn settle(flags: &Flags) -> Status {
    let mut status = flags.status_receiver();
    let settled = tokio::time::timeout(
        WAIT,
        status.wait_for(|s| !matches!(s, Status::Initializing { .. })),
    )
    .await
    .expect("the start fetch did not finish in time")
    .expect("status channel closed")
    .clone();
    settled
}

fn json_200(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// Mounts a catch-all mock answering `template`.
async fn serve(server: &MockServer, template: ResponseTemplate) {
    Mock::given(any())
        .respond_with(template)
        .mount(server)
        .await;
}

/// Replaces every mock (and the request log) with a catch-all answering `template`.
async fn flip(server: &MockServer, template: ResponseTemplate) {
    server.reset().await;
    serve(server, template).await;
}

/// Polls a file store until it holds a record satisfying `ok`.
async fn wait_for_record(store: &FileStore, ok: impl Fn(&CacheRecord) -> bool) -> CacheRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(record)) = store.load() {
            if ok(&record) {
                return record;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the store never held the expected record; file: {:?}",
            std::fs::read_to_string(store.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn good_flags() -> Value {
    json!([{"a": true}, {"n": 7}, {"s": "x"}])
}

/// A server answering [`good_flags`] to every request.
async fn good_flags_server() -> MockServer {
    let server = MockServer::start().await;
    serve(&server, json_200(good_flags())).await;
    server
}

fn assert_good_flags(flags: &Flags) {
    assert_eq!(flags.get_bool("a"), Some(true));
    assert_eq!(flags.get_i64("n"), Some(7));
    assert_eq!(flags.get_str("s").as_deref(), Some("x"));
}

// ---------------------------------------------------------------------------------------------
// 1. The request on the wire
// ---------------------------------------------------------------------------------------------

/// A mock for exactly the request of [`mobile_flask_rc`]: `GET /v1/flags` with its three query
/// parameters and `Accept: application/json`.
fn mobile_flask_rc_request() -> MockBuilder {
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .and(query_param("client", "mobile"))
        .and(query_param("distribution", "flask"))
        .and(query_param("environment", "rc"))
        .and(header("accept", "application/json"))
}

/// [`builder`] for the mobile client, flask distribution, rc environment.
fn mobile_flask_rc(base: &str) -> FlagsBuilder {
    builder(base)
        .client(Client::Mobile)
        .distribution(Distribution::Flask)
        .environment(Environment::Rc)
}

#[tokio::test]
async fn request_has_exact_query_path_and_accept_header_without_profile() {
    let server = MockServer::start().await;
    mobile_flask_rc_request()
        .and(query_param_is_missing("user"))
        .respond_with(json_200(json!([{"a": true}])))
        .mount(&server)
        .await;

    let flags = mobile_flask_rc(&server.uri()).build().unwrap();
    let status = settle(&flags).await;
    assert!(matches!(status, Status::Fresh { .. }), "{status:?}");
    assert_eq!(flags.get_bool("a"), Some(true));

    let snapshot = flags.refresh().await.expect("refresh");
    assert_eq!(snapshot.source(), Source::Network);

    let seen = requests(&server).await;
    assert_eq!(seen.len(), 2, "the start fetch and one refresh");
    for request in &seen {
        assert_eq!(request.method.as_str(), "GET");
        assert_eq!(request.url.path(), "/v1/flags");
        assert_eq!(
            request.url.query(),
            Some("client=mobile&distribution=flask&environment=rc")
        );
        assert_eq!(
            request.headers.get("accept").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert!(request.headers.get("if-none-match").is_none());
    }
}

#[tokio::test]
async fn request_carries_percent_encoded_user_only_with_profile_id() {
    let server = MockServer::start().await;
    let profile = "user 1&x=y/é";
    mobile_flask_rc_request()
        .and(query_param("user", profile))
        .respond_with(json_200(json!([{"a": true}])))
        .mount(&server)
        .await;

    let flags = mobile_flask_rc(&server.uri())
        .profile_id(profile)
        .build()
        .unwrap();
    let status = settle(&flags).await;
    assert!(matches!(status, Status::Fresh { .. }), "{status:?}");
    flags.refresh().await.expect("refresh");

    let seen = requests(&server).await;
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.url.path(), "/v1/flags");
        let query = request.url.query().expect("a query");
        // Exactly four parameters: the `&` inside the id is encoded, not a separator.
        assert_eq!(query.split('&').count(), 4, "{query}");
        assert!(!query.contains(' '), "{query}");
        assert!(
            query.starts_with("client=mobile&distribution=flask&environment=rc&user="),
            "{query}"
        );
        let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("client".to_owned(), "mobile".to_owned()),
                ("distribution".to_owned(), "flask".to_owned()),
                ("environment".to_owned(), "rc".to_owned()),
                ("user".to_owned(), profile.to_owned()),
            ]
        );
    }

    // An empty profile id counts as none: no `user=` at all.
    let server = MockServer::start().await;
    Mock::given(query_param_is_missing("user"))
        .respond_with(json_200(json!({})))
        .mount(&server)
        .await;
    let flags = builder(&server.uri()).profile_id("").build().unwrap();
    assert!(matches!(settle(&flags).await, Status::Fresh { .. }));
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].url.query(),
        Some("client=extension&distribution=main&environment=prod")
    );
}

#[tokio::test]
async fn base_url_with_trailing_slash_keeps_its_path() {
    let server = MockServer::start().await;
    serve(&server, json_200(json!([{"a": true}]))).await;
    let flags = builder_for_url(format!("{}/v1/", server.uri()))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].url.path(), "/v1/flags");
    assert_eq!(
        seen[0].url.query(),
        Some("client=extension&distribution=main&environment=prod")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Body forms
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn array_body_flattens_in_order_and_a_later_key_wins() {
    let server = MockServer::start().await;
    serve(
        &server,
        json_200(json!([
            {"feature1": true},
            {"feature2": {"value": 1}},
            {"feature1": false},
            {"list": [1, "two", null]},
            {"ratio": 0.25}
        ])),
    )
    .await;
    let flags = builder(&server.uri())
        .default_flag("only-default", "d")
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));

    let snapshot = flags.refresh().await.expect("refresh");
    assert_eq!(snapshot.source(), Source::Network);
    assert!(snapshot.cache_timestamp().is_some());
    assert_eq!(snapshot.get_bool("feature1"), Some(false), "later key wins");
    assert_eq!(snapshot.get("feature2"), Some(json!({"value": 1})));
    assert_eq!(snapshot.get("list"), Some(json!([1, "two", null])));
    assert_eq!(snapshot.get_f64("ratio"), Some(0.25));
    assert_eq!(
        snapshot.get_str("only-default").as_deref(),
        Some("d"),
        "defaults fill"
    );
    assert_eq!(
        snapshot.names(),
        vec!["feature1", "feature2", "list", "only-default", "ratio"]
    );
    assert_eq!(flags.get_bool("feature1"), Some(false));
    assert_eq!(requests(&server).await.len(), 2);
}

#[tokio::test]
async fn plain_object_body_is_accepted() {
    let server = MockServer::start().await;
    serve(
        &server,
        json_200(json!({"feature1": true, "nested": {"k": [1, 2]}, "s": "text"})),
    )
    .await;
    let flags = builder(&server.uri()).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));

    let snapshot = flags.refresh().await.expect("refresh");
    assert_eq!(snapshot.source(), Source::Network);
    assert_eq!(snapshot.len(), 3);
    assert_eq!(snapshot.get_bool("feature1"), Some(true));
    assert_eq!(snapshot.get("nested"), Some(json!({"k": [1, 2]})));
    assert_eq!(flags.get_str("s").as_deref(), Some("text"));
}

#[tokio::test]
async fn empty_array_is_a_valid_empty_set_from_the_network() {
    let server = MockServer::start().await;
    serve(&server, json_200(json!([]))).await;
    let flags = builder(&server.uri()).build().unwrap();
    assert!(
        matches!(tokio::time::timeout(WAIT, flags.ready()).await, Ok(Ok(_))),
        "an empty set is ready"
    );
    assert!(
        matches!(flags.status(), Status::Fresh { .. }),
        "{:?}",
        flags.status()
    );

    let snapshot = flags
        .refresh()
        .await
        .expect("an empty array is not a failure");
    assert_eq!(snapshot.source(), Source::Network);
    assert!(snapshot.is_empty());
    assert!(snapshot.cache_timestamp().is_some());
    assert!(flags.snapshot().names().is_empty());
    assert!(matches!(flags.status(), Status::Fresh { .. }));
    assert_eq!(requests(&server).await.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 3. Status mapping
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_errors_are_typed_and_keep_the_last_good_flags() {
    let server = good_flags_server().await;
    let flags = builder(&server.uri()).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_good_flags(&flags);
    let good_timestamp = flags.snapshot().cache_timestamp();

    // 500: retryable.
    flip(&server, ResponseTemplate::new(500).set_body_string("boom")).await;
    let err = flags.refresh().await.expect_err("500 is a failure");
    assert!(matches!(err, Error::Http { status: 500 }), "{err:?}");
    assert_eq!(err.status(), Some(500));
    assert!(!err.is_permanent());
    assert_good_flags(&flags);
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(flags.snapshot().cache_timestamp(), good_timestamp);
    match flags.status() {
        Status::Stale { last_error, .. } => {
            assert!(
                matches!(last_error, Error::Http { status: 500 }),
                "{last_error:?}"
            )
        }
        other => panic!("expected stale, got {other:?}"),
    }
    assert_eq!(requests(&server).await.len(), 1);

    // 404: permanent.
    flip(&server, ResponseTemplate::new(404)).await;
    let err = flags.refresh().await.expect_err("404 is a failure");
    assert!(matches!(err, Error::Http { status: 404 }), "{err:?}");
    assert!(err.is_permanent());
    assert_good_flags(&flags);
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(flags.snapshot().cache_timestamp(), good_timestamp);
    assert!(matches!(
        flags.status().last_error(),
        Some(Error::Http { status: 404 })
    ));
    assert_eq!(requests(&server).await.len(), 1);

    // And a 200 again recovers.
    flip(&server, json_200(json!([{"a": false}]))).await;
    let snapshot = flags.refresh().await.expect("recovered");
    assert_eq!(snapshot.get_bool("a"), Some(false));
    assert!(matches!(flags.status(), Status::Fresh { .. }));
}

#[tokio::test]
async fn invalid_body_is_a_parse_error_and_keeps_the_last_good_flags() {
    let server = good_flags_server().await;
    let flags = builder(&server.uri()).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));

    for body in ["not json", "42", "[1, 2]", "[{\"a\": 1}, \"x\"]"] {
        flip(
            &server,
            ResponseTemplate::new(200).set_body_raw(body, "application/json"),
        )
        .await;
        let err = flags.refresh().await.expect_err(body);
        assert!(matches!(err, Error::Parse { .. }), "{body}: {err:?}");
        assert_good_flags(&flags);
        assert_eq!(flags.snapshot().source(), Source::Network);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. ETag
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn etag_is_sent_back_and_304_keeps_the_flags() {
    let server = MockServer::start().await;
    Mock::given(header("if-none-match", "\"abc\""))
        .respond_with(ResponseTemplate::new(304).insert_header("etag", "\"abc\""))
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(json_200(good_flags()).insert_header("etag", "\"abc\""))
        .with_priority(5)
        .expect(1)
        .mount(&server)
        .await;

    let flags = builder(&server.uri()).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_good_flags(&flags);
    let first = flags.snapshot();
    assert_eq!(first.etag(), Some("\"abc\""));

    let snapshot = flags.refresh().await.expect("304 is a success");
    assert_eq!(snapshot.source(), Source::Network);
    assert_eq!(snapshot.etag(), Some("\"abc\""));
    assert_eq!(snapshot.to_json(), first.to_json());
    assert!(snapshot.cache_timestamp() >= first.cache_timestamp());
    assert_good_flags(&flags);
    assert!(matches!(flags.status(), Status::Fresh { .. }));

    let seen = requests(&server).await;
    assert_eq!(seen.len(), 2);
    assert!(seen[0].headers.get("if-none-match").is_none());
    assert_eq!(
        seen[1]
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some("\"abc\"")
    );
    server.verify().await;
}

#[tokio::test]
async fn unexpected_304_without_an_etag_is_an_error() {
    let server = MockServer::start().await;
    serve(&server, ResponseTemplate::new(304)).await;
    let flags = builder(&server.uri()).default_flag("d", 1).build().unwrap();
    let status = settle(&flags).await;
    assert!(
        matches!(status.last_error(), Some(Error::Http { status: 304 })),
        "{status:?}"
    );
    let err = flags.refresh().await.expect_err("no etag was sent");
    assert!(matches!(err, Error::Http { status: 304 }), "{err:?}");
    assert_eq!(flags.snapshot().source(), Source::Defaults);
    assert_eq!(flags.get_i64("d"), Some(1));
    let seen = requests(&server).await;
    assert!(seen
        .iter()
        .all(|r| !r.headers.contains_key("if-none-match")));
}

// ---------------------------------------------------------------------------------------------
// 5. Body size cap
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn body_over_the_limit_with_content_length_is_too_large() {
    let server = good_flags_server().await;
    let flags = builder(&server.uri()).max_body_bytes(1024).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_good_flags(&flags);

    let big = json!([{"big": "x".repeat(10 * 1024)}]);
    flip(&server, json_200(big)).await;
    let err = flags.refresh().await.expect_err("10 KB is over 1 KB");
    assert!(matches!(err, Error::TooLarge { limit: 1024 }), "{err:?}");
    assert_good_flags(&flags);
    assert!(flags.get("big").is_none());
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert!(matches!(
        flags.status().last_error(),
        Some(Error::TooLarge { limit: 1024 })
    ));

    // Exactly at the limit is fine.
    let body = format!("{{\"k\":\"{}\"}}", "y".repeat(1024 - 8));
    assert_eq!(body.len(), 1024);
    flip(
        &server,
        ResponseTemplate::new(200).set_body_raw(body, "application/json"),
    )
    .await;
    let snapshot = flags.refresh().await.expect("a body of exactly the limit");
    assert_eq!(snapshot.get_str("k").as_deref().map(str::len), Some(1016));
}

/// A raw HTTP/1.1 server: the first connection gets small good flags with a Content-Length, every
/// later one a chunked body of `chunks` x 512 bytes (no Content-Length). With `hold_open`, the
/// body never ends: the server keeps the connection open until the client goes away.
async fn raw_server(chunks: usize, hold_open: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the request head.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buf[..read]),
                    }
                }
                if n == 0 {
                    let body = r#"[{"a": true}, {"n": 7}, {"s": "x"}]"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                    let _ = socket.shutdown().await;
                    return;
                }
                let mut reply = Vec::from(
                    &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                );
                for i in 0..chunks {
                    let fill = if i == 0 { b'[' } else { b' ' };
                    reply.extend_from_slice(b"200\r\n");
                    reply.push(fill);
                    reply.extend_from_slice(&[b' '; 511]);
                    reply.extend_from_slice(b"\r\n");
                }
                if !hold_open {
                    reply.extend_from_slice(b"0\r\n\r\n");
                }
                if socket.write_all(&reply).await.is_err() {
                    return;
                }
                let _ = socket.flush().await;
                if hold_open {
                    // Never finish the body; wait (bounded) for the client to hang up.
                    let _ = tokio::time::timeout(Duration::from_secs(60), async {
                        while let Ok(read) = socket.read(&mut buf).await {
                            if read == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                } else {
                    let _ = socket.shutdown().await;
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_too_large() {
    let (addr, count) = raw_server(8, false).await;
    let flags = builder(&format!("http://{addr}"))
        .max_body_bytes(1024)
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_good_flags(&flags);

    let err = flags
        .refresh()
        .await
        .expect_err("4 KB chunked is over 1 KB");
    assert!(matches!(err, Error::TooLarge { limit: 1024 }), "{err:?}");
    assert_good_flags(&flags);
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn chunked_body_is_cut_off_while_streaming() {
    // The body never ends: only a transport that checks the limit as chunks arrive can answer
    // before the (long) timeout.
    let (addr, count) = raw_server(4, true).await;
    let flags = builder(&format!("http://{addr}"))
        .max_body_bytes(1024)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));

    let started = Instant::now();
    let err = flags.refresh().await.expect_err("over the limit");
    assert!(matches!(err, Error::TooLarge { limit: 1024 }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}: the body was not checked while streaming",
        started.elapsed()
    );
    assert_good_flags(&flags);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. Connection refused, timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_refused_is_connect_and_serves_defaults() {
    let flags = builder(&closed_port_base())
        .default_flag("d", true)
        .default_flag("n", 3)
        .build()
        .unwrap();
    let status = settle(&flags).await;
    assert!(
        matches!(status.last_error(), Some(Error::Connect { .. })),
        "{status:?}"
    );
    assert!(!matches!(
        tokio::time::timeout(Duration::from_millis(100), flags.ready()).await,
        Ok(Ok(_))
    ));

    let err = flags.refresh().await.expect_err("nothing listens");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!err.is_permanent());
    let snapshot = flags.snapshot();
    assert_eq!(snapshot.source(), Source::Defaults);
    assert_eq!(snapshot.cache_timestamp(), None);
    assert_eq!(flags.get_bool("d"), Some(true));
    assert_eq!(flags.get_i64("n"), Some(3));
    assert_eq!(snapshot.len(), 2);
    assert_eq!(flags.status().as_str(), "stale");
}

#[tokio::test]
async fn slow_server_is_a_timeout() {
    let server = MockServer::start().await;
    serve(
        &server,
        json_200(good_flags()).set_delay(Duration::from_secs(5)),
    )
    .await;
    let timeout = Duration::from_millis(200);
    let flags = builder(&server.uri())
        .timeout(timeout)
        .default_flag("d", "fallback")
        .build()
        .unwrap();
    let status = settle(&flags).await;
    assert!(
        matches!(status.last_error(), Some(Error::Timeout { after }) if *after == timeout),
        "{status:?}"
    );

    let started = Instant::now();
    let err = flags.refresh().await.expect_err("the server is too slow");
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout { after } if after == timeout),
        "{err:?}"
    );
    assert!(err.is_timeout());
    assert!(took >= Duration::from_millis(150), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(flags.snapshot().source(), Source::Defaults);
    assert_eq!(flags.get_str("d").as_deref(), Some("fallback"));
    assert!(flags.get("a").is_none());
}

// ---------------------------------------------------------------------------------------------
// 7, 8. Persistence
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn corrupt_cache_file_is_kept_aside_and_replaced() {
    let server = good_flags_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    let corrupt = b"\xff\xfe{not json at all";
    std::fs::write(&file, corrupt).unwrap();

    let flags = builder(&server.uri())
        .store(FileStore::new(&file))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_good_flags(&flags);
    assert_eq!(requests(&server).await.len(), 1);

    let store = FileStore::new(&file);
    let record = wait_for_record(&store, |r| r.flags.contains_key("a")).await;
    assert_eq!(record.version, CacheRecord::VERSION);
    assert_eq!(
        Value::Object(record.flags),
        json!({"a": true, "n": 7, "s": "x"})
    );
    assert_eq!(
        Some(record.cache_timestamp),
        flags.snapshot().cache_timestamp()
    );
    assert_eq!(
        std::fs::read(dir.path().join("flags.json.corrupt")).unwrap(),
        corrupt,
        "the corrupt file is kept aside for a human"
    );
    flags.shutdown().await;
}

#[tokio::test]
async fn fresh_cache_is_served_after_a_restart_with_no_request() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(json_200(good_flags()).insert_header("etag", "\"v1\""))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache/flags.json");
    let make = || {
        builder(&server.uri())
            .client(Client::Mobile)
            .environment(Environment::Dev)
            .profile_id("someone")
            .store(FileStore::new(&file))
    };

    // Handle A fetches and saves.
    let a = make().build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, a.ready()).await,
        Ok(Ok(_))
    ));
    assert_eq!(a.snapshot().source(), Source::Network);
    let fetched_at = a.snapshot().cache_timestamp().unwrap();
    wait_for_record(&FileStore::new(&file), |r| r.cache_timestamp == fetched_at).await;
    a.shutdown().await;
    assert!(a.status().is_stopped());
    assert_eq!(requests(&server).await.len(), 1);

    // Handle B: the API now fails, and must not even be asked.
    server.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let b = make().build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, b.ready()).await,
        Ok(Ok(_))
    ));
    let snapshot = b.snapshot();
    assert_eq!(snapshot.source(), Source::Cache);
    assert_eq!(snapshot.cache_timestamp(), Some(fetched_at));
    assert_eq!(snapshot.etag(), Some("\"v1\""));
    assert_good_flags(&b);
    assert!(
        matches!(b.status(), Status::Fresh { .. }),
        "{:?}",
        b.status()
    );
    // Give a stray request every chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(requests(&server).await.is_empty());
    assert_eq!(b.snapshot().source(), Source::Cache);
    b.shutdown().await;
    server.verify().await;
}

#[tokio::test]
async fn cache_saved_for_other_parameters_is_not_used() {
    let server = good_flags_server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");

    let a = builder(&server.uri())
        .profile_id("one")
        .store(FileStore::new(&file))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, a.ready()).await,
        Ok(Ok(_))
    ));
    let fetched_at = a.snapshot().cache_timestamp().unwrap();
    wait_for_record(&FileStore::new(&file), |r| r.cache_timestamp == fetched_at).await;
    a.shutdown().await;

    for other in [
        builder(&server.uri()).profile_id("two"),
        builder(&server.uri())
            .profile_id("one")
            .environment(Environment::Dev),
    ] {
        flip(&server, ResponseTemplate::new(500)).await;
        let b = other
            .default_flag("d", 1)
            .store(FileStore::new(&file))
            .build()
            .unwrap();
        let status = settle(&b).await;
        assert!(
            matches!(status.last_error(), Some(Error::Http { status: 500 })),
            "{status:?}"
        );
        assert_eq!(b.snapshot().source(), Source::Defaults);
        assert!(b.get("a").is_none(), "another request's cache was served");
        assert_eq!(b.get_i64("d"), Some(1));
        assert_eq!(requests(&server).await.len(), 1);
        b.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 9. The profile id is never logged
// ---------------------------------------------------------------------------------------------

// current_thread: `set_default` is thread-local, and the poller must run on this thread.
#[tokio::test(flavor = "current_thread")]
async fn profile_id_is_never_logged_nor_in_errors_nor_in_the_cache_file() {
    const SECRET: &str = "secret-profile-42";
    // The metrics id is never even sent.
    const METRICS: &str = "secret-metrics-7";
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = good_flags_server().await;
    // Other tests in this binary run flagpole at the same time with no subscriber. With a single
    // `Dispatch` in the process, tracing-core computes a callsite's interest from the default of
    // whichever thread hits it first, so a callsite first hit by another test would stay off
    // here. A second, live `Dispatch` makes it consult every registered one instead.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    let mut texts: Vec<String> = Vec::new();

    // Success.
    let flags = builder(&server.uri())
        .profile_id(SECRET)
        .metrics_id(METRICS)
        .store(FileStore::new(&file))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    let snapshot = flags.refresh().await.expect("success");
    texts.push(format!("{snapshot:?}"));
    texts.push(format!("{flags:?}"));
    let fetched_at = snapshot.cache_timestamp().unwrap();
    wait_for_record(&FileStore::new(&file), |r| r.cache_timestamp == fetched_at).await;
    // The secret did go on the wire, as `user=`.
    let seen = requests(&server).await;
    assert!(seen
        .iter()
        .all(|r| r.url.query_pairs().any(|(k, v)| k == "user" && v == SECRET)));
    assert!(seen.iter().all(|r| !r.url.as_str().contains(METRICS)));

    // HTTP failure.
    flip(&server, ResponseTemplate::new(500)).await;
    let err = flags.refresh().await.expect_err("500");
    assert!(matches!(err, Error::Http { status: 500 }));
    texts.push(err.to_string());
    texts.push(format!("{err:?}"));
    let status = flags.status();
    let last = status.last_error().expect("stale").to_string();
    texts.push(last);
    texts.push(format!("{status:?}"));
    flags.shutdown().await;

    // Connection refused.
    let refused = builder(&closed_port_base())
        .profile_id(SECRET)
        .metrics_id(METRICS)
        .build()
        .unwrap();
    let status = settle(&refused).await;
    assert!(matches!(status.last_error(), Some(Error::Connect { .. })));
    let err = refused.refresh().await.expect_err("refused");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    texts.push(err.to_string());
    texts.push(format!("{err:?}"));
    texts.push(format!("{err:#?}"));
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        texts.push(inner.to_string());
        texts.push(format!("{inner:?}"));
        source = inner.source();
    }
    let status = refused.status();
    texts.push(status.last_error().expect("stale").to_string());
    texts.push(format!("{status:?}"));
    refused.shutdown().await;

    let captured = logs.text();
    assert!(!captured.is_empty(), "nothing was logged");
    // The events of all three paths reached the subscriber.
    assert!(captured.contains("fetched flags"), "{captured}");
    assert!(captured.contains("HTTP 500"), "{captured}");
    assert!(captured.contains("could not reach"), "{captured}");
    for id in [SECRET, METRICS] {
        assert!(!captured.contains(id), "an id was logged:\n{captured}");
        for text in &texts {
            assert!(!text.contains(id), "an id leaked into: {text}");
        }
    }

    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("\"a\":true"), "{saved}");
    assert!(
        !saved.contains(SECRET) && !saved.contains(METRICS),
        "the cache file holds an id: {saved}"
    );
}

#[tokio::test]
async fn user_agent_is_flagpole_and_no_conditional_header_without_an_etag() {
    // If-None-Match is sent only once an etag is known; the user agent names the crate.
    let server = MockServer::start().await;
    Mock::given(header_exists("if-none-match"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    serve(&server, json_200(good_flags())).await;
    let flags = builder(&server.uri()).build().unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, flags.ready()).await,
        Ok(Ok(_))
    ));
    flags
        .refresh()
        .await
        .expect("no etag, no conditional request");
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 2);
    for request in &seen {
        let ua = request
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(ua.starts_with("flagpole/"), "{ua}");
    }
    server.verify().await;
}

/// Regression: a lying `Content-Length` made the transport reserve that much memory up front
/// (an abort with an unlimited body size). Now it is only a hint.
#[tokio::test]
async fn huge_declared_length_is_not_preallocated() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9000000000000000000\r\n\r\n[{\"a\"")
                .await;
            // Closing early: the body is cut short of its declared length.
        }
    });
    let flags = builder(&format!("http://{addr}"))
        .max_body_bytes(usize::MAX)
        .build()
        .unwrap();
    let err = flags.refresh().await.expect_err("the body ends early");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(flags.snapshot().source(), Source::Defaults);
}
