//! The stream's mechanisms against slow clients, without sockets: a feed that is not asked for
//! frames skips to the latest flags, and the watchdog drops a client that takes nothing.

use http::StatusCode;
use std::sync::Mutex;

use super::*;
use crate::builder::FlagsBuilder;
use crate::config::{Client, Distribution, Environment};
use crate::error::Error;
use crate::relay::ops::Metrics;
use crate::relay::sets::{Params, Sets};
use crate::relay::Limits;
use crate::transport::{BoxFuture, Request, Response, Transport};

/// Answers every request with the body of the moment.
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<String>>);

impl Transport for Upstream {
    fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
        let body = self.0.lock().unwrap().clone().into_bytes();
        Box::pin(async move { Ok(Response::new(StatusCode::OK, Default::default(), body)) })
    }
}

fn state(upstream: &Upstream) -> Arc<State> {
    let template = FlagsBuilder::default()
        .transport(upstream.clone())
        .polling(false);
    let defaults = Params {
        client: Client::Extension,
        distribution: Distribution::Main,
        environment: Environment::Prod,
    };
    Arc::new(State {
        sets: Sets::new(template, None, Duration::from_secs(60), defaults).unwrap(),
        metrics: Metrics::default(),
        limits: Limits::default(),
        token: CancellationToken::new(),
    })
}

/// The event's `id:` line.
fn id(frame: &Bytes) -> String {
    let text = std::str::from_utf8(frame).unwrap();
    let line = text.lines().find(|l| l.starts_with("id: ")).expect(text);
    line["id: ".len()..].to_owned()
}

#[tokio::test]
async fn a_client_that_takes_nothing_skips_to_the_latest_flags() {
    let upstream = Upstream::default();
    *upstream.0.lock().unwrap() = r#"[{"v": 0}]"#.into();
    let state = state(&upstream);
    let set = state.sets.get(state.sets.defaults).unwrap();
    let feed = Feed::new(
        Arc::clone(&set),
        Duration::from_secs(60),
        state.token.clone(),
    );
    let (first, feed) = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the first flags arrive")
        .unwrap();
    assert_eq!(id(&first), set.view().unwrap().etag_str());
    // Twenty changes while the client's connection asks for nothing.
    for v in 1..=20 {
        *upstream.0.lock().unwrap() = format!(r#"[{{"v": {v}}}]"#);
        set.flags.refresh().await.unwrap();
    }
    let latest = set.view().unwrap();
    assert_eq!(latest.body.as_ref(), br#"[{"v":20}]"#);
    // When it asks again: one event, for the latest flags, and nothing else pending.
    let (next, feed) = feed.next().await.unwrap();
    assert_eq!(id(&next), latest.etag_str());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), feed.next())
            .await
            .is_err(),
        "a second event was pending"
    );
}

#[tokio::test]
async fn the_watchdog_drops_only_a_client_whose_connection_stopped_taking_frames() {
    let state = state(&Upstream::default());
    let stall = Duration::from_millis(100);
    let run = |taking: bool| {
        let state = Arc::clone(&state);
        async move {
            let progress = Arc::new(Progress {
                start: Instant::now(),
                handed_at: AtomicU64::new(0),
            });
            let disconnect = Disconnect::default();
            let done = CancellationToken::new();
            let _stop = done.clone().drop_guard();
            tokio::spawn(watchdog(
                Arc::clone(&progress),
                stall,
                disconnect.clone(),
                done,
                state,
            ));
            let until = Instant::now() + stall * 5;
            progress.handed();
            while Instant::now() < until && !disconnect.0.is_cancelled() {
                if taking {
                    // hyper asks for the next frame and gets one.
                    progress.asked();
                    progress.handed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            disconnect.0.is_cancelled()
        }
    };
    assert!(!run(true).await, "a client that reads was dropped");
    assert!(run(false).await, "a client that reads nothing was kept");
    assert_eq!(state.metrics.streams_dropped(), 1);
}
