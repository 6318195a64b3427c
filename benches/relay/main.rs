//! Relay load test: `GET /v1/flags` for a 100-flag body over 64 keep-alive connections, against
//! the relay and against a minimal handler on the same hyper stack serving the same bytes, in the
//! same run. Prints requests/s, p50 and p99 latency per path (200 and 304), the server's CPU time
//! per request, the ratios, and the servers' resident memory. See BENCHMARKS.md.
//!
//! Each server runs in a child process of its own (this binary, re-run as `serve ...`), so the
//! memory and CPU time read from `/proc/<pid>` are the server's alone, not the load client's.
//!
//! `cargo bench --bench relay --features relay` runs the full test (cargo passes `--bench`);
//! without `--bench` (`cargo test --bench relay --features relay`, as CI runs it) it is a short
//! smoke run that still checks every answer. Options: `--seconds S` per phase, `--warm-up S`,
//! `--rounds N`, `--connections N`, `--client-threads N` (default: one per core; 1: a
//! current-thread runtime).

use std::time::Duration;

use client::{fetch, phase, Outcome};
use server::{status_kib, Server};

mod client;
#[path = "../common/mod.rs"]
mod common;
mod server;

const FLAGS: usize = 100;
const PATH: &str = "/v1/flags?client=extension&distribution=main&environment=prod";

struct Options {
    full: bool,
    seconds: f64,
    warm_up: f64,
    rounds: usize,
    connections: usize,
    client_threads: usize,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let full = args.iter().any(|a| a == "--bench");
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let value = |name: &str, default: f64| {
            let at = args.iter().position(|a| a == name);
            at.map_or(default, |i| args[i + 1].parse().expect("a number"))
        };
        Options {
            full,
            seconds: value("--seconds", if full { 2.0 } else { 0.2 }),
            warm_up: value("--warm-up", if full { 1.0 } else { 0.1 }),
            rounds: value("--rounds", if full { 6.0 } else { 1.0 }) as usize,
            connections: value("--connections", 64.0) as usize,
            // One thread saturates its core before the servers do: the client's speed would be
            // measured, and every ratio pulled towards 1.
            client_threads: value("--client-threads", cores as f64) as usize,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        return server::serve(&args[2..]);
    }
    let options = Options::parse(&args);
    let mut runtime = if options.client_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if options.client_threads > 1 {
        runtime.worker_threads(options.client_threads);
    }
    let runtime = runtime.enable_all().build().unwrap();
    runtime.block_on(load(options));
}

/// One case: a server and a request, with the status and body length every answer must have.
struct Case<'a> {
    name: &'static str,
    server: &'a Server,
    request: &'a [u8],
    expect: (u16, usize),
    results: Vec<Outcome>,
}

