//! The background task that owns all I/O: store, schedule, fetch, backoff, refresh, shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::layers::{RemoteLayer, Shared};
use crate::parse::{parse, RawFlags};
use crate::request::{self, StatusClass};
use crate::rollout::{self, Processed};
use crate::snapshot::{Snapshot, Source};
use crate::status::Status;
use crate::store::{CacheRecord, Store};
use crate::transport::{BoxFuture, Transport};

pub(crate) type RefreshReply = oneshot::Sender<Result<Arc<Snapshot>, Error>>;

/// Requests from the handles.
#[derive(Debug)]
pub(crate) enum Command {
    Refresh(RefreshReply),
    SetEnabled(bool, oneshot::Sender<()>),
    /// The overrides changed: persist them.
    SaveOverrides(oneshot::Sender<Result<(), Error>>),
}

/// The last good remote flags.
#[derive(Debug, Clone)]
struct RemoteState {
    /// As the server sent them: what is saved, and processed again at the next start.
    flags: Arc<RawFlags>,
    processed: Arc<Processed>,
    source: Source,
    cache_timestamp: u64,
    etag: Option<String>,
}

enum Outcome {
    Fetched {
        flags: RawFlags,
        etag: Option<String>,
    },
    NotModified,
    Failed {
        error: Error,
        retry_after: Option<Duration>,
    },
}

enum Event {
    Cancelled,
    Fetched(Outcome),
    Command(Option<Command>),
    Due,
}

pub(crate) struct Poller {
    config: Arc<Config>,
    url: Url,
    key: String,
    transport: Arc<dyn Transport>,
    store: Option<Arc<dyn Store>>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    token: CancellationToken,
    enabled: bool,
    remote: Option<RemoteState>,
    backoff: Backoff,
    stale_since: Option<std::time::Instant>,
    /// The server's `Retry-After`: no request before this, refreshes included.
    not_before: Option<Instant>,
    /// A rejected request (4xx) was logged at error level in this failure streak.
    rejection_logged: bool,
    next_fetch: Option<Instant>,
    in_flight: Option<BoxFuture<'static, Outcome>>,
    /// Callers answered by the fetch in flight.
    waiting: Vec<RefreshReply>,
    /// Callers who asked after the fetch in flight started: they get the next one.
    queued: Vec<RefreshReply>,
    /// Callers waiting for their override change to be persisted.
    save_requests: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl Poller {
    pub(crate) fn new(
        config: Arc<Config>,
        transport: Arc<dyn Transport>,
        store: Option<Arc<dyn Store>>,
        shared: Arc<Shared>,
        commands: mpsc::UnboundedReceiver<Command>,
        token: CancellationToken,
    ) -> Self {
        Poller {
            url: request::flags_url(&config),
            key: config.cache_key(),
            backoff: Backoff::new(config.backoff_initial, config.backoff_cap()),
            enabled: config.enabled,
            config,
            transport,
            store,
            shared,
            commands,
            token,
            remote: None,
            stale_since: None,
            rejection_logged: false,
            not_before: None,
            next_fetch: None,
            in_flight: None,
            waiting: Vec::new(),
            queued: Vec::new(),
            save_requests: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        if self.start().await {
            loop {
                let due = self
                    .next_fetch
                    .filter(|_| self.enabled && self.in_flight.is_none());
                let event = tokio::select! {
                    biased;
                    () = self.token.cancelled() => Event::Cancelled,
                    outcome = in_flight(&mut self.in_flight) => Event::Fetched(outcome),
                    command = self.commands.recv() => Event::Command(command),
                    () = sleep_until(due) => Event::Due,
                };
                match event {
                    Event::Cancelled | Event::Command(None) => break,
                    Event::Fetched(outcome) => {
                        self.in_flight = None;
                        self.finish(outcome).await;
                    }
                    Event::Command(Some(command)) => self.handle(command).await,
                    Event::Due => self.start_fetch(),
                }
            }
        }
    }

    /// Loads the store and publishes what it holds. False when cancelled meanwhile.
    async fn start(&mut self) -> bool {
        if let Some(store) = self.store.clone() {
            let loaded = tokio::select! {
                () = self.token.cancelled() => return false,
                loaded = tokio::task::spawn_blocking(move || store.load()) => loaded,
            };
            match loaded {
                Ok(Ok(Some(record))) => self.adopt(record),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "could not load the flag cache; starting without it")
                }
                Err(error) => {
                    tracing::warn!(%error, "flag cache load panicked; starting without it")
                }
            }
        }
        // Whatever the store said, the overrides set so far stand from now on.
        self.restore_overrides(RawFlags::new());
        if !self.enabled {
            self.set_status(Status::Disabled);
            return true;
        }
        self.serve_remote();
        true
    }

