//! Streaming clients, the connection (issue 17): reconnection backoff, the inactivity timeout,
//! servers and transports without a stream, privacy (no `user=`, closed while disabled), and
//! shutdown.
//!
//! Paused clock and `ScriptedTransport` (through `Wire`, which notes the instant of each open):
//! no sockets, no real sleeps. Log lines are captured per test thread with `support::Captured`.
#![cfg(all(feature = "stream", feature = "test-util"))]

mod stream_support;
mod support;

use std::time::Duration;

use flagpole::{Error, Flags, ScriptedStream, Status, StreamFeed, StreamState};
use stream_support::*;
use support::Captured;
use tokio::time::{sleep, Instant};

const PROFILE: &str = "secret-42";

/// A stream the server accepts and closes at once.
fn closed_at_once() -> ScriptedStream {
    let (stream, feed) = ScriptedStream::events();
    drop(feed);
    stream
}

/// Waits (paused clock, 10 ms steps) until `wire` has seen `n` opens.
async fn wait_opens(wire: &Wire, n: usize) {
    within("the opens", 24 * HOUR, async {
        while wire.opens() < n {
            sleep(ms(10)).await;
        }
    })
    .await;
}

/// Checks that no captured line names the profile id.
fn assert_private(logs: &Captured) {
    let text = logs.text();
    assert!(
        !text.lines().any(|line| line.contains(PROFILE)),
        "a log line names the profile id:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4: reconnection backoff
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_closed_stream_reconnects_with_equal_jitter_backoff_while_the_server_is_down() {
    let logs = Captured::default();
    let _capture = logs.install();
    let wire = Wire::new();
    let (flags, feed) = connected_with(&wire, |b| b.profile_id(PROFILE)).await;

    // The server closes the stream, and refuses connections for the next ten minutes.
    let down = Instant::now();
    drop(feed);
    sleep(secs(600)).await;
    let opens = wire.open_times();
    let mut waits = vec![opens[1] - down];
    waits.extend(gaps(&opens[1..]));
    assert_backoff(&waits, 0);
    let tries = opens.len() - 1;
    let allowed = min_opens(secs(600), 0) - 1..=max_opens(secs(600), 0) - 1;
    assert!(
        allowed.contains(&tries),
        "{tries} attempts in ten minutes, the backoff allows {allowed:?}: {waits:?}"
    );
    assert_eq!(flags.status().stream(), StreamState::Connecting);
    assert!(flags.status().is_fresh(), "{:?}", flags.status());
    assert_eq!(wire.fetches(), 2, "the stream's failures made fetches");

    // One warning for the outage, the retries at debug level; never the profile id.
    assert_eq!(logs.count("WARN", "change stream"), 1, "{}", logs.text());
    assert!(
        logs.count("DEBUG", "still down") >= tries - 1,
        "{}",
        logs.text()
    );
    assert_private(&logs);
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_accepts_and_closes_at_once_still_gets_backoff() {
    let logs = Captured::default();
    let _capture = logs.install();
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    for _ in 0..100 {
        wire.script.push_stream(closed_at_once());
    }
    let flags = streaming(&wire).build().unwrap();
    settle(&flags).await;
    sleep(secs(600)).await;
    let opens = wire.open_times();
    // Every one of them connected, if for no time at all: none counts as healthy.
    assert_backoff(&gaps(&opens), 0);
    let allowed = min_opens(secs(600), 0)..=max_opens(secs(600), 0);
    assert!(
        allowed.contains(&opens.len()),
        "{} opens in ten minutes, the backoff allows {allowed:?}",
        opens.len()
    );
    assert_eq!(flags.status().stream(), StreamState::Connecting);
    // Connections that bring no event never end the outage: one warning, not one per attempt.
    assert_eq!(logs.count("WARN", "change stream"), 1, "{}", logs.text());
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_backoff_starts_over_only_after_a_connection_of_a_minute() {
    let logs = Captured::default();
    let _capture = logs.install();
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    for _ in 0..4 {
        wire.script.push_stream(closed_at_once());
    }
    let (long, long_feed) = ScriptedStream::events();
    let (short, short_feed) = ScriptedStream::events();
    wire.script.push_stream(long).push_stream(short);
    let flags = streaming(&wire).build().unwrap();
    settle(&flags).await;

    // Four drops at once: the waits grow to [8 s, 16 s] next.
    wait_opens(&wire, 5).await;
    assert_backoff(&gaps(&wire.open_times()), 0);
    // The fifth stays up 61 s: the next wait is the first one again.
    keep_alive_for(&long_feed, secs(61)).await;
    let dropped = Instant::now();
    drop(long_feed);
    wait_opens(&wire, 6).await;
    assert_backoff(&[wire.open_times()[5] - dropped], 0);

    // The sixth stays up 30 s: not healthy, so the backoff goes on from there.
    keep_alive_for(&short_feed, secs(30)).await;
    let dropped = Instant::now();
    drop(short_feed);
    wait_opens(&wire, 8).await;
    let opens = wire.open_times();
    assert_backoff(&[opens[6] - dropped, opens[7] - opens[6]], 1);
    // The server ending a stream of a minute is routine (info); the four quick drops and the
    // 30 s one are failures (one warning per outage).
    let ended = logs.count("INFO", "ended by the server");
    let warned = logs.count("WARN", "change stream dropped");
    assert_eq!((ended, warned), (1, 2), "{}", logs.text());
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5: the inactivity timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_reopened_after_45_seconds() {
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    let (first, first_feed) = ScriptedStream::events();
    let (second, second_feed) = ScriptedStream::events();
    wire.script.push_stream(first).push_stream(second);
    let flags = streaming(&wire).build().unwrap();
    settle(&flags).await;
    wait_stream(&flags, StreamState::Connected).await;
    let opened = wire.open_times()[0];

    sleep(INACTIVITY - ms(10) - opened.elapsed()).await;
    assert!(!first_feed.is_closed(), "closed before 45 s of silence");
    assert_eq!(wire.opens(), 1);
    sleep(ms(10) + TICK).await;
    assert!(first_feed.is_closed(), "still open after 45 s of silence");
    assert_eq!(flags.status().stream(), StreamState::Connecting);

    wait_opens(&wire, 2).await;
    let reopened = wire.open_times()[1] - opened - INACTIVITY;
    assert_backoff(&[reopened], 0);
    wait_stream(&flags, StreamState::Connected).await;
    assert!(!second_feed.is_closed());
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn keep_alives_hold_the_stream_open_and_the_timer_counts_from_the_last_byte() {
    let wire = Wire::new();
    let (flags, feed) = connected_with(&wire, |b| b).await;

    // Five minutes of keep-alives every 15 s: never reopened.
    keep_alive_for(&feed, secs(300)).await;
    assert!(feed.send(KEEP_ALIVE));
    let last = Instant::now();
    assert_eq!(wire.opens(), 1, "reopened despite keep-alives");
    assert_eq!(flags.status().stream(), StreamState::Connected);

    // Then silence: closed 45 s after the last byte, not before.
    sleep(INACTIVITY - ms(10)).await;
    assert!(!feed.is_closed(), "closed before 45 s after the last byte");
    sleep(ms(10) + TICK).await;
    assert!(feed.is_closed(), "open 45 s after the last byte");
    assert!(last.elapsed() <= INACTIVITY + TICK);
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 6: servers and transports without a stream
// ---------------------------------------------------------------------------------------------

/// Runs a handle polling every 10 minutes (no jitter) whose stream is refused with `refusal`
/// (none: by a transport that does not implement `open`): "unsupported" at once, logged once,
/// never tried again over 65 minutes (a good stream is queued behind the refusal, so a retry
/// would connect), polling unchanged.
async fn unsupported(refusal: Option<ScriptedStream>) {
    let logs = Captured::default();
    let _capture = logs.install();
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    let builder = Flags::builder()
        .stream(true)
        .profile_id(PROFILE)
        .fetch_interval(secs(600))
        .schedule_jitter(0.0);
    let (builder, opens) = match refusal {
        Some(stream) => {
            wire.script.push_stream(stream);
            (builder.transport(wire.clone()), 1)
        }
        None => (builder.transport(PollOnly(wire.clone())), 0),
    };
    let (good, good_feed) = ScriptedStream::events();
    wire.script.push_stream(good);
    let flags = builder.build().unwrap();
    settle(&flags).await;
    let status = wait_stream(&flags, StreamState::Unsupported).await;
    assert!(status.is_fresh(), "{status:?}");
    let settled = wire.fetch_times()[1];

    sleep(secs(65 * 60)).await;
    assert_eq!(wire.opens(), opens, "the stream was tried again");
    assert!(!good_feed.is_closed(), "the queued stream was opened");
    assert_eq!(flags.status().stream(), StreamState::Unsupported);
    assert!(flags.status().is_fresh(), "{:?}", flags.status());
    let times = wire.fetch_times();
    assert_eq!(times.len(), 2 + 6, "polls in 65 minutes");
    assert!(times[2] - settled >= secs(600));
    for gap in gaps(&times[1..]) {
        assert!(gap >= secs(600) && gap <= secs(600) + TICK, "{gap:?}");
    }
    assert_eq!(
        logs.count("WARN", "no change stream"),
        1,
        "warned once:\n{}",
        logs.text()
    );
    assert_eq!(logs.count("WARN", "stream"), 1, "{}", logs.text());
    assert_private(&logs);
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_404_means_no_stream() {
    unsupported(Some(ScriptedStream::status(404))).await;
}

#[tokio::test(start_paused = true)]
async fn a_405_means_no_stream() {
    unsupported(Some(ScriptedStream::status(405))).await;
}

#[tokio::test(start_paused = true)]
async fn a_200_that_is_not_an_event_stream_means_no_stream() {
    let json = ScriptedStream::status(200).header("content-type", "application/json");
    unsupported(Some(json)).await;
}

#[tokio::test(start_paused = true)]
async fn a_transport_without_open_means_no_stream() {
    unsupported(None).await;
}

// ---------------------------------------------------------------------------------------------
// 7: privacy
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_stream_names_no_profile_and_closes_while_disabled() {
    let logs = Captured::default();
    let _capture = logs.install();
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    let (first, first_feed) = ScriptedStream::events();
    let (second, second_feed) = ScriptedStream::events();
    wire.script.push_stream(first).push_stream(second);
    let flags = streaming(&wire).profile_id(PROFILE).build().unwrap();
    settle(&flags).await;
    wait_stream(&flags, StreamState::Connected).await;

    let open = &wire.script.stream_requests()[0];
    assert!(open.url.path().ends_with("/flags/stream"), "{}", open.url);
    let keys: Vec<String> = open
        .url
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    assert_eq!(
        keys,
        ["client", "distribution", "environment"],
        "{}",
        open.url
    );
    assert!(!open.url.as_str().contains(PROFILE));
    assert_eq!(open.headers["accept"], "text/event-stream");
    for request in wire.script.requests() {
        assert!(
            request
                .url
                .query_pairs()
                .any(|(k, v)| k == "user" && v == PROFILE),
            "a flags request without the profile id: {}",
            request.url
        );
    }

    // Disabled: the stream closes, and nothing is opened or fetched for ten hours.
    flags.set_enabled(false).await;
    idle().await;
    assert!(
        first_feed.is_closed(),
        "the stream stayed open while disabled"
    );
    assert_eq!(flags.status().as_str(), "disabled");
    assert_eq!(flags.status().stream(), StreamState::Off);
    let fetches = wire.fetches();
    sleep(10 * HOUR).await;
    assert_eq!(wire.opens(), 1, "a stream was opened while disabled");
    assert_eq!(wire.fetches(), fetches, "a fetch while disabled");
    assert!(!first_feed.send(&event(&tag("v2"))));

    // Enabled again: the stream reopens, still without the profile id.
    flags.set_enabled(true).await;
    wait_stream(&flags, StreamState::Connected).await;
    assert_eq!(wire.opens(), 2);
    assert!(!second_feed.is_closed());
    let reopen = &wire.script.stream_requests()[1];
    assert!(
        !reopen.url.query_pairs().any(|(k, _)| k == "user"),
        "{}",
        reopen.url
    );
    assert_private(&logs);
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 8: shutdown
// ---------------------------------------------------------------------------------------------

/// Shuts `flags` down, and checks that `feed` is closed as soon as that returns, at once.
async fn shutdown_closes(flags: &Flags, feed: &StreamFeed) {
    let start = Instant::now();
    flags.shutdown().await;
    assert!(feed.is_closed(), "the stream outlived shutdown");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(flags.status().is_stopped(), "{:?}", flags.status());
    assert_eq!(flags.status().stream(), StreamState::Off);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_the_stream_at_once() {
    let wire = Wire::new();
    let (flags, feed) = connected_with(&wire, |b| b).await;
    shutdown_closes(&flags, &feed).await;
    sleep(HOUR).await;
    assert_eq!(wire.opens(), 1, "a stream opened after shutdown");
    assert!(matches!(flags.refresh().await, Err(Error::Stopped)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_reconnecting() {
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    let flags = streaming(&wire).build().unwrap();
    settle(&flags).await;
    // No stream queued: every open fails and the task backs off.
    wait_opens(&wire, 4).await;
    let (stream, feed) = ScriptedStream::events();
    wire.script.push_stream(stream);
    flags.shutdown().await;
    assert!(flags.status().is_stopped());
    let opens = wire.opens();
    sleep(HOUR).await;
    assert_eq!(wire.opens(), opens, "reconnected after shutdown");
    assert!(!feed.is_closed(), "the queued stream was never opened");
}

#[tokio::test(start_paused = true)]
async fn status_receivers_see_connecting_connected_connecting_while_fresh() {
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    // The server takes 5 s to answer the open: the flags are fresh before it is connected.
    let (stream, feed) = ScriptedStream::events();
    wire.script.push_stream(stream.delay(secs(5)));
    let start = Instant::now();
    let flags = streaming(&wire).build().unwrap();

    // Every status the receiver is woken for, with when.
    let mut rx = flags.status_receiver();
    let seen = tokio::spawn(async move {
        let mut seen = vec![(Duration::ZERO, rx.borrow_and_update().clone())];
        while rx.changed().await.is_ok() {
            let status = rx.borrow_and_update().clone();
            let stopped = status.is_stopped();
            seen.push((start.elapsed(), status));
            if stopped {
                break;
            }
        }
        seen
    });

    let fresh = wait_status(&flags, "fresh", Status::is_fresh).await;
    assert_eq!(fresh.stream(), StreamState::Connecting);
    wait_stream(&flags, StreamState::Connected).await;
    assert_eq!(start.elapsed(), secs(5));
    sleep(secs(10)).await;
    let dropped = Instant::now();
    drop(feed);
    let status = wait_stream(&flags, StreamState::Connecting).await;
    assert_eq!(
        dropped.elapsed(),
        Duration::ZERO,
        "the drop is seen at once"
    );
    assert!(status.is_fresh(), "{status:?}");
    // Reconnecting fails from now on (no stream queued): the state stays "connecting", the
    // flags stay fresh.
    sleep(secs(600)).await;
    assert!(flags.status().is_fresh(), "{:?}", flags.status());
    assert_eq!(flags.status().stream(), StreamState::Connecting);
    assert!(wire.opens() > 1, "no reconnection attempt");
    flags.shutdown().await;

    let seen = within("the status log", secs(1), seen).await.unwrap();
    let states: Vec<(&str, StreamState)> =
        seen.iter().map(|(_, s)| (s.as_str(), s.stream())).collect();
    let first_fresh = states
        .iter()
        .position(|(s, _)| *s == "fresh")
        .expect("fresh seen");
    assert_eq!(
        &states[first_fresh..],
        [
            ("fresh", StreamState::Connecting),
            ("fresh", StreamState::Connected),
            ("fresh", StreamState::Connecting),
            ("stopped", StreamState::Off),
        ],
        "{seen:#?}"
    );
    let connected_at = seen[first_fresh + 1].0;
    assert_eq!(connected_at, secs(5), "{seen:#?}");
}
