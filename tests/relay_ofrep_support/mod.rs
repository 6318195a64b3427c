//! Helpers of `relay_ofrep.rs`: the upstream flags, a relay, requests, and users as both an
//! evaluation context and handle settings.

use std::time::Duration;

use flagpole::relay::Relay;
use flagpole::Flags;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};
pub const WAIT: Duration = Duration::from_secs(10);

/// Upstream flags exercising every rule: plain values, rollouts (named, unnamed, by metrics id,
/// hiding), explicit targeting, versions, `null`, and a key that needs percent-encoding.
pub fn upstream_flags() -> Value {
    let split = |value: f64| json!({"type": "threshold", "value": value});
    json!([
        {"plain": true},
        {"number": 3.25},
        {"text": "hello"},
        {"object": {"nested": [1, 2]}},
        {"list": [1, 2, 3]},
        {"a b/c": "spaced"},
        {"nothing": null},
        {"rollout": [
            {"name": "control", "scope": split(0.33), "value": "a"},
            {"name": "treatment", "scope": split(0.66), "value": "b"},
            {"name": "holdout", "scope": split(1.0), "value": "c"}
        ]},
        {"unnamed": [{"scope": split(0.5), "value": 1}, {"scope": split(1.0), "value": 2}]},
        {"by_metrics": [
            {"name": "m1", "scope": split(0.5), "value": {"m": 1}},
            {"name": "m2", "scope": split(1.0), "value": {"m": 2}}
        ]},
        {"targeted": [
            {"name": "vip", "scope": split(0.0), "metaMetricsIds": ["MM-1"], "value": "vip"},
            {"name": "rest", "scope": split(1.0), "value": "rest"}
        ]},
        {"hidden": [{"name": "h", "scope": split(0.5)}, {"name": "shown", "scope": split(1.0), "value": 0}]},
        {"versioned": {"versions": {"1.0.0": "old", "2.0.0": "new"}}},
        {"future": {"versions": {"99.0.0": true}}}
    ])
}

pub async fn upstream(body: Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    server
}

pub async fn relay(upstream: &MockServer) -> (Relay, String) {
    let relay = Relay::builder(Flags::builder().base_url(upstream.uri()))
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}/ofrep/v1", relay.local_addr());
    (relay, base)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// An answer: status, headers and the JSON body (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

pub async fn post(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = match bytes.is_empty() {
        true => Value::Null,
        false => serde_json::from_slice(&bytes).unwrap(),
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs `body` to `url` until the relay has flags (503 before the first fetch).
pub async fn post_ready(client: &reqwest::Client, url: &str, body: &Value) -> Answer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = post(client.post(url).with_json(body)).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE
            || tokio::time::Instant::now() > deadline
        {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A user, as an evaluation context and as handle settings.
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub profile: Option<&'static str>,
    pub metrics: Option<&'static str>,
    pub version: Option<&'static str>,
    pub metrics_flags: Vec<&'static str>,
}

impl Who {
    pub fn context(&self) -> Value {
        let mut context = json!({"email": "ignored@example.com"});
        let mut set = |name: &str, value: Option<&str>| {
            if let Some(value) = value {
                context[name] = json!(value);
            }
        };
        set("targetingKey", self.profile);
        set("metaMetricsId", self.metrics);
        set("clientVersion", self.version);
        if !self.metrics_flags.is_empty() {
            context["metaMetricsFlags"] = json!(self.metrics_flags);
        }
        json!({ "context": context })
    }

    /// A handle for this user, ready: what `flagpole get --profile-id ..` serves.
    pub async fn handle(&self, upstream: &MockServer) -> Flags {
        let mut builder = Flags::builder()
            .base_url(upstream.uri())
            .metrics_flags(self.metrics_flags.clone());
        if let Some(id) = self.profile {
            builder = builder.profile_id(id);
        }
        if let Some(id) = self.metrics {
            builder = builder.metrics_id(id);
        }
        if let Some(version) = self.version {
            builder = builder.client_version(version);
        }
        let flags = builder.build().unwrap();
        tokio::time::timeout(WAIT, flags.ready())
            .await
            .expect("the handle's first fetch in time")
            .unwrap();
        flags
    }
}

pub fn users() -> Vec<Who> {
    let mut users: Vec<Who> = [
        "0x1234abcd",
        "user-42",
        "f0a1b2c3-d4e5-4f60-8a9b-0c1d2e3f4a5b",
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
    ]
    .into_iter()
    .map(|id| Who {
        profile: Some(id),
        ..Who::default()
    })
    .collect();
    users[0].metrics = Some(" mm-1 ");
    users[0].version = Some("1.5.0");
    users[1].metrics = Some("metrics-7");
    users[1].metrics_flags = vec!["by_metrics"];
    users[1].version = Some("v2.1.0");
    users[2].version = Some("0.9.0");
    users.push(Who::default());
    users
}

/// A JSON request body (reqwest is built without its `json` feature).
pub trait WithJson {
    /// The request with `body` as JSON.
    fn with_json(self, body: &Value) -> Self;
}

impl WithJson for reqwest::RequestBuilder {
    fn with_json(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
    }
}
