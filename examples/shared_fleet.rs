//! What shared mode (feature `redis`) does to the API and how fast a change reaches a fleet:
//! real `Flags` handles in one process, each with its own `RedisStore` (its own connections), a
//! real `redis-server` and a fake flag API that both run for this example alone, in real time.
//!
//! ```text
//! cargo run --release --example shared_fleet --features redis
//! ```
//!
//! For 20 and then 200 handles (interval 2 s, 6 intervals each): every handle starts with no
//! cache; the API's answer changes once per interval, halfway between the fleet's refreshes.
//! - requests per interval: the API requests in the 6 intervals from the start (the cold start
//!   included), divided by 6; the cold start's own requests are reported too;
//! - propagation: for each change, the wall-clock time at which each handle's snapshot showed
//!   it (from `subscribe()`), minus the record's `cache_timestamp` as the followers see it in
//!   their snapshots (the leader stamps it just before it writes the record); p50, p99 and max
//!   over every handle and change.
//!
//! One JSON line per fleet size (with Redis's own count of the commands it ran, per handle and
//! interval); the exit code is 1 when a goal is missed (FLEET.md). `SHARED_FLEET_DEBUG=1` also
//! prints, on stderr, the time of every API request and every change each handle saw.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flagpole::{Flags, RedisStore, Source};
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

const INTERVAL: Duration = Duration::from_secs(2);
const INTERVALS: u32 = 6;
const FLAG: &str = "a";
/// Goals: requests per interval for every fleet size (one request more than the fleet's own
/// schedule in the 6 intervals misses it), p99 propagation per size (ms). 200 handles on 2 cores
/// measured a p99 of 11 to 22 ms: 250 ms leaves room for a slow CI machine and is still far
/// below what a change takes without the channel (the next due refresh, up to 2,000 ms).
const REQUESTS_GOAL: f64 = 1.2;
const P99_GOALS_MS: [(usize, f64); 2] = [(20, 100.0), (200, 250.0)];
/// The whole run (both sizes) ends by then, or the watchdog kills Redis and exits 1.
const WATCHDOG: Duration = Duration::from_secs(180);

/// `redis-server` on a free 127.0.0.1 port, with no persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Result<RedisServer, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("cannot start redis-server (apt-get install redis-server): {e}")
            })?;
        let server = RedisServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {port} did not answer PING"))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake API: MetaMask's format (an array of single-key objects), an answer the example
/// changes, and the time of every request.
#[derive(Clone)]
struct Api {
    value: Arc<AtomicI64>,
    requests: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for Api {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        self.requests.lock().unwrap().push(Instant::now());
        let value = self.value.load(Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_json(json!([{ FLAG: value }, {"other": true}]))
    }
}

impl Api {
    fn requests_between(&self, from: Instant, to: Instant) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|t| **t >= from && **t < to).count()
    }

    /// The mean time between the requests after the first (the cold start's), in seconds.
    fn period_s(&self) -> f64 {
        let requests = self.requests.lock().unwrap();
        match (requests.get(1), requests.last()) {
            (Some(first), Some(last)) if requests.len() > 2 => {
                last.duration_since(*first).as_secs_f64() / (requests.len() - 2) as f64
            }
            _ => f64::NAN,
        }
    }
}

/// A handle's snapshot showed a new value of the flag.
struct Change {
    handle: usize,
    value: i64,
    /// Wall-clock milliseconds since the epoch, with the microseconds.
    at_ms: f64,
    cache_timestamp: Option<u64>,
    source: Source,
}

struct Measured {
    handles: usize,
    cold_start_requests: usize,
    cold_start_ms: f64,
    requests: usize,
    period_s: f64,
    changes: usize,
    samples: Vec<f64>,
    missed: usize,
    redis_commands: Vec<(String, u64)>,
}

fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Nearest rank.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Redis's own count of the commands it ran, by name (`INFO commandstats`).
async fn command_counts(url: &str) -> Result<Vec<(String, u64)>, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    // cmdstat_get:calls=1,usec=2,...
    let mut counts: Vec<(String, u64)> = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "config|resetstat" | "config"))
        .collect();
    counts.sort();
    Ok(counts)
}

