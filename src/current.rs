//! The current snapshot as readers reach it: an `ArcSwap` for whole views, beside a copy of every
//! flag's scalar reading that a scalar [`Flag`] reads with plain atomic loads.
//!
//! Why: a read through `ArcSwap::load` costs a guard (a thread-local look-up and two atomic
//! read-modify-writes), about 5 ns, four times the look-up a `Flag` needs once its slot is known.
//! A per-thread cache of the snapshot would remove it but keeps the last snapshot alive in every
//! thread that read it until that thread reads again, so idle threads would pin old flag sets.
//! The scalars instead live as long as the hub and are overwritten in place at each publish
//! under a sequence lock (all atomics, no `unsafe`): a reader checks the sequence before and
//! after, and during a publish (or when its `Flag` does not know the current layout) takes the
//! `ArcSwap` path. Nothing a reader holds pins a snapshot.
//!
//! Scalar reads by name (`get_bool`, `get_i64`, `get_f64`) use the same cells: each thread keeps
//! the last two flag *layouts* it read by name (names and slots, `Arc<Layout>`, never a snapshot),
//! finds the slot there when the cells describe one of them, and reads the cell under the
//! sequence check. A layout changes only when the flag names change, so an idle thread pins at
//! most two sets of names, never values.

use std::array;
use std::cell::RefCell;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, Guard};

use crate::entry::Scalar;
use crate::flag::{Flag, FlagValue};
use crate::snapshot::Snapshot;
use crate::table::{Layout, ABSENT, SLOT_BITS};

/// Layouts a thread remembers: two, so that a thread reading from two handles in turn does not
/// trade one for the other at every read.
const CACHED_LAYOUTS: usize = 2;

thread_local! {
    /// The flag layouts of this thread's last by-name reads, most recent first: names and slots
    /// only, never a snapshot or a value, so an idle thread pins no flag set (a layout is a name
    /// and an 8-byte index entry or four per flag). Layout ids are unique in the process, so the
    /// cache serves every hub.
    static LAYOUTS: RefCell<[Option<Arc<Layout>>; CACHED_LAYOUTS]> =
        const { RefCell::new([None, None]) };
}

/// The published snapshot and its scalars.
#[derive(Debug)]
pub(crate) struct Current {
    swap: ArcSwap<Snapshot>,
    scalars: Scalars,
    /// Writers take turns (the sequence lock has one writer at a time); readers never take it.
    writer: Mutex<()>,
}

impl Current {
    pub(crate) fn new(initial: Arc<Snapshot>) -> Self {
        let current = Current {
            swap: ArcSwap::new(Arc::clone(&initial)),
            scalars: Scalars::default(),
            writer: Mutex::new(()),
        };
        current.scalars.write(&initial);
        current
    }

    /// A short-lived view (an arc-swap guard): do not keep it.
    #[inline]
    pub(crate) fn load(&self) -> Guard<Arc<Snapshot>> {
        self.swap.load()
    }

    pub(crate) fn load_full(&self) -> Arc<Snapshot> {
        self.swap.load_full()
    }

    /// Publishes `snapshot` to readers: the view, then its scalars.
    pub(crate) fn store(&self, snapshot: Arc<Snapshot>) {
        let _turn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.scalars.begin();
        self.swap.store(Arc::clone(&snapshot));
        self.scalars.write(&snapshot);
        self.scalars.end();
    }

    /// [`Snapshot::value`] of the current snapshot; for scalar flags whose slot is known,
    /// without loading the snapshot.
    #[inline]
    pub(crate) fn value<T: FlagValue>(&self, flag: &Flag<T>) -> T::Output {
        if T::SCALAR {
            if let Some(found) = self.scalars.read(flag.slot_word()) {
                return flag.value_of_scalar(found);
            }
        }
        self.swap.load().value(flag)
    }

