//! The OFREP parsers, fuzzed: whatever bytes, context, headers, query or path arrive, they give
//! a value or a typed error (never a panic), and the value is what an independent reading of the
//! documented rules expects. Plus the evaluation's reasons and entity tags.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::evaluate;
use super::request::{self, ContextError};
use super::{configuration_body, header_name};
use crate::config::{Client, Distribution, Environment};
use crate::relay::api::parse_query;
use crate::relay::sets::Params;
use crate::rollout::{parse_version, Identity};

fn defaults() -> Params {
    Params {
        client: Client::Extension,
        distribution: Distribution::Main,
        environment: Environment::Prod,
    }
}

/// The identity's fields in a comparable form.
type Fields = (Option<String>, Option<String>, Vec<String>, Option<String>);

fn fields(identity: &Identity) -> Fields {
    let mut flags: Vec<String> = identity.metrics_flags.iter().cloned().collect();
    flags.sort();
    (
        identity.profile_id.clone(),
        identity.metrics_id.clone(),
        flags,
        identity.client_version.as_ref().map(|(raw, _)| raw.clone()),
    )
}

/// The documented reading of a context, written apart from `request.rs`: `Some(fields)`, or
/// `None` for INVALID_CONTEXT.
fn oracle(context: &Value) -> Option<Fields> {
    let context = match context {
        Value::Null => return Some((None, None, Vec::new(), None)),
        Value::Object(context) => context,
        _ => return None,
    };
    let text = |name: &str| -> Option<Option<String>> {
        match context.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        }
    };
    let id = |name: &str| text(name).map(|id| id.filter(|id| !id.is_empty()));
    let version = text("clientVersion")?;
    if version
        .as_deref()
        .is_some_and(|v| parse_version(v).is_none())
    {
        return None;
    }
    let mut flags: Vec<String> = match context.get("metaMetricsFlags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    flags.sort();
    flags.dedup();
    Some((id("targetingKey")?, id("metaMetricsId")?, flags, version))
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("targetingKey".to_owned()),
        Just("metaMetricsId".to_owned()),
        Just("metaMetricsFlags".to_owned()),
        Just("clientVersion".to_owned()),
        "[a-zA-Z]{0,6}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,12}",
        "v?[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}(-[a-z0-9.]{1,4})?(\\+[a-z0-9]{1,3})?",
        Just(String::new()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(key(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A context object with each known attribute absent or of an arbitrary shape.
fn context() -> impl Strategy<Value = Value> {
    let attribute = prop_oneof![
        2 => text().prop_map(Value::from),
        1 => vec(text(), 0..4).prop_map(|names| json!(names)),
        1 => json_value(),
    ];
    (btree_map(key(), attribute, 0..5), json_value()).prop_map(|(attributes, other)| {
        let mut context: Map<String, Value> = attributes.into_iter().collect();
        context.insert("email".to_owned(), other);
        Value::Object(context)
    })
}

proptest! {
    #[test]
    fn any_bytes_give_an_identity_or_a_typed_error(body in vec(any::<u8>(), 0..256)) {
        match request::parse_body(&body) {
            Ok(_) => {}
            Err(ContextError::Parse(_)) => {
                prop_assert!(serde_json::from_slice::<Value>(&body).is_err());
            }
            Err(ContextError::Invalid(_)) => {
                prop_assert!(serde_json::from_slice::<Value>(&body).is_ok());
            }
        }
    }

    #[test]
    fn json_looking_text_gives_an_identity_or_a_typed_error(
        body in "[\\[\\]{}\":,a-zA-Z0-9 .eE+-]{0,64}",
    ) {
        let parsed = serde_json::from_slice::<Value>(body.as_bytes());
        match (request::parse_body(body.as_bytes()), parsed) {
            (Err(ContextError::Parse(_)), Err(_)) => {}
            (Ok(_), Ok(Value::Object(_))) => {}
            (Ok(_), Err(_)) => prop_assert!(body.trim().is_empty()),
            (Err(ContextError::Invalid(_)), Ok(_)) => {}
            (got, parsed) => prop_assert!(false, "{got:?} for {parsed:?}"),
        }
    }

    #[test]
    fn contexts_are_read_as_documented(context in context()) {
        let body = serde_json::to_vec(&json!({ "context": context, "other": 1 })).unwrap();
        match (request::parse_body(&body), oracle(&context)) {
            (Ok(identity), Some(expected)) => prop_assert_eq!(fields(&identity), expected),
            (Err(ContextError::Invalid(_)), None) => {}
            (got, expected) => prop_assert!(false, "{got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn any_json_body_gives_an_identity_or_invalid_context(body in json_value()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let expected = match &body {
            Value::Object(request) => oracle(request.get("context").unwrap_or(&Value::Null)),
            _ => None,
        };
        match (request::parse_body(&bytes), expected) {
            (Ok(identity), Some(expected)) => prop_assert_eq!(fields(&identity), expected),
            (Err(ContextError::Invalid(_)), None) => {}
            (got, expected) => prop_assert!(false, "{got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn a_client_version_is_accepted_exactly_when_node_semver_would(version in text()) {
        let body = serde_json::to_vec(&json!({"context": {"clientVersion": version}})).unwrap();
        let parsed = request::parse_body(&body);
        prop_assert_eq!(parsed.is_ok(), parse_version(&version).is_some());
        if let Ok(identity) = parsed {
            let (raw, _) = identity.client_version.unwrap();
            prop_assert_eq!(raw, version);
        }
    }

    #[test]
    fn any_header_values_select_a_set_or_name_the_accepted_ones(
        values in vec(proptest::option::of(prop_oneof![
            Just(b"extension".to_vec()), Just(b"mobile".to_vec()), Just(b"flask".to_vec()),
            Just(b"main".to_vec()), Just(b"rc".to_vec()), Just(b"dev".to_vec()),
            Just(b"prod".to_vec()), vec(any::<u8>(), 0..12),
        ]), 3),
    ) {
        let names = [
            request::CLIENT_HEADER,
            request::DISTRIBUTION_HEADER,
            request::ENVIRONMENT_HEADER,
        ];
        let mut headers = HeaderMap::new();
        let mut sent = Vec::new();
        for (name, value) in names.iter().zip(&values) {
            let value = value.as_ref().and_then(|v| HeaderValue::from_bytes(v).ok());
            if let Some(value) = &value {
                headers.insert(*name, value.clone());
            }
            sent.push(value.map(|v| v.as_bytes().to_vec()));
        }
        let accepted = [Client::NAMES, Distribution::NAMES, Environment::NAMES];
        let valid = sent.iter().zip(accepted).all(|(value, names)| {
            value.as_ref().is_none_or(|v| names.iter().any(|n| n.as_bytes() == v.as_slice()))
        });
        match request::parse_headers(&headers, defaults()) {
            Ok(params) => {
                prop_assert!(valid);
                let chosen = [
                    params.client.as_str(),
                    params.distribution.as_str(),
                    params.environment.as_str(),
                ];
                let fallback = ["extension", "main", "prod"];
                for ((value, chosen), fallback) in sent.iter().zip(chosen).zip(fallback) {
                    let expected = value.as_deref().unwrap_or(fallback.as_bytes());
                    prop_assert_eq!(chosen.as_bytes(), expected);
                }
            }
            Err(unknown) => {
                prop_assert!(!valid);
                prop_assert!(!unknown.expected.is_empty());
                prop_assert!(unknown.expected.iter().all(|n| *n != unknown.value));
            }
        }
    }

    #[test]
    fn any_query_text_selects_a_set_or_names_the_accepted_ones(query in "\\PC{0,64}") {
        if let Err(unknown) = parse_query(Some(&query), defaults()) {
            prop_assert!(unknown.expected.iter().all(|n| *n != unknown.value));
        }
    }

    #[test]
    fn queries_apply_their_parameters_in_order(
        pairs in vec((
            prop_oneof![
                Just("client"), Just("distribution"), Just("environment"), Just("user"),
                Just("x"),
            ],
            prop_oneof![
                Just("extension".to_owned()), Just("mobile".to_owned()),
                Just("flask".to_owned()), Just("main".to_owned()), Just("dev".to_owned()),
                Just("rc".to_owned()), Just("prod".to_owned()), "\\PC{0,8}",
            ],
        ), 0..6),
    ) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &pairs {
            query.append_pair(name, value);
        }
        let query = query.finish();
        // The rules, spelled out: each known parameter replaces the previous value, and the
        // first unknown value is the error.
        let mut expected = Ok(["extension", "main", "prod"].map(str::to_owned));
        for (name, value) in &pairs {
            let (slot, names) = match *name {
                "client" => (0, Client::NAMES),
                "distribution" => (1, Distribution::NAMES),
                "environment" => (2, Environment::NAMES),
                _ => continue,
            };
            if let Ok(chosen) = &mut expected {
                if names.contains(&value.as_str()) {
                    chosen[slot] = value.clone();
                } else {
                    expected = Err(*name);
                }
            }
        }
        match (parse_query(Some(&query), defaults()), expected) {
            (Ok(params), Ok(chosen)) => prop_assert_eq!(
                [params.client.as_str(), params.distribution.as_str(), params.environment.as_str()],
                [chosen[0].as_str(), chosen[1].as_str(), chosen[2].as_str()]
            ),
            (Err(unknown), Err(kind)) => prop_assert_eq!(unknown.kind, kind),
            (got, expected) => prop_assert!(false, "{got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn keys_decode_whatever_the_path(raw in "\\PC{0,24}") {
        let decoded = request::decode_key(&raw);
        if !raw.contains('%') {
            prop_assert_eq!(decoded.as_deref(), Some(raw.as_str()));
        }
    }

    #[test]
    fn percent_encoded_keys_round_trip(key in "\\PC{0,16}", bytes in vec(any::<u8>(), 0..8)) {
        let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
        prop_assert_eq!(request::decode_key(&encoded), Some(key));
        let encoded: String = bytes.iter().map(|b| format!("%{b:02x}")).collect();
        prop_assert_eq!(request::decode_key(&encoded), String::from_utf8(bytes).ok());
    }
}

#[test]
fn blank_bodies_and_missing_contexts_evaluate_for_nobody() {
    for body in [
        &b""[..],
        b"  \n",
        b"{}",
        b"{\"context\": null}",
        b"{\"context\": {}}",
    ] {
        let identity = request::parse_body(body).unwrap();
        assert_eq!(
            fields(&identity),
            (None, None, Vec::new(), None),
            "{body:?}"
        );
    }
}

#[test]
fn errors_are_typed_by_what_went_wrong() {
    let cases: [(&[u8], &str); 8] = [
        (b"{", "PARSE_ERROR"),
        (b"\xff", "PARSE_ERROR"),
        (b"[]", "INVALID_CONTEXT"),
        (b"{\"context\": 5}", "INVALID_CONTEXT"),
        (b"{\"context\": {\"targetingKey\": 5}}", "INVALID_CONTEXT"),
        (
            b"{\"context\": {\"clientVersion\": \"13\"}}",
            "INVALID_CONTEXT",
        ),
        (
            b"{\"context\": {\"metaMetricsFlags\": [1]}}",
            "INVALID_CONTEXT",
        ),
        (b"{\"context\": {\"metaMetricsId\": []}}", "INVALID_CONTEXT"),
    ];
    for (body, code) in cases {
        assert_eq!(
            request::parse_body(body).unwrap_err().code(),
            code,
            "{body:?}"
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        request::parse_body(deep.as_bytes()).unwrap_err().code(),
        "PARSE_ERROR"
    );
}

#[test]
fn keys_keep_stray_percent_signs_and_refuse_bad_utf8() {
    assert_eq!(request::decode_key("a%20b").as_deref(), Some("a b"));
    assert_eq!(request::decode_key("a%2Fb%2f").as_deref(), Some("a/b/"));
    assert_eq!(request::decode_key("100%").as_deref(), Some("100%"));
    assert_eq!(request::decode_key("%zz%4").as_deref(), Some("%zz%4"));
    assert_eq!(request::decode_key("a+b").as_deref(), Some("a+b"));
    assert_eq!(request::decode_key("%ff"), None);
}

#[test]
fn error_header_names_are_the_parsed_headers() {
    assert_eq!(header_name("client"), request::CLIENT_HEADER);
    assert_eq!(header_name("distribution"), request::DISTRIBUTION_HEADER);
    assert_eq!(header_name("environment"), request::ENVIRONMENT_HEADER);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-flagpole-environment",
        HeaderValue::from_static("staging"),
    );
    let unknown = request::parse_headers(&headers, defaults()).unwrap_err();
    assert_eq!(header_name(unknown.kind), "X-Flagpole-Environment");
}

fn identity(profile: Option<&str>, metrics: Option<&str>, version: Option<&str>) -> Identity {
    Identity {
        profile_id: profile.map(str::to_owned),
        metrics_id: metrics.map(str::to_owned),
        metrics_flags: HashSet::new(),
        client_version: version.map(|v| (v.to_owned(), parse_version(v).unwrap())),
    }
}

#[test]
fn evaluations_name_their_reason_and_variant() {
    let raw = json!({
        "plain": {"x": 1},
        "gone": null,
        "split": [{"name": "all", "scope": {"value": 1.0}, "value": "on"}],
        "unnamed": [{"scope": {"value": 1.0}, "value": 7}],
        "vip": [{"name": "list", "scope": {"value": 0.0}, "metaMetricsIds": ["mm"], "value": 1}],
        "gated": {"versions": {"1.0.0": "old", "2.0.0": "new"}},
        "hidden": [{"name": "h", "scope": {"value": 1.0}}],
    });
    let raw = Arc::new(raw.as_object().unwrap().clone());
    let who = identity(Some("p"), Some("MM"), Some("1.5.0"));
    let all = evaluate::all(&raw, &who);
    assert_eq!(
        Value::Array(all.clone()),
        json!([
            {"key": "gated", "value": "old", "reason": "TARGETING_MATCH", "variant": "1.0.0"},
            {"key": "plain", "value": {"x": 1}, "reason": "STATIC"},
            {"key": "split", "value": "on", "reason": "SPLIT", "variant": "all"},
            {"key": "unnamed", "value": 7, "reason": "SPLIT"},
            {"key": "vip", "value": 1, "reason": "TARGETING_MATCH", "variant": "list"},
        ])
    );
    for evaluation in &all {
        let key = evaluation["key"].as_str().unwrap();
        assert_eq!(evaluate::one(&raw, key, &who).as_ref(), Some(evaluation));
    }
    for absent in ["gone", "hidden", "missing"] {
        assert_eq!(evaluate::one(&raw, absent, &who), None, "{absent}");
    }
    // Nobody: rollouts are served as sent, versions too.
    let nobody = evaluate::one(&raw, "split", &Identity::default()).unwrap();
    assert_eq!(nobody["reason"], "STATIC");
    assert_eq!(nobody["value"], raw["split"]);
}

#[test]
fn bulk_tags_follow_the_flags_and_every_part_of_the_context() {
    let base = identity(Some("p"), Some("m"), Some("1.0.0"));
    let tag = evaluate::etag("\"f\"", defaults(), &base);
    assert_eq!(tag, evaluate::etag("\"f\"", defaults(), &base.clone()));
    assert_eq!(tag.len(), 18);
    let others = [
        identity(Some("q"), Some("m"), Some("1.0.0")),
        identity(None, Some("m"), Some("1.0.0")),
        identity(Some("p"), None, Some("1.0.0")),
        identity(Some("p"), Some("m"), Some("v1.0.0")),
        identity(Some("p"), Some("m"), None),
        // Where one field ends and the next begins is part of the hash.
        identity(Some("pm"), None, Some("1.0.0")),
        Identity {
            metrics_flags: HashSet::from(["f".to_owned()]),
            ..base.clone()
        },
    ];
    let mut tags = HashSet::from([tag.clone()]);
    for other in &others {
        assert!(
            tags.insert(evaluate::etag("\"f\"", defaults(), other)),
            "{other:?}"
        );
    }
    assert_ne!(tag, evaluate::etag("\"g\"", defaults(), &base));
    let mobile = Params {
        client: Client::Mobile,
        ..defaults()
    };
    assert_ne!(tag, evaluate::etag("\"f\"", mobile, &base));
    let two = |names: [&str; 2]| Identity {
        metrics_flags: names.iter().map(|n| n.to_string()).collect(),
        ..Identity::default()
    };
    assert_eq!(
        evaluate::etag("\"f\"", defaults(), &two(["a", "b"])),
        evaluate::etag("\"f\"", defaults(), &two(["b", "a"]))
    );
}

#[test]
fn configuration_advertises_polling_no_faster_than_a_minute() {
    let day = configuration_body(Duration::from_secs(86_400));
    let polling = &day["capabilities"]["cacheInvalidation"]["polling"];
    assert_eq!(polling["enabled"], true);
    assert_eq!(polling["minPollingIntervalMs"], 60_000);
    assert_eq!(polling["minPollingInterval"], 60_000);
    let short = configuration_body(Duration::from_millis(5));
    let polling = &short["capabilities"]["cacheInvalidation"]["polling"];
    assert_eq!(polling["minPollingIntervalMs"], 1_000);
    assert_eq!(
        day["capabilities"]["flagEvaluation"]["supportedTypes"],
        json!(["boolean", "string", "int", "float", "object"])
    );
    assert_eq!(day["name"], "flagpole");
}
