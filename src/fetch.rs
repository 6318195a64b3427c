//! One fetch, from request to outcome: the header hook, the transport, the timeout, the body
//! limit and the status, with every panic in caller code caught on the way.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Instrument;
use url::Url;

use crate::config::Config;
use crate::error::Error;
use crate::parse::{parse, RawFlags};
use crate::request::{self, StatusClass};
use crate::snapshot::Source;
use crate::status::StreamState;
use crate::transport::{BoxFuture, Response, Transport};

/// What one fetch brought.
pub(crate) enum Outcome {
    Fetched {
        flags: RawFlags,
        etag: Option<String>,
        /// Shared mode: the timestamp the record was written with, which the handle keeps (none:
        /// the handle stamps the flags when it takes them).
        stamped: Option<u64>,
    },
    /// 304: the flags held are current. A new `ETag` on it replaces the one held.
    NotModified {
        etag: Option<String>,
        stamped: Option<u64>,
    },
    Failed {
        error: Error,
        retry_after: Option<Duration>,
    },
    /// Shared mode: another process's fetch, read from the shared store, with no request.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Adopted(Arc<crate::store::CacheRecord>),
}

/// The fetch of the flag set, conditional on `etag`. Nothing leaves the machine until the
/// returned future is first polled. `served` is what a failure leaves served (for the span), and
/// `stream` the change stream's state when streaming is on (for the span too).
pub(crate) fn fetch(
    config: &Config,
    url: &Url,
    transport: &Arc<dyn Transport>,
    etag: Option<&str>,
    served: Source,
    stream: Option<StreamState>,
) -> BoxFuture<'static, Outcome> {
    // Stable field names, documented in the README. Never the URL: it holds the profile id.
    let span = tracing::info_span!(
        "flagpole.fetch",
        status = Empty,
        duration_ms = Empty,
        bytes = Empty,
        flags = Empty,
        source = Empty,
        error = Empty,
        stream = Empty,
    );
    if let Some(state) = stream {
        span.record("stream", state.as_str());
    }
    let had_etag = etag.is_some();
    let send = span.in_scope(|| {
        let request = catch_unwind(AssertUnwindSafe(|| request::build(config, url, etag)))
            .map_err(|panic| Error::panicked("header hook", &*panic))?;
        catch_unwind(AssertUnwindSafe(|| transport.send(request)))
            .map_err(|panic| Error::panicked("transport", &*panic))
    });
    let timeout = config.timeout;
    let limit = config.max_body_bytes;
    let clock = config.wall_clock.clone();
    let fetch = async move {
        let send = match send {
            Ok(send) => send,
            Err(error) => return failed(error),
        };
        let response = match tokio::time::timeout(timeout, CatchUnwind(send)).await {
            Err(_) | Ok(Ok(Err(Error::Timeout { .. }))) => {
                return failed(Error::Timeout { after: timeout })
            }
            Ok(Err(panic)) => return failed(Error::panicked("transport", &*panic)),
            Ok(Ok(Err(error))) => return failed(error),
            Ok(Ok(Ok(response))) => response,
        };
        tracing::Span::current()
            .record("status", response.status.as_u16())
            .record("bytes", response.body.len() as u64);
        // Every transport gets the same limit, whether or not it enforces it itself.
        if response.body.len() > limit {
            return failed(Error::TooLarge { limit });
        }
        outcome(response, had_etag, &clock)
    };
    Box::pin(
        async move {
            let started = Instant::now();
            let outcome = fetch.await;
            let span = tracing::Span::current();
            span.record("duration_ms", started.elapsed().as_millis() as u64);
            match &outcome {
                Outcome::Fetched { flags, .. } => {
                    span.record("flags", flags.len() as u64);
                    span.record("source", Source::Network.as_str());
                }
                Outcome::NotModified { .. } | Outcome::Adopted(_) => {
                    span.record("source", Source::Network.as_str());
                }
                Outcome::Failed { error, .. } => {
                    span.record("source", served.as_str());
                    span.record("error", tracing::field::display(error));
                }
            }
            tracing::debug!("flag fetch finished");
            outcome
        }
        .instrument(span),
    )
}

fn outcome(response: Response, had_etag: bool, clock: &crate::clock::WallClock) -> Outcome {
    match request::classify(response.status) {
        StatusClass::Success => match parse(&response.body) {
            Ok(flags) => Outcome::Fetched {
                flags,
                etag: request::etag(&response.headers),
                stamped: None,
            },
            Err(error) => failed(error),
        },
        StatusClass::NotModified if had_etag => Outcome::NotModified {
            etag: request::etag(&response.headers),
            stamped: None,
        },
        _ => Outcome::Failed {
            error: Error::Http {
                status: response.status.as_u16(),
            },
            retry_after: request::retry_after(response.status, &response.headers, clock.now()),
        },
    }
}

fn failed(error: Error) -> Outcome {
    Outcome::Failed {
        error,
        retry_after: None,
    }
}

/// Polls a future, turning a panic inside it into an error: a transport's bug is a failed
/// fetch, not a dead poller.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
