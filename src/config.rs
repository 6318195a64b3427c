//! Request parameters (`Client`, `Distribution`, `Environment`) and the [`FlagsBuilder`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::clock::WallClock;
use crate::error::{Error, UnknownValue};
use crate::rollout::{self, Identity};
use crate::runtime::Runtime;
use crate::store::Store;
use crate::transport::{HttpTransport, Transport};
use crate::Flags;

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
/// The default schedule jitter: refresh at a random point in the last 20% of the interval.
pub const DEFAULT_SCHEDULE_JITTER: f64 = 0.2;
/// The `User-Agent` sent with every request: `flagpole/<crate version>`. An application token
/// set with [`FlagsBuilder::user_agent`] goes before it.
///
/// ```
/// assert_eq!(flagpole::USER_AGENT, concat!("flagpole/", env!("CARGO_PKG_VERSION")));
/// ```
pub const USER_AGENT: &str = concat!("flagpole/", env!("CARGO_PKG_VERSION"));

/// A function that edits the headers of every request; see [`FlagsBuilder::header_hook`].
#[derive(Clone)]
pub(crate) struct HeaderHook(pub(crate) Arc<dyn Fn(&mut HeaderMap) + Send + Sync>);

impl fmt::Debug for HeaderHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeaderHook")
    }
}

// One macro for the three parameter enums so their names, parsing and serde stay in one place.
macro_rules! name_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every accepted name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, value: s.to_owned(), expected: Self::NAMES }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

name_enum!(
    /// Which app asks for flags (`client=`).
    ///
    /// ```
    /// use flagpole::Client;
    /// assert_eq!("mobile".parse::<Client>().unwrap(), Client::Mobile);
    /// assert_eq!(Client::default().to_string(), "extension");
    /// ```
    Client, "client", {
        /// The browser extension (the default).
        #[default]
        Extension => "extension",
        /// The mobile app.
        Mobile => "mobile",
    }
);

name_enum!(
    /// Which build of the app asks (`distribution=`).
    ///
    /// ```
    /// use flagpole::Distribution;
    /// assert_eq!("flask".parse::<Distribution>().unwrap(), Distribution::Flask);
    /// assert_eq!(Distribution::NAMES, ["main", "flask"]);
    /// ```
    Distribution, "distribution", {
        /// The main build (the default).
        #[default]
        Main => "main",
        /// The Flask (experimental) build.
        Flask => "flask",
    }
);

name_enum!(
    /// Which deployment environment asks (`environment=`).
    ///
    /// ```
    /// use flagpole::Environment;
    /// assert_eq!(Environment::Rc.as_str(), "rc");
    /// assert_eq!(serde_json::to_string(&Environment::Dev).unwrap(), "\"dev\"");
    /// ```
    Environment, "environment", {
        /// Production (the default).
        #[default]
        Prod => "prod",
        /// Release candidate.
        Rc => "rc",
        /// Development.
        Dev => "dev",
    }
);

/// The validated configuration the poller runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) base_url: Url,
    pub(crate) client: Client,
    pub(crate) distribution: Distribution,
    pub(crate) environment: Environment,
    pub(crate) profile_id: Option<String>,
    /// Who the flags are processed for (the profile id again, the metrics id, the version).
    pub(crate) identity: Identity,
    pub(crate) fetch_interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) schedule_jitter: f64,
    pub(crate) defaults: HashMap<String, Value>,
    pub(crate) overrides: Map<String, Value>,
    pub(crate) enabled: bool,
    pub(crate) polling: bool,
    pub(crate) user_agent: HeaderValue,
    pub(crate) headers: HeaderMap,
    pub(crate) header_hook: Option<HeaderHook>,
    pub(crate) wall_clock: WallClock,
}

impl Config {
    /// The retry delay cap actually used: never longer than the fetch interval.
    pub(crate) fn backoff_cap(&self) -> Duration {
        self.backoff_max.min(self.fetch_interval)
    }

