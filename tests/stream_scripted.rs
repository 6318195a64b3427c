//! Streaming clients, what the stream makes the poller fetch (issue 17): a new tag is fetched
//! once, conditionally, coalesced with every other fetch; polling goes on; the server's
//! `Retry-After` holds; a fresh cache catches up; the status follows the connection.
//!
//! Paused clock and `ScriptedTransport` (through `Wire`, which notes instants): no sockets, no
//! real sleeps. The connection itself (backoff, inactivity, unsupported servers, privacy,
//! shutdown) is in `stream_scripted_more.rs`.
#![cfg(all(feature = "stream", feature = "test-util"))]

mod stream_support;
mod support;

use flagpole::{Error, Flags, MemoryStore, ScriptedResponse, ScriptedStream, Source, StreamState};
use stream_support::*;
use support::{yield_until, GatedStore, OpenOnDrop};
use tokio::time::{sleep, Instant};

/// A handle on `wire` with one scripted stream, settled (first flags `"v1"` and a refresh) and
/// connected. Returns the handle and the stream's feed.
async fn connected(wire: &Wire) -> (Flags, flagpole::StreamFeed) {
    wire.script.push(flags_v(1, "v1"));
    let (stream, feed) = ScriptedStream::events();
    wire.script.push_stream(stream);
    let flags = streaming(wire).build().unwrap();
    settle(&flags).await;
    wait_stream(&flags, StreamState::Connected).await;
    assert_eq!(
        wire.fetches(),
        2,
        "the first fetch and the settling refresh"
    );
    assert_eq!(flags.get_i64("v"), Some(1));
    (flags, feed)
}

