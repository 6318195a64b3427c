//! Following the change channel: every record announced is read and handed to the poller, so
//! one fetch anywhere in the fleet updates every process at once.

use std::sync::Arc;

use futures_util::StreamExt;

use super::link::TimedOut;
use super::Tier;
use crate::error::Error;

/// Subscribes, reads the record once (to catch up on what was announced while away), then reads
/// it again on every announcement. When the subscription breaks it waits out the link's backoff
/// and subscribes again; it ends with the handle.
pub(super) async fn run(tier: Arc<Tier>) {
    let token = tier.token.clone();
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
            Ok(mut pubsub) => {
                tier.link.up();
                catch_up(tier).await;
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    catch_up(tier).await;
                }
                drop(messages);
                tier.link.down(Error::shared(Closed));
            }
            Err(error) => {
                tier.link.down(error);
            }
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

/// Reads the record and keeps it if it is newer than the last one kept.
async fn catch_up(tier: &Tier) {
    if let Ok(Some(record)) = tier.read().await {
        tier.announce(record);
    }
}

/// The subscription ended: Redis closed the connection or went away.
#[derive(Debug, thiserror::Error)]
#[error("the change subscription was closed")]
struct Closed;
