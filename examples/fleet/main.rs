//! What a fleet of flagpole clients does to the API: real `Flags` handles and pollers, thousands
//! of them in one process on tokio's paused clock, all talking to one in-memory server that counts
//! requests per time bucket and answers with ETags (304 when the flags did not change).
//!
//! ```text
//! cargo run --release --example fleet -- [--clients N] [--interval 15m] [--plot DIR] [--seed N]
//! cargo run --release --example fleet --features stream -- --stream [--clients N] ...
//! ```
//!
//! Scenarios (buckets are 1% of the interval; "mean" is clients / interval per bucket):
//! - cold start: every client starts within 1 s with no cache; 8 intervals; peak/mean over
//!   intervals 3 to 8, and the share of 304s among the answers there (flags unchanged);
//! - change: then the server changes a flag: seconds until 99% of clients serve it;
//! - outage: from that steady state the API answers 503 for 30 minutes; peak/mean over the outage
//!   and the interval after it, and seconds from the recovery until 99% of clients are `Fresh`;
//! - warm start: every client restarts within 1 s with a fresh cache saved within the same second
//!   (a redeploy); peak/mean over intervals 1 to 8.
//!
//! A human table, then as the last line one JSON object. With 10,000 clients or more the goals of
//! FLEET.md are checked and the exit code is 1 when one is missed.
//!
//! `--stream` (feature `stream`): the clients also follow the server's change stream
//! (`.stream(true)`; the server's side is in `stream.rs`), and the change reaches them at once
//! instead of at their next refresh; the table and the JSON line add what that costs.

#[cfg(feature = "stream")]
mod stream;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flagpole::{
    BoxFuture, CacheRecord, Error, Flags, MemoryStore, Request, Response, Status, Transport,
};
use http::header::{HeaderMap, HeaderValue, ETAG, IF_NONE_MATCH};
use http::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;

/// Below this many clients a bucket holds too few requests for the goals to mean anything.
const GOAL_MIN_CLIENTS: usize = 10_000;
const COLD_START_GOAL: f64 = 1.5;
const WARM_START_GOAL: f64 = 1.5;
const OUTAGE_GOAL: f64 = 2.0;
const SHARE_304_GOAL: f64 = 0.9;
const OUTAGE: Duration = Duration::from_secs(30 * 60);
const FLAG: &str = "fleet-version";

struct Args {
    clients: usize,
    interval: Duration,
    plot: Option<PathBuf>,
    seed: u64,
    /// The clients follow the change stream.
    stream: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: fleet [--clients N] [--interval DURATION (15m, 900s, 1h)] [--plot DIR] [--seed N] [--stream]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        clients: 10_000,
        interval: Duration::from_secs(15 * 60),
        plot: None,
        seed: 14,
        stream: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--stream" {
            if !cfg!(feature = "stream") {
                eprintln!("--stream needs the `stream` feature: cargo run --release --example fleet --features stream -- --stream");
                std::process::exit(2);
            }
            args.stream = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--clients" => args.clients = value.parse().unwrap_or_else(|_| usage()),
            "--interval" => args.interval = parse_duration(&value).unwrap_or_else(|| usage()),
            "--plot" => args.plot = Some(PathBuf::from(value)),
            "--seed" => args.seed = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if args.clients == 0 || args.interval < Duration::from_secs(100) {
        eprintln!("--clients must be above 0 and --interval at least 100s");
        usage();
    }
    args
}

/// `900s`, `15m`, `1h`, `1d` (a whole number and one unit).
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

// ---------------------------------------------------------------------------------------------
// The server: one for the whole fleet.

/// Requests in one bucket, by answer.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    ok: u32,
    not_modified: u32,
    failed: u32,
}

impl Counts {
    fn total(&self) -> u32 {
        self.ok + self.not_modified + self.failed
    }
}

struct ServerState {
    etag: HeaderValue,
    headers: HeaderMap,
    /// Serialised once per version; each 200 clones the bytes.
    body: Vec<u8>,
    down: bool,
    buckets: Vec<Counts>,
    /// Every request so far.
    requests: u64,
    #[cfg(feature = "stream")]
    streams: stream::Streams,
}

struct Server {
    t0: Instant,
    bucket: Duration,
    state: Mutex<ServerState>,
}

impl Server {
    fn new(t0: Instant, interval: Duration) -> Arc<Self> {
        let server = Server {
            t0,
            bucket: interval / 100,
            state: Mutex::new(ServerState {
                etag: HeaderValue::from_static("\"v0\""),
                headers: HeaderMap::new(),
                body: Vec::new(),
                down: false,
                buckets: Vec::new(),
                requests: 0,
                #[cfg(feature = "stream")]
                streams: stream::Streams::default(),
            }),
        };
        server.set_version(1);
        Arc::new(server)
    }

