//! Publish path: parse + build + publish of a 10,000-flag body beside `serde_json::from_slice` of
//! the same body alone, in one criterion group. See BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flagpole::hooks;
use serde_json::Value;

mod common;

const FLAGS: usize = 10_000;

fn publish(c: &mut Criterion) {
    let body = common::body(FLAGS, 0);
    // A second version: the same names, other values (a typical refresh).
    let changed = common::body(FLAGS, 1);
    let flags = common::flags(0);
    hooks::publish_body(&flags, &body).unwrap();
    assert_eq!(flags.snapshot().len(), FLAGS);

    let mut group = c.benchmark_group("publish_10000_flags");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(20);
    group.bench_function("serde_json_from_slice", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
    });
    group.bench_function("flagpole_parse", |b| {
        b.iter(|| hooks::parse_only(black_box(&body)).unwrap())
    });
    group.bench_function("flagpole_parse_build", |b| {
        b.iter(|| hooks::build_snapshot(black_box(&body)).unwrap())
    });
    let mut version = 0u64;
    group.bench_function("flagpole_parse_build_publish", |b| {
        b.iter(|| {
            version += 1;
            let body = if version.is_multiple_of(2) {
                &body
            } else {
                &changed
            };
            hooks::publish_body(&flags, black_box(body)).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
