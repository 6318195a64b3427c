//! The relay on the wire: reqwest against a relay in this process, wiremock upstream.

mod relay_support;

use flagpole::relay::Relay;
use flagpole::Flags;
use relay_support::{bind, get_ready, Upstream};
use serde_json::{json, Value};

#[tokio::test]
async fn serves_the_upstream_body_with_etag_and_304() {
    let body = json!([{"a": true}, {"b": {"x": [1, 2]}}]);
    let (_upstream, up) = Upstream::start(body.clone()).await;
    // The default interval: a day of freshness in `max-age`.
    let relay = bind(Relay::builder(Flags::builder().base_url(up.uri()))).await;
    let base = format!("http://{}", relay.local_addr());
    let client = reqwest::Client::new();
    let url =
        format!("{base}/v1/flags?client=extension&distribution=main&environment=prod&user=someone");
    let first = get_ready(&client, &url).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(first.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("max-age="));
    assert_eq!(first.headers()["x-flagpole-source"], "network");
    let got: Value = serde_json::from_slice(&first.bytes().await.unwrap()).unwrap();
    assert_eq!(got, body);
    let again = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    // The user id is never forwarded upstream.
    for request in up.received_requests().await.unwrap() {
        assert!(
            !request.url.query().unwrap_or("").contains("user"),
            "{}",
            request.url
        );
    }
    let bad = client
        .get(format!("{base}/v1/flags?client=desktop"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = serde_json::from_slice(&bad.bytes().await.unwrap()).unwrap();
    assert_eq!(error["accepted"], json!(["extension", "mobile"]));
    relay.shutdown().await;
}
