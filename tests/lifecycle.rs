//! Using flagpole without an async runtime, handles of fixed values, and actions that happen
//! when they are called (the returned futures only report).

mod support;

use std::time::{Duration, Instant};

use flagpole::{Error, Flags, ScriptedResponse, ScriptedTransport, Source, Status};
use serde_json::json;

/// Polls `done` on this thread (real time: another thread does the work) for at most 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Tests that start pollers on their own threads take turns, so that one test's thread never
/// shows up in another's count.
static OWN_THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn own_threads() -> std::sync::MutexGuard<'static, ()> {
    OWN_THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

fn flags_thread_alive() -> bool {
    // Thread names of this process, from /proc (the CI machine is Linux).
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|name| name.trim() == "flagpole")
            })
        })
        .unwrap_or(false)
}

#[test]
fn without_a_runtime_the_poller_runs_on_its_own_thread_until_shutdown() {
    let _turn = own_threads();
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"beta": true})));
    let flags = Flags::builder()
        .transport(transport.clone())
        .default_flag("beta", false)
        .build()
        .expect("build works outside a runtime");
    // No deadline at all (found in review: `Duration::MAX` overflowed the deadline).
    let source = flags.ready_blocking(Duration::MAX);
    assert_eq!(source.unwrap(), Source::Network);
    assert_eq!(flags.get_bool("beta"), Some(true));
    assert!(
        flags_thread_alive(),
        "a thread named flagpole runs the poller"
    );
    // The stop happens when shutdown() is called, awaited or not.
    drop(flags.shutdown());
    eventually("the poller stops", || flags.status().is_stopped());
    eventually("the flagpole thread ends", || !flags_thread_alive());
    assert_eq!(flags.get_bool("beta"), Some(true), "reads go on");
}

#[test]
fn dropping_the_last_handle_ends_the_own_thread() {
    let _turn = own_threads();
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::hang());
    let flags = Flags::builder().transport(transport).build().unwrap();
    let status = flags.status_receiver();
    drop(flags);
    eventually("the poller stops", || status.borrow().is_stopped());
}

#[test]
fn ready_blocking_times_out_with_not_ready_and_says_why_when_disabled() {
    let _turn = own_threads();
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::hang());
    let flags = Flags::builder().transport(transport).build().unwrap();
    let started = Instant::now();
    let waited = flags.ready_blocking(Duration::from_millis(100));
    assert!(
        matches!(waited, Err(Error::NotReady { waited }) if waited == Duration::from_millis(100)),
        "{waited:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(started.elapsed() < Duration::from_secs(5));

    let off = Flags::builder().enabled(false).build().unwrap();
    assert!(matches!(
        off.ready_blocking(Duration::from_secs(10)),
        Err(Error::Disabled)
    ));
}

#[tokio::test]
async fn ready_blocking_inside_a_runtime_is_an_error_not_a_panic_or_a_deadlock() {
    let flags = Flags::builder().enabled(false).build().unwrap();
    let waited = flags.ready_blocking(Duration::from_secs(10));
    assert!(matches!(waited, Err(Error::InsideRuntime)), "{waited:?}");
    assert!(matches!(flags.ready().await, Err(Error::Disabled)));
}

#[tokio::test(start_paused = true)]
async fn ready_resolves_with_the_source_or_the_reason() {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})).delay(Duration::from_secs(3)));
    let flags = Flags::builder().transport(transport).build().unwrap();
    assert_eq!(flags.ready().await.unwrap(), Source::Network);
    assert_eq!(
        flags.ready().await.unwrap(),
        Source::Network,
        "at once the second time"
    );
    let waiting = tokio::spawn({
        let hung = ScriptedTransport::new();
        hung.set(ScriptedResponse::hang());
        let flags = Flags::builder().transport(hung).build().unwrap();
        let ready = flags.ready();
        let stop = flags.shutdown();
        async move {
            stop.await;
            ready.await
        }
    });
    assert!(matches!(waiting.await.unwrap(), Err(Error::Stopped)));
}

#[tokio::test]
async fn fixed_values_serve_without_a_poller() {
    let flags = Flags::fixed([
        ("new-checkout", json!(true)),
        ("max-items", json!(5)),
        ("banner", json!("hi")),
    ]);
    assert_eq!(flags.get_bool("new-checkout"), Some(true));
    assert_eq!(flags.get_i64("max-items"), Some(5));
    assert_eq!(flags.snapshot().source(), Source::Defaults);
    assert!(matches!(flags.status(), Status::Disabled));
    assert!(matches!(flags.refresh().await, Err(Error::Disabled)));
    flags.set_enabled(true).await;
    assert!(
        matches!(flags.status(), Status::Disabled),
        "nothing to enable"
    );
    flags.set_override("banner", "override").await.unwrap();
    assert_eq!(
        flags.snapshot().get_str("banner").as_deref(),
        Some("override")
    );
    flags.remove_override("banner").await.unwrap();
    assert_eq!(flags.snapshot().get_str("banner").as_deref(), Some("hi"));
    flags.flush().await.unwrap();
    assert!(matches!(flags.ready().await, Err(Error::Disabled)));
    flags.shutdown().await;
    assert!(flags.status().is_stopped());
    assert_eq!(flags.get_i64("max-items"), Some(5), "reads go on");
}

#[test]
fn fixed_values_need_no_runtime() {
    let flags = Flags::fixed([("a", json!(1))]);
    assert_eq!(flags.get_i64("a"), Some(1));
    assert!(matches!(
        flags.ready_blocking(Duration::from_millis(1)),
        Err(Error::Disabled)
    ));
}

/// Each action happens when its method is called: dropping the returned future undoes nothing.
#[tokio::test(start_paused = true)]
async fn actions_happen_when_called_even_if_the_future_is_dropped() {
    let transport = ScriptedTransport::new();
    transport.set(ScriptedResponse::json(&json!({"a": 1})));
    let flags = Flags::builder()
        .transport(transport.clone())
        .polling(false)
        .build()
        .unwrap();
    support::wait_status(&flags, "fresh", Duration::from_secs(60), Status::is_fresh).await;
    let before = transport.request_count();
    drop(flags.refresh());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(transport.request_count(), before + 1, "the refresh fetched");

    drop(flags.set_override("o", 1));
    assert_eq!(flags.get_i64("o"), Some(1), "the override is served");
    drop(flags.remove_override("o"));
    assert_eq!(flags.get_i64("o"), None);
    drop(flags.clear_overrides());

    drop(flags.set_enabled(false));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        matches!(flags.status(), Status::Disabled),
        "{:?}",
        flags.status()
    );
    drop(flags.shutdown());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(flags.status().is_stopped());
}