    fn set_version(&self, version: u64) {
        let body = serde_json::to_vec(&serde_json::json!([{ FLAG: version }, {"beta": true}]))
            .expect("a JSON body");
        let etag = HeaderValue::from_str(&format!("\"v{version}\"")).expect("an etag");
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, etag.clone());
        let mut state = self.state.lock().unwrap();
        state.body = body;
        state.etag = etag;
        state.headers = headers;
        #[cfg(feature = "stream")]
        {
            let event = stream::event(&state.etag);
            state.streams.send(&event);
        }
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn buckets(&self) -> Vec<Counts> {
        self.state.lock().unwrap().buckets.clone()
    }

    fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// The bucket that `at` falls in.
    fn bucket_of(&self, at: Instant) -> usize {
        (at.duration_since(self.t0).as_nanos() / self.bucket.as_nanos()) as usize
    }

    fn answer(&self, request: &Request) -> Response {
        let b = self.bucket_of(Instant::now());
        let mut state = self.state.lock().unwrap();
        if state.buckets.len() <= b {
            state.buckets.resize(b + 1, Counts::default());
        }
        state.requests += 1;
        if state.down {
            state.buckets[b].failed += 1;
            Response::new(
                StatusCode::SERVICE_UNAVAILABLE,
                HeaderMap::new(),
                Vec::new(),
            )
        } else if request.headers.get(IF_NONE_MATCH) == Some(&state.etag) {
            state.buckets[b].not_modified += 1;
            Response::new(StatusCode::NOT_MODIFIED, HeaderMap::new(), Vec::new())
        } else {
            state.buckets[b].ok += 1;
            Response::new(StatusCode::OK, state.headers.clone(), state.body.clone())
        }
    }
}

#[derive(Clone)]
struct Endpoint(Arc<Server>);

impl Transport for Endpoint {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let response = self.0.answer(&request);
        Box::pin(std::future::ready(Ok(response)))
    }

    #[cfg(feature = "stream")]
    fn open(&self, _: Request) -> BoxFuture<'static, Result<flagpole::StreamResponse, Error>> {
        let response = self.0.open();
        Box::pin(std::future::ready(Ok(response)))
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet.

/// A wall clock that moves with tokio's paused clock.
#[derive(Clone, Copy)]
struct SimClock {
    base: SystemTime,
    t0: Instant,
}

impl SimClock {
    fn new() -> Self {
        SimClock {
            base: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            t0: Instant::now(),
        }
    }

    fn now(&self) -> SystemTime {
        self.base + self.t0.elapsed()
    }

    fn now_ms(&self) -> u64 {
        self.now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    }
}

fn client(
    server: &Arc<Server>,
    clock: SimClock,
    interval: Duration,
    store: Option<MemoryStore>,
    stream: bool,
) -> Flags {
    let mut builder = Flags::builder()
        .transport(Endpoint(Arc::clone(server)))
        .fetch_interval(interval)
        .wall_clock(move || clock.now());
    if let Some(store) = store {
        builder = builder.store(store);
    }
    #[cfg(feature = "stream")]
    {
        builder = builder.stream(stream);
    }
    #[cfg(not(feature = "stream"))]
    let _ = stream;
    builder.build().expect("a valid configuration")
}

/// Starts `n` clients at random moments within one second; `store` gives each its store.
async fn start_fleet(n: usize, mut make: impl FnMut() -> Flags) -> Vec<Flags> {
    let start = Instant::now();
    let mut offsets: Vec<u64> = (0..n).map(|_| fastrand::u64(0..1_000_000)).collect();
    offsets.sort_unstable();
    let mut fleet = Vec::with_capacity(n);
    for offset in offsets {
        tokio::time::sleep_until(start + Duration::from_micros(offset)).await;
        fleet.push(make());
    }
    fleet
}

