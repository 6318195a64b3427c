//! Pre-resolved flag keys: the name's hash computed once, the flag's slot remembered.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::snapshot::Flag;
use crate::table::{hash_name, FlagMap, ABSENT, MAX_CACHED_ID, SLOT_BITS};

/// A flag name prepared for the hottest reads: its hash is computed once, and the flag's slot is
/// remembered, so that a read through the key neither hashes nor compares the name.
///
/// A key is valid for any [`Snapshot`](crate::Snapshot) and any [`Flags`](crate::Flags) handle.
/// It remembers where its flag sits in the last flag set it was read from; snapshots that serve
/// the same flag names in the same order share that arrangement, so a refresh that only changes
/// values keeps the key resolved. When the set of names changes, the next read falls back to one
/// hashed lookup and remembers the new place (absence is remembered too). The memory is a single
/// atomic word: reads take `&self`, never lock, never allocate, and a key may be shared across
/// threads (in a `static`, an `Arc`, or a struct field).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flags = flagpole::Flags::builder()
///     .default_flag("checkout-v2", true)
///     .enabled(false)
///     .build()
///     .unwrap();
/// let checkout = flags.key("checkout-v2"); // once, at start-up
/// assert_eq!(flags.get_bool_key(&checkout), Some(true)); // on every request
/// assert_eq!(flags.snapshot().get_bool_key(&checkout), Some(true));
/// assert_eq!(flags.get_i64_key(&checkout), None); // wrong type
/// # }
/// ```
///
/// One key read against handles whose flag sets differ keeps re-resolving (correct, but a hashed
/// lookup each time); give each handle its own keys in that case.
pub struct FlagKey {
    name: Box<str>,
    hash: u64,
    /// `layout id << SLOT_BITS | slot` of the last resolution, `ABSENT` as the slot when the
    /// flag was missing; 0 before the first read (no layout has id 0).
    cached: AtomicU64,
}

impl FlagKey {
    /// A key for the flag called `name`. Cheap, but not free (it copies and hashes the name):
    /// make keys once and keep them.
    pub fn new(name: &str) -> Self {
        FlagKey {
            name: name.into(),
            hash: hash_name(name),
            cached: AtomicU64::new(0),
        }
    }

    /// The flag's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's flag in `map`: one comparison and one index when the key already knows `map`'s
    /// layout, else one hashed lookup whose answer is remembered.
    #[inline]
    pub(crate) fn find<'a>(&self, map: &'a FlagMap) -> Option<&'a Flag> {
        let id = map.layout_id();
        // Relaxed is enough: the word is self-contained, and a layout id never changes meaning.
        let cached = self.cached.load(Ordering::Relaxed);
        if cached >> SLOT_BITS == id {
            let slot = cached & ABSENT;
            if slot == ABSENT {
                return None;
            }
            return map.slot(slot as usize);
        }
        self.resolve(map, id)
    }

    #[cold]
    #[inline(never)]
    fn resolve<'a>(&self, map: &'a FlagMap, id: u64) -> Option<&'a Flag> {
        let found = map.layout().find_with_hash(&self.name, self.hash);
        let slot = match found {
            Some(slot) => slot as u64,
            None => ABSENT,
        };
        // Ids or slots too large to pack are simply not remembered.
        if id < MAX_CACHED_ID && (found.is_none() || slot < ABSENT) {
            self.cached.store(id << SLOT_BITS | slot, Ordering::Relaxed);
        }
        found.and_then(|slot| map.slot(slot))
    }
}

impl Clone for FlagKey {
    fn clone(&self) -> Self {
        FlagKey {
            name: self.name.clone(),
            hash: self.hash,
            cached: AtomicU64::new(self.cached.load(Ordering::Relaxed)),
        }
    }
}

impl fmt::Debug for FlagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FlagKey").field(&self.name).finish()
    }
}

impl From<&str> for FlagKey {
    fn from(name: &str) -> Self {
        FlagKey::new(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Flag, Origin};
    use serde_json::json;

    fn map(names: &[&str]) -> FlagMap {
        let mut map = FlagMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            map.insert((*name).into(), Flag::new(json!(i), Origin::Remote));
        }
        map
    }

    fn cached(key: &FlagKey) -> (u64, u64) {
        let word = key.cached.load(Ordering::Relaxed);
        (word >> SLOT_BITS, word & ABSENT)
    }

    #[test]
    fn resolves_once_per_layout_and_remembers_absence() {
        let a = map(&["x", "y", "z"]);
        let key = FlagKey::new("y");
        assert_eq!(cached(&key), (0, 0));
        assert_eq!(key.find(&a).unwrap().value, json!(1));
        assert_eq!(cached(&key), (a.layout_id(), 1));
        assert_eq!(key.find(&a).unwrap().value, json!(1));

        // Another order: re-resolved.
        let b = map(&["y", "x"]);
        assert_eq!(key.find(&b).unwrap().value, json!(0));
        assert_eq!(cached(&key), (b.layout_id(), 0));

        let missing = FlagKey::new("w");
        assert!(missing.find(&a).is_none());
        assert_eq!(cached(&missing), (a.layout_id(), ABSENT));
        assert!(missing.find(&a).is_none());
    }

    #[test]
    fn shared_layout_keeps_the_key_resolved() {
        let a = map(&["x", "y"]);
        let mut b = FlagMap::with_capacity(2);
        b.insert("x".into(), Flag::new(json!("new x"), Origin::Remote));
        b.insert("y".into(), Flag::new(json!("new y"), Origin::Remote));
        let key = FlagKey::new("y");
        key.find(&a);
        assert!(b.share_layout(&a));
        let before = key.cached.load(Ordering::Relaxed);
        assert_eq!(key.find(&b).unwrap().value, json!("new y"));
        assert_eq!(
            key.cached.load(Ordering::Relaxed),
            before,
            "no re-resolution"
        );
    }

    #[test]
    fn a_name_added_later_is_found_despite_a_remembered_absence() {
        let mut a = map(&["x"]);
        let key = FlagKey::new("late");
        assert!(key.find(&a).is_none());
        a.insert("late".into(), Flag::new(json!(true), Origin::Remote));
        assert_eq!(key.find(&a).unwrap().value, json!(true));
    }

    #[test]
    fn stale_or_unpackable_words_fall_back_to_a_lookup() {
        let a = map(&["x", "y"]);
        let key = FlagKey::new("y");
        // A slot past the end under the right id (cannot happen, but must not panic).
        key.cached
            .store(a.layout_id() << SLOT_BITS | 7, Ordering::Relaxed);
        assert!(key.find(&a).is_none());
        // A word for another layout: resolved again.
        key.cached.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(key.find(&a).unwrap().value, json!(1));
        assert_eq!(key.clone().find(&a).unwrap().value, json!(1));
        assert_eq!(format!("{key:?}"), "FlagKey(\"y\")");
    }
}
