//! Read throughput across threads: flagpole with 1 and 2 reader threads, beside an
//! `RwLock<HashMap<String, Value>>` baseline, and with a writer publishing 10,000 snapshots a
//! second. Each sample runs `iters` reads on every reader thread (`iter_custom`, std threads,
//! started together at a barrier); criterion's throughput line (elem/s) is the total read rate.
//! See BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flagpole::{hooks, Flags, Snapshot};
use serde_json::Value;

mod common;

const FLAGS: usize = 100;
/// The writer's publish rate.
const PUBLISHES_PER_SECOND: u64 = 10_000;

/// Runs `read` `iters` times on each of `threads` threads, all released together; the time is
/// from the release to the last thread's end.
fn run_readers<F>(threads: usize, iters: u64, read: F) -> Duration
where
    F: Fn() -> bool + Send + Sync + Clone + 'static,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let read = read.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut on = 0u64;
                for _ in 0..iters {
                    on += u64::from(read());
                }
                black_box(on);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    start.elapsed()
}

/// A thread that publishes `snapshots` in turn at `PUBLISHES_PER_SECOND` until stopped: it
/// publishes whatever is due, then sleeps 50 µs.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, Duration)>,
}

impl Writer {
    fn start(flags: &Flags, snapshots: &[Arc<Snapshot>]) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, flags, snapshots) = (Arc::clone(&stop), flags.clone(), snapshots.to_vec());
            thread::spawn(move || {
                let start = Instant::now();
                let mut published = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start.elapsed().as_micros() as u64 * PUBLISHES_PER_SECOND / 1_000_000;
                    while published < due {
                        let next = &snapshots[published as usize % snapshots.len()];
                        hooks::publish_arc(&flags, Arc::clone(next));
                        published += 1;
                    }
                    thread::sleep(Duration::from_micros(50));
                }
                (published, start.elapsed())
            })
        };
        Writer { stop, handle }
    }

    fn stop(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn threads(c: &mut Criterion) {
    let flags = common::flags(FLAGS);
    let hit = common::name(45);
    assert!(flags.get_bool(&hit).is_some());
    assert_eq!(hit, "feature-flag-number-045");
    static HIT: flagpole::Flag<bool> = flagpole::Flag::new("feature-flag-number-045", false);
    // Two snapshots with the same names and other values, sharing one layout, for the writer.
    let snapshots = vec![
        hooks::publish_body(&flags, &common::body(FLAGS, 1)).unwrap(),
        hooks::publish_body(&flags, &common::body(FLAGS, 2)).unwrap(),
    ];
    let raw = Arc::new(RwLock::new(common::raw(FLAGS)));

    let by_name = {
        let (flags, hit) = (flags.clone(), hit.clone());
        move || flags.get_bool(black_box(&hit)) == Some(true)
    };
    let by_flag = {
        let flags = flags.clone();
        move || flags.value(black_box(&HIT))
    };
    let locked = {
        let (raw, hit) = (Arc::clone(&raw), hit.clone());
        move || {
            let map: std::sync::RwLockReadGuard<'_, HashMap<String, Value>> = raw.read().unwrap();
            map.get(black_box(hit.as_str())).and_then(Value::as_bool) == Some(true)
        }
    };

    let published = Arc::new(AtomicU64::new(0));
    let writer_time = Arc::new(AtomicU64::new(0));
    let mut group = c.benchmark_group("reads_across_threads");
    for readers in [1usize, 2] {
        group.throughput(Throughput::Elements(readers as u64));
        let read = locked.clone();
        group.bench_function(format!("rwlock_hashmap_{readers}_readers"), move |b| {
            b.iter_custom(|iters| run_readers(readers, iters, read.clone()))
        });
        let read = by_name.clone();
        group.bench_function(format!("flagpole_{readers}_readers"), move |b| {
            b.iter_custom(|iters| run_readers(readers, iters, read.clone()))
        });
        let read = by_name.clone();
        let (target, prepared) = (flags.clone(), snapshots.clone());
        let (count, time) = (Arc::clone(&published), Arc::clone(&writer_time));
        group.bench_function(
            format!("flagpole_{readers}_readers_writer_10k_per_s"),
            move |b| {
                b.iter_custom(|iters| {
                    let writer = Writer::start(&target, &prepared);
                    let elapsed = run_readers(readers, iters, read.clone());
                    let (n, t) = writer.stop();
                    count.fetch_add(n, Ordering::Relaxed);
                    time.fetch_add(t.as_micros() as u64, Ordering::Relaxed);
                    elapsed
                })
            },
        );
        let read = by_flag.clone();
        group.bench_function(format!("flagpole_value_{readers}_readers"), move |b| {
            b.iter_custom(|iters| run_readers(readers, iters, read.clone()))
        });
        let read = by_flag.clone();
        let (target_k, prepared_k) = (flags.clone(), snapshots.clone());
        group.bench_function(
            format!("flagpole_value_{readers}_readers_writer_10k_per_s"),
            move |b| {
                b.iter_custom(|iters| {
                    let writer = Writer::start(&target_k, &prepared_k);
                    let elapsed = run_readers(readers, iters, read.clone());
                    writer.stop();
                    elapsed
                })
            },
        );
    }
    group.finish();
    let (n, micros) = (
        published.load(Ordering::Relaxed),
        writer_time.load(Ordering::Relaxed),
    );
    if micros > 0 {
        println!(
            "writer: {n} publishes in {:.3} s = {:.0} per second",
            micros as f64 / 1e6,
            n as f64 * 1e6 / micros as f64
        );
    }
}

criterion_group!(benches, threads);
criterion_main!(benches);
