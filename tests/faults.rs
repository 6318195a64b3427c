//! The fault matrix: every failure the network can produce, and what flagpole does about it.
//!
//! Each case of the tables below starts a handle that fetched good flags, answers its next
//! request with the fault, and asserts that:
//! - the caller of `refresh` and the status get the right typed [`Error`] variant;
//! - the last good flags are still served (the very same snapshot; no subscriber woken; the
//!   persisted record untouched);
//! - the next retry is planned on the regular schedule, since the handle serves good flags (the
//!   fleet policy of FLEET.md), and the retry is sent at that time; the same fault on a handle
//!   that serves only defaults is retried within the fast backoff bounds (first step, the cap,
//!   or the server's `Retry-After`);
//! - the poller recovers on its own when the server heals.
//!
//! The tables run on tokio's paused clock with `ScriptedTransport` (no sockets), so every instant
//! is exact. Faults that only exist on the wire (a reset mid-body, a body trickling past the
//! timeout, a refused port, a redirect loop, content types) run in real time against a raw
//! `TcpListener` or wiremock on 127.0.0.1, with timeouts of a few hundred milliseconds.
//!
//! RELIABILITY.md maps every fault to the test that proves it.

mod support;

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flagpole::{Error, Flags, FlagsBuilder, MemoryStore, ScriptedResponse, ScriptedTransport};
use flagpole::{Source, Status};
use serde_json::{json, Value};
use tokio::time::Instant;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use support::{requests, wait_status, within, Captured, RawServer, Recorder, Reply};

const HOUR: Duration = Duration::from_secs(3600);
const INITIAL: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(5);
const LIMIT: usize = 1024;
/// The default schedule jitter: a handle serving good flags retries in the last tenth of the
/// interval.
const JITTER: f64 = 0.1;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn good() -> Value {
    json!([{"a": true}, {"n": 1}, {"s": "good"}])
}

fn healed() -> Value {
    json!([{"a": false}, {"n": 2}, {"s": "healed"}])
}

/// The error a fault must produce.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Http(u16),
    Timeout,
    Connect,
    TooLarge,
    Parse,
}

impl Expect {
    fn matches(self, error: &Error) -> bool {
        match (self, error) {
            (Expect::Http(s), Error::Http { status }) => *status == s,
            (Expect::Timeout, Error::Timeout { after }) => *after == TIMEOUT,
            (Expect::Connect, Error::Connect { .. }) => true,
            (Expect::TooLarge, Error::TooLarge { limit }) => *limit == LIMIT,
            (Expect::Parse, Error::Parse { .. }) => true,
            _ => false,
        }
    }
}

/// When the next attempt must come, from the instant the failure was reported, on a handle that
/// serves only defaults. A handle that serves good flags retries on the regular schedule instead
/// (or at the end of a `Retry-After` beyond it).
#[derive(Debug, Clone, Copy)]
enum Retry {
    /// The first backoff step: within [initial / 2, initial].
    Backoff,
    /// Straight to the cap (a rejected request): within [cap / 2, cap].
    Cap,
    /// The server's `Retry-After`: within these bounds.
    After(Duration, Duration),
}

impl Retry {
    fn bounds(self) -> (Duration, Duration) {
        match self {
            Retry::Backoff => (INITIAL / 2, INITIAL),
            Retry::Cap => (CAP / 2, CAP),
            Retry::After(lo, hi) => (lo, hi),
        }
    }
}

struct Case {
    fault: &'static str,
    answer: ScriptedResponse,
    expect: Expect,
    retry: Retry,
}

fn case(fault: &'static str, answer: ScriptedResponse, expect: Expect, retry: Retry) -> Case {
    Case {
        fault,
        answer,
        expect,
        retry,
    }
}

/// An answer with this HTTP status and no body.
fn http(code: u16) -> ScriptedResponse {
    ScriptedResponse::status(code)
}

fn body(bytes: impl Into<Vec<u8>>) -> ScriptedResponse {
    ScriptedResponse::body(200, bytes)
}

fn io_error(kind: io::ErrorKind) -> Error {
    Error::Connect {
        source: Arc::new(io::Error::from(kind)),
    }
}

