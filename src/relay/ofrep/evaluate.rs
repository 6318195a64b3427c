//! MetaMask's processing for one evaluation context, told in OFREP's terms: each served flag
//! becomes `{"key", "value", "reason", "variant"?}`.
//!
//! Reasons:
//! - `SPLIT`: a threshold rollout chose the value; `variant` is the group's `name` (when it has
//!   a non-empty one, as `threshold_group` reports it).
//! - `TARGETING_MATCH`: the context chose it otherwise: explicit targeting (the entry listing the
//!   `metaMetricsId`; `variant` is its group name) or the client version (`variant` is the
//!   selected `versions` key).
//! - `STATIC`: served as upstream sent it, the same for every context (a rollout array with no
//!   id to segment by included, as MetaMask serves it).
//!
//! Flags processing drops (`null`, no qualifying version) or hides (a selected group without a
//! `value`) are not evaluated: `FLAG_NOT_FOUND` for one, left out of a bulk answer.

use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::relay::sets::Params;
use crate::rollout::{self, Identity, Processed, Rule};

/// Every flag this context is served, in name order.
pub(crate) fn all(raw: &Arc<Map<String, Value>>, identity: &Identity) -> Vec<Value> {
    let processed = rollout::process(raw, identity);
    evaluations(&processed).collect()
}

/// The one flag `key`, if this context is served it.
pub(crate) fn one(raw: &Map<String, Value>, key: &str, identity: &Identity) -> Option<Value> {
    // A flag's processing depends only on its own value and name: process that one alone
    // instead of the whole set.
    let value = raw.get(key)?;
    let mut single = Map::new();
    single.insert(key.to_owned(), value.clone());
    let processed = rollout::process(&Arc::new(single), identity);
    let evaluation = evaluations(&processed).next();
    evaluation
}

fn evaluations(processed: &Processed) -> impl Iterator<Item = Value> + '_ {
    processed.resolved().filter_map(move |(key, value, rule)| {
        let value = value?;
        let group = processed.groups.get(key).map(String::as_str);
        let (reason, variant) = match rule {
            None => ("STATIC", None),
            Some(Rule::Threshold) => ("SPLIT", group),
            Some(Rule::Targeting) => ("TARGETING_MATCH", group),
            Some(Rule::Version(version)) => ("TARGETING_MATCH", Some(version.as_str())),
        };
        let mut evaluation = Map::with_capacity(4);
        evaluation.insert("key".to_owned(), Value::String(key.to_owned()));
        evaluation.insert("value".to_owned(), value.clone());
        evaluation.insert("reason".to_owned(), Value::String(reason.to_owned()));
        if let Some(variant) = variant {
            evaluation.insert("variant".to_owned(), Value::String(variant.to_owned()));
        }
        Some(Value::Object(evaluation))
    })
}

/// The bulk answer's entity tag: the set's flags (their own tag) and everything of the context
/// that processing reads, hashed; `"<16 hex digits>"`. Computed before evaluating, so that a
/// client whose answer did not change costs a hash, not a processing run.
///
/// Every part is length-prefixed (no two different inputs hash the same bytes), and the metrics
/// flags are sorted (a set has no order). The ids go into the hash only: the tag cannot be read
/// back into them short of guessing.
pub(crate) fn etag(flags_etag: &str, params: Params, identity: &Identity) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    // The answer's format: a relay that changes it changes every tag.
    part(b"ofrep-bulk-1");
    part(flags_etag.as_bytes());
    part(params.name().as_bytes());
    let optional = |text: &Option<String>| match text {
        None => Vec::new(),
        Some(text) => [b"=".as_slice(), text.as_bytes()].concat(),
    };
    part(&optional(&identity.profile_id));
    part(&optional(&identity.metrics_id));
    part(&optional(
        &identity.client_version.as_ref().map(|(raw, _)| raw.clone()),
    ));
    let mut flags: Vec<&String> = identity.metrics_flags.iter().collect();
    flags.sort();
    part(&(flags.len() as u64).to_be_bytes());
    for flag in flags {
        part(flag.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}
