//! What a handle does when its flags are due in shared mode: adopt a newer record, or take the
//! lease and fetch for the fleet, or wait for the handle that holds it.

use std::sync::Arc;
use std::time::Duration;

use super::Tier;
use crate::fetch::Outcome;
use crate::fleet::Held;
use crate::transport::BoxFuture;

/// Rounds of "read, try the lease, wait for the holder" before a handle fetches on its own: a
/// holder that dies costs one lease, and a fleet never waits forever on a lease that keeps
/// changing hands without a record.
const ROUNDS: usize = 3;

/// The fetch of a due handle, through the fleet. `request` is the handle's own fetch; it is sent
/// only when this handle takes the lease, or when Redis fails (then the handle fetches alone, as
/// without a shared store). `force`: a caller asked for a refresh, so only a record written since
/// is good enough.
pub(crate) fn coordinate(
    tier: Arc<Tier>,
    held: Held,
    force: bool,
    request: BoxFuture<'static, Outcome>,
) -> BoxFuture<'static, Outcome> {
    Box::pin(async move {
        let asked = tier.now_ms();
        let mut changes = tier.latest();
        for _ in 0..ROUNDS {
            if tier.link.in_backoff().is_some() {
                break;
            }
            match tier.read().await {
                Err(_) => break,
                Ok(Some(record)) if usable(&tier, &record, &held, force, asked) => {
                    tracing::debug!("adopting flags another process fetched");
                    return Outcome::Adopted(Arc::new(record));
                }
                Ok(_) => {}
            }
            changes.mark_unchanged();
            match tier.try_lease().await {
                Err(_) => break,
                Ok(true) => {
                    // A holder may have written its record and released the lease since this
                    // handle read: it writes before it releases, so a read now sees that record.
                    if let Ok(Some(record)) = tier.read().await {
                        if usable(&tier, &record, &held, force, asked) {
                            tier.release().await;
                            tracing::debug!("adopting flags another process fetched");
                            return Outcome::Adopted(Arc::new(record));
                        }
                    }
                    return lead(&tier, &held, request).await;
                }
                Ok(false) => {
                    // Another process is fetching: its announcement, or the end of its lease.
                    let left = match tier.lease_left().await {
                        Ok(left) => left.unwrap_or(Duration::ZERO),
                        Err(_) => break,
                    };
                    let wait = left.min(tier.lease_for) + Duration::from_millis(10);
                    let _ = tokio::time::timeout(wait, changes.changed()).await;
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
/// A failure leaves the lease to expire, so the fleet retries at most once per lease.
async fn lead(tier: &Tier, held: &Held, request: BoxFuture<'static, Outcome>) -> Outcome {
    let outcome = request.await;
    // Before the poller takes the outcome, which stamps it a moment later: the handle never
    // mistakes its own announcement for a newer record.
    let now = tier.now_ms();
    match &outcome {
        Outcome::Fetched { flags, etag } => tier.write(now, etag.as_deref(), flags).await,
        Outcome::NotModified { etag } => {
            if let Some(flags) = &held.flags {
                let etag = etag.as_deref().or(held.etag.as_deref());
                tier.write(now, etag, flags).await;
            }
        }
        Outcome::Failed { .. } | Outcome::Adopted(_) => {}
    }
    outcome
}
