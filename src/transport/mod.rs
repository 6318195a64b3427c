//! The seam between the poller and HTTP.
//!
//! The poller never touches sockets itself: it hands a [`Request`] to a [`Transport`] and gets a
//! [`Response`] (or an [`Error`]) back. [`HttpTransport`] is the real one. With the `test-util`
//! feature, `ScriptedTransport` replays canned answers with no sockets at all, which is what makes
//! time-based tests deterministic under tokio's paused clock.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ::http::{HeaderMap, StatusCode};
use url::Url;

use crate::error::Error;

mod http;
#[cfg(feature = "test-util")]
mod scripted;
#[cfg(all(feature = "test-util", feature = "stream"))]
mod scripted_stream;
#[cfg(feature = "stream")]
mod stream;

pub use http::HttpTransport;
#[cfg(feature = "test-util")]
pub use scripted::{ScriptedResponse, ScriptedTransport};
#[cfg(all(feature = "test-util", feature = "stream"))]
pub use scripted_stream::{ScriptedStream, StreamFeed};
#[cfg(feature = "stream")]
pub use stream::{Chunks, StreamResponse};

/// A boxed, sendable future, as returned by [`Transport::send`] (see its example).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One GET request for the flag set.
///
/// Its `Debug` output hides the `user=` parameter (the profile id), so a transport may log it.
///
/// ```
/// let url = url::Url::parse("https://api.example/v1/flags?client=mobile&user=id-42").unwrap();
/// let request = flagpole::Request::new(url);
/// assert_eq!(request.max_body_bytes, flagpole::DEFAULT_MAX_BODY_BYTES);
/// assert!(!format!("{request:?}").contains("id-42"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Request {
    /// The full URL, query included.
    pub url: Url,
    /// Headers to send (`Accept`, and `If-None-Match` when an etag is known).
    pub headers: HeaderMap,
    /// The largest body to accept; a transport must stop reading past it and fail with
    /// [`Error::TooLarge`].
    pub max_body_bytes: usize,
    /// The caller's limit for the whole request. The poller enforces it around
    /// [`Transport::send`]; a transport may use it for its own connect timeout.
    pub timeout: Duration,
}

impl Request {
    /// A GET of `url` with no headers, the default body limit and timeout; for testing a custom
    /// [`Transport`].
    pub fn new(url: Url) -> Self {
        Request {
            url,
            headers: HeaderMap::new(),
            max_body_bytes: crate::defaults::DEFAULT_MAX_BODY_BYTES,
            timeout: crate::defaults::DEFAULT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut url = self.url.clone();
        let pairs: Vec<(String, String)> = self
            .url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "user" {
                    "<redacted>".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        f.debug_struct("Request")
            .field("url", &url.as_str())
            .field("headers", &self.headers)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What the server answered: any status (the poller classifies it), headers, and the whole body.
///
/// ```
/// use http::StatusCode;
///
/// let response = flagpole::Response::new(StatusCode::OK, Default::default(), br#"{"beta":true}"#.to_vec());
/// assert_eq!(response.status, StatusCode::OK);
/// assert_eq!(response.status, 200); // `StatusCode` compares with a `u16`
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Response {
    /// The HTTP status code.
    pub status: StatusCode,
    /// The response headers (`ETag`, `Retry-After` are read).
    pub headers: HeaderMap,
    /// The body, at most `max_body_bytes` long.
    pub body: Vec<u8>,
}

impl Response {
    /// A response from its parts.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Self {
        Response {
            status,
            headers,
            body,
        }
    }
}

/// Sends one request. Implement it to put flagpole on another HTTP stack; the poller calls it
/// at most once at a time.
///
/// Errors should be [`Error::Connect`] for network failures, [`Error::TooLarge`] for an oversized
/// body and [`Error::Timeout`] for a transport's own timeouts; statuses are not errors here.
///
/// ```
/// use flagpole::{BoxFuture, Error, Flags, Request, Response, Transport};
///
/// /// Serves a fixed flag set: for demos, or for a service that gets its flags another way.
/// struct Fixed(&'static str);
///
/// impl Transport for Fixed {
///     fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
///         let body = self.0.as_bytes().to_vec();
///         Box::pin(async move {
///             if body.len() > request.max_body_bytes {
///                 return Err(Error::TooLarge { limit: request.max_body_bytes });
///             }
///             Ok(Response::new(http::StatusCode::OK, Default::default(), body))
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let flags = Flags::builder().transport(Fixed(r#"[{"beta": true}]"#)).build()?;
/// assert_eq!(flags.refresh().await?.get_bool("beta"), Some(true));
/// # Ok(()) }
/// ```
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` and reads the whole body.
    ///
    /// # Cancellation safety
    /// The future may be dropped at any await point (shutdown, timeout, disable); it must leave
    /// nothing behind that needs cleaning up.
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>>;

    /// Opens a streaming GET (the change stream, for
    /// [`FlagsBuilder::stream`](crate::FlagsBuilder::stream)): resolves once the status and
    /// headers are in, with the body left to read from [`StreamResponse::body`]. The caller
    /// bounds the wait for the headers with `request.timeout`, and the body's silences itself.
    ///
    /// The default answers [`Error::Config`]: a transport that cannot stream turns streaming off
    /// for the handle (logged once) and polling goes on.
    ///
    /// # Cancellation safety
    /// As for [`send`](Self::send); dropping the body closes the stream.
    #[cfg(feature = "stream")]
    fn open(&self, request: Request) -> BoxFuture<'static, Result<StreamResponse, Error>> {
        let _ = request;
        Box::pin(async { Err(Error::config("this transport cannot open a stream")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_profile_id() {
        let url =
            Url::parse("https://api.example/v1/flags?client=mobile&user=secret-id-42").unwrap();
        let text = format!("{:?}", Request::new(url));
        assert!(!text.contains("secret-id-42"), "{text}");
        assert!(text.contains("user=%3Credacted%3E"), "{text}");
        assert!(text.contains("client=mobile"), "{text}");
    }
}
