//! The immutable flag set that readers see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::key::FlagKey;
use crate::layers::RemoteLayer;
pub(crate) use crate::table::FlagMap;
use crate::table::Scalar;

/// Where the flags of a [`Snapshot`] came from.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flagpole::Source;
///
/// let flags = flagpole::Flags::builder().enabled(false).build().unwrap();
/// assert_eq!(flags.snapshot().source(), Source::Defaults);
/// assert_eq!(Source::Network.to_string(), "network");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Source {
    /// A successful fetch in this process (a 200, or a 304 confirming the flags held).
    Network,
    /// The persisted cache, loaded at start.
    Cache,
    /// No remote flags: only the caller's defaults (possibly none).
    Defaults,
}

impl Source {
    /// `network`, `cache` or `defaults`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Network => "network",
            Source::Cache => "cache",
            Source::Defaults => "defaults",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One flag's value plus its string form, shared so that
/// [`Flags::get_str`](crate::Flags::get_str) can hand it out without copying.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flag {
    pub(crate) value: Value,
    pub(crate) text: Option<Arc<str>>,
    /// Which layer the value comes from.
    pub(crate) origin: Origin,
    /// The boolean or number reading, worked out once at publish time.
    pub(crate) scalar: Scalar,
}

/// The layer a served value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Default,
    Remote,
    Override,
}

impl Flag {
    pub(crate) fn new(value: Value, origin: Origin) -> Self {
        let text = value.as_str().map(Arc::from);
        let scalar = Scalar::of(&value);
        Flag {
            value,
            text,
            origin,
            scalar,
        }
    }
}

// `FlagMap` (src/table.rs): the map is built once per publish and read millions of times, so
// names get a short inline hash (foldhash past 32 bytes) and every flag gets a slot that a
// `FlagKey` can remember; keys come from the configured flag service, not from end users.

/// An immutable, consistent view of every flag at one moment.
///
/// Snapshots are shared as `Arc<Snapshot>` and never change; a refresh publishes a new one. Hold
/// one when several flags must agree with each other (one request, one view):
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flags = flagpole::Flags::builder()
///     .default_flag("checkout", "v2")
///     .default_flag("max-items", 50)
///     .enabled(false)
///     .build()
///     .unwrap();
/// let view = flags.snapshot();
/// assert_eq!(view.get_str("checkout"), Some("v2"));
/// assert_eq!(view.get_i64("max-items"), Some(50));
/// assert_eq!(view.source(), flagpole::Source::Defaults);
/// # }
/// ```
#[derive(Clone)]
pub struct Snapshot {
    flags: FlagMap,
    source: Source,
    cache_timestamp: Option<u64>,
    etag: Option<String>,
    groups: BTreeMap<String, String>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("source", &self.source)
            .field("cache_timestamp", &self.cache_timestamp)
            .field("etag", &self.etag)
            .field("flags", &self.to_json())
            .field("threshold_groups", &self.groups)
            .finish()
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            flags: FlagMap::default(),
            source: Source::Defaults,
            cache_timestamp: None,
            etag: None,
            groups: BTreeMap::new(),
        }
    }
}

impl Snapshot {
    /// Layers, later over earlier: defaults, the processed remote flags, then each override map.
    /// A remote flag processed to nothing hides its default too.
    pub(crate) fn build(
        defaults: &HashMap<String, Value>,
        remote: Option<&RemoteLayer>,
        overrides: [&Map<String, Value>; 2],
    ) -> Self {
        let size = defaults.len()
            + remote.map_or(0, |r| r.processed.len())
            + overrides.iter().map(|o| o.len()).sum::<usize>();
        let mut flags = FlagMap::with_capacity_and_hasher(size, Default::default());
        let hidden: HashSet<&str> = remote.iter().flat_map(|r| r.processed.hidden()).collect();
        for (name, value) in defaults {
            if !hidden.contains(name.as_str()) {
                let flag = Flag::new(value.clone(), Origin::Default);
                flags.insert(name.as_str().into(), flag);
            }
        }
        for (name, value) in remote.iter().flat_map(|r| r.processed.served()) {
            if let Some(value) = value {
                let flag = Flag::new(value.clone(), Origin::Remote);
                flags.insert(name.into(), flag);
            }
        }
        for (name, value) in overrides.into_iter().flatten() {
            let flag = Flag::new(value.clone(), Origin::Override);
            flags.insert(name.as_str().into(), flag);
        }
        match remote {
            Some(remote) => Snapshot {
                flags,
                source: remote.source,
                cache_timestamp: Some(remote.cache_timestamp),
                etag: remote.etag.clone(),
                groups: remote.processed.groups.clone(),
            },
            None => Snapshot {
                flags,
                ..Snapshot::default()
            },
        }
    }

