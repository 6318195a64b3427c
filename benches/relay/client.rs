//! The load client: a minimal HTTP/1.1 writer/reader over tokio's `TcpStream`, one request in
//! flight per keep-alive connection (no pipelining). Both servers face the same client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::server::{cpu_ns, status_kib, user_ns, Server};

/// Writes `request`, reads the whole answer into `buf`: its status, header length and body length.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> (u16, usize, usize) {
    stream.write_all(request).await.unwrap();
    let mut filled = 0;
    let mut head = 0;
    let mut total = usize::MAX;
    while filled < total {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        filled += n;
        if head == 0 {
            if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                head = end + 4;
                total = head + content_length(&buf[..end]);
            }
        }
    }
    assert_eq!(filled, total, "nothing after the body");
    let status = std::str::from_utf8(&buf[9..12]).unwrap().parse().unwrap();
    (status, head, total - head)
}

fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok()?.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.trim().parse().unwrap())
}

/// The first 200 (the relay answers 503 until its upstream fetch lands): head and body.
pub async fn fetch(port: u16, request: &[u8]) -> (String, Vec<u8>) {
    for _ in 0..500 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = vec![0; 16 * 1024];
        let (status, head, len) = exchange(&mut stream, request, &mut buf).await;
        if status == 200 {
            let text = String::from_utf8(buf[..head].to_vec()).unwrap();
            return (text, buf[head..head + len].to_vec());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no 200 after 10 s");
}

/// What one phase measured.
pub struct Outcome {
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// The server process's CPU time per request, in microseconds.
    pub cpu_us: f64,
    /// The part of it in user mode (the server's code, not the kernel's TCP work).
    pub user_us: f64,
    /// The server process's `VmRSS` every 50 ms, in KiB.
    pub rss: Vec<u64>,
}

/// `connections` fresh keep-alive connections send `request` back to back for `seconds`; every
/// answer must have `status` and a body of `len` bytes.
pub async fn phase(
    server: &Server,
    request: &[u8],
    (status, len): (u16, usize),
    connections: usize,
    seconds: f64,
) -> Outcome {
    let mut streams = Vec::new();
    for _ in 0..connections {
        let stream = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        streams.push(stream);
    }
    let request: Arc<[u8]> = request.into();
    let pid = server.pid();
    let (cpu_before, user_before) = (cpu_ns(pid), user_ns(pid));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            samples.extend(status_kib(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        samples
    });
    let mut tasks = JoinSet::new();
    for mut stream in streams {
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let mut buf = vec![0; 16 * 1024];
            let mut latencies = Vec::with_capacity(64 * 1024);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let (got, _, got_len) = exchange(&mut stream, &request, &mut buf).await;
                latencies.push(sent.elapsed().as_nanos() as u64);
                assert_eq!((got, got_len), (status, len));
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    let elapsed = start.elapsed();
    let cpu = cpu_ns(pid) - cpu_before;
    let user = user_ns(pid) - user_before;
    all.sort_unstable();
    let at = |q: f64| Duration::from_nanos(all[((all.len() - 1) as f64 * q) as usize]);
    Outcome {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
        cpu_us: cpu as f64 / 1e3 / all.len() as f64,
        user_us: user as f64 / 1e3 / all.len() as f64,
        rss: sampler.await.unwrap(),
    }
}
