//! What a handle does when its flags are due in shared mode: adopt a newer record, or take the
//! lease and fetch for the fleet, or wait for the handle that holds it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Tier;
use crate::fetch::Outcome;
use crate::fleet::Held;
use crate::transport::BoxFuture;

/// Rounds of "read, try the lease, wait for the holder" before a handle fetches on its own: a
/// holder that dies costs one lease, and a fleet never waits forever on a lease that keeps
/// changing hands without a record.
const ROUNDS: usize = 3;

/// How often a handle waiting on another's fetch looks at the lease.
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// The fetch of a due handle, through the fleet. `request` is the handle's own fetch; it is sent
/// only when this handle takes the lease and the record is still not usable, or when Redis fails
/// (then the handle fetches alone, as without a shared store). `force`: a caller asked for a
/// refresh, so only a record written since is good enough.
pub(crate) fn coordinate(
    tier: Arc<Tier>,
    held: Held,
    force: bool,
    request: BoxFuture<'static, Outcome>,
) -> BoxFuture<'static, Outcome> {
    Box::pin(async move {
        let asked = tier.now_ms();
        let mut changes = tier.latest();
        'rounds: for _ in 0..ROUNDS {
            if tier.link.in_backoff().is_some() {
                break 'rounds;
            }
            match tier.read().await {
                Err(_) => break 'rounds,
                Ok(Some(record)) if usable(&tier, &record, &held, force, asked) => {
                    tracing::debug!("adopting flags another process fetched");
                    return Outcome::Adopted(Arc::new(record));
                }
                Ok(_) => {}
            }
            changes.mark_unchanged();
            match tier.try_lease().await {
                Err(_) => break 'rounds,
                Ok(true) => {
                    // The holder before may have written its record and given the lease back
                    // between this handle's read and its lease: read again before fetching.
                    let written = tier.read().await.ok().flatten();
                    match written {
                        Some(record) if usable(&tier, &record, &held, force, asked) => {
                            tier.release().await;
                            tracing::debug!("adopting flags another process fetched");
                            return Outcome::Adopted(Arc::new(record));
                        }
                        // The record this fetch replaces: the new one must be stamped later.
                        other => {
                            let seen = other.map_or(0, |r| r.cache_timestamp);
                            let seen = seen.max(held.cache_timestamp);
                            return lead(Arc::clone(&tier), &held, seen, request).await;
                        }
                    }
                }
                Ok(false) => {
                    // Another process is fetching: wait for its announcement, looking at the
                    // lease every second in case it gave up (a failed fetch gives the lease
                    // back) or died (the lease expires).
                    let deadline = Instant::now() + tier.lease_for;
                    loop {
                        let slice = match tier.lease_left().await {
                            Ok(Some(left)) => left.min(WAIT_SLICE),
                            Ok(None) => break,
                            Err(_) => break 'rounds,
                        };
                        let slice = slice + Duration::from_millis(10);
                        let announced = tokio::time::timeout(slice, changes.changed()).await;
                        if announced.is_ok() || Instant::now() >= deadline {
                            break;
                        }
                    }
                }
            }
        }
        request.await
    })
}

/// A record this handle may adopt instead of fetching: newer than its own flags and, for a due
/// refresh, written within the interval; for a caller's refresh, written since the call.
fn usable(
    tier: &Tier,
    record: &crate::store::CacheRecord,
    held: &Held,
    force: bool,
    asked: u64,
) -> bool {
    if record.cache_timestamp <= held.cache_timestamp {
        return false;
    }
    if force {
        return record.cache_timestamp >= asked;
    }
    let age = tier.now_ms().saturating_sub(record.cache_timestamp);
    Duration::from_millis(age) < tier.interval
}

/// Fetches for the fleet: a 200 or a 304 is written and announced, then the lease is given back.
/// Whatever the outcome the lease is given back at once: the next handle due tries in turn (each
/// handle still makes at most one request per attempt, as without Redis), and a one-shot
/// process such as `flagpole get` does not wait out a lease for nothing.
///
/// The record is stamped after `seen` (the latest stamp this handle knows), even within the same
/// millisecond, and the handle keeps that very stamp: "newer" between records is then exact, and
/// no handle takes a record as old because its own clock read a moment later.
async fn lead(
    tier: Arc<Tier>,
    held: &Held,
    seen: u64,
    request: BoxFuture<'static, Outcome>,
) -> Outcome {
    // Dropped mid-fetch (remote flags disabled, the handle stopped): the lease goes back at
    // once rather than keeping the fleet waiting for its expiry.
    let mut guard = LeaseGuard(Some(Arc::clone(&tier)));
    let mut outcome = request.await;
    guard.0 = None;
    let now = tier.now_ms().max(seen.saturating_add(1));
    let written = match &outcome {
        Outcome::Fetched { flags, etag, .. } => tier.write(now, etag.as_deref(), flags).await,
        Outcome::NotModified { etag, .. } => match &held.flags {
            Some(flags) => {
                let etag = etag.as_deref().or(held.etag.as_deref());
                tier.write(now, etag, flags).await
            }
            None => false,
        },
        Outcome::Failed { .. } | Outcome::Adopted(_) => false,
    };
    if written {
        if let Outcome::Fetched { stamped, .. } | Outcome::NotModified { stamped, .. } =
            &mut outcome
        {
            *stamped = Some(now);
        }
    } else {
        tracing::debug!("nothing written to the shared store; giving the lease back");
    }
    tier.release().await;
    outcome
}

/// Gives the lease back when the fetch that holds it is dropped before it ends.
struct LeaseGuard(Option<Arc<Tier>>);

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(tier) = self.0.take() else { return };
        // Without a runtime (it is shutting down) the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { tier.release().await });
        }
    }
}