    /// Identifies the request a cache record answers and who it was processed for: another
    /// profile id, metrics id or client version makes the cache unusable. The ids enter only as
    /// hashes, so the cache file never holds them.
    pub(crate) fn cache_key(&self) -> String {
        let hashed = |id: Option<&str>| id.map_or_else(|| "-".to_owned(), hash_id);
        format!(
            "{}|{}|{}|{}|user:{}|metrics:{}|version:{}",
            self.base_url.as_str().trim_end_matches('/'),
            self.client,
            self.distribution,
            self.environment,
            hashed(self.profile_id.as_deref()),
            hashed(self.identity.metrics_id.as_deref()),
            self.identity
                .client_version
                .as_ref()
                .map_or("-", |(raw, _)| raw.as_str()),
        )
    }
}

/// Builds a [`Flags`] handle; every setting has a default.
///
/// | setting | default |
/// |---|---|
/// | [`base_url`](Self::base_url) | [`DEFAULT_BASE_URL`] |
/// | [`client`](Self::client) / [`distribution`](Self::distribution) / [`environment`](Self::environment) | `extension` / `main` / `prod` |
/// | [`profile_id`](Self::profile_id) | none (no `user=` parameter, no profile-segmented rollouts) |
/// | [`metrics_id`](Self::metrics_id) / [`metrics_flags`](Self::metrics_flags) | none / none |
/// | [`client_version`](Self::client_version) | none (version-gated values are served as sent) |
/// | [`fetch_interval`](Self::fetch_interval) | 1 day |
/// | [`timeout`](Self::timeout) | 10 s for the whole request, body included |
/// | [`backoff_initial`](Self::backoff_initial) / [`backoff_max`](Self::backoff_max) | 1 s / 5 min (and never above the fetch interval) |
/// | [`max_body_bytes`](Self::max_body_bytes) | 4 MiB |
/// | [`schedule_jitter`](Self::schedule_jitter) | 0.2 |
/// | [`store`](Self::store) | none: nothing persists between runs |
/// | [`default_flag`](Self::default_flag) / [`defaults`](Self::defaults) | none |
/// | [`override_flag`](Self::override_flag) | none |
/// | [`enabled`](Self::enabled) | `true` |
/// | [`polling`](Self::polling) | `true`: fetch on the interval and retry failures |
/// | [`cancellation_token`](Self::cancellation_token) | a new token |
/// | [`http_client`](Self::http_client) / [`transport`](Self::transport) | a new `reqwest::Client` (rustls, or native-tls with that feature) |
/// | [`user_agent`](Self::user_agent) | [`USER_AGENT`] alone (`flagpole/<version>`) |
/// | [`header`](Self::header) / [`header_hook`](Self::header_hook) | none |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), flagpole::Error> {
/// use std::time::Duration;
/// use flagpole::{Environment, Flags};
///
/// let flags = Flags::builder()
///     .environment(Environment::Dev)
///     .fetch_interval(Duration::from_secs(15 * 60))
///     .default_flag("new-checkout", false)
///     .enabled(false) // no request in this example
///     .build()?;
/// assert_eq!(flags.get_bool("new-checkout"), Some(false));
/// # Ok(()) }
/// ```
#[must_use]
#[derive(Clone)]
pub struct FlagsBuilder {
    base_url: String,
    client: Client,
    distribution: Distribution,
    environment: Environment,
    profile_id: Option<String>,
    metrics_id: Option<String>,
    metrics_flags: HashSet<String>,
    client_version: Option<String>,
    fetch_interval: Duration,
    timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    max_body_bytes: usize,
    schedule_jitter: f64,
    defaults: HashMap<String, Value>,
    overrides: Map<String, Value>,
    enabled: bool,
    polling: bool,
    store: Option<Arc<dyn Store>>,
    token: Option<CancellationToken>,
    http_client: Option<reqwest::Client>,
    transport: Option<Arc<dyn Transport>>,
    user_agent: Option<String>,
    headers: Vec<(String, String)>,
    header_hook: Option<HeaderHook>,
    wall_clock: WallClock,
}