/// Seconds from now until `done(i)` holds for 99% of the fleet, checked every `step`; `None`
/// when that takes longer than `limit`.
async fn until_99(
    n: usize,
    step: Duration,
    limit: Duration,
    mut done: impl FnMut(usize) -> bool,
) -> Option<f64> {
    let start = Instant::now();
    let target = n - n / 100;
    let mut waiting: Vec<usize> = (0..n).collect();
    loop {
        waiting.retain(|&i| !done(i));
        if n - waiting.len() >= target {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(step).await;
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// The largest bucket in `range` over the mean (clients per bucket).
fn peak_over_mean(buckets: &[Counts], range: std::ops::Range<usize>, clients: usize) -> f64 {
    let peak = buckets
        .get(range.start.min(buckets.len())..range.end.min(buckets.len()))
        .unwrap_or_default()
        .iter()
        .map(Counts::total)
        .max()
        .unwrap_or(0);
    f64::from(peak) / (clients as f64 / 100.0)
}

/// Requests per bucket from `from` on, for a plot; `shade` marks the outage (bucket indices).
struct Curve {
    name: &'static str,
    title: String,
    counts: Vec<u32>,
    shade: Option<(usize, usize)>,
}

struct ColdResult {
    peak_over_mean: f64,
    share_304: f64,
    change_99_s: Option<f64>,
    outage_peak_over_mean: f64,
    recovered_99_s: Option<f64>,
    requests_per_client_steady: f64,
    outage_requests: u64,
    /// What the change cost: the requests from the change until 99% served it, and peak/mean
    /// over the interval after it.
    change_requests: u64,
    after_change_peak_over_mean: f64,
    requests_total: u64,
    stream_opens: u64,
    curves: Vec<Curve>,
}

/// Cold start, steady state, a flag change, an outage, all on one fleet.
fn cold_start_then_change_then_outage(args: &Args) -> ColdResult {
    let (n, interval, streaming) = (args.clients, args.interval, args.stream);
    paused_runtime().block_on(async move {
        let clock = SimClock::new();
        let t0 = Instant::now();
        let server = Server::new(t0, interval);
        #[cfg(feature = "stream")]
        if streaming {
            stream::keep_alives(&server);
        }
        let fleet = start_fleet(n, || client(&server, clock, interval, None, streaming)).await;
        tokio::time::sleep_until(t0 + interval * 8).await;
        let buckets = server.buckets();
        let steady = &buckets[200..800.min(buckets.len())];
        let (ok, nm) = steady.iter().fold((0u64, 0u64), |(o, m), c| {
            (o + u64::from(c.ok), m + u64::from(c.not_modified))
        });
        let share_304 = nm as f64 / (ok + nm).max(1) as f64;
        let requests_per_client_steady = (ok + nm) as f64 / n as f64 / 6.0;
        let cold = peak_over_mean(&buckets, 200..800, n);
        if std::env::var_os("FLEET_DEBUG").is_some() {
            let mut top: Vec<(u32, usize)> = (200..800).map(|i| (buckets[i].total(), i)).collect();
            top.sort_unstable();
            eprintln!("cold: top buckets {:?}", &top[top.len() - 8..]);
        }
        let cold_curve = Curve {
            name: "cold-start",
            title: format!("cold start: {n} clients, interval {}s", interval.as_secs()),
            counts: buckets[..800.min(buckets.len())]
                .iter()
                .map(Counts::total)
                .collect(),
            shade: None,
        };

        // A flag changes.
        let before_change = server.requests();
        let changed_at = Instant::now();
        server.set_version(2);
        let step = (interval / 900).max(Duration::from_secs(1));
        // Streaming clients take it within milliseconds (of tokio's paused clock): look closer.
        let change_step = if streaming {
            Duration::from_millis(10)
        } else {
            step
        };
        let change_99_s = until_99(n, change_step, interval * 3, |i| {
            fleet[i].get_i64(FLAG) == Some(2)
        })
        .await;
        let change_requests = server.requests() - before_change;

        // An outage, from the next whole interval on.
        let now_interval = Instant::now().duration_since(t0).as_secs_f64() / interval.as_secs_f64();
        let outage_start = t0 + interval * (now_interval.ceil() as u32 + 1);
        tokio::time::sleep_until(outage_start).await;
        server.set_down(true);
        tokio::time::sleep(OUTAGE).await;
        server.set_down(false);
        let recovery = Instant::now();
        let statuses: Vec<watch::Receiver<Status>> =
            fleet.iter().map(Flags::status_receiver).collect();
        let recovered_99_s = until_99(n, step, interval * 3, |i| {
            matches!(*statuses[i].borrow(), Status::Fresh { .. })
        })
        .await;
        let end = recovery + interval;
        tokio::time::sleep_until(end.max(Instant::now())).await;
        let buckets = server.buckets();
        let after_change = server.bucket_of(changed_at) + 1;
        let after_change_peak_over_mean =
            peak_over_mean(&buckets, after_change..after_change + 100, n);
        let requests_total = server.requests();
        #[cfg(feature = "stream")]
        let stream_opens = server.opens();
        #[cfg(not(feature = "stream"))]
        let stream_opens = 0;
        let (from, to) = (
            server.bucket_of(outage_start),
            server.bucket_of(recovery + interval),
        );
        let outage = peak_over_mean(&buckets, from..to, n);
        let outage_requests: u64 = buckets[from..server.bucket_of(recovery).min(buckets.len())]
            .iter()
            .map(|c| u64::from(c.total()))
            .sum();
        let shown = from.saturating_sub(100)..to.min(buckets.len());
        let outage_curve = Curve {
            name: "outage",
            title: format!(
                "outage (503 for {} min): {n} clients, interval {}s",
                OUTAGE.as_secs() / 60,
                interval.as_secs()
            ),
            counts: buckets[shown.clone()].iter().map(Counts::total).collect(),
            shade: Some((from - shown.start, server.bucket_of(recovery) - shown.start)),
        };
        drop(fleet);
        ColdResult {
            peak_over_mean: cold,
            share_304,
            change_99_s,
            outage_peak_over_mean: outage,
            recovered_99_s,
            requests_per_client_steady,
            outage_requests,
            change_requests,
            after_change_peak_over_mean,
            requests_total,
            stream_opens,
            curves: vec![cold_curve, outage_curve],
        }
    })
}

/// Every client restarts within one second with a fresh cache saved within the same second.
fn warm_start(args: &Args) -> (f64, Curve) {
    let (n, interval, streaming) = (args.clients, args.interval, args.stream);
    paused_runtime().block_on(async move {
        let clock = SimClock::new();
        // One client of the previous deployment fetches: its record is the cache everyone saved.
        let seed_server = Server::new(Instant::now(), interval);
        let seed_store = MemoryStore::new();
        let seed = client(
            &seed_server,
            clock,
            interval,
            Some(seed_store.clone()),
            false,
        );
        let mut status = seed.status_receiver();
        status
            .wait_for(|s| matches!(s, Status::Fresh { .. }))
            .await
            .expect("the seed client fetches");
        let record: CacheRecord = seed_store.get().expect("a saved record");
        seed.shutdown().await;

        let t0 = Instant::now();
        let server = Server::new(t0, interval);
        #[cfg(feature = "stream")]
        if streaming {
            stream::keep_alives(&server);
        }
        let saved_at = clock.now_ms();
        let fleet = start_fleet(n, || {
            let store = MemoryStore::new();
            let mut record = record.clone();
            record.cache_timestamp = saved_at - fastrand::u64(0..1000);
            store.set(Some(record));
            client(&server, clock, interval, Some(store), streaming)
        })
        .await;
        tokio::time::sleep_until(t0 + interval * 8).await;
        let buckets = server.buckets();
        drop(fleet);
        let curve = Curve {
            name: "warm-start",
            title: format!(
                "warm start (fresh caches): {n} clients, interval {}s",
                interval.as_secs()
            ),
            counts: buckets[..800.min(buckets.len())]
                .iter()
                .map(Counts::total)
                .collect(),
            shade: None,
        };
        (peak_over_mean(&buckets, 0..800, n), curve)
    })
}

fn plot(dir: &Path, curve: &Curve, clients: usize) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}.svg", curve.name));
    let root = SVGBackend::new(&path, (720, 300)).into_drawing_area();
    root.fill(&WHITE)?;
    let mean = clients as f64 / 100.0;
    let len = curve.counts.len().max(1);
    let top = curve.counts.iter().copied().max().unwrap_or(0) as f64;
    let top = (top.max(mean * 2.0) * 1.05).min(mean * 12.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(&curve.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..len as f64 / 100.0, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("time (intervals)")
        .y_desc("requests per 1% bucket")
        .draw()?;
    if let Some((from, to)) = curve.shade {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(from as f64 / 100.0, 0.0), (to as f64 / 100.0, top)],
            RGBColor(255, 200, 200).filled(),
        )))?;
    }
    chart.draw_series(LineSeries::new(
        curve
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| (i as f64 / 100.0, f64::from(*c).min(top))),
        &BLUE,
    ))?;
    chart.draw_series(LineSeries::new(
        [(0.0, mean), (len as f64 / 100.0, mean)],
        BLACK.stroke_width(1),
    ))?;
    root.present()?;
    Ok(())
}

