//! The `flagpole` binary against wiremock on 127.0.0.1.
//!
//! Every run passes `--no-cache` or `--cache-file <temp dir>` so the real home cache is never
//! touched, and every wait is bounded: a hung child fails its test and is killed.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use support::{closed_port_base, requests};

/// The bound on any wait that should take well under a second.
const WAIT: Duration = Duration::from_secs(10);
/// How long a stop (quit, SIGTERM, SIGINT) may take, even mid-request.
const STOP_WITHIN: Duration = Duration::from_secs(2);
const SECRET: &str = "secret-profile-42";

/// Variables that would change what the binary does; cleared so the host environment cannot leak
/// into a test.
const ENV_VARS: &[&str] = &[
    "FLAGPOLE_BASE_URL",
    "FLAGPOLE_CLIENT",
    "FLAGPOLE_DISTRIBUTION",
    "FLAGPOLE_ENVIRONMENT",
    "FLAGPOLE_PROFILE_ID",
    "FLAGPOLE_CLIENT_VERSION",
    "FLAGPOLE_METRICS_ID",
    "FLAGPOLE_METRICS_FLAGS",
    "FLAGPOLE_OVERRIDE",
    "FLAGPOLE_FETCH_INTERVAL",
    "FLAGPOLE_TIMEOUT",
    "FLAGPOLE_BACKOFF_INITIAL",
    "FLAGPOLE_BACKOFF_MAX",
    "FLAGPOLE_CACHE_FILE",
    "FLAGPOLE_NO_CACHE",
    "FLAGPOLE_DISABLED",
    "FLAGPOLE_DEFAULT",
    "FLAGPOLE_DEFAULTS_FILE",
    "FLAGPOLE_REFRESH",
    "FLAGPOLE_REDIS_URL",
    "FLAGPOLE_REDIS_PREFIX",
    "RUST_LOG",
];

fn flagpole() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flagpole"));
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// One-shot runs (`get`, `--help`, bad arguments)
// ---------------------------------------------------------------------------------------------

fn read_to_end_in_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs to completion within [`WAIT`], or kills the child and panics.
fn run_blocking(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flagpole");
    let stdout = read_to_end_in_thread(child.stdout.take().unwrap());
    let stderr = read_to_end_in_thread(child.stderr.take().unwrap());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flagpole did not exit within {WAIT:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// A finished run.
#[derive(Debug)]
struct Run {
    /// The arguments it ran with, so that a failure message names the run.
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The single JSON line `get` prints, checked for shape.
    fn get_json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "get must print exactly one line; got {self:#?}"
        );
        assert!(self.stdout.ends_with('\n'), "{self:#?}");
        let value: Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"));
        let object = value.as_object().expect("a JSON object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cache_timestamp",
                "error",
                "flags",
                "source",
                "threshold_groups"
            ],
            "{self:#?}"
        );
        assert!(
            ["network", "cache", "defaults"].contains(&value["source"].as_str().unwrap_or("")),
            "{self:#?}"
        );
        assert!(
            value["cache_timestamp"].is_null() || value["cache_timestamp"].is_u64(),
            "{self:#?}"
        );
        assert!(value["flags"].is_object(), "{self:#?}");
        assert!(value["threshold_groups"].is_object(), "{self:#?}");
        assert!(
            value["error"].is_null() || value["error"].is_string(),
            "{self:#?}"
        );
        value
    }

    fn assert_success(&self) {
        assert_eq!(self.code, Some(0), "{self:#?}");
    }

    /// A successful `get` that served from `source`: its JSON line.
    fn assert_served(&self, source: &str) -> Value {
        self.assert_success();
        let value = self.get_json();
        assert_eq!(value["source"], source, "{self:#?}");
        value
    }

    /// A successful `get` that served `flags` from `source`: its JSON line.
    fn assert_served_flags(&self, source: &str, flags: Value) -> Value {
        let value = self.assert_served(source);
        assert_eq!(value["flags"], flags, "{self:#?}");
        value
    }
}

