//! [`FlagsBuilder`]: collects the settings, then validates them and starts a [`Flags`] handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::client::Flags;
#[cfg(feature = "test-util")]
use crate::clock::WallClock;
use crate::config::{non_empty, Client, Distribution, Environment, HeaderHook, Settings};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::runtime::Runtime;
use crate::store::Store;
use crate::transport::{HttpTransport, Transport};

/// Builds a [`Flags`] handle; every setting has a default.
///
/// | setting | default |
/// |---|---|
/// | [`base_url`](Self::base_url) | [`DEFAULT_BASE_URL`](crate::DEFAULT_BASE_URL) |
/// | [`client`](Self::client) / [`distribution`](Self::distribution) / [`environment`](Self::environment) | `extension` / `main` / `prod` |
/// | [`profile_id`](Self::profile_id) | none (no `user=` parameter, no profile-segmented rollouts) |
/// | [`metrics_id`](Self::metrics_id) / [`metrics_flags`](Self::metrics_flags) | none / none |
/// | [`client_version`](Self::client_version) | none (version-gated values are served as sent) |
/// | [`fetch_interval`](Self::fetch_interval) | 1 day |
/// | [`timeout`](Self::timeout) | 10 s for the whole request, body included |
/// | [`backoff_initial`](Self::backoff_initial) / [`backoff_max`](Self::backoff_max) | 1 s / 5 min (and never above the fetch interval), while only defaults are served |
/// | [`max_body_bytes`](Self::max_body_bytes) | 4 MiB |
/// | [`schedule_jitter`](Self::schedule_jitter) | 0.1 |
/// | [`store`](Self::store) | none: nothing persists between runs |
/// | [`default_flag`](Self::default_flag) / [`defaults`](Self::defaults) | none |
/// | [`override_flag`](Self::override_flag) | none |
/// | [`enabled`](Self::enabled) | `true` |
/// | [`polling`](Self::polling) | `true`: fetch on the interval and retry failures |
/// | [`cancellation_token`](Self::cancellation_token) | a new token |
/// | [`http_client`](Self::http_client) / [`transport`](Self::transport) | a new `reqwest::Client` (rustls, or native-tls with that feature) |
/// | [`user_agent`](Self::user_agent) | [`USER_AGENT`](crate::USER_AGENT) alone (`flagpole/<version>`) |
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
#[derive(Clone, Default)]
pub struct FlagsBuilder {
    settings: Settings,
    store: Option<Arc<dyn Store>>,
    token: Option<CancellationToken>,
    http_client: Option<reqwest::Client>,
    transport: Option<Arc<dyn Transport>>,
    #[cfg(feature = "redis")]
    shared_store: Option<crate::RedisStore>,
}

impl fmt::Debug for FlagsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The profile id stays out of debug output, like everywhere else.
        f.debug_struct("FlagsBuilder")
            .field("base_url", &self.settings.base_url)
            .field("client", &self.settings.client)
            .field("distribution", &self.settings.distribution)
            .field("environment", &self.settings.environment)
            .field(
                "profile_id",
                &self.settings.profile_id.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "metrics_id",
                &self.settings.metrics_id.as_ref().map(|_| "<redacted>"),
            )
            .field("client_version", &self.settings.client_version)
            .field("fetch_interval", &self.settings.fetch_interval)
            .field("enabled", &self.settings.enabled)
            .finish_non_exhaustive()
    }
}

impl Flags {
    /// Starts configuring a handle; see [`FlagsBuilder`] for every setting and its default.
    pub fn builder() -> FlagsBuilder {
        FlagsBuilder::default()
    }
}