impl fmt::Debug for FlagsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The profile id stays out of debug output, like everywhere else.
        f.debug_struct("FlagsBuilder")
            .field("base_url", &self.base_url)
            .field("client", &self.client)
            .field("distribution", &self.distribution)
            .field("environment", &self.environment)
            .field(
                "profile_id",
                &self.profile_id.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "metrics_id",
                &self.metrics_id.as_ref().map(|_| "<redacted>"),
            )
            .field("client_version", &self.client_version)
            .field("fetch_interval", &self.fetch_interval)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Default for FlagsBuilder {
    fn default() -> Self {
        FlagsBuilder {
            base_url: DEFAULT_BASE_URL.to_owned(),
            client: Client::default(),
            distribution: Distribution::default(),
            environment: Environment::default(),
            profile_id: None,
            metrics_id: None,
            metrics_flags: HashSet::new(),
            client_version: None,
            fetch_interval: DEFAULT_FETCH_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            schedule_jitter: DEFAULT_SCHEDULE_JITTER,
            defaults: HashMap::new(),
            overrides: Map::new(),
            enabled: true,
            polling: true,
            store: None,
            token: None,
            http_client: None,
            transport: None,
            user_agent: None,
            headers: Vec::new(),
            header_hook: None,
            wall_clock: WallClock::default(),
        }
    }
}

impl FlagsBuilder {
    /// The API root; `/flags` is appended. Must be an `http` or `https` URL.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The `client=` parameter.
    pub fn client(mut self, client: Client) -> Self {
        self.client = client;
        self
    }

    /// The `distribution=` parameter.
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// The `environment=` parameter.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// The user's profile id, sent as `user=` and the id threshold rollouts segment by (except
    /// for [`metrics_flags`](Self::metrics_flags)). It is never logged, and the cache stores only
    /// a hash of it. An empty id counts as none.
    pub fn profile_id(mut self, id: impl Into<String>) -> Self {
        self.profile_id = non_empty(id.into());
        self
    }

    /// The user's MetaMetrics id: explicit targeting (`metaMetricsIds`) matches it for every
    /// flag, and rollouts of the flags named in [`metrics_flags`](Self::metrics_flags) segment by
    /// it. Never sent, never logged; the cache stores only a hash of it. An empty id counts as
    /// none.
    pub fn metrics_id(mut self, id: impl Into<String>) -> Self {
        self.metrics_id = non_empty(id.into());
        self
    }

