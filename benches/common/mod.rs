//! Flag sets shared by the benches: names and values shaped like a real Client Config answer.

#![allow(dead_code)] // each bench uses a part

use std::collections::HashMap;

use flagpole::{Flags, ScriptedResponse, ScriptedTransport};
use serde_json::{json, Value};

/// The name of flag `i`: long, with a common prefix, as real flag names tend to be.
pub fn name(i: usize) -> String {
    format!("feature-flag-number-{i:03}")
}

/// Flag `i`'s value: booleans, integers, strings, objects and a rollout list, in turn.
pub fn value(i: usize, version: usize) -> Value {
    match i % 5 {
        0 => json!((i + version).is_multiple_of(3)),
        1 => json!(i * 10 + version),
        2 => json!(format!("variant-{i}-{version}")),
        3 => json!({"value": i, "enabled": true, "minimumVersion": "12.3.0"}),
        _ => json!([
            {"name": "control", "scope": {"type": "threshold", "value": 0.5}, "value": false},
            {"name": "treatment", "scope": {"type": "threshold", "value": 1.0}, "value": true},
        ]),
    }
}

/// A body in the wire format (an array of single-key objects) of `count` flags.
pub fn body(count: usize, version: usize) -> Vec<u8> {
    let items: Vec<Value> = (0..count)
        .map(|i| json!({ name(i): value(i, version) }))
        .collect();
    serde_json::to_vec(&items).unwrap()
}

/// The same flags as a raw `HashMap<String, Value>`: the baseline every read is compared with.
pub fn raw(count: usize) -> HashMap<String, Value> {
    (0..count).map(|i| (name(i), value(i, 0))).collect()
}

/// The baseline set: `count` boolean flags named `feature-flag-number-N` (no padding),
/// as a body in the wire format and as the raw map.
pub fn bools_body(count: usize) -> Value {
    let items: Vec<Value> = (0..count)
        .map(|i| json!({ format!("feature-flag-number-{i}"): i % 2 == 0 }))
        .collect();
    Value::Array(items)
}

/// [`bools_body`] as a raw `HashMap<String, Value>` (std's default hasher).
pub fn bools_raw(count: usize) -> HashMap<String, Value> {
    (0..count)
        .map(|i| (format!("feature-flag-number-{i}"), json!(i % 2 == 0)))
        .collect()
}

/// A handle serving `body` (JSON in the wire format), fetched through the public API.
pub fn flags_of(body: &Value) -> Flags {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let transport = ScriptedTransport::new();
        transport.push(ScriptedResponse::json(body));
        let flags = Flags::builder().transport(transport).build().unwrap();
        flags.refresh().await.unwrap();
        flags
    })
}

/// A handle serving `count` flags, fetched through the public API (a scripted transport and one
/// refresh), as a service would hold it.
pub fn flags(count: usize) -> Flags {
    flags_of(&serde_json::from_slice(&body(count, 0)).unwrap())
}