async fn load(o: Options) {
    let get = format!("GET {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n");
    let relay = Server::start(&["relay"], &[]);
    let (head, body) = fetch(relay.port, get.as_bytes()).await;
    let etag = header(&head, "etag").to_owned();
    let minimal = Server::start(&["minimal", &body.len().to_string(), &etag], &body);
    let (minimal_head, minimal_body) = fetch(minimal.port, get.as_bytes()).await;
    assert_eq!(minimal_body, body, "both servers answer the same bytes");
    assert_eq!(header(&minimal_head, "etag"), etag);
    println!(
        "relay load test: {FLAGS} flags, body {} bytes; {} connections, {} client thread(s), \
         {} s per phase after {} s warm-up, {} round(s)",
        body.len(),
        o.connections,
        o.client_threads,
        o.seconds,
        o.warm_up,
        o.rounds
    );
    if !o.full {
        println!("smoke run (no --bench): it checks every answer; its numbers mean little");
    }
    println!("relay:\n{}", head.trim_end());
    println!("minimal:\n{}\n", minimal_head.trim_end());

    let conditional =
        format!("GET {PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nif-none-match: {etag}\r\n\r\n");
    let case = |name, server, request: &'static str, expect| Case {
        name,
        server,
        request: request.as_bytes(),
        expect,
        results: Vec::new(),
    };
    let (get, conditional): (&'static str, &'static str) = (get.leak(), conditional.leak());
    let mut cases = [
        case("relay-200", &relay, get, (200, body.len())),
        case("minimal-200", &minimal, get, (200, body.len())),
        case("relay-304", &relay, conditional, (304, 0)),
        case("minimal-304", &minimal, conditional, (304, 0)),
    ];
    for c in &cases {
        phase(c.server, c.request, c.expect, o.connections, o.warm_up).await;
    }
    let relay_idle = status_kib(relay.pid(), "VmRSS:").unwrap_or(0);
    let minimal_idle = status_kib(minimal.pid(), "VmRSS:").unwrap_or(0);
    for round in 0..o.rounds {
        // Alternate which server goes first, so a drift in the machine's load favours neither.
        let order = if round % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [1, 0, 3, 2]
        };
        for i in order {
            let c = &mut cases[i];
            let outcome = phase(c.server, c.request, c.expect, o.connections, o.seconds).await;
            println!(
                "round {}  {:<12} {:>7.0} req/s  p50 {}  p99 {}  server CPU {:.1} µs/request \
                 ({:.1} user)  RSS ≤ {}",
                round + 1,
                c.name,
                outcome.rps,
                ms(outcome.p50),
                ms(outcome.p99),
                outcome.cpu_us,
                outcome.user_us,
                mib(outcome.rss.iter().copied().max().unwrap_or(0)),
            );
            c.results.push(outcome);
        }
    }
    let ratios = report(&cases, o.rounds);
    for (name, server, idle, phases) in [
        ("relay", &relay, relay_idle, [&cases[0], &cases[2]]),
        ("minimal", &minimal, minimal_idle, [&cases[1], &cases[3]]),
    ] {
        // Each round's highest sample of the server's two phases: flat if the last equals the first.
        let per_round: Vec<u64> = (0..o.rounds)
            .map(|r| {
                phases
                    .iter()
                    .flat_map(|c| &c.results[r].rss)
                    .copied()
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let all: Vec<u64> = phases
            .iter()
            .flat_map(|c| &c.results)
            .flat_map(|x| &x.rss)
            .copied()
            .collect();
        println!(
            "{name} process RSS: {} after warm-up; {}–{} under load ({} samples; highest per \
             round: {}); {} after; peak (VmHWM) {}",
            mib(idle),
            mib(all.iter().copied().min().unwrap_or(0)),
            mib(all.iter().copied().max().unwrap_or(0)),
            all.len(),
            per_round
                .iter()
                .map(|k| mib(*k))
                .collect::<Vec<_>>()
                .join(", "),
            mib(status_kib(server.pid(), "VmRSS:").unwrap_or(0)),
            mib(server.peak_kib()),
        );
    }
    // The memory target, checked in every run (the smoke run included); the speed
    // targets are printed above, not enforced: on shared cores a round can lose half its CPU.
    let peak = relay.peak_kib();
    relay.stop();
    minimal.stop();
    assert!(
        peak <= 32 * 1024,
        "the relay's resident memory peaked at {} (target: 32 MiB)",
        mib(peak)
    );
    let verdict = |ratio: f64| match (o.full, ratio >= 0.8) {
        (false, _) => "(a smoke run: not judged)",
        (true, true) => "met",
        (true, false) => "missed",
    };
    println!(
        "targets: relay ≥ 0.8x the minimal handler: 200 {:.2}x {}, 304 {:.2}x {}; relay RSS \
         ≤ 32 MiB: peak {}, met",
        ratios[0],
        verdict(ratios[0]),
        ratios[1],
        verdict(ratios[1]),
        mib(peak)
    );
}

/// Prints the table and the ratios; returns the median req/s ratios (200, 304).
fn report(cases: &[Case], rounds: usize) -> [f64; 2] {
    println!("\nmedian [min–max] over {rounds} round(s):\n");
    println!("| path | server | req/s | p50 | p99 | server CPU per request | of which user |");
    println!("|---|---|---|---|---|---|---|");
    for c in cases {
        let of = |f: fn(&Outcome) -> f64| c.results.iter().map(f).collect::<Vec<_>>();
        let (server, path) = c.name.split_once('-').unwrap();
        println!(
            "| {path} | {server} | {} | {} ms | {} ms | {} µs | {} µs |",
            spread(&of(|x| x.rps), 0),
            spread(&of(|x| x.p50.as_secs_f64() * 1e3), 3),
            spread(&of(|x| x.p99.as_secs_f64() * 1e3), 3),
            spread(&of(|x| x.cpu_us), 1),
            spread(&of(|x| x.user_us), 2),
        );
    }
    println!();
    let mut medians = [0.0; 2];
    for (at, (path, r, m)) in [("200", &cases[0], &cases[1]), ("304", &cases[2], &cases[3])]
        .into_iter()
        .enumerate()
    {
        // Each round's relay phase against the same round's minimal phase (run back to back).
        let pairs = r.results.iter().zip(&m.results);
        let rps: Vec<f64> = pairs.clone().map(|(r, m)| r.rps / m.rps).collect();
        let cpu: Vec<f64> = pairs.clone().map(|(r, m)| m.cpu_us / r.cpu_us).collect();
        let user: Vec<f64> = pairs.map(|(r, m)| m.user_us / r.user_us).collect();
        println!(
            "{path}: relay/minimal req/s {:.2}x (per round: {}); minimal/relay CPU per request \
             {:.2}x (per round: {}), user CPU only {:.2}x",
            median(&rps),
            list(&rps),
            median(&cpu),
            list(&cpu),
            median(&user),
        );
        medians[at] = median(&rps);
    }
    medians
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `median [min–max]`.
fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    let m = median(values);
    format!("{m:.decimals$} [{min:.decimals$}–{max:.decimals$}]")
}
