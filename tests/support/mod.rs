//! Helpers shared by the integration test files; each file uses a subset.

use wiremock::{MockServer, Request};

#[cfg(feature = "redis")]
pub mod fleet;
pub mod redis_server;

/// Every request the server got so far, oldest first.
#[allow(dead_code)]
pub async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

/// `http://127.0.0.1:<port>` for a port that was just free: connecting is refused.
#[allow(dead_code)]
pub fn closed_port_base() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Shared by the reliability suites (`faults.rs`, `fuzz.rs`, `persistence.rs`, `cancellation.rs`,
// `soak.rs`); each test crate uses a subset, hence the `dead_code` allowances.
// ---------------------------------------------------------------------------------------------

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flagpole::{BoxFuture, Error, Flags, Response, ScriptedTransport, Status, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Fails the test instead of hanging when `fut` never completes (tokio time).
#[allow(dead_code)]
pub async fn within<F: Future>(what: &str, limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Yields until `done` holds, at most `turns` times: the paused clock stands still while a
/// store call blocks, so a timeout could never fire.
#[allow(dead_code)]
pub async fn yield_until(turns: usize, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..turns {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

/// Waits until the status satisfies `pred` (bounded by `limit`), and returns it.
#[allow(dead_code)]
pub async fn wait_status(
    flags: &Flags,
    what: &str,
    limit: Duration,
    pred: impl FnMut(&Status) -> bool,
) -> Status {
    let mut rx = flags.status_receiver();
    let status = within(what, limit, rx.wait_for(pred))
        .await
        .expect("status channel closed")
        .clone();
    status
}

/// The `If-None-Match` each request sent, oldest first.
#[allow(dead_code)]
pub fn if_none_match(requests: &[flagpole::Request]) -> Vec<Option<String>> {
    requests
        .iter()
        .map(|r| {
            r.headers
                .get("if-none-match")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect()
}

/// Tasks alive on the current runtime (the poller is one; `spawn_blocking` calls are not).
#[allow(dead_code)]
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[derive(Default)]
struct Log {
    sent: Vec<Instant>,
    completed: usize,
    abandoned: usize,
}

/// A `ScriptedTransport` wrapper that records when each request was sent (tokio time) and
/// whether its future completed or was dropped before completing.
#[allow(dead_code)]
#[derive(Clone)]
pub struct Recorder {
    inner: ScriptedTransport,
    log: Arc<Mutex<Log>>,
}

#[allow(dead_code)]
impl Recorder {
    pub fn new(inner: &ScriptedTransport) -> Self {
        Recorder {
            inner: inner.clone(),
            log: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When each request was sent, oldest first.
    pub fn times(&self) -> Vec<Instant> {
        self.lock().sent.clone()
    }

    pub fn count(&self) -> usize {
        self.lock().sent.len()
    }

    /// Requests whose future was dropped before it completed (timeout, disable, shutdown).
    pub fn abandoned(&self) -> usize {
        self.lock().abandoned
    }

    pub fn completed(&self) -> usize {
        self.lock().completed
    }
}

struct Probe {
    log: Arc<Mutex<Log>>,
    done: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if self.done {
            log.completed += 1;
        } else {
            log.abandoned += 1;
        }
    }
}

impl Transport for Recorder {
    fn send(&self, request: flagpole::Request) -> BoxFuture<'static, Result<Response, Error>> {
        let send = self.inner.send(request);
        let log = Arc::clone(&self.log);
        Box::pin(async move {
            // Sent when first polled, like `ScriptedTransport`: a future dropped unpolled is no
            // request at all.
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .sent
                .push(Instant::now());
            // The probe lives in the future, so that dropping the future drops it.
            let mut probe = Probe { log, done: false };
            let result = send.await;
            probe.done = true;
            result
        })
    }

    /// Opens go to the script as they are: `ScriptedTransport` records them itself.
    #[cfg(feature = "stream")]
    fn open(
        &self,
        request: flagpole::Request,
    ) -> BoxFuture<'static, Result<flagpole::StreamResponse, Error>> {
        self.inner.open(request)
    }
}

/// Log lines of the current thread, for asserting on warnings.
///
/// One global `fmt` subscriber (DEBUG and up) writes each event into the `Captured` installed on
/// the thread that logs it, or nowhere. A global subscriber rather than `set_default`: with
/// thread-local subscribers, tracing's per-callsite interest cache races with the other tests of
/// the binary and drops events now and then.
#[allow(dead_code)]
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Stops capturing on this thread when dropped.
#[allow(dead_code)]
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

#[allow(dead_code)]
impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Log lines at `level` ("ERROR", "WARN", ...) that contain `needle`.
    pub fn count(&self, level: &str, needle: &str) -> usize {
        self.text()
            .lines()
            .filter(|line| line.contains(level) && line.contains(needle))
            .count()
    }

    /// Captures this thread's events until the guard drops. Use a current-thread runtime so that
    /// the poller logs on this thread too.
    pub fn install(&self) -> CaptureGuard {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(self.clone()));
        CaptureGuard(())
    }
}

/// Writes into the current thread's [`Captured`], if any.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(captured) = &*c.borrow() {
                captured
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How [`RawServer`] answers a connection.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body and its Content-Length, then close.
    Json(String),
    /// 200 with a Content-Length of 1 MiB, a first fragment, then one byte every `every`, for at
    /// most 20 s: the body never completes before any sane timeout.
    Trickle { every: Duration },
    /// 200 with a Content-Length of 1 KiB, a few body bytes, then a TCP reset (SO_LINGER 0).
    ResetMidBody,
    /// 200 with a Content-Length of 1 KiB and a few body bytes, then nothing until the client
    /// hangs up (at most 20 s); each hang-up is counted.
    Stall,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for faults that wiremock cannot produce: resets, bodies
/// that trickle or stall. Every answer says `Connection: close`, so each request is a new
/// connection. Its tasks end with the test's runtime; every wait is bounded.
#[allow(dead_code)]
pub struct RawServer {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    connections: tokio::sync::watch::Sender<usize>,
    hangups: tokio::sync::watch::Sender<usize>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

#[allow(dead_code)]
impl RawServer {
    pub async fn start(reply: Reply) -> RawServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let connections = tokio::sync::watch::Sender::new(0usize);
        let hangups = tokio::sync::watch::Sender::new(0usize);
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&reply),
            connections.clone(),
            hangups.clone(),
        ));
        RawServer {
            addr,
            reply,
            connections,
            hangups,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How later connections are answered.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap_or_else(|e| e.into_inner()) = reply;
    }

    pub fn connections(&self) -> usize {
        *self.connections.borrow()
    }

    /// Waits (at most `limit`, real time) until `n` connections were accepted.
    pub async fn wait_connections(&self, n: usize, limit: Duration) {
        let mut rx = self.connections.subscribe();
        within("a connection", limit, rx.wait_for(|c| *c >= n))
            .await
            .expect("connection counter closed");
    }

    /// Waits (at most `limit`, real time) until clients have hung up `n` stalled connections.
    pub async fn wait_hangups(&self, n: usize, limit: Duration) {
        let mut rx = self.hangups.subscribe();
        within("the client to hang up", limit, rx.wait_for(|h| *h >= n))
            .await
            .expect("hang-up counter closed");
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    reply: Arc<Mutex<Reply>>,
    connections: tokio::sync::watch::Sender<usize>,
    hangups: tokio::sync::watch::Sender<usize>,
) {
    while let Ok((socket, _)) = listener.accept().await {
        connections.send_modify(|n| *n += 1);
        let reply = reply.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::spawn(answer(socket, reply, hangups.clone()));
    }
}

async fn answer(
    mut socket: tokio::net::TcpStream,
    reply: Reply,
    hangups: tokio::sync::watch::Sender<usize>,
) {
    const LIMIT: Duration = Duration::from_secs(20);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buf[..read]),
        }
    }
    let start = |length: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n[{{\"a\": "
        )
    };
    match reply {
        Reply::Json(body) => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        Reply::Trickle { every } => {
            if socket.write_all(start(1 << 20).as_bytes()).await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(LIMIT, async {
                loop {
                    tokio::time::sleep(every).await;
                    if socket.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            })
            .await;
        }
        Reply::ResetMidBody => {
            let _ = socket.write_all(start(1024).as_bytes()).await;
            let _ = socket.flush().await;
            // Let the client read the head and the fragment, then reset instead of closing.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = socket.set_zero_linger();
            drop(socket);
        }
        Reply::Stall => {
            if socket.write_all(start(1024).as_bytes()).await.is_err() {
                return;
            }
            let hung_up = tokio::time::timeout(LIMIT, async {
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok();
            if hung_up {
                hangups.send_modify(|n| *n += 1);
            }
        }
    }
}

#[allow(dead_code)]
impl RawServer {
    /// Stops accepting: the port refuses connections from then on (connections already
    /// accepted finish on their own).
    pub async fn stop_listening(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port (SO_REUSEADDR), answering as before.
    pub async fn listen_again(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).expect("rebind the same port");
        let listener = socket.listen(64).unwrap();
        self.accept = Some(tokio::spawn(accept_loop(
            listener,
            Arc::clone(&self.reply),
            self.connections.clone(),
            self.hangups.clone(),
        )));
    }
}

/// A log buffer for a subscriber a test builds itself (for instance at TRACE level with
/// `set_default`): every event the subscriber formats is appended to it.
#[allow(dead_code)]
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

#[allow(dead_code)]
impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// One gate of a [`GatedStore`]: closed, blocking calls wait until it opens.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
    /// Notified when a call reaches the gate.
    pub entered: tokio::sync::Notify,
    /// Notified when a call that passed the gate returns.
    pub finished: tokio::sync::Notify,
}

#[allow(dead_code)]
impl Gate {
    fn pass(&self) {
        self.entered.notify_one();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    pub fn close(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// A `MemoryStore` whose loads and saves can be held inside the store (a slow disk, a hung
/// network file system). Both gates start closed.
#[allow(dead_code)]
#[derive(Clone, Default)]
pub struct GatedStore {
    pub inner: flagpole::MemoryStore,
    pub load: Arc<Gate>,
    pub save: Arc<Gate>,
}

#[allow(dead_code)]
impl GatedStore {
    /// Loads pass at once; saves wait for the gate.
    pub fn saves_gated() -> Self {
        let store = GatedStore::default();
        store.load.open();
        store
    }

    pub fn open(&self) {
        self.load.open();
        self.save.open();
    }

    /// Opens both gates when dropped, even when an assertion fails, so that a blocked store
    /// call cannot hang the runtime's shutdown.
    pub fn open_on_drop(&self) -> OpenOnDrop {
        OpenOnDrop(self.clone())
    }
}

/// See [`GatedStore::open_on_drop`].
pub struct OpenOnDrop(GatedStore);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl flagpole::Store for GatedStore {
    fn load(&self) -> Result<Option<flagpole::CacheRecord>, Error> {
        self.load.pass();
        let loaded = self.inner.load();
        self.load.finished.notify_one();
        loaded
    }

    fn save(&self, record: &flagpole::CacheRecord) -> Result<(), Error> {
        self.save.pass();
        let saved = self.inner.save(record);
        self.save.finished.notify_one();
        saved
    }
}
