//! The background task that owns all I/O: store, schedule, fetch, backoff, refresh, shutdown.
//!
//! One loop takes one event at a time and never awaits I/O itself: the load, the save and the
//! fetch are futures it polls beside the commands, so a hung store or server never delays a
//! command, and a command already queued is seen before a response that is already ready.

mod cache;
mod outcome;
mod persist;
mod schedule;
mod wanted;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::Error;
use crate::fetch::{fetch, Outcome};
use crate::fleet::{Announcements, Fleet, Held};
use crate::layers::RemoteLayer;
use crate::parse::RawFlags;
use crate::rollout::Processed;
use crate::shared::Shared;
use crate::snapshot::{Snapshot, Source};
use crate::status::Status;
use crate::store::{CacheRecord, Store};
use crate::stream::{Heard, Streamer};
use crate::transport::{BoxFuture, Transport};

pub(crate) use persist::SaveReply;
use persist::{Done, Persist};

pub(crate) type RefreshReply = oneshot::Sender<Result<Arc<Snapshot>, Error>>;

/// Requests from the handles.
#[derive(Debug)]
pub(crate) enum Command {
    Refresh(RefreshReply),
    SetEnabled(bool, oneshot::Sender<()>),
    /// Persist the state held now (the overrides changed, or a caller flushes).
    Save(SaveReply),
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

enum Event {
    Cancelled,
    Fetched(Outcome),
    Command(Option<Command>),
    Store(Done),
    Due,
    /// Shared mode: a record another process announced.
    Announced(Arc<CacheRecord>),
    /// The change stream announced a tag.
    Heard(Heard),
    /// Time to try again for a tag heard that a fetch did not bring.
    WantedRetry,
    RetryLoad,
    WallCheck,
}

pub(crate) struct Poller {
    config: Arc<Config>,
    url: Url,
    key: String,
    transport: Arc<dyn Transport>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    token: CancellationToken,
    enabled: bool,
    remote: Option<RemoteState>,
    backoff: Backoff,
    stale_since: Option<std::time::Instant>,
    /// The server's `Retry-After`: no request before this (tokio time; the wall-clock time is
    /// what callers are told).
    not_before: Option<(Instant, SystemTime)>,
    /// A rejected request (4xx) was logged at error level in this failure streak.
    rejection_logged: bool,
    next_fetch: Option<Instant>,
    in_flight: Option<BoxFuture<'static, Outcome>>,
    /// Callers answered by the fetch in flight.
    waiting: Vec<RefreshReply>,
    /// Callers who asked after the fetch in flight started: they get the next one.
    queued: Vec<RefreshReply>,
    /// The first load of the store has not ended: the automatic first fetch waits for it.
    starting: bool,
    persist: Persist,
    /// Successful fetches so far.
    fetches: u64,
    /// "Fresh" is reported once the save covering this many fetches has ended.
    fresh_after_save: Option<u64>,
    next_wall_check: Instant,
    fleet: Fleet,
    /// The fleet's announcements, followed while remote flags are on.
    announcements: Announcements,
    /// The server's change stream, followed while remote flags are on (when asked for).
    streamer: Streamer,
    /// A tag heard on the stream that the flags held do not carry yet.
    wanted: Option<wanted::Wanted>,
    /// The fetch in flight answers a tag heard, and this was the next poll when it started:
    /// the poll keeps that time (the stream's fetch was one more, not one of the schedule's).
    resume: Option<Instant>,
}

impl Poller {
    pub(crate) fn new(
        config: Arc<Config>,
        transport: Arc<dyn Transport>,
        store: Option<Arc<dyn Store>>,
        shared: Arc<Shared>,
        fleet: Fleet,
        commands: mpsc::UnboundedReceiver<Command>,
        token: CancellationToken,
    ) -> Self {
        Poller {
            url: crate::request::flags_url(&config),
            key: config.cache_key(),
            backoff: Backoff::new(config.backoff_initial, config.backoff_cap()),
            enabled: config.enabled,
            persist: Persist::new(store, &config),
            next_wall_check: after(wall_check_period(&config)),
            config,
            transport,
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
            starting: true,
            fetches: 0,
            fresh_after_save: None,
            fleet,
            announcements: Announcements::none(),
            streamer: Streamer::none(),
            wanted: None,
            resume: None,
        }
    }