fn fmt_opt(value: Option<f64>) -> String {
    value.map_or("null".to_owned(), |v| format!("{v:.0}"))
}

fn main() {
    let args = parse_args();
    fastrand::seed(args.seed);
    let started = std::time::Instant::now();
    let cold = cold_start_then_change_then_outage(&args);
    let (warm, warm_curve) = warm_start(&args);
    let elapsed = started.elapsed();
    if std::env::var_os("FLEET_DEBUG").is_some() {
        eprintln!(
            "change: {} requests until 99% served it, peak/mean {:.2} over the interval after it; {} requests and {} stream opens in the cold run",
            cold.change_requests,
            cold.after_change_peak_over_mean,
            cold.requests_total,
            cold.stream_opens
        );
    }

    let checked = args.clients >= GOAL_MIN_CLIENTS;
    let interval_s = args.interval.as_secs();
    let mut missed = Vec::new();
    let mut row = |name: &str, value: String, goal: Option<(&str, bool)>| {
        let verdict = match goal {
            Some((_, true)) => "ok",
            Some((_, false)) if checked => "MISSED",
            Some(_) => "(not checked)",
            None => "",
        };
        if verdict == "MISSED" {
            missed.push(name.to_owned());
        }
        println!(
            "| {name:<28} | {value:>10} | {:<12} | {verdict:<13} |",
            goal.map_or("", |g| g.0)
        );
    };
    println!(
        "fleet: {} clients, fetch interval {}s, seed {} ({:.1}s)",
        args.clients,
        interval_s,
        args.seed,
        elapsed.as_secs_f64()
    );
    println!(
        "| {:<28} | {:>10} | {:<12} | {:<13} |",
        "measure", "value", "goal", ""
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(30),
        "-".repeat(12),
        "-".repeat(14),
        "-".repeat(15)
    );
    row(
        "cold start peak/mean",
        format!("{:.2}", cold.peak_over_mean),
        Some(("<= 1.5", cold.peak_over_mean <= COLD_START_GOAL)),
    );
    row(
        "warm start peak/mean",
        format!("{warm:.2}"),
        Some(("<= 1.5", warm <= WARM_START_GOAL)),
    );
    row(
        "outage peak/mean",
        format!("{:.2}", cold.outage_peak_over_mean),
        Some(("<= 2.0", cold.outage_peak_over_mean <= OUTAGE_GOAL)),
    );
    row(
        "recovered 99% (s)",
        fmt_opt(cold.recovered_99_s),
        Some((
            "<= interval",
            cold.recovered_99_s.is_some_and(|s| s <= interval_s as f64),
        )),
    );
    row(
        "share of 304 (steady)",
        format!("{:.3}", cold.share_304),
        Some((">= 0.9", cold.share_304 >= SHARE_304_GOAL)),
    );
    if args.stream {
        row(
            "change served by 99% (s)",
            cold.change_99_s
                .map_or("null".to_owned(), |s| format!("{s:.3}")),
            Some(("< 1", cold.change_99_s.is_some_and(|s| s < 1.0))),
        );
    } else {
        row("change served by 99% (s)", fmt_opt(cold.change_99_s), None);
    }
    row(
        "requests/client/interval",
        format!("{:.3}", cold.requests_per_client_steady),
        None,
    );
    row(
        "requests during the outage",
        format!("{}", cold.outage_requests),
        None,
    );
    #[cfg(feature = "stream")]
    let stream_json = args.stream.then(|| stream::report(&cold, args.clients));
    #[cfg(feature = "stream")]
    for (name, value) in stream_json.iter().flat_map(|r| r.rows.clone()) {
        row(name, value, None);
    }
    #[cfg(feature = "stream")]
    let stream_json = stream_json.map(|r| r.json).unwrap_or_default();
    #[cfg(not(feature = "stream"))]
    let stream_json = String::new();
    if let Some(dir) = &args.plot {
        for curve in cold.curves.iter().chain(std::iter::once(&warm_curve)) {
            if let Err(error) = plot(dir, curve, args.clients) {
                eprintln!("could not plot {}: {error}", curve.name);
                std::process::exit(1);
            }
        }
        println!("plots written to {}", dir.display());
    }
    if !checked {
        println!(
            "goals not checked: fewer than {GOAL_MIN_CLIENTS} clients (per-bucket noise alone reaches the goals)"
        );
    } else if !missed.is_empty() {
        println!("goals missed: {}", missed.join(", "));
    }
    println!(
        "{{\"clients\":{},\"interval_s\":{},\"cold_start_peak_over_mean\":{:.3},\"warm_start_peak_over_mean\":{:.3},\"outage_peak_over_mean\":{:.3},\"recovered_99_s\":{},\"share_304\":{:.4},\"change_99_s\":{}{stream_json}}}",
        args.clients,
        interval_s,
        cold.peak_over_mean,
        warm,
        cold.outage_peak_over_mean,
        fmt_opt(cold.recovered_99_s),
        cold.share_304,
        fmt_opt(cold.change_99_s),
    );
    if checked && !missed.is_empty() {
        std::process::exit(1);
    }
}
