//! The snapshot's flag table: values in a `Vec`, names in a shared, append-only [`Layout`] with a
//! small open-addressing index, so that a [`Flag`](crate::Flag) can remember a slot.
//!
//! Why not a `HashMap`: a by-name read must hash and probe anyway, but a read through a typed
//! `Flag` should not. Giving every flag a stable slot number within a layout lets a `Flag` cache
//! `(layout id, slot)` and read with one comparison and one index. Snapshots whose flag names are
//! the same (in the same order) share one layout, so `Flag`s stay resolved across publishes.

use std::hash::Hasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use foldhash::fast::FoldHasher;
use foldhash::SharedSeed;

use crate::entry::Entry;

/// Layout ids never repeat within a process; 0 means "none". Ids at or above
/// [`MAX_CACHED_ID`] are valid but never cached by keys (their packing has 40 bits for the id).
static NEXT_LAYOUT_ID: AtomicU64 = AtomicU64::new(1);

/// Bits of a key's cache word that hold the slot; the rest hold the layout id.
pub(crate) const SLOT_BITS: u32 = 24;
/// The slot value that records "absent from this layout".
pub(crate) const ABSENT: u64 = (1 << SLOT_BITS) - 1;
/// Layout ids this large are never cached (the packed word would overflow).
pub(crate) const MAX_CACHED_ID: u64 = 1 << (64 - SLOT_BITS);

fn next_layout_id() -> u64 {
    NEXT_LAYOUT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The process-wide seed of the name hash: random per process, the same for every layout.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| fastrand::u64(..))
}

/// The hash of a flag name under `seed`. Flag names are short, so names up to 32 bytes are
/// hashed inline from a few overlapping 8-byte reads with folded multiplies (the construction of
/// foldhash and rapidhash, without their general-purpose set-up); longer names go to foldhash.
/// Every byte is read, and the table compares whole names, so the hash only has to spread.
#[inline]
pub(crate) fn hash_name_with(seed: u64, name: &str) -> u64 {
    const K: [u64; 4] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    let bytes = name.as_bytes();
    let len = bytes.len();
    let seed = seed ^ (len as u64).wrapping_mul(K[3]);
    if len <= 16 {
        let (lo, hi) = if len >= 8 {
            (read8(bytes, 0), read8(bytes, len - 8))
        } else if len >= 4 {
            (read4(bytes, 0), read4(bytes, len - 4))
        } else if len > 0 {
            let (first, mid, last) = (bytes[0], bytes[len / 2], bytes[len - 1]);
            (u64::from(first), u64::from(mid) << 8 | u64::from(last))
        } else {
            (0, 0)
        };
        folded_multiply(lo ^ seed ^ K[0], hi ^ K[1])
    } else if len <= 32 {
        let a = folded_multiply(read8(bytes, 0) ^ seed ^ K[0], read8(bytes, 8) ^ K[1]);
        let b = folded_multiply(
            read8(bytes, len - 16) ^ seed ^ K[2],
            read8(bytes, len - 8) ^ K[3],
        );
        // The two halves are independent products under different constants: a xor spreads
        // them (a third multiply cost about as much as the rest of the hash).
        a ^ b
    } else {
        let mut hasher = FoldHasher::with_seed(seed, SharedSeed::global_fixed());
        hasher.write(bytes);
        hasher.finish()
    }
}

#[inline(always)]
fn folded_multiply(x: u64, y: u64) -> u64 {
    let full = u128::from(x) * u128::from(y);
    full as u64 ^ (full >> 64) as u64
}

#[inline(always)]
fn read8(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[inline(always)]
fn read4(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u64::from(u32::from_le_bytes(word))
}

/// Whole-name equality, inline for names of 8 bytes or more (overlapping 8-byte reads) instead
/// of a call to `memcmp`.
#[inline(always)]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len < 8 {
        return a == b;
    }
    let mut at = 0;
    while at + 8 < len {
        if read8(a, at) != read8(b, at) {
            return false;
        }
        at += 8;
    }
    read8(a, len - 8) == read8(b, len - 8)
}

/// Flag names and their slots. Append-only: within one id, slot `i` names the same flag forever,
/// which is what lets keys cache `(id, slot)` without checking the name.
#[derive(Debug)]
pub(crate) struct Layout {
    id: u64,
    seed: u64,
    names: Vec<Box<str>>,
    /// Open addressing, linear probing, at most a quarter full (short probes, for misses too): `0` is empty, otherwise the high 32
    /// bits of the name's hash and the slot plus one in the low 32.
    index: Box<[u64]>,
}

impl Clone for Layout {
    // A copy is about to be changed (`Arc::make_mut`): it gets an id of its own.
    fn clone(&self) -> Self {
        Layout {
            id: next_layout_id(),
            seed: self.seed,
            names: self.names.clone(),
            index: self.index.clone(),
        }
    }
}

