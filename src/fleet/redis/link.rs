//! The command connection to Redis, with a timeout on every command and a backoff between
//! reconnections, and the health it reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::fleet::SharedState;

/// The backoff bounds of the attempts to reach Redis again; a short fetch interval shortens
/// them too (to half of it), so that a fleet rejoins within an interval of Redis coming back.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);

pub(super) struct Link {
    client: Client,
    timeout: Duration,
    /// Shared by the commands of this handle (the connection multiplexes); dropped on an error
    /// so that the next command connects again.
    conn: Mutex<Option<MultiplexedConnection>>,
    health: Mutex<Health>,
    /// The store's health cell, shared with every clone of the `RedisStore`.
    state: Arc<watch::Sender<SharedState>>,
}

struct Health {
    backoff: Backoff,
    /// No attempt to reach Redis before this, while it is down.
    retry_at: Option<Instant>,
    since: Option<std::time::Instant>,
}

impl Link {
    pub(super) fn new(
        client: Client,
        timeout: Duration,
        interval: Duration,
        state: Arc<watch::Sender<SharedState>>,
    ) -> Self {
        let cap = (interval / 2).clamp(Duration::from_millis(100), RETRY_CAP);
        Link {
            client,
            timeout,
            conn: Mutex::new(None),
            health: Mutex::new(Health {
                backoff: Backoff::new(RETRY_INITIAL.min(cap), cap),
                retry_at: None,
                since: None,
            }),
            state,
        }
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// While Redis is down and its retry time has not come: the error to report, at once.
    pub(super) fn in_backoff(&self) -> Option<Error> {
        let health = lock(&self.health);
        let waiting = health.retry_at.is_some_and(|at| at > Instant::now());
        drop(health);
        if !waiting {
            return None;
        }
        match &*self.state.borrow() {
            SharedState::Down { last_error, .. } => Some(last_error.clone()),
            _ => None,
        }
    }

    /// Runs one command with the timeout. Any failure (refused, reset, slow, out of memory)
    /// counts as Redis being down: the handle works alone until the backoff lets it try again.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => {
                self.up();
                Ok(value)
            }
            Ok(Err(error)) => Err(self.down(Error::shared(error))),
            Err(_) => Err(self.down(Error::shared(TimedOut(self.timeout)))),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, Error> {
        if let Some(conn) = lock(&self.conn).clone() {
            return Ok(conn);
        }
        if let Some(error) = self.in_backoff() {
            return Err(error);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(conn)) => {
                *lock(&self.conn) = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(error)) => Err(self.down(Error::shared(error))),
            Err(_) => Err(self.down(Error::shared(TimedOut(self.timeout)))),
        }
    }

    /// Redis answered: a handle that worked alone rejoins the fleet.
    pub(super) fn up(&self) {
        let mut health = lock(&self.health);
        health.backoff.reset();
        health.retry_at = None;
        let was_down = health.since.take().is_some();
        drop(health);
        if was_down {
            tracing::info!("shared flag store reachable again; coordinating with the fleet");
        }
        self.state.send_if_modified(|state| {
            let changed = !matches!(state, SharedState::Joined);
            *state = SharedState::Joined;
            changed
        });
    }

    /// Redis failed: logged once per outage, then the handle works alone until `retry_at`.
    pub(super) fn down(&self, error: Error) -> Error {
        *lock(&self.conn) = None;
        let mut health = lock(&self.health);
        let delay = health.backoff.next().unwrap_or(RETRY_INITIAL);
        let retry_at = Instant::now() + delay;
        health.retry_at = Some(retry_at);
        let first = health.since.is_none();
        let since = *health.since.get_or_insert_with(std::time::Instant::now);
        drop(health);
        if first {
            tracing::warn!(%error, "shared flag store unreachable; fetching on this process's own schedule until it answers");
        } else {
            tracing::debug!(%error, "shared flag store still unreachable");
        }
        self.state.send_replace(SharedState::Down {
            since,
            last_error: error.clone(),
            next_retry: retry_at.into_std(),
        });
        error
    }

    /// How long to wait before trying Redis again (zero when it is up).
    pub(super) fn retry_in(&self) -> Duration {
        lock(&self.health).retry_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        })
    }
}

/// A command or connection attempt that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
pub(super) struct TimedOut(pub(super) Duration);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded state is always consistent between statements: a panic elsewhere cannot
    // leave it half-written, so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
