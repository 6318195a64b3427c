//! What a fetch's outcome does: publish, schedule, back off, report; and the wall-clock check
//! that catches flags that expired while the machine slept.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{after, schedule, wall_check_period, Poller};
use crate::error::Error;
use crate::fetch::Outcome;
use crate::snapshot::{Snapshot, Source};
use crate::status::Status;
use crate::store::CacheRecord;

impl Poller {
    pub(super) fn finish(&mut self, outcome: Outcome) {
        // A request of this handle's own, counted by how it ended (an adopted record is none).
        match &outcome {
            Outcome::Fetched { .. } | Outcome::NotModified { .. } => self.shared.count_fetch(false),
            Outcome::Failed { .. } => self.shared.count_fetch(true),
            Outcome::Adopted(_) => {}
        }
        let result = match outcome {
            Outcome::Fetched {
                flags,
                etag,
                stamped,
            } => {
                tracing::debug!(flags = flags.len(), stream = %self.shared.stream_state(), "fetched flags");
                let now = stamped.unwrap_or_else(|| self.config.wall_clock.now_ms());
                let first = self.remote.is_none();
                self.remote = Some(self.remote_state(flags, Source::Network, now, etag));
                Ok(self.succeeded(first))
            }
            Outcome::NotModified { etag, stamped } => {
                tracing::debug!(stream = %self.shared.stream_state(), "flags not modified");
                let now = stamped.unwrap_or_else(|| self.config.wall_clock.now_ms());
                if let Some(remote) = &mut self.remote {
                    remote.source = Source::Network;
                    remote.cache_timestamp = now;
                    // The server may rotate its tag on a 304; the next request sends the new one.
                    if etag.is_some() {
                        remote.etag = etag;
                    }
                }
                Ok(self.succeeded(false))
            }
            Outcome::Failed { error, retry_after } => {
                self.failed(&error, retry_after);
                Err(error)
            }
            Outcome::Adopted(record) => Ok(self.adopt_shared(&record)),
        };
        for reply in std::mem::take(&mut self.waiting) {
            let _ = reply.send(result.clone());
        }
        self.resume = None;
        // A tag heard on the stream that this fetch did not bring: fetched next, or later.
        self.after_fetch_for_wanted(result.is_ok());
        // Callers who asked during this fetch share the next one.
        self.waiting = std::mem::take(&mut self.queued);
        self.start_if_asked();
        // An announcement that came while this fetch ran was set aside: a newer record counts.
        if let Some(record) = self.announcements.latest() {
            self.announced(&record);
        }
    }

    /// Publishes the new flags at once and asks for a save. "Fresh" waits for that save, so a
    /// caller who stops on seeing it never loses the record; the loop does not.
    ///
    /// `first`: these are the first remote flags this poller holds (it served defaults until
    /// now, as every client of a fleet started together without a cache does). The next refresh
    /// is then drawn from the fleet's steady state, anywhere in the interval; after any other
    /// success it comes in the last `schedule_jitter` part of the interval. In shared mode the
    /// lease spreads the fleet instead: every handle keeps the regular schedule, so the whole
    /// fleet comes due together and one of them fetches.
    ///
    /// A fetch for a tag heard on the change stream keeps the poll that was due next: every
    /// client of a fleet hears a change at the same moment, and scheduling from that moment
    /// would have the whole fleet poll within the same `schedule_jitter` part of the interval
    /// from then on (`examples/fleet --stream`, 10,000 clients: peak/mean 10.3 over the interval
    /// after a change, 7.5 through the outage that follows; 1.28 and 1.43 when the poll keeps its
    /// time, as without a stream).
    pub(super) fn succeeded(&mut self, first: bool) -> Arc<Snapshot> {
        let (interval, jitter) = (self.config.fetch_interval, self.config.schedule_jitter);
        let now = Instant::now();
        let delay = match self.resume.take().filter(|poll| *poll > now) {
            Some(poll) if !first => poll - now,
            _ if first && !self.fleet.is_shared() => {
                schedule::steady_wait(interval, jitter, fastrand::f64(), fastrand::f64())
            }
            _ => schedule::regular(interval, jitter, fastrand::f64()),
        };
        self.settled(delay)
    }

    /// Publishes the remote flags held, schedules the next refresh `delay` from now and asks for
    /// a save.
    fn settled(&mut self, delay: Duration) -> Arc<Snapshot> {
        self.backoff.reset();
        self.rejection_logged = false;
        self.stale_since = None;
        self.not_before = None;
        let snapshot = self.publish_remote();
        self.schedule(delay);
        self.fetches += 1;
        self.persist.mark_dirty();
        if self.persist.saves_soon() {
            self.fresh_after_save = Some(self.fetches);
        } else {
            self.set_status(Status::fresh());
        }
        snapshot
    }

