//! `flagpole watch --stream` as a process against a relay in this process (real time, real
//! sockets): a change upstream reaches the watcher through the relay's change stream while its
//! own fetch interval is an hour; a server without the stream is reported once; `get` ignores
//! `--stream`; without it the output is unchanged.

#[path = "support/cli.rs"]
mod cli_support;
mod relay_support;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cli_support::flagpole;
use relay_support::{bind, builder, Upstream};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The bound on a wait that normally takes well under a second.
const WAIT: Duration = Duration::from_secs(15);

/// A running `flagpole watch`, its stdout lines parsed as they come; killed on drop.
struct Watcher {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    fn spawn(base: &str, args: &[&str]) -> Watcher {
        let mut child = flagpole()
            .args([
                "watch",
                "--no-cache",
                "--fetch-interval",
                "1h",
                "--base-url",
                base,
            ])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flagpole watch");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).expect("stdout lines are JSON");
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, sink) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Watcher {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The first line (seen or to come) that matches, within [`WAIT`].
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
        panic!("no {what} within {WAIT:?}; stdout: {:#?}", self.seen);
    }

    /// `quit`, then exit 0 within [`WAIT`]; the remaining lines are read.
    fn quit(&mut self) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"quit\n").unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "watch did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{status:?}");
        self.seen.extend(self.lines.iter());
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn metrics(relay: &flagpole::relay::Relay) -> String {
    let base = format!("http://{}", relay.local_addr());
    relay_support::scrape(&reqwest::Client::new(), &base).await
}

fn is_status(stream: &'static str) -> impl Fn(&Value) -> bool {
    move |line| line["event"] == "status" && line["stream"] == stream
}

fn serves(flags: Value) -> impl Fn(&Value) -> bool {
    move |line| line["event"] == "snapshot" && line["flags"] == flags
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_reaches_watch_through_the_relays_stream_not_its_hourly_poll() {
    let (upstream, server) = Upstream::start(json!([{"v": 1}])).await;
    let relay = bind(builder(&server)).await;
    let base = format!("http://{}/v1", relay.local_addr());
    let mut watch = tokio::task::block_in_place(|| {
        let mut watch = Watcher::spawn(&base, &["--stream"]);
        watch.wait_for("a connected stream", is_status("connected"));
        watch.wait_for("the first flags", serves(json!({"v": 1})));
        watch
    });
    upstream.set_body(json!([{"v": 2}]));
    tokio::task::block_in_place(|| {
        watch.wait_for("the change", serves(json!({"v": 2})));
        watch.quit();
    });
    let scrape = metrics(&relay).await;
    assert!(scrape.contains("route=\"stream\""), "{scrape}");
    let last = watch.seen.last().unwrap();
    assert_eq!(
        (&last["status"], &last["stream"]),
        (&json!("stopped"), &json!("off")),
        "{last}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_the_stream_is_reported_once_and_polled_as_before() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"v": 1}])))
        .mount(&server)
        .await;
    let base = format!("{}/v1", server.uri());
    let mut watch = tokio::task::block_in_place(|| {
        let mut watch = Watcher::spawn(&base, &["--stream"]);
        watch.wait_for("the unsupported stream", is_status("unsupported"));
        watch.wait_for("the flags", serves(json!({"v": 1})));
        watch
    });
    // Long enough for a (wrong) retry of the stream at the backoff's first delay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| watch.quit());
    let opens = support::requests(&server)
        .await
        .iter()
        .filter(|r| r.url.path() == "/v1/flags/stream")
        .count();
    assert_eq!(opens, 1);
    let stderr = watch.stderr();
    assert_eq!(
        stderr.matches("has no change stream").count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_ignores_stream_and_watch_without_it_prints_no_stream_key() {
    let (_upstream, server) = Upstream::start(json!([{"v": 1}])).await;
    let relay = bind(builder(&server)).await;
    let base = format!("http://{}/v1", relay.local_addr());
    let output = tokio::task::block_in_place(|| {
        flagpole()
            .args(["get", "--stream", "--no-cache", "--base-url", &base])
            .output()
            .unwrap()
    });
    assert!(output.status.success());
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["flags"], json!({"v": 1}));
    let scrape = metrics(&relay).await;
    assert!(!scrape.contains("route=\"stream\""), "{scrape}");
    let watch = tokio::task::block_in_place(|| {
        let mut watch = Watcher::spawn(&base, &[]);
        watch.wait_for("the flags", serves(json!({"v": 1})));
        watch.wait_for("fresh", |l| l["status"] == "fresh");
        watch.quit();
        watch
    });
    assert!(
        watch.seen.iter().all(|l| l.get("stream").is_none()),
        "{:#?}",
        watch.seen
    );
    relay.shutdown().await;
}
