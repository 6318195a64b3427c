//! The poller's health, as seen through [`Flags::status`](crate::Flags::status).

use std::time::Instant;

use crate::error::Error;

/// What the poller is doing and whether the flags served are current.
///
/// Flags are served in every state; the status only says how much to trust them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flagpole::Status;
///
/// let flags = flagpole::Flags::builder().enabled(false).build().unwrap();
/// match flags.status() {
///     Status::Fresh { .. } => println!("current flags"),
///     Status::Stale { last_error, .. } => println!("last good flags; fetch failed: {last_error}"),
///     other => println!("{}", other.as_str()),
/// }
/// assert_eq!(flags.status().as_str(), "disabled");
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Status {
    /// No fetch has finished since the start (or since remote flags were enabled again);
    /// defaults or a stale cache are served meanwhile.
    #[non_exhaustive]
    Initializing {
        /// The change stream, when [`stream`](crate::FlagsBuilder::stream) is on.
        stream: StreamState,
    },
    /// The last fetch succeeded, or a fresh cache was loaded.
    #[non_exhaustive]
    Fresh {
        /// The change stream, when [`stream`](crate::FlagsBuilder::stream) is on.
        stream: StreamState,
    },
    /// The last fetch failed; the last good flags (or defaults) are still served.
    #[non_exhaustive]
    Stale {
        /// When the failures began (the first failure since the last success).
        since: Instant,
        /// The most recent failure.
        last_error: Error,
        /// When the poller will try again, if it will.
        next_retry: Option<Instant>,
        /// The change stream, when [`stream`](crate::FlagsBuilder::stream) is on.
        stream: StreamState,
    },
    /// Remote flags are switched off: no requests, defaults only.
    Disabled,
    /// The poller has stopped for good; the last snapshot is still served.
    Stopped,
}

impl Status {
    /// `initializing`, `fresh`, `stale`, `disabled` or `stopped`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Initializing { .. } => "initializing",
            Status::Fresh { .. } => "fresh",
            Status::Stale { .. } => "stale",
            Status::Disabled => "disabled",
            Status::Stopped => "stopped",
        }
    }

    /// The last error, in the `Stale` state.
    pub fn last_error(&self) -> Option<&Error> {
        match self {
            Status::Stale { last_error, .. } => Some(last_error),
            _ => None,
        }
    }

    /// Whether the last fetch succeeded (or a fresh cache was loaded).
    pub fn is_fresh(&self) -> bool {
        matches!(self, Status::Fresh { .. })
    }

    /// Whether the last fetch failed.
    pub fn is_stale(&self) -> bool {
        matches!(self, Status::Stale { .. })
    }

    /// Whether the poller has stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Status::Stopped)
    }

    /// The change stream's state: [`StreamState::Off`] unless
    /// [`stream`](crate::FlagsBuilder::stream) is on and remote flags are enabled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use flagpole::StreamState;
    ///
    /// let flags = flagpole::Flags::builder().enabled(false).build().unwrap();
    /// assert_eq!(flags.status().stream(), StreamState::Off);
    /// # }
    /// ```
    pub fn stream(&self) -> StreamState {
        match self {
            Status::Initializing { stream }
            | Status::Fresh { stream }
            | Status::Stale { stream, .. } => *stream,
            Status::Disabled | Status::Stopped => StreamState::Off,
        }
    }

    /// `Initializing`, with the stream off (the hub fills in the stream's state).
    pub(crate) fn initializing() -> Self {
        Status::Initializing {
            stream: StreamState::Off,
        }
    }

    /// `Fresh`, with the stream off (the hub fills in the stream's state).
    pub(crate) fn fresh() -> Self {
        Status::Fresh {
            stream: StreamState::Off,
        }
    }

    /// Sets the stream's state where the variant has one; whether that changed anything.
    pub(crate) fn set_stream(&mut self, state: StreamState) -> bool {
        match self {
            Status::Initializing { stream }
            | Status::Fresh { stream }
            | Status::Stale { stream, .. } => std::mem::replace(stream, state) != state,
            Status::Disabled | Status::Stopped => false,
        }
    }
}

/// Whether the change stream is connected, from [`Status::stream`].
///
/// The stream only adds fetches: polling goes on at the fetch interval in every state, so a
/// stream that is down delays changes, never the flags themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamState {
    /// Not streaming: [`stream`](crate::FlagsBuilder::stream) is off, or remote flags are
    /// disabled, or the handle stopped.
    Off,
    /// Connecting, or waiting to reconnect (with backoff) after the stream dropped.
    Connecting,
    /// Connected: a change reaches this handle as soon as the server announces it.
    Connected,
    /// The server has no stream (404, 405, or not `text/event-stream`), or the transport cannot
    /// open one: streaming is off for this handle, and polling goes on.
    Unsupported,
}

impl StreamState {
    /// `off`, `connecting`, `connected` or `unsupported`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Off => "off",
            StreamState::Connecting => "connecting",
            StreamState::Connected => "connected",
            StreamState::Unsupported => "unsupported",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            1 => StreamState::Connecting,
            2 => StreamState::Connected,
            3 => StreamState::Unsupported,
            _ => StreamState::Off,
        }
    }
}

impl std::fmt::Display for StreamState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