    /// Serves the persisted overrides, under any change made while they loaded.
    fn restore_overrides(&self, persisted: RawFlags) {
        let restored = !persisted.is_empty();
        self.shared
            .update(move |layers| layers.restore_overrides(persisted));
        if restored {
            tracing::debug!("restored local flag overrides");
        }
    }

    /// Serves the last remote flags, if any. Fresh ones need no request until they expire;
    /// otherwise a fetch starts at once.
    fn serve_remote(&mut self) {
        let fresh_for = self.remote.as_ref().and_then(|r| {
            self.config
                .fetch_interval
                .checked_sub(age(r.cache_timestamp))
                .filter(|d| !d.is_zero())
        });
        // Flags first, then the status: whoever sees "fresh" must read these flags.
        if self.remote.is_some() {
            self.publish_remote();
        }
        match fresh_for {
            // The first fetch is exactly at expiry: jitter would have to move it earlier, and
            // nothing is requested while the flags are fresh. Schedule jitter applies from then on.
            Some(remaining) => {
                self.set_status(Status::Fresh);
                self.schedule(remaining);
            }
            None => {
                self.set_status(Status::Initializing);
                self.next_fetch = Some(Instant::now());
            }
        }
    }

    fn adopt(&mut self, record: CacheRecord) {
        if record.version != CacheRecord::VERSION {
            tracing::info!("ignoring a flag cache of another format version");
            return;
        }
        self.restore_overrides(record.overrides);
        if record.key != self.key {
            tracing::info!("ignoring a flag cache saved for other request parameters or ids");
            return;
        }
        if record.cache_timestamp == 0 {
            return;
        }
        tracing::debug!(flags = record.flags.len(), "loaded flag cache");
        self.remote = Some(self.remote_state(
            record.flags,
            Source::Cache,
            record.cache_timestamp,
            record.etag,
        ));
    }

    /// Processing happens here, once per new set of remote flags, never on a read.
    fn remote_state(
        &self,
        flags: RawFlags,
        source: Source,
        cache_timestamp: u64,
        etag: Option<String>,
    ) -> RemoteState {
        let flags = Arc::new(flags);
        let processed = rollout::process(&flags, &self.config.identity);
        RemoteState {
            flags,
            processed: Arc::new(processed),
            source,
            cache_timestamp,
            etag,
        }
    }

    async fn handle(&mut self, first: Command) {
        self.apply(first);
        self.drain_commands();
        self.start_if_asked();
        self.save_overrides().await;
    }

    /// Persists override changes taken from the queue (by any drain, not only `handle`'s). One
    /// save covers every change made so far.
    async fn save_overrides(&mut self) {
        if self.save_requests.is_empty() {
            return;
        }
        let requests = std::mem::take(&mut self.save_requests);
        let saved = self.save().await;
        for reply in requests {
            let _ = reply.send(saved.clone());
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Refresh(reply) if !self.enabled => {
                let _ = reply.send(Err(Error::Disabled));
            }
            Command::Refresh(reply) if self.in_flight.is_some() => self.queued.push(reply),
            Command::Refresh(reply) => self.waiting.push(reply),
            Command::SetEnabled(enabled, ack) => {
                self.set_enabled(enabled);
                let _ = ack.send(());
            }
            Command::SaveOverrides(reply) => self.save_requests.push(reply),
        }
    }

