//! Old snapshots are freed as soon as no reader holds them: checked with weak references, not
//! timed. A publish must not leave the previous flag set alive in the handle, the watch channel
//! or arc-swap's per-thread slots.

use std::sync::{Arc, Barrier};
use std::thread;

use flagpole::{Flag, Flags, ScriptedResponse, ScriptedTransport, Snapshot};
use serde_json::json;

static VERSION: Flag<i64> = Flag::new("version", -1);
static TEXT: Flag<&'static str> = Flag::new("s", "none");

fn body(version: u64) -> ScriptedResponse {
    ScriptedResponse::json(&json!([{"on": true}, {"version": version}, {"s": "text"}]))
}

/// A handle serving version 0, and the transport to script later versions on.
async fn flags() -> (Flags, ScriptedTransport) {
    let transport = ScriptedTransport::new();
    transport.push(body(0));
    let flags = Flags::builder()
        .transport(transport.clone())
        .build()
        .unwrap();
    flags.refresh().await.unwrap();
    (flags, transport)
}

async fn publish(flags: &Flags, transport: &ScriptedTransport, version: u64) -> Arc<Snapshot> {
    transport.push(body(version));
    let snapshot = flags.refresh().await.unwrap();
    assert_eq!(snapshot.get_i64("version"), Some(version as i64));
    snapshot
}

#[tokio::test(start_paused = true)]
async fn a_replaced_snapshot_is_freed_once_nobody_holds_it() {
    let (flags, transport) = flags().await;
    let mut receiver = flags.subscribe();
    // Reads of every kind: typed, by name, strings and JSON.
    assert_eq!(flags.get_bool("on"), Some(true));
    assert_eq!(flags.value(&VERSION), 0);
    assert_eq!(&*flags.value(&TEXT), "text");
    assert_eq!(flags.get_str("s").as_deref(), Some("text"));
    assert_eq!(flags.get("version"), Some(json!(0)));
    assert_eq!(flags.snapshot().value(&VERSION), 0);
    let first = Arc::downgrade(&flags.snapshot());
    assert!(first.upgrade().is_some());

    publish(&flags, &transport, 1).await;
    assert_eq!(flags.value(&VERSION), 1);
    assert!(
        first.upgrade().is_none(),
        "the first snapshot outlived its publish"
    );
    assert!(receiver.has_changed().unwrap());
    assert_eq!(receiver.borrow_and_update().get_i64("version"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_held_snapshot_lives_until_its_holder_lets_go() {
    let (flags, transport) = flags().await;
    let held = flags.snapshot();
    let weak = Arc::downgrade(&held);
    let string = flags.value(&TEXT);
    publish(&flags, &transport, 1).await;
    publish(&flags, &transport, 2).await;
    assert_eq!(
        held.get_i64("version"),
        Some(0),
        "a held view never changes"
    );
    drop(held);
    assert!(weak.upgrade().is_none());
    assert_eq!(
        &*string, "text",
        "a string handed out outlives its snapshot"
    );
}

#[tokio::test(start_paused = true)]
async fn reads_on_other_threads_do_not_pin_old_snapshots() {
    let (flags, transport) = flags().await;
    let first = Arc::downgrade(&flags.snapshot());
    // Threads that read (arc-swap registers a slot per thread) and then stay alive, idle.
    let (done, park) = (Arc::new(Barrier::new(3)), Arc::new(Barrier::new(3)));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (flags, done, park) = (flags.clone(), Arc::clone(&done), Arc::clone(&park));
            thread::spawn(move || {
                for _ in 0..1000 {
                    assert_eq!(flags.value(&VERSION), 0);
                    assert_eq!(flags.get_bool("on"), Some(true));
                    assert_eq!(&*flags.value(&TEXT), "text");
                }
                done.wait();
                park.wait();
            })
        })
        .collect();
    done.wait();
    publish(&flags, &transport, 1).await;
    assert!(first.upgrade().is_none(), "an idle reader thread pinned it");
    park.wait();
    for reader in readers {
        reader.join().unwrap();
    }
}
