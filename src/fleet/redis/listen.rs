//! Following the change channel: every record announced is read and handed to the poller, so
//! one fetch anywhere in the fleet updates every process at once.

use std::sync::Arc;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::TimedOut;
use super::Tier;
use crate::error::Error;

/// How often an idle subscription is checked.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Subscribes, reads the record once (to catch up on what was announced while away), then reads
/// it again on every announcement. When the subscription breaks it waits out the link's backoff
/// and subscribes again; it ends with `token` (remote flags disabled, or the handle stopped).
pub(super) async fn run(tier: Arc<Tier>, token: CancellationToken) {
    tokio::select! {
        () = token.cancelled() => {}
        () = follow(&tier) => {}
    }
}

async fn follow(tier: &Tier) {
    loop {
        let wait = tier.link.retry_in();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match subscribe(tier).await {
            Ok(pubsub) => {
                tier.link.up();
                let read = catch_up(tier, None).await;
                let error = relay_announcements(tier, pubsub, !read).await;
                tier.link.down(error);
            }
            Err(error) => {
                tier.link.down(error);
            }
        }
    }
}

/// Reads the record on each announcement until the subscription breaks. An idle subscription is
/// pinged: a connection that a NAT or a frozen server dropped without closing would otherwise
/// wait for messages forever while the process believes it follows the fleet.
async fn relay_announcements(tier: &Tier, pubsub: redis::aio::PubSub, mut unread: bool) -> Error {
    let (mut sink, mut messages) = pubsub.split();
    let timeout = tier.link.timeout();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    // `unread`: a record that could not be read (a command timed out, say) is read again when
    // the link lets us, rather than the change being lost until the next fetch.
    loop {
        let retry = tier.link.retry_in();
        tokio::select! {
            message = messages.next() => match message {
                // The payload is the record's timestamp: a record already held is not read again.
                Some(message) => unread = !catch_up(tier, message.get_payload::<u64>().ok()).await,
                None => return Error::shared(Closed),
            },
            () = tokio::time::sleep(retry), if unread => unread = !catch_up(tier, None).await,
            _ = ping.tick() => match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Error::shared(error),
                Err(_) => return Error::shared(TimedOut(timeout)),
            },
        }
    }
}

async fn subscribe(tier: &Tier) -> Result<redis::aio::PubSub, Error> {
    let timeout = tier.link.timeout();
    let subscribe = async {
        let mut pubsub = tier.link.client().get_async_pubsub().await?;
        pubsub.subscribe(&tier.channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(timeout, subscribe).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(error)) => Err(Error::shared(error)),
        Err(_) => Err(Error::shared(TimedOut(timeout))),
    }
}

/// Reads the record and keeps it if it is not the last one kept. `announced`: the timestamp the
/// writer announced, when known; the record is not read when it is the one already kept.
/// False when the record could not be read.
async fn catch_up(tier: &Tier, announced: Option<u64>) -> bool {
    if announced.is_some() && announced == tier.latest_timestamp() {
        return true;
    }
    match tier.read().await {
        Ok(Some(record)) => tier.announce(record),
        Ok(None) => {}
        Err(_) => return false,
    }
    true
}

/// The subscription ended: Redis closed the connection or went away.
#[derive(Debug, thiserror::Error)]
#[error("the change subscription was closed")]
struct Closed;
