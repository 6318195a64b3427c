//! One upstream handle per parameter set (client × distribution × environment), started on the
//! set's first request, and the view each one serves.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::view::View;
use crate::builder::FlagsBuilder;
use crate::client::Flags;
use crate::config::{Client, Distribution, Environment};
use crate::error::Error;
use crate::store::FileStore;
use crate::transport::Transport;

/// The parameters of one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) client: Client,
    pub(crate) distribution: Distribution,
    pub(crate) environment: Environment,
}

impl Params {
    /// `client-distribution-environment`: names the cache file and the health entry.
    pub(crate) fn name(self) -> String {
        format!("{}-{}-{}", self.client, self.distribution, self.environment)
    }

    /// The set's slot: each enum's discriminants run from 0 to its `NAMES.len()` (a `NAMES`
    /// entry per variant).
    fn index(self) -> usize {
        let (c, d, e) = (
            self.client as usize,
            self.distribution as usize,
            self.environment as usize,
        );
        (c * Distribution::NAMES.len() + d) * Environment::NAMES.len() + e
    }

    fn count() -> usize {
        Client::NAMES.len() * Distribution::NAMES.len() * Environment::NAMES.len()
    }
}

/// One parameter set: its upstream handle and the view it serves.
pub(crate) struct Set {
    pub(crate) params: Params,
    pub(crate) flags: Flags,
    view: ArcSwapOption<View>,
}

impl Set {
    /// What to serve now: rebuilt only when the handle published a new snapshot since.
    pub(crate) fn view(&self) -> Option<Arc<View>> {
        let snapshot = self.flags.snapshot();
        let current = self.view.load();
        if let Some(view) = current.as_ref() {
            if Arc::ptr_eq(&view.snapshot, &snapshot) {
                return Some(Arc::clone(view));
            }
        }
        let built = View::build(snapshot, current.as_deref()).map(Arc::new);
        // A concurrent rebuild of the same snapshot stores an equal view: either may win.
        self.view.store(built.clone());
        built
    }
}

/// Every parameter set the relay has served so far.
pub(crate) struct Sets {
    slots: Vec<OnceLock<Arc<Set>>>,
    starting: Mutex<()>,
    template: FlagsBuilder,
    /// The template's transport, which every set's counting transport wraps.
    transport: Arc<dyn Transport>,
    cache_dir: Option<PathBuf>,
    pub(crate) interval: Duration,
    pub(crate) defaults: Params,
}

impl Sets {
    /// # Errors
    /// [`Error::Config`] when the template's HTTP client cannot be built.
    pub(crate) fn new(
        template: FlagsBuilder,
        cache_dir: Option<PathBuf>,
        interval: Duration,
        defaults: Params,
    ) -> Result<Self, Error> {
        Ok(Sets {
            slots: (0..Params::count()).map(|_| OnceLock::new()).collect(),
            starting: Mutex::new(()),
            transport: template.transport_or_default()?,
            template,
            cache_dir,
            interval,
            defaults,
        })
    }

    /// The set's handle, started on first use (with its cache file, when the relay has a cache
    /// directory: a restarted relay serves at once, with no upstream request while it is fresh).
    pub(crate) fn get(&self, params: Params) -> Result<Arc<Set>, Error> {
        let slot = &self.slots[params.index()];
        if let Some(set) = slot.get() {
            return Ok(Arc::clone(set));
        }
        let _starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = slot.get() {
            return Ok(Arc::clone(set));
        }
        let mut builder = self
            .template
            .clone()
            .client(params.client)
            .distribution(params.distribution)
            .environment(params.environment)
            .shared_transport(Arc::clone(&self.transport));
        if let Some(dir) = &self.cache_dir {
            builder = builder.store(FileStore::new(dir.join(format!("{}.json", params.name()))));
        }
        let set = Arc::new(Set {
            params,
            flags: builder.build()?,
            view: ArcSwapOption::empty(),
        });
        let _ = slot.set(Arc::clone(&set));
        tracing::info!(set = %params.name(), "relay started an upstream poller");
        Ok(set)
    }

    /// The sets started so far.
    pub(crate) fn started(&self) -> impl Iterator<Item = &Arc<Set>> + '_ {
        self.slots.iter().filter_map(OnceLock::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_has_its_own_slot() {
        let mut seen = vec![false; Params::count()];
        for client in Client::NAMES {
            for distribution in Distribution::NAMES {
                for environment in Environment::NAMES {
                    let params = Params {
                        client: client.parse().unwrap(),
                        distribution: distribution.parse().unwrap(),
                        environment: environment.parse().unwrap(),
                    };
                    assert!(!std::mem::replace(&mut seen[params.index()], true));
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// An upstream that answers every request the same way; `None`: never.
    struct Answer(Option<Result<(u16, &'static str), ()>>);

    impl Transport for Answer {
        fn send(
            &self,
            _: crate::transport::Request,
        ) -> crate::transport::BoxFuture<'static, Result<crate::transport::Response, Error>>
        {
            let answer = self.0;
            Box::pin(async move {
                match answer {
                    Some(Ok((status, body))) => Ok(crate::transport::Response::new(
                        http::StatusCode::from_u16(status).unwrap(),
                        Default::default(),
                        body.as_bytes().to_vec(),
                    )),
                    Some(Err(())) => Err(Error::Http { status: 0 }),
                    None => std::future::pending().await,
                }
            })
        }
    }

    /// A set's upstream fetches and failures, as `/metrics` reports them: every request that
    /// ended counts, and every one that brought no flags is a failure.
    #[tokio::test(start_paused = true)]
    async fn each_fetch_and_every_kind_of_failure_is_counted() {
        let cases = [
            (Some(Ok((200, r#"[{"a": true}]"#))), false),
            (Some(Ok((200, "not json"))), true),
            (Some(Ok((500, ""))), true),
            (Some(Ok((304, ""))), true), // no If-None-Match was sent
            (Some(Err(())), true),
            (None, true), // the poller's timeout
        ];
        for (i, (answer, fails)) in cases.into_iter().enumerate() {
            let flags = FlagsBuilder::default()
                .transport(Answer(answer))
                .timeout(Duration::from_secs(1))
                .polling(false)
                .build()
                .unwrap();
            let mut status = flags.status_receiver();
            let _ = status
                .wait_for(|s| !matches!(s, crate::status::Status::Initializing { .. }))
                .await;
            assert_eq!(flags.fetch_counts(), (1, u64::from(fails)), "case {i}");
            flags.shutdown().await;
        }
    }
}
