//! A guided tour of flagpole against an embedded fake Client Config API (no network needed).
//!
//! Run it with `cargo run --example quickstart`.

use std::time::Duration;

use flagpole::{Environment, FileStore, Flag, Flags, Status};
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

// Flags the application knows, declared once with their defaults (as `static`s: each remembers
// where its flag sits, so reads do not hash the name).
static NEW_CHECKOUT: Flag<bool> = Flag::new("new-checkout", false);
static BANNER: Flag<&'static str> = Flag::new("banner", "Welcome");
static MAX_ITEMS: Flag<i64> = Flag::new("max-items", 10);
static OFFLINE_MODE: Flag<bool> = Flag::new("offline-mode", true);

/// Makes the fake API answer every request for the flags with `response` from now on.
async fn serve(server: &MockServer, response: ResponseTemplate) {
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/v1/flags"))
        .and(query_param("client", "extension"))
        .and(query_param("environment", "dev"))
        .respond_with(response)
        .mount(server)
        .await;
}

fn flags_body(checkout: bool) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!([
        {"new-checkout": checkout},
        {"banner": "Welcome to flagpole"},
        {"max-items": 50},
        {"theme": {"accent": "teal", "dark": true}}
    ]))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    serve(&server, flags_body(false)).await;
    let cache_dir = tempfile::tempdir()?;
    println!("1. fake Client Config API listening at {}", server.uri());

    let flags = Flags::builder()
        .base_url(format!("{}/v1", server.uri()))
        .environment(Environment::Dev)
        .store(FileStore::new(cache_dir.path().join("flags.json")))
        .backoff_initial(Duration::from_millis(200))
        .backoff_max(Duration::from_millis(800))
        .build()?;

    let ready = matches!(
        tokio::time::timeout(Duration::from_secs(5), flags.ready()).await,
        Ok(Ok(_))
    );
    let view = flags.snapshot();
    println!(
        "2. first read (ready: {ready}, source: {}): new-checkout={} banner={:?} max-items={} theme.accent={:?} offline-mode={} (the Flag's default)",
        view.source(),
        flags.value(&NEW_CHECKOUT),
        &*flags.value(&BANNER),
        flags.value(&MAX_ITEMS),
        view.get_ref("theme").and_then(|t| t.get("accent")),
        flags.value(&OFFLINE_MODE),
    );

    // Code that reacts to changes subscribes; it wakes only when values change.
    let mut changes = flags.subscribe();
    let watcher = tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let snapshot = changes.borrow_and_update().clone();
            println!(
                "   watch event: new-checkout is now {} (source {})",
                snapshot.value(&NEW_CHECKOUT),
                snapshot.source()
            );
        }
    });

    println!("3. the server flips new-checkout on; a manual refresh picks it up");
    serve(&server, flags_body(true)).await;
    let snapshot = flags.refresh().await?;
    println!(
        "   refresh returned new-checkout={}",
        snapshot.value(&NEW_CHECKOUT)
    );

    println!("4. a refresh that brings the same flags renews the cache without a watch event");
    flags.refresh().await?;
    tokio::task::yield_now().await;

    println!("5. outage: the API answers 503");
    serve(&server, ResponseTemplate::new(503)).await;
    match flags.refresh().await {
        Ok(_) => println!("   unexpected success"),
        Err(error) => println!("   refresh failed: {error}"),
    }
    if let Status::Stale {
        last_error,
        next_retry,
        ..
    } = flags.status()
    {
        let wait = next_retry.map(|t| t.saturating_duration_since(std::time::Instant::now()));
        println!("   status: stale ({last_error}); the poller retries with backoff in {wait:?}");
    }
    println!(
        "   still serving the last good flags: new-checkout={}, source {}",
        flags.value(&NEW_CHECKOUT),
        flags.snapshot().source()
    );

    println!("6. the API recovers; the poller's own retry brings the status back to fresh");
    serve(&server, flags_body(true)).await;
    let mut status = flags.status_receiver();
    let recovered = tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| matches!(s, Status::Fresh { .. })),
    )
    .await
    .is_ok();
    println!(
        "   recovered: {recovered}; new-checkout={}",
        flags.value(&NEW_CHECKOUT)
    );

    println!("7. shutdown: the poller stops, reads keep serving the last snapshot");
    flags.shutdown().await;
    println!(
        "   status: {}; new-checkout={}",
        flags.status().as_str(),
        flags.value(&NEW_CHECKOUT)
    );
    drop(flags);
    watcher.await?;

    println!("8. restart: a new handle on the same cache file serves it at once, with no request");
    serve(&server, flags_body(false)).await;
    let restarted = Flags::builder()
        .base_url(format!("{}/v1", server.uri()))
        .environment(Environment::Dev)
        .store(FileStore::new(cache_dir.path().join("flags.json")))
        .build()?;
    let _ = tokio::time::timeout(Duration::from_secs(5), restarted.ready()).await;
    println!(
        "   source {}, new-checkout={}, requests since restart: {}",
        restarted.snapshot().source(),
        restarted.value(&NEW_CHECKOUT),
        server.received_requests().await.map_or(0, |r| r.len())
    );
    restarted.shutdown().await;
    println!("done");
    Ok(())
}
