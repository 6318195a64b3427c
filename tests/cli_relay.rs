//! `flagpole relay` as a process: a wiremock upstream, the relay binary in front of it, and
//! clients (`flagpole get`, reqwest, raw sockets) that only ever talk to the relay. Real time;
//! every relay is killed and reaped on drop, and every wait has a deadline.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use cli_support::flagpole;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use support::{closed_port_base, requests};

/// The bound on a wait that normally takes well under a second.
const WAIT: Duration = Duration::from_secs(15);
/// The relay's drain bound at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// Sent as `user=` by clients; must never reach upstream, the relay's logs or its cache files.
const SECRET: &str = "secret-profile-4242";

async fn upstream(body: &Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&server)
        .await;
    server
}

/// A running `flagpole relay`; killed and reaped on drop, so a failing test leaves none behind.
struct RelayProc {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl RelayProc {
    /// `flagpole relay --listen 127.0.0.1:0 --base-url <upstream>/v1 <args>`, once it printed
    /// the address it listens on.
    fn start(upstream: &MockServer, args: &[&str]) -> RelayProc {
        let mut cmd = flagpole();
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--base-url"])
            .arg(format!("{}/v1", upstream.uri()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn flagpole relay");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("flagpole relay listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("an address"));
                }
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut relay = RelayProc {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            stderr,
        };
        // The reader ends (and the channel with it) if the relay exits before listening.
        relay.addr = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no listening line ({e}); stderr:\n{}", relay.stderr()));
        relay
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success(), "kill -TERM {pid}");
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The exit status, once it comes within `limit`; panics (the guard kills it) otherwise.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay still running {limit:?} later; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then exit 0 within the drain bound (plus process teardown).
    fn stop(&mut self) {
        self.terminate();
        let status = self.wait_exit(DRAIN + Duration::from_secs(2));
        assert_eq!(status.code(), Some(0), "stderr:\n{}", self.stderr());
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// GETs `url` until it answers something other than 503 (the first fetch upstream).
async fn get_ready(url: &str) -> reqwest::Response {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let response = client.get(url).send().await.expect("the relay answers");
        if response.status() != 503 || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `cmd` to completion within [`WAIT`] (killed otherwise): exit code, stdout, stderr.
fn run(mut cmd: Command) -> (Option<i32>, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn flagpole");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no exit within {WAIT:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// Every file under `dir`, as text.
fn files_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default());
    }
    text
}

#[tokio::test]
async fn get_is_served_through_the_relay_and_user_never_leaves_it() {
    let body = json!([{"a": true}, {"b": {"x": [1, 2]}}, {"c": "text"}]);
    let up = upstream(&body).await;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    // Debug logs: a secret that were logged at any level would show.
    let mut relay = RelayProc::start(&up, &["--cache-dir", dir, "-vv"]);
    let first = get_ready(&relay.url(&format!("/v1/flags?user={SECRET}"))).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-flagpole-source"], "network");
    let got: Value = serde_json::from_slice(&first.bytes().await.unwrap()).unwrap();
    assert_eq!(got, body);

    // `flagpole get` pointed at the relay sends user=SECRET; it gets upstream's flags from the
    // relay's memory, so upstream sees no second request.
    let mut get = flagpole();
    get.args(["get", "--no-cache", "--profile-id", SECRET, "--base-url"])
        .arg(relay.url("/v1"));
    let (code, stdout, stderr) = run(get);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(printed["source"], "network", "{stdout}");
    assert_eq!(printed["error"], Value::Null, "{stdout}");
    assert_eq!(
        printed["flags"],
        json!({"a": true, "b": {"x": [1, 2]}, "c": "text"})
    );

    let seen = requests(&up).await;
    assert_eq!(seen.len(), 1, "only the relay's one fetch reaches upstream");
    let query = seen[0].url.query().unwrap_or_default().to_owned();
    assert_eq!(query, "client=extension&distribution=main&environment=prod");
    let headers = format!("{:?}", seen[0].headers);
    assert!(
        !query.contains("user") && !headers.contains(SECRET),
        "{headers}"
    );

    relay.stop();
    let logs = relay.stderr();
    assert!(logs.contains("relay started an upstream poller"), "{logs}");
    assert!(!logs.contains(SECRET), "the profile id was logged:\n{logs}");
    let stored = files_text(cache.path());
    assert!(stored.contains("\"c\""), "the cache file holds the flags");
    assert!(!stored.contains(SECRET), "the profile id was stored");
}

#[tokio::test]
async fn a_restarted_relay_serves_its_cache_at_once_without_asking_upstream() {
    let body = json!([{"feature": {"value": 7}}]);
    let up = upstream(&body).await;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let args = ["--cache-dir", dir, "--fetch-interval", "1h"];

    let mut relay = RelayProc::start(&up, &args);
    let first = get_ready(&relay.url("/v1/flags")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-flagpole-source"], "network");
    let file = cache.path().join("extension-main-prod.json");
    let deadline = Instant::now() + WAIT;
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no cache file {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    relay.stop();
    assert_eq!(requests(&up).await.len(), 1);

    let mut restarted = RelayProc::start(&up, &args);
    // The very first request: no retry loop, it must be served from the cache at once.
    let response = reqwest::get(restarted.url("/v1/flags")).await.unwrap();
    assert_eq!(response.status(), 200, "{}", restarted.stderr());
    assert_eq!(response.headers()["x-flagpole-source"], "cache");
    let max_age = response.headers()["cache-control"].to_str().unwrap();
    let left: u64 = max_age.strip_prefix("max-age=").unwrap().parse().unwrap();
    assert!((3590..=3600).contains(&left), "{max_age}");
    let got: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(got, body);
    // Give a (wrong) start-up fetch time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(&up).await.len(), 1, "the restart asked upstream");
    restarted.stop();
}

/// Sends a GET for the flags on a socket with a tiny receive buffer, and reads the head: the
/// response (larger than every socket buffer on the way) is then in flight until it is read.
async fn slow_reader(addr: SocketAddr) -> (std::net::TcpStream, usize) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap().into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut stream = stream;
    stream
        .write_all(b"GET /v1/flags HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the head ends early");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .expect("a Content-Length")
        .parse()
        .unwrap();
    (stream, length)
}

/// About 3 MB of flags: under upstream's 4 MiB limit, above what sockets buffer unread.
fn big_body() -> Value {
    json!([{"big": "x".repeat(3_000_000)}])
}

#[tokio::test]
async fn sigterm_stops_accepting_and_lets_a_response_in_flight_finish() {
    let up = upstream(&big_body()).await;
    let mut relay = RelayProc::start(&up, &["--no-cache"]);
    assert_eq!(get_ready(&relay.url("/v1/flags")).await.status(), 200);
    let (mut stream, length) = slow_reader(relay.addr).await;
    assert!(length > 3_000_000, "{length}");

    let signalled = Instant::now();
    relay.terminate();
    std::thread::sleep(Duration::from_millis(300));
    assert!(relay.is_running(), "it exited with a response in flight");
    let refused = std::net::TcpStream::connect_timeout(&relay.addr, Duration::from_secs(1));
    assert!(
        refused.is_err(),
        "it still accepts connections after SIGTERM"
    );

    let mut body = Vec::with_capacity(length);
    let read = (&mut stream).take(length as u64).read_to_end(&mut body);
    assert_eq!(read.unwrap(), length, "the response was cut");
    assert!(body.starts_with(b"[{\"big\":\"xxx"));
    let status = relay.wait_exit(DRAIN + Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{}", relay.stderr());
    assert!(
        signalled.elapsed() < DRAIN,
        "the drain waited for its bound ({:?}) though the response had finished",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn sigterm_exits_0_after_the_drain_bound_when_a_client_never_reads() {
    let up = upstream(&big_body()).await;
    let mut relay = RelayProc::start(&up, &["--no-cache"]);
    assert_eq!(get_ready(&relay.url("/v1/flags")).await.status(), 200);
    let (_stuck, _) = slow_reader(relay.addr).await;

    let signalled = Instant::now();
    relay.terminate();
    let status = relay.wait_exit(DRAIN + Duration::from_secs(2));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", relay.stderr());
    // It waited for the response in flight, and not past the bound.
    assert!(took >= DRAIN - Duration::from_millis(500), "{took:?}");
    assert!(took < DRAIN + Duration::from_millis(1500), "{took:?}");
}

#[test]
fn bad_listen_addresses_and_client_options_are_clear_errors() {
    let check = |args: &[&str], code: i32, needles: &[&str]| {
        let mut cmd = flagpole();
        cmd.args(["relay", "--no-cache", "--base-url", &closed_port_base()])
            .args(args);
        let (got, stdout, stderr) = run(cmd);
        assert_eq!(got, Some(code), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("flagpole: "), "{args:?}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{args:?}: {stderr}");
        }
    };
    check(&["--listen", "nonsense"], 2, &["--listen", "`nonsense`"]);
    check(
        &["--listen", "127.0.0.1"],
        2,
        &["--listen", "127.0.0.1:8080"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let listen = ["--listen", addr.as_str()];
    check(
        &listen,
        1,
        &["--listen", &format!("could not listen on {addr}")],
    );
    check(&["--max-connections", "0"], 2, &["--max-connections"]);
    check(
        &["--profile-id", SECRET],
        2,
        &["--profile-id", "does not apply"],
    );
    check(&["--override", "a=1"], 2, &["--override", "does not apply"]);
    check(&["--client-version", "1.2.3"], 2, &["--client-version"]);
    check(&["--cache-file", "/tmp/x.json"], 2, &["--cache-dir"]);
    check(&["--fetch-interval", "0s"], 2, &["--fetch-interval"]);
}
