use super::*;
use serde_json::json;

fn remote(flags: &Map<String, Value>) -> RemoteLayer {
    RemoteLayer {
        processed: Arc::new(crate::rollout::process(
            &Arc::new(flags.clone()),
            &Default::default(),
        )),
        source: Source::Network,
        cache_timestamp: 42,
        etag: Some("\"e\"".into()),
    }
}

fn build(remote: Option<RemoteLayer>, defaults: &HashMap<String, Value>) -> Snapshot {
    Snapshot::build(defaults, remote.as_ref(), [&Map::new(), &Map::new()])
}

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn typed_reads_and_wrong_types() {
    let flags =
        map(json!({"b": true, "i": 7, "f": 2.5, "s": "on", "o": {"k": [1, 2]}, "big": 1e300}));
    let s = build(Some(remote(&flags)), &HashMap::new());
    assert_eq!(s.get_bool("b"), Some(true));
    assert_eq!(s.get_i64("i"), Some(7));
    assert_eq!(s.get_f64("i"), Some(7.0));
    assert_eq!(s.get_f64("f"), Some(2.5));
    assert_eq!(s.get_i64("f"), None);
    assert_eq!(s.get_i64("big"), None);
    assert_eq!(s.get_str("s").as_deref(), Some("on"));
    assert_eq!(s.get_bool("s"), None);
    assert_eq!(s.get_str("b"), None);
    assert_eq!(
        s.get_as::<HashMap<String, Vec<u8>>>("o").unwrap()["k"],
        vec![1, 2]
    );
    assert_eq!(s.get_as::<u8>("s"), None);
    assert_eq!(s.get("missing"), None);
    assert_eq!(s.names(), vec!["b", "big", "f", "i", "o", "s"]);
    assert_eq!(s.source(), Source::Network);
    assert_eq!(s.cache_timestamp(), Some(42));
    assert_eq!(s.etag(), Some("\"e\""));
}

#[test]
fn defaults_fill_only_missing_names() {
    let flags = map(json!({"a": 1}));
    let defaults: HashMap<String, Value> =
        [("a".into(), json!(0)), ("b".into(), json!("d"))].into();
    let s = build(Some(remote(&flags)), &defaults);
    assert_eq!(s.get_i64("a"), Some(1));
    assert_eq!(s.get_str("b").as_deref(), Some("d"));
    assert!(!s.is_default("a"));
    assert!(s.is_default("b"));
    let s = build(None, &defaults);
    assert!(s.is_default("a"));
    assert_eq!(s.get_i64("a"), Some(0));
    assert_eq!(s.source(), Source::Defaults);
    assert_eq!(s.cache_timestamp(), None);
    let s = build(None, &HashMap::new());
    assert!(s.is_empty());
}

#[test]
fn same_content_ignores_timestamp_not_source() {
    let flags = map(json!({"a": 1}));
    let a = build(Some(remote(&flags)), &HashMap::new());
    let mut r = remote(&flags);
    r.cache_timestamp = 99;
    r.etag = None;
    assert!(a.same_content(&build(Some(r.clone()), &HashMap::new())));
    r.source = Source::Cache;
    assert!(!a.same_content(&build(Some(r), &HashMap::new())));
    let other = map(json!({"a": 2}));
    assert!(!a.same_content(&build(Some(remote(&other)), &HashMap::new())));
}
