//! The two servers, each in a child process of its own (this binary re-run as `serve ...`), and
//! the parent's handle on them: port, memory and CPU time read from `/proc`.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flagpole::relay::Relay;
use flagpole::{Flags, ScriptedResponse, ScriptedTransport};
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::common;

/// The child's side: `serve relay`, or `serve minimal <len> <etag>` with the body's `<len>` bytes
/// on stdin. Prints `listening <port>`, then serves until stdin closes (the parent is done, or
/// gone).
pub fn serve(args: &[String]) {
    let mut stdin = std::io::stdin();
    let minimal = (args[0] == "minimal").then(|| {
        let mut body = vec![0; args[1].parse().unwrap()];
        stdin.read_exact(&mut body).unwrap();
        (Bytes::from(body), HeaderValue::from_str(&args[2]).unwrap())
    });
    // The relay's runtime shape (what `flagpole relay` runs): multi-threaded, a worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let stop = tokio::task::spawn_blocking(move || {
            let _ = stdin.read_to_end(&mut Vec::new());
        });
        match minimal {
            None => {
                // Upstream answers the 100-flag body once; the default interval (a day) means
                // no other fetch during the test.
                let transport = ScriptedTransport::new();
                transport.push(ScriptedResponse::body(200, common::body(crate::FLAGS, 0)));
                let relay = Relay::builder(Flags::builder().transport(transport))
                    .bind("127.0.0.1:0".parse().unwrap())
                    .await
                    .unwrap();
                announce(relay.local_addr().port());
                let _ = stop.await;
                relay.shutdown().await;
            }
            Some((body, etag)) => {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                announce(listener.local_addr().unwrap().port());
                tokio::spawn(minimal_server(listener, body, etag));
                let _ = stop.await;
            }
        }
    });
}

fn announce(port: u16) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {port}").unwrap();
    out.flush().unwrap();
}

/// Named once, as the relay does (a name given as `&str` is parsed on every insert).
const X_FLAGPOLE_SOURCE: HeaderName = HeaderName::from_static("x-flagpole-source");

/// The baseline: the relay's accept loop and connection setup (a connection limit, a `JoinSet`,
/// `TCP_NODELAY`, hyper's http1 builder with the same timer and header timeout), with a handler
/// answering the same bytes and headers from statics: 304 when `If-None-Match` is the tag.
async fn minimal_server(listener: TcpListener, body: Bytes, etag: HeaderValue) {
    let permits = Arc::new(Semaphore::new(10_000));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else { continue };
                connections.spawn(connection(stream, permit, body.clone(), etag.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    body: Bytes,
    etag: HeaderValue,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        let fresh = request.headers().get(IF_NONE_MATCH) == Some(&etag);
        let mut response =
            Response::new(Full::new(if fresh { Bytes::new() } else { body.clone() }));
        let headers = response.headers_mut();
        headers.insert(ETAG, etag.clone());
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=86400"));
        headers.insert(X_FLAGPOLE_SOURCE, HeaderValue::from_static("network"));
        if fresh {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
        } else {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// The parent's handle on a server process.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `serve <args>`, writes `input` to its stdin and waits for its port.
    pub fn start(args: &[&str], input: &[u8]) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.as_mut().unwrap().write_all(input).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("listening ").unwrap();
        Server {
            port: port.parse().unwrap(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:").unwrap_or(0)
    }

    /// Closes its stdin (it exits) and waits for it.
    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`: resident memory, every thread's).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// CPU time the process's threads have run so far (the first field of each thread's
/// `/proc/<pid>/task/<tid>/schedstat`, in nanoseconds).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            text.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// User-mode CPU time of the process so far (`utime` of `/proc/<pid>/stat`), in nanoseconds:
/// the server's own code, without the kernel's TCP work. Clock ticks: 10 ms resolution.
pub fn user_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces): utime is the 12th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .nth(11)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    ticks * 10_000_000 // USER_HZ is 100 on Linux
}
