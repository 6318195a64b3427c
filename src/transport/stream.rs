//! The streaming half of the seam: a response whose body keeps coming (Server-Sent Events).

use std::fmt;

use ::http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use crate::error::Error;

/// What the server answered to [`Transport::open`](super::Transport::open): the status and
/// headers at once, the body as it arrives.
#[non_exhaustive]
pub struct StreamResponse {
    /// The HTTP status code.
    pub status: StatusCode,
    /// The response headers (`Content-Type` must be `text/event-stream`).
    pub headers: HeaderMap,
    /// The body, read a chunk at a time; dropping it closes the connection.
    pub body: Chunks,
}

impl StreamResponse {
    /// A response from its parts.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Chunks) -> Self {
        StreamResponse {
            status,
            headers,
            body,
        }
    }
}

impl fmt::Debug for StreamResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// A response body read a chunk at a time, as it arrives. Dropping it closes the stream.
///
/// A custom [`Transport`](super::Transport) makes one with [`Chunks::channel`] and feeds it from
/// its own reader:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (feed, mut body) = flagpole::Chunks::channel(16);
/// feed.send(Ok(b"event: flags\n".to_vec())).await.unwrap();
/// drop(feed); // the end of the body
/// assert_eq!(body.next().await.unwrap().unwrap(), b"event: flags\n");
/// assert!(body.next().await.is_none());
/// # }
/// ```
pub struct Chunks {
    inner: Inner,
}

enum Inner {
    Channel(mpsc::Receiver<Result<Vec<u8>, Error>>),
    Http(reqwest::Response),
}

impl Chunks {
    /// A body fed through the returned sender: each `Ok` is a chunk, an `Err` ends the body with
    /// that error, and dropping the sender ends it cleanly. The sender's
    /// [`closed`](mpsc::Sender::closed) resolves when the reader drops the body, which is when a
    /// transport should close its connection.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Result<Vec<u8>, Error>>, Chunks) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            tx,
            Chunks {
                inner: Inner::Channel(rx),
            },
        )
    }

    pub(super) fn http(response: reqwest::Response) -> Chunks {
        Chunks {
            inner: Inner::Http(response),
        }
    }

    /// The next chunk; `None` at the end of the body.
    ///
    /// # Cancellation safety
    /// Cancellation safe: a chunk is never lost by dropping the future.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>, Error>> {
        match &mut self.inner {
            Inner::Channel(rx) => rx.recv().await,
            Inner::Http(response) => match response.chunk().await {
                Ok(Some(chunk)) => Some(Ok(chunk.to_vec())),
                Ok(None) => None,
                Err(e) => Some(Err(super::http::map_reqwest(e))),
            },
        }
    }
}

impl fmt::Debug for Chunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunks").finish_non_exhaustive()
    }
}