async fn run_cmd(cmd: Command) -> Run {
    let args = cmd
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let out = tokio::task::spawn_blocking(move || run_blocking(cmd))
        .await
        .expect("runner thread");
    Run {
        args,
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

async fn run(args: &[&str]) -> Run {
    let mut cmd = flagpole();
    cmd.args(args);
    run_cmd(cmd).await
}

async fn run_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = flagpole();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_cmd(cmd).await
}

fn v1(server: &MockServer) -> String {
    format!("{}/v1", server.uri())
}

fn flags_body() -> Value {
    json!([{"a": true}, {"b": "x"}])
}

fn flags_map() -> Value {
    json!({"a": true, "b": "x"})
}

async fn mount_flags(server: &MockServer, body: Value) {
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

async fn mount_status(server: &MockServer, status: u16) {
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(status))
        .mount(server)
        .await;
}

async fn server_with_flags() -> MockServer {
    let server = MockServer::start().await;
    mount_flags(&server, flags_body()).await;
    server
}

async fn server_with_status(status: u16) -> MockServer {
    let server = MockServer::start().await;
    mount_status(&server, status).await;
    server
}

async fn request_count(server: &MockServer) -> usize {
    requests(server).await.len()
}

fn query(request: &wiremock::Request) -> BTreeMap<String, String> {
    request.url.query_pairs().into_owned().collect()
}

fn expected_query(client: &str, distribution: &str, environment: &str) -> BTreeMap<String, String> {
    [
        ("client", client),
        ("distribution", distribution),
        ("environment", environment),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The query of the only request the server got.
async fn only_query(server: &MockServer) -> BTreeMap<String, String> {
    let received = requests(server).await;
    assert_eq!(received.len(), 1, "expected exactly one request");
    assert_eq!(received[0].url.path(), "/v1/flags");
    query(&received[0])
}

// ---------------------------------------------------------------------------------------------
// help
// ---------------------------------------------------------------------------------------------

/// The options of both `get` and `watch`.
const COMMON_OPTIONS: &[&str] = &[
    "--base-url",
    "--client",
    "--distribution",
    "--environment",
    "--profile-id",
    "--client-version",
    "--fetch-interval",
    "--timeout",
    "--backoff-initial",
    "--backoff-max",
    "--cache-file",
    "--no-cache",
    "--disabled",
    "--default",
    "--defaults-file",
    "--metrics-id",
    "--metrics-flags",
    "--override",
    "--redis-url",
    "--redis-prefix",
];

const ALL_DEFAULTS: &[&str] = &[
    "[default: 1d]",
    "[default: 10s]",
    "[default: 1s]",
    "[default: 5m]",
    "[default: extension]",
    "[default: main]",
    "[default: prod]",
    "[default: flagpole]",
];

#[test]
fn help_lists_every_option_with_defaults() {
    let mut cmd = flagpole();
    cmd.args(["get", "--help"]);
    let out = run_blocking(cmd);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in COMMON_OPTIONS.iter().chain(&["--refresh"]) {
        assert!(help.contains(option), "{option} missing from help:\n{help}");
    }
    assert!(help.contains("[default: 1d]"), "{help}");
}

async fn assert_help(args: &[&str], extra: &[&str]) {
    let out = run(args).await;
    out.assert_success();
    assert!(out.stderr.is_empty(), "{out:#?}");
    let options = COMMON_OPTIONS.iter().chain(&["--verbose"]);
    for needle in options.chain(ALL_DEFAULTS).chain(extra) {
        assert!(
            out.stdout.contains(needle),
            "`{needle}` missing from `flagpole {}`:\n{}",
            args.join(" "),
            out.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn top_level_help_lists_every_option_with_defaults() {
    assert_help(&["--help"], &["get", "watch"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_help_lists_every_option_with_defaults() {
    assert_help(
        &["watch", "--help"],
        &["refresh", "enable", "disable", "quit"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn get_from_network_with_default_query() {
    let server = server_with_flags().await;
    let before = now_ms();
    let out = run(&["get", "--no-cache", "--base-url", &v1(&server)]).await;
    let after = now_ms();
    eprint!("get transcript (stdout):\n{}", out.stdout);
    let value = out.assert_served_flags("network", flags_map());
    assert_eq!(value["error"], Value::Null, "{out:#?}");
    let ts = value["cache_timestamp"]
        .as_u64()
        .expect("network flags carry their fetch time");
    assert!(
        ts + 1_000 >= before && ts <= after + 1_000,
        "{ts} not in [{before}, {after}]"
    );
    assert_eq!(
        only_query(&server).await,
        expected_query("extension", "main", "prod")
    );
}

/// `--no-cache`, the server at `base`, the mobile client, the flask distribution and `environment`.
fn mobile_flask_options<'a>(base: &'a str, environment: &'a str) -> Vec<&'a str> {
    vec![
        "--no-cache",
        "--base-url",
        base,
        "--client",
        "mobile",
        "--distribution",
        "flask",
        "--environment",
        environment,
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn get_query_follows_client_distribution_environment_options() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let mut args = vec!["get"];
    args.extend(mobile_flask_options(&base, "rc"));
    let out = run(&args).await;
    out.assert_served_flags("network", flags_map());
    assert_eq!(
        only_query(&server).await,
        expected_query("mobile", "flask", "rc")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_accepts_options_before_the_subcommand() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let mut args = mobile_flask_options(&base, "dev");
    args.push("get");
    let out = run(&args).await;
    out.assert_served_flags("network", flags_map());
    assert_eq!(
        only_query(&server).await,
        expected_query("mobile", "flask", "dev")
    );
}

/// Runs a good `get` (args given) and checks that it wrote `cache` before exiting.
async fn seed_cache(args: &[&str], cache: &Path) -> Value {
    let out = run(args).await;
    let value = out.assert_served("network");
    assert_eq!(value["error"], Value::Null, "{out:#?}");
    assert!(
        cache.is_file(),
        "a good `get` exited without writing {}",
        cache.display()
    );
    value
}

/// A server with the usual flags, and a cache file in a new temp dir that a good
/// `get --cache-file <cache> --base-url <server>` has filled.
struct SeededCache {
    server: MockServer,
    /// The server's `/v1` URL.
    base: String,
    path: PathBuf,
    /// The JSON line of the `get` that filled the cache.
    first: Value,
    _dir: tempfile::TempDir,
}

impl SeededCache {
    /// Seeds `file`, a path relative to the temp dir.
    async fn new(file: &str) -> SeededCache {
        let server = server_with_flags().await;
        let base = v1(&server);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file);
        let cache = path.to_str().unwrap();
        let first = seed_cache(&["get", "--cache-file", cache, "--base-url", &base], &path).await;
        SeededCache {
            server,
            base,
            path,
            first,
            _dir: dir,
        }
    }

    fn cache(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The arguments of the `get` that filled the cache, then `extra`.
    fn get_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "get",
            "--cache-file",
            self.cache(),
            "--base-url",
            &self.base,
        ];
        args.extend_from_slice(extra);
        args
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_serves_a_fresh_cache_without_a_request() {
    let seeded = SeededCache::new("nested/flags.json").await;
    let before = request_count(&seeded.server).await;
    assert!(before >= 1);

    let second = run(&seeded.get_args(&[])).await;
    let value = second.assert_served_flags("cache", flags_map());
    assert_eq!(value["error"], Value::Null, "{second:#?}");
    assert_eq!(
        value["cache_timestamp"], seeded.first["cache_timestamp"],
        "the cache keeps the fetch time"
    );
    assert_eq!(
        request_count(&seeded.server).await,
        before,
        "a fresh cache must be served without a request"
    );
}

/// Many `get` runs at once on one fresh cache: every one must print the cached flags.
#[tokio::test(flavor = "multi_thread")]
async fn get_prints_the_fresh_cache_it_loaded_under_load() {
    const RUNS: usize = 64;
    const ROUNDS: usize = 8;
    let seeded = SeededCache::new("flags.json").await;
    let before = request_count(&seeded.server).await;
    let mut wrong = Vec::new();
    // The window is narrow: up to ROUNDS rounds of RUNS runs at once, stopping at a wrong one.
    for _ in 0..ROUNDS {
        let outs = concurrent_gets(RUNS, |_| {
            seeded.get_args(&[]).into_iter().map(String::from).collect()
        })
        .await;
        for out in outs {
            out.assert_success();
            let value = out.get_json();
            if value["source"] != "cache" || value["flags"] != flags_map() {
                wrong.push(value);
            }
        }
        if !wrong.is_empty() {
            break;
        }
    }
    assert_eq!(
        request_count(&seeded.server).await,
        before,
        "a fresh cache was refetched"
    );
    assert!(
        wrong.is_empty(),
        "{} runs did not print the fresh cache, e.g. {}",
        wrong.len(),
        wrong[0]
    );
}

/// Many `get` runs at once, each with its own cache file: every one that printed network flags
/// must have saved them before exiting.
#[tokio::test(flavor = "multi_thread")]
async fn get_saves_the_cache_before_exiting_under_load() {
    const RUNS: usize = 64;
    let server = server_with_flags().await;
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RUNS {
        let cache = dir.path().join(format!("flags-{i}.json"));
        let base = v1(&server);
        tasks.spawn(async move {
            let out = run(&[
                "get",
                "--cache-file",
                cache.to_str().unwrap(),
                "--base-url",
                &base,
            ])
            .await;
            (cache, out)
        });
    }
    let mut missing = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (cache, out) = joined.unwrap();
        out.assert_served("network");
        if !cache.is_file() {
            missing.push(cache);
        }
    }
    assert_eq!(request_count(&server).await, RUNS);
    assert!(
        missing.is_empty(),
        "{} of {RUNS} good `get` runs exited without saving their cache file",
        missing.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_refresh_with_a_fresh_cache_makes_exactly_one_request() {
    let seeded = SeededCache::new("flags.json").await;
    let server = &seeded.server;

    server.reset().await;
    mount_flags(server, json!([{"a": false}])).await;
    let out = run(&seeded.get_args(&["--refresh"])).await;
    let value = out.assert_served_flags("network", json!({"a": false}));
    assert_eq!(value["error"], Value::Null, "{out:#?}");
    assert_eq!(
        request_count(server).await,
        1,
        "--refresh with a fresh cache: exactly one request"
    );
}

/// Starts `RUNS` copies of `flagpole get <args>` at once and returns their outputs.
async fn concurrent_gets(runs: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<Run> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..runs {
        let args = args(i);
        tasks.spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args).await
        });
    }
    let mut outs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        outs.push(joined.unwrap());
    }
    outs
}

/// "One attempt, no retries": many `get` runs at once, each must make exactly one request, for
/// `--refresh` without a cache (ok and failing server) and for an expired cache with a failing
/// server.
#[tokio::test(flavor = "multi_thread")]
async fn get_is_one_attempt_under_load() {
    const RUNS: usize = 32;
    let mut extra = Vec::new();

    for status in [200, 500] {
        let server = if status == 200 {
            server_with_flags().await
        } else {
            server_with_status(status).await
        };
        let base = v1(&server);
        let outs = concurrent_gets(RUNS, |_| {
            ["get", "--refresh", "--no-cache", "--base-url", &base]
                .map(String::from)
                .to_vec()
        })
        .await;
        let expected = if status == 200 { "network" } else { "defaults" };
        for out in outs {
            out.assert_served(expected);
        }
        extra.push((
            format!("get --refresh --no-cache, HTTP {status}"),
            request_count(&server).await - RUNS,
        ));
    }

    // Expired caches and a failing server.
    let server = server_with_flags().await;
    let base = v1(&server);
    let dir = tempfile::tempdir().unwrap();
    let caches: Vec<String> = (0..RUNS)
        .map(|i| {
            dir.path()
                .join(format!("flags-{i}.json"))
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for cache in &caches {
        seed_cache(
            &["get", "--cache-file", cache, "--base-url", &base],
            Path::new(cache),
        )
        .await;
    }
    server.reset().await;
    mount_status(&server, 500).await;
    let outs = concurrent_gets(RUNS, |i| {
        [
            "get",
            "--fetch-interval",
            "1ms",
            "--cache-file",
            &caches[i],
            "--base-url",
            &base,
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
    for out in outs {
        out.assert_served("cache");
    }
    extra.push((
        "get --fetch-interval 1ms, expired cache, HTTP 500".to_owned(),
        request_count(&server).await - RUNS,
    ));

    assert!(
        extra.iter().all(|(_, n)| *n == 0),
        "extra requests over {RUNS} runs each: {extra:?}"
    );
}

/// The same, one run at a time: usually one request each even with the race above.
#[tokio::test(flavor = "multi_thread")]
async fn get_refresh_without_a_cache_serves_network_or_reports_the_failure() {
    let ok = server_with_flags().await;
    let out = run(&["get", "--refresh", "--no-cache", "--base-url", &v1(&ok)]).await;
    let value = out.assert_served_flags("network", flags_map());
    assert_eq!(value["error"], Value::Null, "{out:#?}");
    assert!((1..=2).contains(&request_count(&ok).await));

    let failing = server_with_status(500).await;
    let out = run(&[
        "get",
        "--refresh",
        "--no-cache",
        "--base-url",
        &v1(&failing),
    ])
    .await;
    let value = out.assert_served("defaults");
    assert!(
        value["error"].as_str().is_some_and(|e| e.contains("500")),
        "{out:#?}"
    );
    assert!((1..=2).contains(&request_count(&failing).await));
}

#[tokio::test(flavor = "multi_thread")]
async fn get_falls_back_to_defaults_on_http_500() {
    let server = server_with_status(500).await;
    let out = run(&[
        "get",
        "--no-cache",
        "--base-url",
        &v1(&server),
        "--default",
        "a=false",
    ])
    .await;
    let value = out.assert_served_flags("defaults", json!({"a": false}));
    assert_eq!(value["cache_timestamp"], Value::Null, "{out:#?}");
    let error = value["error"].as_str().expect("an error string");
    assert!(
        error.contains("500"),
        "error should name the status: {error}"
    );
    assert_eq!(
        request_count(&server).await,
        1,
        "get makes one attempt, no retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_falls_back_to_defaults_when_the_server_is_unreachable() {
    // A port that was just free: connection refused.
    let base = format!("{}/v1", closed_port_base());
    let out = run(&[
        "get",
        "--no-cache",
        "--base-url",
        &base,
        "--default",
        "b=\"fallback\"",
    ])
    .await;
    let value = out.assert_served_flags("defaults", json!({"b": "fallback"}));
    assert!(value["error"].is_string(), "{out:#?}");
}

/// A good run fills the cache, then the server fails.
async fn cache_then_500() -> SeededCache {
    let seeded = SeededCache::new("flags.json").await;
    seeded.server.reset().await;
    mount_status(&seeded.server, 500).await;
    seeded
}

impl SeededCache {
    /// After [`cache_then_500`]: `out` served the cache with the 500 as its error, after one
    /// attempt (the cache is refetched once, with no retry). Returns its JSON line.
    async fn assert_fell_back_after_500(&self, out: &Run) -> Value {
        let value = out.assert_served("cache");
        assert_eq!(
            value["cache_timestamp"], self.first["cache_timestamp"],
            "{out:#?}"
        );
        let error = value["error"].as_str().expect("an error string");
        assert!(error.contains("500"), "{error}");
        assert_eq!(request_count(&self.server).await, 1, "one attempt");
        value
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_falls_back_to_an_expired_cache_on_http_500() {
    let seeded = cache_then_500().await;
    let out = run(&seeded.get_args(&[
        "--fetch-interval",
        "1ms",
        "--default",
        "a=false",
        "--default",
        "z=3",
    ]))
    .await;
    let value = seeded.assert_fell_back_after_500(&out).await;
    // Cached values win over defaults; defaults fill the gaps.
    assert_eq!(
        value["flags"],
        json!({"a": true, "b": "x", "z": 3}),
        "{out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_refresh_falls_back_to_the_cache_on_http_500() {
    let seeded = cache_then_500().await;
    let out = run(&seeded.get_args(&["--refresh"])).await;
    let value = seeded.assert_fell_back_after_500(&out).await;
    assert_eq!(value["flags"], flags_map(), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_disabled_serves_defaults_without_a_request() {
    let server = server_with_flags().await;
    let out = run(&[
        "get",
        "--disabled",
        "--refresh",
        "--no-cache",
        "--base-url",
        &v1(&server),
        "--default",
        "a=1",
    ])
    .await;
    out.assert_served_flags("defaults", json!({"a": 1}));
    assert_eq!(request_count(&server).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_merges_defaults_file_and_default_options() {
    let server = server_with_status(503).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defaults.json");
    std::fs::write(&file, r#"{"a": 1, "b": {"nested": [1, 2]}, "c": "file"}"#).unwrap();
    let out = run(&[
        "get",
        "--no-cache",
        "--base-url",
        &v1(&server),
        "--defaults-file",
        file.to_str().unwrap(),
        "--default",
        "c=\"option\"",
        "--default",
        "d=null",
    ])
    .await;
    let value = out.assert_served("defaults");
    assert_eq!(
        value["flags"],
        json!({"a": 1, "b": {"nested": [1, 2]}, "c": "option", "d": null}),
        "--default wins over --defaults-file: {out:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// bad arguments: exit 2, one line on stderr, nothing on stdout, no request
// ---------------------------------------------------------------------------------------------

fn assert_usage_error(out: &Run, must_contain: &[&str]) {
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stdout.is_empty(), "stdout must be empty: {out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected a one-line message on stderr: {out:#?}"
    );
    for needle in must_contain {
        assert!(
            lines[0].contains(needle),
            "`{needle}` missing from the message of `flagpole {}`: {:?}",
            out.args.join(" "),
            lines[0]
        );
    }
}

/// `get`, and then `watch` (which must exit instead of running), with `extra` against a live
/// server: a usage error, and the server never asked.
async fn usage_error_case(extra: &[&str], must_contain: &[&str]) {
    let server = server_with_flags().await;
    let base = v1(&server);
    for sub in ["get", "watch"] {
        let mut args = vec![sub, "--no-cache", "--base-url", &base];
        args.extend_from_slice(extra);
        let out = run(&args).await;
        assert_usage_error(&out, must_contain);
        assert_eq!(
            request_count(&server).await,
            0,
            "no request on bad arguments to `{sub}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_environment_lists_the_accepted_ones() {
    usage_error_case(
        &["--environment", "staging"],
        &["staging", "prod", "rc", "dev"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_client_lists_the_accepted_ones() {
    usage_error_case(&["--client", "web"], &["web", "extension", "mobile"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_distribution_lists_the_accepted_ones() {
    usage_error_case(&["--distribution", "beta"], &["beta", "main", "flask"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_timeout_duration() {
    usage_error_case(&["--timeout", "soon"], &["--timeout", "soon"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_default_value_not_json() {
    usage_error_case(&["--default", "x=notjson"], &["--default", "x"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_default_without_value() {
    usage_error_case(&["--default", "novalue"], &["--default", "novalue"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_fetch_interval_is_a_config_error() {
    usage_error_case(&["--fetch-interval", "0s"], &["fetch interval"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_timeout_is_a_config_error() {
    usage_error_case(&["--timeout", "0s"], &["timeout"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_base_url() {
    for sub in ["get", "watch"] {
        let out = run(&[sub, "--no-cache", "--base-url", "not-a-url"]).await;
        assert_usage_error(&out, &["not-a-url"]);
        let out = run(&[sub, "--no-cache", "--base-url", "ftp://127.0.0.1/v1"]).await;
        assert_usage_error(&out, &["ftp"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_file_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    usage_error_case(
        &["--defaults-file", missing.to_str().unwrap()],
        &["--defaults-file"],
    )
    .await;
}

/// `--defaults-file` naming a file `name` that holds `contents`: a usage error.
async fn bad_defaults_file_case(name: &str, contents: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(name);
    std::fs::write(&file, contents).unwrap();
    usage_error_case(
        &["--defaults-file", file.to_str().unwrap()],
        &["--defaults-file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_file_invalid_json() {
    bad_defaults_file_case("bad.json", "{\"a\": tru\n\n}\n").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_file_json_array() {
    bad_defaults_file_case("array.json", r#"[{"a": true}]"#).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_option() {
    usage_error_case(&["--frobnicate"], &["--frobnicate"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_subcommand_is_a_usage_error() {
    let server = server_with_flags().await;
    let out = run(&["fetch", "--no-cache", "--base-url", &v1(&server)]).await;
    assert_usage_error(&out, &["fetch"]);
    assert_eq!(request_count(&server).await, 0);
}

/// `--no-cache` wins over a cache file given by option or by `FLAGPOLE_CACHE_FILE`, so an
/// exported variable never turns `--no-cache` into an argument error.
#[tokio::test(flavor = "multi_thread")]
async fn no_cache_wins_over_a_cache_file() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.json");
    let path = cache.to_str().unwrap();
    let out = run(&[
        "get",
        "--no-cache",
        "--cache-file",
        path,
        "--base-url",
        &base,
    ])
    .await;
    out.assert_served("network");
    let out = run_env(
        &["get", "--no-cache", "--base-url", &base],
        &[("FLAGPOLE_CACHE_FILE", path)],
    )
    .await;
    out.assert_served("network");
    let out = run_env(
        &["get", "--base-url", &base],
        &[("FLAGPOLE_CACHE_FILE", path), ("FLAGPOLE_NO_CACHE", "1")],
    )
    .await;
    out.assert_served("network");
    assert!(!cache.exists(), "no cache file may be written");
    assert_eq!(request_count(&server).await, 3);
}

// ---------------------------------------------------------------------------------------------
// FLAGPOLE_* environment variables
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn env_environment_changes_the_query() {
    let server = server_with_flags().await;
    let out = run_env(
        &["get", "--no-cache", "--base-url", &v1(&server)],
        &[("FLAGPOLE_ENVIRONMENT", "dev")],
    )
    .await;
    out.assert_served("network");
    assert_eq!(
        only_query(&server).await,
        expected_query("extension", "main", "dev")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_base_url_is_used() {
    let server = server_with_flags().await;
    let out = run_env(
        &["get", "--no-cache"],
        &[("FLAGPOLE_BASE_URL", &v1(&server))],
    )
    .await;
    out.assert_served_flags("network", flags_map());
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn env_vars_cover_the_other_options() {
    let server = server_with_flags().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("env-cache.json");
    let base = v1(&server);
    let envs = [
        ("FLAGPOLE_BASE_URL", base.as_str()),
        ("FLAGPOLE_CLIENT", "mobile"),
        ("FLAGPOLE_DISTRIBUTION", "flask"),
        ("FLAGPOLE_ENVIRONMENT", "rc"),
        ("FLAGPOLE_PROFILE_ID", "env-profile"),
        ("FLAGPOLE_CACHE_FILE", cache.to_str().unwrap()),
        ("FLAGPOLE_DEFAULT", "zz=7"),
    ];
    let mut expected = expected_query("mobile", "flask", "rc");
    expected.insert("user".into(), "env-profile".into());
    let out = run_env(&["get"], &envs).await;
    let value = out.assert_served("network");
    assert_eq!(
        value["flags"],
        json!({"a": true, "b": "x", "zz": 7}),
        "{out:#?}"
    );
    assert_eq!(only_query(&server).await, expected);
    assert!(cache.is_file(), "FLAGPOLE_CACHE_FILE was not used");

    // A command-line option wins over its variable.
    server.reset().await;
    mount_flags(&server, flags_body()).await;
    let out = run_env(
        &["get", "--no-cache", "--environment", "prod"],
        &[
            ("FLAGPOLE_BASE_URL", &v1(&server)),
            ("FLAGPOLE_ENVIRONMENT", "dev"),
        ],
    )
    .await;
    out.assert_success();
    assert_eq!(
        only_query(&server).await,
        expected_query("extension", "main", "prod")
    );

    // Bad values from the environment are usage errors too.
    for (var, value) in [
        ("FLAGPOLE_ENVIRONMENT", "staging"),
        ("FLAGPOLE_TIMEOUT", "soon"),
        ("FLAGPOLE_FETCH_INTERVAL", "0s"),
    ] {
        let out = run_env(
            &["get", "--no-cache", "--base-url", &v1(&server)],
            &[(var, value)],
        )
        .await;
        assert_usage_error(&out, &[]);
    }
    let dir2 = tempfile::tempdir().unwrap();
    let missing = dir2.path().join("nope.json");
    let out = run_env(
        &["get", "--no-cache", "--base-url", &v1(&server)],
        &[("FLAGPOLE_DEFAULTS_FILE", missing.to_str().unwrap())],
    )
    .await;
    assert_usage_error(&out, &["--defaults-file"]);
    assert_eq!(
        request_count(&server).await,
        1,
        "only the one good run asked"
    );
}

// ---------------------------------------------------------------------------------------------
// profile id privacy
// ---------------------------------------------------------------------------------------------

/// Neither stdout nor stderr of `out` holds the profile id.
fn assert_output_keeps_secret(out: &Run) {
    assert!(
        !out.stdout.contains(SECRET),
        "stdout leaks the id: {out:#?}"
    );
    assert!(
        !out.stderr.contains(SECRET),
        "stderr leaks the id: {out:#?}"
    );
}

/// The cache file was written and does not hold the profile id.
fn assert_cache_keeps_secret(cache: &Path) {
    let saved = std::fs::read(cache).expect("the cache file was written");
    assert!(
        !String::from_utf8_lossy(&saved).contains(SECRET),
        "the cache file holds the profile id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_id_is_sent_but_never_printed_logged_or_cached() {
    let server = server_with_flags().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("flags.json");
    let base = v1(&server);
    let args = [
        "-vvv",
        "get",
        "--profile-id",
        SECRET,
        "--cache-file",
        cache.to_str().unwrap(),
        "--base-url",
        &base,
    ];
    let out = run(&args).await;
    out.assert_served("network");
    let mut expected = expected_query("extension", "main", "prod");
    expected.insert("user".into(), SECRET.into());
    assert_eq!(only_query(&server).await, expected);
    assert!(
        !out.stderr.is_empty(),
        "-vvv should produce trace logs on stderr"
    );
    assert_output_keeps_secret(&out);
    assert_cache_keeps_secret(&cache);

    // Failure paths log more: a 500 with an expired cache, and an unreachable server.
    server.reset().await;
    mount_status(&server, 500).await;
    let out = run(&[&args[..], &["--fetch-interval", "1ms"]].concat()).await;
    out.assert_served("cache");
    assert_output_keeps_secret(&out);
    assert_cache_keeps_secret(&cache);

    let out = run_env(
        &["-vvv", "get", "--no-cache"],
        &[
            ("FLAGPOLE_PROFILE_ID", SECRET),
            ("FLAGPOLE_BASE_URL", &format!("{}/v1", closed_port_base())),
        ],
    )
    .await;
    out.assert_success();
    assert!(out.get_json()["error"].is_string(), "{out:#?}");
    assert_output_keeps_secret(&out);

    // Nor in help, even when the variable is set.
    let out = run_env(&["get", "--help"], &[("FLAGPOLE_PROFILE_ID", SECRET)]).await;
    out.assert_success();
    assert!(!out.stdout.contains(SECRET), "help shows the id");
}

// ---------------------------------------------------------------------------------------------
// watch
// ---------------------------------------------------------------------------------------------

/// A running `flagpole watch` with its stdout read line by line on a thread.
struct Watch {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far, parsed.
    seen: Vec<Value>,
    /// Where [`Watch::wait_for`] starts looking.
    mark: usize,
    stderr: Arc<Mutex<String>>,
    stdout_closed: bool,
}

impl Watch {
    fn spawn(args: &[&str]) -> Watch {
        let mut cmd = flagpole();
        cmd.arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn flagpole watch");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
        Watch {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            mark: 0,
            stderr,
            stdout_closed: false,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn transcript(&self) -> String {
        let lines: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        format!("stdout:\n{}\nstderr:\n{}", lines.join("\n"), self.stderr())
    }

    /// Checks one stdout line: valid JSON with one of the three event shapes.
    fn parse(&self, line: &str) -> Value {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "stdout line is not JSON ({e}): {line:?}\n{}",
                self.transcript()
            )
        });
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert!(value.is_object(), "{line}");
        match value["event"].as_str() {
            Some("snapshot") => {
                assert_eq!(
                    keys(&value),
                    [
                        "cache_timestamp",
                        "event",
                        "flags",
                        "source",
                        "threshold_groups"
                    ],
                    "{line}"
                );
                assert!(value["flags"].is_object(), "{line}");
                assert!(value["threshold_groups"].is_object(), "{line}");
                assert!(
                    ["network", "cache", "defaults"].contains(&value["source"].as_str().unwrap()),
                    "{line}"
                );
            }
            Some("status") => {
                assert_eq!(
                    keys(&value),
                    ["error", "event", "next_retry_ms", "status"],
                    "{line}"
                );
                assert!(
                    ["initializing", "fresh", "stale", "disabled", "stopped"]
                        .contains(&value["status"].as_str().unwrap()),
                    "{line}"
                );
            }
            Some("refresh") => {
                assert_eq!(keys(&value), ["error", "event", "ok"], "{line}");
                assert!(value["ok"].is_boolean(), "{line}");
            }
            _ => panic!("unknown event: {line}"),
        }
        value
    }

    /// The next stdout line, within `within`; `None` once stdout is closed.
    fn next_within(&mut self, within: Duration) -> Option<Value> {
        if self.stdout_closed {
            return None;
        }
        match self.lines.recv_timeout(within) {
            Ok(line) => {
                let value = self.parse(&line);
                self.seen.push(value.clone());
                Some(value)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.stdout_closed = true;
                None
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no stdout line within {within:?}\n{}", self.transcript())
            }
        }
    }

    fn next(&mut self) -> Value {
        match self.next_within(WAIT) {
            Some(value) => value,
            None => panic!("stdout closed early\n{}", self.transcript()),
        }
    }

    /// From now on, [`Watch::wait_for`] only looks at lines printed after this point.
    fn mark(&mut self) {
        self.mark = self.seen.len();
    }

    /// The first line since the mark that matches, reading more lines as needed.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut i = self.mark;
        loop {
            while i < self.seen.len() {
                if pred(&self.seen[i]) {
                    return self.seen[i].clone();
                }
                i += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no {what} within {WAIT:?}\n{}", self.transcript());
            }
            match self.next_within(left) {
                Some(_) => {}
                None => panic!("stdout closed before {what}\n{}", self.transcript()),
            }
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write {command:?}: {e}\n{}", self.transcript()));
    }

    fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit, then reads the rest of stdout; panics (and Drop kills) on timeout.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "watch did not exit within {within:?}\n{}",
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        while self.next_within(WAIT).is_some() {}
        status
    }

    /// After exit: 0, and the last line is the `stopped` status.
    fn assert_stopped_cleanly(&mut self, status: ExitStatus) {
        assert_eq!(status.code(), Some(0), "{}", self.transcript());
        let last = self.seen.last().expect("some output");
        assert_eq!(last["event"], "status", "{}", self.transcript());
        assert_eq!(last["status"], "stopped", "{}", self.transcript());
        let stopped = self
            .seen
            .iter()
            .filter(|v| v["status"] == "stopped")
            .count();
        assert_eq!(stopped, 1, "one stopped line\n{}", self.transcript());
    }

    /// Waits up to [`STOP_WITHIN`] for the exit, then checks that it was clean.
    fn assert_stops_cleanly(&mut self) {
        let status = self.wait_exit(STOP_WITHIN);
        self.assert_stopped_cleanly(status);
    }

    /// Sends `quit` and checks for a prompt, clean exit.
    fn quit(&mut self) {
        self.send("quit");
        self.assert_stops_cleanly();
    }

    /// Waits (bounded) until `server` has had at least `n` requests; else panics with `failure`.
    async fn wait_for_requests(&self, server: &MockServer, n: usize, failure: &str) {
        let deadline = Instant::now() + WAIT;
        while request_count(server).await < n {
            assert!(
                Instant::now() < deadline,
                "{failure}\n{}",
                self.transcript()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The start of every session: a snapshot (the defaults, or on a loaded machine the first
    /// fetch if it landed before the first line was printed), then a status.
    fn expect_start(&mut self, flags: Value) {
        let first = self.next();
        assert_eq!(first["event"], "snapshot", "{}", self.transcript());
        if first["source"] != "network" {
            assert_eq!(first["source"], "defaults", "{}", self.transcript());
            assert_eq!(first["flags"], flags, "{}", self.transcript());
            assert_eq!(first["cache_timestamp"], Value::Null);
        }
        let second = self.next();
        assert_eq!(second["event"], "status", "{}", self.transcript());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn is_snapshot(source: &'static str, flags: Value) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "snapshot" && v["source"] == source && v["flags"] == flags
}

fn is_status(status: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "status" && v["status"] == status
}

fn is_refresh(v: &Value) -> bool {
    v["event"] == "refresh"
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_session_refresh_disable_bogus_quit() {
    let server = server_with_flags().await;
    let mut watch = Watch::spawn(&[
        "--no-cache",
        "--base-url",
        &v1(&server),
        "--default",
        "a=false",
        "--default",
        "d=1",
    ]);
    watch.expect_start(json!({"a": false, "d": 1}));

    // The first fetch.
    watch.wait_for(
        "the network snapshot",
        is_snapshot("network", json!({"a": true, "b": "x", "d": 1})),
    );
    watch.wait_for("the fresh status", is_status("fresh"));
    assert_eq!(
        only_query(&server).await,
        expected_query("extension", "main", "prod")
    );

    // A refresh on stdin picks up new flags.
    server.reset().await;
    mount_flags(&server, json!([{"a": false}, {"c": [1, 2]}])).await;
    watch.mark();
    watch.send("refresh");
    let refresh = watch.wait_for("the refresh event", is_refresh);
    assert_eq!(
        refresh,
        json!({"event": "refresh", "ok": true, "error": null})
    );
    let snapshot = watch.wait_for(
        "the new snapshot",
        is_snapshot("network", json!({"a": false, "c": [1, 2], "d": 1})),
    );
    assert!(snapshot["cache_timestamp"].is_u64(), "{snapshot}");
    assert_eq!(request_count(&server).await, 1);

    // Disable: defaults only.
    watch.mark();
    watch.send("disable");
    watch.wait_for("the disabled status", is_status("disabled"));
    let snapshot = watch.wait_for(
        "the defaults snapshot",
        is_snapshot("defaults", json!({"a": false, "d": 1})),
    );
    assert_eq!(snapshot["cache_timestamp"], Value::Null);

    // No request while disabled, not even on refresh.
    let before = request_count(&server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.mark();
    watch.send("refresh");
    let refresh = watch.wait_for("the refused refresh", is_refresh);
    assert_eq!(
        refresh,
        json!({"event": "refresh", "ok": false, "error": "remote flags are disabled"})
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        request_count(&server).await,
        before,
        "a request was made while disabled"
    );

    // An unknown command: a warning on stderr, and the watch goes on.
    watch.send("bogus");
    let deadline = Instant::now() + WAIT;
    while !watch.stderr().contains("bogus") {
        assert!(
            Instant::now() < deadline,
            "no warning for `bogus`\n{}",
            watch.transcript()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let warning = watch.stderr();
    assert!(warning.contains("WARN"), "{warning}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(watch.is_running(), "bogus stopped the watch");
    watch.mark();
    watch.send("refresh");
    watch.wait_for("a refresh after bogus", is_refresh);

    // quit: exit 0 promptly, stopped last.
    watch.quit();
    assert_eq!(
        request_count(&server).await,
        before,
        "a request was made while disabled"
    );
    eprintln!("watch transcript:\n{}", watch.transcript());
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_enable_after_disable_serves_remote_flags_again() {
    let server = server_with_flags().await;
    let mut watch = Watch::spawn(&["--disabled", "--no-cache", "--base-url", &v1(&server)]);
    let first = watch.next();
    assert_eq!(first["event"], "snapshot");
    assert_eq!(first["source"], "defaults");
    watch.wait_for("the disabled status", is_status("disabled"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(request_count(&server).await, 0, "--disabled made a request");

    watch.mark();
    watch.send("enable");
    watch.wait_for("the network snapshot", is_snapshot("network", flags_map()));
    watch.wait_for("the fresh status", is_status("fresh"));
    assert_eq!(request_count(&server).await, 1);

    watch.quit();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_starts_from_a_fresh_cache_without_a_request() {
    let seeded = SeededCache::new("flags.json").await;
    let before = request_count(&seeded.server).await;

    let mut watch = Watch::spawn(&["--cache-file", seeded.cache(), "--base-url", &seeded.base]);
    watch.wait_for("the cache snapshot", is_snapshot("cache", flags_map()));
    watch.wait_for("the fresh status", is_status("fresh"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        request_count(&seeded.server).await,
        before,
        "a fresh cache was refetched"
    );
    watch.quit();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_stale_and_retries_after_failures() {
    let server = server_with_status(503).await;
    let mut watch = Watch::spawn(&[
        "--no-cache",
        "--base-url",
        &v1(&server),
        "--backoff-initial",
        "50ms",
        "--backoff-max",
        "100ms",
    ]);
    watch.expect_start(json!({}));
    let stale = watch.wait_for("the stale status", is_status("stale"));
    assert!(
        stale["error"].as_str().is_some_and(|e| e.contains("503")),
        "{stale}"
    );
    assert!(
        stale["next_retry_ms"].as_u64().is_some_and(|ms| ms <= 100),
        "the retry is due within --backoff-max: {stale}"
    );
    // Retries follow; then the server recovers.
    watch.wait_for_requests(&server, 2, "no retry").await;
    server.reset().await;
    mount_flags(&server, flags_body()).await;
    watch.wait_for(
        "the recovered snapshot",
        is_snapshot("network", flags_map()),
    );
    watch.wait_for("the fresh status", is_status("fresh"));
    watch.quit();
}

/// A `refresh` typed while the server's `Retry-After` runs is answered within a second, with
/// the time the wait ends, and makes no request.
#[tokio::test(flavor = "multi_thread")]
async fn watch_refresh_during_retry_after_answers_at_once_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "3600"))
        .mount(&server)
        .await;
    let mut watch = Watch::spawn(&["--no-cache", "--base-url", &v1(&server)]);
    watch.expect_start(json!({}));
    watch.wait_for("the stale status", is_status("stale"));
    assert_eq!(request_count(&server).await, 1);
    watch.mark();
    watch.send("refresh");
    let answer = watch
        .next_within(Duration::from_secs(1))
        .expect("stdout open");
    assert!(is_refresh(&answer), "{answer}\n{}", watch.transcript());
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no request before") && error.contains("GMT"),
        "the error names the time: {answer}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        request_count(&server).await,
        1,
        "a request during Retry-After"
    );
    watch.quit();
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_keeps_running_after_stdin_eof_until_sigterm() {
    let server = server_with_flags().await;
    let mut watch = Watch::spawn(&["--no-cache", "--base-url", &v1(&server)]);
    watch.expect_start(json!({}));
    watch.wait_for("the fresh status", is_status("fresh"));
    watch.close_stdin();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        watch.is_running(),
        "stdin EOF stopped the watch\n{}",
        watch.transcript()
    );
    watch.signal("-TERM");
    watch.assert_stops_cleanly();
}

/// A request that takes 30 s is in flight when the stop arrives.
async fn stop_mid_request(stop: impl FnOnce(&mut Watch)) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(flags_body())
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&server)
        .await;
    let mut watch = Watch::spawn(&["--no-cache", "--base-url", &v1(&server), "--timeout", "60s"]);
    watch.expect_start(json!({}));
    watch
        .wait_for_requests(&server, 1, "no request arrived")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(watch.is_running());
    let started = Instant::now();
    stop(&mut watch);
    let status = watch.wait_exit(STOP_WITHIN);
    let took = started.elapsed();
    watch.assert_stopped_cleanly(status);
    assert!(
        !watch.seen.iter().any(|v| v["source"] == "network"),
        "the delayed answer cannot have arrived\n{}",
        watch.transcript()
    );
    eprintln!("stopped mid-request in {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sigterm_mid_request_stops_promptly() {
    stop_mid_request(|w| w.signal("-TERM")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_sigint_mid_request_stops_promptly() {
    stop_mid_request(|w| w.signal("-INT")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_quit_mid_request_stops_promptly() {
    stop_mid_request(|w| w.send("quit")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_profile_id_stays_out_of_output_and_logs() {
    let server = server_with_flags().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("flags.json");
    let mut watch = Watch::spawn(&[
        "-vvv",
        "--profile-id",
        SECRET,
        "--cache-file",
        cache.to_str().unwrap(),
        "--base-url",
        &v1(&server),
    ]);
    watch.wait_for("the network snapshot", is_snapshot("network", flags_map()));
    watch.mark();
    watch.send("refresh");
    watch.wait_for("the refresh", is_refresh);
    watch.quit();
    for request in requests(&server).await {
        assert_eq!(
            query(&request).get("user").map(String::as_str),
            Some(SECRET)
        );
    }
    let transcript = watch.transcript();
    assert!(!watch.stderr().is_empty());
    assert!(!transcript.contains(SECRET), "{transcript}");
    assert_cache_keeps_secret(&cache);
}

// ---------------------------------------------------------------------------------------------
// MetaMask processing: --client-version, --profile-id, --metrics-id, --metrics-flags, --override
// ---------------------------------------------------------------------------------------------

/// Thresholds (Python hashlib): user-42 + newUI = 0.861312, 0x1234abcd + checkout-v2 = 0.8598,
/// user-42 + checkout-v2 = 0.065814.
fn rollout_body() -> Value {
    json!([
        {"gated": {"versions": {"13.0.0": "old", "13.2.0": "new"}}},
        {"newUI": [
            {"name": "control", "scope": {"type": "threshold", "value": 0.5}, "value": "A"},
            {"name": "treatment", "scope": {"type": "threshold", "value": 1}, "value": "B"}
        ]},
        {"checkout-v2": [
            {"name": "early", "scope": {"type": "threshold", "value": 0.5}, "value": 1},
            {"name": "late", "scope": {"type": "threshold", "value": 1}, "value": 2}
        ]},
        {"plain": true}
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn get_processes_versions_and_rollouts_and_prints_threshold_groups() {
    let server = MockServer::start().await;
    mount_flags(&server, rollout_body()).await;
    let base = v1(&server);
    let out = run(&[
        "get",
        "--no-cache",
        "--base-url",
        &base,
        "--client-version",
        "13.5.0",
        "--profile-id",
        "user-42",
        "--metrics-id",
        "0x1234abcd",
        "--metrics-flags",
        "checkout-v2,other",
        "--override",
        "plain=false",
        "--override",
        r#"extra={"k":[1]}"#,
    ])
    .await;
    out.assert_success();
    let value = out.get_json();
    assert_eq!(
        value["flags"],
        json!({"gated": "new", "newUI": "B", "checkout-v2": 2, "plain": false, "extra": {"k": [1]}}),
        "{out:#?}"
    );
    assert_eq!(
        value["threshold_groups"],
        json!({"newUI": "treatment", "checkout-v2": "late"}),
        "{out:#?}"
    );
    for id in ["user-42", "0x1234abcd"] {
        assert!(
            !out.stdout.contains(id) && !out.stderr.contains(id),
            "{out:#?}"
        );
    }
    // Without identities or a version, everything is shown as the server sent it.
    let raw = run(&["get", "--no-cache", "--base-url", &base]).await;
    let value = raw.get_json();
    assert_eq!(
        value["flags"]["newUI"],
        rollout_body()[1]["newUI"],
        "{raw:#?}"
    );
    assert!(value["flags"]["gated"]["versions"].is_object(), "{raw:#?}");
    assert_eq!(value["threshold_groups"], json!({}), "{raw:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metamask_options_read_the_environment() {
    let server = MockServer::start().await;
    mount_flags(&server, rollout_body()).await;
    let out = run_env(
        &["get", "--no-cache", "--base-url", &v1(&server)],
        &[
            ("FLAGPOLE_CLIENT_VERSION", "13.0.1"),
            ("FLAGPOLE_PROFILE_ID", "user-42"),
            ("FLAGPOLE_METRICS_ID", "0x1234abcd"),
            ("FLAGPOLE_METRICS_FLAGS", "checkout-v2"),
            ("FLAGPOLE_OVERRIDE", "plain=1"),
        ],
    )
    .await;
    out.assert_success();
    let value = out.get_json();
    assert_eq!(value["flags"]["gated"], json!("old"), "{out:#?}");
    assert_eq!(value["flags"]["checkout-v2"], json!(2), "{out:#?}");
    assert_eq!(value["flags"]["plain"], json!(1), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_of_another_client_version_is_not_used() {
    let server = MockServer::start().await;
    mount_flags(&server, rollout_body()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("flags.json");
    let base = v1(&server);
    let args = |version: &'static str| {
        vec![
            "get".to_owned(),
            "--cache-file".to_owned(),
            cache.to_str().unwrap().to_owned(),
            "--base-url".to_owned(),
            base.clone(),
            "--client-version".to_owned(),
            version.to_owned(),
        ]
    };
    let first = run(&args("13.0.0")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    assert_eq!(first.get_json()["source"], "network", "{first:#?}");
    let same = run(&args("13.0.0")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    assert_eq!(same.get_json()["source"], "cache", "{same:#?}");
    let newer = run(&args("13.2.0")
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>())
    .await;
    let value = newer.get_json();
    assert_eq!(value["source"], "network", "{newer:#?}");
    assert_eq!(value["flags"]["gated"], json!("new"), "{newer:#?}");
    assert_eq!(request_count(&server).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_client_version_names_the_option() {
    usage_error_case(&["--client-version", "13.1"], &["--client-version", "13.1"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_override_names_the_option() {
    usage_error_case(&["--override", "x=notjson"], &["--override", "x"]).await;
    usage_error_case(&["--override", "novalue"], &["--override", "novalue"]).await;
}

// ---------------------------------------------------------------------------------------------
// Reliability (issue 7): every option's bad values, corrupt defaults files, unusable caches
// ---------------------------------------------------------------------------------------------

/// `(option, bad value, what the message must also contain)`: given as `--option=value` after
/// `get` and after `watch`.
const BAD_VALUES: &[(&str, &str, &str)] = &[
    ("--client", "web", "web"),
    ("--client", "", "extension"),
    ("--distribution", "beta", "beta"),
    ("--environment", "staging", "staging"),
    ("--environment", "PROD ", "prod"),
    ("--fetch-interval", "soon", "soon"),
    ("--fetch-interval", "0s", "above zero"),
    ("--fetch-interval", "400d", "365 days"),
    ("--fetch-interval", "-1s", "-1s"),
    ("--timeout", "10", "10"),
    ("--timeout", "0s", "above zero"),
    ("--timeout", "400d", "365 days"),
    ("--backoff-initial", "x", "x"),
    ("--backoff-initial", "0s", "above zero"),
    ("--backoff-max", "y", "y"),
    ("--backoff-max", "1ms", "initial backoff"),
    ("--backoff-max", "400d", "365 days"),
    ("--cache-file", "", "value is required"),
    ("--defaults-file", "", "value is required"),
    ("--default", "novalue", "novalue"),
    ("--default", "=1", "empty flag name"),
    ("--default", "x=notjson", "not JSON"),
    ("--client-version", "13.1", "semantic version"),
    ("--client-version", "", "semantic version"),
    ("--override", "novalue", "novalue"),
    ("--override", "x=notjson", "not JSON"),
    ("--no-cache", "maybe", "maybe"),
    ("--disabled", "2", "2"),
    ("--verbose", "3", "3"),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_option_with_a_bad_value_exits_2_naming_the_option() {
    let server = server_with_flags().await;
    let base = v1(&server);
    for (option, value, also) in BAD_VALUES {
        let given = format!("{option}={value}");
        for sub in ["get", "watch"] {
            let out = run(&[sub, "--no-cache", "--base-url", &base, &given]).await;
            assert_usage_error(&out, &[option, also]);
        }
    }
    // The base URL, given once (a second --base-url would be its own error).
    for value in ["not-a-url", "ftp://127.0.0.1/v1", "", "http://"] {
        for sub in ["get", "watch"] {
            let given = format!("--base-url={value}");
            let out = run(&[sub, "--no-cache", &given]).await;
            assert_usage_error(&out, &["--base-url"]);
        }
    }
    let out = run(&["get", "--refresh=maybe", "--no-cache", "--base-url", &base]).await;
    assert_usage_error(&out, &["--refresh", "maybe"]);
    assert_eq!(
        request_count(&server).await,
        0,
        "no request on bad arguments"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_environment_variable_with_a_bad_value_exits_2_naming_the_option() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let table: &[(&str, &str, &str)] = &[
        ("FLAGPOLE_CLIENT", "web", "--client"),
        ("FLAGPOLE_DISTRIBUTION", "beta", "--distribution"),
        ("FLAGPOLE_ENVIRONMENT", "staging", "--environment"),
        ("FLAGPOLE_FETCH_INTERVAL", "0s", "--fetch-interval"),
        ("FLAGPOLE_TIMEOUT", "soon", "--timeout"),
        ("FLAGPOLE_BACKOFF_INITIAL", "0s", "--backoff-initial"),
        ("FLAGPOLE_BACKOFF_MAX", "y", "--backoff-max"),
        ("FLAGPOLE_DEFAULT", "novalue", "--default"),
        ("FLAGPOLE_CLIENT_VERSION", "latest", "--client-version"),
        ("FLAGPOLE_OVERRIDE", "novalue", "--override"),
        ("FLAGPOLE_NO_CACHE", "maybe", "--no-cache"),
        ("FLAGPOLE_DISABLED", "maybe", "--disabled"),
        ("FLAGPOLE_REFRESH", "maybe", "--refresh"),
        ("FLAGPOLE_REDIS_URL", "http://127.0.0.1:6379", "--redis-url"),
    ];
    for (var, value, option) in table {
        let out = run_env(&["get", "--no-cache", "--base-url", &base], &[(var, value)]).await;
        assert_usage_error(&out, &[option]);
    }
    let out = run_env(
        &["get", "--no-cache"],
        &[("FLAGPOLE_BASE_URL", "not-a-url")],
    )
    .await;
    assert_usage_error(&out, &["--base-url", "not-a-url"]);
    assert_eq!(request_count(&server).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_defaults_file_is_a_clear_error() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let dir = tempfile::tempdir().unwrap();
    let table: &[(&str, &[u8], &str)] = &[
        ("empty.json", b"", "not valid JSON"),
        ("blank.json", b" \n\t\n", "not valid JSON"),
        (
            "truncated.json",
            br#"{"a": true, "b": [1, 2"#,
            "not valid JSON",
        ),
        ("latin1.json", b"{\"caf\xe9\": true}", "not valid JSON"),
        ("bom.json", b"\xef\xbb\xbf{\"a\": true}", "not valid JSON"),
        (
            "trailing.json",
            br#"{"a": true} {"b": 1}"#,
            "not valid JSON",
        ),
        ("null.json", b"null", "expected a JSON object"),
        ("number.json", b"42", "expected a JSON object"),
        (
            "string.json",
            br#""{\"a\": true}""#,
            "expected a JSON object",
        ),
    ];
    for (name, contents, reason) in table {
        let file = dir.path().join(name);
        std::fs::write(&file, contents).unwrap();
        let path = file.to_str().unwrap();
        for sub in ["get", "watch"] {
            let out = run(&[
                sub,
                "--no-cache",
                "--base-url",
                &base,
                "--defaults-file",
                path,
            ])
            .await;
            assert_usage_error(&out, &["--defaults-file", path, reason]);
        }
    }
    // A directory where the file should be.
    let path = dir.path().to_str().unwrap();
    let out = run(&[
        "get",
        "--no-cache",
        "--base-url",
        &base,
        "--defaults-file",
        path,
    ])
    .await;
    assert_usage_error(&out, &["--defaults-file", path, "cannot read it"]);
    assert_eq!(request_count(&server).await, 0);
}

/// An unusable `--cache-file` is not a usage error: the flags are served from memory and the
/// problem is a warning on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_cache_file_warns_and_the_flags_are_still_served() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let under_a_file = blocker.join("flags.json");
    for cache in [dir.path(), under_a_file.as_path()] {
        let out = run(&[
            "get",
            "--cache-file",
            cache.to_str().unwrap(),
            "--base-url",
            &base,
        ])
        .await;
        out.assert_served_flags("network", flags_map());
        // Nothing is written over a cache that could not be read.
        assert!(
            out.stderr.contains("could not load the flag cache")
                && !out.stderr.contains("could not save the flag cache"),
            "{out:#?}"
        );
    }
    assert!(
        dir.path().is_dir() && blocker.is_file(),
        "nothing was clobbered"
    );
}

/// Processes sharing one cache file: eight `get --refresh` at once all save into it, and it is
/// a whole record afterwards that the next run serves without a request.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_processes_on_one_cache_file_leave_it_whole() {
    let server = server_with_flags().await;
    let base = v1(&server);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("shared.json");
    let path = cache.to_str().unwrap().to_owned();
    let runs = concurrent_gets(8, |_| {
        [
            "get",
            "--refresh",
            "--cache-file",
            &path,
            "--base-url",
            &base,
        ]
        .map(str::to_owned)
        .to_vec()
    })
    .await;
    for out in &runs {
        out.assert_served_flags("network", flags_map());
    }
    let record = flagpole::Store::load(&flagpole::FileStore::new(&cache))
        .unwrap()
        .expect("a whole record");
    assert_eq!(Value::Object(record.flags), flags_map());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    let before = request_count(&server).await;
    run(&["get", "--cache-file", &path, "--base-url", &base])
        .await
        .assert_served_flags("cache", flags_map());
    assert_eq!(request_count(&server).await, before);
}
