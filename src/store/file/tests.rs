use std::sync::{Arc, Mutex};

use serde_json::json;

use super::*;

fn record() -> CacheRecord {
    let mut record = CacheRecord::new(
        "k",
        1_700_000_000_000,
        Some("\"e\"".into()),
        json!({"a": true, "ü nicode": [1, {"x": null}], "": 1.5})
            .as_object()
            .unwrap()
            .clone(),
    );
    record.overrides.insert("o".into(), json!({"on": true}));
    record
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Sets a file's modification time `age` in the past.
fn backdate(path: &Path, age: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn records_without_overrides_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    fs::write(
        &path,
        r#"{"version":1,"key":"k","cache_timestamp":5,"etag":null,"flags":{"a":1}}"#,
    )
    .unwrap();
    let loaded = FileStore::new(&path).load().unwrap().unwrap();
    assert_eq!(loaded.flags["a"], json!(1));
    assert!(loaded.overrides.is_empty());
}

#[test]
fn file_round_trip_creates_dirs_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("a/b/flags.json"));
    assert_eq!(store.load().unwrap(), None);
    store.save(&record()).unwrap();
    assert_eq!(store.load().unwrap(), Some(record()));
    let mut second = record();
    second.cache_timestamp += 1;
    store.save(&second).unwrap();
    assert_eq!(store.load().unwrap(), Some(second));
    assert_eq!(names_in(&dir.path().join("a/b")), ["flags.json"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("a/b/flags.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn corrupt_or_foreign_files_are_kept_aside_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let aside = dir.path().join("flags.json.corrupt");
    let store = FileStore::new(&path);
    let mut other = record();
    other.version = 99;
    let other = serde_json::to_vec(&other).unwrap();
    for bad in [
        &b"{not json"[..],
        b"",
        b"[]",
        b"{\"version\":1}",
        b"\xff\xfe",
        b"{\"version\":2,\"a shape\":\"of the future\"}",
        &other,
    ] {
        fs::write(&path, bad).unwrap();
        assert_eq!(store.load().unwrap(), None, "{bad:?}");
        assert!(!path.exists(), "moved away: {bad:?}");
        // Each replaces the one before: the newest is kept.
        assert_eq!(fs::read(&aside).unwrap(), bad);
        assert_eq!(names_in(dir.path()), ["flags.json.corrupt"]);
    }
    // The next save writes a new file and leaves the kept one alone.
    store.save(&record()).unwrap();
    assert_eq!(store.load().unwrap(), Some(record()));
    assert_eq!(fs::read(&aside).unwrap(), other);
}

#[test]
fn another_version_is_named_whatever_its_shape() {
    let mut other = record();
    other.version = 7;
    for bytes in [
        serde_json::to_vec(&other).unwrap(),
        br#"{"version":2,"flags":"elsewhere"}"#.to_vec(),
    ] {
        let why = parse(&bytes).unwrap_err();
        assert!(matches!(why, Unusable::Version(7 | 2)), "{why:?}");
    }
    assert!(matches!(
        parse(br#"{"version":1}"#),
        Err(Unusable::Corrupt(_))
    ));
}

#[test]
fn the_warning_names_the_corrupt_path() {
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    fs::write(&path, b"{not json").unwrap();
    tracing::subscriber::with_default(subscriber, || {
        assert_eq!(FileStore::new(&path).load().unwrap(), None);
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let aside = dir.path().join("flags.json.corrupt");
    assert!(text.contains("WARN"), "{text}");
    assert!(
        text.contains(&format!("kept aside as {}", aside.display())),
        "{text}"
    );
}

#[test]
fn truncated_write_of_target_is_kept_aside_and_a_fresh_leftover_temp_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let store = FileStore::new(&path);
    store.save(&record()).unwrap();
    // A crash mid-write leaves only a partial temporary file; the target is untouched.
    let full = fs::read(&path).unwrap();
    let temp = dir.path().join(".flags.json.1.0.tmp");
    fs::write(&temp, &full[..full.len() / 2]).unwrap();
    assert_eq!(store.load().unwrap(), Some(record()));
    assert!(temp.exists(), "too young to be known stale");
    // A target truncated by other means is a warning, not a crash, and is kept for a human.
    fs::write(&path, &full[..full.len() / 2]).unwrap();
    assert_eq!(store.load().unwrap(), None);
    assert_eq!(
        fs::read(dir.path().join("flags.json.corrupt")).unwrap(),
        &full[..full.len() / 2]
    );
}

#[test]
fn a_corrupt_file_that_cannot_be_kept_aside_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    // A non-empty directory where the `.corrupt` file goes: no rename can replace it.
    let aside = dir.path().join("flags.json.corrupt");
    fs::create_dir(&aside).unwrap();
    fs::write(aside.join("occupant"), b"x").unwrap();
    fs::write(&path, b"{not json").unwrap();
    let err = FileStore::new(&path).load().unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&aside.display().to_string()), "{text}");
    // Left where it was: the poller must not overwrite it until a load succeeds.
    assert_eq!(fs::read(&path).unwrap(), b"{not json");
}

#[test]
fn a_file_replaced_after_it_was_read_is_not_kept_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let store = FileStore::new(&path);
    fs::write(&path, b"{not json").unwrap();
    let (bytes, read) = read_bounded(&path, MAX_FILE_BYTES).unwrap().unwrap();
    let why = parse(&bytes).unwrap_err();
    // A writer saves a good record meanwhile.
    store.save(&record()).unwrap();
    assert!(!store.keep_aside(&read, &why).unwrap());
    assert!(!dir.path().join("flags.json.corrupt").exists());
    assert_eq!(store.load().unwrap(), Some(record()));
    // A file removed meanwhile (another loader kept it aside first) is no error either.
    fs::remove_file(&path).unwrap();
    assert!(!store.keep_aside(&read, &why).unwrap());
}