    /// Follows what tells this handle about changes: the fleet's announcements and the
    /// server's change stream.
    fn follow(&mut self) {
        self.announcements = self.fleet.listen();
        self.streamer = Streamer::start(&self.config, &self.transport, &self.shared, &self.token);
    }

    pub(crate) async fn run(mut self) {
        if self.enabled {
            self.follow();
        }
        if !self.persist.load() {
            self.loaded(Ok(None));
        }
        loop {
            let due = self
                .next_fetch
                .filter(|_| self.enabled && self.in_flight.is_none());
            let retry_load = self.persist.retry_at();
            let wall_check = self.wall_check_at();
            let wanted_retry = self.wanted_retry_at();
            let event = tokio::select! {
                biased;
                () = self.token.cancelled() => Event::Cancelled,
                outcome = in_flight(&mut self.in_flight) => Event::Fetched(outcome),
                command = self.commands.recv() => Event::Command(command),
                done = self.persist.done() => Event::Store(done),
                () = sleep_until(due) => Event::Due,
                record = self.announcements.next() => Event::Announced(record),
                heard = self.streamer.next() => Event::Heard(heard),
                () = sleep_until(retry_load) => Event::RetryLoad,
                () = sleep_until(wall_check) => Event::WallCheck,
                () = sleep_until(wanted_retry) => Event::WantedRetry,
            };
            match event {
                Event::Cancelled | Event::Command(None) => break,
                Event::Fetched(outcome) => {
                    // Commands sent before this answer was seen come first: a disable among
                    // them discards it (it drops the fetch), refreshes queue for the next one.
                    self.drain_commands();
                    if self.in_flight.take().is_some() {
                        self.finish(outcome);
                    } else {
                        // Disabled and enabled again meanwhile: refreshes asked since then
                        // need a fetch of their own.
                        self.start_if_asked();
                    }
                }
                Event::Command(Some(command)) => {
                    self.apply(command);
                    self.drain_commands();
                    self.start_if_asked();
                }
                Event::Store(Done::Loaded(loaded)) => self.loaded(loaded),
                Event::Store(Done::Saved(saved, fetches)) => self.saved(saved, fetches),
                // Every path that plans a fetch ends here: none goes out inside the server's
                // `Retry-After`, whatever planned it (a schedule set before the window, say).
                Event::Due => match self.retry_window() {
                    Some((at, _)) => self.next_fetch = Some(at),
                    None => self.start_fetch(),
                },
                Event::Announced(record) => self.announced(&record),
                Event::Heard(heard) => self.heard(heard),
                Event::WantedRetry => self.retry_wanted(),
                Event::RetryLoad => {
                    self.persist.load();
                }
                Event::WallCheck => self.check_wall_clock(),
            }
            if self.persist.save_due() {
                let record = self.record();
                self.persist.save(record, self.fetches);
            }
        }
        // The stream's connection is closed before the poller is reported stopped.
        std::mem::replace(&mut self.streamer, Streamer::none())
            .close()
            .await;
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
            Command::Save(reply) => self.persist.wait_for_save(reply),
        }
    }

