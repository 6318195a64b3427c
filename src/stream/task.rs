//! The connection loop: open, read events until the stream drops, back off, open again.

use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Heard;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::shared::Shared;
use crate::sse::{SseEvent, SseParser};
use crate::status::StreamState;
use crate::transport::{Request, StreamResponse, Transport};

/// No byte for this long (no event, no keep-alive): the connection is taken for dead.
pub(super) const INACTIVITY: Duration = Duration::from_secs(45);
/// The first reconnection delay's ceiling; it doubles per failure up to [`RECONNECT_CAP`].
pub(super) const RECONNECT_INITIAL: Duration = Duration::from_secs(1);
pub(super) const RECONNECT_CAP: Duration = Duration::from_secs(60);
/// A connection that lasted this long was healthy: the next reconnection starts from the
/// first delay again. So was one that sent anything after its first event (a proxy that cuts
/// streams every 30 s despite keep-alives is routine); a server that accepts and drops at once,
/// with or without an event, keeps backing off instead.
pub(super) const HEALTHY: Duration = Duration::from_secs(60);

pub(super) struct Task {
    pub(super) transport: Arc<dyn Transport>,
    pub(super) request: Request,
    pub(super) shared: Arc<Shared>,
    pub(super) token: CancellationToken,
    pub(super) heard: watch::Sender<Option<Heard>>,
    pub(super) fetch_interval: Duration,
}

/// How one connection ended.
enum End {
    Cancelled,
    /// The server has no change stream: streaming stays off for this handle.
    Unsupported(String),
    Dropped {
        error: Why,
        /// How long it was connected (none when it never was).
        connected_for: Option<Duration>,
        /// It worked: it lasted [`HEALTHY`], or sent more after its first event.
        healthy: bool,
        retry_after: Option<Duration>,
    },
}

