//! The crate's one error type.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A boxed, shareable error source: errors are cloned to every waiting caller and into the status.
pub(crate) type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while building a [`Flags`](crate::Flags) handle, fetching flags or
/// persisting them.
///
/// Errors are cheap to clone (sources are reference-counted) because one failed fetch is reported
/// to every caller of [`Flags::refresh`](crate::Flags::refresh) waiting on it and kept in
/// [`Status::Stale`](crate::Status::Stale).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flagpole::{Error, Flags};
///
/// let err = Flags::builder().base_url("ftp://example.com").build().unwrap_err();
/// assert!(matches!(err, Error::Config { .. }));
/// assert_eq!(
///     err.to_string(),
///     "invalid flagpole configuration: base URL `ftp://example.com`: scheme must be http or https"
/// );
///
/// let err = Error::Http { status: 503 };
/// assert_eq!(err.status(), Some(503));
/// assert!(!err.is_permanent()); // retried with backoff
/// assert!(Error::Http { status: 404 }.is_permanent());
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flag service answered with a status other than 2xx (or an unexpected 304).
    #[error("the flag service answered HTTP {status}")]
    Http {
        /// The HTTP status code.
        status: u16,
    },
    /// The request, including reading the whole body, took longer than the configured timeout.
    #[error("the flag service did not answer within {after:?}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The connection failed: refused, reset, DNS, TLS, a redirect loop or a broken body stream.
    #[error("could not reach the flag service: {}", chain(&**.source))]
    Connect {
        /// The underlying transport error.
        source: Source,
    },
    /// The body is not a flag set: invalid UTF-8, invalid JSON, or JSON of the wrong shape.
    #[error("the flag service sent an invalid body: {reason}")]
    Parse {
        /// What is wrong with the body.
        reason: String,
    },
    /// The body is larger than the configured limit; it was not read past the limit.
    #[error("the flag service sent a body larger than the {limit}-byte limit")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The cache store could not be read or written.
    #[error("flag cache store failed: {}", chain(&**.source))]
    Store {
        /// The underlying I/O or encoding error.
        source: Source,
    },
    /// The shared store (Redis, in shared mode) failed or did not answer in time. The handle
    /// keeps serving its flags and fetches on its own schedule until the store answers again.
    #[error("shared flag store failed: {}", chain(&**.source))]
    Shared {
        /// The underlying Redis or I/O error.
        source: Source,
    },
    /// The relay could not listen on its address (in use, no permission).
    #[error("could not listen on {addr}: {}", chain(&**.source))]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The underlying I/O error.
        source: Source,
    },
    /// The configuration is invalid; returned by [`FlagsBuilder::build`](crate::FlagsBuilder::build).
    #[error("invalid flagpole configuration: {reason}")]
    Config {
        /// What is wrong with the configuration.
        reason: String,
    },
    /// Remote flags are switched off with [`Flags::set_enabled`](crate::Flags::set_enabled).
    #[error("remote flags are disabled")]
    Disabled,
    /// The poller has stopped (shutdown, cancellation, or every handle dropped).
    #[error("the flag poller has stopped")]
    Stopped,
    /// The flag service answered 429 or 503 with a `Retry-After` that has not run out:
    /// [`Flags::refresh`](crate::Flags::refresh) answers this at once instead of waiting (the
    /// poller's own next fetch waits for `until`).
    #[error("the flag service asked for no request before {}", httpdate::fmt_http_date(*.until))]
    RetryAfter {
        /// When the server's wait ends (wall-clock time).
        until: SystemTime,
    },
    /// Code that flagpole calls on the caller's behalf panicked: a [`Transport`](crate::Transport)
    /// (its `send` or the future it returns), a header hook, or a [`Store`](crate::Store).
    ///
    /// The poller survives: a panicking transport or hook is a failed fetch (retried with backoff
    /// like any other), a panicking store a failed load or save. The panic itself still goes
    /// through the process's panic hook (printed on stderr by default).
    #[error("the {what} panicked: {message}")]
    Panicked {
        /// Which callback: `transport`, `header hook` or `store`.
        what: &'static str,
        /// The panic message, when it was a string.
        message: String,
    },
    /// [`Flags::ready_blocking`](crate::Flags::ready_blocking) waited its whole timeout and no
    /// remote flags came (defaults are served meanwhile; the poller keeps trying).
    #[error("no remote flags within {waited:?}")]
    NotReady {
        /// The timeout that passed.
        waited: Duration,
    },
    /// A blocking call was made on a thread that runs an async runtime, where blocking could
    /// stall the very tasks it waits for: await the async form instead.
    #[error("a blocking flagpole call was made inside an async runtime; await its async form")]
    InsideRuntime,
}

/// The error and its sources, outermost first: "error sending request: connection refused".
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let part = source.to_string();
        // Some errors repeat their source in their own message.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

impl Error {
    pub(crate) fn connect(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Connect {
            source: Arc::new(source),
        }
    }

    pub(crate) fn store(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Store {
            source: Arc::new(source),
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn shared(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Shared {
            source: Arc::new(source),
        }
    }

    #[cfg_attr(not(feature = "relay"), allow(dead_code))]
    pub(crate) fn listen(addr: std::net::SocketAddr, source: std::io::Error) -> Self {
        Error::Listen {
            addr,
            source: Arc::new(source),
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn parse(reason: impl Into<String>) -> Self {
        Error::Parse {
            reason: reason.into(),
        }
    }

    /// An [`Error::Panicked`] from a caught panic's payload.
    pub(crate) fn panicked(what: &'static str, payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "a non-string panic payload".to_owned()
        };
        Error::Panicked { what, message }
    }

    /// The HTTP status, when the server answered with one that is treated as a failure.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status } => Some(*status),
            _ => None,
        }
    }

    /// True for a request that timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True for failures that retrying the same request cannot fix soon: 4xx answers other
    /// than 408 and 429. The poller backs off straight to its cap on these.
    pub fn is_permanent(&self) -> bool {
        self.status().is_some_and(|s| !is_retryable_status(s))
    }
}

/// The retry policy for an HTTP status: 408, 429 and 5xx are retryable; other 4xx are not.
/// Anything outside 4xx/5xx that is treated as a failure (an unfollowed redirect, an unexpected
/// 304) is retried as a transient oddity. Pure, so it sits here with the error it classifies and
/// below everything that asks it (the request rules, the poller).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    !matches!(status, 400..=499) || matches!(status, 408 | 429)
}

/// A string value that is not one of an enum's accepted names, from `FromStr` on
/// [`Client`](crate::Client), [`Distribution`](crate::Distribution) or
/// [`Environment`](crate::Environment).
///
/// ```
/// let err = "staging".parse::<flagpole::Environment>().unwrap_err();
/// assert_eq!(err.kind, "environment");
/// assert_eq!(err.to_string(), "unknown environment `staging`: expected one of prod, rc, dev");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`: expected one of {}", .expected.join(", "))]
pub struct UnknownValue {
    /// What was being parsed, e.g. "client".
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted names.
    pub expected: &'static [&'static str],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_status_table() {
        let table = [
            (301, true),
            (304, true),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
            (599, true),
        ];
        for (status, retryable) in table {
            assert_eq!(is_retryable_status(status), retryable, "{status}");
            assert_eq!(
                Error::Http { status }.is_permanent(),
                !retryable,
                "{status}"
            );
        }
    }
}