    /// Takes what is already queued, so that a burst of refresh calls shares one fetch.
    fn drain_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
        }
    }

    /// Starts a fetch for the callers waiting on one. While the server's `Retry-After` runs
    /// they are told so at once: a refresh never overrides the server's request, nor waits it out.
    fn start_if_asked(&mut self) {
        if !self.enabled || self.in_flight.is_some() || self.waiting.is_empty() {
            return;
        }
        match self.retry_window() {
            Some((_, until)) => {
                for reply in self.waiting.drain(..) {
                    let _ = reply.send(Err(Error::RetryAfter { until }));
                }
            }
            None => self.start_fetch(),
        }
    }

    /// When the server's `Retry-After` ends (tokio time, and the wall-clock time callers are
    /// told), while it runs.
    fn retry_window(&self) -> Option<(Instant, SystemTime)> {
        self.not_before.filter(|(at, _)| *at > Instant::now())
    }

    fn set_enabled(&mut self, enabled: bool) {
        if enabled == self.enabled {
            return;
        }
        self.enabled = enabled;
        if !enabled {
            // Dropping the future aborts the request: privacy means no request finishes later.
            self.in_flight = None;
            // Privacy: nothing more is read about this profile, from Redis either, and no
            // connection stays open.
            self.announcements = Announcements::none();
            self.streamer = Streamer::none();
            self.wanted = None;
            self.resume = None;
            self.answer_callers(&Error::Disabled);
            self.next_fetch = None;
            self.fresh_after_save = None;
            self.shared.update(|layers| layers.remote = None);
            self.set_status(Status::Disabled);
            tracing::info!("remote flags disabled; serving defaults only");
            return;
        }
        tracing::info!("remote flags enabled");
        self.follow();
        self.backoff.reset();
        self.stale_since = None;
        if self.starting {
            // The end of the first load serves what it finds.
            self.set_status(Status::initializing());
        } else {
            self.serve_remote(false);
        }
    }

    fn start_fetch(&mut self) {
        self.next_fetch = None;
        self.resume = None;
        let etag = self.remote.as_ref().and_then(|r| r.etag.as_deref());
        // Only the poller changes the remote layer (overrides keep the source), so the source
        // served now is what a failure leaves served.
        let served = self.shared.load().source();
        let stream = self.config.stream.then(|| self.shared.stream_state());
        let request = fetch(
            &self.config,
            &self.url,
            &self.transport,
            etag,
            served,
            stream,
        );
        let held = Held {
            cache_timestamp: self.remote.as_ref().map_or(0, |r| r.cache_timestamp),
            etag: etag.map(str::to_owned),
            flags: self.remote.as_ref().map(|r| Arc::clone(&r.flags)),
        };
        // Callers waiting, or a tag heard: a record older than the call (or the tag) cannot
        // answer them.
        let for_tag = self.asking_for_wanted();
        let force = for_tag || !self.waiting.is_empty();
        self.in_flight = Some(self.fleet.fetch(held, force, request));
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
        self.shared.set_status(status);
    }

    /// How old a timestamp is by the wall clock; one from the future counts as brand new.
    fn age(&self, cache_timestamp: u64) -> Duration {
        let now = self.config.wall_clock.now_ms();
        Duration::from_millis(now.saturating_sub(cache_timestamp))
    }

    /// Answers every caller waiting on a fetch, now or next, with `error`.
    fn answer_callers(&mut self, error: &Error) {
        for reply in self.waiting.drain(..).chain(self.queued.drain(..)) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn stop(&mut self) {
        self.in_flight = None;
        self.streamer = Streamer::none();
        self.fleet.stop();
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Refresh(reply) => self.waiting.push(reply),
                Command::SetEnabled(_, ack) => drop(ack),
                Command::Save(reply) => self.persist.wait_for_save(reply),
            }
        }
        // A save wanted and not started is handed to the blocking pool (it runs unless the
        // runtime is shutting down too); nobody waits for it.
        let record = self.persist.wants_final_save().then(|| self.record());
        self.persist.stop(record);
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

/// How often the wall clock is read while flags wait for their refresh.
fn wall_check_period(config: &Config) -> Duration {
    (config.fetch_interval / 10).min(Duration::from_secs(60))
}

/// `delay` from now, saturating far in the future instead of overflowing.
fn after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
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