    /// `read` of the scalar of `name` in the current snapshot (`None` when absent). While the
    /// flag names stay the same, without loading the snapshot: the slot is found in this
    /// thread's cached layout and the scalar read from the cells, under the same sequence check
    /// as [`value`](Self::value). Generic over `read` so that what crosses the thread-local
    /// closure is the small result (a `bool` fits a register; a whole `Scalar` went through the
    /// stack and stalled store forwarding).
    #[inline]
    pub(crate) fn read_scalar<T>(
        &self,
        name: &str,
        read: impl Fn(Scalar) -> Option<T>,
    ) -> Option<T> {
        let fast = LAYOUTS.try_with(|cached| {
            let cached = cached.try_borrow().ok()?;
            self.scalars.read_by_name(&cached, name, &read)
        });
        match fast {
            Ok(Some(found)) => found,
            _ => self.read_scalar_slow(name).and_then(read),
        }
    }

    // Through the snapshot, then remembering its layout for the next read on this thread.
    #[cold]
    #[inline(never)]
    fn read_scalar_slow(&self, name: &str) -> Option<Scalar> {
        let snapshot = self.swap.load();
        let layout = snapshot.layout();
        let _ = LAYOUTS.try_with(|cached| {
            if let Ok(mut cached) = cached.try_borrow_mut() {
                // Already there: the cells are being written or describe a layout too large.
                if !cached.iter().flatten().any(|l| l.id() == layout.id()) {
                    cached.rotate_right(1);
                    cached[0] = Some(Arc::clone(layout));
                }
            }
        });
        snapshot.scalar(name)
    }
}

/// Cells per chunk: chunk `k` holds `BASE << k` cells, so that 20 chunks cover every slot a
/// layout can have (2^24) and a small flag set uses one allocation of 64 cells.
const BASE: usize = 64;
const CHUNKS: usize = 20;

/// One flag's scalar reading: a tag and 64 bits.
#[derive(Debug, Default)]
struct Cell {
    tag: AtomicU64,
    bits: AtomicU64,
}

/// Matches no `Flag`'s remembered layout (those fit in 40 bits).
const NO_LAYOUT: u64 = u64::MAX;

const NONE: u64 = 0;
const BOOL: u64 = 1;
const INT: u64 = 2;
const BIG: u64 = 3;
const FLOAT: u64 = 4;

fn encode(scalar: Scalar) -> (u64, u64) {
    match scalar {
        Scalar::None => (NONE, 0),
        Scalar::Bool(b) => (BOOL, u64::from(b)),
        Scalar::Int(i) => (INT, i as u64),
        Scalar::BigUint(u) => (BIG, u),
        Scalar::Float(f) => (FLOAT, f.to_bits()),
    }
}

#[inline]
fn decode(tag: u64, bits: u64) -> Scalar {
    match tag {
        BOOL => Scalar::Bool(bits != 0),
        INT => Scalar::Int(bits as i64),
        BIG => Scalar::BigUint(bits),
        FLOAT => Scalar::Float(f64::from_bits(bits)),
        _ => Scalar::None,
    }
}

/// Chunk and offset of `slot`.
#[inline]
fn locate(slot: usize) -> (usize, usize) {
    let j = slot / BASE + 1;
    let k = (usize::BITS - 1 - j.leading_zeros()) as usize;
    (k, slot - BASE * ((1 << k) - 1))
}

/// The current layout's scalars by slot, under a sequence lock. Chunks are allocated as the
/// largest flag set grows and live as long as the hub.
#[derive(Debug)]
struct Scalars {
    /// Even when the cells are whole, odd while a writer changes them.
    seq: AtomicU64,
    /// The layout the cells describe.
    layout: AtomicU64,
    chunks: [OnceLock<Box<[Cell]>>; CHUNKS],
}

