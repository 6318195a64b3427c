//! Remote feature flags kept in memory: always readable, never blocking, never lost.
//!
//! # Motivation
//!
//! A service that reads feature flags from a remote API on every request could keep them in an
//! `RwLock<HashMap<String, Value>>` and refresh it from a timer. Every read then takes a lock that
//! the refresh contends for, every refresh blocks readers, an outage leaves either stale flags
//! with no sign of it or none at all, and a restart begins with no flags until the network answers.
//!
//! flagpole keeps the flags in an immutable [`Snapshot`] published through an `ArcSwap`:
//!
//! - **Reads** are synchronous, never await, never lock, and do not allocate: flags the code knows
//!   are declared once as typed [`Flag`]s (name, type, default) and read with [`Flags::value`],
//!   the fastest read; any flag can be read by name ([`Flags::get_bool`] and friends). A
//!   [`Snapshot`] has the same reads, on one consistent view.
//! - **One background poller** fetches on an interval (default one day), retries failures with
//!   jittered exponential backoff, honours `Retry-After`, and runs at most one request at a time.
//! - **Nothing is lost**: a failure never replaces good flags; the last good set is persisted in a
//!   [`Store`] and served at the next start, with no request while it is fresh. The fallback order
//!   is network, cache, the caller's defaults, then empty.
//! - **Changes and health** are observable through `tokio::sync::watch` ([`Flags::subscribe`],
//!   [`Flags::status_receiver`]).
//! - **Fleets** (feature `redis`): processes sharing a Redis (`RedisStore`, given to
//!   `FlagsBuilder::shared_store`) make about one request per interval between them and adopt
//!   each other's flags the moment they are written; Redis failing never costs a flag.
//! - **Privacy**: [`Flags::set_enabled`]`(false)` stops every request and serves defaults only;
//!   the profile id is sent only as `user=`, never logged, and only hashed in the cache.
//!
//! The wire format is MetaMask's Client Config API:
//! `GET {base}/flags?client=..&distribution=..&environment=..[&user=..]`, answering an array of
//! single-key objects.
//!
//! # Quick start
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use flagpole::{Environment, FileStore, Flag, Flags};
//!
//! // Declared once, as statics: name, type and default.
//! static NEW_CHECKOUT: Flag<bool> = Flag::new("new-checkout", false);
//! static MAX_ITEMS: Flag<i64> = Flag::new("max-items", 50);
//! static BANNER: Flag<&'static str> = Flag::new("banner", "hello");
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), flagpole::Error> {
//! let flags = Flags::builder()
//!     .environment(Environment::Prod)
//!     .store(FileStore::new("/var/cache/myapp/flags.json"))
//!     .build()?;
//! let _ = tokio::time::timeout(Duration::from_secs(2), flags.ready()).await;
//!
//! if flags.value(&NEW_CHECKOUT) {
//!     // the remote value, or the Flag's default
//! }
//! let n: i64 = flags.value(&MAX_ITEMS);
//! let banner: Arc<str> = flags.value(&BANNER); // no copy of the string
//! let snapshot = flags.snapshot(); // several flags from one moment, the same reads
//! let same: bool = snapshot.value(&NEW_CHECKOUT);
//! let by_name: Option<bool> = flags.get_bool("named-at-runtime");
//! let mut changes = flags.subscribe();
//! tokio::spawn(async move {
//!     while changes.changed().await.is_ok() {
//!         println!("flags now: {:?}", changes.borrow().names());
//!     }
//! });
//! # Ok(()) }
//! ```
//!
//! A runnable walk-through with an embedded fake API is `cargo run --example quickstart`.
//!
//! # Architecture
//!
//! ```text
//!             refresh() / set_enabled()            watch::Receiver<Arc<Snapshot>>
//!   caller ───────────── mpsc ──────────┐          watch::Receiver<Status>
//!                                       ▼                   ▲
//!   Store (file) ──load at start──▶  Poller task ──publish──┤
//!         ▲                          │   ▲                  ▼
//!         └──────save after fetch────┘   │          ArcSwap<Snapshot> ◀── value / get_bool / snapshot()
//!                             Transport ─▶ Client Config API        (sync, never awaits or locks)
//! ```
//!
//! - [`FlagsBuilder::build`] validates the configuration and spawns **one poller task** on the
//!   current tokio runtime. It owns all I/O: it loads the [`Store`] at start, sends requests
//!   through a [`Transport`] ([`HttpTransport`] by default), schedules refreshes and retries, and
//!   saves each good flag set.
//! - Each flag set becomes an immutable [`Snapshot`], published twice: into an `ArcSwap` that
//!   every read loads without locking, and into a `watch` channel for [`Flags::subscribe`]. The
//!   poller's health goes into another `watch` channel as a [`Status`]. Beside the `ArcSwap`,
//!   each handle keeps every flag's boolean or number reading in atomic cells, rewritten at each
//!   publish under a sequence lock, so that [`Flags::value`] of a scalar [`Flag`] is a few
//!   atomic loads and holds nothing that could keep an old snapshot alive.
//! - A snapshot is built from three layers, later winning: the caller's defaults, the remote flags
//!   processed for this client as MetaMask does (version-gated values for the
//!   [client version](FlagsBuilder::client_version), threshold rollouts and explicit targeting for
//!   the [profile](FlagsBuilder::profile_id) and [metrics](FlagsBuilder::metrics_id) ids), then
//!   local overrides. Processing runs once per new remote flag set, never on a read; an override
//!   ([`Flags::set_override`]) rebuilds and publishes a snapshot at once, without a fetch.
//! - [`Flags`] is the cheap, cloneable handle: reads go to the `ArcSwap`; [`Flags::refresh`] and
//!   [`Flags::set_enabled`] are commands sent to the poller; dropping the last handle, calling
//!   [`Flags::shutdown`] or cancelling the [`CancellationToken`] stops the poller.
//!
//! ## Modules
//!
//! One job per module, in layers: a module imports only from the layers below it, and the
//! import graph has no cycles. Modules are private; what they export is re-exported here.
//!
//! | layer | module | job |
//! |---|---|---|
//! | face | `lib` | re-exports, these docs, `#![forbid(unsafe_code)]` |
//! | service | `relay` | `flagpole::relay` (feature `relay`): a hyper server in front of one handle per parameter set: the Client Config API (`api`, `view`, `sets`), the change stream (`stream`), OFREP (`ofrep`, `body`), `/health` and `/metrics` (`ops`), the accept loop and drain (`server`), dispatch (`route`) |
//! | handle | `client` | [`Flags`]: reads, refresh, overrides, subscriptions, status, shutdown; starts the poller (`client::new`), reads (`client::read`) |
//! | | `wait`, `reply`, `runtime` | [`Flags::ready`] and [`Flags::ready_blocking`]; the futures the actions return ([`Refresh`], [`Saved`], ...); where the poller runs (the caller's runtime or a `flagpole` thread) |
//! | | `builder` | [`FlagsBuilder`]: collects settings, validates them, picks the transport, builds |
//! | | `openfeature` | `FlagpoleProvider` (feature `openfeature`) |
//! | | `hooks` | publishing without the poller, for benches and tests (feature `test-util`, hidden) |
//! | writer | `poller` | the one task that does I/O: event loop, cache load and save, outcomes |
//! | | `fetch` | one request through the transport into an outcome (parsed flags, 304, error) |
//! | | `shared` | the publishing hub: the current snapshot for reads, `watch` channels, the layers lock; private fields, methods only |
//! | | `stream` | streaming clients (feature `stream`): the task that keeps the change stream open, reconnects with backoff and hands each tag heard to the poller (`stream::task`) |
//! | | `fleet` | shared mode (feature `redis`): `RedisStore`, the lease and the change channel (`fleet::redis`: `lead`, `listen`, `link`, `record`); inert without a shared store |
//! | edges | `transport` | [`Transport`], [`Request`], [`Response`], [`HttpTransport`], `ScriptedTransport`; for streams `Transport::open`, `StreamResponse`, `Chunks`, `ScriptedStream` |
//! | | `request` | the URL, the headers, `ETag`, `Retry-After`, status classes |
//! | | `store` | [`Store`], [`FileStore`], [`MemoryStore`], [`CacheRecord`] |
//! | read model | `flag` | [`Flag`]: a typed flag declared once, with the slot it last resolved to |
//! | | `current` | the published snapshot: an `ArcSwap` for whole views, plus atomic copies of the scalars for guard-free [`Flag`] reads |
//! | | `snapshot`, `source` | the immutable [`Snapshot`] readers see, and its [`Source`] |
//! | | `table`, `entry`, `key` | the flag table with its shared layout, one flag's value and typed reading, the packed slot cache |
//! | | `layers` | the data a snapshot is built from: defaults < processed remote < overrides |
//! | ground | `config` | [`Client`], [`Distribution`], [`Environment`], the builder's settings, validation into the poller's configuration, the cache key |
//! | | `defaults` | the `DEFAULT_*` constants and [`USER_AGENT`] |
//! | | `error` | [`Error`], [`UnknownValue`], the retry policy for HTTP statuses |
//! | | `parse`, `rollout`, `backoff`, `clock`, `status` | the wire format, MetaMask processing, retry delays, wall time, [`Status`] and [`StreamState`] |
//! | | `sse` | Server-Sent Events read incrementally (feature `stream`) |
//!
//! The poller's scheduling rules (how a fleet of clients spreads its requests) are in the
//! `poller::schedule` module and FLEET.md.
//!
//! # Cargo features
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `rustls` | yes | TLS through rustls for the HTTP client flagpole builds |
//! | `native-tls` | no | TLS through the platform library (OpenSSL on Linux); preferred over rustls when both are on |
//! | `openfeature` | no | `FlagpoleProvider`, an [OpenFeature](https://openfeature.dev) provider |
//! | `test-util` | no | `ScriptedTransport`, canned answers with no sockets, for tests |
//! | `redis` | no | shared mode: `RedisStore` for `FlagsBuilder::shared_store` |
//! | `relay` | no | `flagpole::relay`: the Client Config API, a change stream and OFREP over HTTP |
//! | `stream` | no | streaming clients: `FlagsBuilder::stream`, `Transport::open` (no extra dependency) |
//! | `cli` | no | the `flagpole` command (`get`, `watch`, `relay`; with `redis`, `relay` and `stream`) |
//!
//! With no TLS feature the built-in client speaks plain `http` only. Proxies, extra root
//! certificates and connection pools are set on a `reqwest::Client` given to
//! [`FlagsBuilder::http_client`]; headers such as API keys with [`FlagsBuilder::header`] or
//! [`FlagsBuilder::header_hook`]; every request carries the `User-Agent` [`USER_AGENT`].
//!
//! # Tracing
//!
//! flagpole logs through `tracing`, never with the profile id or the request URL. Each fetch
//! runs in an `INFO` span named `flagpole.fetch` with the fields `status` (HTTP status, absent
//! when no response came), `duration_ms`, `bytes` (body length), `flags` (how many were parsed),
//! `source` (what is served after the fetch: `network`, `cache` or `defaults`), `error` (on
//! failure) and, with streaming on, `stream` (the change stream's state as the fetch starts).
//! After a failure, a `DEBUG` event "next flag fetch scheduled" carries `attempt` (failures in a
//! row) and `delay_ms`. These names are stable.
//!
//! # Testing your own code
//!
//! The `test-util` feature adds `ScriptedTransport`, which answers from a script with no sockets,
//! so tests can run on tokio's paused clock.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod backoff;
mod builder;
mod client;
mod clock;
mod config;
mod current;
mod defaults;
mod entry;
mod error;
mod fetch;
mod flag;
mod fleet;
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod hooks;
mod key;
mod layers;
#[cfg(feature = "openfeature")]
mod openfeature;
mod parse;
mod poller;
#[cfg(feature = "relay")]
pub mod relay;
mod reply;
mod request;
mod rollout;
mod runtime;
mod shared;
mod snapshot;
mod source;
#[cfg(feature = "stream")]
mod sse;
mod status;
mod store;
mod stream;
mod table;
mod transport;
mod wait;

pub use flag::{Flag, FlagValue};
#[cfg(feature = "redis")]
pub use fleet::redis::RedisStore;
#[cfg(feature = "redis")]
pub use fleet::SharedState;

pub use builder::FlagsBuilder;
pub use client::Flags;
pub use config::{Client, Distribution, Environment};
pub use defaults::{
    DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX, DEFAULT_BASE_URL, DEFAULT_FETCH_INTERVAL,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_SCHEDULE_JITTER, DEFAULT_TIMEOUT, USER_AGENT,
};
pub use error::{Error, UnknownValue};
#[cfg(feature = "openfeature")]
pub use openfeature::{FlagpoleProvider, ProviderEvent, ProviderEvents, DEFAULT_INIT_TIMEOUT};
pub use reply::{Refresh, Saved, SetEnabled, Shutdown};
pub use snapshot::{Snapshot, Source};
pub use status::{Status, StreamState};
pub use store::{CacheRecord, FileStore, MemoryStore, Store};
pub use transport::{BoxFuture, HttpTransport, Request, Response, Transport};
#[cfg(feature = "stream")]
pub use transport::{Chunks, StreamResponse};
#[cfg(feature = "test-util")]
pub use transport::{ScriptedResponse, ScriptedTransport};
#[cfg(all(feature = "test-util", feature = "stream"))]
pub use transport::{ScriptedStream, StreamFeed};
pub use wait::Ready;

/// Re-exported so that a [`Flags`] handle can be tied to an application's shutdown.
pub use tokio_util::sync::CancellationToken;
