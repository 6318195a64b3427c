//! The polling schedule of a streaming client, on tokio's paused clock with scripted answers: a
//! fetch for a tag heard on the change stream is one more, and the poll due next keeps its time.
#![cfg(feature = "stream")]

mod support;

use std::time::Duration;

use flagpole::{Flags, ScriptedResponse, ScriptedStream, ScriptedTransport};
use serde_json::json;
use support::Recorder;
use tokio::time::Instant;

/// Waits (paused clock, 1 ms steps, at most `limit`) until `done` holds.
async fn until(limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every client of a fleet hears a change at the same moment: if each scheduled its next poll
/// from its stream fetch, the whole fleet would poll together from then on.
#[tokio::test(start_paused = true)]
async fn a_fetch_for_a_heard_tag_leaves_the_next_poll_where_it_was() {
    let v2 = ScriptedResponse::json(&json!([{"v": 2}])).header("etag", "\"v2\"");
    poll_keeps_its_time(v2, Some(2)).await;
}

/// The same when that fetch fails: the whole fleet's fetches failing at once must not bunch it.
#[tokio::test(start_paused = true)]
async fn a_failed_fetch_for_a_heard_tag_leaves_the_next_poll_where_it_was() {
    poll_keeps_its_time(ScriptedResponse::status(503), Some(1)).await;
}

/// The fetch for a heard tag is answered `answer`, after which `v` is served.
async fn poll_keeps_its_time(answer: ScriptedResponse, v: Option<i64>) {
    let interval = Duration::from_secs(100);
    let transport = ScriptedTransport::new();
    transport
        .push(ScriptedResponse::json(&json!([{"v": 1}])).header("etag", "\"v1\""))
        .push(ScriptedResponse::status(304))
        .push(answer)
        .push(ScriptedResponse::status(304));
    let (stream, feed) = ScriptedStream::events();
    transport.push_stream(stream);
    // A keep-alive every 15 s, as a relay sends: 45 s of silence would drop the stream.
    let keep_alive = feed.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            keep_alive.send(": keep-alive\n\n");
        }
    });
    let recorder = Recorder::new(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .fetch_interval(interval)
        .schedule_jitter(0.0)
        .stream(true)
        .build()
        .unwrap();
    // The first fetch, then the first poll (drawn anywhere in the interval): from there on, one
    // poll every 100 s exactly.
    until(interval * 2, || recorder.count() == 2).await;
    let polled = recorder.times()[1];

    tokio::time::sleep_until(polled + Duration::from_secs(30)).await;
    assert!(feed.send("event: flags\nid: \"v2\"\ndata: {\"etag\":\"\\\"v2\\\"\"}\n\n"));
    until(Duration::from_secs(1), || recorder.count() == 3).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(flags.get_i64("v"), v);

    tokio::time::sleep_until(polled + interval + Duration::from_millis(1)).await;
    let times = recorder.times();
    assert_eq!(times.len(), 4, "no poll when it was due");
    assert_eq!(
        times[3] - polled,
        interval,
        "the poll after the stream's fetch moved"
    );
    assert_eq!(transport.stream_count(), 1);
    assert!(flags.status().is_fresh(), "{:?}", flags.status());
    flags.shutdown().await;
}
