//! Streaming clients: a task that keeps the server's change stream open and tells the poller
//! each tag it hears, so that a change is fetched at once instead of at the next poll.
//!
//! The task owns only the connection: what to do with a tag (fetch or not, coalesced with the
//! fetches already planned) is the poller's call. It reports the connection's state in the
//! status, reconnects with jittered backoff, and treats a silence longer than
//! 45 s as a dropped connection (a relay sends a keep-alive every 15 s).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::shared::Shared;
use crate::status::StreamState;
use crate::transport::Transport;

/// A tag the server announced: the flags it serves now. `None` when the event named none, which
/// a client can only take as "something changed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heard {
    pub(crate) etag: Option<String>,
}

/// A handle's change stream, followed while remote flags are on. Dropping it closes the
/// connection at once.
pub(crate) struct Streamer {
    heard: Option<watch::Receiver<Option<Heard>>>,
    token: Option<CancellationToken>,
    shared: Option<Arc<Shared>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Streamer {
    /// No stream: streaming is off, or remote flags are.
    pub(crate) fn none() -> Self {
        Streamer {
            heard: None,
            token: None,
            shared: None,
            task: None,
        }
    }

    /// Starts following the stream (on the current runtime) when the configuration asks for
    /// it; the task stops with `parent`.
    pub(crate) fn start(
        config: &Config,
        transport: &Arc<dyn Transport>,
        shared: &Arc<Shared>,
        parent: &CancellationToken,
    ) -> Self {
        #[cfg(feature = "stream")]
        if config.stream {
            let token = parent.child_token();
            let (tx, rx) = watch::channel(None);
            let task = task::Task {
                transport: Arc::clone(transport),
                request: crate::request::build_stream(config, &crate::request::stream_url(config)),
                shared: Arc::clone(shared),
                token: token.clone(),
                heard: tx,
                fetch_interval: config.fetch_interval,
            };
            shared.set_stream(StreamState::Connecting, Some(&token));
            return Streamer {
                heard: Some(rx),
                token: Some(token),
                shared: Some(Arc::clone(shared)),
                task: Some(tokio::spawn(task.run())),
            };
        }
        let _ = (config, transport, shared, parent);
        Streamer::none()
    }

    /// Closes the stream and waits until its task has let the connection go (it does at once:
    /// every await in it gives way to the cancellation).
    pub(crate) async fn close(mut self) {
        if let Some(token) = &self.token {
            token.cancel();
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The next tag heard (the latest, when several came since the last call); never, without
    /// a stream or once the server turned out to have none.
    pub(crate) async fn next(&mut self) -> Heard {
        if let Some(heard) = &mut self.heard {
            while heard.changed().await.is_ok() {
                if let Some(tag) = heard.borrow_and_update().clone() {
                    return tag;
                }
            }
        }
        std::future::pending().await
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if let Some(token) = &self.token {
            token.cancel();
        }
        // After the cancel: the task cannot publish a state past this one.
        if let Some(shared) = &self.shared {
            shared.set_stream(StreamState::Off, None);
        }
    }
}

/// Whether a tag heard differs from the one held. Weak and strong forms of a tag are the same
/// tag here: the question is whether the flags changed, not byte equality.
pub(crate) fn differs(heard: &Heard, held: Option<&str>) -> bool {
    fn bare(tag: &str) -> &str {
        tag.trim().trim_start_matches("W/")
    }
    match (&heard.etag, held) {
        (Some(heard), Some(held)) => bare(heard) != bare(held),
        _ => true,
    }
}

#[cfg(feature = "stream")]
mod task;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_compare_weakly() {
        let heard = |t: &str| Heard {
            etag: Some(t.into()),
        };
        assert!(!differs(&heard("\"a\""), Some("\"a\"")));
        assert!(!differs(&heard("W/\"a\""), Some("\"a\"")));
        assert!(differs(&heard("\"b\""), Some("\"a\"")));
        assert!(differs(&heard("\"a\""), None));
        assert!(differs(&Heard { etag: None }, Some("\"a\"")));
    }
}
