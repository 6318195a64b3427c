//! `Flag<T>` definitions (issue 13): values of every type, defaults, wrong types, the remembered
//! slot across refreshes and handles, and the parity of `Flags` and `Snapshot` reads.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use flagpole::{hooks, Flag, Flags, ScriptedResponse, ScriptedTransport, Snapshot};
use serde_json::{json, Value};

static ON: Flag<bool> = Flag::new("on", false);
static N: Flag<i64> = Flag::new("n", -1);
static X: Flag<f64> = Flag::new("x", 0.5);
static S: Flag<&'static str> = Flag::new("s", "fallback");

/// A handle serving `body` (the wire format) once refreshed, and its transport.
async fn serving(body: Value) -> (Flags, ScriptedTransport) {
    let transport = ScriptedTransport::new();
    transport.push(ScriptedResponse::json(&body));
    let flags = Flags::builder()
        .transport(transport.clone())
        .build()
        .unwrap();
    flags.refresh().await.unwrap();
    (flags, transport)
}

async fn refresh_with(flags: &Flags, transport: &ScriptedTransport, body: Value) {
    transport.push(ScriptedResponse::json(&body));
    flags.refresh().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn every_type_served_missing_and_wrong() {
    let (flags, transport) =
        serving(json!([{"on": true}, {"n": 42}, {"x": 2.5}, {"s": "text"}])).await;
    assert!(flags.value(&ON));
    assert_eq!(flags.value(&N), 42);
    assert_eq!(flags.value(&X), 2.5);
    assert_eq!(&*flags.value(&S), "text");
    let snapshot = flags.snapshot();
    assert!(snapshot.value(&ON));
    assert_eq!(snapshot.value(&N), 42);
    assert_eq!(snapshot.value(&X), 2.5);
    assert_eq!(&*snapshot.value(&S), "text");
    // The string is the snapshot's, not a copy.
    assert!(Arc::ptr_eq(
        &flags.value(&S),
        &snapshot.get_str("s").unwrap()
    ));

    // Missing: the Flag's default.
    refresh_with(&flags, &transport, json!({})).await;
    assert!(!flags.value(&ON));
    assert_eq!(flags.value(&N), -1);
    assert_eq!(flags.value(&X), 0.5);
    assert_eq!(&*flags.value(&S), "fallback");
    assert!(
        Arc::ptr_eq(&flags.value(&S), &flags.value(&S)),
        "one allocation of the default"
    );

    // Wrong types: the Flag's default too; an integer is a number for a Flag<f64>.
    refresh_with(
        &flags,
        &transport,
        json!({"on": "yes", "n": 2.5, "x": 3, "s": 7}),
    )
    .await;
    assert!(!flags.value(&ON));
    assert_eq!(flags.value(&N), -1);
    assert_eq!(flags.value(&X), 3.0);
    assert_eq!(&*flags.value(&S), "fallback");
    assert_eq!(flags.snapshot().value(&N), -1);
}

#[tokio::test(start_paused = true)]
async fn builder_defaults_are_served_values() {
    static BETA: Flag<bool> = Flag::new("beta", false);
    static LIMIT: Flag<i64> = Flag::new("limit", 1);
    let flags = Flags::builder()
        .default_flag("beta", true)
        .default_flag("limit", "not a number")
        .enabled(false)
        .build()
        .unwrap();
    assert!(
        flags.value(&BETA),
        "the builder's default wins over the Flag's"
    );
    assert_eq!(
        flags.value(&LIMIT),
        1,
        "a builder default of another type does not"
    );
    assert_eq!(flags.get_bool("beta"), Some(true));
}

#[tokio::test(start_paused = true)]
async fn the_slot_survives_refreshes_and_follows_name_changes() {
    static A: Flag<i64> = Flag::new("a", 0);
    static B: Flag<&'static str> = Flag::new("b", "none");
    let (flags, transport) = serving(json!({"a": 1, "b": "one"})).await;
    for v in 2..6 {
        refresh_with(&flags, &transport, json!({"a": v, "b": format!("v{v}")})).await;
        assert_eq!(flags.value(&A), v);
        assert_eq!(&*flags.value(&B), format!("v{v}"));
    }
    // New names, another order: re-resolved.
    refresh_with(&flags, &transport, json!({"z": 0, "b": "moved", "a": 10})).await;
    assert_eq!(flags.value(&A), 10);
    assert_eq!(flags.get_i64("a"), Some(10));
    assert_eq!(&*flags.value(&B), "moved");
    // Gone, then back.
    refresh_with(&flags, &transport, json!({"z": 0})).await;
    assert_eq!(flags.value(&A), 0);
    assert_eq!(flags.get_i64("a"), None);
    refresh_with(&flags, &transport, json!({"z": 0, "a": 11})).await;
    assert_eq!(flags.value(&A), 11);
    assert_eq!(flags.get_i64("a"), Some(11));
    // Overrides publish without a fetch, with or without a new name.
    flags.set_override("a", 12).await.unwrap();
    assert_eq!(flags.value(&A), 12);
    flags.set_override("new", 1).await.unwrap();
    assert_eq!(flags.value(&A), 12);
    flags.clear_overrides().await.unwrap();
    assert_eq!(flags.value(&A), 11);
}

#[tokio::test(start_paused = true)]
async fn one_flag_read_through_handles_with_different_layouts() {
    static SHARED: Flag<i64> = Flag::new("shared", -1);
    let (first, _t1) = serving(json!([{"x": 0}, {"shared": 1}])).await;
    let (second, _t2) = serving(json!([{"shared": 2}, {"y": 0}, {"z": 0}])).await;
    let (third, _t3) = serving(json!([{"y": 0}])).await;
    for _ in 0..100 {
        assert_eq!(first.value(&SHARED), 1);
        assert_eq!(second.value(&SHARED), 2);
        assert_eq!(third.value(&SHARED), -1);
        assert_eq!(second.snapshot().value(&SHARED), 2);
        assert_eq!(first.snapshot().value(&SHARED), 1);
        // By name: three layouts in turn through a thread's cache of two.
        assert_eq!(first.get_i64("shared"), Some(1));
        assert_eq!(second.get_i64("shared"), Some(2));
        assert_eq!(third.get_i64("shared"), None);
        assert_eq!(second.get_f64("shared"), Some(2.0));
        assert_eq!(first.get_bool("shared"), None);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_type_is_logged_once_per_flag_at_debug() {
    static WRONG: Flag<bool> = Flag::new("s", false);
    static OTHER: Flag<i64> = Flag::new("s", 0);
    let logs = support::Captured::default();
    let _guard = logs.install();
    let (flags, _transport) = serving(json!({"s": "text"})).await;
    for _ in 0..10 {
        assert!(!flags.value(&WRONG));
        assert!(!flags.snapshot().value(&WRONG));
    }
    assert_eq!(flags.value(&OTHER), 0);
    let line = "served with another type than its definition";
    assert_eq!(logs.count("DEBUG", line), 2, "{}", logs.text());
    assert_eq!(logs.count("DEBUG", "flag=\"s\""), 2, "{}", logs.text());
}

/// Every by-name read, on the handle and on its snapshot, for one name.
fn by_name(flags: &Flags, snapshot: &Snapshot, name: &str) {
    assert_eq!(flags.get_bool(name), snapshot.get_bool(name), "{name}");
    assert_eq!(flags.get_i64(name), snapshot.get_i64(name), "{name}");
    assert_eq!(
        flags.get_f64(name).map(f64::to_bits),
        snapshot.get_f64(name).map(f64::to_bits),
        "{name}"
    );
    assert_eq!(flags.get_str(name), snapshot.get_str(name), "{name}");
    assert_eq!(flags.get(name), snapshot.get(name), "{name}");
    assert_eq!(
        snapshot.get_ref(name),
        snapshot.get(name).as_ref(),
        "{name}"
    );
    assert_eq!(
        flags.get_as::<Vec<i64>>(name),
        snapshot.get_as::<Vec<i64>>(name),
        "{name}"
    );
    assert_eq!(flags.get_as::<Value>(name), snapshot.get(name), "{name}");
}

#[tokio::test(start_paused = true)]
async fn flags_and_snapshot_reads_agree() {
    let (flags, _transport) = serving(json!([
        {"b": true}, {"i": 7}, {"big": 18446744073709551615u64}, {"f": 2.5}, {"s": "on"},
        {"l": [1, 2]}, {"o": {"k": 1}}, {"null": null}
    ]))
    .await;
    let snapshot = flags.snapshot();
    for name in ["b", "i", "big", "f", "s", "l", "o", "null", "missing"] {
        by_name(&flags, &snapshot, name);
    }
    assert_eq!(flags.snapshot().names(), snapshot.names());
    for (name, _) in snapshot.iter() {
        assert!(flags.snapshot().names().iter().any(|n| n == name));
    }
    assert_eq!(flags.value(&ON), snapshot.value(&ON));
    assert_eq!(flags.value(&S), snapshot.value(&S));
}

#[test]
fn readers_never_see_a_value_that_was_not_published() {
    static V: Flag<i64> = Flag::new("v", -1);
    static ODD: Flag<bool> = Flag::new("odd", false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (flags, _transport) = runtime.block_on(serving(json!({"v": 0, "odd": false})));
    // Two layouts (another name in one) so readers also cross re-resolutions.
    let versions: Vec<Arc<Snapshot>> = (0..4)
        .map(|v| {
            let body = if v % 2 == 0 {
                json!({"v": v, "odd": false})
            } else {
                json!({"odd": true, "v": v, "extra": 1})
            };
            let snapshot = hooks::build_snapshot(&serde_json::to_vec(&body).unwrap()).unwrap();
            Arc::new(snapshot)
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (flags, stop) = (flags.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) || reads < 1000 {
                    let v = flags.value(&V);
                    assert!((0..4).contains(&v), "{v}");
                    let by_name = flags.get_i64("v");
                    assert!(matches!(by_name, Some(0..=3)), "{by_name:?}");
                    assert!(flags.get_bool("odd").is_some());
                    assert_eq!(flags.get_bool("v"), None);
                    let extra = flags.get_i64("extra");
                    assert!(matches!(extra, None | Some(1)), "{extra:?}");
                    let view = flags.snapshot();
                    assert_eq!(view.value(&ODD), view.value(&V) % 2 == 1);
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 0..2000 {
        hooks::publish_arc(&flags, Arc::clone(&versions[round % 4]));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() >= 1000);
    }
    hooks::publish_arc(&flags, Arc::clone(&versions[3]));
    assert_eq!(flags.value(&V), 3);
    assert!(flags.value(&ODD));
}
