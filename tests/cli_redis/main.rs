//! The `flagpole` binary in shared mode (`--redis-url`): processes on one real `redis-server`
//! (`support/redis_server.rs`) and one wiremock API, in real time. Every child process is killed
//! and reaped on drop, so a failing test leaves none behind; every wait has a deadline.

#[path = "../support/cli.rs"]
mod cli_support;
#[path = "../support/mod.rs"]
mod support;

use cli_support::flagpole;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use support::redis_server::RedisServer;
use support::requests;

/// The bound on a wait that normally takes well under a second.
const WAIT: Duration = Duration::from_secs(15);
/// In every Redis URL with a password: it must never show on stdout or stderr.
const PASSWORD: &str = "hunter2-redis-secret";

/// The API: `{"generation": n}` for the n-th request, so that every fetch brings new flags and
/// a process's flags tell which fetch they came from.
struct Generations(AtomicU64);

impl Respond for Generations {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!([{ "generation": n }]))
    }
}

async fn api() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(Generations(AtomicU64::new(0)))
        .mount(&server)
        .await;
    server
}

fn base(api: &MockServer) -> String {
    format!("{}/v1", api.uri())
}

async fn request_count(api: &MockServer) -> usize {
    requests(api).await.len()
}

/// A child with its stdout lines and stderr collected by threads; killed and reaped on drop.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn flagpole");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, sink) = (child.stdout.take().unwrap(), Arc::clone(&stdout));
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let (mut err, sink) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        let text = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            stdout,
            stderr,
            readers: vec![lines, text],
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn transcript(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr())
    }

    /// Every `watch` line so far, checked for shape (with --redis-url: status lines carry
    /// `shared`).
    fn events(&self) -> Vec<Value> {
        let lines = self.stdout.lock().unwrap().clone();
        lines.iter().map(|line| self.event(line)).collect()
    }

    fn event(&self, line: &str) -> Value {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", self.transcript()));
        match value["event"].as_str() {
            Some("snapshot") => assert!(
                ["network", "shared", "cache", "defaults"]
                    .contains(&value["source"].as_str().unwrap()),
                "{line}"
            ),
            Some("status") => {
                let keys = ["event", "status", "error", "next_retry_ms", "shared"];
                assert_keys(line, &value, &keys);
                assert!(
                    ["connecting", "joined", "down"].contains(&value["shared"].as_str().unwrap()),
                    "{line}"
                );
            }
            Some("refresh") => {}
            _ => panic!("unknown event: {line}"),
        }
        value
    }

    /// The snapshot lines so far.
    fn snapshots(&self) -> Vec<Value> {
        let events = self.events();
        events
            .into_iter()
            .filter(|v| v["event"] == "snapshot")
            .collect()
    }

    /// The generation of the newest remote flags printed, if any.
    fn generation(&self) -> Option<u64> {
        self.snapshots().last()?["flags"]["generation"].as_u64()
    }

    /// The `shared` field of the status lines so far.
    fn shared_states(&self) -> Vec<String> {
        let events = self.events().into_iter();
        let states = events.filter(|v| v["event"] == "status");
        states
            .map(|v| v["shared"].as_str().unwrap().to_owned())
            .collect()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit (killing the child and failing after [`WAIT`]) and the last output.
    fn finish(mut self) -> Run {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {WAIT:?}\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        Run {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A finished run.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// A successful `get` that served from `source`, with `shared` as given (`None`: no key).
    fn served(&self, source: &str, shared: Option<&str>) -> Value {
        assert_eq!(self.code, Some(0), "{self:#?}");
        let value: Value = serde_json::from_str(self.stdout.trim_end()).expect("one JSON line");
        let mut want = vec![
            "source",
            "cache_timestamp",
            "flags",
            "threshold_groups",
            "error",
        ];
        want.extend(shared.map(|_| "shared"));
        assert_keys(&self.stdout, &value, &want);
        assert_eq!(value["source"], source, "{self:#?}");
        assert_eq!(value["shared"].as_str(), shared, "{self:#?}");
        value
    }

    /// Exit 2, nothing on stdout, one line on stderr about --redis-url, and no password.
    fn assert_redis_url_refused(&self) {
        assert_eq!(self.code, Some(2), "{self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{self:#?}");
        assert!(lines[0].starts_with("flagpole: --redis-url: "), "{self:#?}");
        assert_keeps_password(self);
    }
}

/// `value`, parsed from `line`, has exactly the keys `want`, printed in that order.
fn assert_keys(line: &str, value: &Value, want: &[&str]) {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut sorted = want.to_vec();
    keys.sort_unstable();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "{line}");
    let at: Vec<usize> = want
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(
        at.is_sorted(),
        "keys out of the documented order {want:?}: {line}"
    );
}

fn assert_keeps_password(run: &Run) {
    assert!(
        !run.stdout.contains(PASSWORD),
        "stdout shows the password: {run:#?}"
    );
    assert!(
        !run.stderr.contains(PASSWORD),
        "stderr shows the password: {run:#?}"
    );
}

/// `flagpole <args>` to its exit, with `envs` set.
async fn run(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = flagpole();
    cmd.args(args).envs(envs.iter().copied());
    tokio::task::spawn_blocking(move || Proc::spawn(cmd).finish())
        .await
        .unwrap()
}

/// `flagpole watch` against `api`, no cache file, with `extra` options.
fn watch(api: &MockServer, extra: &[&str]) -> Proc {
    let mut cmd = flagpole();
    cmd.args(["watch", "--no-cache", "--base-url", &base(api)])
        .args(extra);
    Proc::spawn(cmd)
}

/// Polls `done` every 20 ms until it holds; after `within`, fails with `what` and `context`.
async fn wait_until(
    what: &str,
    within: Duration,
    done: impl Fn() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "no {what} within {within:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

mod fleet;
mod single;
