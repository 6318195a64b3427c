//! Where served flags came from.

use std::fmt;

/// Where the flags of a [`Snapshot`](crate::Snapshot) came from.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flagpole::Source;
///
/// let flags = flagpole::Flags::builder().enabled(false).build().unwrap();
/// assert_eq!(flags.snapshot().source(), Source::Defaults);
/// assert_eq!(Source::Network.to_string(), "network");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Source {
    /// A successful fetch in this process (a 200, or a 304 confirming the flags held).
    Network,
    /// Another process's fetch, adopted through the shared store (Redis, in shared mode)
    /// without a request of this process's own.
    Shared,
    /// The persisted cache, loaded at start.
    Cache,
    /// No remote flags: only the caller's defaults (possibly none).
    Defaults,
}

impl Source {
    /// `network`, `shared`, `cache` or `defaults`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Network => "network",
            Source::Shared => "shared",
            Source::Cache => "cache",
            Source::Defaults => "defaults",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
