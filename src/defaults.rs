//! The defaults every setting starts from and the `User-Agent`: constants only, importing
//! nothing, so that the configuration, the transports and the builder all read them from below.

use std::time::Duration;

/// The Client Config API used when no base URL is set.
pub const DEFAULT_BASE_URL: &str = "https://client-config.api.cx.metamask.io/v1";
/// How long fetched flags stay fresh by default: one day.
pub const DEFAULT_FETCH_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default limit on one whole request, body included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default first retry delay after a failure.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The default retry delay cap (further capped by the fetch interval).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// The default limit on a response body: 4 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The default schedule jitter: refresh at a random point in the last 10% of the interval.
pub const DEFAULT_SCHEDULE_JITTER: f64 = 0.1;
/// The `User-Agent` sent with every request: `flagpole/<crate version>`. An application token
/// set with [`FlagsBuilder::user_agent`](crate::FlagsBuilder::user_agent) goes before it.
///
/// ```
/// assert_eq!(flagpole::USER_AGENT, concat!("flagpole/", env!("CARGO_PKG_VERSION")));
/// ```
pub const USER_AGENT: &str = concat!("flagpole/", env!("CARGO_PKG_VERSION"));
