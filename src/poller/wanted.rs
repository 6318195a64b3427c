//! Tags heard on the change stream that the flags held do not carry yet. Each is fetched at once
//! (coalesced with the fetch in flight), and again with backoff until a fetch brings it: a fetch
//! that fails, or that a lagging replica answers with older flags, must not leave the change to
//! the next poll (a day by default). A fetch that succeeds with another tag counts as a miss,
//! and after a few the tag is let go until the stream names one again, so that a server whose
//! stream names tags its flags never carry cannot make a handle fetch forever.

use std::time::Duration;

use tokio::time::Instant;

use super::{after, Poller};
use crate::backoff::Backoff;
use crate::stream::{differs, Heard};

/// Successful fetches answering with another tag after which the wanted one is let go.
const MAX_MISSES: u32 = 3;
/// The first retry's ceiling; it doubles up to the lesser of 5 minutes and the fetch interval.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The tag the flags held should catch up with.
pub(super) struct Wanted {
    heard: Heard,
    /// A fetch started since the tag was heard: its outcome says something about the tag.
    asked: bool,
    misses: u32,
    backoff: Backoff,
    /// The next try (after a failure or a miss, or when the server's `Retry-After` ends).
    retry_at: Option<Instant>,
}

impl Poller {
    /// A tag heard on the change stream: wanted when the flags held do not carry it.
    pub(super) fn heard(&mut self, heard: Heard) {
        if !self.enabled {
            return;
        }
        let cap = RETRY_CAP.min(self.config.fetch_interval);
        match &mut self.wanted {
            // The same tag again (a reconnection's first event): its retries go on as planned.
            Some(wanted) if wanted.heard == heard && heard.etag.is_some() => {}
            _ => {
                self.wanted = Some(Wanted {
                    heard,
                    asked: false,
                    misses: 0,
                    backoff: Backoff::new(RETRY_INITIAL, cap),
                    retry_at: None,
                });
            }
        }
        self.fetch_wanted();
    }

    /// Starts the fetch for the wanted tag unless the flags carry it already, a fetch runs (its
    /// end looks again), the store still loads, or a retry is planned for later.
    pub(super) fn fetch_wanted(&mut self) {
        let held = self.remote.as_ref().and_then(|r| r.etag.as_deref());
        let Some(wanted) = &mut self.wanted else {
            return;
        };
        if !differs(&wanted.heard, held) {
            self.wanted = None;
            return;
        }
        let now = Instant::now();
        if !self.enabled
            || self.in_flight.is_some()
            || self.starting
            || wanted.retry_at.is_some_and(|at| at > now)
        {
            return;
        }
        // The server's `Retry-After` holds for the stream's fetches too.
        if let Some((at, _)) = self.not_before.filter(|(at, _)| *at > now) {
            wanted.retry_at = Some(at);
            return;
        }
        wanted.retry_at = None;
        tracing::debug!(stream = %self.shared.stream_state(), "the change stream announced new flags; fetching");
        // The poll due next keeps its time: the stream's fetch is one more, not one of the
        // schedule's (a fleet hears a change together, and would poll together from then on).
        let poll = self.next_fetch;
        self.start_fetch();
        self.resume = poll;
    }

    /// A fetch ended (`ok`: it brought flags, or said they had not changed): the wanted tag is
    /// caught up with, tried again later, or let go.
    pub(super) fn after_fetch_for_wanted(&mut self, ok: bool) {
        let held = self.remote.as_ref().and_then(|r| r.etag.as_deref());
        let Some(wanted) = &mut self.wanted else {
            return;
        };
        let caught_up = !differs(&wanted.heard, held);
        // An untagged event asks for one fetch after it, whatever that brings.
        if caught_up || (ok && wanted.asked && wanted.heard.etag.is_none()) {
            self.wanted = None;
            return;
        }
        if !wanted.asked {
            // This fetch began before the tag was heard: the next one is for the tag.
            self.fetch_wanted();
            return;
        }
        if ok {
            wanted.misses += 1;
            if wanted.misses >= MAX_MISSES {
                tracing::debug!(
                    misses = wanted.misses,
                    "the flags never carried the tag the change stream named; waiting for its next event"
                );
                self.wanted = None;
                return;
            }
        }
        wanted.asked = false;
        let delay = wanted.backoff.next().unwrap_or(RETRY_CAP);
        wanted.retry_at = Some(after(delay));
    }

    /// When to try the wanted tag again, while nothing else stands in the way.
    pub(super) fn wanted_retry_at(&self) -> Option<Instant> {
        let wanted = self.wanted.as_ref()?;
        let free = self.enabled && self.in_flight.is_none() && !self.starting;
        wanted.retry_at.filter(|_| free)
    }

    /// The retry time came: fetch now (or when the server's `Retry-After` ends).
    pub(super) fn retry_wanted(&mut self) {
        if let Some(wanted) = &mut self.wanted {
            wanted.retry_at = None;
        }
        self.fetch_wanted();
    }

    /// A fetch starts: it answers the wanted tag (and in shared mode needs a record at least as
    /// new as the tag).
    pub(super) fn asking_for_wanted(&mut self) -> bool {
        match &mut self.wanted {
            Some(wanted) => {
                wanted.asked = true;
                wanted.retry_at = None;
                true
            }
            None => false,
        }
    }
}
