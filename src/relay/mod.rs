//! `flagpole relay`: one upstream poller per parameter set serves the Client Config API, a change
//! stream and OFREP over HTTP to every process of a host or a cluster (feature `relay`).

mod api;
mod body;
mod ofrep;
mod ops;
mod route;
mod server;
mod sets;
mod stream;
mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::builder::FlagsBuilder;
use crate::error::Error;
use ops::Metrics;
use sets::{Params, Sets};

/// Settings of a [`Relay`]; from [`Relay::builder`].
///
/// The upstream builder is a template: for each parameter set (client, distribution, environment)
/// the relay serves, it starts one handle from it with that set's parameters, and a cache file in
/// the [`cache_dir`](Self::cache_dir). Its base URL, interval, timeout, backoff, headers, transport
/// and shared store (`FlagsBuilder::shared_store`, feature `redis`) apply upstream. Anything
/// personal is dropped: the relay serves the unpersonalised flags (no profile id is ever sent
/// upstream, nor any `user=` a client sends), and its client, distribution and environment are the
/// defaults for requests that name none.
#[derive(Debug)]
#[must_use]
pub struct RelayBuilder {
    upstream: FlagsBuilder,
    cache_dir: Option<PathBuf>,
    limits: Limits,
}

/// The server's limits against slow or greedy clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) drain: Duration,
    /// The change stream's comment interval, so that proxies keep an idle stream open.
    pub(crate) keep_alive: Duration,
    /// How long a change stream's socket may stay full before the client is dropped.
    pub(crate) stall: Duration,
    /// `SO_SNDBUF` of accepted sockets; `None` leaves the kernel's autotuning.
    pub(crate) send_buffer: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            drain: Duration::from_secs(5),
            keep_alive: Duration::from_secs(15),
            stall: Duration::from_secs(30),
            send_buffer: None,
        }
    }
}

impl RelayBuilder {
    /// Where each parameter set's cache file goes (`<client>-<distribution>-<environment>.json`):
    /// a restarted relay serves those at once, with no upstream request while they are fresh.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// At most this many open connections (default 10,000); past it new ones are closed at once.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max.max(1);
        self
    }

    /// How long a client may take to send a request's headers (default 10 s), counted from the
    /// connection's start or the end of the previous response: a client that trickles its headers
    /// (slow-loris), or holds an idle connection longer, is disconnected. At least 1 ms.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_read_timeout = timeout.max(MIN_TIMER);
        self
    }

    /// The change stream's keep-alive comment interval (default 15 s). For tests; free to change.
    #[doc(hidden)]
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.limits.keep_alive = interval.max(MIN_TIMER);
        self
    }

    /// How long a change stream may find its socket full before the client is dropped (default
    /// 30 s). For tests; free to change.
    #[doc(hidden)]
    pub fn stall_timeout(mut self, stall: Duration) -> Self {
        self.limits.stall = stall.max(MIN_TIMER);
        self
    }

    /// `SO_SNDBUF` for accepted sockets (default: the kernel's autotuning), so that a test fills
    /// a socket in kilobytes instead of megabytes. For tests; free to change.
    #[doc(hidden)]
    pub fn send_buffer_size(mut self, bytes: u32) -> Self {
        self.limits.send_buffer = Some(bytes);
        self
    }

    /// Listens on `addr` (port 0 picks a free one) and serves until [`Relay::shutdown`].
    /// Upstream pollers start with the first request for their parameter set.
    ///
    /// # Errors
    /// [`Error::Config`] for bad upstream settings, [`Error::Listen`] when the address cannot
    /// be bound. Call it inside a tokio runtime.
    pub async fn bind(mut self, addr: SocketAddr) -> Result<Relay, Error> {
        // One store for every set would have them overwrite each other's record.
        self.upstream.clear_store();
        let settings = self.upstream.settings_mut();
        settings.profile_id = None;
        settings.metrics_id = None;
        settings.metrics_flags.clear();
        settings.client_version = None;
        settings.defaults.clear();
        settings.overrides.clear();
        settings.enabled = true;
        let config = settings.validate()?;
        let defaults = Params {
            client: config.client,
            distribution: config.distribution,
            environment: config.environment,
        };
        let listener = listen(addr, self.limits.send_buffer)
            .await
            .map_err(|e| Error::listen(addr, e))?;
        let addr = listener.local_addr().map_err(|e| Error::listen(addr, e))?;
        let token = CancellationToken::new();
        let state = Arc::new(State {
            sets: Sets::new(
                self.upstream,
                self.cache_dir,
                config.fetch_interval,
                defaults,
            )?,
            metrics: Metrics::default(),
            limits: self.limits,
            token: token.clone(),
        });
        let task = tokio::spawn(server::serve(listener, Arc::clone(&state)));
        tracing::info!(%addr, "relay listening");
        Ok(Relay {
            addr,
            state,
            task: Some(task),
        })
    }
}

