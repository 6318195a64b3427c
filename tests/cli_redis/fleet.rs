//! Ten `flagpole watch` processes on one Redis make about one request per interval between
//! them; alone, each would make one per interval (ten per interval, and ten at the start).

use super::*;

const PROCESSES: usize = 10;
const INTERVAL: Duration = Duration::from_secs(2);
const INTERVALS: u32 = 4;

#[tokio::test(flavor = "multi_thread")]
async fn ten_watch_processes_make_about_one_request_per_interval_between_them() {
    let redis = RedisServer::start();
    let api = api().await;
    let url = redis.url();
    let started = Instant::now();
    let mut fleet: Vec<Proc> = (0..PROCESSES)
        .map(|_| watch(&api, &["--fetch-interval", "2s", "--redis-url", &url]))
        .collect();
    let transcripts = |fleet: &[Proc]| {
        let all = fleet.iter().enumerate();
        let all = all.map(|(i, p)| format!("--- process {i}\n{}", p.transcript()));
        all.collect::<Vec<_>>().join("\n")
    };
    wait_until(
        "remote flags in every process",
        WAIT,
        || fleet.iter().all(|p| p.generation().is_some()),
        || transcripts(&fleet),
    )
    .await;
    let start_requests = request_count(&api).await;

    tokio::time::sleep_until((started + INTERVAL * INTERVALS).into()).await;
    let made = request_count(&api).await;
    let elapsed = started.elapsed();
    println!(
        "{PROCESSES} processes, interval {INTERVAL:?}: {made} requests in {elapsed:.2?} \
         ({start_requests} by the time all served flags); alone: {} or more",
        PROCESSES * (INTERVALS as usize + 1)
    );
    assert!(
        made <= INTERVALS as usize + 2,
        "{made} requests in {INTERVALS} intervals\n{}",
        transcripts(&fleet)
    );
    // The shared record ages out: the fleet keeps refreshing, it does not live on one fetch.
    assert!(
        made >= INTERVALS as usize - 1,
        "{made} requests in {INTERVALS} intervals"
    );

    // Every process holds the newest flags moments after they were fetched (the change channel,
    // not each one's own schedule, which is 1.8 s or more away).
    let newest = made as u64;
    wait_until(
        "the newest flags in every process",
        Duration::from_secs(1),
        || fleet.iter().all(|p| p.generation() >= Some(newest)),
        || transcripts(&fleet),
    )
    .await;

    // Each fetch shows once as `network` in the process that made it; everything else a
    // process served came through Redis.
    let mut fetched = 0;
    for p in &mut fleet {
        assert!(p.is_running(), "exited early\n{}", p.transcript());
        let snapshots = p.snapshots();
        fetched += snapshots
            .iter()
            .filter(|v| v["source"] == "network")
            .count();
        for v in snapshots.iter().skip(1) {
            assert!(
                v["source"] == "network" || v["source"] == "shared",
                "{v}\n{}",
                p.transcript()
            );
        }
        let states = p.shared_states();
        assert_eq!(
            states.last().map(String::as_str),
            Some("joined"),
            "{}",
            p.transcript()
        );
        assert!(!states.iter().any(|s| s == "down"), "{}", p.transcript());
    }
    let made_now = request_count(&api).await;
    assert!(
        fetched <= made_now,
        "{fetched} network snapshots for {made_now} requests"
    );
    assert!(
        fetched + 1 >= made,
        "{fetched} network snapshots for {made} requests\n{}",
        transcripts(&fleet)
    );
    let adopters = fleet
        .iter()
        .filter(|p| p.snapshots().iter().any(|v| v["source"] == "shared"))
        .count();
    assert!(
        adopters >= PROCESSES - made_now,
        "{adopters} processes adopted"
    );
}
