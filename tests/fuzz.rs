//! Property tests: whatever body the server sends, the poller never panics and never replaces
//! good flags with garbage; any flag name survives the network, the snapshot and the cache file.
//!
//! Each case runs a real poller on a fresh current-thread runtime with a paused clock and a
//! `ScriptedTransport` (no sockets). Case counts are modest so that the file runs in seconds;
//! raise them with `PROPTEST_CASES=10000 cargo test --all-features --test fuzz`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use flagpole::{
    Error, FileStore, Flags, MemoryStore, ScriptedResponse, ScriptedTransport, Source, Status,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};

use support::wait_status;

const HOUR: Duration = Duration::from_secs(3600);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn good() -> Value {
    json!([{"a": true}, {"n": 1}, {"s": "good"}])
}

/// The documented contract of a 200 body (DESIGN.md, "Wire format"), written independently of
/// `src/parse.rs`: an object is the flag set; an array of objects is spread left to right; any
/// other body is rejected. `None` means "must be a parse error".
fn contract(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(flags) => Some(flags),
        Value::Array(items) => items.into_iter().try_fold(Map::new(), |mut flags, item| {
            flags.extend(item.as_object()?.clone());
            Some(flags)
        }),
        _ => None,
    }
}

/// A value served exactly as sent. `null` and the MetaMask shapes (an object with `versions`,
/// an array holding an object with `scope`) may be processed at publish time, so the properties
/// compare only plain values and merely require the others not to break anything.
fn is_plain(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Object(o) => !o.contains_key("versions"),
        Value::Array(items) => !items
            .iter()
            .any(|i| i.as_object().is_some_and(|o| o.contains_key("scope"))),
        _ => true,
    }
}

/// Good flags first, then `body` as the answer to a refresh: either the body is a flag set and
/// is served, or it is a parse error and the good flags stay, the same snapshot, unsaved over.
fn check_body(body: Vec<u8>) -> Result<(), TestCaseError> {
    runtime().block_on(async {
        let transport = ScriptedTransport::new();
        transport.push(ScriptedResponse::json(&good()));
        transport.push(ScriptedResponse::body(200, body.clone()));
        let store = MemoryStore::new();
        let flags = Flags::builder()
            .transport(transport)
            .store(store.clone())
            .fetch_interval(HOUR)
            .default_flag("d", "default")
            .build()
            .unwrap();
        wait_status(&flags, "the first fetch", HOUR, Status::is_fresh).await;
        let good = flags.snapshot();
        let saved = store.get();

        let result = flags.refresh().await;
        // Saves run beside the poller; after this one ends, the store holds what is served.
        flags.flush().await.expect("the memory store saves");
        let status = flags.status();
        prop_assert!(!status.is_stopped(), "the poller died: {status:?}");
        match (contract(&body), result) {
            (Some(expected), Ok(snapshot)) => {
                prop_assert!(Arc::ptr_eq(&snapshot, &flags.snapshot()));
                prop_assert_eq!(snapshot.source(), Source::Network);
                prop_assert!(status.is_fresh(), "{status:?}");
                for (name, value) in expected.iter().filter(|(_, v)| is_plain(v)) {
                    prop_assert_eq!(snapshot.get_ref(name), Some(value), "flag {:?}", name);
                }
                // Defaults fill only what the body lacks.
                if !expected.contains_key("d") {
                    prop_assert!(snapshot.get_str("d").as_deref() == Some("default"));
                }
                let unexpected = snapshot
                    .names()
                    .into_iter()
                    .any(|n| n != "d" && !expected.contains_key(&n));
                prop_assert!(!unexpected, "a name the body does not have");
                let record = store.get().expect("a success is saved");
                prop_assert_eq!(record.flags, expected);
            }
            (None, Err(Error::Parse { .. })) => {
                prop_assert!(Arc::ptr_eq(&good, &flags.snapshot()), "good flags replaced");
                let parse_error = matches!(status.last_error(), Some(Error::Parse { .. }));
                prop_assert!(parse_error, "status {:?}", status);
                prop_assert_eq!(store.get(), saved, "a failure changed the record");
            }
            (expected, result) => {
                return Err(TestCaseError::fail(format!(
                    "contract says {expected:?}, poller said {result:?}"
                )))
            }
        }
        flags.shutdown().await;
        Ok(())
    })
}

/// Any JSON value; objects and arrays of objects are common enough to exercise the accepted
/// shapes as well as the rejected ones.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec!["a", "b", "versions", "scope", "value", "ü", "\u{0}"])
            .prop_map(str::to_owned),
        prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::collection::vec(any::<char>(), 0..16).prop_map(|c| Value::from(String::from_iter(c))),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A top-level body: any value, or (more often) the shapes the API really sends.