async fn run_fleet(redis: &RedisServer, n: usize) -> Result<Measured, String> {
    command_counts(&redis.url()).await?;
    let api = Api {
        value: Arc::new(AtomicI64::new(1)),
        requests: Arc::new(Mutex::new(Vec::new())),
    };
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(api.clone())
        .mount(&server)
        .await;
    let log: Arc<Mutex<Vec<Change>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let mut watchers = Vec::with_capacity(n);
    for i in 0..n {
        let store = RedisStore::new(&redis.url())
            .map_err(|e| e.to_string())?
            .prefix(format!("shared-fleet-{n}"));
        let flags = Flags::builder()
            .base_url(server.uri())
            .fetch_interval(INTERVAL)
            .shared_store(store)
            .build()
            .map_err(|e| e.to_string())?;
        let mut changes = flags.subscribe();
        let log = Arc::clone(&log);
        watchers.push(tokio::spawn(async move {
            let mut last = None;
            loop {
                let at_ms = wall_ms();
                let snapshot = changes.borrow_and_update().clone();
                let value = snapshot.get_i64(FLAG);
                if value.is_some() && value != last {
                    log.lock().unwrap().push(Change {
                        handle: i,
                        value: value.unwrap_or_default(),
                        at_ms,
                        cache_timestamp: snapshot.cache_timestamp(),
                        source: snapshot.source(),
                    });
                    last = value;
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        }));
        handles.push(flags);
    }
    for flags in &handles {
        tokio::time::timeout(Duration::from_secs(30), flags.ready())
            .await
            .map_err(|_| format!("{n} handles: not ready within 30 s"))?
            .map_err(|e| e.to_string())?;
    }
    let cold_start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cold_start_requests = api.requests_between(started, Instant::now());

    // The answer changes halfway between the fleet's refreshes (the first came at the start).
    for k in 0..INTERVALS {
        let at = started + INTERVAL * k + INTERVAL / 2;
        tokio::time::sleep_until(at.into()).await;
        api.value.store(i64::from(k) + 2, Ordering::SeqCst);
    }
    let end = started + INTERVAL * INTERVALS;
    // The last change is fetched at about the end: a second to reach every handle.
    tokio::time::sleep_until((end + Duration::from_secs(1)).into()).await;
    let requests = api.requests_between(started, end);
    for flags in &handles {
        flags.shutdown().await;
    }
    for watcher in &watchers {
        watcher.abort();
    }
    let redis_commands = command_counts(&redis.url()).await?;
    drop(handles);

    let log = std::mem::take(&mut *log.lock().unwrap());
    if std::env::var_os("SHARED_FLEET_DEBUG").is_some() {
        let requests = api.requests.lock().unwrap();
        let times: Vec<String> = requests
            .iter()
            .map(|t| format!("{:.3}", t.duration_since(started).as_secs_f64()))
            .collect();
        eprintln!("{n} handles: requests at {} s", times.join(", "));
        for c in &log {
            eprintln!(
                "handle {:>3} value {} at {:.1} ts {:?} {:?}",
                c.handle, c.value, c.at_ms, c.cache_timestamp, c.source
            );
        }
    }
    let (mut samples, mut changes, mut missed) = (Vec::new(), 0, 0);
    for value in 2..=i64::from(INTERVALS) + 1 {
        // The record's timestamp, as the followers hold it.
        let Some(record_ts) = log
            .iter()
            .filter(|c| c.value == value && c.source == Source::Shared)
            .filter_map(|c| c.cache_timestamp)
            .min()
        else {
            continue;
        };
        changes += 1;
        for handle in 0..n {
            match log.iter().find(|c| c.handle == handle && c.value == value) {
                Some(c) => samples.push(c.at_ms - record_ts as f64),
                None => missed += 1,
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(Measured {
        handles: n,
        cold_start_requests,
        cold_start_ms,
        requests,
        period_s: api.period_s(),
        changes,
        samples,
        missed,
        redis_commands,
    })
}

fn report(m: &Measured) -> Vec<String> {
    let per_interval = m.requests as f64 / f64::from(INTERVALS);
    let (p50, p99, max) = (
        percentile(&m.samples, 0.50),
        percentile(&m.samples, 0.99),
        m.samples.last().copied().unwrap_or(f64::NAN),
    );
    let goal = P99_GOALS_MS
        .iter()
        .find(|(n, _)| *n == m.handles)
        .map(|(_, ms)| *ms);
    let mut missed = Vec::new();
    if per_interval > REQUESTS_GOAL {
        missed.push(format!("{} handles: requests per interval", m.handles));
    }
    if goal.is_some_and(|ms| p99.is_nan() || p99 >= ms) {
        missed.push(format!("{} handles: p99 propagation", m.handles));
    }
    if m.missed > 0 || m.changes + 1 < INTERVALS as usize {
        missed.push(format!("{} handles: changes not seen", m.handles));
    }
    let per_handle_interval = |calls: u64| calls as f64 / (m.handles as f64 * f64::from(INTERVALS));
    let commands: Vec<String> = m
        .redis_commands
        .iter()
        .map(|(name, calls)| format!("\"{name}\":{:.2}", per_handle_interval(*calls)))
        .collect();
    println!(
        "{{\"handles\":{},\"interval_s\":{},\"intervals\":{},\"requests\":{},\"requests_per_interval\":{:.2},\"period_s\":{:.3},\"cold_start_requests\":{},\"cold_start_ms\":{:.0},\"changes\":{},\"samples\":{},\"missed\":{},\"propagation_ms\":{{\"p50\":{:.1},\"p99\":{:.1},\"max\":{:.1}}},\"p99_goal_ms\":{},\"redis_calls_per_handle_interval\":{{{}}}}}",
        m.handles,
        INTERVAL.as_secs(),
        INTERVALS,
        m.requests,
        per_interval,
        m.period_s,
        m.cold_start_requests,
        m.cold_start_ms,
        m.changes,
        m.samples.len(),
        m.missed,
        p50,
        p99,
        max,
        goal.map_or("null".to_owned(), |ms| format!("{ms:.0}")),
        commands.join(","),
    );
    missed
}

fn run() -> Result<Vec<String>, String> {
    let redis = RedisServer::start()?;
    // A hung run must not outlive its Redis: the watchdog kills it and exits.
    let pid = redis.child.id();
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        eprintln!("shared_fleet: no result within {WATCHDOG:?}; stopping");
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        std::process::exit(1);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut missed = Vec::new();
    for n in [20, 200] {
        let measured = runtime.block_on(run_fleet(&redis, n))?;
        missed.extend(report(&measured));
    }
    drop(runtime);
    Ok(missed)
}

fn main() {
    // `run` owns Redis: it is killed when `run` returns, an error or a panic included.
    match run() {
        Ok(missed) if missed.is_empty() => {}
        Ok(missed) => {
            println!("goals missed: {}", missed.join(", "));
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("shared_fleet: {error}");
            std::process::exit(1);
        }
    }
}
