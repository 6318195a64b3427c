//! Production knobs on the wire: the `User-Agent`, caller headers and the header hook, with
//! flagpole's own client and with a caller's `reqwest::Client`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flagpole::{Flags, USER_AGENT};
use http::{HeaderMap, HeaderValue};
use support::{closed_port_base, requests};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"a": 1})))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn user_agent_headers_and_hook_reach_the_server() {
    let server = server().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let flags = Flags::builder()
        .base_url(format!("{}/v1", server.uri()))
        .user_agent("myapp/2.3")
        .header("x-api-key", "k-123")
        .header_hook(move |headers: &mut HeaderMap| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            headers.insert("x-request-number", HeaderValue::from(n));
        })
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), flags.ready()).await,
        Ok(Ok(_))
    ));
    flags.refresh().await.unwrap();
    let seen = requests(&server).await;
    assert_eq!(seen.len(), 2);
    for (i, request) in seen.iter().enumerate() {
        assert_eq!(
            request.headers["user-agent"],
            format!("myapp/2.3 {USER_AGENT}").as_str()
        );
        assert!(USER_AGENT.starts_with("flagpole/0."), "{USER_AGENT}");
        assert_eq!(request.headers["x-api-key"], "k-123");
        assert_eq!(
            request.headers["x-request-number"],
            (i + 1).to_string().as_str()
        );
        assert_eq!(request.headers["accept"], "application/json");
    }
    flags.shutdown().await;
}

#[tokio::test]
async fn a_callers_client_gets_the_same_headers() {
    let server = server().await;
    let client = reqwest::Client::builder()
        .user_agent("overridden/1")
        .build()
        .unwrap();
    let flags = Flags::builder()
        .base_url(format!("{}/v1", server.uri()))
        .http_client(client)
        .header("x-api-key", "k-9")
        .build()
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), flags.ready()).await,
        Ok(Ok(_))
    ));
    let seen = requests(&server).await;
    assert_eq!(seen[0].headers["user-agent"], USER_AGENT);
    assert_eq!(seen[0].headers["x-api-key"], "k-9");
    flags.shutdown().await;
}

#[tokio::test]
async fn bad_header_is_a_config_error_naming_the_header_only() {
    let err = Flags::builder()
        .base_url(closed_port_base())
        .header("authorization", "Bearer\nsecret")
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("authorization"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}