    /// Takes a record another process fetched (shared mode) when it is newer than the flags
    /// held. The next refresh is due on the regular schedule counted from that fetch, as for the
    /// rest of the fleet.
    pub(super) fn adopt_shared(&mut self, record: &CacheRecord) -> Arc<Snapshot> {
        let newer = self
            .remote
            .as_ref()
            .is_none_or(|r| r.cache_timestamp < record.cache_timestamp);
        if newer {
            tracing::debug!(
                flags = record.flags.len(),
                "adopted flags from the shared store"
            );
            self.remote = Some(self.remote_state(
                record.flags.clone(),
                Source::Shared,
                record.cache_timestamp,
                record.etag.clone(),
            ));
        }
        let basis = self.remote.as_ref().map_or(0, |r| r.cache_timestamp);
        let (interval, jitter) = (self.config.fetch_interval, self.config.schedule_jitter);
        let delay =
            schedule::regular(interval, jitter, fastrand::f64()).saturating_sub(self.age(basis));
        if newer {
            self.settled(delay)
        } else {
            self.schedule(delay);
            self.shared.load_full()
        }
    }

    /// A record announced in the fleet: adopted when remote flags are on and it is newer than
    /// the flags held. A fetch in flight goes on (it may be this handle's own, for the fleet).
    pub(super) fn announced(&mut self, record: &CacheRecord) {
        let newer = self
            .remote
            .as_ref()
            .is_none_or(|r| r.cache_timestamp < record.cache_timestamp);
        if !self.enabled || !newer || self.in_flight.is_some() {
            return;
        }
        self.adopt_shared(record);
    }

    pub(super) fn saved(&mut self, saved: Result<(), Error>, fetches: u64) {
        if let Err(error) = saved {
            tracing::warn!(%error, "could not save the flag cache; flags stay in memory");
        }
        if self
            .fresh_after_save
            .is_some_and(|wanted| wanted <= fetches)
        {
            self.fresh_after_save = None;
            self.set_status(Status::fresh());
        }
    }

    /// The next automatic fetch, `delay` from now; none when polling is off.
    pub(super) fn schedule(&mut self, delay: Duration) -> Option<Instant> {
        self.next_fetch = self.config.polling.then(|| after(delay));
        self.next_fetch
    }

    pub(super) fn failed(&mut self, error: &Error, retry_after: Option<Duration>) {
        self.fresh_after_save = None;
        let mut delay = if error.is_permanent() {
            // Retrying a 4xx soon cannot help: go straight to the cap, and say so once.
            if !std::mem::replace(&mut self.rejection_logged, true) {
                tracing::error!(%error, "flag fetch rejected; retrying at the backoff cap");
            } else {
                tracing::debug!(%error, "flag fetch rejected again");
            }
            self.backoff.next_at_cap()
        } else {
            tracing::warn!(%error, attempt = self.backoff.attempt() + 1, stream = %self.shared.stream_state(), "flag fetch failed; serving the last good flags");
            self.backoff.next().unwrap_or(self.config.backoff_cap())
        };
        if self.remote.is_some() {
            // Good flags (network or cache) are served: retrying sooner than the regular schedule
            // would only multiply a failing API's load by the size of the fleet. The fast backoff
            // is for a client that has nothing but defaults.
            let (interval, jitter) = (self.config.fetch_interval, self.config.schedule_jitter);
            let now = Instant::now();
            // A failed fetch for a tag heard keeps the poll due too, as a successful one does.
            delay = match self.resume.take().filter(|poll| *poll > now) {
                Some(poll) => poll - now,
                None => schedule::regular(interval, jitter, fastrand::f64()),
            };
        }
        if let Some(wait) = retry_after {
            let wait = wait.min(self.config.fetch_interval);
            self.not_before = Some((after(wait), self.config.wall_clock.now() + wait));
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
            stream: crate::status::StreamState::Off,
        });
    }

    /// When to look at the wall clock next: while fresh flags wait for their scheduled refresh,
    /// which a suspended machine would put off.
    pub(super) fn wall_check_at(&self) -> Option<Instant> {
        let waiting = self.enabled
            && self.config.polling
            && !self.starting
            && self.in_flight.is_none()
            && self.stale_since.is_none()
            && self.remote.is_some();
        waiting.then_some(self.next_wall_check)
    }

    /// Fetches at once when the flags expired by the wall clock: tokio's timers stop while the
    /// machine sleeps, so after a suspend the scheduled refresh would come too late.
    pub(super) fn check_wall_clock(&mut self) {
        self.next_wall_check = after(wall_check_period(&self.config));
        let expired = self
            .remote
            .as_ref()
            .is_some_and(|r| self.age(r.cache_timestamp) >= self.config.fetch_interval);
        if expired && self.retry_window().is_none() {
            tracing::debug!("flags expired by the wall clock (the machine slept?); fetching now");
            self.start_fetch();
        }
    }
}
