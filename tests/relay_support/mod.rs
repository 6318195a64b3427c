//! Helpers of the relay's wire tests (`relay.rs`, `relay_stream.rs`, `relay_ops.rs`): an
//! upstream whose answer the test changes, a relay in this process, a change-stream reader and a
//! raw HTTP/1.1 client. Each test file uses a subset, hence the `dead_code` allowances.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flagpole::relay::{Relay, RelayBuilder};
use flagpole::Flags;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Respond, ResponseTemplate};

/// What the upstream answers now.
struct Answer {
    status: u16,
    body: Value,
    delay: Duration,
    /// When the current body was first served with a 200.
    served: Option<Instant>,
}

/// A Client Config API whose answer the test changes.
#[derive(Clone)]
pub struct Upstream {
    answer: Arc<Mutex<Answer>>,
}

impl Respond for Upstream {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let mut answer = self.answer.lock().unwrap();
        if answer.status == 200 && answer.served.is_none() {
            answer.served = Some(Instant::now());
        }
        ResponseTemplate::new(answer.status)
            .set_body_json(answer.body.clone())
            .set_delay(answer.delay)
    }
}

impl Upstream {
    /// An upstream answering 200 with `body`, and its server.
    pub async fn start(body: Value) -> (Upstream, MockServer) {
        let upstream = Upstream {
            answer: Arc::new(Mutex::new(Answer {
                status: 200,
                body,
                delay: Duration::ZERO,
                served: None,
            })),
        };
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/flags"))
            .respond_with(upstream.clone())
            .mount(&server)
            .await;
        (upstream, server)
    }

    /// Answers 200 with `body` from now on.
    pub fn set_body(&self, body: Value) {
        let mut answer = self.answer.lock().unwrap();
        answer.status = 200;
        answer.body = body;
        answer.served = None;
    }

    /// Answers `status` (with an error body) from now on.
    pub fn set_status(&self, status: u16) {
        self.answer.lock().unwrap().status = status;
    }

    /// Waits `delay` before each answer from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.answer.lock().unwrap().delay = delay;
    }

    /// When the body set last was first served.
    pub fn served(&self) -> Option<Instant> {
        self.answer.lock().unwrap().served
    }
}

/// A relay builder polling `server` every 50 ms (no jitter), so a change upstream reaches the
/// relay within one interval.
pub fn builder(server: &MockServer) -> RelayBuilder {
    Relay::builder(
        Flags::builder()
            .base_url(server.uri())
            .fetch_interval(Duration::from_millis(50))
            .schedule_jitter(0.0)
            .backoff_initial(Duration::from_millis(50)),
    )
}

pub async fn bind(builder: RelayBuilder) -> Relay {
    builder.bind("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// GETs `url` until it answers something other than 503 (the first flags take a fetch).
pub async fn get_ready(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = client.get(url).send().await.unwrap();
        if response.status() != 503 || Instant::now() > deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One block of a change stream: an event or a comment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Block {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<Value>,
    pub comment: Option<String>,
}

/// Reads a change stream block by block.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// Opens the stream at `url`, checking its headers.
    pub async fn open(client: &reqwest::Client, url: &str) -> Sse {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next block, or `None` when the stream ended; panics after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Block> {
        self.read(limit).await.expect("a block within the limit")
    }

    /// The next event, skipping keep-alive comments; panics after `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Block> {
        let deadline = Instant::now() + limit;
        loop {
            let block = self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if block.event.is_some() {
                return Some(block);
            }
        }
    }

    /// Whether no event comes within `limit` (comments aside) and the stream stays open.
    pub async fn quiet(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Err(_) => return true,
                Ok(Some(block)) if block.event.is_none() => {}
                Ok(_) => return false,
            }
        }
    }

    /// The next block, `Ok(None)` when the stream ended, `Err` after `limit`.
    async fn read(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Block>, tokio::time::error::Elapsed> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                return Ok(Some(parse_block(&text)));
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await? {
                Ok(Some(bytes)) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }
}

fn parse_block(text: &str) -> Block {
    let mut block = Block::default();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            block.comment = Some(comment.trim().to_owned());
        } else if let Some((field, value)) = line.split_once(": ") {
            match field {
                "event" => block.event = Some(value.to_owned()),
                "id" => block.id = Some(value.to_owned()),
                "data" => block.data = Some(serde_json::from_str(value).unwrap()),
                other => panic!("unexpected field {other} in {text:?}"),
            }
        }
    }
    block
}

/// A connection whose receive buffer is small, so that a response the test does not read fills
/// it in kilobytes.
pub async fn small_window(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends a GET of `path` on `stream`.
pub async fn send_get(stream: &mut TcpStream, path: &str, close: bool) {
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// GET `path` on a new connection (closed after the answer): the status and body, or the error
/// of a connection the relay refused or closed.
pub async fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    send_get(&mut stream, path, true).await;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        )
    })?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    Ok((status, body.to_owned()))
}

/// The value of the sample `name` (labels included, e.g. `x_total{set="a"}`) in a scrape.
pub fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` now.
pub async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Waits until `/metrics` satisfies `check`; panics with the last scrape after `limit`.
pub async fn wait_metrics(
    client: &reqwest::Client,
    base: &str,
    limit: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = scrape(client, base).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never matched:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one response with a `content-length` from `stream`: its status and body.
pub async fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if body.len() >= length {
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
            return Ok((status, body.to_owned()));
        }
    }
}

/// The response's body as JSON.
pub async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// `/v1/flags` requests answered with `status` in a scrape.
pub fn flags_answers(scrape: &str, status: u16) -> f64 {
    let name = format!(r#"flagpole_relay_requests_total{{route="flags",status="{status}"}}"#);
    metric(scrape, &name).unwrap_or(0.0)
}
