//! The polling schedule of a streaming client, on tokio's paused clock with scripted answers: a
//! fetch for a tag heard on the change stream is one more, and the poll due next keeps its time.
#![cfg(feature = "stream")]

mod support;

use std::time::Duration;

use flagpole::{Flags, ScriptedResponse, ScriptedStream, ScriptedTransport, StreamFeed};
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
    poll_keeps_its_time(vec![v2()]).await;
}

/// The same when that fetch fails, and the tag is fetched again within a second or so (with
/// backoff, not at the next poll): the whole fleet's fetches failing at once must not bunch it.
#[tokio::test(start_paused = true)]
async fn a_failed_fetch_for_a_heard_tag_is_retried_and_leaves_the_next_poll_where_it_was() {
    poll_keeps_its_time(vec![ScriptedResponse::status(503), v2()]).await;
}

/// A lagging replica answers the old flags (304) first: fetched again until the tag comes.
#[tokio::test(start_paused = true)]
async fn old_flags_for_a_heard_tag_are_fetched_again_until_the_tag_comes() {
    poll_keeps_its_time(vec![ScriptedResponse::status(304), v2()]).await;
}

/// A stream on `transport` that gets a keep-alive every 15 s, as a relay sends (45 s of silence
/// would drop it), and a recorder of the flags requests: the recorder and the stream's feed.
fn recorded_stream(transport: &ScriptedTransport) -> (Recorder, StreamFeed) {
    let (stream, feed) = ScriptedStream::events();
    transport.push_stream(stream);
    let keep_alive = feed.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(15)).await;
            keep_alive.send(": keep-alive\n\n");
        }
    });
    (Recorder::new(transport), feed)
}

fn v2() -> ScriptedResponse {
    ScriptedResponse::json(&json!([{"v": 2}])).header("etag", "\"v2\"")
}

/// The fetches for a heard tag are answered `answers` (the last brings it, at most a few seconds
/// after the tag was heard), and the next poll comes when it was due.
async fn poll_keeps_its_time(answers: Vec<ScriptedResponse>) {
    let for_tag = answers.len();
    let interval = Duration::from_secs(100);
    let transport = ScriptedTransport::new();
    transport
        .push(ScriptedResponse::json(&json!([{"v": 1}])).header("etag", "\"v1\""))
        .push(ScriptedResponse::status(304));
    for answer in answers {
        transport.push(answer);
    }
    transport.push(ScriptedResponse::status(304));
    let (recorder, feed) = recorded_stream(&transport);
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
    until(Duration::from_secs(5), || flags.get_i64("v") == Some(2)).await;
    assert_eq!(recorder.count(), 2 + for_tag);
    let heard_at = polled + Duration::from_secs(30);
    if for_tag > 1 {
        // The retry came after the backoff's first step, [0.5 s, 1 s].
        let gap = recorder.times()[3] - recorder.times()[2];
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(1001),
            "{gap:?}"
        );
    }

    tokio::time::sleep_until(polled + interval + Duration::from_millis(1)).await;
    let times = recorder.times();
    assert_eq!(
        times.len(),
        3 + for_tag,
        "no poll when it was due, or more fetches: {times:?}"
    );
    assert_eq!(
        times[2 + for_tag] - polled,
        interval,
        "the poll after the stream's fetch moved"
    );
    assert!(times[2] - heard_at < Duration::from_millis(10));
    assert_eq!(transport.stream_count(), 1);
    assert!(flags.status().is_fresh(), "{:?}", flags.status());
    flags.shutdown().await;
}

/// A server whose flags never carry the tag its stream names (a proxy that rewrites tags, say):
/// the tag is fetched a few times with backoff, then let go until the stream names one again.
#[tokio::test(start_paused = true)]
async fn a_tag_the_flags_never_carry_is_let_go_after_a_few_fetches() {
    let transport = ScriptedTransport::new();
    transport.push(ScriptedResponse::json(&json!([{"v": 1}])).header("etag", "\"v1\""));
    transport.push(ScriptedResponse::status(304));
    let (recorder, feed) = recorded_stream(&transport);
    let flags = Flags::builder()
        .transport(recorder.clone())
        .fetch_interval(Duration::from_secs(24 * 3600))
        .stream(true)
        .build()
        .unwrap();
    until(Duration::from_secs(5), || flags.get_i64("v") == Some(1)).await;
    flags.refresh().await.unwrap();
    let before = recorder.count();
    assert!(feed.send("event: flags\nid: \"other\"\ndata: {}\n\n"));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    // The first fetch and two retries (1 s and 2 s ceilings): three answers with another tag,
    // then nothing for the hour.
    let times = recorder.times();
    assert_eq!(times.len() - before, 3, "{times:?}");
    assert!(times[times.len() - 1] - times[before] <= Duration::from_secs(3));
    flags.shutdown().await;
}