impl Layout {
    fn with_capacity(capacity: usize) -> Self {
        Layout {
            id: next_layout_id(),
            seed: seed(),
            names: Vec::with_capacity(capacity),
            index: vec![0; index_len(capacity)].into_boxed_slice(),
        }
    }

    #[inline(always)]
    fn find_hashed(&self, name: &str, hash: u64) -> Option<usize> {
        let mask = self.index.len() - 1;
        let tag = hash >> 32;
        let mut at = hash as usize & mask;
        loop {
            let entry = self.index[at];
            if entry == 0 {
                return None;
            }
            if entry >> 32 == tag {
                let slot = (entry as u32 - 1) as usize;
                if same_name(self.names[slot].as_bytes(), name.as_bytes()) {
                    return Some(slot);
                }
            }
            at = (at + 1) & mask;
        }
    }

    /// Never reused within a process: equal ids mean the same names in the same slots.
    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    #[inline(always)]
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.find_hashed(name, hash_name_with(self.seed, name))
    }

    fn push(&mut self, name: Box<str>, hash: u64) -> usize {
        // A name that was absent is now present: keys that cached "absent" under the old id
        // must not trust it, so any growth takes a new id.
        self.id = next_layout_id();
        let slot = self.names.len();
        self.names.push(name);
        if self.names.len() * 4 > self.index.len() {
            self.rebuild_index();
        } else {
            self.insert_index(slot, hash);
        }
        slot
    }

    fn insert_index(&mut self, slot: usize, hash: u64) {
        let mask = self.index.len() - 1;
        let mut at = hash as usize & mask;
        while self.index[at] != 0 {
            at = (at + 1) & mask;
        }
        self.index[at] = (hash >> 32 << 32) | (slot as u64 + 1);
    }

    fn rebuild_index(&mut self) {
        self.index = vec![0; index_len(self.names.len())].into_boxed_slice();
        for slot in 0..self.names.len() {
            let hash = hash_name_with(self.seed, &self.names[slot]);
            self.insert_index(slot, hash);
        }
    }
}

/// An index of at least four times `capacity` entries (a power of two, at least 8).
fn index_len(capacity: usize) -> usize {
    (capacity.max(2) * 4).next_power_of_two()
}

/// Flags by name, in the order they were first inserted.
#[derive(Debug, Clone)]
pub(crate) struct FlagMap {
    layout: Arc<Layout>,
    /// `layout.id`, copied here so that a keyed read does not follow the layout pointer.
    layout_id: u64,
    flags: Vec<Entry>,
}

impl Default for FlagMap {
    fn default() -> Self {
        FlagMap::with_capacity(0)
    }
}

impl FlagMap {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        // More than 2^32 - 1 flags would not fit an index entry; no flag set comes close.
        let layout = Layout::with_capacity(capacity);
        FlagMap {
            layout_id: layout.id,
            layout: Arc::new(layout),
            flags: Vec::with_capacity(capacity),
        }
    }

    /// The `HashMap` constructor's shape, so that code written against the former
    /// `HashMap<Box<str>, Entry, foldhash::fast::RandomState>` alias keeps compiling. The hasher is
    /// unused: names are hashed with the process-wide seed that keys share.
    pub(crate) fn with_capacity_and_hasher(
        capacity: usize,
        _hasher: foldhash::fast::RandomState,
    ) -> Self {
        FlagMap::with_capacity(capacity)
    }

    /// Inserts or replaces; a replaced flag keeps its slot. Returns the replaced flag.
    pub(crate) fn insert(&mut self, name: Box<str>, flag: Entry) -> Option<Entry> {
        let hash = hash_name_with(self.layout.seed, &name);
        match self.layout.find_hashed(&name, hash) {
            Some(slot) => Some(std::mem::replace(&mut self.flags[slot], flag)),
            None => {
                let layout = Arc::make_mut(&mut self.layout);
                let slot = layout.push(name, hash);
                self.layout_id = layout.id;
                debug_assert_eq!(slot, self.flags.len());
                self.flags.push(flag);
                None
            }
        }
    }

    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.layout.find(name).map(|slot| &self.flags[slot])
    }

    /// The flag in `slot`; `None` past the end.
    #[inline]
    pub(crate) fn slot(&self, slot: usize) -> Option<&Entry> {
        self.flags.get(slot)
    }

    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.layout.find(name).is_some()
    }

    pub(crate) fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The id of [`layout`](Self::layout), without following the pointer.
    #[inline]
    pub(crate) fn layout_id(&self) -> u64 {
        self.layout_id
    }

    pub(crate) fn keys(&self) -> std::slice::Iter<'_, Box<str>> {
        self.layout.names.iter()
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = (&Box<str>, &Entry)> + '_ {
        self.layout.names.iter().zip(&self.flags)
    }

    pub(crate) fn len(&self) -> usize {
        self.flags.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Adopts `other`'s layout when it names the same flags in the same order, so that keys
    /// resolved against `other` stay resolved. True when adopted (or already shared).
    pub(crate) fn share_layout(&mut self, other: &FlagMap) -> bool {
        if Arc::ptr_eq(&self.layout, &other.layout) {
            return true;
        }
        if self.layout.names != other.layout.names {
            return false;
        }
        self.layout = Arc::clone(&other.layout);
        self.layout_id = other.layout_id;
        true
    }
}

