//! One process at a time in shared mode: `get` serves a fresh shared record without a request,
//! bad URLs are usage errors, the password never shows, and `watch` reports Redis's state.

use super::*;

/// `get` without a cache file, with a 1 h interval, plus `extra`.
async fn get(api: &MockServer, extra: &[&str], envs: &[(&str, &str)]) -> Run {
    let base = base(api);
    let args = [
        "get",
        "--no-cache",
        "--fetch-interval",
        "1h",
        "--base-url",
        &base,
    ];
    run(&[&args[..], extra].concat(), envs).await
}

#[tokio::test(flavor = "multi_thread")]
async fn get_serves_a_fresh_shared_record_without_a_request() {
    let redis = RedisServer::start();
    let api = api().await;
    let url = redis.url();

    let first = get(&api, &["--redis-url", &url], &[]).await;
    let first = first.served("network", Some("joined"));
    assert_eq!(request_count(&api).await, 1);
    assert_eq!(redis.keys("flagpole:*"), 1, "the record, and no lease left");

    // Another process, without a cache of its own (the variable this time): the record as the
    // first one wrote it, and no request.
    let second = get(&api, &[], &[("FLAGPOLE_REDIS_URL", &url)]).await;
    let second = second.served("shared", Some("joined"));
    assert_eq!(second["flags"], json!({"generation": 1}));
    // The record's time is taken as the answer comes, the fetching process's a moment later.
    let (written, held) = (
        second["cache_timestamp"].as_u64(),
        first["cache_timestamp"].as_u64(),
    );
    assert!(
        written <= held && written >= held.map(|t| t - 1000),
        "{second} {first}"
    );
    assert_eq!(
        request_count(&api).await,
        1,
        "a fresh shared record needs no request"
    );

    // A watch starts on it too, and adopts the next fetch at once.
    let watcher = watch(&api, &["--fetch-interval", "1h", "--redis-url", &url]);
    let watcher = &watcher;
    let served = |generation: u64| {
        move || {
            let snapshots = watcher.snapshots();
            snapshots
                .last()
                .is_some_and(|v| v["source"] == "shared" && v["flags"]["generation"] == generation)
        }
    };
    wait_until("the record in watch", WAIT, served(1), || {
        watcher.transcript()
    })
    .await;
    assert_eq!(request_count(&api).await, 1, "{}", watcher.transcript());

    // --refresh fetches even so, and the record it writes reaches the watch.
    let refreshed = get(&api, &["--redis-url", &url, "--refresh"], &[]).await;
    let refreshed = refreshed.served("network", Some("joined"));
    assert_eq!(refreshed["flags"], json!({"generation": 2}));
    assert_eq!(request_count(&api).await, 2);
    wait_until("the refreshed record in watch", WAIT, served(2), || {
        watcher.transcript()
    })
    .await;
    let fetched_by_watch = watcher
        .snapshots()
        .iter()
        .filter(|v| v["source"] == "network")
        .count();
    assert_eq!(fetched_by_watch, 0, "{}", watcher.transcript());

    // Another prefix shares nothing with these: a request, and a record of its own.
    let other = get(
        &api,
        &["--redis-url", &url, "--redis-prefix", "other-app"],
        &[],
    )
    .await;
    other.served("network", Some("joined"));
    assert_eq!(request_count(&api).await, 3);
    assert_eq!(redis.keys("other-app:*"), 1);
    let envs = [
        ("FLAGPOLE_REDIS_URL", url.as_str()),
        ("FLAGPOLE_REDIS_PREFIX", "other-app"),
    ];
    let other = get(&api, &[], &envs).await;
    assert_eq!(
        other.served("shared", Some("joined"))["flags"],
        json!({"generation": 3})
    );
    assert_eq!(request_count(&api).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_redis_url_is_a_usage_error_that_keeps_the_password() {
    let api = api().await;
    let bad = [
        format!("http://:{PASSWORD}@127.0.0.1:6379"),
        format!("redis://:{PASSWORD}@127.0.0.1:99999"),
        format!("redis://:{PASSWORD}@[::1"),
        format!("redis://:{PASSWORD}@127.0.0.1:6379/not-a-db"),
        format!("{PASSWORD}@127.0.0.1:6379"),
    ];
    for url in &bad {
        for sub in ["get", "watch"] {
            let base = base(&api);
            let args = ["-vvv", sub, "--no-cache", "--base-url", &base];
            let out = run(&[&args[..], &["--redis-url", url]].concat(), &[]).await;
            out.assert_redis_url_refused();
            let out = run(&args, &[("FLAGPOLE_REDIS_URL", url)]).await;
            out.assert_redis_url_refused();
        }
    }
    assert_eq!(request_count(&api).await, 0, "no request on bad arguments");

    // Empty (an unset variable passed on): no shared store, and output as without one.
    let out = get(&api, &["--redis-url="], &[]).await;
    out.served("network", None);
    let out = get(&api, &[], &[("FLAGPOLE_REDIS_URL", "")]).await;
    out.served("network", None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_is_never_printed_or_logged() {
    let redis = RedisServer::start();
    let set = redis.command(&["CONFIG", "SET", "requirepass", PASSWORD]);
    assert_eq!(set.as_deref(), Some("+OK"));
    let api = api().await;
    let good = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port());
    let wrong = format!("redis://:wrong-{PASSWORD}@127.0.0.1:{}", redis.port());

    let out = get(&api, &["-vvv", "--redis-url", &good], &[]).await;
    out.served("network", Some("joined"));
    assert!(out.stderr.contains("TRACE"), "-vvv logs: {out:#?}");
    assert_keeps_password(&out);
    let out = get(&api, &["-vvv"], &[("FLAGPOLE_REDIS_URL", &good)]).await;
    out.served("shared", Some("joined"));
    assert_keeps_password(&out);

    // Refused by Redis: the process fetches alone, and says so without the password.
    let out = get(&api, &["-vvv", "--redis-url", &wrong], &[]).await;
    out.served("network", Some("down"));
    assert!(
        out.stderr.contains("shared flag store unreachable"),
        "{out:#?}"
    );
    assert_keeps_password(&out);
    assert_eq!(request_count(&api).await, 2);

    let watcher = watch(&api, &["-vvv", "--redis-url", &wrong]);
    let down = || watcher.shared_states().iter().any(|s| s == "down");
    wait_until("the down state", WAIT, down, || watcher.transcript()).await;
    let seen = Run {
        code: None,
        stdout: watcher.stdout(),
        stderr: watcher.stderr(),
    };
    assert_keeps_password(&seen);

    let out = run_help(&good).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("--redis-url"), "{out:#?}");
    assert_keeps_password(&out);
}

async fn run_help(url: &str) -> Run {
    run(&["get", "--help"], &[("FLAGPOLE_REDIS_URL", url)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_reports_the_shared_state_through_a_redis_outage() {
    let mut redis = RedisServer::start();
    let api = api().await;
    let watcher = watch(
        &api,
        &["--fetch-interval", "1h", "--redis-url", &redis.url()],
    );
    let last_state = || watcher.shared_states().last().cloned().unwrap_or_default();
    let is = |state: &'static str| move || last_state() == state;
    wait_until("the joined state", WAIT, is("joined"), || {
        watcher.transcript()
    })
    .await;
    let has_flags = || watcher.generation() == Some(1);
    wait_until("the fetched flags", WAIT, has_flags, || {
        watcher.transcript()
    })
    .await;

    redis.kill();
    wait_until("the down state", WAIT, is("down"), || watcher.transcript()).await;
    let down = watcher
        .events()
        .into_iter()
        .rev()
        .find(|v| v["shared"] == "down")
        .unwrap();
    assert_eq!(down["status"], "fresh", "the flags stay fresh: {down}");
    assert_eq!(watcher.generation(), Some(1), "{}", watcher.transcript());

    redis.restart();
    wait_until("the joined state again", WAIT, is("joined"), || {
        watcher.transcript()
    })
    .await;
    assert_eq!(watcher.generation(), Some(1), "{}", watcher.transcript());
    assert_eq!(request_count(&api).await, 1, "{}", watcher.transcript());
    let mut changes = watcher.shared_states();
    changes.dedup();
    assert!(
        changes.ends_with(&["joined", "down", "joined"].map(String::from)),
        "{changes:?}"
    );
}