fn builder() -> FlagsBuilder {
    Flags::builder()
        .fetch_interval(HOUR)
        .backoff_initial(INITIAL)
        .backoff_max(CAP)
        .timeout(TIMEOUT)
        .max_body_bytes(LIMIT)
        .default_flag("d", "default")
}

/// Runs one case end to end; panics naming the fault on any broken promise.
async fn run(case: Case) {
    let fault = case.fault;
    let transport = ScriptedTransport::new();
    transport.push(ScriptedResponse::json(&good()));
    // The fault answers the refresh, and would answer every retry until the server heals.
    transport.push(case.answer);
    let recorder = Recorder::new(&transport);
    let store = MemoryStore::new();
    let flags = builder()
        .transport(recorder.clone())
        .store(store.clone())
        .build()
        .unwrap();
    wait_status(&flags, "the first fetch", HOUR, Status::is_fresh).await;
    let good_snapshot = flags.snapshot();
    assert_eq!(good_snapshot.source(), Source::Network, "{fault}");
    let saved = store.get().expect("the good flags were saved");
    let mut changes = flags.subscribe();
    changes.borrow_and_update();

    // The fault.
    let err = flags.refresh().await.expect_err(fault);
    let failed_at = Instant::now();
    assert!(case.expect.matches(&err), "{fault}: got {err:?}");
    let Status::Stale {
        since,
        last_error,
        next_retry,
        ..
    } = flags.status()
    else {
        panic!("{fault}: expected stale, got {:?}", flags.status());
    };
    assert!(case.expect.matches(&last_error), "{fault}: {last_error:?}");
    assert_eq!(since, failed_at.into_std(), "{fault}: stale since");
    let wait = next_retry.expect("a retry is planned") - failed_at.into_std();
    // Changed deliberately with the fleet policy (FLEET.md): good flags are served, so the retry
    // comes on the regular schedule, whatever the fault; `run_with_defaults` checks the backoff.
    let (lo, hi) = (HOUR.mul_f64(1.0 - JITTER), HOUR);
    assert!(
        wait >= lo && wait <= hi,
        "{fault}: next retry in {wait:?}, expected within [{lo:?}, {hi:?}]"
    );

    // Nothing lost: the same snapshot, nobody woken, the saved record untouched.
    assert!(
        Arc::ptr_eq(&good_snapshot, &flags.snapshot()),
        "{fault}: the good snapshot was replaced by {:?}",
        flags.snapshot()
    );
    assert_eq!(flags.get_str("s").as_deref(), Some("good"), "{fault}");
    assert_eq!(flags.get_str("d").as_deref(), Some("default"), "{fault}");
    assert!(
        !changes.has_changed().unwrap(),
        "{fault}: subscribers woken"
    );
    assert_eq!(
        store.get().as_ref(),
        Some(&saved),
        "{fault}: record changed"
    );

    // The server heals: the planned retry fetches, and everything is current again.
    transport.set(ScriptedResponse::json(&healed()));
    wait_status(&flags, "recovery", 2 * HOUR, Status::is_fresh).await;
    let times = recorder.times();
    assert_eq!(
        times.len(),
        3,
        "{fault}: the start fetch, the refresh, one retry"
    );
    let retried = times[2] - failed_at;
    // Timers have millisecond resolution: the retry fires at the planned instant, rounded up.
    assert!(
        retried >= wait && retried <= wait + ms(2),
        "{fault}: retried after {retried:?}, planned {wait:?}"
    );
    assert_eq!(flags.get_str("s").as_deref(), Some("healed"), "{fault}");
    assert_eq!(flags.snapshot().source(), Source::Network, "{fault}");
    assert!(
        changes.has_changed().unwrap(),
        "{fault}: recovery not announced"
    );
    let record = store.get().unwrap();
    assert_eq!(record.flags.get("s"), Some(&json!("healed")), "{fault}");
    flags.shutdown().await;
}

