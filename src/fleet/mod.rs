//! Shared mode: the processes of a fleet coordinate through a shared store so that one of them
//! fetches per interval and the others adopt its result. Without the `redis` feature, or without
//! a shared store, every call here is inert and a handle works alone.

#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::sync::Arc;

use crate::fetch::Outcome;
use crate::parse::RawFlags;
use crate::store::CacheRecord;
use crate::transport::BoxFuture;

/// How a handle's shared store is doing, from
/// [`RedisStore::state`](crate::RedisStore::state).
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SharedState {
    /// Nothing has been asked of the store yet.
    Connecting,
    /// The store answers: the handle coordinates with the fleet.
    Joined,
    /// The store failed or did not answer: the handle keeps its flags, fetches on its own
    /// schedule, and tries the store again at `next_retry`.
    Down {
        /// When the failures began.
        since: std::time::Instant,
        /// The most recent failure.
        last_error: crate::error::Error,
        /// When the handle tries the store again.
        next_retry: std::time::Instant,
    },
}

#[cfg(feature = "redis")]
impl SharedState {
    /// `connecting`, `joined` or `down`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SharedState::Connecting => "connecting",
            SharedState::Joined => "joined",
            SharedState::Down { .. } => "down",
        }
    }
}

/// The remote flags a handle holds when it asks the fleet: a record must be newer to be adopted,
/// and a 304 is written back with these flags.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Held {
    pub(crate) cache_timestamp: u64,
    pub(crate) etag: Option<String>,
    pub(crate) flags: Option<Arc<RawFlags>>,
}

/// A handle's way to the shared store, if it has one.
#[derive(Clone, Default)]
pub(crate) struct Fleet {
    #[cfg(feature = "redis")]
    tier: Option<Arc<redis::Tier>>,
}

/// The latest record announced in the fleet, as the poller follows it.
pub(crate) struct Announcements {
    #[cfg(feature = "redis")]
    latest: Option<tokio::sync::watch::Receiver<Option<Arc<CacheRecord>>>>,
    /// Ends the subscription.
    #[cfg(feature = "redis")]
    listener: Option<tokio_util::sync::CancellationToken>,
}

impl Fleet {
    #[cfg(feature = "redis")]
    pub(crate) fn redis(tier: redis::Tier) -> Self {
        Fleet {
            tier: Some(Arc::new(tier)),
        }
    }

    /// Whether a shared store coordinates this handle's fetches.
    pub(crate) fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.tier.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Starts following the fleet's announcements (on the current runtime).
    pub(crate) fn listen(&self) -> Announcements {
        #[cfg(feature = "redis")]
        return match &self.tier {
            Some(tier) => Announcements {
                listener: Some(tier.listen()),
                latest: Some(tier.latest()),
            },
            None => Announcements::none(),
        };
        #[cfg(not(feature = "redis"))]
        Announcements {}
    }

    pub(crate) fn stop(&self) {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            tier.stop();
        }
    }

    /// The fetch of a due handle: through the fleet when there is a shared store, else
    /// `request` itself.
    pub(crate) fn fetch(
        &self,
        held: Held,
        force: bool,
        request: BoxFuture<'static, Outcome>,
    ) -> BoxFuture<'static, Outcome> {
        #[cfg(feature = "redis")]
        if let Some(tier) = &self.tier {
            return redis::coordinate(Arc::clone(tier), held, force, request);
        }
        let _ = (held, force);
        request
    }
}

impl Announcements {
    /// Not following anything: remote flags are off, so no record is read, even from Redis.
    pub(crate) fn none() -> Self {
        Announcements {
            #[cfg(feature = "redis")]
            latest: None,
            #[cfg(feature = "redis")]
            listener: None,
        }
    }

    /// The latest record announced, seen or not (none without a shared store).
    pub(crate) fn latest(&self) -> Option<Arc<CacheRecord>> {
        #[cfg(feature = "redis")]
        if let Some(latest) = &self.latest {
            return latest.borrow().clone();
        }
        None
    }

    /// The next record announced; never, without a shared store.
    pub(crate) async fn next(&mut self) -> Arc<CacheRecord> {
        #[cfg(feature = "redis")]
        if let Some(latest) = &mut self.latest {
            while latest.changed().await.is_ok() {
                if let Some(record) = latest.borrow_and_update().clone() {
                    return record;
                }
            }
        }
        std::future::pending().await
    }
}

impl Drop for Announcements {
    fn drop(&mut self) {
        #[cfg(feature = "redis")]
        if let Some(listener) = &self.listener {
            listener.cancel();
        }
    }
}
