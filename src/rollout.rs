//! MetaMask's processing of raw remote flags: version-gated values, threshold rollouts and
//! explicit targeting, as the README's "MetaMask processing and local overrides" describes. It
//! runs once for each new set of remote flags, before a snapshot is built, never on a read.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

/// Who is asking: decides which version-gated value and which rollout group a flag serves.
#[derive(Debug, Clone, Default)]
pub(crate) struct Identity {
    /// The canonical segmentation id (also sent as `user=`).
    pub(crate) profile_id: Option<String>,
    pub(crate) metrics_id: Option<String>,
    /// Flags that segment by the metrics id instead of the profile id.
    pub(crate) metrics_flags: HashSet<String>,
    /// The client version as configured, and parsed.
    pub(crate) client_version: Option<(String, semver::Version)>,
}

/// The remote flags as this client serves them: the raw flags, shared, plus the few that
/// processing changed, so that building a snapshot copies each value once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Processed {
    raw: Arc<Map<String, Value>>,
    changes: HashMap<String, Change, foldhash::fast::RandomState>,
    /// The rollout group each flag's selected entry is named after.
    pub(crate) groups: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
enum Change {
    /// A version entry or rollout group was selected, by this rule.
    Replaced(Value, Rule),
    /// Not served: `null`, or no version qualifies (a default of the same name shows).
    Dropped,
    /// Not served, and its default hidden too: a selected group without a `value`.
    Hidden,
}

impl Processed {
    /// The flags as the server sent them.
    pub(crate) fn raw(&self) -> &Arc<Map<String, Value>> {
        &self.raw
    }

    /// How many flags the server sent (an upper bound on those served).
    pub(crate) fn len(&self) -> usize {
        self.raw.len()
    }

    /// The flags that hide their default.
    pub(crate) fn hidden(&self) -> impl Iterator<Item = &str> + '_ {
        self.changes
            .iter()
            .filter(|(_, change)| matches!(change, Change::Hidden))
            .map(|(name, _)| name.as_str())
    }

    /// Every flag served, in name order: `Some(value)`, or `None` for a flag that hides its
    /// default.
    pub(crate) fn served(&self) -> impl Iterator<Item = (&str, Option<&Value>)> + '_ {
        self.resolved().map(|(name, value, _)| (name, value))
    }

    /// Like [`served`](Self::served), with the rule that chose each replaced value (`None`:
    /// served as sent, or hidden). OFREP reports it as the evaluation's reason.
    pub(crate) fn resolved(
        &self,
    ) -> impl Iterator<Item = (&str, Option<&Value>, Option<&Rule>)> + '_ {
        // Most flag sets have no processed flag at all: skip the lookups then.
        let changed = |name: &String| match self.changes.is_empty() {
            true => None,
            false => self.changes.get(name),
        };
        self.raw
            .iter()
            .filter_map(move |(name, raw)| match changed(name) {
                None => Some((name.as_str(), Some(raw), None)),
                Some(Change::Replaced(value, rule)) => {
                    Some((name.as_str(), Some(value), Some(rule)))
                }
                Some(Change::Dropped) => None,
                Some(Change::Hidden) => Some((name.as_str(), None, None)),
            })
    }
}

/// Which of MetaMask's rules chose a served value that differs from the one sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The `versions` entry under this key, and no rollout after it.
    Version(String),
    /// The rollout entry whose `metaMetricsIds` lists the user's metrics id.
    Targeting,
    /// The threshold rollout entry covering the user's position.
    Threshold,
}

/// Applies versions, then explicit targeting and threshold rollouts, to every flag.
pub(crate) fn process(raw: &Arc<Map<String, Value>>, identity: &Identity) -> Processed {
    let mut out = Processed {
        raw: Arc::clone(raw),
        ..Processed::default()
    };
    for (name, sent) in raw.iter() {
        let (value, versioned) = match resolve_version(sent, identity) {
            Versioned::Unchanged => (sent, None),
            Versioned::Selected(key, value) => (value, Some(key)),
            Versioned::Dropped => {
                out.changes.insert(name.clone(), Change::Dropped);
                continue;
            }
        };
        if value.is_null() {
            out.changes.insert(name.clone(), Change::Dropped);
            continue;
        }
        let change = match select_group(name, value, identity) {
            Some((entry, rule)) => {
                if let Some(group) = entry.get("name").and_then(Value::as_str) {
                    if !group.is_empty() {
                        out.groups.insert(name.clone(), group.to_owned());
                    }
                }
                match entry.get("value") {
                    Some(value) => Change::Replaced(value.clone(), rule),
                    None => Change::Hidden,
                }
            }
            None => match versioned {
                Some(key) => Change::Replaced(value.clone(), Rule::Version(key.clone())),
                None => continue,
            },
        };
        out.changes.insert(name.clone(), change);
    }
    out
}

enum Versioned<'a> {
    /// Not a version flag (or no client version to judge it by).
    Unchanged,
    /// The entry under this key.
    Selected(&'a String, &'a Value),
    /// A version flag with no entry for this client.
    Dropped,
}

