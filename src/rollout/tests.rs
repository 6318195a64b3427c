//! Vectors computed independently with Python:
//! `int.from_bytes(hashlib.sha256((id + name).encode()).digest(), "big") * 10**6 // (2**256 - 1) / 10**6`

use super::*;
use serde_json::json;

fn identity(profile: Option<&str>, metrics: Option<&str>) -> Identity {
    Identity {
        profile_id: profile.map(str::to_owned),
        metrics_id: metrics.map(str::to_owned),
        ..Identity::default()
    }
}

fn with_version(version: &str) -> Identity {
    Identity {
        client_version: Some((version.to_owned(), parse_version(version).unwrap())),
        ..Identity::default()
    }
}

/// Processes `{name: value}` and returns what is served for `name` (outer `None`: not served at
/// all; inner `None`: hidden) and its group.
fn one(name: &str, value: Value, identity: &Identity) -> (Option<Option<Value>>, Option<String>) {
    let mut raw = Map::new();
    raw.insert(name.to_owned(), value);
    let processed = process(&Arc::new(raw), identity);
    let served = processed
        .served()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.cloned());
    (served, processed.groups.get(name).cloned())
}

fn served(name: &str, value: Value, identity: &Identity) -> Option<Value> {
    one(name, value, identity).0.expect("flag served").clone()
}

#[test]
fn threshold_matches_python_hashlib() {
    let vectors = [
        ("f0a1b2c3-d4e5-4f60-8a9b-0c1d2e3f4a5b", "rollout", 0.604488),
        ("0x1234abcd", "checkout-v2", 0.8598),
        ("user-42", "newUI", 0.861312),
        ("Ünïcode-id", "flag:with:colons", 0.989615),
        ("", "x", 0.177506),
        (
            "123e4567-e89b-12d3-a456-426614174000",
            "perps-enabled",
            0.621427,
        ),
        // No case change: "ABC" + "abc" is hashed as written.
        ("ABC", "abc", 0.530375),
    ];
    for (id, name, expected) in vectors {
        assert_eq!(threshold(id, name), expected, "{id:?} + {name:?}");
    }
}

#[test]
fn threshold_edges_are_zero_and_one() {
    assert_eq!(threshold_of_digest(&[0; 32]), 0.0);
    assert_eq!(threshold_of_digest(&[0xff; 32]), 1.0);
    let mut below_max = [0xff; 32];
    below_max[31] = 0xfe;
    assert_eq!(threshold_of_digest(&below_max), 0.999999);
    let mut half = [0; 32];
    half[0] = 0x80;
    assert_eq!(threshold_of_digest(&half), 0.5);
    let mut smallest = [0; 32];
    smallest[31] = 1;
    assert_eq!(threshold_of_digest(&smallest), 0.0);
}

fn rollout(limits: &[(&str, f64, Value)]) -> Value {
    Value::Array(
        limits
            .iter()
            .map(|(name, limit, value)| {
                json!({"name": name, "scope": {"type": "threshold", "value": limit}, "value": value})
            })
            .collect(),
    )
}

#[test]
fn selection_takes_the_first_entry_at_or_above_the_threshold() {
    // user-42 + newUI = 0.861312
    let id = identity(Some("user-42"), None);
    let groups = rollout(&[
        ("low", 0.5, json!("a")),
        ("just-below", 0.861311, json!("b")),
        ("boundary", 0.861312, json!("c")),
        ("also", 1.0, json!("d")),
    ]);
    let (value, group) = one("newUI", groups, &id);
    assert_eq!(value, Some(Some(json!("c"))));
    assert_eq!(group.as_deref(), Some("boundary"));
}

#[test]
fn no_match_no_id_or_no_scope_leaves_the_array_unchanged() {
    let groups = rollout(&[("a", 0.1, json!(1)), ("b", 0.2, json!(2))]);
    // 0.861312 is above every limit.
    let (value, group) = one("newUI", groups.clone(), &identity(Some("user-42"), None));
    assert_eq!(value, Some(Some(groups.clone())));
    assert_eq!(group, None);
    // No id, or an empty one given as none, to segment by.
    assert_eq!(
        served("newUI", groups.clone(), &identity(None, None)),
        Some(groups)
    );
    let plain = json!([1, {"name": "x", "value": 2}, "three"]);
    assert_eq!(
        served("newUI", plain.clone(), &identity(Some("user-42"), None)),
        Some(plain)
    );
}

#[test]
fn non_numeric_or_missing_scope_values_never_match() {
    let groups = json!([
        {"name": "text", "scope": {"value": "1"}, "value": "no"},
        {"name": "null-scope", "scope": null, "value": "no"},
        {"name": "no-value", "scope": {"type": "threshold"}, "value": "no"},
        {"name": "ok", "scope": {"type": "anything", "value": 1}, "value": "yes"},
    ]);
    assert_eq!(
        served("newUI", groups, &identity(Some("user-42"), None)),
        Some(json!("yes"))
    );
}

