//! Shared mode against a real `redis-server` and a wiremock API, in real time.

mod support;

use std::time::Duration;

use flagpole::{Flags, RedisStore, Source};
use serde_json::json;
use support::redis_server::RedisServer;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn api(flags: serde_json::Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(flags))
        .mount(&server)
        .await;
    server
}

fn handle(api: &MockServer, redis: &RedisServer, interval: Duration) -> Flags {
    Flags::builder()
        .base_url(api.uri())
        .fetch_interval(interval)
        .shared_store(RedisStore::new(&redis.url()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_handles_start_with_one_request() {
    let redis = RedisServer::start();
    let api = api(json!([{"a": 1}])).await;
    let handles: Vec<Flags> = (0..5)
        .map(|_| handle(&api, &redis, Duration::from_secs(60)))
        .collect();
    for h in &handles {
        tokio::time::timeout(Duration::from_secs(10), h.ready())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(h.get_i64("a"), Some(1));
    }
    let sources: Vec<Source> = handles.iter().map(|h| h.snapshot().source()).collect();
    println!("{sources:?}");
    assert_eq!(api.received_requests().await.unwrap().len(), 1);
}