/// A value `{"versions": {semver: value, ..}}` whose keys are all versions serves the entry of the
/// highest version at or below the client's.
fn resolve_version<'a>(value: &'a Value, identity: &Identity) -> Versioned<'a> {
    let Some(versions) = value
        .as_object()
        .and_then(|o| o.get("versions"))
        .and_then(Value::as_object)
    else {
        return Versioned::Unchanged;
    };
    let Some(parsed) = versions
        .iter()
        .map(|(key, v)| parse_version(key).map(|version| (key, version, v)))
        .collect::<Option<Vec<_>>>()
    else {
        return Versioned::Unchanged;
    };
    // Without a client version nothing can be judged; the value is served as sent.
    let Some((client_raw, client)) = &identity.client_version else {
        return Versioned::Unchanged;
    };
    let mut best: Option<(&semver::Version, &String, &Value)> = None;
    for (key, version, v) in &parsed {
        // Identical text, or strictly lower: equal precedence with other build metadata is not
        // the same version.
        let qualifies = *key == client_raw || version.cmp_precedence(client) == Ordering::Less;
        if qualifies && best.is_none_or(|(b, _, _)| version.cmp_precedence(b) == Ordering::Greater)
        {
            best = Some((version, key, v));
        }
    }
    match best {
        Some((_, key, v)) => Versioned::Selected(key, v),
        None => Versioned::Dropped,
    }
}

/// The entry of a threshold array this identity selects, and by which rule; `None` leaves the
/// value as it is (not a threshold array, no id to segment by, or no entry matching).
fn select_group<'a>(
    name: &str,
    value: &'a Value,
    identity: &Identity,
) -> Option<(&'a Map<String, Value>, Rule)> {
    let entries: Vec<&Map<String, Value>> = value
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .filter(|entry| entry.contains_key("scope"))
        .collect();
    if entries.is_empty() {
        return None;
    }
    if let Some(metrics_id) = identity.metrics_id.as_deref() {
        let wanted = metrics_id.trim().to_lowercase();
        let targeted = entries.iter().find(|entry| {
            entry
                .get("metaMetricsIds")
                .and_then(Value::as_array)
                .is_some_and(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .any(|id| id.trim().to_lowercase() == wanted)
                })
        });
        if let Some(entry) = targeted {
            return Some((*entry, Rule::Targeting));
        }
    }
    let id = if identity.metrics_flags.contains(name) {
        identity.metrics_id.as_deref()
    } else {
        identity.profile_id.as_deref()
    }?;
    let threshold = threshold(id, name);
    let entry = entries.into_iter().find(|entry| {
        entry
            .get("scope")
            .and_then(|scope| scope.get("value"))
            .and_then(Value::as_f64)
            .is_some_and(|limit| threshold <= limit)
    })?;
    Some((entry, Rule::Threshold))
}

/// The user's position in a flag's rollout, in [0, 1] with six decimals: the SHA-256 of
/// `id + flag_name` as a big-endian number, scaled by 10^6 / (2^256 - 1), floored.
pub(crate) fn threshold(id: &str, flag_name: &str) -> f64 {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(id.as_bytes());
    hasher.update(flag_name.as_bytes());
    threshold_of_digest(&hasher.finalize().into())
}

/// floor(N * 10^6 / M) / 10^6 with M = 2^256 - 1, in exact integer arithmetic. Writing
/// N * 10^6 = a * 2^256 + b gives N * 10^6 = a * M + (a + b), and a + b < 2M, so the quotient is
/// a, plus one when a + b >= M.
fn threshold_of_digest(digest: &[u8; 32]) -> f64 {
    const SCALE: u128 = 1_000_000;
    let mut low = [0u64; 4];
    let mut carry: u128 = 0;
    for (i, chunk) in digest.chunks_exact(8).enumerate().rev() {
        let limb = u64::from_be_bytes(chunk.try_into().expect("8-byte chunk"));
        let product = u128::from(limb) * SCALE + carry;
        low[i] = product as u64;
        carry = product >> 64;
    }
    let a = carry as u64;
    // a + b, limb by limb from the least significant end.
    let mut sum = [0u64; 4];
    let mut add = a;
    for i in (0..4).rev() {
        let (s, carried) = low[i].overflowing_add(add);
        sum[i] = s;
        add = u64::from(carried);
    }
    let at_least_m = add == 1 || sum.iter().all(|&limb| limb == u64::MAX);
    let quotient = a + u64::from(at_least_m);
    quotient as f64 / SCALE as f64
}

/// A version string as node-semver's `valid()` reads it: surrounding whitespace and one leading
/// `v` allowed, components within JavaScript's safe integers.
pub(crate) fn parse_version(text: &str) -> Option<semver::Version> {
    const MAX_LENGTH: usize = 256;
    const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
    if text.len() > MAX_LENGTH {
        return None;
    }
    let trimmed = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let bare = trimmed.strip_prefix('v').unwrap_or(trimmed);
    let version = semver::Version::parse(bare).ok()?;
    // Larger prerelease numbers stay valid there (compared as text), so only these are checked.
    let safe = [version.major, version.minor, version.patch]
        .into_iter()
        .all(|n| n <= MAX_SAFE_INTEGER);
    safe.then_some(version)
}

#[cfg(test)]
mod tests;