/// Equal when the same names map to equal flags, whatever the order.
impl PartialEq for FlagMap {
    fn eq(&self, other: &Self) -> bool {
        if self.len() != other.len() {
            return false;
        }
        if Arc::ptr_eq(&self.layout, &other.layout) {
            return self.flags == other.flags;
        }
        self.iter()
            .all(|(name, flag)| other.get(name).is_some_and(|f| f == flag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flag(v: serde_json::Value) -> Entry {
        Entry::new(v, crate::entry::Origin::Remote)
    }

    #[test]
    fn names_of_every_length_hash_apart_and_compare_exactly() {
        let names: Vec<String> = (0..80)
            .map(|len| "abcdefghij".repeat(8)[..len].to_owned())
            .collect();
        let mut hashes: Vec<u64> = names.iter().map(|n| hash_name_with(1, n)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), names.len());
        assert_ne!(hash_name_with(1, "flag-a"), hash_name_with(2, "flag-a"));
        for a in &names {
            for b in &names {
                assert_eq!(same_name(a.as_bytes(), b.as_bytes()), a == b);
            }
            // One byte off, anywhere.
            for at in 0..a.len() {
                let mut other = a.clone().into_bytes();
                other[at] ^= 1;
                assert!(!same_name(a.as_bytes(), &other));
                assert_ne!(
                    hash_name_with(1, a),
                    hash_name_with(1, std::str::from_utf8(&other).unwrap())
                );
            }
        }
    }

    #[test]
    fn insert_get_replace_keep_order() {
        let mut map = FlagMap::with_capacity(0);
        for i in 0..1000 {
            assert!(map.insert(format!("f{i}").into(), flag(json!(i))).is_none());
        }
        let replaced = map.insert("f7".into(), flag(json!("x"))).unwrap();
        assert_eq!(replaced.value, json!(7));
        assert_eq!(map.len(), 1000);
        for i in 0..1000 {
            let expected = if i == 7 { json!("x") } else { json!(i) };
            assert_eq!(map.get(&format!("f{i}")).unwrap().value, expected);
            assert_eq!(map.layout().find(&format!("f{i}")), Some(i));
        }
        assert!(map.get("f1000").is_none());
        assert!(map.get("").is_none());
        let names: Vec<&str> = map.keys().map(|k| &**k).collect();
        assert_eq!(names[..3], ["f0", "f1", "f2"]);
    }

    #[test]
    fn growth_and_copies_take_new_ids_replacement_does_not() {
        let mut map = FlagMap::with_capacity(4);
        map.insert("a".into(), flag(json!(1)));
        let id = map.layout().id;
        map.insert("a".into(), flag(json!(2)));
        assert_eq!(map.layout().id, id);
        map.insert("b".into(), flag(json!(1)));
        assert_ne!(map.layout().id, id);

        let id = map.layout().id;
        let mut copy = map.clone();
        assert_eq!(copy.layout().id, id, "an untouched copy shares the layout");
        copy.insert("c".into(), flag(json!(1)));
        assert_ne!(copy.layout().id, id);
        for m in [&map, &copy] {
            assert_eq!(
                m.layout_id(),
                m.layout().id,
                "the copied id follows the layout"
            );
        }
        assert_eq!(map.layout().id, id);
        assert!(map.get("c").is_none());
    }

    #[test]
    fn share_layout_only_for_identical_names_in_order() {
        let build = |names: &[&str], v: i64| {
            let mut map = FlagMap::with_capacity(names.len());
            for name in names {
                map.insert((*name).into(), flag(json!(v)));
            }
            map
        };
        let a = build(&["x", "y"], 1);
        let mut b = build(&["x", "y"], 2);
        assert_ne!(a.layout().id, b.layout().id);
        assert!(b.share_layout(&a));
        assert_eq!(a.layout().id, b.layout().id);
        assert_eq!(b.layout_id(), a.layout().id);
        assert_eq!(b.get("y").unwrap().value, json!(2));
        assert_ne!(a, b);

        let mut c = build(&["y", "x"], 1);
        assert!(!c.share_layout(&a));
        assert_eq!(a, c, "equality ignores order");
        let mut d = build(&["x"], 1);
        assert!(!d.share_layout(&a));
        assert_ne!(a, d);
    }

    #[test]
    fn colliding_tags_still_compare_names() {
        // Force every name into one probe chain by using a tiny table and many names.
        let mut map = FlagMap::with_capacity(0);
        let names: Vec<String> = (0..64).map(|i| "n".repeat(i + 1)).collect();
        for (i, name) in names.iter().enumerate() {
            map.insert(name.as_str().into(), flag(json!(i)));
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(map.get(name).unwrap().value, json!(i));
        }
        assert!(map.get(&"n".repeat(65)).is_none());
    }
}