    /// True when a subscriber would see no difference: same values, same source. The timestamp
    /// and etag are bookkeeping and do not count.
    pub(crate) fn same_content(&self, other: &Snapshot) -> bool {
        self.source == other.source && self.flags == other.flags && self.groups == other.groups
    }

    pub(crate) fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.get(name)
    }

    /// The flag's JSON value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.flags.get(name).map(|f| &f.value)
    }

    /// The flag as a boolean; `None` when absent or not a boolean.
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        self.flag(name)?.scalar.as_bool()
    }

    /// The flag as an integer; `None` when absent, not a number, fractional or out of range.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.flag(name)?.scalar.as_i64()
    }

    /// The flag as a float (integers convert); `None` when absent or not a number.
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.flag(name)?.scalar.as_f64()
    }

    /// The flag as a string slice, borrowed from the snapshot; `None` when absent or not a string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)?.as_str()
    }

    /// The flag deserialized into `T`; `None` when absent or of another shape.
    pub fn get_as<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        T::deserialize(self.get(name)?).ok()
    }

    /// Whether a flag of this name is served (from remote or defaults).
    pub fn contains(&self, name: &str) -> bool {
        self.flags.contains_key(name)
    }

    /// Whether the flag is served from the caller's defaults (see
    /// [`FlagsBuilder::default_flag`](crate::FlagsBuilder::default_flag)) rather than from the
    /// remote set; false for a name not served at all.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("beta", false)
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// let view = flags.snapshot();
    /// assert!(view.is_default("beta"));
    /// assert!(!view.is_default("missing"));
    /// # }
    /// ```
    pub fn is_default(&self, name: &str) -> bool {
        self.flags
            .get(name)
            .is_some_and(|f| f.origin == Origin::Default)
    }

    /// Whether the flag is served from a local override (the builder's or
    /// [`Flags::set_override`](crate::Flags::set_override)); false for a name not served at all.
    pub fn is_override(&self, name: &str) -> bool {
        self.flags
            .get(name)
            .is_some_and(|f| f.origin == Origin::Override)
    }

    /// Every flag name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.flags.keys().map(|k| &**k).collect();
        names.sort_unstable();
        names
    }

    /// Every flag, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        self.flags.iter().map(|(k, f)| (&**k, &f.value))
    }

    /// How many flags are served.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// True when no flag is served at all.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Where the flags came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// When the remote flags were last fetched successfully, in milliseconds since the Unix epoch;
    /// `None` when only defaults are served.
    pub fn cache_timestamp(&self) -> Option<u64> {
        self.cache_timestamp
    }

    /// The entity tag of the remote flags, if the server sent one.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// The name of the rollout group this client was placed in for a flag (the `name` of the
    /// threshold-array entry selected for it), if any. An override of the flag does not remove it.
    pub fn threshold_group(&self, name: &str) -> Option<&str> {
        self.groups.get(name).map(String::as_str)
    }

    /// Every flag's rollout group, sorted by flag name.
    pub fn threshold_groups(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.groups.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub(crate) fn flag_by_key(&self, key: &FlagKey) -> Option<&Flag> {
        key.find(&self.flags)
    }

    /// The flag's JSON value, through a pre-resolved [`FlagKey`].
    pub fn get_key(&self, key: &FlagKey) -> Option<&Value> {
        self.flag_by_key(key).map(|f| &f.value)
    }

    /// [`get_bool`](Self::get_bool) through a pre-resolved [`FlagKey`]: no hashing once the key
    /// knows this flag set.
    pub fn get_bool_key(&self, key: &FlagKey) -> Option<bool> {
        self.flag_by_key(key)?.scalar.as_bool()
    }

    /// [`get_i64`](Self::get_i64) through a pre-resolved [`FlagKey`].
    pub fn get_i64_key(&self, key: &FlagKey) -> Option<i64> {
        self.flag_by_key(key)?.scalar.as_i64()
    }

    /// [`get_f64`](Self::get_f64) through a pre-resolved [`FlagKey`].
    pub fn get_f64_key(&self, key: &FlagKey) -> Option<f64> {
        self.flag_by_key(key)?.scalar.as_f64()
    }

    /// [`get_str`](Self::get_str) through a pre-resolved [`FlagKey`].
    pub fn get_str_key(&self, key: &FlagKey) -> Option<&str> {
        self.flag_by_key(key)?.value.as_str()
    }

    /// Takes over `previous`'s flag layout when both serve the same names in the same order, so
    /// that keys resolved against `previous` stay resolved. Called just before publishing.
    pub(crate) fn share_layout(&mut self, previous: &Snapshot) -> bool {
        self.flags.share_layout(&previous.flags)
    }

    /// All flags as one JSON object, keys sorted.
    pub fn to_json(&self) -> Map<String, Value> {
        self.flags
            .iter()
            .map(|(k, f)| (k.to_string(), f.value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.get_str("s"), Some("on"));
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
        assert_eq!(s.get_str("b"), Some("d"));
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
}
