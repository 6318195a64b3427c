//! OFREP on the wire: reqwest against a relay in this process, wiremock upstream. Evaluations
//! must be what a handle built for the same user serves (`flagpole get --profile-id ..`).

mod relay_ofrep_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use relay_ofrep_support::{
    client, post, post_ready, relay, upstream, upstream_flags, users, WithJson, WAIT,
};

#[tokio::test]
async fn bulk_and_single_evaluations_match_a_handle_built_for_the_user() {
    let up = upstream(upstream_flags()).await;
    // The handles ask their own upstream (they send `user=`); the relay's must never see one.
    let for_handles = upstream(upstream_flags()).await;
    let (relay, base) = relay(&up).await;
    let client = client();
    let all_names: BTreeSet<String> = upstream_flags()
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|item| item.as_object().unwrap().keys().cloned())
        .collect();
    let mut rollout_groups = BTreeSet::new();
    for who in users() {
        let bulk = post_ready(&client, &format!("{base}/evaluate/flags"), &who.context()).await;
        assert_eq!(bulk.status, StatusCode::OK, "{who:?}: {}", bulk.body);
        assert!(bulk.headers.contains_key("etag"));
        let evaluations: BTreeMap<String, Value> = bulk.body["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["key"].as_str().unwrap().to_owned(), e.clone()))
            .collect();
        let handle = who.handle(&for_handles).await;
        let snapshot = handle.snapshot();
        let served: BTreeSet<String> = snapshot.names().into_iter().collect();
        assert_eq!(
            evaluations.keys().cloned().collect::<BTreeSet<_>>(),
            served,
            "{who:?}"
        );
        for (name, evaluation) in &evaluations {
            assert_eq!(
                Some(&evaluation["value"]),
                snapshot.get_ref(name),
                "{who:?} {name}"
            );
            let variant = evaluation.get("variant").and_then(Value::as_str);
            // A recorded rollout group is the variant, whichever rule chose it.
            if let Some(group) = snapshot.threshold_group(name) {
                assert_eq!(variant, Some(group), "{who:?} {name}");
            }
            match evaluation["reason"].as_str().unwrap() {
                "SPLIT" => assert_eq!(variant, snapshot.threshold_group(name), "{name}"),
                "TARGETING_MATCH" => assert!(variant.is_some(), "{name}"),
                "STATIC" => {
                    assert_eq!(variant, None);
                    assert_eq!(snapshot.threshold_group(name), None, "{who:?} {name}");
                }
                other => panic!("unexpected reason {other} for {name}"),
            }
            // The single endpoint answers the same, whatever the key needs escaping.
            let key: String = name
                .bytes()
                .map(|b| match b.is_ascii_alphanumeric() || b == b'_' {
                    true => (b as char).to_string(),
                    false => format!("%{b:02X}"),
                })
                .collect();
            let url = format!("{base}/evaluate/flags/{key}");
            let one = post(client.post(&url).with_json(&who.context())).await;
            assert_eq!(one.status, StatusCode::OK, "{name}");
            assert_eq!(&one.body, evaluation);
        }
        for name in all_names.difference(&served) {
            let url = format!("{base}/evaluate/flags/{name}");
            let missing = post(client.post(&url).with_json(&who.context())).await;
            assert_eq!(missing.status, StatusCode::NOT_FOUND, "{who:?} {name}");
            assert_eq!(missing.body["key"], json!(name));
            assert_eq!(missing.body["errorCode"], "FLAG_NOT_FOUND");
        }
        if who.profile.is_some() {
            assert_eq!(evaluations["rollout"]["reason"], "SPLIT");
            rollout_groups.insert(evaluations["rollout"]["variant"].to_string());
        } else {
            // Nobody to segment by: the rollout array is served as sent, as MetaMask does.
            assert_eq!(evaluations["rollout"]["reason"], "STATIC");
            assert_eq!(
                evaluations["rollout"]["value"],
                upstream_flags()[7]["rollout"]
            );
        }
        handle.shutdown().await;
    }
    // The ids land in different groups, so the comparisons above could tell them apart.
    assert!(rollout_groups.len() >= 2, "{rollout_groups:?}");
    // Explicit targeting and versions, for the first user (metrics id " mm-1 ", version 1.5.0).
    let first = post(
        client
            .post(format!("{base}/evaluate/flags"))
            .with_json(&users()[0].context()),
    )
    .await;
    let by_key = |key: &str| {
        first.body["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .cloned()
    };
    assert_eq!(
        by_key("targeted"),
        Some(
            json!({"key": "targeted", "value": "vip", "reason": "TARGETING_MATCH", "variant": "vip"})
        )
    );
    assert_eq!(
        by_key("versioned"),
        Some(
            json!({"key": "versioned", "value": "old", "reason": "TARGETING_MATCH", "variant": "1.0.0"})
        )
    );
    assert_eq!(by_key("future"), None);
    for request in up.received_requests().await.unwrap() {
        assert!(
            !request.url.query().unwrap_or("").contains("user"),
            "{}",
            request.url
        );
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn bulk_etags_follow_the_context_and_answer_304() {
    let up = upstream(upstream_flags()).await;
    let (relay, base) = relay(&up).await;
    let client = client();
    let url = format!("{base}/evaluate/flags");
    let alice = json!({"context": {"targetingKey": "alice"}});
    let bob = json!({"context": {"targetingKey": "bob"}});
    let first = post_ready(&client, &url, &alice).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    assert!(first.headers["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("private, max-age="));
    assert_eq!(first.headers["x-flagpole-source"], "network");
    let again = post(
        client
            .post(&url)
            .with_json(&alice)
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.body, Value::Null);
    assert_eq!(again.headers["etag"].to_str().unwrap(), etag);
    let weak = format!("\"other\", W/{etag}");
    let weakly = post(
        client
            .post(&url)
            .with_json(&alice)
            .header("if-none-match", weak),
    )
    .await;
    assert_eq!(weakly.status, StatusCode::NOT_MODIFIED);
    // The same flags for another user: another tag, and a full answer to the first one's tag.
    let other = post(
        client
            .post(&url)
            .with_json(&bob)
            .header("if-none-match", &etag),
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_ne!(other.headers["etag"].to_str().unwrap(), etag);
    assert!(other.body["flags"]
        .as_array()
        .is_some_and(|f| !f.is_empty()));
    // Attributes processing does not read leave the tag alone; a client version changes it.
    let extra = json!({"context": {"targetingKey": "alice", "email": "a@example.com"}});
    let same = post(client.post(&url).with_json(&extra)).await;
    assert_eq!(same.headers["etag"].to_str().unwrap(), etag);
    let versioned = json!({"context": {"targetingKey": "alice", "clientVersion": "2.0.0"}});
    let changed = post(client.post(&url).with_json(&versioned)).await;
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);
    relay.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_the_spec_error_shapes() {
    let up = upstream(upstream_flags()).await;
    let (relay, base) = relay(&up).await;
    let client = client();
    let bulk = format!("{base}/evaluate/flags");
    let one = format!("{base}/evaluate/flags/plain");
    assert_eq!(
        post_ready(&client, &bulk, &json!({})).await.status,
        StatusCode::OK
    );
    // No body at all: an evaluation for nobody in particular.
    let empty = post(client.post(&one)).await;
    assert_eq!(
        empty.body,
        json!({"key": "plain", "value": true, "reason": "STATIC"})
    );
    let cases: [(&[u8], &str); 7] = [
        (b"{\"context\": ", "PARSE_ERROR"),
        (b"not json", "PARSE_ERROR"),
        (b"[1, 2]", "INVALID_CONTEXT"),
        (b"{\"context\": \"alice\"}", "INVALID_CONTEXT"),
        (b"{\"context\": {\"targetingKey\": 42}}", "INVALID_CONTEXT"),
        (
            b"{\"context\": {\"clientVersion\": \"latest\"}}",
            "INVALID_CONTEXT",
        ),
        (
            b"{\"context\": {\"metaMetricsFlags\": \"rollout\"}}",
            "INVALID_CONTEXT",
        ),
    ];
    for (body, code) in cases {
        let whole = post(client.post(&bulk).body(body.to_vec())).await;
        assert_eq!(whole.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(whole.body["errorCode"], code, "{body:?}");
        assert!(whole.body["errorDetails"].is_string());
        assert!(whole.body.get("key").is_none());
        let single = post(client.post(&one).body(body.to_vec())).await;
        assert_eq!(single.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(single.body["errorCode"], code);
        assert_eq!(single.body["key"], "plain");
    }
    let unknown = post(client.post(&bulk).header("x-flagpole-client", "desktop")).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["errorCode"], "INVALID_CONTEXT");
    assert_eq!(unknown.body["header"], "X-Flagpole-Client");
    assert_eq!(unknown.body["accepted"], json!(["extension", "mobile"]));
    let unknown = post(
        client
            .post(&one)
            .header("x-flagpole-environment", "staging"),
    )
    .await;
    assert_eq!(unknown.body["accepted"], json!(["prod", "rc", "dev"]));
    assert_eq!(unknown.body["key"], "plain");
    // 64 KiB exactly is read; one byte more is refused, declared or not.
    let limit = 64 * 1024;
    let padded = |size: usize| {
        let frame = br#"{"context": {"targetingKey": "alice", "pad": ""}}"#;
        let mut body = frame[..frame.len() - 3].to_vec();
        body.resize(size - 3, b'x');
        body.extend_from_slice(b"\"}}");
        body
    };
    let fits = post(client.post(&bulk).body(padded(limit))).await;
    assert_eq!(fits.status, StatusCode::OK);
    for url in [&bulk, &one] {
        let over = post(client.post(url).body(padded(limit + 1))).await;
        assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(over.body["errorCode"], "GENERAL");
    }
    let missing = post(
        client
            .post(format!("{base}/evaluate/flags/no%20such"))
            .with_json(&json!({})),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.body,
        json!({"key": "no such", "errorCode": "FLAG_NOT_FOUND", "errorDetails": "flag not found"})
    );
    let get = client.get(&bulk).send().await.unwrap();
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Nothing above broke the relay.
    assert_eq!(post(client.post(&one)).await.status, StatusCode::OK);
    relay.shutdown().await;
}

#[tokio::test]
async fn no_flags_yet_is_503_with_retry_after() {
    let failing = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let (relay, base) = relay(&failing).await;
    let client = client();
    for (url, key) in [
        (format!("{base}/evaluate/flags"), None),
        (format!("{base}/evaluate/flags/plain"), Some("plain")),
    ] {
        let answer = post(client.post(&url).with_json(&json!({}))).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers["retry-after"], "1");
        assert_eq!(answer.body["errorCode"], "GENERAL");
        assert_eq!(answer.body.get("key").and_then(Value::as_str), key);
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn headers_select_another_parameter_set() {
    let up = MockServer::start().await;
    for (name, value) in [("client", "mobile"), ("environment", "dev")] {
        Mock::given(method("GET"))
            .and(path("/flags"))
            .and(query_param(name, value))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([{ "set": value }])))
            .mount(&up)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"set": "default"}])))
        .mount(&up)
        .await;
    let (relay, base) = relay(&up).await;
    let client = client();
    let url = format!("{base}/evaluate/flags/set");
    let mut tags = Vec::new();
    for (header, value, expected) in [
        (None, "", "default"),
        (Some("x-flagpole-client"), "mobile", "mobile"),
        (Some("X-Flagpole-Environment"), "dev", "dev"),
        (Some("x-flagpole-distribution"), "flask", "default"),
        (Some("x-flagpole-distribution"), "main", "default"),
    ] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let answer = loop {
            let mut request = client.post(&url);
            if let Some(header) = header {
                request = request.header(header, value);
            }
            let answer = post(request).await;
            if answer.status != StatusCode::SERVICE_UNAVAILABLE
                || tokio::time::Instant::now() > deadline
            {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(answer.status, StatusCode::OK, "{header:?}");
        assert_eq!(answer.body["value"], expected, "{header:?}");
        let mut bulk = client.post(format!("{base}/evaluate/flags"));
        if let Some(header) = header {
            bulk = bulk.header(header, value);
        }
        let bulk = post(bulk).await;
        assert_eq!(bulk.body["flags"][0]["value"], expected);
        tags.push(bulk.headers["etag"].to_str().unwrap().to_owned());
    }
    // Each set has its own tag, even with the same flags (the default set and `flask`); naming
    // the default distribution is the default set.
    assert_eq!(
        tags.iter().take(4).collect::<BTreeSet<_>>().len(),
        4,
        "{tags:?}"
    );
    assert_eq!(tags[4], tags[0]);
    relay.shutdown().await;
}

#[tokio::test]
async fn configuration_names_the_capabilities_with_an_etag() {
    let up = upstream(json!([])).await;
    let (relay, base) = relay(&up).await;
    let client = client();
    let url = format!("{base}/configuration");
    let answer = client.get(&url).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let etag = answer.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
    assert_eq!(body["name"], "flagpole");
    let polling = &body["capabilities"]["cacheInvalidation"]["polling"];
    assert_eq!(polling["enabled"], true);
    // The default fetch interval is a day: a minute is the floor advertised.
    assert_eq!(polling["minPollingIntervalMs"], 60_000);
    assert_eq!(
        body["capabilities"]["flagEvaluation"]["supportedTypes"],
        json!(["boolean", "string", "int", "float", "object"])
    );
    let again = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    relay.shutdown().await;
}
