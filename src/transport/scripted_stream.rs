//! Scripted change streams for [`ScriptedTransport`](super::ScriptedTransport): each open takes
//! the next [`ScriptedStream`], whose body the test feeds and ends at will.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use super::{Chunks, StreamResponse};
use crate::error::Error;

/// The capacity of a scripted body: far more than any test sends before the client reads.
const FEED_CAPACITY: usize = 1024;

/// One canned answer to [`Transport::open`](super::Transport::open), for
/// [`ScriptedTransport::push_stream`](super::ScriptedTransport::push_stream).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flagpole::{ScriptedStream, ScriptedTransport};
///
/// let transport = ScriptedTransport::new();
/// let (stream, feed) = ScriptedStream::events();
/// transport.push_stream(stream).push_stream(ScriptedStream::status(503));
/// feed.send("event: flags\nid: \"v2\"\ndata: {}\n\n");
/// drop(feed); // the server closes the stream: the client reconnects and gets the 503
/// # }
/// ```
#[derive(Debug)]
pub struct ScriptedStream {
    outcome: Result<(StatusCode, HeaderMap), Error>,
    body: Option<Chunks>,
    delay: Duration,
}

/// The server's end of a [`ScriptedStream::events`] body. Dropping it (every clone of it) ends
/// the body: the server closed the stream.
#[derive(Debug, Clone)]
pub struct StreamFeed {
    tx: mpsc::Sender<Result<Vec<u8>, Error>>,
}

impl ScriptedStream {
    /// A 200 `text/event-stream` answer whose body is whatever the returned feed sends.
    pub fn events() -> (ScriptedStream, StreamFeed) {
        let (tx, body) = Chunks::channel(FEED_CAPACITY);
        let stream = ScriptedStream::status(200)
            .header("content-type", "text/event-stream")
            .with_body(body);
        (stream, StreamFeed { tx })
    }

    /// An answer with this status, no `Content-Type` and an empty body.
    ///
    /// # Panics
    /// When `status` is not a valid HTTP status code (100 to 999).
    pub fn status(status: u16) -> Self {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status code");
        ScriptedStream {
            outcome: Ok((status, HeaderMap::new())),
            body: None,
            delay: Duration::ZERO,
        }
    }

    /// A transport failure, e.g. [`Error::Connect`].
    pub fn error(error: Error) -> Self {
        ScriptedStream {
            outcome: Err(error),
            body: None,
            delay: Duration::ZERO,
        }
    }

    /// Adds a response header (replacing one of the same name).
    ///
    /// # Panics
    /// On a header name or value that HTTP does not allow (a bug in the test itself).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Ok((_, headers)) = &mut self.outcome {
            let (name, value) = super::scripted::header(name, value);
            headers.insert(name, value);
        }
        self
    }

    /// Answers only after `delay` (tokio time, so a paused clock skips it).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn with_body(mut self, body: Chunks) -> Self {
        self.body = Some(body);
        self
    }

    pub(super) async fn answer(self) -> Result<StreamResponse, Error> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (status, headers) = self.outcome?;
        let body = self.body.unwrap_or_else(|| Chunks::channel(1).1);
        Ok(StreamResponse::new(status, headers, body))
    }
}

impl StreamFeed {
    /// Sends bytes of the body (SSE text: `"event: flags\ndata: ..\n\n"`, `": keep-alive\n\n"`).
    /// False once the client has closed the stream, or when 1,024 chunks wait unread.
    pub fn send(&self, text: &str) -> bool {
        self.tx.try_send(Ok(text.as_bytes().to_vec())).is_ok()
    }

    /// Ends the body with a read error (a connection reset mid-stream).
    pub fn fail(&self, error: Error) -> bool {
        self.tx.try_send(Err(error)).is_ok()
    }

    /// Whether the client has closed the stream (dropped the body).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
