//! The cache file under crashes, bad directories and concurrent writers.
//!
//! - A save interrupted at any byte (a partial temporary file beside the target, or a target
//!   truncated by a writer that is not atomic) leaves a cache that loads: the previous record,
//!   or nothing at all, never half a record and never an error. A truncated target is kept
//!   aside as `<name>.corrupt`.
//! - A cache directory that cannot be written is a warning; the handle keeps serving and
//!   refreshing from memory.
//! - Two handles saving into one file never leave it unreadable, not even for an instant.
//!
//! Records are produced by real handles (`FileStore` + `ScriptedTransport`), never built by
//! hand, so these tests follow the record format wherever it goes.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flagpole::{FileStore, Flags, ScriptedResponse, ScriptedTransport, Source, Status, Store};
use serde_json::{json, Value};

use support::{wait_status, Captured};

const HOUR: Duration = Duration::from_secs(3600);

/// A handle on `file` whose transport answers `flags` (or hangs, for `None`).
fn handle(file: &Path, flags: Option<Value>) -> (Flags, ScriptedTransport) {
    let transport = ScriptedTransport::new();
    transport.set(match flags {
        Some(flags) => ScriptedResponse::json(&flags),
        None => ScriptedResponse::hang(),
    });
    let handle = Flags::builder()
        .transport(transport.clone())
        .store(FileStore::new(file))
        .fetch_interval(HOUR)
        .default_flag("d", "default")
        .build()
        .unwrap();
    (handle, transport)
}

/// The bytes a handle writes into `file` after fetching `flags` (Fresh comes after the save).
async fn saved_bytes(file: &Path, flags: Value) -> Vec<u8> {
    let (handle, _) = handle(file, Some(flags));
    wait_status(&handle, "the save", HOUR, Status::is_fresh).await;
    handle.shutdown().await;
    std::fs::read(file).unwrap()
}

/// A temporary file of another process beside the target, named as `FileStore` names them
/// (`.<name>.<pid>.<random>.<n>.tmp`, or `.<name>.<pid>.<n>.tmp` before the random part).
fn temp_beside(file: &Path, n: usize) -> PathBuf {
    let name = file.file_name().unwrap().to_string_lossy();
    file.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id() + 1))
}

#[tokio::test(start_paused = true)]
async fn a_save_interrupted_at_any_byte_leaves_a_loadable_cache() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    let scratch = dir.path().join("scratch/flags.json");
    let old_bytes = saved_bytes(&file, json!([{"v": "old"}, {"n": 1}])).await;
    let new_bytes = saved_bytes(
        &scratch,
        json!([{"v": "new"}, {"n": 2}, {"list": [1, 2, 3]}, {"ü": "ß"}]),
    )
    .await;
    let store = FileStore::new(&file);
    let corrupt = dir.path().join("flags.json.corrupt");
    let old = store.load().unwrap().expect("the old record");
    let new = FileStore::new(&scratch)
        .load()
        .unwrap()
        .expect("the new record");
    assert_ne!(old, new);

    for cut in 0..=new_bytes.len() {
        // A crash before the rename: the target is intact, a partial temporary file beside it.
        std::fs::write(temp_beside(&file, cut), &new_bytes[..cut]).unwrap();
        assert_eq!(
            store.load().unwrap().as_ref(),
            Some(&old),
            "temp cut at {cut}"
        );

        // A writer that is not atomic, cut short: nothing usable, but no error and no crash.
        std::fs::write(&file, &new_bytes[..cut]).unwrap();
        let loaded = store.load().unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let expected = (cut == new_bytes.len()).then(|| new.clone());
        assert_eq!(loaded, expected, "target cut at {cut}");
        if cut < new_bytes.len() {
            assert!(!file.exists(), "target cut at {cut}: moved aside");
            assert_eq!(
                std::fs::read(&corrupt).unwrap(),
                &new_bytes[..cut],
                "target cut at {cut}: kept as .corrupt"
            );
        }
        std::fs::write(&file, &old_bytes).unwrap();
    }

    // Through a handle, at a sample of cuts: the old cache is served beside a partial temporary
    // file; a truncated target is kept aside and a new one is written by the next fetch.
    // (Leftover temporary files this young are ignored, not removed: a writer may be at work.)
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        entries > new_bytes.len(),
        "the leftover temporary files are there"
    );
    for cut in (0..8).map(|i| new_bytes.len() * i / 8) {
        let (offline, transport) = handle(&file, None);
        wait_status(&offline, "the cache", HOUR, Status::is_fresh).await;
        assert_eq!(offline.snapshot().source(), Source::Cache, "cut at {cut}");
        assert_eq!(offline.get_str("v").as_deref(), Some("old"));
        assert_eq!(
            transport.request_count(),
            0,
            "a fresh cache needs no request"
        );
        offline.shutdown().await;

        std::fs::write(&file, &new_bytes[..cut]).unwrap();
        let (online, _) = handle(&file, Some(json!([{"v": "fetched"}])));
        assert_eq!(online.snapshot().source(), Source::Defaults, "cut at {cut}");
        assert_eq!(online.get_str("d").as_deref(), Some("default"));
        wait_status(&online, "the fetch", HOUR, Status::is_fresh).await;
        assert_eq!(online.get_str("v").as_deref(), Some("fetched"));
        online.shutdown().await;
        let record = store
            .load()
            .unwrap()
            .expect("overwritten with a whole record");
        assert_eq!(record.flags.get("v"), Some(&json!("fetched")));
        assert_eq!(
            std::fs::read(&corrupt).unwrap(),
            &new_bytes[..cut],
            "cut at {cut}: kept as .corrupt"
        );
        std::fs::write(&file, &old_bytes).unwrap();
    }
}