/// The shortest timer interval accepted: zero would spin (or, for an interval, panic).
const MIN_TIMER: Duration = Duration::from_millis(1);

/// A listener on `addr`; accepted sockets inherit its send buffer size.
async fn listen(addr: SocketAddr, send_buffer: Option<u32>) -> std::io::Result<TcpListener> {
    let Some(size) = send_buffer else {
        return TcpListener::bind(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(size)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What every request handler shares.
pub(crate) struct State {
    pub(crate) sets: Sets,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    /// Cancelled at shutdown: the listener stops, streams end, connections drain.
    pub(crate) token: CancellationToken,
}

/// A running relay: an HTTP server on [`local_addr`](Self::local_addr) serving
///
/// - `GET /v1/flags?client=&distribution=&environment=`: the Client Config API, as upstream
///   sends it (raw: clients run MetaMask's processing themselves), with a strong `ETag`
///   (`If-None-Match` → 304), `Cache-Control: max-age` (the freshness left) and
///   `X-Flagpole-Source`; 503 with `Retry-After: 1` until the first flags arrive; 400 listing the
///   accepted values for an unknown one. `user=` is accepted and ignored (never forwarded,
///   logged or stored).
/// - OFREP: `POST /ofrep/v1/evaluate/flags` (bulk, with an `ETag` over the flags and the
///   evaluation context: `If-None-Match` → 304), `POST /ofrep/v1/evaluate/flags/{key}` and
///   `GET /ofrep/v1/configuration`. MetaMask's processing runs per request for the context's
///   `targetingKey` (the profile id), `metaMetricsId`, `metaMetricsFlags` and `clientVersion`:
///   a threshold rollout answers reason `SPLIT` with its group as the `variant`, explicit
///   targeting and versions `TARGETING_MATCH`, other flags `STATIC`. Headers
///   `X-Flagpole-Client`, `-Distribution` and `-Environment` select the parameter set. Bodies
///   over 64 KiB get 413, invalid JSON 400 `PARSE_ERROR`, wrong shapes 400 `INVALID_CONTEXT`.
/// - `GET /v1/flags/stream?client=&distribution=&environment=`: Server-Sent Events. On connect
///   an `event: flags` with `id: <etag>` and data `{"etag": .., "cacheTimestamp": ..}` (as soon as
///   there are flags), then one per change of the tag, and a `: keep-alive` comment after 15 s of
///   quiet. A notification only: clients refetch `/v1/flags`. Nothing is queued per client: a
///   client that falls behind gets the latest tag, and one whose socket stays full for 30 s is
///   disconnected.
/// - `GET /health` (per parameter set: `starting`, `fresh`, or `stale` with the last error) and
///   `GET /metrics` (Prometheus text: requests by route and status, refused connections, open
///   and dropped streams, upstream fetches and failures, the age of the flags).
///
/// Against slow or greedy clients: a connection limit (past it, new connections are closed at
/// once) and a [header read timeout](RelayBuilder::header_read_timeout).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), flagpole::Error> {
/// let upstream = flagpole::Flags::builder().base_url("https://client-config.api.cx.metamask.io/v1");
/// let relay = flagpole::relay::Relay::builder(upstream)
///     .cache_dir("/var/cache/flagpole-relay")
///     .bind("127.0.0.1:8080".parse().unwrap())
///     .await?;
/// relay.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
pub struct Relay {
    addr: SocketAddr,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish()
    }
}

impl Relay {
    /// A relay whose upstream handles are built from `upstream` (see [`RelayBuilder`]).
    pub fn builder(upstream: FlagsBuilder) -> RelayBuilder {
        RelayBuilder {
            upstream,
            cache_dir: None,
            limits: Limits::default(),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops accepting (new connections are refused), ends the change streams at once, lets
    /// requests in flight finish for up to 5 s (then closes what is left), and stops the upstream
    /// pollers.
    pub async fn shutdown(mut self) {
        self.state.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        for set in self.state.sets.started() {
            set.flags.shutdown().await;
        }
        tracing::info!("relay stopped");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.token.cancel();
    }
}
