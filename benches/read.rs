//! Read path: `Flags::get_bool` against a raw `HashMap<String, Value>` lookup of the same flag,
//! in one criterion group so the numbers print side by side.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use flagpole::{Flags, ScriptedResponse, ScriptedTransport};
use serde_json::{json, Map, Value};

const FLAGS: usize = 100;

fn body() -> Map<String, Value> {
    (0..FLAGS)
        .map(|i| {
            let value = match i % 4 {
                0 => json!(i % 3 == 0),
                1 => json!(i),
                2 => json!(format!("variant-{i}")),
                _ => json!({"value": i, "enabled": true}),
            };
            (format!("feature-flag-number-{i:03}"), value)
        })
        .collect()
}

fn read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let flags = runtime.block_on(async {
        let transport = ScriptedTransport::new();
        transport.push(ScriptedResponse::json(&Value::Object(body())));
        let flags = Flags::builder().transport(transport).build().unwrap();
        flags.refresh().await.unwrap();
        flags
    });
    let raw: HashMap<String, Value> = body().into_iter().collect();
    let hit = "feature-flag-number-048";
    let miss = "feature-flag-number-999";
    assert_eq!(flags.get_bool(hit), raw[hit].as_bool());
    let snapshot = flags.snapshot();

    let mut group = c.benchmark_group("get_bool_100_flags");
    group.bench_function("raw_hashmap", |b| {
        b.iter(|| raw.get(black_box(hit)).and_then(Value::as_bool))
    });
    group.bench_function("flags_get_bool", |b| {
        b.iter(|| flags.get_bool(black_box(hit)))
    });
    group.bench_function("snapshot_get_bool", |b| {
        b.iter(|| snapshot.get_bool(black_box(hit)))
    });
    group.bench_function("flags_get_bool_missing", |b| {
        b.iter(|| flags.get_bool(black_box(miss)))
    });
    group.bench_function("flags_get_str", |b| {
        b.iter(|| flags.get_str(black_box("feature-flag-number-002")))
    });
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);
