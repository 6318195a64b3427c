use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{BoxFuture, Request, Response, Transport};
use crate::error::Error;

/// One canned answer for [`ScriptedTransport`]: a response or an error, after an optional delay.
///
/// ```
/// use std::time::Duration;
/// use flagpole::{Error, ScriptedResponse, ScriptedTransport};
///
/// let transport = ScriptedTransport::new();
/// transport
///     .push(ScriptedResponse::json(&serde_json::json!({"beta": true})).header("etag", "\"v1\""))
///     .push(ScriptedResponse::status(304).delay(Duration::from_millis(10)))
///     .push(ScriptedResponse::error(Error::Timeout { after: Duration::from_secs(10) }));
/// ```
#[derive(Debug, Clone)]
pub struct ScriptedResponse {
    outcome: Result<Response, Error>,
    delay: Duration,
    hang: bool,
}

impl ScriptedResponse {
    /// A response with this status and an empty body.
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status code (100 to 999).
    pub fn status(status: u16) -> Self {
        Self::body(status, Vec::new())
    }

    /// A response with this status and raw body bytes. The status is a plain number so that
    /// scripts stay short (`ScriptedResponse::status(503)`).
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status code (100 to 999).
    pub fn body(status: u16, body: impl Into<Vec<u8>>) -> Self {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status code");
        ScriptedResponse {
            outcome: Ok(Response::new(status, HeaderMap::new(), body.into())),
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// A 200 response whose body is `value` as JSON.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::body(200, value.to_string())
    }

    /// A transport failure, e.g. [`Error::Connect`].
    pub fn error(error: Error) -> Self {
        ScriptedResponse {
            outcome: Err(error),
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// A request that never completes (until the poller's timeout or shutdown drops it).
    pub fn hang() -> Self {
        ScriptedResponse {
            hang: true,
            ..Self::status(200)
        }
    }

    /// Adds a response header.
    ///
    /// # Panics
    /// On a header name or value that HTTP does not allow (a bug in the test itself).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Ok(response) = &mut self.outcome {
            let (name, value) = header(name, value);
            response.headers.append(name, value);
        }
        self
    }

    /// Answers only after `delay` (tokio time, so a paused clock skips it).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A header a test scripted.
///
/// # Panics
/// On a name or value that HTTP does not allow (a bug in the test itself).
pub(super) fn header(name: &str, value: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
        HeaderValue::from_str(value).expect("valid header value"),
    )
}

#[derive(Default)]
struct Script {
    queue: VecDeque<ScriptedResponse>,
    last: Option<ScriptedResponse>,
    requests: Vec<Request>,
    #[cfg(feature = "stream")]
    streams: VecDeque<super::ScriptedStream>,
    #[cfg(feature = "stream")]
    stream_requests: Vec<Request>,
}

/// An in-memory [`Transport`] for tests: answers from a queue of [`ScriptedResponse`]s and records
/// every request. When the queue runs dry the last answer repeats. No sockets, so it is safe with
/// `#[tokio::test(start_paused = true)]`.
///
/// Clones share one script, so a test keeps a clone to push answers and count requests while the
/// poller owns the other.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flagpole::{Flags, ScriptedResponse, ScriptedTransport};
///
/// let transport = ScriptedTransport::new();
/// transport.push(ScriptedResponse::json(&serde_json::json!([{"beta": true}])));
/// let flags = Flags::builder().transport(transport.clone()).build().unwrap();
/// flags.refresh().await.unwrap();
/// assert_eq!(flags.get_bool("beta"), Some(true));
/// assert!(transport.request_count() >= 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ScriptedTransport {
    script: Arc<Mutex<Script>>,
}

impl fmt::Debug for ScriptedTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let script = self.lock();
        f.debug_struct("ScriptedTransport")
            .field("queued", &script.queue.len())
            .field("requests", &script.requests.len())
            .finish()
    }
}

impl ScriptedTransport {
    /// An empty script: requests fail with [`Error::Connect`] until an answer is pushed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an answer.
    pub fn push(&self, response: ScriptedResponse) -> &Self {
        self.lock().queue.push_back(response);
        self
    }

    /// Drops queued answers and makes `response` the answer to every request from now on.
    pub fn set(&self, response: ScriptedResponse) -> &Self {
        let mut script = self.lock();
        script.queue.clear();
        script.last = Some(response);
        self
    }

    /// How many requests were sent so far (a request counts once its future is first polled).
    pub fn request_count(&self) -> usize {
        self.lock().requests.len()
    }

    /// Every request sent so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Queues an answer to the next [`open`](Transport::open) of a change stream. Once the
    /// queue is empty, opens fail with [`Error::Connect`] (the server is down).
    #[cfg(feature = "stream")]
    pub fn push_stream(&self, stream: super::ScriptedStream) -> &Self {
        self.lock().streams.push_back(stream);
        self
    }

    /// How many change streams were opened (or tried) so far.
    #[cfg(feature = "stream")]
    pub fn stream_count(&self) -> usize {
        self.lock().stream_requests.len()
    }

    /// Every request that opened (or tried to open) a change stream, oldest first.
    #[cfg(feature = "stream")]
    pub fn stream_requests(&self) -> Vec<Request> {
        self.lock().stream_requests.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Script> {
        // A panicking test thread must not poison the script for the others.
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the scripted transport has no answer queued")]
struct EmptyScript;

impl Transport for ScriptedTransport {
    /// Nothing happens until the returned future is first polled, as with a real client: the
    /// request is recorded and the next answer taken then (a future dropped unpolled sent
    /// nothing). The body limit is the poller's to enforce, as it does for every transport.
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let script = self.clone();
        Box::pin(async move {
            let answer = {
                let mut script = script.lock();
                script.requests.push(request);
                if let Some(next) = script.queue.pop_front() {
                    script.last = Some(next);
                }
                script.last.clone()
            };
            let Some(answer) = answer else {
                return Err(Error::connect(EmptyScript));
            };
            if answer.hang {
                std::future::pending::<()>().await;
            }
            if !answer.delay.is_zero() {
                tokio::time::sleep(answer.delay).await;
            }
            answer.outcome
        })
    }

    /// Takes the next scripted stream when the future is first polled, as [`send`](Self::send)
    /// does; with none queued, the open fails with [`Error::Connect`].
    #[cfg(feature = "stream")]
    fn open(&self, request: Request) -> BoxFuture<'static, Result<super::StreamResponse, Error>> {
        let script = self.clone();
        Box::pin(async move {
            let next = {
                let mut script = script.lock();
                script.stream_requests.push(request);
                script.streams.pop_front()
            };
            match next {
                Some(stream) => stream.answer().await,
                None => Err(Error::connect(EmptyScript)),
            }
        })
    }
}
