//! What the store holds: loading it at start (and again after a failed load), taking its
//! record, serving the remote flags it brought, and the record a save writes.

use std::sync::Arc;

use tokio::time::Instant;

use super::{schedule, Poller, RemoteState};
use crate::error::Error;
use crate::parse::RawFlags;
use crate::rollout;
use crate::snapshot::Source;
use crate::status::Status;
use crate::store::CacheRecord;

impl Poller {
    /// A load ended. The first one (or none, without a store) starts the poller proper, whatever
    /// it brought: a failed load is retried in the background while the poller fetches.
    pub(super) fn loaded(&mut self, loaded: Result<Option<CacheRecord>, Error>) {
        let adopted = match loaded {
            Ok(record) => {
                if self.persist.load_failures() > 0 {
                    tracing::info!("flag cache loaded after failed attempts");
                }
                self.persist.load_succeeded();
                match record {
                    Some(record) => self.adopt(record),
                    None => {
                        self.restore_overrides(RawFlags::new());
                        false
                    }
                }
            }
            Err(error) => {
                // Once per failure streak: the retries may go on for a long time.
                if self.persist.load_failures() == 0 {
                    tracing::warn!(%error, "could not load the flag cache; retrying, and not saving over it until a load succeeds");
                } else {
                    tracing::debug!(%error, "could not load the flag cache again");
                }
                self.persist.load_failed(&error);
                false
            }
        };
        if std::mem::take(&mut self.starting) {
            self.started();
            // A tag heard while the store loaded: a fresh cache may not hold it.
            self.fetch_wanted();
        } else if adopted && self.enabled {
            self.publish_remote();
        }
    }

    pub(super) fn started(&mut self) {
        if !self.enabled {
            self.set_status(Status::Disabled);
            return;
        }
        // A refresh asked while the store loaded may have fetched already.
        if self
            .remote
            .as_ref()
            .is_some_and(|r| matches!(r.source, Source::Network | Source::Shared))
        {
            return;
        }
        self.serve_remote(true);
    }

    /// Serves the persisted overrides, under any change made while they loaded.
    pub(super) fn restore_overrides(&self, persisted: RawFlags) {
        let restored = !persisted.is_empty();
        self.shared
            .update(move |layers| layers.restore_overrides(persisted));
        if restored {
            tracing::debug!("restored local flag overrides");
        }
    }

    /// Serves the last remote flags, if any. Fresh ones need no request until they expire (at a
    /// start: until a point drawn over their remaining life); otherwise a fetch starts at once (or
    /// when the server's `Retry-After` ends).
    pub(super) fn serve_remote(&mut self, start: bool) {
        let fresh_for = self.remote.as_ref().and_then(|r| {
            self.config
                .fetch_interval
                .checked_sub(self.age(r.cache_timestamp))
                .filter(|d| !d.is_zero())
        });
        // Flags first, then the status: whoever sees "fresh" must read these flags.
        if self.remote.is_some() {
            self.publish_remote();
        }
        match fresh_for {
            // At a start the first fetch comes at the expiry, or earlier at a point drawn as the
            // steady state of a fleet would put it: a fleet restarted with caches saved together
            // (a redeploy) spreads over the interval instead of refreshing in one burst at their
            // expiry. Enabled again, the schedule is the expiry, as before the disable.
            Some(remaining) => {
                // Fresh flags end any failure streak (a refresh may have failed while the store
                // loaded): the suspend check and the next `Stale { since }` start over.
                self.stale_since = None;
                self.rejection_logged = false;
                self.set_status(Status::fresh());
                let (interval, jitter) = (self.config.fetch_interval, self.config.schedule_jitter);
                let (u, v) = (fastrand::f64(), fastrand::f64());
                self.schedule(if start {
                    schedule::after_fresh_cache(remaining, interval, jitter, u, v)
                } else {
                    remaining
                });
            }
            None => {
                self.set_status(Status::initializing());
                // At once, or when the server's `Retry-After` ends (`Event::Due` waits it out).
                self.next_fetch = Some(Instant::now());
            }
        }
    }

    /// Takes a loaded record: its overrides always, its flags when they were saved for this
    /// request and are newer than any held. True when the flags were taken.
    pub(super) fn adopt(&mut self, record: CacheRecord) -> bool {
        if record.version != CacheRecord::VERSION {
            tracing::warn!(
                version = record.version,
                "ignoring a flag cache of another format version; the next save replaces it"
            );
            self.restore_overrides(RawFlags::new());
            return false;
        }
        self.restore_overrides(record.overrides);
        if record.key != self.key {
            tracing::info!("ignoring a flag cache saved for other request parameters or ids");
            return false;
        }
        let newer = self
            .remote
            .as_ref()
            .is_none_or(|r| r.cache_timestamp < record.cache_timestamp);
        if record.cache_timestamp == 0 || !newer {
            return false;
        }
        tracing::debug!(flags = record.flags.len(), "loaded flag cache");
        self.remote = Some(self.remote_state(
            record.flags,
            Source::Cache,
            record.cache_timestamp,
            record.etag,
        ));
        true
    }

    /// Processing happens here, once per new set of remote flags, never on a read.
    pub(super) fn remote_state(
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

    /// The last remote flags and the overrides held now, as the store keeps them (no fetch yet:
    /// timestamp 0).
    pub(super) fn record(&self) -> CacheRecord {
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
        record
    }
}