#[test]
fn selected_entry_without_value_hides_the_flag_but_keeps_its_group() {
    let groups = json!([{"name": "ghost", "scope": {"value": 1}}]);
    let (value, group) = one("newUI", groups, &identity(Some("user-42"), None));
    assert_eq!(value, Some(None));
    assert_eq!(group.as_deref(), Some("ghost"));
}

#[test]
fn group_is_recorded_only_for_a_non_empty_string_name() {
    for name in [json!(""), json!(7), Value::Null] {
        let groups = json!([{"name": name, "scope": {"value": 1}, "value": true}]);
        let (value, group) = one("newUI", groups, &identity(Some("user-42"), None));
        assert_eq!(value, Some(Some(json!(true))));
        assert_eq!(group, None, "name {name}");
    }
    let selected_null = json!([{"scope": {"value": 1}, "value": null}]);
    assert_eq!(
        one("newUI", selected_null, &identity(Some("user-42"), None)).0,
        Some(Some(Value::Null)),
        "a selected null is served as null"
    );
}

#[test]
fn metrics_flags_segment_by_the_metrics_id() {
    // 0x1234abcd + checkout-v2 = 0.8598; user-42 + checkout-v2 = 0.065814.
    assert_eq!(threshold("user-42", "checkout-v2"), 0.065814);
    let groups = rollout(&[
        ("low", 0.5, json!("profile")),
        ("high", 1.0, json!("metrics")),
    ]);
    let mut id = identity(Some("user-42"), Some("0x1234abcd"));
    assert_eq!(
        served("checkout-v2", groups.clone(), &id),
        Some(json!("profile"))
    );
    id.metrics_flags.insert("checkout-v2".into());
    assert_eq!(
        served("checkout-v2", groups.clone(), &id),
        Some(json!("metrics"))
    );
    // A metrics flag without a metrics id has nothing to segment by.
    id.metrics_id = None;
    assert_eq!(served("checkout-v2", groups.clone(), &id), Some(groups));
}

#[test]
fn explicit_targeting_ignores_case_and_whitespace_and_wins_over_thresholds() {
    let groups = json!([
        {"name": "everyone", "scope": {"value": 1}, "value": "all"},
        {"name": "qa", "scope": {"value": 0}, "value": "qa", "metaMetricsIds": ["  0xABCDEF "]},
    ]);
    // Targeting needs only the metrics id, whatever metaMetricsFlags says, even without a
    // profile id to segment by.
    let (value, group) = one("newUI", groups.clone(), &identity(None, Some("0xabcdef\t")));
    assert_eq!(value, Some(Some(json!("qa"))));
    assert_eq!(group.as_deref(), Some("qa"));
    let (value, _) = one("newUI", groups, &identity(Some("user-42"), Some("0xother")));
    assert_eq!(value, Some(Some(json!("all"))));
}

#[test]
fn malformed_targeting_lists_are_skipped() {
    let groups = json!([
        {"name": "string", "scope": {"value": 0}, "value": 1, "metaMetricsIds": "0xabc"},
        {"name": "numbers", "scope": {"value": 0}, "value": 2, "metaMetricsIds": [7, null, {"id": "0xabc"}]},
        {"name": "no-scope", "value": 3, "metaMetricsIds": ["0xabc"]},
        {"name": "match", "scope": {"value": 0}, "value": 4, "metaMetricsIds": [1, "0xABC"]},
    ]);
    let (value, group) = one("newUI", groups, &identity(None, Some("0xabc")));
    assert_eq!(value, Some(Some(json!(4))));
    assert_eq!(group.as_deref(), Some("match"));
}

fn versions(entries: Value) -> Value {
    json!({"versions": entries, "ignored": "keys beside versions"})
}

#[test]
fn versions_pick_the_highest_at_or_below_the_client() {
    let flag = versions(json!({"13.0.0": "a", "13.2.0": "b", "14.0.0": "c"}));
    assert_eq!(
        served("f", flag.clone(), &with_version("13.2.0")),
        Some(json!("b"))
    );
    assert_eq!(
        served("f", flag.clone(), &with_version("13.5.1")),
        Some(json!("b"))
    );
    assert_eq!(
        served("f", flag.clone(), &with_version("99.0.0")),
        Some(json!("c"))
    );
    // Below every version: the flag is not served.
    assert_eq!(one("f", flag, &with_version("12.9.9")).0, None);
    assert_eq!(
        one("f", versions(json!({})), &with_version("1.0.0")).0,
        None
    );
}

