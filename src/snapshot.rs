//! The immutable flag set that readers see.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::entry::{Entry, Origin, Scalar};
use crate::flag::{Flag, FlagValue};
use crate::rollout::Processed;
pub use crate::source::Source;
pub(crate) use crate::table::FlagMap;
use crate::table::Layout;

/// The remote flags as served (already processed), with their provenance: the remote layer of a
/// snapshot.
#[derive(Debug, Clone)]
pub(crate) struct RemoteLayer {
    pub(crate) processed: Arc<Processed>,
    pub(crate) source: Source,
    pub(crate) cache_timestamp: u64,
    pub(crate) etag: Option<String>,
}

// `FlagMap` (src/table.rs): the map is built once per publish and read millions of times, so
// names get a short inline hash (foldhash past 32 bytes) and every flag gets a slot that a
// `Flag` can remember; keys come from the configured flag service, not from end users.

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
/// assert_eq!(view.get_str("checkout"), Some("v2".into()));
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
    /// The remote flags as the server sent them, before processing (for the relay).
    raw: Option<Arc<Map<String, Value>>>,
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
            raw: None,
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
                let flag = Entry::new(value.clone(), Origin::Default);
                flags.insert(name.as_str().into(), flag);
            }
        }
        for (name, value) in remote.iter().flat_map(|r| r.processed.served()) {
            if let Some(value) = value {
                let flag = Entry::new(value.clone(), Origin::Remote);
                flags.insert(name.into(), flag);
            }
        }
        for (name, value) in overrides.into_iter().flatten() {
            let flag = Entry::new(value.clone(), Origin::Override);
            flags.insert(name.as_str().into(), flag);
        }
        match remote {
            Some(remote) => Snapshot {
                flags,
                source: remote.source,
                cache_timestamp: Some(remote.cache_timestamp),
                etag: remote.etag.clone(),
                groups: remote.processed.groups.clone(),
                raw: Some(Arc::clone(remote.processed.raw())),
            },
            None => Snapshot {
                flags,
                ..Snapshot::default()
            },
        }
    }

    /// The remote flags as the server sent them, before MetaMask's processing; `None` while
    /// no remote flags are served.
    #[cfg_attr(not(feature = "relay"), allow(dead_code))]
    pub(crate) fn raw_remote(&self) -> Option<&Arc<Map<String, Value>>> {
        self.raw.as_ref()
    }

    /// True when a subscriber would see no difference: same values, same source. The timestamp
    /// and etag are bookkeeping and do not count.
    pub(crate) fn same_content(&self, other: &Snapshot) -> bool {
        self.source == other.source && self.flags == other.flags && self.groups == other.groups
    }

    #[inline]
    fn entry(&self, name: &str) -> Option<&Entry> {
        self.flags.get(name)
    }

    /// The flag's scalar reading by name (`Scalar::None` when it is not a boolean or a number);
    /// `None` when absent.
    #[inline]
    pub(crate) fn scalar(&self, name: &str) -> Option<Scalar> {
        self.entry(name).map(|entry| entry.scalar)
    }

    /// The flag's JSON value, borrowed from this snapshot: [`get`](Self::get) without the clone.
    /// Only a held snapshot can lend a value, so this read has no twin on
    /// [`Flags`](crate::Flags).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("sizes", serde_json::json!([1, 2, 3]))
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// let view = flags.snapshot();
    /// let sizes = view.get_ref("sizes").and_then(|v| v.as_array()).map_or(0, Vec::len);
    /// assert_eq!(sizes, 3);
    /// # }
    /// ```
    pub fn get_ref(&self, name: &str) -> Option<&Value> {
        self.entry(name).map(|f| &f.value)
    }

    /// The served value of a typed [`Flag`], or the `Flag`'s default when the flag is missing
    /// or of another type: the fastest read, with no hashing once the `Flag` knows this flag set.
    /// The same read as [`Flags::value`](crate::Flags::value), on this one view.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use flagpole::Flag;
    ///
    /// static CHECKOUT: Flag<bool> = Flag::new("new-checkout", false);
    /// static MAX_ITEMS: Flag<i64> = Flag::new("max-items", 10);
    ///
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("new-checkout", true)
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// let view = flags.snapshot(); // both reads agree with each other
    /// assert_eq!((view.value(&CHECKOUT), view.value(&MAX_ITEMS)), (true, 10));
    /// # }
    /// ```
    #[inline]
    pub fn value<T: FlagValue>(&self, flag: &Flag<T>) -> T::Output {
        flag.read(&self.flags)
    }

    /// The flag's JSON value, cloned; `None` when absent. Owned, as from
    /// [`Flags::get`](crate::Flags::get); to borrow it instead, use [`get_ref`](Self::get_ref).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use serde_json::json;
    ///
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("theme", json!({"accent": "teal"}))
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(flags.snapshot().get("theme"), Some(json!({"accent": "teal"})));
    /// # }
    /// ```
    pub fn get(&self, name: &str) -> Option<Value> {
        self.entry(name).map(|f| f.value.clone())
    }

    /// The flag as a boolean; `None` when absent or not a boolean.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("beta", true)
    ///     .default_flag("max", 3)
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// let view = flags.snapshot();
    /// assert_eq!(view.get_bool("beta"), Some(true));
    /// assert_eq!((view.get_i64("max"), view.get_f64("max")), (Some(3), Some(3.0)));
    /// assert_eq!(view.get_bool("max"), None); // another type
    /// # }
    /// ```
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        self.entry(name)?.scalar.as_bool()
    }

    /// The flag as an integer; `None` when absent, not a number, fractional or out of range.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.entry(name)?.scalar.as_i64()
    }

    /// The flag as a float (integers convert); `None` when absent or not a number.
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.entry(name)?.scalar.as_f64()
    }

    /// The flag as a shared string: the snapshot's own copy, handed out without copying the
    /// text; `None` when absent or not a string.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder().default_flag("banner", "hi").enabled(false).build().unwrap();
    /// assert_eq!(flags.snapshot().get_str("banner").as_deref(), Some("hi"));
    /// # }
    /// ```
    pub fn get_str(&self, name: &str) -> Option<Arc<str>> {
        self.entry(name)?.text.clone()
    }

    /// The flag deserialized into `T`; `None` when absent or of another shape.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("sizes", serde_json::json!([1, 2]))
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(flags.snapshot().get_as::<Vec<u8>>("sizes"), Some(vec![1, 2]));
    /// # }
    /// ```
    pub fn get_as<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        T::deserialize(&self.entry(name)?.value).ok()
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

    /// The flags served from local overrides (the builder's and those set with
    /// [`Flags::set_override`](crate::Flags::set_override)), by name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder().enabled(false).build().unwrap();
    /// flags.set_override("theme", "dark").await.unwrap();
    /// assert_eq!(flags.snapshot().overrides()["theme"], "dark");
    /// # }
    /// ```
    pub fn overrides(&self) -> serde_json::Map<String, Value> {
        self.flags
            .iter()
            .filter(|(_, entry)| entry.origin == Origin::Override)
            .map(|(name, entry)| (name.to_string(), entry.value.clone()))
            .collect()
    }

    /// Every flag name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.flags.keys().map(|k| k.to_string()).collect();
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

    /// Every flag's scalar reading, by slot.
    pub(crate) fn scalars(&self) -> impl Iterator<Item = Scalar> + '_ {
        self.flags.iter().map(|(_, entry)| entry.scalar)
    }

    /// The flag layout (names and slots), shared by snapshots that serve the same names.
    pub(crate) fn layout(&self) -> &Arc<Layout> {
        self.flags.layout()
    }

    /// The id of the flag layout (names and slots), as [`Flag`]s remember it.
    pub(crate) fn layout_id(&self) -> u64 {
        self.flags.layout_id()
    }

    /// Takes over `previous`'s flag layout when both serve the same names in the same order, so
    /// that [`Flag`]s resolved against `previous` stay resolved. Called just before publishing.
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
mod tests;