impl Task {
    pub(super) async fn run(self) {
        let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_CAP);
        // A failure is logged at `warn` once per outage (until an event arrives or a connection
        // lasts a minute); the retries after it at `debug`.
        let mut outage_logged = false;
        let mut ever_connected = false;
        // From here on the state is `Connecting` whenever no stream is connected: set once now,
        // and again at each drop.
        self.set(StreamState::Connecting);
        loop {
            let (error, connected_for, healthy, retry_after) = match self
                .connection(&mut outage_logged, &mut ever_connected)
                .await
            {
                End::Cancelled => return,
                End::Unsupported(reason) => {
                    tracing::warn!(stream = "unsupported", %reason, "the flag service has no change stream (or the transport cannot open one); polling only");
                    self.set(StreamState::Unsupported);
                    return;
                }
                End::Dropped {
                    error,
                    connected_for,
                    healthy,
                    retry_after,
                } => (error, connected_for, healthy, retry_after),
            };
            // Waiting to reconnect is "connecting" too: the status must not say "connected"
            // through the backoff after a drop.
            self.set(StreamState::Connecting);
            if healthy {
                backoff.reset();
                outage_logged = false;
            }
            let mut delay = backoff.next().unwrap_or(RECONNECT_CAP);
            if let Some(wait) = retry_after {
                delay = delay.max(wait.min(self.fetch_interval));
            }
            // Servers and proxies end long streams now and then: routine, not an outage.
            let routine = matches!(error, Why::Closed) && healthy;
            if routine {
                tracing::info!(
                    stream = "connecting",
                    delay_ms = delay.as_millis() as u64,
                    "flag change stream ended by the server; reconnecting"
                );
            } else if std::mem::replace(&mut outage_logged, true) {
                tracing::debug!(stream = "connecting", %error, delay_ms = delay.as_millis() as u64, "flag change stream still down");
            } else {
                if connected_for.is_some() {
                    tracing::warn!(stream = "connecting", %error, delay_ms = delay.as_millis() as u64, "flag change stream dropped; polling goes on, reconnecting");
                } else {
                    tracing::warn!(stream = "connecting", %error, delay_ms = delay.as_millis() as u64, "flag change stream could not be opened; polling goes on, retrying");
                }
            }
            tokio::select! {
                biased;
                () = self.token.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes the connection's state, unless the handle closed the stream meanwhile.
    fn set(&self, state: StreamState) {
        self.shared.set_stream(state, Some(&self.token));
    }

    /// One connection, from opening to its end.
    async fn connection(&self, outage_logged: &mut bool, ever_connected: &mut bool) -> End {
        let timeout = self.request.timeout;
        let open = self.transport.open(self.request.clone());
        let opened = tokio::select! {
            biased;
            () = self.token.cancelled() => return End::Cancelled,
            opened = tokio::time::timeout(timeout, open) => opened,
        };
        let response = match opened {
            Err(_) => return not_opened(Error::Timeout { after: timeout }.into()),
            Ok(Err(error @ Error::Config { .. })) => return End::Unsupported(error.to_string()),
            Ok(Err(error)) => return not_opened(error.into()),
            Ok(Ok(response)) => response,
        };
        let StreamResponse {
            status,
            headers,
            mut body,
            ..
        } = response;
        if matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            return End::Unsupported(format!("it answered HTTP {}", status.as_u16()));
        }
        if !status.is_success() {
            let now = std::time::SystemTime::now();
            return End::Dropped {
                error: Error::Http {
                    status: status.as_u16(),
                }
                .into(),
                connected_for: None,
                healthy: false,
                retry_after: crate::request::retry_after(status, &headers, now),
            };
        }
        let event_stream = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if !event_stream {
            return End::Unsupported(
                "it answered without `Content-Type: text/event-stream`".into(),
            );
        }
        let connected_at = Instant::now();
        self.set(StreamState::Connected);
        if !std::mem::replace(ever_connected, true) {
            tracing::info!(stream = "connected", "flag change stream connected");
        } else {
            tracing::debug!(stream = "connected", "flag change stream reconnected");
        }
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        // An event came, and then more (an event or a keep-alive): the stream works.
        let (mut heard_one, mut proven) = (false, false);
        let error = loop {
            let chunk = tokio::select! {
                biased;
                () = self.token.cancelled() => return End::Cancelled,
                chunk = tokio::time::timeout(INACTIVITY, body.next()) => chunk,
            };
            let bytes = match chunk {
                Err(_) => break Why::Silent,
                Ok(None) => break Why::Closed,
                Ok(Some(Err(error))) => break error.into(),
                Ok(Some(Ok(bytes))) => bytes,
            };
            proven |= heard_one;
            if let Err(error) = parser.feed(&bytes, &mut events) {
                break Error::parse(error.to_string()).into();
            }
            for event in events.drain(..) {
                if let Some(heard) = heard(&event) {
                    // An event ends an outage; a server that accepts and drops at once does
                    // not, so its flapping is one warning, not one per attempt.
                    if std::mem::replace(outage_logged, false) {
                        tracing::info!(stream = "connected", "flag change stream back");
                    }
                    self.heard.send_replace(Some(heard));
                    heard_one = true;
                }
            }
        };
        let lasted = connected_at.elapsed();
        End::Dropped {
            error,
            connected_for: Some(lasted),
            healthy: proven || lasted >= HEALTHY,
            retry_after: None,
        }
    }
}

/// An open that failed before the stream connected.
fn not_opened(error: Why) -> End {
    End::Dropped {
        error,
        connected_for: None,
        healthy: false,
        retry_after: None,
    }
}

/// Why a stream ended, as logged.
#[derive(Debug, thiserror::Error)]
enum Why {
    #[error(transparent)]
    Failed(#[from] Error),
    #[error("the server closed the stream")]
    Closed,
    #[error("no event or keep-alive for {INACTIVITY:?}")]
    Silent,
}

/// The tag an event announces: a `flags` event (or an unnamed one with a tag) names it in its
/// data's `etag`, else in its own `id` line (the `id` an earlier event set is not this event's
/// tag). Other events are not about the flags.
fn heard(event: &SseEvent) -> Option<Heard> {
    if event.event != "flags" && event.event != "message" {
        return None;
    }
    let from_data = serde_json::from_str::<serde_json::Value>(&event.data)
        .ok()
        .and_then(|v| v.get("etag")?.as_str().map(str::to_owned));
    let etag = from_data.or_else(|| {
        event
            .id
            .clone()
            .filter(|id| event.id_here && !id.is_empty())
    });
    // An unnamed event without a tag says nothing about the flags: a generic server's
    // `data: ping` must not make a fetch each time.
    if etag.is_none() && event.event != "flags" {
        return None;
    }
    Some(Heard { etag })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{BoxFuture, Chunks, Response};

    fn event(name: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: name.into(),
            data: data.into(),
            id_here: id.is_some(),
            id: id.map(Into::into),
        }
    }

