//! Upstream fetches and failures per parameter set, for `/metrics`: a [`Transport`] wrapped
//! around the template's, so every request the pollers send is counted where it is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::IF_NONE_MATCH;

use crate::error::Error;
use crate::request::{classify, StatusClass};
use crate::transport::{BoxFuture, Request, Response, Transport};

/// One parameter set's upstream counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    fetches: AtomicU64,
    failures: AtomicU64,
}

impl Counters {
    /// Requests sent upstream.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Requests that brought no flags: connection errors, timeouts, error statuses, bodies that
    /// do not parse.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// The template's transport, counting.
pub(crate) struct Counting {
    inner: Arc<dyn Transport>,
    counters: Arc<Counters>,
}

impl Counting {
    pub(crate) fn new(inner: Arc<dyn Transport>, counters: Arc<Counters>) -> Self {
        Counting { inner, counters }
    }
}

impl Transport for Counting {
    fn send(&self, request: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let had_etag = request.headers.contains_key(IF_NONE_MATCH);
        self.counters.fetches.fetch_add(1, Ordering::Relaxed);
        // Counts a failure unless the request completes with flags: the poller drops the future
        // on its timeout (and at shutdown), and such a fetch brought nothing.
        let outcome = Outcome {
            counters: Arc::clone(&self.counters),
            failed: true,
        };
        let send = self.inner.send(request);
        Box::pin(async move {
            let result = send.await;
            outcome.finish(match &result {
                Ok(response) => !brings_flags(response, had_etag),
                Err(_) => true,
            });
            result
        })
    }
}

/// Whether the poller will take this answer: the rules of `fetch`, parse included (a 200 that
/// does not parse is a failure there too). Parsing twice costs one parse per fetch interval.
fn brings_flags(response: &Response, had_etag: bool) -> bool {
    match classify(response.status) {
        StatusClass::Success => crate::parse::parse(&response.body).is_ok(),
        StatusClass::NotModified => had_etag,
        _ => false,
    }
}

/// Counts the failure when dropped, so a fetch cut short counts too.
struct Outcome {
    counters: Arc<Counters>,
    failed: bool,
}

impl Outcome {
    fn finish(mut self, failed: bool) {
        self.failed = failed;
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if self.failed {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    struct Answer(Result<(u16, &'static str), ()>);

    impl Transport for Answer {
        fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
            let answer = self.0;
            Box::pin(async move {
                match answer {
                    Ok((status, body)) => Ok(Response::new(
                        StatusCode::from_u16(status).unwrap(),
                        Default::default(),
                        body.as_bytes().to_vec(),
                    )),
                    Err(()) => Err(Error::Http { status: 0 }),
                }
            })
        }
    }

    #[tokio::test]
    async fn counts_fetches_and_every_kind_of_failure() {
        let counters = Arc::new(Counters::default());
        let url = url::Url::parse("http://upstream.test/flags").unwrap();
        let cases = [
            (Ok((200, r#"[{"a": true}]"#)), false),
            (Ok((200, "not json")), true),
            (Ok((500, "")), true),
            (Ok((304, "")), true), // no If-None-Match was sent
            (Err(()), true),
        ];
        for (i, (answer, fails)) in cases.into_iter().enumerate() {
            let counting = Counting::new(Arc::new(Answer(answer)), Arc::clone(&counters));
            let before = counters.failures();
            let _ = counting.send(Request::new(url.clone())).await;
            assert_eq!(counters.failures() - before, u64::from(fails), "case {i}");
        }
        // A fetch dropped unfinished (the poller's timeout) is a failure.
        let counting = Counting::new(Arc::new(Answer(Ok((200, "[]")))), Arc::clone(&counters));
        drop(counting.send(Request::new(url)));
        assert_eq!((counters.fetches(), counters.failures()), (6, 5));
    }
}