#[test]
fn a_file_over_64_mib_is_refused_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    // Sparse: nothing is written, and a load that read it whole would hold 64 MiB.
    fs::File::create(&path)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let err = FileStore::new(&path).load().unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "flag cache store failed: cache file {} is 67108865 bytes, over the 67108864-byte limit",
            path.display()
        )
    );
    assert_eq!(names_in(dir.path()), ["flags.json"], "left where it was");
}

#[test]
fn the_size_limit_is_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    fs::write(&path, b"0123456789").unwrap();
    let (bytes, _) = read_bounded(&path, 10).unwrap().unwrap();
    assert_eq!(bytes, b"0123456789");
    let err = read_bounded(&path, 9).unwrap_err().to_string();
    assert!(err.contains("is 10 bytes, over the 9-byte limit"), "{err}");
}

/// Files under /proc claim a length of 0 and then yield more: a file that grew after its
/// metadata was read, without a race.
#[cfg(target_os = "linux")]
#[test]
fn a_file_growing_past_the_limit_while_read_is_refused() {
    let path = Path::new("/proc/self/status");
    assert_eq!(fs::metadata(path).unwrap().len(), 0);
    let err = read_bounded(path, 16).unwrap_err().to_string();
    assert!(
        err.contains("/proc/self/status grew past the 16-byte limit"),
        "{err}"
    );
}

#[test]
fn stale_temp_files_are_removed_and_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let old = STALE_TEMP_AGE + Duration::from_secs(60);
    let young = STALE_TEMP_AGE - Duration::from_secs(60);
    let stale = [
        ".flags.json.41.9f3a2c0d11e4b7a5.0.tmp",
        ".flags.json.41.7.tmp", // the name earlier versions gave
    ];
    let kept = [
        ".flags.json.42.00aa00aa00aa00aa.3.tmp", // young: a writer may be at work
        ".flags.json.bak.41.7.tmp",              // a sibling file's, not ours
        ".other.json.41.7.tmp",
        ".flags.json.41.tmp",
        "flags.json.41.7.tmp",
    ];
    for name in stale.iter().chain(&kept) {
        fs::write(dir.path().join(name), b"partial").unwrap();
        backdate(&dir.path().join(name), old);
    }
    backdate(&dir.path().join(kept[0]), young);
    // A directory with a temporary file's name is not ours to remove either.
    let a_dir = ".flags.json.43.1.tmp";
    fs::create_dir(dir.path().join(a_dir)).unwrap();

    let store = FileStore::new(&path);
    assert_eq!(store.load().unwrap(), None, "with no target");
    let mut expected: Vec<&str> = kept.iter().copied().chain([a_dir]).collect();
    expected.sort_unstable();
    assert_eq!(names_in(dir.path()), expected);

    // Also beside a target, which loads.
    store.save(&record()).unwrap();
    let leftover = dir.path().join(stale[0]);
    fs::write(&leftover, b"partial").unwrap();
    backdate(&leftover, old);
    assert_eq!(store.load().unwrap(), Some(record()));
    assert!(!leftover.exists());
    assert!(dir.path().join(kept[0]).exists());
}