/// Waits (paused clock) for the handle to settle after a fetch, and checks it serves `v`.
async fn assert_serves(flags: &Flags, v: &str) {
    wait_status(flags, "fresh", HOUR, Status::is_fresh).await;
    assert_eq!(flags.get_str("v").as_deref(), Some(v));
    assert_eq!(flags.snapshot().source(), Source::Network);
}

/// Checks a handle whose cache `file` cannot be used: it warns, and serves and refreshes from
/// memory. `failed_saves` warnings about saving are expected: none where the file cannot be
/// read, since nothing is written over a record that was not read.
async fn keeps_working_without_its_cache(file: &Path, logs: &Captured, failed_saves: usize) {
    let before_save = logs.count("WARN", "could not save the flag cache");
    let (flags, transport) = handle(file, Some(json!([{"v": "one"}])));
    assert_serves(&flags, "one").await;
    transport.set(ScriptedResponse::json(&json!([{"v": "two"}])));
    let snapshot = flags.refresh().await.expect("refresh without a cache file");
    assert_eq!(snapshot.get_str("v").as_deref(), Some("two"));
    assert_serves(&flags, "two").await;
    assert_eq!(flags.get_str("d").as_deref(), Some("default"));
    flags.shutdown().await;
    assert_eq!(
        logs.count("WARN", "could not save the flag cache") - before_save,
        failed_saves,
        "one warning per failed save: {}",
        logs.text()
    );
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_cache_directory_warns_and_the_handle_keeps_working_from_memory() {
    let logs = Captured::default();
    let _guard = logs.install();
    let dir = tempfile::tempdir().unwrap();

    // The cache directory is a regular file: nothing can be created under it.
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    keeps_working_without_its_cache(&blocker.join("flagpole/flags.json"), &logs, 0).await;
    assert_eq!(
        logs.count("WARN", "could not load the flag cache"),
        1,
        "{}",
        logs.text()
    );

    // The cache file is a directory: it can be neither read nor replaced.
    let occupied = dir.path().join("occupied.json");
    std::fs::create_dir(&occupied).unwrap();
    keeps_working_without_its_cache(&occupied, &logs, 0).await;
    assert!(occupied.is_dir());
    assert_eq!(logs.count("WARN", "could not load the flag cache"), 2);

    // A read-only directory (not enforced for root, who may write anyway: then skipped).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        if std::fs::write(locked.join("probe"), b"x").is_err() {
            keeps_working_without_its_cache(&locked.join("flags.json"), &logs, 2).await;
        } else {
            eprintln!("running as root: the read-only directory case is skipped");
        }
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert!(!logs.text().contains("panicked"), "{}", logs.text());
}

/// Flags of writer `who` at step `n`; `pad` has a length derived from `n`, so a record mixing two
/// writes would show.
fn step(who: &str, n: usize) -> Value {
    json!([{"writer": who}, {"n": n}, {"pad": "x".repeat(n % 40 * 25)}])
}

fn check_consistent(record: &flagpole::CacheRecord) -> Result<(), String> {
    let writer = record.flags.get("writer").and_then(Value::as_str);
    let n = record.flags.get("n").and_then(Value::as_u64);
    let pad = record
        .flags
        .get("pad")
        .and_then(Value::as_str)
        .map(str::len);
    match (writer, n, pad) {
        (Some("A" | "B"), Some(n), Some(pad)) if pad as u64 == n % 40 * 25 => Ok(()),
        _ => Err(format!("an inconsistent record: {:?}", record.flags)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_cache_file_never_corrupt_it() {
    const STEPS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");

    // A reader that loads the file for as long as the writers run: once a record exists, every
    // load must give a whole, consistent one.
    let done = Arc::new(AtomicBool::new(false));
    let loads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (done, loads, store) = (Arc::clone(&done), Arc::clone(&loads), FileStore::new(&file));
        std::thread::spawn(move || -> Result<(), String> {
            let mut seen = false;
            while !done.load(Ordering::SeqCst) {
                match store.load() {
                    Ok(Some(record)) => {
                        check_consistent(&record)?;
                        seen = true;
                    }
                    Ok(None) if !seen => {}
                    Ok(None) => return Err("the cache vanished or was unreadable".into()),
                    Err(e) => return Err(format!("load failed: {e}")),
                }
                loads.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        })
    };

    let writers: Vec<_> = ["A", "B"]
        .into_iter()
        .map(|who| {
            let (flags, transport) = handle(&file, Some(step(who, 0)));
            tokio::spawn(async move {
                for n in 1..=STEPS {
                    transport.set(ScriptedResponse::json(&step(who, n)));
                    let snapshot = flags.refresh().await.expect("refresh");
                    assert_eq!(snapshot.get_i64("n"), Some(n as i64));
                }
                // Saves run beside the poller (a refresh does not wait for its save).
                flags.flush().await.expect("the last save");
                flags.shutdown().await;
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    reader.join().unwrap().unwrap();
    assert!(loads.load(Ordering::SeqCst) > 0, "the reader never ran");

    let record = FileStore::new(&file).load().unwrap().expect("a record");
    check_consistent(&record).unwrap();
    assert_eq!(
        record.flags.get("n"),
        Some(&json!(STEPS)),
        "the last save of either"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["flags.json"], "no temporary file left behind");
}
