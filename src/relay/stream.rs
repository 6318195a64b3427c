//! `GET /v1/flags/stream`: Server-Sent Events announcing each change of a parameter set.
//!
//! The events are notifications (`event: flags`, `id: <etag>`, data
//! `{"etag": .., "cacheTimestamp": ..}`): a client refetches `/v1/flags` with the tag. So nothing
//! is queued per client. The body builds each event when hyper asks for the next frame, from the
//! set's latest view: a client that falls behind skips straight to the newest flags, and at most
//! one event is pending for it (in hyper's write buffer, which holds at most 16 frames). A client
//! whose socket stays full for the stall timeout (its connection took nothing in that time) is
//! disconnected, so a reader that stopped does not keep a connection slot forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::Either;
use hyper::body::{Frame, Incoming};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::api::set_of;
use super::route::{self, Body, Disconnect};
use super::sets::Set;
use super::view::View;
use super::State;
use crate::snapshot::Snapshot;

/// The keep-alive comment.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

pub(super) fn flags_stream(request: &Request<Incoming>, state: &Arc<State>) -> Response<Body> {
    let set = match set_of(request, state) {
        Ok(set) => set,
        Err(response) => return *response,
    };
    let body = if request.method() == Method::HEAD {
        route::full(Bytes::new())
    } else {
        let disconnect = request
            .extensions()
            .get::<Disconnect>()
            .cloned()
            .unwrap_or_default();
        Either::Right(BoxBody::new(EventBody::start(set, state, disconnect)))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied responses unless told not to, which would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What one stream has told its client so far, and what it waits on.
struct Feed {
    set: Arc<Set>,
    changes: watch::Receiver<Arc<Snapshot>>,
    /// The tag of the last event sent (none before the first).
    sent: Option<HeaderValue>,
    keep_alive: Interval,
    token: CancellationToken,
}

/// What woke a waiting stream.
enum Wake {
    Stop,
    Changed,
    KeepAlive,
}

impl Feed {
    fn new(set: Arc<Set>, keep_alive: Duration, token: CancellationToken) -> Feed {
        // Subscribed before the first look at the view: a change published in between wakes it.
        let changes = set.flags.subscribe();
        let mut keep_alive = tokio::time::interval_at(Instant::now() + keep_alive, keep_alive);
        keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Feed {
            set,
            changes,
            sent: None,
            keep_alive,
            token,
        }
    }

    /// The next frame, built from the view of the moment: an event when the tag differs from
    /// the last one sent, else a keep-alive after a quiet interval. `None` at shutdown.
    async fn next(mut self) -> Option<(Bytes, Feed)> {
        loop {
            if self.token.is_cancelled() {
                return None;
            }
            if let Some(view) = self.set.view() {
                if self.sent.as_ref() != Some(&view.etag) {
                    self.sent = Some(view.etag.clone());
                    self.keep_alive.reset();
                    return Some((event(&view), self));
                }
            }
            let wake = tokio::select! {
                biased;
                () = self.token.cancelled() => Wake::Stop,
                changed = self.changes.changed() => match changed {
                    Ok(()) => Wake::Changed,
                    // The handle is gone, so nothing will change again.
                    Err(_) => Wake::Stop,
                },
                _ = self.keep_alive.tick() => Wake::KeepAlive,
            };
            match wake {
                Wake::Stop => return None,
                // A change of source alone (a cache renewed by the network) keeps the tag:
                // the loop sends nothing for it.
                Wake::Changed => {}
                Wake::KeepAlive => return Some((Bytes::from_static(KEEP_ALIVE), self)),
            }
        }
    }
}

/// `event: flags` for `view`.
fn event(view: &View) -> Bytes {
    let data = serde_json::json!({
        "etag": view.etag_str(),
        "cacheTimestamp": view.cache_timestamp,
    });
    Bytes::from(format!(
        "event: flags\nid: {}\ndata: {data}\n\n",
        view.etag_str()
    ))
}

/// Whether hyper keeps taking frames: the time a frame was handed over that hyper has not come
/// back for yet. Hyper asks for the next frame right after taking one unless its write buffer is
/// full, which happens only while the client's socket is full.
struct Progress {
    start: Instant,
    /// Milliseconds since `start`, plus one, of the frame handed over; 0 once hyper asks again.
    handed_at: AtomicU64,
}

impl Progress {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn asked(&self) {
        self.handed_at.store(0, Ordering::Relaxed);
    }

    fn handed(&self) {
        self.handed_at.store(self.now(), Ordering::Relaxed);
    }

    /// Whether a frame has waited for `stall` without hyper asking for the next one.
    fn stalled(&self, stall: Duration) -> bool {
        let at = self.handed_at.load(Ordering::Relaxed);
        let stall = u64::try_from(stall.as_millis()).unwrap_or(u64::MAX);
        at != 0 && self.now().saturating_sub(at) >= stall
    }
}

/// [`Feed::next`], boxed: the body keeps it between polls.
type NextFrame = Pin<Box<dyn Future<Output = Option<(Bytes, Feed)>> + Send + Sync>>;

/// The response body of one stream.
struct EventBody {
    feed: Option<Feed>,
    next: Option<NextFrame>,
    progress: Arc<Progress>,
    _open: Open,
}

/// Counts the stream as open until the body is dropped, and stops its watchdog then.
struct Open {
    state: Arc<State>,
    _watchdog: DropGuard,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.metrics.stream_closed();
    }
}

impl EventBody {
    fn start(set: Arc<Set>, state: &Arc<State>, disconnect: Disconnect) -> EventBody {
        let progress = Arc::new(Progress {
            start: Instant::now(),
            handed_at: AtomicU64::new(0),
        });
        let done = CancellationToken::new();
        tokio::spawn(watchdog(
            Arc::clone(&progress),
            state.limits.stall,
            disconnect,
            done.clone(),
            Arc::clone(state),
        ));
        state.metrics.stream_opened();
        EventBody {
            feed: Some(Feed::new(set, state.limits.keep_alive, state.token.clone())),
            next: None,
            progress,
            _open: Open {
                state: Arc::clone(state),
                _watchdog: done.drop_guard(),
            },
        }
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        this.progress.asked();
        // The next frame is computed only now that hyper asks for it: nothing waits in between.
        let next = match &mut this.next {
            Some(next) => next,
            None => match this.feed.take() {
                Some(feed) => this.next.insert(Box::pin(feed.next())),
                None => return Poll::Ready(None),
            },
        };
        let polled = next.as_mut().poll(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.next = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((frame, feed))) => {
                this.next = None;
                this.feed = Some(feed);
                this.progress.handed();
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
        }
    }
}

/// Drops the client once hyper has not taken a frame for `stall`; ends with the stream.
async fn watchdog(
    progress: Arc<Progress>,
    stall: Duration,
    disconnect: Disconnect,
    done: CancellationToken,
    state: Arc<State>,
) {
    // A quarter of the limit: a stalled client goes within 1.25 × stall.
    let mut check = tokio::time::interval(stall / 4);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = check.tick() => {}
        }
        if progress.stalled(stall) {
            tracing::info!(
                stall_ms = stall.as_millis() as u64,
                "relay dropped a change stream client that stopped reading"
            );
            state.metrics.stream_dropped();
            disconnect.0.cancel();
            return;
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
