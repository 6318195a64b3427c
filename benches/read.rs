//! Read path, single thread: flagpole's reads beside a raw `HashMap<String, serde_json::Value>`
//! lookup of the same flag, in the same criterion groups so the numbers print side by side. See
//! BENCHMARKS.md for the results and the targets.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use flagpole::Flag;
use serde_json::Value;

mod common;

const FLAGS: usize = 100;

// Issue 13's baseline: 100 boolean flags named `feature-flag-number-N`, number 42 read.
static BOOL_42: Flag<bool> = Flag::new("feature-flag-number-42", false);
// The mixed set of `common::flags`: 45 is a boolean, 46 an integer, 47 a string, 48 an object,
// 999 does not exist.
static HIT: Flag<bool> = Flag::new("feature-flag-number-045", false);
static INT: Flag<i64> = Flag::new("feature-flag-number-046", 0);
static NUM: Flag<f64> = Flag::new("feature-flag-number-046", 0.0);
static TEXT: Flag<&'static str> = Flag::new("feature-flag-number-047", "");
static WRONG: Flag<bool> = Flag::new("feature-flag-number-048", false);
static MISS: Flag<bool> = Flag::new("feature-flag-number-999", false);
static MISS_TEXT: Flag<&'static str> = Flag::new("feature-flag-number-999", "default");

fn baseline(c: &mut Criterion) {
    let flags = common::flags_of(&common::bools_body(FLAGS));
    let raw = common::bools_raw(FLAGS);
    let snapshot = flags.snapshot();
    let name = String::from("feature-flag-number-42");
    assert_eq!(flags.get_bool(&name), raw[&name].as_bool());
    assert_eq!(Some(flags.value(&BOOL_42)), raw[&name].as_bool());

    let mut group = c.benchmark_group("issue13_100_bool_flags");
    group.bench_function("raw_hashmap", |b| {
        b.iter(|| raw.get(black_box(name.as_str())).and_then(Value::as_bool))
    });
    group.bench_function("flags_value", |b| {
        b.iter(|| flags.value(black_box(&BOOL_42)))
    });
    group.bench_function("flags_get_bool", |b| {
        b.iter(|| flags.get_bool(black_box(&name)))
    });
    group.bench_function("snapshot_value", |b| {
        b.iter(|| snapshot.value(black_box(&BOOL_42)))
    });
    group.bench_function("snapshot_get_bool", |b| {
        b.iter(|| snapshot.get_bool(black_box(&name)))
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let flags = common::flags(FLAGS);
    let raw = common::raw(FLAGS);
    let hit = common::name(45);
    let (int, text, object, miss) = (
        common::name(46),
        common::name(47),
        common::name(48),
        common::name(999),
    );
    assert_eq!(HIT.name(), hit);
    assert_eq!(flags.get_bool(&hit), raw[&hit].as_bool());
    assert_eq!(Some(flags.value(&HIT)), flags.get_bool(&hit));
    assert!(flags.get_bool(&miss).is_none());

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
    group.bench_function("flags_value_hit", |b| {
        b.iter(|| flags.value(black_box(&HIT)))
    });
    group.bench_function("flags_value_missing", |b| {
        b.iter(|| flags.value(black_box(&MISS)))
    });
    group.bench_function("flags_value_wrong_type", |b| {
        b.iter(|| flags.value(black_box(&WRONG)))
    });
    group.finish();

    let mut group = c.benchmark_group("typed_reads_100_flags");
    group.bench_function("raw_hashmap_i64", |b| {
        b.iter(|| raw.get(black_box(int.as_str())).and_then(Value::as_i64))
    });
    group.bench_function("flags_get_i64", |b| {
        b.iter(|| flags.get_i64(black_box(&int)))
    });
    group.bench_function("flags_value_i64", |b| {
        b.iter(|| flags.value(black_box(&INT)))
    });
    group.bench_function("flags_value_f64", |b| {
        b.iter(|| flags.value(black_box(&NUM)))
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
    group.bench_function("flags_value_str_len", |b| {
        b.iter(|| flags.value(black_box(&TEXT)).len())
    });
    group.bench_function("flags_value_str_default_len", |b| {
        b.iter(|| flags.value(black_box(&MISS_TEXT)).len())
    });
    group.finish();

    // Ten flags that must agree: ten handle reads (ten guards) against one owned view.
    let ten: Vec<String> = (0..10).map(|i| common::name(i * 5)).collect();
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

criterion_group!(benches, baseline, read);
criterion_main!(benches);
