//! A flag's remembered slot: the memory that lets a [`Flag`](crate::Flag) read without hashing.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::entry::Entry;
use crate::table::{FlagMap, ABSENT, MAX_CACHED_ID, SLOT_BITS};

/// Where a flag sat in the last flag table it was read from, as one atomic word:
/// `layout id << SLOT_BITS | slot`, with [`ABSENT`] as the slot when the flag was missing, and 0
/// before the first read (no layout has id 0).
///
/// Snapshots that serve the same flag names in the same order share a layout (and its id), so a
/// refresh that only changes values keeps the slot resolved. When the names change, the next read
/// falls back to one hashed lookup and remembers the new place (absence too). Reads take `&self`,
/// never lock and never allocate; the word may be shared across threads.
#[derive(Debug)]
pub(crate) struct SlotCache {
    word: AtomicU64,
}

impl SlotCache {
    pub(crate) const fn new() -> Self {
        SlotCache {
            word: AtomicU64::new(0),
        }
    }

    /// The word: `layout id << SLOT_BITS | slot`.
    #[inline]
    pub(crate) fn word(&self) -> u64 {
        self.word.load(Ordering::Relaxed)
    }

    /// The entry of `name` in `map`: one comparison and one index when the cache already knows
    /// `map`'s layout, else one hashed lookup whose answer is remembered.
    #[inline]
    pub(crate) fn find<'a>(&self, name: &str, map: &'a FlagMap) -> Option<&'a Entry> {
        let id = map.layout_id();
        // Relaxed is enough: the word is self-contained, and a layout id never changes meaning.
        let word = self.word.load(Ordering::Relaxed);
        if word >> SLOT_BITS == id {
            let slot = word & ABSENT;
            if slot == ABSENT {
                return None;
            }
            return map.slot(slot as usize);
        }
        self.resolve(name, map, id)
    }

    // Cold: the name is hashed here, once per layout, never on the hot path.
    #[cold]
    #[inline(never)]
    fn resolve<'a>(&self, name: &str, map: &'a FlagMap, id: u64) -> Option<&'a Entry> {
        let found = map.layout().find(name);
        let slot = match found {
            Some(slot) => slot as u64,
            None => ABSENT,
        };
        // Ids or slots too large to pack are simply not remembered.
        if id < MAX_CACHED_ID && (found.is_none() || slot < ABSENT) {
            self.word.store(id << SLOT_BITS | slot, Ordering::Relaxed);
        }
        found.and_then(|slot| map.slot(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Origin;
    use serde_json::json;

    fn map(names: &[&str]) -> FlagMap {
        let mut map = FlagMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            map.insert((*name).into(), Entry::new(json!(i), Origin::Remote));
        }
        map
    }

    fn cached(cache: &SlotCache) -> (u64, u64) {
        let word = cache.word.load(Ordering::Relaxed);
        (word >> SLOT_BITS, word & ABSENT)
    }

    #[test]
    fn resolves_once_per_layout_and_remembers_absence() {
        let a = map(&["x", "y", "z"]);
        let cache = SlotCache::new();
        assert_eq!(cached(&cache), (0, 0));
        assert_eq!(cache.find("y", &a).unwrap().value, json!(1));
        assert_eq!(cached(&cache), (a.layout_id(), 1));
        assert_eq!(cache.find("y", &a).unwrap().value, json!(1));

        // Another order: re-resolved.
        let b = map(&["y", "x"]);
        assert_eq!(cache.find("y", &b).unwrap().value, json!(0));
        assert_eq!(cached(&cache), (b.layout_id(), 0));

        let missing = SlotCache::new();
        assert!(missing.find("w", &a).is_none());
        assert_eq!(cached(&missing), (a.layout_id(), ABSENT));
        assert!(missing.find("w", &a).is_none());
    }

    #[test]
    fn shared_layout_keeps_the_slot_resolved() {
        let a = map(&["x", "y"]);
        let mut b = FlagMap::with_capacity(2);
        b.insert("x".into(), Entry::new(json!("new x"), Origin::Remote));
        b.insert("y".into(), Entry::new(json!("new y"), Origin::Remote));
        let cache = SlotCache::new();
        cache.find("y", &a);
        assert!(b.share_layout(&a));
        let before = cache.word.load(Ordering::Relaxed);
        assert_eq!(cache.find("y", &b).unwrap().value, json!("new y"));
        assert_eq!(
            cache.word.load(Ordering::Relaxed),
            before,
            "no re-resolution"
        );
    }

    #[test]
    fn a_name_added_later_is_found_despite_a_remembered_absence() {
        let mut a = map(&["x"]);
        let cache = SlotCache::new();
        assert!(cache.find("late", &a).is_none());
        a.insert("late".into(), Entry::new(json!(true), Origin::Remote));
        assert_eq!(cache.find("late", &a).unwrap().value, json!(true));
    }

    #[test]
    fn stale_or_unpackable_words_fall_back_to_a_lookup() {
        let a = map(&["x", "y"]);
        let cache = SlotCache::new();
        // A slot past the end under the right id (cannot happen, but must not panic).
        cache
            .word
            .store(a.layout_id() << SLOT_BITS | 7, Ordering::Relaxed);
        assert!(cache.find("y", &a).is_none());
        // A word for another layout: resolved again.
        cache.word.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(cache.find("y", &a).unwrap().value, json!(1));
    }
}