/// The same fault on a handle that has only defaults: the typed error, and the next retry within
/// the fast backoff bounds of the case.
async fn run_with_defaults(fault: &str, answer: ScriptedResponse, expect: Expect, retry: Retry) {
    let transport = ScriptedTransport::new();
    transport.push(answer);
    let flags = builder().transport(transport).build().unwrap();
    let status = wait_status(&flags, "the first failure", HOUR, Status::is_stale).await;
    let failed_at = Instant::now();
    let Status::Stale {
        last_error,
        next_retry,
        ..
    } = status
    else {
        unreachable!()
    };
    assert!(
        expect.matches(&last_error),
        "{fault} (defaults): {last_error:?}"
    );
    let wait = next_retry.expect("a retry is planned") - failed_at.into_std();
    let (lo, hi) = retry.bounds();
    assert!(
        wait >= lo && wait <= hi,
        "{fault} (defaults): next retry in {wait:?}, expected within [{lo:?}, {hi:?}]"
    );
    assert_eq!(flags.get_str("d").as_deref(), Some("default"), "{fault}");
    flags.shutdown().await;
}

async fn run_all(cases: Vec<Case>) -> usize {
    let n = cases.len();
    for case in cases {
        let (fault, answer, expect, retry) =
            (case.fault, case.answer.clone(), case.expect, case.retry);
        run(case).await;
        run_with_defaults(fault, answer, expect, retry).await;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// The matrix (paused clock, ScriptedTransport)
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn http_status_faults() {
    // SystemTime does not follow the paused clock: a date 45 s ahead of it is 45 s of waiting,
    // a little less once truncated to whole seconds.
    let in_45s = httpdate::fmt_http_date(SystemTime::now() + secs(45));
    let past = httpdate::fmt_http_date(SystemTime::now() - secs(45));
    let cases = vec![
        case("500", http(500), Expect::Http(500), Retry::Backoff),
        case("502", http(502), Expect::Http(502), Retry::Backoff),
        case(
            "503 without Retry-After",
            http(503),
            Expect::Http(503),
            Retry::Backoff,
        ),
        case(
            "503 with Retry-After in seconds",
            http(503).header("retry-after", "30"),
            Expect::Http(503),
            Retry::After(secs(30), secs(30)),
        ),
        case(
            "503 with Retry-After as an HTTP date",
            http(503).header("retry-after", &in_45s),
            Expect::Http(503),
            Retry::After(secs(43), secs(45)),
        ),
        case(
            "503 with Retry-After as a past HTTP date: plain backoff",
            http(503).header("retry-after", &past),
            Expect::Http(503),
            Retry::Backoff,
        ),
        case(
            "503 with an unreadable Retry-After: plain backoff",
            http(503).header("retry-after", "soon"),
            Expect::Http(503),
            Retry::Backoff,
        ),
        case(
            "503 with Retry-After beyond the fetch interval: capped at the interval",
            http(503).header("retry-after", "604800"),
            Expect::Http(503),
            Retry::After(HOUR, HOUR),
        ),
        case(
            "429 with Retry-After",
            http(429).header("retry-after", "20"),
            Expect::Http(429),
            Retry::After(secs(20), secs(20)),
        ),
        case(
            "429 without Retry-After",
            http(429),
            Expect::Http(429),
            Retry::Backoff,
        ),
        case(
            "500 with Retry-After: ignored (only 429 and 503 carry one)",
            http(500).header("retry-after", "600"),
            Expect::Http(500),
            Retry::Backoff,
        ),
        case("408", http(408), Expect::Http(408), Retry::Backoff),
        case("400", http(400), Expect::Http(400), Retry::Cap),
        case("401", http(401), Expect::Http(401), Retry::Cap),
        case("403", http(403), Expect::Http(403), Retry::Cap),
        case("404", http(404), Expect::Http(404), Retry::Cap),
        case(
            "302 not followed by the transport",
            http(302).header("location", "/elsewhere"),
            Expect::Http(302),
            Retry::Backoff,
        ),
        case(
            "304 with no known etag",
            http(304),
            Expect::Http(304),
            Retry::Backoff,
        ),
    ];
    assert_eq!(run_all(cases).await, 18);
}

#[tokio::test(start_paused = true)]
async fn transport_faults() {
    let cases = vec![
        case(
            "request timeout: no answer at all",
            ScriptedResponse::hang(),
            Expect::Timeout,
            Retry::Backoff,
        ),
        case(
            "a body that arrives slowly past the timeout",
            ScriptedResponse::json(&healed()).delay(TIMEOUT * 2),
            Expect::Timeout,
            Retry::Backoff,
        ),
        case(
            "connection refused",
            ScriptedResponse::error(io_error(io::ErrorKind::ConnectionRefused)),
            Expect::Connect,
            Retry::Backoff,
        ),
        case(
            "connection reset mid-body",
            ScriptedResponse::error(io_error(io::ErrorKind::ConnectionReset)),
            Expect::Connect,
            Retry::Backoff,
        ),
        case(
            "a transport's own timeout",
            ScriptedResponse::error(Error::Timeout { after: ms(1) }),
            Expect::Timeout,
            Retry::Backoff,
        ),
        case(
            "body over the size cap",
            body(format!("{{\"pad\": \"{}\"}}", "x".repeat(LIMIT))),
            Expect::TooLarge,
            Retry::Backoff,
        ),
    ];
    assert_eq!(run_all(cases).await, 6);
}

#[tokio::test(start_paused = true)]
async fn body_faults() {
    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let cases = vec![
        case(
            "truncated JSON",
            body(r#"[{"a": true}, {"n": 1}, {"s": "goo"#),
            Expect::Parse,
            Retry::Backoff,
        ),
        case("empty 200 body", body(""), Expect::Parse, Retry::Backoff),
        case("JSON number", body("42"), Expect::Parse, Retry::Backoff),
        case(
            "JSON string",
            body("\"flags\""),
            Expect::Parse,
            Retry::Backoff,
        ),
        case("JSON null", body("null"), Expect::Parse, Retry::Backoff),
        case("JSON boolean", body("true"), Expect::Parse, Retry::Backoff),
        case(
            "array of non-objects",
            body("[1, 2, 3]"),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "array of objects with one string among them",
            body(r#"[{"a": false}, "b", {"c": 1}]"#),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "array of arrays of objects",
            body(r#"[[{"a": false}]]"#),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "invalid UTF-8 inside a string",
            body(&b"[{\"s\": \"\xff\xfe\"}]"[..]),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "UTF-8 byte order mark before the JSON",
            body(&b"\xef\xbb\xbf[{\"s\": \"bom\"}]"[..]),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "an HTML page labelled text/html",
            body("<html><body>Service Unavailable</body></html>")
                .header("content-type", "text/html"),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "trailing garbage after the JSON",
            body(r#"[{"s": "x"}] <!-- -->"#),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "nesting 500 deep (past serde_json's recursion limit of 128)",
            body(deep),
            Expect::Parse,
            Retry::Backoff,
        ),
        case(
            "a number out of the f64 range",
            body(r#"[{"n": 1e400}]"#),
            Expect::Parse,
            Retry::Backoff,
        ),
    ];
    assert_eq!(run_all(cases).await, 15);
}

/// Bodies of an unusual shape that are accepted on purpose (RELIABILITY.md: "wrong-shape JSON").
#[tokio::test(start_paused = true)]
async fn accepted_shapes_replace_the_flags() {
    let table: [(&str, ScriptedResponse, Value); 4] = [
        (
            "array of multi-key objects: spread in order, a later key wins",
            body(r#"[{"a": 1, "b": 2}, {"b": 3, "c": 4}, {}]"#),
            json!({"a": 1, "b": 3, "c": 4, "d": "default"}),
        ),
        (
            "a plain object",
            body(r#"{"a": "x"}"#),
            json!({"a": "x", "d": "default"}),
        ),
        (
            "JSON labelled text/plain: the body decides, not the content type",
            body(r#"[{"a": "plain"}]"#).header("content-type", "text/plain"),
            json!({"a": "plain", "d": "default"}),
        ),
        (
            "an empty array: a valid, empty flag set",
            body("[]"),
            json!({"d": "default"}),
        ),
    ];
    for (shape, answer, expected) in table {
        let transport = ScriptedTransport::new();
        transport.push(ScriptedResponse::json(&good())).push(answer);
        let flags = builder().transport(transport).build().unwrap();
        wait_status(&flags, "the first fetch", HOUR, Status::is_fresh).await;
        let snapshot = flags.refresh().await.expect(shape);
        assert_eq!(Value::Object(snapshot.to_json()), expected, "{shape}");
        assert_eq!(snapshot.source(), Source::Network, "{shape}");
        assert!(flags.status().is_fresh(), "{shape}");
        flags.shutdown().await;
    }
}

/// 400, 401, 403 and 404 are not worth hammering: every retry waits at the cap, and the streak
/// is logged once at error level (again after a success ends it); 5xx only warn.
#[tokio::test(start_paused = true)]
async fn rejections_retry_at_the_cap_and_log_once_at_error_level() {
    let logs = Captured::default();
    let _guard = logs.install();
    // Changed deliberately with the fleet policy (FLEET.md): the handle starts without flags, as
    // the cap applies to a handle that serves only defaults (one serving good flags retries on
    // the regular schedule).
    let transport = ScriptedTransport::new();
    transport.push(http(404));
    let recorder = Recorder::new(&transport);
    let flags = builder().transport(recorder.clone()).build().unwrap();
    let mut status = flags.status_receiver();
    let first = wait_status(&flags, "the first failure", HOUR, Status::is_stale).await;
    assert!(first.last_error().is_some_and(Error::is_permanent));
    status.borrow_and_update();
    for rejected in [403, 401, 400] {
        // The next retry answers with another 4xx; every failure publishes a new status.
        transport.set(http(rejected));
        within("a retry", 2 * CAP, status.changed()).await.unwrap();
        let now = status.borrow_and_update().clone();
        assert_eq!(now.last_error().and_then(Error::status), Some(rejected));
    }
    let times = recorder.times();
    assert_eq!(times.len(), 4);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= CAP / 2 && gap <= CAP + ms(2),
            "retried after {gap:?}"
        );
    }
    assert_eq!(flags.get_str("d").as_deref(), Some("default"));
    assert_eq!(
        logs.count("ERROR", "flag fetch rejected"),
        1,
        "{}",
        logs.text()
    );

    // A success ends the streak; the next rejection is logged again, a 5xx never at error level.
    transport.set(ScriptedResponse::json(&healed()));
    flags.refresh().await.expect("healed");
    transport.set(http(401));
    flags.refresh().await.expect_err("401");
    assert_eq!(
        logs.count("ERROR", "flag fetch rejected"),
        2,
        "{}",
        logs.text()
    );
    transport.set(http(500));
    flags.refresh().await.expect_err("500");
    assert_eq!(logs.count("ERROR", ""), 2, "{}", logs.text());
    assert_eq!(
        logs.count("WARN", "flag fetch failed"),
        1,
        "{}",
        logs.text()
    );
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Wire-level faults (real time, 127.0.0.1)
// ---------------------------------------------------------------------------------------------

const WIRE_WAIT: Duration = Duration::from_secs(10);

fn good_text() -> String {
    good().to_string()
}

/// A handle on `base` that fetches at start and otherwise only on `refresh`.
async fn wire_flags(base: &str, timeout: Duration) -> Flags {
    let flags = Flags::builder()
        .base_url(base)
        .fetch_interval(HOUR)
        .backoff_initial(HOUR)
        .backoff_max(HOUR)
        .timeout(timeout)
        .build()
        .unwrap();
    assert!(
        matches!(
            tokio::time::timeout(WIRE_WAIT, flags.ready()).await,
            Ok(Ok(_))
        ),
        "the first fetch"
    );
    assert_eq!(flags.get_str("s").as_deref(), Some("good"));
    flags
}

/// The last good flags are served and the status carries `expect`.
fn assert_kept(flags: &Flags, fetched_at: Option<u64>, expect: Expect) {
    assert_eq!(flags.get_str("s").as_deref(), Some("good"));
    assert_eq!(flags.snapshot().source(), Source::Network);
    assert_eq!(flags.snapshot().cache_timestamp(), fetched_at);
    let status = flags.status();
    assert!(
        status.last_error().is_some_and(|e| expect.matches_wire(e)),
        "{status:?}"
    );
}

impl Expect {
    /// As [`Expect::matches`], without the scripted timeout's value.
    fn matches_wire(self, error: &Error) -> bool {
        match (self, error) {
            (Expect::Timeout, Error::Timeout { .. }) => true,
            _ => self.matches(error),
        }
    }
}

async fn assert_heals(flags: &Flags) {
    let snapshot = flags.refresh().await.expect("the server healed");
    assert_eq!(snapshot.get_str("s").as_deref(), Some("healed"));
    assert!(flags.status().is_fresh());
}

#[tokio::test]
async fn wire_body_arriving_slowly_past_the_timeout_is_a_timeout() {
    let server = RawServer::start(Reply::Json(good_text())).await;
    let timeout = ms(300);
    let flags = wire_flags(&server.base(), timeout).await;
    let fetched_at = flags.snapshot().cache_timestamp();

    // Headers at once, then one byte every 50 ms: the body is moving, but too slowly.
    server.set(Reply::Trickle { every: ms(50) });
    let started = std::time::Instant::now();
    let err = flags.refresh().await.expect_err("too slow");
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout { after } if after == timeout),
        "{err:?}"
    );
    assert!(took >= ms(250) && took < secs(3), "took {took:?}");
    assert_kept(&flags, fetched_at, Expect::Timeout);

    server.set(Reply::Json(healed().to_string()));
    assert_heals(&flags).await;
}

#[tokio::test]
async fn wire_connection_reset_mid_body_is_connect() {
    let server = RawServer::start(Reply::Json(good_text())).await;
    let flags = wire_flags(&server.base(), secs(5)).await;
    let fetched_at = flags.snapshot().cache_timestamp();

    server.set(Reply::ResetMidBody);
    let err = flags.refresh().await.expect_err("reset");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!err.is_permanent());
    assert_kept(&flags, fetched_at, Expect::Connect);

    server.set(Reply::Json(healed().to_string()));
    assert_heals(&flags).await;
}

#[tokio::test]
async fn wire_connection_refused_keeps_flags_and_recovers_when_the_port_listens_again() {
    let mut server = RawServer::start(Reply::Json(good_text())).await;
    let flags = wire_flags(&server.base(), secs(5)).await;
    let fetched_at = flags.snapshot().cache_timestamp();

    server.stop_listening().await;
    let err = flags.refresh().await.expect_err("refused");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("onnect"), "{err}");
    assert_kept(&flags, fetched_at, Expect::Connect);

    server.set(Reply::Json(healed().to_string()));
    server.listen_again().await;
    assert_heals(&flags).await;
}

#[tokio::test]
async fn wire_redirect_loop_is_connect_and_bounded() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(good()))
        .mount(&server)
        .await;
    let flags = wire_flags(&format!("{}/v1", server.uri()), secs(5)).await;
    let fetched_at = flags.snapshot().cache_timestamp();

    server.reset().await;
    let location = format!("{}/v1/flags?loop", server.uri());
    Mock::given(any())
        .respond_with(ResponseTemplate::new(302).insert_header("location", location.as_str()))
        .mount(&server)
        .await;
    let err = flags.refresh().await.expect_err("a redirect loop");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("redirect"), "{err}");
    assert_kept(&flags, fetched_at, Expect::Connect);
    let followed = requests(&server).await.len();
    assert!(
        (2..=11).contains(&followed),
        "{followed} requests: reqwest follows at most 10 redirects"
    );

    server.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(healed()))
        .mount(&server)
        .await;
    assert_heals(&flags).await;
}

#[tokio::test]
async fn wire_bodies_the_content_type_does_not_rescue() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(good()))
        .mount(&server)
        .await;
    let flags = wire_flags(&format!("{}/v1", server.uri()), secs(5)).await;
    let fetched_at = flags.snapshot().cache_timestamp();

    let bad: [(&str, &[u8], &str); 4] = [
        (
            "an HTML error page",
            b"<html>502 Bad Gateway</html>",
            "text/html",
        ),
        (
            "truncated JSON",
            br#"[{"a": true}, {"s": "x"#,
            "application/json",
        ),
        (
            "invalid UTF-8",
            b"[{\"s\": \"\xc3\x28\"}]",
            "application/json",
        ),
        ("a JSON string", b"\"flags\"", "application/json"),
    ];
    for (what, bytes, mime) in bad {
        server.reset().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200).set_body_raw(bytes.to_vec(), mime))
            .mount(&server)
            .await;
        let err = flags.refresh().await.expect_err(what);
        assert!(matches!(err, Error::Parse { .. }), "{what}: {err:?}");
        assert_kept(&flags, fetched_at, Expect::Parse);
    }

    // JSON flags labelled text/plain are still the flag set.
    server.reset().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_raw(healed().to_string(), "text/plain"))
        .mount(&server)
        .await;
    assert_heals(&flags).await;
}
