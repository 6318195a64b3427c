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
///     Status::Fresh => println!("current flags"),
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
    Initializing,
    /// The last fetch succeeded, or a fresh cache was loaded.
    Fresh,
    /// The last fetch failed; the last good flags (or defaults) are still served.
    Stale {
        /// When the failures began (the first failure since the last success).
        since: Instant,
        /// The most recent failure.
        last_error: Error,
        /// When the poller will try again, if it will.
        next_retry: Option<Instant>,
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
            Status::Initializing => "initializing",
            Status::Fresh => "fresh",
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
        matches!(self, Status::Fresh)
    }

    /// Whether the last fetch failed.
    pub fn is_stale(&self) -> bool {
        matches!(self, Status::Stale { .. })
    }

    /// Whether the poller has stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Status::Stopped)
    }
}
