//! The provider's events: open-feature 0.3 has no event API, so [`ProviderEvents`] gives them
//! itself, driven by the status and snapshot channels.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use open_feature::provider::ProviderStatus;

use tokio::sync::watch;

use super::provider_status;
use crate::client::Flags;
use crate::snapshot::Snapshot;
use crate::status::Status;

/// An OpenFeature provider event, from [`ProviderEvents::recv`]; see
/// [`FlagpoleProvider::events`](super::FlagpoleProvider::events) for an example.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// `PROVIDER_READY`: flags are current (a fetch succeeded, a fresh cache was loaded, or
    /// remote flags are switched off and defaults are all there is).
    Ready,
    /// `PROVIDER_ERROR`: fetches fail and no remote flags were ever served; defaults only.
    Error {
        /// The last fetch error.
        message: Option<String>,
    },
    /// `PROVIDER_STALE`: remote flags are served but may be out of date (fetches fail, a stale
    /// cache is served while the first fetch runs, or the poller stopped).
    Stale {
        /// The last fetch error, or why the flags will not be updated again.
        message: Option<String>,
    },
    /// `PROVIDER_CONFIGURATION_CHANGED`: the served flags changed.
    ConfigurationChanged {
        /// The names whose value changed, appeared or disappeared, sorted.
        flags_changed: Vec<String>,
    },
}

/// A stream of [`ProviderEvent`]s, from [`FlagpoleProvider::events`](super::FlagpoleProvider::events) (see its example).
pub struct ProviderEvents {
    status: watch::Receiver<Status>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    last: Arc<Snapshot>,
    state: ProviderStatus,
    started: bool,
    done: bool,
    pending: VecDeque<ProviderEvent>,
}

impl ProviderEvents {
    pub(super) fn new(flags: &Flags) -> Self {
        let snapshots = flags.subscribe();
        let last = Arc::clone(&snapshots.borrow());
        ProviderEvents {
            status: flags.status_receiver(),
            snapshots,
            last,
            state: ProviderStatus::NotReady,
            started: false,
            done: false,
            pending: VecDeque::new(),
        }
    }
}

impl fmt::Debug for ProviderEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderEvents")
            .field("state", &self.state)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ProviderEvents {
    /// The next event; `None` once the poller has stopped (after a `Stale` event, unless the
    /// provider was stale already) or every handle is gone.
    ///
    /// # Cancellation safety
    /// Cancel-safe: an event is never lost by dropping the future.
    pub async fn recv(&mut self) -> Option<ProviderEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            if !self.started {
                self.started = true;
            } else {
                let closed = tokio::select! {
                    changed = self.snapshots.changed() => changed.is_err(),
                    changed = self.status.changed() => changed.is_err(),
                };
                if closed {
                    self.done = true;
                    continue;
                }
            }
            self.observe();
        }
    }

    // Flags first, then the status: the poller publishes in that order.
    fn observe(&mut self) {
        let snapshot = Arc::clone(&self.snapshots.borrow_and_update());
        if !Arc::ptr_eq(&snapshot, &self.last) {
            let flags_changed = changed_names(&self.last, &snapshot);
            self.last = snapshot;
            if !flags_changed.is_empty() {
                self.pending
                    .push_back(ProviderEvent::ConfigurationChanged { flags_changed });
            }
        }
        let status = self.status.borrow_and_update().clone();
        let state = provider_status(&status, self.last.source());
        if state != self.state {
            let message = match &status {
                Status::Stopped => Some(crate::Error::Stopped.to_string()),
                other => other.last_error().map(ToString::to_string),
            };
            match state {
                ProviderStatus::Ready => self.pending.push_back(ProviderEvent::Ready),
                ProviderStatus::Error => self.pending.push_back(ProviderEvent::Error { message }),
                ProviderStatus::STALE => self.pending.push_back(ProviderEvent::Stale { message }),
                ProviderStatus::NotReady => {}
            }
            self.state = state;
        }
        if status.is_stopped() {
            self.done = true;
        }
    }
}

fn changed_names(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = new
        .iter()
        .filter(|(name, value)| old.get_ref(name) != Some(*value))
        .map(|(name, _)| name.to_owned())
        .chain(
            old.iter()
                .filter(|(name, _)| !new.contains(name))
                .map(|(name, _)| name.to_owned()),
        )
        .collect();
    names.sort_unstable();
    names
}
