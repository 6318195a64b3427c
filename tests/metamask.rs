//! MetaMask parity through the public API: processing at publish time, threshold groups,
//! identities in the cache key, and local overrides (layering, persistence, restart). Paused
//! clock with the scripted transport; the rules themselves are unit-tested in `src/rollout`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagpole::{
    CacheRecord, Error, FileStore, Flags, FlagsBuilder, MemoryStore, ScriptedResponse,
    ScriptedTransport, Source, Store,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// One body exercising every rule. Thresholds (Python hashlib): user-42 + newUI = 0.861312,
/// 0x1234abcd + checkout-v2 = 0.8598, user-42 + checkout-v2 = 0.065814.
fn body() -> Value {
    json!([
        {"plain": true},
        {"gated": {"versions": {"13.0.0": "old", "13.2.0": "new", "14.0.0": "future"}}},
        {"too-new": {"versions": {"20.0.0": true}}},
        {"gone": null},
        {"newUI": [
            {"name": "control", "scope": {"type": "threshold", "value": 0.5}, "value": "A"},
            {"name": "treatment", "scope": {"type": "threshold", "value": 1}, "value": "B"}
        ]},
        {"checkout-v2": [
            {"name": "early", "scope": {"type": "threshold", "value": 0.5}, "value": 1},
            {"name": "late", "scope": {"type": "threshold", "value": 1}, "value": 2}
        ]},
        {"hidden": [{"name": "ghost", "scope": {"type": "threshold", "value": 1}}]},
        {"list": [1, 2, 3]}
    ])
}

fn transport() -> ScriptedTransport {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&body()));
    transport
}

fn identified(transport: &ScriptedTransport) -> FlagsBuilder {
    Flags::builder()
        .transport(transport.clone())
        .profile_id("user-42")
        .metrics_id("0x1234abcd")
        .metrics_flags(["checkout-v2"])
        .client_version("13.5.0")
        .default_flag("hidden", "default")
        .default_flag("too-new", false)
        .default_flag("only-default", 7)
}

/// Fetches with the usual identity into `store` and stops.
async fn seed(store: &MemoryStore) {
    let transport = transport();
    let first = identified(&transport).store(store.clone()).build().unwrap();
    ready(&first).await;
    first.shutdown().await;
}

/// A handle with the usual identity, its flags fetched and saved.
async fn started() -> Flags {
    let flags = identified(&transport()).build().unwrap();
    ready(&flags).await;
    flags
}