// ---------------------------------------------------------------------------------------------
// 1: which events make a fetch
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_new_tag_is_fetched_once_with_the_tag_held_and_the_same_tag_is_not() {
    let wire = Wire::new();
    let (flags, feed) = connected(&wire).await;

    // The tag held, strong or weak: nothing to fetch.
    assert!(feed.send(&event(&tag("v1"))));
    assert!(feed.send(&event(&format!("W/{}", tag("v1")))));
    keep_alive_for(&feed, secs(60)).await;
    assert_eq!(
        wire.fetches(),
        2,
        "an event naming the tag held made a fetch"
    );

    wire.script.push(flags_v(2, "v2"));
    let sent = Instant::now();
    assert!(feed.send(&event(&tag("v2"))));
    idle().await;
    assert_eq!(wire.fetches(), 3, "one fetch for the new tag");
    assert_eq!(wire.fetch_times()[2], sent, "fetched at once");
    assert_eq!(
        wire.if_none_match()[2],
        Some(tag("v1")),
        "conditional on the tag held"
    );
    assert_eq!(flags.get_i64("v"), Some(2), "the new flags are served");
    assert_eq!(flags.snapshot().source(), Source::Network);

    // The new tag again, strong and weak, over ten minutes: no further request.
    assert!(feed.send(&event(&tag("v2"))));
    assert!(feed.send(&event(&format!("W/{}", tag("v2")))));
    keep_alive_for(&feed, secs(600)).await;
    assert_eq!(wire.fetches(), 3, "the tag now held was fetched again");
    assert!(flags.status().is_fresh(), "{:?}", flags.status());
    assert_eq!(flags.status().stream(), StreamState::Connected);
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_event_without_a_tag_is_fetched() {
    let wire = Wire::new();
    let (flags, feed) = connected(&wire).await;

    // The first event on this connection names no tag: it can only mean "something changed".
    wire.script.push(flags_v(2, "v2"));
    assert!(feed.send(&untagged_event()));
    idle().await;
    assert_eq!(wire.fetches(), 3, "an untagged event made no fetch");
    assert_eq!(wire.if_none_match()[2], Some(tag("v1")));
    assert_eq!(flags.get_i64("v"), Some(2));

    // After tagged events on the same connection, an untagged one still means a change (the
    // `id` of an earlier event is not this event's tag).
    assert!(feed.send(&event(&tag("v2"))));
    sleep(secs(1)).await;
    assert_eq!(wire.fetches(), 3, "the tag held made a fetch");
    wire.script.push(flags_v(3, "v3"));
    assert!(feed.send(&untagged_event()));
    sleep(secs(1)).await;
    assert_eq!(
        wire.fetches(),
        4,
        "an untagged event after a tagged one made no fetch"
    );
    assert_eq!(wire.if_none_match()[3], Some(tag("v2")));
    assert_eq!(flags.get_i64("v"), Some(3));
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2: coalescing
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_burst_of_tags_during_a_fetch_makes_one_more_fetch() {
    let wire = Wire::new();
    let (flags, feed) = connected(&wire).await;

    wire.script.push(flags_v(2, "v2").delay(secs(10)));
    wire.script.push(flags_v(5, "v5"));
    assert!(feed.send(&event(&tag("v2"))));
    idle().await;
    assert_eq!(wire.fetches(), 3, "the first tag is fetched at once");
    let first = wire.fetch_times()[2];
    for v in 3..=5 {
        sleep(secs(2)).await;
        assert!(feed.send(&event(&tag(&format!("v{v}")))));
    }
    idle().await;
    assert_eq!(
        wire.fetches(),
        3,
        "a fetch in flight takes the tags up when it ends"
    );

    sleep(secs(10)).await;
    assert_eq!(
        wire.fetches(),
        4,
        "one more fetch for the burst, not one per event"
    );
    assert_eq!(
        wire.fetch_times()[3] - first,
        secs(10),
        "right after the first ended"
    );
    assert_eq!(wire.if_none_match()[3], Some(tag("v2")));
    assert_eq!(flags.get_i64("v"), Some(5), "the latest flags are served");

    keep_alive_for(&feed, secs(600)).await;
    assert_eq!(wire.fetches(), 4, "the burst made more than two fetches");
    flags.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn events_during_a_refresh_share_its_fetch_and_the_next() {
    let wire = Wire::new();
    let (flags, feed) = connected(&wire).await;

    // A refresh in flight brings "v3": the tags heard meanwhile are covered by it.
    wire.script.push(flags_v(3, "v3").delay(secs(10)));
    let refresh = flags.refresh();
    idle().await;
    assert_eq!(wire.fetches(), 3);
    assert!(feed.send(&event(&tag("v2"))));
    sleep(secs(1)).await;
    assert!(feed.send(&event(&tag("v3"))));
    let snapshot = within("the refresh", secs(60), refresh).await.unwrap();
    assert_eq!(snapshot.get_i64("v"), Some(3));
    keep_alive_for(&feed, secs(60)).await;
    assert_eq!(
        wire.fetches(),
        3,
        "a tag the refresh brought was fetched again"
    );

    // A refresh in flight brings "v4" while "v4" and "v5" are announced: one fetch after it,
    // for "v5".
    wire.script.push(flags_v(4, "v4").delay(secs(10)));
    wire.script.push(flags_v(5, "v5"));
    let refresh = flags.refresh();
    idle().await;
    assert_eq!(wire.fetches(), 4);
    assert!(feed.send(&event(&tag("v4"))));
    assert!(feed.send(&event(&tag("v5"))));
    let snapshot = within("the refresh", secs(60), refresh).await.unwrap();
    assert_eq!(snapshot.get_i64("v"), Some(4));
    keep_alive_for(&feed, secs(60)).await;
    assert_eq!(
        wire.fetches(),
        5,
        "the tag heard during the refresh was not fetched once"
    );
    assert_eq!(wire.if_none_match()[4], Some(tag("v4")));
    assert_eq!(flags.get_i64("v"), Some(5));

    // A fetch for a tag is in flight; a refresh and two more tags come during it: one fetch
    // after it serves them all (one in flight, one queued).
    wire.script.push(flags_v(6, "v6").delay(secs(10)));
    wire.script.push(flags_v(8, "v8"));
    assert!(feed.send(&event(&tag("v6"))));
    idle().await;
    assert_eq!(wire.fetches(), 6);
    let refresh = flags.refresh();
    assert!(feed.send(&event(&tag("v7"))));
    sleep(secs(1)).await;
    assert!(feed.send(&event(&tag("v8"))));
    let snapshot = within("the queued refresh", secs(60), refresh)
        .await
        .unwrap();
    assert_eq!(
        snapshot.get_i64("v"),
        Some(8),
        "answered by the fetch after"
    );
    keep_alive_for(&feed, secs(60)).await;
    assert_eq!(
        wire.fetches(),
        7,
        "the refresh and the tags share one fetch"
    );
    assert_eq!(wire.if_none_match()[6], Some(tag("v6")));
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3: polling goes on
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn polling_goes_on_at_the_interval_while_connected() {
    let wire = Wire::new();
    wire.script.set(flags_v(1, "v1"));
    let (stream, feed) = ScriptedStream::events();
    wire.script.push_stream(stream);
    let flags = streaming(&wire)
        .fetch_interval(secs(600))
        .schedule_jitter(0.0)
        .build()
        .unwrap();
    settle(&flags).await;
    wait_stream(&flags, StreamState::Connected).await;
    let settled = wire.fetch_times()[1];

    // 65 minutes with keep-alives and no event: a poll every 10 minutes.
    keep_alive_for(&feed, secs(65 * 60)).await;
    let times = wire.fetch_times();
    assert_eq!(
        times.len(),
        2 + 6,
        "polls in 65 minutes: {:?}",
        gaps(&times)
    );
    for (i, gap) in gaps(&times[1..]).iter().enumerate() {
        assert!(
            *gap >= secs(600) && *gap <= secs(600) + TICK,
            "poll {i} came {gap:?} after the last"
        );
    }
    assert!(times[2] - settled >= secs(600));
    assert_eq!(wire.opens(), 1, "the stream stayed up");
    assert_eq!(flags.status().stream(), StreamState::Connected);
    assert!(!feed.is_closed());
    flags.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 9: the server's Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_tag_heard_inside_retry_after_is_fetched_when_it_ends() {
    for status in [429, 503] {
        let wire = Wire::new();
        let (flags, feed) = connected(&wire).await;
        wire.script
            .push(ScriptedResponse::status(status).header("retry-after", "120"));
        wire.script.push(flags_v(2, "v2"));
        let refused = within("the refused refresh", secs(60), flags.refresh()).await;
        assert!(
            matches!(refused, Err(Error::Http { status: s }) if s == status),
            "{refused:?}"
        );
        let window = Instant::now();
        assert_eq!(wire.fetches(), 3);

        sleep(secs(5)).await;
        assert!(feed.send(&event(&tag("v2"))));
        keep_alive_for(&feed, secs(114)).await;
        assert_eq!(
            wire.fetches(),
            3,
            "{status}: a tag was fetched inside Retry-After"
        );
        sleep(secs(2)).await;
        assert_eq!(
            wire.fetches(),
            4,
            "{status}: not fetched when the window ended"
        );
        let at = wire.fetch_times()[3] - window;
        assert!(
            at >= secs(120) && at <= secs(120) + TICK,
            "{status}: fetched {at:?} after the refusal"
        );
        assert_eq!(wire.if_none_match()[3], Some(tag("v1")));
        assert_eq!(flags.get_i64("v"), Some(2));
        assert!(flags.status().is_fresh(), "{:?}", flags.status());

        keep_alive_for(&feed, secs(600)).await;
        assert_eq!(wire.fetches(), 4, "{status}: the tag was fetched twice");
        flags.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 10: a fresh cache catches up through the stream
// ---------------------------------------------------------------------------------------------

/// A store holding a fresh record of `{"v": 1}` with the tag `"seed"`, saved by a handle with
/// the same parameters.
async fn fresh_store() -> MemoryStore {
    let store = MemoryStore::new();
    let wire = Wire::new();
    wire.script.set(flags_v(1, "seed"));
    let seed = Flags::builder()
        .transport(wire)
        .store(store.clone())
        .polling(false)
        .build()
        .unwrap();
    within("the seed fetch", secs(60), seed.ready())
        .await
        .unwrap();
    within("the seed save", secs(60), seed.flush())
        .await
        .unwrap();
    seed.shutdown().await;
    let record = store.get().expect("the seed handle saved");
    assert_eq!(record.etag, Some(tag("seed")));
    store
}

/// Starts a handle streaming from `wire` with no polling (a fresh cache makes no request of its
/// own, so every request is the stream's doing) on a gated copy of `store`. `early`: the first
/// event is in the stream already and is heard while the store still loads; the load ends once
/// the poller has taken it in.
async fn start_on_cache(wire: &Wire, store: MemoryStore, early: bool) -> (Flags, OpenOnDrop) {
    let gated = GatedStore {
        inner: store,
        ..GatedStore::default()
    };
    let open = gated.open_on_drop();
    let flags = streaming(wire)
        .store(gated.clone())
        .polling(false)
        .build()
        .unwrap();
    if early {
        // The paused clock stands still while the load blocks: yield, never sleep.
        let connected =
            yield_until(10_000, || flags.status().stream() == StreamState::Connected).await;
        assert!(connected, "the stream connects while the store loads");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(flags.status().as_str(), "initializing");
        assert_eq!(
            wire.fetches(),
            0,
            "a tag was fetched before the cache was read"
        );
    }
    gated.open();
    let source = within("the cache", secs(60), flags.ready()).await.unwrap();
    assert!(
        matches!(source, Source::Cache | Source::Network),
        "{source:?}"
    );
    wait_stream(&flags, StreamState::Connected).await;
    (flags, open)
}

#[tokio::test(start_paused = true)]
async fn a_fresh_cache_catches_up_on_the_first_event_naming_another_tag() {
    for early in [true, false] {
        let store = fresh_store().await;
        let wire = Wire::new();
        wire.script.set(flags_v(2, "v2"));
        let (stream, feed) = ScriptedStream::events();
        wire.script.push_stream(stream);
        if early {
            assert!(feed.send(&event(&tag("v2"))));
        }
        let (flags, _open) = start_on_cache(&wire, store, early).await;
        if !early {
            idle().await;
            assert_eq!(wire.fetches(), 0, "a fresh cache made a request");
            assert_eq!(flags.get_i64("v"), Some(1));
            assert!(feed.send(&event(&tag("v2"))));
        }
        keep_alive_for(&feed, secs(3600)).await;
        assert_eq!(
            wire.fetches(),
            1,
            "early {early}: one fetch for the new tag"
        );
        assert_eq!(wire.if_none_match()[0], Some(tag("seed")));
        assert_eq!(flags.get_i64("v"), Some(2), "early {early}");
        assert_eq!(flags.snapshot().source(), Source::Network);
        flags.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_cache_with_the_tag_announced_makes_no_request() {
    for early in [true, false] {
        let store = fresh_store().await;
        let wire = Wire::new();
        wire.script.set(flags_v(2, "v2"));
        let (stream, feed) = ScriptedStream::events();
        wire.script.push_stream(stream);
        if early {
            assert!(feed.send(&event(&tag("seed"))));
        }
        let (flags, _open) = start_on_cache(&wire, store, early).await;
        assert_eq!(flags.snapshot().source(), Source::Cache);
        assert!(feed.send(&event(&format!("W/{}", tag("seed")))));
        keep_alive_for(&feed, secs(3600)).await;
        assert_eq!(wire.fetches(), 0, "early {early}: the tag held was fetched");
        assert_eq!(flags.get_i64("v"), Some(1));
        assert!(flags.status().is_fresh(), "{:?}", flags.status());
        flags.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 11: the status follows the connection
// ---------------------------------------------------------------------------------------------