    /// Flags whose threshold rollouts segment by the [`metrics_id`](Self::metrics_id) instead of
    /// the profile id (added to any named before).
    pub fn metrics_flags<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.metrics_flags.extend(names.into_iter().map(Into::into));
        self
    }

    /// The app's semantic version (`13.1.0`, `v13.1.0-beta.2`): a version-gated value serves
    /// the entry of the highest version at or below it. A cache saved by another version is not
    /// used. An invalid version fails [`build`](Self::build).
    pub fn client_version(mut self, version: impl Into<String>) -> Self {
        self.client_version = Some(version.into());
        self
    }

    /// How long fetched flags stay fresh; must be above zero.
    pub fn fetch_interval(mut self, interval: Duration) -> Self {
        self.fetch_interval = interval;
        self
    }

    /// The limit on one whole request, from connecting to the last body byte; must be above zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The first retry delay after a failure; it doubles on each further failure.
    pub fn backoff_initial(mut self, delay: Duration) -> Self {
        self.backoff_initial = delay;
        self
    }

    /// The retry delay cap; the fetch interval caps it too.
    pub fn backoff_max(mut self, delay: Duration) -> Self {
        self.backoff_max = delay;
        self
    }

    /// The largest body accepted; a longer one is cut off while streaming and is an error.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The share of the fetch interval, at its end, in which the next refresh is scheduled at
    /// random (0 to 1). With 0.2 and a 1-day interval, a refresh comes between 19.2 h and 24 h
    /// after the last one, so processes started together do not all call the API at once.
    /// 0 refreshes exactly at expiry.
    pub fn schedule_jitter(mut self, jitter: f64) -> Self {
        self.schedule_jitter = jitter;
        self
    }

    /// A default value, served when the remote set lacks this flag or remote flags are off.
    pub fn default_flag(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.defaults.insert(name.into(), value.into());
        self
    }

    /// A local override for this handle: served over remote flags and defaults, never processed
    /// and never persisted. Overrides set at run time with
    /// [`Flags::set_override`](crate::Flags::set_override) win over it.
    pub fn override_flag(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.overrides.insert(name.into(), value.into());
        self
    }

    /// Several defaults at once (added to any set before).
    pub fn defaults<K, V>(mut self, defaults: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<Value>,
    {
        self.defaults
            .extend(defaults.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Where flags persist between runs, e.g. a [`FileStore`](crate::FileStore).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Whether remote flags are on at start. Off: no request is made and only defaults are served.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Whether the poller fetches on its own (the default). Off ("manual mode"): it fetches once
    /// at start when there is no fresh cache, then only when [`Flags::refresh`] is called, and
    /// never retries; for one-shot tools and for callers that drive refreshes themselves.
    pub fn polling(mut self, polling: bool) -> Self {
        self.polling = polling;
        self
    }

    /// A token whose cancellation stops the poller (a child token is used, so dropping the
    /// handle never cancels the caller's token).
    pub fn cancellation_token(mut self, token: CancellationToken) -> Self {
        self.token = Some(token);
        self
    }

    /// A caller-configured `reqwest::Client` (proxies, TLS roots, pooling). Ignored when a
    /// [`transport`](Self::transport) is set.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// The application's product token, sent before flagpole's own in the `User-Agent` of every
    /// request: `.user_agent("myapp/2.3")` sends `myapp/2.3 flagpole/0.1.0`.
    ///
    /// The `User-Agent` is set on each request, so it also replaces one configured on a caller's
    /// [`http_client`](Self::http_client); a [`header`](Self::header) named `user-agent` replaces
    /// it altogether.
    ///
    /// # Errors
    /// [`build`](Self::build) fails with [`Error::Config`] when the text is not a valid header value.
    pub fn user_agent(mut self, product: impl Into<String>) -> Self {
        self.user_agent = Some(product.into());
        self
    }

    /// A header sent with every request, such as an API key:
    /// `.header("x-api-key", key)`. A later header of the same name replaces an earlier one.
    /// Values are marked sensitive, so they never show in `Debug` output or logs.
    ///
    /// # Errors
    /// [`build`](Self::build) fails with [`Error::Config`] for an invalid name or value (the
    /// message names the header, never its value).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A function called for every request just before it is sent, to add or change headers:
    /// credentials that rotate, a request id. It runs last, after the `Accept`, `User-Agent`,
    /// [`header`](Self::header)s and `If-None-Match` headers are set, on the poller task: keep it
    /// quick and never block in it.
    ///
    /// ```
    /// use reqwest::header::{HeaderMap, HeaderValue};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = flagpole::Flags::builder()
    ///     .user_agent("myapp/2.3")
    ///     .header("x-api-key", "k-123")
    ///     .header_hook(|headers: &mut HeaderMap| {
    ///         let token = "fresh-token"; // e.g. read from a credentials cache
    ///         if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) {
    ///             value.set_sensitive(true);
    ///             headers.insert("authorization", value);
    ///         }
    ///     })
    ///     .enabled(false) // no request in this example
    ///     .build()?;
    /// # let _ = flags;
    /// # Ok(()) }
    /// ```
    pub fn header_hook(mut self, hook: impl Fn(&mut HeaderMap) + Send + Sync + 'static) -> Self {
        self.header_hook = Some(HeaderHook(Arc::new(hook)));
        self
    }

    /// Replaces the wall clock (feature `test-util`), to test what happens when the machine
    /// sleeps: tokio's timers stop during a suspend, the wall clock does not. The poller reads it
    /// for cache timestamps, the age of cached flags and `Retry-After` dates.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::{Duration, SystemTime};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let now = Arc::new(Mutex::new(SystemTime::now()));
    /// let clock = Arc::clone(&now);
    /// let flags = flagpole::Flags::builder()
    ///     .wall_clock(move || *clock.lock().unwrap())
    ///     .enabled(false)
    ///     .build()?;
    /// *now.lock().unwrap() += Duration::from_secs(8 * 60 * 60); // a night in a laptop bag
    /// # let _ = flags;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "test-util")]
    pub fn wall_clock(
        mut self,
        now: impl Fn() -> std::time::SystemTime + Send + Sync + 'static,
    ) -> Self {
        self.wall_clock = WallClock::custom(now);
        self
    }

    /// Replaces HTTP altogether, e.g. with a
    #[cfg_attr(
        feature = "test-util",
        doc = "[`ScriptedTransport`](crate::ScriptedTransport)"
    )]
    #[cfg_attr(not(feature = "test-util"), doc = "`ScriptedTransport`")]
    /// in tests.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// Checks the configuration, loads nothing yet, and starts the poller: as a task on the
    /// current tokio runtime, or, called outside one, on a thread of its own (named `flagpole`,
    /// with a single-threaded runtime) that ends when the poller stops. The returned handle
    /// serves defaults until the store or the network answers.
    ///
    /// # Errors
    /// [`Error::Config`] for a zero interval or timeout, a bad base URL, a jitter outside 0..=1,
    /// a zero body limit, an invalid client version, or a runtime that cannot be started.
    pub fn build(self) -> Result<Flags, Error> {
        let config = self.validate()?;
        let runtime = Runtime::current_or_own()?;
        let transport = match self.transport {
            Some(t) => t,
            None => Arc::new(match self.http_client {
                Some(c) => HttpTransport::with_client(c),
                None => HttpTransport::new()?,
            }),
        };
        Ok(Flags::start(
            config,
            transport,
            self.store,
            self.token.unwrap_or_default(),
            runtime,
        ))
    }

    pub(crate) fn validate(&self) -> Result<Config, Error> {
        let base_url = parse_base_url(&self.base_url)?;
        if self.fetch_interval.is_zero() {
            return Err(Error::config("fetch interval must be above zero"));
        }
        if self.timeout.is_zero() {
            return Err(Error::config("timeout must be above zero"));
        }
        if self.backoff_initial.is_zero() {
            return Err(Error::config("initial backoff must be above zero"));
        }
        let year = Duration::from_secs(365 * 24 * 60 * 60);
        for (what, value) in [
            ("fetch interval", self.fetch_interval),
            ("timeout", self.timeout),
            ("maximum backoff", self.backoff_max),
        ] {
            if value > year {
                return Err(Error::config(format!("{what} must be at most 365 days")));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return Err(Error::config(
                "maximum backoff must not be below the initial backoff",
            ));
        }
        if !(0.0..=1.0).contains(&self.schedule_jitter) {
            return Err(Error::config("schedule jitter must be between 0 and 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::config("max body bytes must be above zero"));
        }
        let user_agent = match &self.user_agent {
            Some(product) => HeaderValue::from_str(&format!("{product} {USER_AGENT}"))
                .map_err(|_| Error::config("user agent is not a valid header value"))?,
            None => HeaderValue::from_static(USER_AGENT),
        };
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::config(format!("header name `{name}` is not valid")))?;
            // The value may be a secret: the message names the header only.
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| Error::config(format!("header `{name}` has an invalid value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client_version = match &self.client_version {
            None => None,
            Some(raw) => match rollout::parse_version(raw) {
                Some(version) => Some((raw.clone(), version)),
                None => {
                    return Err(Error::config(format!(
                        "client version `{raw}` is not a semantic version (like 13.1.0)"
                    )))
                }
            },
        };
        Ok(Config {
            base_url,
            client: self.client,
            distribution: self.distribution,
            environment: self.environment,
            profile_id: self.profile_id.clone(),
            identity: Identity {
                profile_id: self.profile_id.clone(),
                metrics_id: self.metrics_id.clone(),
                metrics_flags: self.metrics_flags.clone(),
                client_version,
            },
            fetch_interval: self.fetch_interval,
            timeout: self.timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_body_bytes: self.max_body_bytes,
            schedule_jitter: self.schedule_jitter,
            defaults: self.defaults.clone(),
            overrides: self.overrides.clone(),
            enabled: self.enabled,
            polling: self.polling,
            user_agent,
            headers,
            header_hook: self.header_hook.clone(),
            wall_clock: self.wall_clock.clone(),
        })
    }
}

fn non_empty(id: String) -> Option<String> {
    (!id.is_empty()).then_some(id)
}

fn hash_id(id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_base_url(raw: &str) -> Result<Url, Error> {
    let url = Url::parse(raw).map_err(|e| Error::config(format!("base URL `{raw}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(format!(
            "base URL `{raw}`: scheme must be http or https"
        )));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(Error::config(format!("base URL `{raw}`: no host")));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Client::NAMES {
            assert_eq!(name.parse::<Client>().unwrap().to_string(), *name);
        }
        for name in Distribution::NAMES {
            assert_eq!(name.parse::<Distribution>().unwrap().to_string(), *name);
        }
        for name in Environment::NAMES {
            assert_eq!(name.parse::<Environment>().unwrap().to_string(), *name);
        }
    }

    #[test]
    fn unknown_value_lists_accepted_names() {
        let err = "staging".parse::<Environment>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown environment `staging`: expected one of prod, rc, dev"
        );
        let err = "Extension".parse::<Client>().unwrap_err();
        assert_eq!(err.expected, &["extension", "mobile"]);
    }

    #[test]
    fn serde_uses_wire_names() {
        assert_eq!(
            serde_json::to_string(&Distribution::Flask).unwrap(),
            "\"flask\""
        );
        assert_eq!(
            serde_json::from_str::<Environment>("\"rc\"").unwrap(),
            Environment::Rc
        );
        let err = serde_json::from_str::<Client>("\"web\"").unwrap_err();
        assert!(err
            .to_string()
            .contains("expected one of extension, mobile"));
    }

    #[test]
    fn base_url_validation() {
        assert!(parse_base_url("https://example.com/v1").is_ok());
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        for bad in [
            "",
            "not a url",
            "ftp://example.com",
            "mailto:a@b.c",
            "https://",
        ] {
            let err = parse_base_url(bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn build_rejects_bad_settings() {
        let cases: Vec<(&str, FlagsBuilder)> = vec![
            (
                "zero interval",
                Flags::builder().fetch_interval(Duration::ZERO),
            ),
            ("zero timeout", Flags::builder().timeout(Duration::ZERO)),
            ("bad url", Flags::builder().base_url("nope")),
            ("jitter", Flags::builder().schedule_jitter(1.5)),
            ("body", Flags::builder().max_body_bytes(0)),
            (
                "huge interval",
                Flags::builder().fetch_interval(Duration::MAX),
            ),
            ("huge timeout", Flags::builder().timeout(Duration::MAX)),
            (
                "huge backoff",
                Flags::builder().backoff_max(Duration::from_secs(400 * 24 * 3600)),
            ),
            ("version", Flags::builder().client_version("13.1")),
            ("version text", Flags::builder().client_version("latest")),
            (
                "backoff",
                Flags::builder()
                    .backoff_initial(Duration::from_secs(10))
                    .backoff_max(Duration::from_secs(1)),
            ),
            ("user agent", Flags::builder().user_agent("app\n")),
            ("header name", Flags::builder().header("bad name", "v")),
            (
                "header value",
                Flags::builder().header("x-key", "line\nbreak"),
            ),
        ];
        for (what, builder) in cases {
            let err = builder.validate().unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn header_errors_never_show_the_value() {
        let err = Flags::builder()
            .header("x-api-key", "secret\n")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("x-api-key"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn user_agent_and_headers_are_validated_into_the_config() {
        let c = Flags::builder().validate().unwrap();
        assert_eq!(c.user_agent, USER_AGENT);
        let c = Flags::builder()
            .user_agent("myapp/2.3")
            .header("X-Api-Key", "k1")
            .header("x-api-key", "k2")
            .validate()
            .unwrap();
        assert_eq!(c.user_agent, format!("myapp/2.3 {USER_AGENT}").as_str());
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.headers["x-api-key"], "k2");
        assert!(c.headers["x-api-key"].is_sensitive());
        assert!(!format!("{c:?}").contains("k2"));
    }

    #[test]
    fn build_outside_a_runtime_runs_the_poller_on_its_own_thread() {
        let flags = Flags::builder().enabled(false).build().unwrap();
        let mut status = flags.status_receiver();
        drop(flags.shutdown());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !status.borrow_and_update().is_stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread's poller never stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
