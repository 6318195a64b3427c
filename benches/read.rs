//! Read path, single thread: flagpole's reads beside a raw `HashMap<String, serde_json::Value>`
//! lookup of the same flag among 100, in the same criterion groups so the numbers print side by
//! side. See BENCHMARKS.md for the results and the targets.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::Value;

mod common;

const FLAGS: usize = 100;

fn read(c: &mut Criterion) {
    let flags = common::flags(FLAGS);
    let raw = common::raw(FLAGS);
    let snapshot = flags.snapshot();
    // Flag 45 is a boolean, 46 an integer, 47 a string, 48 an object; 999 does not exist.
    let hit = common::name(45);
    let (int, text, object, miss) = (
        common::name(46),
        common::name(47),
        common::name(48),
        common::name(999),
    );
    assert_eq!(flags.get_bool(&hit), raw[&hit].as_bool());
    assert!(flags.get_bool(&hit).is_some() && flags.get_bool(&miss).is_none());
    let key = flags.key(&hit);
    let miss_key = flags.key(&miss);
    let object_key = flags.key(&object);
    let text_key = flags.key(&text);
    assert_eq!(flags.get_bool_key(&key), flags.get_bool(&hit));

    let mut group = c.benchmark_group("get_bool_100_flags");
    group.bench_function("raw_hashmap", |b| {
        b.iter(|| raw.get(black_box(hit.as_str())).and_then(Value::as_bool))
    });
    group.bench_function("flags_get_bool", |b| {
        b.iter(|| flags.get_bool(black_box(&hit)))
    });
    group.bench_function("flags_get_bool_key", |b| {
        b.iter(|| flags.get_bool_key(black_box(&key)))
    });
    group.bench_function("snapshot_get_bool", |b| {
        b.iter(|| snapshot.get_bool(black_box(&hit)))
    });
    group.bench_function("snapshot_get_bool_key", |b| {
        b.iter(|| snapshot.get_bool_key(black_box(&key)))
    });
    // What every `Flags` read pays before it looks anything up: the arc-swap guard.
    group.bench_function("flags_guard_only", |b| {
        b.iter(|| flags.with_snapshot(|s| black_box(s).len()))
    });
    group.finish();

    let mut group = c.benchmark_group("miss_and_wrong_type_100_flags");
    group.bench_function("raw_hashmap_hit", |b| {
        b.iter(|| raw.get(black_box(hit.as_str())).and_then(Value::as_bool))
    });
    group.bench_function("raw_hashmap_missing", |b| {
        b.iter(|| raw.get(black_box(miss.as_str())).and_then(Value::as_bool))
    });
    group.bench_function("flags_get_bool_hit", |b| {
        b.iter(|| flags.get_bool(black_box(&hit)))
    });
    group.bench_function("flags_get_bool_missing", |b| {
        b.iter(|| flags.get_bool(black_box(&miss)))
    });
    group.bench_function("flags_get_bool_wrong_type", |b| {
        b.iter(|| flags.get_bool(black_box(&object)))
    });
    group.bench_function("flags_get_bool_key_hit", |b| {
        b.iter(|| flags.get_bool_key(black_box(&key)))
    });
    group.bench_function("flags_get_bool_key_missing", |b| {
        b.iter(|| flags.get_bool_key(black_box(&miss_key)))
    });
    group.bench_function("flags_get_bool_key_wrong_type", |b| {
        b.iter(|| flags.get_bool_key(black_box(&object_key)))
    });
    group.finish();

    let mut group = c.benchmark_group("typed_reads_100_flags");
    group.bench_function("raw_hashmap_i64", |b| {
        b.iter(|| raw.get(black_box(int.as_str())).and_then(Value::as_i64))
    });
    group.bench_function("flags_get_i64", |b| {
        b.iter(|| flags.get_i64(black_box(&int)))
    });
    group.bench_function("flags_get_f64", |b| {
        b.iter(|| flags.get_f64(black_box(&int)))
    });
    group.bench_function("raw_hashmap_str_len", |b| {
        b.iter(|| {
            raw.get(black_box(text.as_str()))
                .and_then(Value::as_str)
                .map(str::len)
        })
    });
    group.bench_function("flags_get_str_len", |b| {
        b.iter(|| flags.get_str(black_box(&text)).map(|s| s.len()))
    });
    group.bench_function("flags_with_str_len", |b| {
        b.iter(|| flags.with_str(black_box(&text), |s| s.map(str::len)))
    });
    group.bench_function("flags_with_str_key_len", |b| {
        b.iter(|| flags.with_str_key(black_box(&text_key), |s| s.map(str::len)))
    });
    group.finish();

    // Ten flags that must agree: ten handle reads (ten guards), one borrowed view, one owned view.
    let ten: Vec<String> = (0..10).map(|i| common::name(i * 5)).collect();
    let ten_keys: Vec<_> = ten.iter().map(|n| flags.key(n)).collect();
    let mut group = c.benchmark_group("ten_bools_one_view");
    group.bench_function("raw_hashmap", |b| {
        b.iter(|| {
            ten.iter()
                .filter(|n| raw.get(black_box(n.as_str())).and_then(Value::as_bool) == Some(true))
                .count()
        })
    });
    group.bench_function("flags_get_bool_x10", |b| {
        b.iter(|| {
            ten.iter()
                .filter(|n| flags.get_bool(black_box(n)) == Some(true))
                .count()
        })
    });
    group.bench_function("flags_with_snapshot", |b| {
        b.iter(|| {
            flags.with_snapshot(|s| {
                ten.iter()
                    .filter(|n| s.get_bool(black_box(n)) == Some(true))
                    .count()
            })
        })
    });
    group.bench_function("flags_with_snapshot_keys", |b| {
        b.iter(|| {
            flags.with_snapshot(|s| {
                ten_keys
                    .iter()
                    .filter(|k| s.get_bool_key(black_box(k)) == Some(true))
                    .count()
            })
        })
    });
    group.bench_function("flags_snapshot_arc", |b| {
        b.iter(|| {
            let s: Arc<_> = flags.snapshot();
            ten.iter()
                .filter(|n| s.get_bool(black_box(n)) == Some(true))
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);