    /// Takes what is already queued, so that a burst of refresh calls shares one fetch.
    fn drain_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
        }
    }

    /// Starts a fetch for the callers waiting on one, or, while the server's `Retry-After`
    /// runs, schedules it for when that ends: a refresh never overrides the server's request.
    fn start_if_asked(&mut self) {
        if !self.enabled || self.in_flight.is_some() || self.waiting.is_empty() {
            return;
        }
        match self.not_before.filter(|t| *t > Instant::now()) {
            Some(at) => self.next_fetch = Some(at),
            None => self.start_fetch(),
        }
    }

    fn set_enabled(&mut self, enabled: bool) {
        if enabled == self.enabled {
            return;
        }
        self.enabled = enabled;
        if !enabled {
            // Dropping the future aborts the request: privacy means no request finishes later.
            self.in_flight = None;
            self.answer_callers(&Error::Disabled);
            self.next_fetch = None;
            self.shared.update(|layers| layers.remote = None);
            self.set_status(Status::Disabled);
            tracing::info!("remote flags disabled; serving defaults only");
            return;
        }
        tracing::info!("remote flags enabled");
        self.backoff.reset();
        self.stale_since = None;
        self.serve_remote();
    }

    fn start_fetch(&mut self) {
        self.next_fetch = None;
        let etag = self.remote.as_ref().and_then(|r| r.etag.as_deref());
        let request = request::build(&self.config, &self.url, etag);
        let had_etag = etag.is_some();
        let send = self.transport.send(request);
        let timeout = self.config.timeout;
        // Stable field names, documented in the README. Never the URL: it holds the profile id.
        let span = tracing::info_span!(
            "flagpole.fetch",
            status = Empty,
            duration_ms = Empty,
            bytes = Empty,
            flags = Empty,
            source = Empty,
            error = Empty,
        );
        // Only the poller changes the remote layer (overrides keep the source), so the source
        // served now is what a failure leaves served.
        let served = self.shared.current.load().source();
        let fetch = async move {
            let response = match tokio::time::timeout(timeout, send).await {
                Err(_) => return failed(Error::Timeout { after: timeout }),
                Ok(Err(Error::Timeout { .. })) => return failed(Error::Timeout { after: timeout }),
                Ok(Err(error)) => return failed(error),
                Ok(Ok(response)) => response,
            };
            tracing::Span::current()
                .record("status", response.status)
                .record("bytes", response.body.len() as u64);
            match request::classify(response.status) {
                StatusClass::Success => match parse(&response.body) {
                    Ok(flags) => Outcome::Fetched {
                        flags,
                        etag: request::etag(&response.headers),
                    },
                    Err(error) => failed(error),
                },
                StatusClass::NotModified if had_etag => Outcome::NotModified,
                _ => Outcome::Failed {
                    error: Error::Http {
                        status: response.status,
                    },
                    retry_after: request::retry_after(
                        response.status,
                        &response.headers,
                        SystemTime::now(),
                    ),
                },
            }
        };
        self.in_flight = Some(Box::pin(
            async move {
                let started = Instant::now();
                let outcome = fetch.await;
                let span = tracing::Span::current();
                span.record("duration_ms", started.elapsed().as_millis() as u64);
                match &outcome {
                    Outcome::Fetched { flags, .. } => {
                        span.record("flags", flags.len() as u64);
                        span.record("source", Source::Network.as_str());
                    }
                    Outcome::NotModified => {
                        span.record("source", Source::Network.as_str());
                    }
                    Outcome::Failed { error, .. } => {
                        span.record("source", served.as_str());
                        span.record("error", tracing::field::display(error));
                    }
                }
                tracing::debug!("flag fetch finished");
                outcome
            }
            .instrument(span),
        ));
    }

    async fn finish(&mut self, outcome: Outcome) {
        let result = match outcome {
            Outcome::Fetched { flags, etag } => {
                tracing::debug!(flags = flags.len(), "fetched flags");
                self.remote = Some(self.remote_state(flags, Source::Network, now_ms(), etag));
                Ok(self.succeeded().await)
            }
            Outcome::NotModified => {
                tracing::debug!("flags not modified");
                if let Some(remote) = &mut self.remote {
                    remote.source = Source::Network;
                    remote.cache_timestamp = now_ms();
                }
                Ok(self.succeeded().await)
            }
            Outcome::Failed { error, retry_after } => {
                self.failed(&error, retry_after);
                Err(error)
            }
        };
        for reply in std::mem::take(&mut self.waiting) {
            let _ = reply.send(result.clone());
        }
        // Callers who asked during this fetch, and any whose request arrived meanwhile, share
        // the next one.
        self.waiting = std::mem::take(&mut self.queued);
        self.drain_commands();
        self.start_if_asked();
        self.save_overrides().await;
    }

    /// Publishes the new flags at once, persists them, and only then reports "fresh", so that a
    /// caller who stops on seeing "fresh" (or a refresh answer) never loses the save.
    async fn succeeded(&mut self) -> Arc<Snapshot> {
        self.backoff.reset();
        self.rejection_logged = false;
        self.stale_since = None;
        self.not_before = None;
        let snapshot = self.publish_remote();
        let jitter = self.config.schedule_jitter * fastrand::f64();
        self.schedule(self.config.fetch_interval.mul_f64(1.0 - jitter));
        match self.save().await {
            Ok(()) => {}
            // Stopping mid-save: the status goes straight to Stopped.
            Err(_) if self.token.is_cancelled() => return snapshot,
            Err(error) => {
                tracing::warn!(%error, "could not save the flag cache; flags stay in memory")
            }
        }
        self.set_status(Status::Fresh);
        snapshot
    }

    /// The next automatic fetch, `delay` from now; none when polling is off.
    fn schedule(&mut self, delay: Duration) -> Option<Instant> {
        self.next_fetch = self.config.polling.then(|| after(delay));
        self.next_fetch
    }

    fn failed(&mut self, error: &Error, retry_after: Option<Duration>) {
        let mut delay = if error.is_permanent() {
            // Retrying a 4xx soon cannot help: go straight to the cap, and say so once.
            if !std::mem::replace(&mut self.rejection_logged, true) {
                tracing::error!(%error, "flag fetch rejected; retrying at the backoff cap");
            } else {
                tracing::debug!(%error, "flag fetch rejected again");
            }
            self.backoff.next_at_cap()
        } else {
            tracing::warn!(%error, attempt = self.backoff.attempt() + 1, "flag fetch failed; serving the last good flags");
            self.backoff.next().unwrap_or(self.config.backoff_cap())
        };
        if let Some(wait) = retry_after {
            let wait = wait.min(self.config.fetch_interval);
            self.not_before = Some(after(wait));
            delay = delay.max(wait);
        }
        tracing::debug!(
            attempt = self.backoff.attempt(),
            delay_ms = delay.as_millis() as u64,
            "next flag fetch scheduled"
        );
        let next = self.schedule(delay);
        let since = *self
            .stale_since
            .get_or_insert_with(|| Instant::now().into_std());
        self.set_status(Status::Stale {
            since,
            last_error: error.clone(),
            next_retry: next.map(Instant::into_std),
        });
    }

    /// Persists the last remote flags (or none yet: timestamp 0) with the overrides held now.
    async fn save(&mut self) -> Result<(), Error> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        let overrides = self.shared.read(|layers| layers.overrides().clone());
        let mut record = match &self.remote {
            Some(remote) => CacheRecord::new(
                self.key.clone(),
                remote.cache_timestamp,
                remote.etag.clone(),
                RawFlags::clone(&remote.flags),
            ),
            None => CacheRecord::new(self.key.clone(), 0, None, RawFlags::new()),
        };
        record.overrides = overrides;
        let saved = tokio::select! {
            () = self.token.cancelled() => return Err(Error::Stopped),
            saved = tokio::task::spawn_blocking(move || store.save(&record)) => saved,
        };
        saved.unwrap_or_else(|panic| Err(Error::store(std::io::Error::other(panic.to_string()))))
    }

    /// Publishes the last remote flags, processed, under the defaults and over the overrides.
    fn publish_remote(&self) -> Arc<Snapshot> {
        let layer = self.remote.as_ref().map(|r| RemoteLayer {
            processed: Arc::clone(&r.processed),
            source: r.source,
            cache_timestamp: r.cache_timestamp,
            etag: r.etag.clone(),
        });
        self.shared.update(|layers| layers.remote = layer)
    }

    fn set_status(&self, status: Status) {
        self.shared.status.send_if_modified(|current| {
            let changed = !matches!(
                (&*current, &status),
                (Status::Initializing, Status::Initializing)
                    | (Status::Fresh, Status::Fresh)
                    | (Status::Disabled, Status::Disabled)
                    | (Status::Stopped, Status::Stopped)
            );
            if changed {
                *current = status;
            }
            changed
        });
    }

    /// Answers every caller waiting on a fetch, now or next, with `error`.
    fn answer_callers(&mut self, error: &Error) {
        for reply in self.waiting.drain(..).chain(self.queued.drain(..)) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn stop(&mut self) {
        self.in_flight = None;
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Refresh(reply) => self.waiting.push(reply),
                Command::SetEnabled(_, ack) => drop(ack),
                Command::SaveOverrides(reply) => self.save_requests.push(reply),
            }
        }
        for reply in self.save_requests.drain(..) {
            let _ = reply.send(Err(Error::Stopped));
        }
        self.answer_callers(&Error::Stopped);
        self.set_status(Status::Stopped);
        tracing::debug!("flag poller stopped");
    }
}

impl Drop for Poller {
    // Runs on every exit, a panic included: waiting callers get an answer and the status says
    // Stopped, so nobody waits on a poller that is gone.
    fn drop(&mut self) {
        self.stop();
    }
}

/// `delay` from now, saturating far in the future instead of overflowing.
fn after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
}

fn failed(error: Error) -> Outcome {
    Outcome::Failed {
        error,
        retry_after: None,
    }
}

async fn in_flight(fetch: &mut Option<BoxFuture<'static, Outcome>>) -> Outcome {
    match fetch {
        Some(fetch) => fetch.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How old a timestamp is; a timestamp from the future counts as brand new.
fn age(cache_timestamp: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(cache_timestamp))
}