#[test]
fn versions_follow_semver_precedence_and_node_semver_syntax() {
    let flag = versions(json!({
        "13.1.0-beta.2": "beta2",
        "13.1.0-beta.10": "beta10",
        " v13.0.0 ": "thirteen",
    }));
    assert_eq!(
        served("f", flag.clone(), &with_version("13.1.0")),
        Some(json!("beta10"))
    );
    assert_eq!(
        served("f", flag.clone(), &with_version("13.1.0-beta.3")),
        Some(json!("beta2"))
    );
    assert_eq!(
        served("f", flag, &with_version("v13.0.5")),
        Some(json!("thirteen"))
    );
    // Same precedence but other build metadata is not the same version...
    let built = versions(json!({"13.1.0+b": "built"}));
    assert_eq!(one("f", built.clone(), &with_version("13.1.0")).0, None);
    // ...while the identical text is.
    assert_eq!(
        served("f", built, &with_version("13.1.0+b")),
        Some(json!("built"))
    );
}

#[test]
fn invalid_version_keys_make_an_ordinary_value() {
    for flag in [
        versions(json!({"13.0.0": 1, "latest": 2})),
        versions(json!({"13.0": 1})),
        versions(json!({"01.0.0": 1})),
        json!({"versions": [1, 2]}),
        json!({"versions": null}),
    ] {
        assert_eq!(
            served("f", flag.clone(), &with_version("13.0.0")),
            Some(flag)
        );
    }
}

#[test]
fn without_a_client_version_version_flags_are_served_as_sent() {
    let flag = versions(json!({"1.0.0": true}));
    assert_eq!(served("f", flag.clone(), &Identity::default()), Some(flag));
}

#[test]
fn nulls_are_dropped_and_selections_are_not_resolved_twice() {
    assert_eq!(one("f", Value::Null, &with_version("1.0.0")).0, None);
    let selects_null = versions(json!({"1.0.0": null}));
    assert_eq!(one("f", selects_null, &with_version("1.0.0")).0, None);
    // A selected version value that is itself a version flag is served as it is.
    let nested = versions(json!({"1.0.0": {"versions": {"0.1.0": "inner"}}}));
    assert_eq!(
        served("f", nested, &with_version("1.0.0")),
        Some(json!({"versions": {"0.1.0": "inner"}}))
    );
    // A selected threshold array is processed.
    let mut id = with_version("1.0.0");
    id.profile_id = Some("user-42".into());
    let gated_rollout = versions(json!({"1.0.0": rollout(&[("all", 1.0, json!("on"))])}));
    let (value, group) = one("newUI", gated_rollout, &id);
    assert_eq!(value, Some(Some(json!("on"))));
    assert_eq!(group.as_deref(), Some("all"));
}

#[test]
fn version_parsing_matches_node_semver_valid() {
    for good in [
        "1.2.3",
        "v1.2.3",
        "  1.2.3\n",
        "1.2.3-beta.2+build.7",
        "9007199254740991.0.0",
    ] {
        assert!(parse_version(good).is_some(), "{good:?}");
    }
    for bad in [
        "1.2",
        "V1.2.3",
        "vv1.2.3",
        "1.2.3-01",
        "9007199254740992.0.0",
        "",
        "x",
    ] {
        assert!(parse_version(bad).is_none(), "{bad:?}");
    }
    assert!(parse_version(&format!("1.2.3-{}", "a".repeat(300))).is_none());
}

#[test]
fn resolved_names_the_rule_that_chose_each_value() {
    let identity = Identity {
        profile_id: Some("user-42".to_owned()),
        metrics_id: Some("MM-1".to_owned()),
        client_version: Some(("13.2.0".to_owned(), parse_version("13.2.0").unwrap())),
        ..Identity::default()
    };
    let raw = json!({
        "plain": true,
        "gated": versions(json!({"13.0.0": "a", "14.0.0": "b"})),
        "gated_rollout": versions(json!({"13.0.0": rollout(&[("all", 1.0, json!("on"))])})),
        "split": rollout(&[("all", 1.0, json!(1))]),
        "targeted": [
            {"name": "vip", "scope": {"value": 0.0}, "metaMetricsIds": [" mm-1 "], "value": 2},
            {"name": "rest", "scope": {"value": 1.0}, "value": 3}
        ],
        "hidden": [{"name": "h", "scope": {"value": 1.0}}],
    });
    let processed = process(&Arc::new(raw.as_object().unwrap().clone()), &identity);
    let rules: Vec<(&str, Option<&Value>, Option<&Rule>)> = processed.resolved().collect();
    let version = Rule::Version("13.0.0".to_owned());
    assert_eq!(
        rules,
        vec![
            ("gated", Some(&json!("a")), Some(&version)),
            ("gated_rollout", Some(&json!("on")), Some(&Rule::Threshold)),
            ("hidden", None, None),
            ("plain", Some(&json!(true)), None),
            ("split", Some(&json!(1)), Some(&Rule::Threshold)),
            ("targeted", Some(&json!(2)), Some(&Rule::Targeting)),
        ]
    );
    let served: Vec<_> = processed.served().collect();
    let expected: Vec<_> = rules.iter().map(|(n, v, _)| (*n, *v)).collect();
    assert_eq!(served, expected);
}
