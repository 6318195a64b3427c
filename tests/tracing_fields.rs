//! The tracing contract documented in the README: the `flagpole.fetch` span and its fields, the
//! backoff event's fields, and no profile id anywhere in the logs, at TRACE level.

mod support;

use std::time::Duration;

use flagpole::{Error, Flags};
use serde_json::json;
use support::{closed_port_base, requests, LogBuffer};
use tracing_subscriber::fmt::format::FmtSpan;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "secret-profile-7731";

async fn serve(server: &MockServer, response: ResponseTemplate) {
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(response)
        .mount(server)
        .await;
}

/// The lines of `logs` that close a `flagpole.fetch` span.
fn closed_fetch_spans(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains("flagpole.fetch") && l.contains("close"))
        .collect()
}

// current_thread: `set_default` is thread-local, and the poller must run on this thread.
#[tokio::test(flavor = "current_thread")]
async fn fetch_span_and_backoff_fields_are_stable_and_the_profile_id_never_appears() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = MockServer::start().await;
    serve(
        &server,
        ResponseTemplate::new(200).set_body_json(json!([{"a": true}, {"b": 2}])),
    )
    .await;
    let flags = Flags::builder()
        .base_url(format!("{}/v1", server.uri()))
        .profile_id(SECRET)
        .header("x-api-key", "api-key-value-99")
        .backoff_initial(Duration::from_secs(60))
        .backoff_max(Duration::from_secs(60))
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), flags.ready()).await,
        Ok(Ok(_))
    ));
    flags.refresh().await.unwrap();
    let seen = requests(&server).await;
    assert!(
        seen[0].url.query().unwrap().contains(SECRET),
        "sent as user="
    );

    // A success: status, bytes, flags, source, duration.
    let text = logs.text();
    let spans = closed_fetch_spans(&text);
    assert!(!spans.is_empty(), "{text}");
    let ok = spans[0];
    for field in [
        "status=200",
        "bytes=",
        "flags=2",
        "source=\"network\"",
        "duration_ms=",
    ] {
        assert!(ok.contains(field), "missing {field} in {ok}");
    }
    assert!(!ok.contains("error="), "{ok}");

    // An HTTP failure: status and error; the flags served are still the network's.
    serve(&server, ResponseTemplate::new(500)).await;
    assert!(matches!(
        flags.refresh().await,
        Err(Error::Http { status: 500 })
    ));
    let text = logs.text();
    let failed = *closed_fetch_spans(&text).last().unwrap();
    for field in ["status=500", "source=\"network\"", "error=", "duration_ms="] {
        assert!(failed.contains(field), "missing {field} in {failed}");
    }
    assert!(!failed.contains("flags="), "{failed}");
    let backoff = text
        .lines()
        .find(|l| l.contains("next flag fetch scheduled"))
        .expect("a backoff event");
    assert!(backoff.contains("attempt=1"), "{backoff}");
    assert!(backoff.contains("delay_ms="), "{backoff}");
    flags.shutdown().await;

    // A connection failure: no status at all, defaults (nothing) served.
    let refused = Flags::builder()
        .base_url(closed_port_base())
        .profile_id(SECRET)
        .enabled(true)
        .build()
        .unwrap();
    assert!(refused.refresh().await.is_err());
    refused.shutdown().await;
    let text = logs.text();
    let failed = *closed_fetch_spans(&text).last().unwrap();
    assert!(failed.contains("source=\"defaults\""), "{failed}");
    assert!(!failed.contains("status="), "{failed}");

    assert!(text.contains("TRACE") || text.contains("DEBUG"), "{text}");
    assert!(!text.contains(SECRET), "the profile id was logged:\n{text}");
    assert!(
        !text.contains("api-key-value-99"),
        "a header value was logged"
    );
}