impl FlagsBuilder {
    /// The API root; `/flags` is appended. Must be an `http` or `https` URL.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.settings.base_url = url.into();
        self
    }

    /// The `client=` parameter.
    pub fn client(mut self, client: Client) -> Self {
        self.settings.client = client;
        self
    }

    /// The `distribution=` parameter.
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.settings.distribution = distribution;
        self
    }

    /// The `environment=` parameter.
    pub fn environment(mut self, environment: Environment) -> Self {
        self.settings.environment = environment;
        self
    }

    /// The user's profile id, sent as `user=` and the id threshold rollouts segment by (except
    /// for [`metrics_flags`](Self::metrics_flags)). It is never logged, and the cache stores only
    /// a hash of it. An empty id counts as none.
    pub fn profile_id(mut self, id: impl Into<String>) -> Self {
        self.settings.profile_id = non_empty(id.into());
        self
    }

    /// The user's MetaMetrics id: explicit targeting (`metaMetricsIds`) matches it for every
    /// flag, and rollouts of the flags named in [`metrics_flags`](Self::metrics_flags) segment by
    /// it. Never sent, never logged; the cache stores only a hash of it. An empty id counts as
    /// none.
    pub fn metrics_id(mut self, id: impl Into<String>) -> Self {
        self.settings.metrics_id = non_empty(id.into());
        self
    }

    /// Flags whose threshold rollouts segment by the [`metrics_id`](Self::metrics_id) instead of
    /// the profile id (added to any named before).
    pub fn metrics_flags<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.settings
            .metrics_flags
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// The app's semantic version (`13.1.0`, `v13.1.0-beta.2`): a version-gated value serves
    /// the entry of the highest version at or below it. A cache saved by another version is not
    /// used. An invalid version fails [`build`](Self::build).
    pub fn client_version(mut self, version: impl Into<String>) -> Self {
        self.settings.client_version = Some(version.into());
        self
    }

    /// How long fetched flags stay fresh; must be above zero.
    pub fn fetch_interval(mut self, interval: Duration) -> Self {
        self.settings.fetch_interval = interval;
        self
    }

    /// The limit on one whole request, from connecting to the last body byte; must be above zero.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// The first retry delay after a failure; it doubles on each further failure. The backoff
    /// applies while the handle serves only defaults: one that serves good flags (fetched or
    /// cached) retries on the regular schedule instead, once per fetch interval, so that a fleet
    /// does not multiply a failing API's load (see FLEET.md).
    pub fn backoff_initial(mut self, delay: Duration) -> Self {
        self.settings.backoff_initial = delay;
        self
    }

    /// The retry delay cap; the fetch interval caps it too.
    pub fn backoff_max(mut self, delay: Duration) -> Self {
        self.settings.backoff_max = delay;
        self
    }

    /// The largest body accepted; a longer one is cut off while streaming and is an error.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_body_bytes = bytes;
        self
    }

    /// The share of the fetch interval, at its end, in which the next refresh is scheduled at
    /// random (0 to 1). With 0.1 and a 1-day interval, a refresh comes between 21.6 h and 24 h
    /// after the last one, which keeps a fleet's refreshes spread; a fleet sends
    /// `1 / (1 - jitter / 2)` requests per client and interval. 0 refreshes exactly at expiry.
    /// The first refresh after a start (with no cache, or a fresh one) is drawn from the steady
    /// state of a fleet on this schedule, so processes started together spread at once.
    pub fn schedule_jitter(mut self, jitter: f64) -> Self {
        self.settings.schedule_jitter = jitter;
        self
    }

    /// A default value, served when the remote set lacks this flag or remote flags are off.
    pub fn default_flag(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.settings.defaults.insert(name.into(), value.into());
        self
    }

    /// A local override for this handle: served over remote flags and defaults, never processed
    /// and never persisted. Overrides set at run time with
    /// [`Flags::set_override`](crate::Flags::set_override) win over it.
    pub fn override_flag(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.settings.overrides.insert(name.into(), value.into());
        self
    }

    /// Several defaults at once (added to any set before).
    pub fn defaults<K, V>(mut self, defaults: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<Value>,
    {
        self.settings
            .defaults
            .extend(defaults.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Where flags persist between runs, e.g. a [`FileStore`](crate::FileStore).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Shared mode (feature `redis`): the processes that share this store make one request per
    /// interval between them and adopt each other's flags the moment they are written; see
    /// [`RedisStore`](crate::RedisStore). The [`store`](Self::store) stays the local,
    /// crash-safe tier, and overrides stay with each process.
    #[cfg(feature = "redis")]
    pub fn shared_store(mut self, store: crate::RedisStore) -> Self {
        self.shared_store = Some(store);
        self
    }

    /// Whether remote flags are on at start. Off: no request is made and only defaults are served.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.settings.enabled = enabled;
        self
    }

    /// Whether the poller fetches on its own (the default). Off ("manual mode"): it fetches once
    /// at start when there is no fresh cache, then only when [`Flags::refresh`] is called, and
    /// never retries; for one-shot tools and for callers that drive refreshes themselves.
    pub fn polling(mut self, polling: bool) -> Self {
        self.settings.polling = polling;
        self
    }

    /// Follows the server's change stream besides polling (off by default): the handle keeps
    /// `GET {base}/flags/stream?client=..&distribution=..&environment=..` open (Server-Sent
    /// Events, as [`flagpole relay`](crate::relay) serves them) and fetches the flags as soon as
    /// an event names a tag other than the one it holds: a change arrives in well under a second
    /// instead of at the next poll. The profile id is not sent on the stream.
    ///
    /// Polling goes on at the fetch interval: the stream only adds fetches, which go through the
    /// poller like any other (one in flight, one queued). A fetch that fails or answers older
    /// flags is tried again with backoff until the tag comes (at most 3 answers with another
    /// tag). A dropped stream reconnects with jittered backoff (1 s doubling to 1 min); 45 s
    /// without an event or a keep-alive counts as dropped. A server without the stream (404, 405, or not `text/event-stream`) is logged once
    /// and streaming stays off for this handle. Disabling remote flags closes the stream;
    /// [`Status::stream`](crate::Status::stream) tells whether it is connected.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// let flags = flagpole::Flags::builder()
    ///     .base_url("http://127.0.0.1:8080/v1") // a `flagpole relay`
    ///     .stream(true)
    ///     .enabled(false) // no connection in this example
    ///     .build()?;
    /// assert_eq!(flags.status().stream(), flagpole::StreamState::Off);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "stream")]
    pub fn stream(mut self, stream: bool) -> Self {
        self.settings.stream = stream;
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
        self.settings.user_agent = Some(product.into());
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
        self.settings.headers.push((name.into(), value.into()));
        self
    }

    /// A function called for every request just before it is sent, to add or change headers:
    /// credentials that rotate, a request id. It runs last, after the `Accept`, `User-Agent`,
    /// [`header`](Self::header)s and `If-None-Match` headers are set, on the poller task: keep it
    /// quick and never block in it.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue};
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
        self.settings.header_hook = Some(HeaderHook(Arc::new(hook)));
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
        self.settings.wall_clock = WallClock::custom(now);
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
        let config = self.settings.validate()?;
        let runtime = Runtime::current_or_own()?;
        let transport = self.transport_or_default()?;
        #[cfg(feature = "redis")]
        let fleet = self.shared_store.map_or_else(Fleet::default, |store| {
            Fleet::redis(crate::fleet::redis::Tier::new(store, &config))
        });
        #[cfg(not(feature = "redis"))]
        let fleet = Fleet::default();
        Ok(Flags::start(
            config,
            transport,
            self.store,
            fleet,
            self.token.unwrap_or_default(),
            runtime,
        ))
    }

    /// The transport a handle built now would use: the one set, else HTTP over the caller's
    /// client or a new one. The relay wraps it to count upstream fetches.
    pub(crate) fn transport_or_default(&self) -> Result<Arc<dyn Transport>, Error> {
        Ok(match &self.transport {
            Some(t) => Arc::clone(t),
            None => Arc::new(match &self.http_client {
                Some(c) => HttpTransport::with_client(c.clone()),
                None => HttpTransport::new()?,
            }),
        })
    }

    /// The settings, for the relay, which starts one handle per parameter set from a template.
    #[cfg(feature = "relay")]
    pub(crate) fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    /// One transport for every parameter set of the relay (one connection pool upstream).
    #[cfg(feature = "relay")]
    pub(crate) fn shared_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Drops the store, for the relay: each parameter set gets its own file, never a shared one.
    #[cfg(feature = "relay")]
    pub(crate) fn clear_store(&mut self) {
        self.store = None;
    }

    /// The validated configuration, without starting anything (for the unit tests).
    #[cfg(test)]
    pub(crate) fn validate(&self) -> Result<crate::config::Config, Error> {
        self.settings.validate()
    }
}

#[cfg(test)]
mod tests;