#[test]
fn a_temp_file_modified_in_the_future_is_not_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".flags.json.1.2.tmp");
    let file = fs::File::create(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    let now = SystemTime::now();
    assert!(!is_stale(&file.metadata().unwrap(), now));
    assert!(is_stale(
        &file.metadata().unwrap(),
        now + Duration::from_secs(3600) + STALE_TEMP_AGE
    ));
}

#[test]
fn temp_names_are_unique_and_match_the_cleanup_pattern() {
    let store = FileStore::new("/somewhere/flags.json");
    let (a, b) = (store.temp_path(), store.temp_path());
    assert_ne!(a, b);
    for temp in [&a, &b] {
        assert_eq!(temp.parent(), Some(Path::new("/somewhere")));
        let name = temp.file_name().unwrap().to_str().unwrap();
        let prefix = format!(".flags.json.{}.", std::process::id());
        assert!(name.starts_with(&prefix), "{name}");
        assert!(is_temp_name("flags.json", name), "{name}");
        // pid, 16 random hex digits, counter.
        let middle = &name[".flags.json.".len()..name.len() - ".tmp".len()];
        let parts: Vec<_> = middle.split('.').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_eq!(parts[1].len(), 16, "{name}");
    }
}

#[test]
fn create_private_makes_a_new_owner_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".flags.json.1.2.tmp");
    create_private(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A file already there, even one of ours, is never reused.
    let err = create_private(&path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
}

#[cfg(unix)]
#[test]
fn a_symlink_planted_at_the_temp_name_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let planted = dir.path().join(".flags.json.1.2.tmp");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let dangling = dir.path().join(".flags.json.1.3.tmp");
    let nowhere = dir.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();

    for link in [&planted, &dangling] {
        let err = create_private(link).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }
    // Through a save: it fails, and neither the link, its target nor the record is touched.
    let store = FileStore::new(&path);
    let bytes = serde_json::to_vec(&record()).unwrap();
    for link in [&planted, &dangling] {
        let err = store.replace_via(link, &bytes).unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{err:?}");
        assert!(fs::symlink_metadata(link).unwrap().is_symlink());
    }
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(!nowhere.exists());
    assert!(!path.exists());
}

/// A failing fsync of a directory cannot be provoked portably (it takes a faulty disk or a
/// fault-injecting file system, and these tests run as root, so permissions do not stop the
/// open either); a directory that cannot be opened takes the same path to the caller.
#[cfg(unix)]
#[test]
fn a_directory_that_cannot_be_synced_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    sync_dir(dir.path()).unwrap();
    let gone = dir.path().join("gone");
    let err = sync_dir(&gone).unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "flag cache store failed: could not sync directory {} after replacing the cache file: ",
            gone.display()
        )),
        "{text}"
    );
}

#[test]
fn a_bare_file_name_syncs_the_current_directory() {
    assert_eq!(parent_dir(Path::new("flags.json")), Path::new("."));
    assert_eq!(parent_dir(Path::new("/a/flags.json")), Path::new("/a"));
}

#[test]
fn unreadable_path_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be cannot be read as a file.
    let store = FileStore::new(dir.path());
    assert!(matches!(store.load(), Err(Error::Store { .. })));
    assert!(matches!(store.save(&record()), Err(Error::Store { .. })));
    assert!(dir.path().is_dir(), "nothing was moved aside");
}