fn json_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => json_value(),
        2 => json_object(),
        3 => prop::collection::vec(json_object(), 0..8).prop_map(Value::Array),
    ]
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::collection::vec(any::<char>(), 0..10).prop_map(String::from_iter),
        json_value(),
        0..8,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A valid body damaged: cut short, a byte changed, or a byte inserted.
fn damaged_body() -> impl Strategy<Value = Vec<u8>> {
    (
        json_body(),
        any::<prop::sample::Index>(),
        any::<u8>(),
        0..3u8,
    )
        .prop_map(|(value, at, byte, how)| {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            let i = at.index(bytes.len().max(1)).min(bytes.len());
            match how {
                0 => bytes.truncate(i),
                1 if i < bytes.len() => bytes[i] = byte,
                _ => bytes.insert(i, byte),
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_nor_replace_good_flags(
        body in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        check_body(body)?;
    }

    #[test]
    fn damaged_json_never_panics_nor_replaces_good_flags(body in damaged_body()) {
        check_body(body)?;
    }

    #[test]
    fn arbitrary_json_values_are_served_or_rejected_as_a_whole(value in json_body()) {
        check_body(serde_json::to_vec(&value).unwrap())?;
    }
}

/// Flags named `names`, each with a plain value derived from its index.
fn named_flags(names: &[String]) -> Map<String, Value> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let value = match i % 4 {
                0 => json!(i),
                1 => json!(format!("value-{i}")),
                2 => json!(i % 3 == 0),
                _ => json!({"i": i, "name": name}),
            };
            (name.clone(), value)
        })
        .collect()
}

/// Network -> snapshot -> cache file -> a new handle's snapshot, names and values intact.
fn check_names(names: Vec<String>) -> Result<(), TestCaseError> {
    let flags_sent = named_flags(&names);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    runtime().block_on(async {
        let transport = ScriptedTransport::new();
        transport.set(ScriptedResponse::json(&Value::Object(flags_sent.clone())));
        let first = Flags::builder()
            .transport(transport)
            .store(FileStore::new(&file))
            .fetch_interval(HOUR)
            .build()
            .unwrap();
        // Fresh comes after the save.
        wait_status(&first, "the fetch", HOUR, Status::is_fresh).await;
        for (name, value) in &flags_sent {
            prop_assert_eq!(first.get(name), Some(value.clone()), "name {:?}", name);
            prop_assert!(first.snapshot().contains(name));
            if let Some(text) = value.as_str() {
                let served = first.get_str(name);
                prop_assert_eq!(served.as_deref(), Some(text));
            }
        }
        prop_assert_eq!(first.snapshot().len(), flags_sent.len());
        first.shutdown().await;

        // A restart: the fresh cache is served without a request.
        let offline = ScriptedTransport::new();
        offline.set(ScriptedResponse::hang());
        let second = Flags::builder()
            .transport(offline.clone())
            .store(FileStore::new(&file))
            .fetch_interval(HOUR)
            .build()
            .unwrap();
        wait_status(&second, "the cache", HOUR, Status::is_fresh).await;
        let snapshot = second.snapshot();
        prop_assert_eq!(snapshot.source(), Source::Cache);
        prop_assert_eq!(snapshot.to_json(), flags_sent.clone());
        let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(snapshot.names(), sorted);
        prop_assert_eq!(offline.request_count(), 0);
        second.shutdown().await;
        Ok(())
    })
}

fn flag_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        1 => Just(String::new()),
        1 => prop::collection::vec(any::<char>(), 1_000..4_000).prop_map(String::from_iter),
        1 => prop::sample::select(vec![
            "new-checkout", "ü nicode ☃", "\u{0}", "\"quoted\"", "a\\b", "line\nbreak",
            "\u{feff}bom", "🏳️‍🌈", "..", "../../etc/passwd", "user=secret&x",
        ])
        .prop_map(str::to_owned),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_flag_names_round_trip_through_the_store(
        names in prop::collection::vec(flag_name(), 1..8)
    ) {
        check_names(names)?;
    }
}

/// The three cases the issue names, pinned so they run on every build whatever the generator
/// draws.
#[test]
fn empty_unicode_and_very_long_names_round_trip() {
    check_names(vec![
        String::new(),
        "ü nicode ☃ 🏳️‍🌈 \u{0} \u{fffd}".to_owned(),
        "long-".repeat(20_000),
    ])
    .unwrap();
}