    #[test]
    fn the_tag_comes_from_the_data_then_the_id() {
        let tag = |e: &SseEvent| heard(e).map(|h| h.etag);
        assert_eq!(
            tag(&event(
                "flags",
                r#"{"etag":"\"a\"","cacheTimestamp":1}"#,
                Some("\"b\"")
            )),
            Some(Some("\"a\"".into()))
        );
        assert_eq!(
            tag(&event("flags", "changed", Some("\"b\""))),
            Some(Some("\"b\"".into()))
        );
        assert_eq!(tag(&event("message", "x", None)), None);
        assert_eq!(tag(&event("flags", "x", None)), Some(None));
        assert_eq!(
            tag(&event("message", "x", Some("\"c\""))),
            Some(Some("\"c\"".into()))
        );
        assert_eq!(tag(&event("ping", "x", Some("1"))), None);
        // An id left by an earlier event: this one names no tag.
        let earlier = SseEvent {
            id_here: false,
            ..event("flags", "{}", Some("\"b\""))
        };
        assert_eq!(tag(&earlier), Some(None));
    }

    /// Each open answers a stream whose feed the test holds.
    struct Feeds(
        tokio::sync::mpsc::UnboundedSender<tokio::sync::mpsc::Sender<Result<Vec<u8>, Error>>>,
    );

    impl Transport for Feeds {
        fn send(
            &self,
            _: crate::transport::Request,
        ) -> BoxFuture<'static, Result<Response, Error>> {
            Box::pin(std::future::pending())
        }

        fn open(
            &self,
            _: crate::transport::Request,
        ) -> BoxFuture<'static, Result<StreamResponse, Error>> {
            let (feed, body) = Chunks::channel(8);
            let _ = self.0.send(feed);
            let mut headers = http::HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            Box::pin(async move { Ok(StreamResponse::new(StatusCode::OK, headers, body)) })
        }
    }

    /// The feed of each stream opened.
    type Opened =
        tokio::sync::mpsc::UnboundedReceiver<tokio::sync::mpsc::Sender<Result<Vec<u8>, Error>>>;

    /// A stream task over [`Feeds`] on a fresh hub: the hub, the feeds of the streams it opens,
    /// its token and the task.
    fn spawn_task() -> (
        Arc<Shared>,
        Opened,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        use crate::layers::Layers;
        use crate::status::Status;

        let (feeds, opened) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            Layers::new(Default::default(), Default::default()),
            Status::fresh(),
        ));
        let token = CancellationToken::new();
        let url = url::Url::parse("http://relay.test/v1/flags/stream").unwrap();
        let task = Task {
            transport: Arc::new(Feeds(feeds)),
            request: crate::transport::Request::new(url),
            shared: Arc::clone(&shared),
            token: token.clone(),
            heard: watch::channel(None).0,
            fetch_interval: Duration::from_secs(3600),
        };
        (shared, opened, token, tokio::spawn(task.run()))
    }

    /// The state says `Connecting` from the moment the stream drops, through the backoff's
    /// delay, not only once the next attempt starts (found on the wire: handles reported
    /// `Connected` for 0.5 to 1 s after a relay had closed their streams).
    #[tokio::test(start_paused = true)]
    async fn a_dropped_stream_is_connecting_while_it_waits_to_reconnect() {
        let (shared, mut opened, token, run) = spawn_task();
        let feed = opened.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(shared.status().stream(), StreamState::Connected);

        drop(feed);
        // The first reconnection waits 0.5 to 1 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(shared.status().stream(), StreamState::Connecting);
        assert!(opened.try_recv().is_err(), "reconnected before the delay");
        let _again = opened.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(shared.status().stream(), StreamState::Connected);
        token.cancel();
        run.await.unwrap();
    }

    /// The backoff starts over after a connection that sent anything after its first event,
    /// and not after one that dropped right after it.
    #[tokio::test(start_paused = true)]
    async fn a_stream_that_worked_starts_the_backoff_over() {
        let (_shared, mut opened, token, run) = spawn_task();
        const EVENT: &[u8] = b"event: flags\nid: \"a\"\ndata: {}\n\n";
        // Three drops at once, the third right after an event: the third wait is the third
        // step, [2 s, 4 s], as if there had been no event.
        for with_event in [false, false, true] {
            let feed = opened.recv().await.unwrap();
            if with_event {
                feed.send(Ok(EVENT.to_vec())).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let dropped = Instant::now();
        let feed = opened.recv().await.unwrap();
        let waited = dropped.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited <= Duration::from_secs(4),
            "{waited:?}"
        );
        // This one sends an event, then a keep-alive 15 s later, then drops at 30 s: the next
        // wait is the first step again, [0.5 s, 1 s].
        feed.send(Ok(EVENT.to_vec())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        feed.send(Ok(b": keep-alive\n\n".to_vec())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        drop(feed);
        let dropped = Instant::now();
        let _again = opened.recv().await.unwrap();
        let waited = dropped.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited <= Duration::from_secs(1),
            "{waited:?}"
        );
        token.cancel();
        run.await.unwrap();
    }
}