/// Remote flags served and saved: "fresh" is reported only after the save.
async fn ready(flags: &Flags) {
    assert!(
        matches!(tokio::time::timeout(WAIT, flags.ready()).await, Ok(Ok(_))),
        "remote flags arrive"
    );
    let mut status = flags.status_receiver();
    status.wait_for(|s| s.is_fresh()).await.expect("fresh");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_is_processed_for_this_client_before_it_is_served() {
    let flags = started().await;
    let s = flags.snapshot();
    assert_eq!(s.get_bool("plain"), Some(true));
    assert_eq!(
        s.get_str("gated").as_deref(),
        Some("new"),
        "13.2.0 <= 13.5.0 < 14.0.0"
    );
    // No version qualifies: the flag is dropped and its default shows through.
    assert_eq!(s.get_bool("too-new"), Some(false));
    assert!(!s.contains("gone"), "remote null is dropped");
    // Segmented by the profile id: 0.861312 > 0.5, so the second group.
    assert_eq!(s.get_str("newUI").as_deref(), Some("B"));
    assert_eq!(s.threshold_group("newUI"), Some("treatment"));
    // A metrics flag: 0x1234abcd gives 0.8598 (the profile id would give 0.065814).
    assert_eq!(s.get_i64("checkout-v2"), Some(2));
    assert_eq!(s.threshold_group("checkout-v2"), Some("late"));
    // A selected group without a value hides the flag, default included, and keeps its name.
    assert!(!s.contains("hidden"));
    assert_eq!(s.threshold_group("hidden"), Some("ghost"));
    assert_eq!(s.get("list"), Some(json!([1, 2, 3])), "no scope: unchanged");
    assert_eq!(s.get_i64("only-default"), Some(7));
    let groups: Vec<_> = s.threshold_groups().collect();
    assert_eq!(
        groups,
        [
            ("checkout-v2", "late"),
            ("hidden", "ghost"),
            ("newUI", "treatment")
        ]
    );
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn explicit_targeting_by_metrics_id_beats_the_rollout() {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!([{"newUI": [
        {"name": "everyone", "scope": {"value": 1}, "value": "all"},
        {"name": "qa", "scope": {"value": 0}, "value": "qa", "metaMetricsIds": [" 0X1234ABCD"]}
    ]}])));
    let flags = identified(&transport).build().unwrap();
    ready(&flags).await;
    assert_eq!(flags.get_str("newUI").as_deref(), Some("qa"));
    assert_eq!(flags.snapshot().threshold_group("newUI"), Some("qa"));
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_persisted_raw_flags_are_processed_again_at_start() {
    let store = MemoryStore::new();
    seed(&store).await;
    let record = store.get().expect("saved");
    // The store keeps what the server sent, not what this client was served.
    assert_eq!(record.flags["gated"]["versions"]["14.0.0"], json!("future"));
    assert!(record.flags["newUI"].is_array());

    let offline = ScriptedTransport::new();
    let second = identified(&offline).store(store.clone()).build().unwrap();
    ready(&second).await;
    let s = second.snapshot();
    assert_eq!(s.source(), Source::Cache);
    assert_eq!(s.get_str("gated").as_deref(), Some("new"));
    assert_eq!(s.threshold_group("newUI"), Some("treatment"));
    assert_eq!(offline.request_count(), 0, "a fresh cache needs no request");
    second.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn another_version_or_id_does_not_use_the_cache() {
    let store = MemoryStore::new();
    seed(&store).await;
    type Change = fn(FlagsBuilder) -> FlagsBuilder;
    let changes: [(&str, Change); 4] = [
        ("client version", |b| b.client_version("13.6.0")),
        ("metrics id", |b| b.metrics_id("0xother")),
        ("profile id", |b| b.profile_id("user-43")),
        ("no metrics id", |b| b.metrics_id("")),
    ];
    for (what, change) in changes {
        let fresh = self::transport();
        let flags = change(identified(&fresh))
            .store(store.clone())
            .build()
            .unwrap();
        ready(&flags).await;
        assert_eq!(flags.snapshot().source(), Source::Network, "{what}");
        assert_eq!(fresh.request_count(), 1, "{what}: the cache was not used");
        flags.shutdown().await;
        // Put the first handle's record back for the next case.
        seed(&store).await;
    }
}

#[tokio::test(start_paused = true)]
async fn layers_are_defaults_then_remote_then_overrides() {
    let transport = transport();
    let flags = identified(&transport)
        .default_flag("plain", false)
        .override_flag("list", "fixed")
        .build()
        .unwrap();
    ready(&flags).await;
    assert_eq!(flags.get_bool("plain"), Some(true), "remote over default");
    assert_eq!(
        flags.get_str("list").as_deref(),
        Some("fixed"),
        "builder override"
    );
    let requests = transport.request_count();

    let saved = flags.set_override("plain", json!({"any": "json"}));
    // Published before the call returned, without a fetch.
    assert_eq!(flags.get("plain"), Some(json!({"any": "json"})));
    saved.await.unwrap();
    drop(flags.set_override("list", 3));
    assert_eq!(
        flags.get_i64("list"),
        Some(3),
        "run-time override over the builder's"
    );
    drop(flags.set_override("newUI", "forced"));
    assert_eq!(flags.get_str("newUI").as_deref(), Some("forced"));
    assert_eq!(
        flags.snapshot().threshold_group("newUI"),
        Some("treatment"),
        "an override keeps the recorded group"
    );
    drop(flags.set_override("only-default", 8));
    assert_eq!(flags.snapshot().overrides().len(), 4);

    flags.remove_override("plain").await.unwrap();
    assert_eq!(
        flags.get_bool("plain"),
        Some(true),
        "the remote value is back"
    );
    flags.remove_override("list").await.unwrap();
    assert_eq!(flags.get_str("list").as_deref(), Some("fixed"));
    flags.clear_overrides().await.unwrap();
    let served: Vec<_> = flags.snapshot().overrides().into_iter().collect();
    assert_eq!(
        served,
        [("list".to_owned(), json!("fixed"))],
        "the builder's stays"
    );
    assert_eq!(flags.get_str("newUI").as_deref(), Some("B"));
    assert_eq!(flags.get_i64("only-default"), Some(7));
    assert_eq!(transport.request_count(), requests, "no override fetched");
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_override_change_wakes_subscribers_once() {
    let flags = started().await;
    let mut rx = flags.subscribe();
    rx.borrow_and_update();
    flags.set_override("plain", false).await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().get_bool("plain"), Some(false));
    // Setting the same value again changes nothing visible.
    flags.set_override("plain", false).await.unwrap();
    assert!(!rx.has_changed().unwrap());
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn overrides_survive_a_restart_and_serve_while_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let transport = transport();
    let first = identified(&transport)
        .store(FileStore::new(&path))
        .build()
        .unwrap();
    ready(&first).await;
    first.set_override("plain", "overridden").await.unwrap();
    first.set_override("temp", 1).await.unwrap();
    first.remove_override("temp").await.unwrap();
    first.shutdown().await;

    // Disabled: no request, no remote flags, but local overrides still apply.
    let offline = ScriptedTransport::new();
    let second = identified(&offline)
        .store(FileStore::new(&path))
        .enabled(false)
        .build()
        .unwrap();
    let mut rx = second.subscribe();
    let s = rx
        .wait_for(|s| s.contains("plain"))
        .await
        .expect("overrides restored")
        .clone();
    assert_eq!(s.get_str("plain").as_deref(), Some("overridden"));
    assert!(!s.contains("temp"));
    assert_eq!(s.source(), Source::Defaults);
    assert_eq!(offline.request_count(), 0);
    second.shutdown().await;

    // Enabled again from the file: remote flags under the restored override.
    let third = identified(&offline)
        .store(FileStore::new(&path))
        .build()
        .unwrap();
    ready(&third).await;
    assert_eq!(third.get_str("plain").as_deref(), Some("overridden"));
    assert_eq!(third.get_str("gated").as_deref(), Some("new"));
    third.clear_overrides().await.unwrap();
    third.shutdown().await;
    let record = FileStore::new(&path).load().unwrap().unwrap();
    assert!(record.overrides.is_empty(), "clearing is persisted too");
}

#[tokio::test(start_paused = true)]
async fn overrides_set_before_the_cache_loads_win_over_the_persisted_ones() {
    let store = MemoryStore::new();
    let mut seeded = CacheRecord::new("other key", 0, None, Default::default());
    seeded.overrides.insert("kept".into(), json!("persisted"));
    seeded
        .overrides
        .insert("replaced".into(), json!("persisted"));
    seeded
        .overrides
        .insert("removed".into(), json!("persisted"));
    store.set(Some(seeded));
    let flags = Flags::builder()
        .transport(ScriptedTransport::new())
        .store(store.clone())
        .enabled(false)
        .build()
        .unwrap();
    // The poller has not run yet: these land before the load.
    drop(flags.set_override("replaced", "early"));
    drop(flags.remove_override("removed"));
    assert_eq!(flags.get_str("replaced").as_deref(), Some("early"));
    let mut rx = flags.subscribe();
    rx.wait_for(|s| s.contains("kept")).await.unwrap();
    assert_eq!(flags.get_str("replaced").as_deref(), Some("early"));
    assert_eq!(flags.get_str("kept").as_deref(), Some("persisted"));
    assert!(flags.get("removed").is_none());
    // The saves queued by those calls persist the merged set.
    flags.set_override("late", true).await.unwrap();
    let record = store.get().unwrap();
    assert_eq!(
        record.overrides,
        *json!({"kept": "persisted", "replaced": "early", "late": true})
            .as_object()
            .unwrap()
    );
    assert_eq!(record.cache_timestamp, 0, "no remote flags yet");
    flags.shutdown().await;
}

/// A store whose saves fail, for the override error path; clones share the save count.
#[derive(Clone, Default)]
struct ReadOnly {
    saves: Arc<Mutex<usize>>,
}

impl Store for ReadOnly {
    fn load(&self) -> Result<Option<CacheRecord>, Error> {
        Ok(None)
    }

    fn save(&self, _: &CacheRecord) -> Result<(), Error> {
        *self.saves.lock().unwrap() += 1;
        Err(Error::Store {
            source: Arc::new(std::io::Error::other("read-only file system")),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_override_save_is_reported_and_the_override_still_holds() {
    let store = ReadOnly::default();
    let flags = Flags::builder()
        .transport(ScriptedTransport::new())
        .store(store.clone())
        .enabled(false)
        .build()
        .unwrap();
    let err = flags.set_override("a", 1).await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert_eq!(flags.get_i64("a"), Some(1));
    assert_eq!(*store.saves.lock().unwrap(), 1);
    flags.shutdown().await;
    let err = flags.set_override("b", 2).await.unwrap_err();
    assert!(matches!(err, Error::Stopped), "{err}");
    assert_eq!(flags.get_i64("b"), Some(2), "in memory even after a stop");
}

#[tokio::test(start_paused = true)]
async fn an_invalid_client_version_is_a_config_error() {
    for bad in ["13.1", "latest", "13.1.0.0", ""] {
        let err = Flags::builder()
            .transport(ScriptedTransport::new())
            .client_version(bad)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("client version"), "{err}");
    }
    for good in ["13.1.0", "v13.1.0-beta.2", " 1.0.0+build "] {
        let flags = Flags::builder()
            .transport(ScriptedTransport::new())
            .client_version(good)
            .enabled(false)
            .build();
        assert!(flags.is_ok(), "{good}");
    }
}

#[tokio::test(start_paused = true)]
async fn ids_stay_out_of_the_cache_and_debug_output() {
    let store = MemoryStore::new();
    let transport = transport();
    let builder = identified(&transport).store(store.clone());
    let debug = format!("{builder:?}");
    let flags = builder.build().unwrap();
    ready(&flags).await;
    flags.shutdown().await;
    let record = serde_json::to_string(&store.get().unwrap()).unwrap();
    for text in [&record, &debug, &format!("{flags:?}")] {
        assert!(!text.contains("user-42"), "{text}");
        assert!(!text.contains("0x1234abcd"), "{text}");
    }
    let sent = transport.requests()[0].url.to_string();
    assert!(sent.contains("user=user-42"), "{sent}");
    assert!(
        !sent.contains("0x1234abcd"),
        "the metrics id is never sent: {sent}"
    );
}

/// Regression: a change queued while a fetch ended was taken by the fetch's drain of the command
/// queue and never saved, so its future never completed.
#[tokio::test(start_paused = true)]
async fn an_override_made_as_a_fetch_ends_is_saved() {
    for delay_ms in [999, 1000, 1001] {
        let transport = ScriptedTransport::new();
        transport.set(ScriptedResponse::json(&body()).delay(Duration::from_millis(1000)));
        let store = MemoryStore::new();
        let flags = identified(&transport)
            .store(store.clone())
            .polling(false)
            .build()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let saved = flags.set_override("x", 1);
        tokio::time::timeout(WAIT, saved)
            .await
            .expect("the save is answered")
            .unwrap();
        assert_eq!(store.get().unwrap().overrides["x"], json!(1), "{delay_ms}");
        flags.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn flag_definitions_follow_override_changes() {
    static PLAIN: flagpole::Flag<bool> = flagpole::Flag::new("plain", false);
    static NEW: flagpole::Flag<i64> = flagpole::Flag::new("brand-new", -1);
    let flags = started().await;
    assert!(flags.value(&PLAIN));
    flags.set_override("plain", false).await.unwrap();
    assert!(!flags.value(&PLAIN));
    assert_eq!(flags.value(&NEW), -1);
    flags.set_override("brand-new", 5).await.unwrap();
    assert_eq!(flags.value(&NEW), 5, "a new name re-resolves the Flag");
    flags.clear_overrides().await.unwrap();
    assert!(flags.value(&PLAIN));
    assert_eq!(flags.value(&NEW), -1);
    flags.shutdown().await;
}