impl Default for Scalars {
    fn default() -> Self {
        Scalars {
            seq: AtomicU64::new(0),
            layout: AtomicU64::new(NO_LAYOUT),
            chunks: array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl Scalars {
    fn begin(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq | 1, Ordering::Relaxed);
        fence(Ordering::Release);
    }

    fn end(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store((seq | 1) + 1, Ordering::Release);
    }

    /// Copies `snapshot`'s scalars in (between [`begin`](Self::begin) and [`end`](Self::end),
    /// or before any reader exists).
    fn write(&self, snapshot: &Snapshot) {
        let mut count = 0;
        for (slot, scalar) in snapshot.scalars().enumerate() {
            let (k, at) = locate(slot);
            let Some(chunk) = self.chunk_or_new(k) else {
                break;
            };
            let (tag, bits) = encode(scalar);
            chunk[at].tag.store(tag, Ordering::Relaxed);
            chunk[at].bits.store(bits, Ordering::Relaxed);
            count += 1;
        }
        // A layout too large for the cells is never read from them.
        let layout = if count == snapshot.len() {
            snapshot.layout_id()
        } else {
            NO_LAYOUT
        };
        self.layout.store(layout, Ordering::Relaxed);
    }

    fn chunk_or_new(&self, k: usize) -> Option<&[Cell]> {
        let chunk = self.chunks.get(k)?;
        Some(chunk.get_or_init(|| (0..BASE << k).map(|_| Cell::default()).collect()))
    }

    /// The scalar in `slot`'s cell, read inside a reader's sequence check; `None` when the
    /// cell does not exist (the reader goes to the snapshot).
    #[inline(always)]
    fn cell(&self, slot: usize) -> Option<Scalar> {
        let (k, at) = locate(slot);
        let cell = self.chunks.get(k)?.get()?.get(at)?;
        let tag = cell.tag.load(Ordering::Relaxed);
        let bits = cell.bits.load(Ordering::Relaxed);
        Some(decode(tag, bits))
    }

    /// `read` of the scalar of `name` (`Some(None)`: absent) when the cells describe one of `layouts` and no
    /// writer interfered; `None` sends the reader to the snapshot.
    #[inline(always)]
    fn read_by_name<T>(
        &self,
        layouts: &[Option<Arc<Layout>>; CACHED_LAYOUTS],
        name: &str,
        read: impl Fn(Scalar) -> Option<T>,
    ) -> Option<Option<T>> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let id = self.layout.load(Ordering::Relaxed);
        let layout = match layouts {
            [Some(first), _] if first.id() == id => first,
            [_, Some(second)] if second.id() == id => second,
            _ => return None,
        };
        let found = match layout.find(name) {
            None => None,
            Some(slot) => read(self.cell(slot)?),
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(found)
    }

    /// The scalar in the slot a `Flag` remembered (`Some(None)`: remembered as absent), when the
    /// cells describe that layout and no writer interfered; `None` sends the reader to the
    /// snapshot.
    #[inline]
    fn read(&self, word: u64) -> Option<Option<Scalar>> {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 != 0 || self.layout.load(Ordering::Relaxed) != word >> SLOT_BITS {
            return None;
        }
        let slot = word & ABSENT;
        let found = if slot == ABSENT {
            None
        } else {
            Some(self.cell(slot as usize)?)
        };
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == seq).then_some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_tile_the_slots() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(191), (1, 127));
        assert_eq!(locate(192), (2, 0));
        let last = (1 << SLOT_BITS) - 2;
        let (k, at) = locate(last);
        assert!(k < CHUNKS && at < BASE << k);
        let mut expected = (0, 0);
        for slot in 0..5000 {
            assert_eq!(locate(slot), expected);
            expected.1 += 1;
            if expected.1 == BASE << expected.0 {
                expected = (expected.0 + 1, 0);
            }
        }
    }

    #[test]
    fn scalars_round_trip() {
        for scalar in [
            Scalar::None,
            Scalar::Bool(true),
            Scalar::Bool(false),
            Scalar::Int(-5),
            Scalar::Int(i64::MIN),
            Scalar::BigUint(u64::MAX),
            Scalar::Float(-0.0),
            Scalar::Float(2.5),
        ] {
            let (tag, bits) = encode(scalar);
            assert_eq!(decode(tag, bits), scalar);
        }
    }

    #[test]
    fn a_reader_during_a_write_goes_to_the_snapshot() {
        let scalars = Scalars::default();
        assert_eq!(scalars.read(0), None, "a Flag that never resolved");
        scalars.layout.store(9, Ordering::Relaxed);
        let absent = 9 << SLOT_BITS | ABSENT;
        assert_eq!(scalars.read(absent), Some(None));
        scalars.begin();
        assert_eq!(scalars.read(absent), None);
        scalars.end();
        assert_eq!(scalars.read(absent), Some(None));
        assert_eq!(scalars.read(9 << SLOT_BITS), None, "no chunk yet");
        assert_eq!(scalars.seq.load(Ordering::Relaxed), 2);
    }
}
