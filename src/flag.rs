//! Typed flag definitions: a name and a default declared once, read without hashing.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::entry::{Entry, Scalar};
use crate::key::SlotCache;
use crate::table::FlagMap;

/// A flag declared once, with its name, its type and its default: the main way to read flags.
///
/// ```
/// use std::sync::Arc;
/// use flagpole::{Flag, Flags};
///
/// static NEW_CHECKOUT: Flag<bool> = Flag::new("new-checkout", false);
/// static MAX_ITEMS: Flag<i64> = Flag::new("max-items", 50);
/// static RATIO: Flag<f64> = Flag::new("ratio", 0.5);
/// static BANNER: Flag<&'static str> = Flag::new("banner", "hello");
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flags = Flags::builder()
///     .default_flag("new-checkout", true) // served until remote flags arrive
///     .enabled(false)
///     .build()
///     .unwrap();
/// let on: bool = flags.value(&NEW_CHECKOUT); // the served value...
/// let n: i64 = flags.value(&MAX_ITEMS); // ...or the Flag's default
/// let b: Arc<str> = flags.value(&BANNER); // no copy of the string
/// assert_eq!((on, n, flags.value(&RATIO), &*b), (true, 50, 0.5, "hello"));
/// assert!(flags.snapshot().value(&NEW_CHECKOUT)); // the same read on a Snapshot
/// # }
/// ```
///
/// [`Flags::value`](crate::Flags::value) and [`Snapshot::value`](crate::Snapshot::value) give
/// the served value when it has the `Flag`'s type, else the `Flag`'s default: when the flag is
/// missing, and when it has another type (logged once per `Flag` at `DEBUG`). A `Flag<f64>`
/// accepts integers; a `Flag<i64>` does not accept fractions. Defaults given to the builder
/// ([`FlagsBuilder::default_flag`](crate::FlagsBuilder::default_flag)) are served values like
/// remote ones: they win over the `Flag`'s default.
///
/// # Declare it as a `static`, not a `const`
///
/// A `Flag` remembers where its flag sits in the current flag set (one atomic word inside it),
/// so that a read neither hashes nor compares the name: one comparison and one index. A `const`
/// is copied at every use, so that memory would start empty at every read: each read would hash
/// the name, and a `Flag<&'static str>` would allocate its default at every read that serves it
/// (still correct, only slower); clippy's `declare_interior_mutable_const` warns about such a
/// `const`. Declare flags as `static`s (or keep one in a long-lived struct).
///
/// Refreshes that change values but keep the same flag names keep the memory valid; when the
/// names change, the next read looks the name up once and remembers the new place. One `Flag`
/// read through handles whose flag names differ looks the name up on every switch (correct,
/// but hashed).
///
/// Reads never lock and never allocate; a `Flag<&'static str>` allocates its default as an
/// `Arc<str>` once, at the first read that serves it, and hands out that `Arc` from then on.
pub struct Flag<T: FlagValue> {
    name: &'static str,
    default: T,
    slot: SlotCache,
    /// Set at the first wrong-typed read: the type mismatch is logged once.
    warned: AtomicBool,
    /// The default as a shared string, made at its first use (string flags only).
    shared_default: OnceLock<Arc<str>>,
}

impl<T: FlagValue> Flag<T> {
    /// A flag called `name`, served as `default` when missing or of another type. Declare it in
    /// a `static` (see [above](Flag#declare-it-as-a-static-not-a-const)).
    pub const fn new(name: &'static str, default: T) -> Self {
        Flag {
            name,
            default,
            slot: SlotCache::new(),
            warned: AtomicBool::new(false),
            shared_default: OnceLock::new(),
        }
    }

    /// The flag's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The flag's default.
    pub const fn default_value(&self) -> T {
        self.default
    }

    /// The served value from `map`, or the default.
    #[inline]
    pub(crate) fn read(&self, map: &FlagMap) -> T::Output {
        match self.slot.find(self.name, map) {
            Some(entry) => match T::read(sealed::Served(entry)) {
                Some(value) => value,
                None => self.wrong_type(),
            },
            None => T::fallback(self),
        }
    }

    /// The remembered slot (see [`SlotCache::word`]).
    #[inline]
    pub(crate) fn slot_word(&self) -> u64 {
        self.slot.word()
    }

    /// The value for a scalar reading of this flag (`None`: absent), or the default.
    #[inline]
    pub(crate) fn value_of_scalar(&self, found: Option<Scalar>) -> T::Output {
        match found {
            Some(scalar) => match T::read_scalar(sealed::ServedScalar(scalar)) {
                Some(value) => value,
                None => self.wrong_type(),
            },
            None => T::fallback(self),
        }
    }

    #[cold]
    #[inline(never)]
    fn wrong_type(&self) -> T::Output {
        if !self.warned.load(Ordering::Relaxed) && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                flag = self.name,
                expected = T::KIND,
                "flag served with another type than its definition; using the definition's default"
            );
        }
        T::fallback(self)
    }

    #[cfg(test)]
    pub(crate) fn warned(&self) -> bool {
        self.warned.load(Ordering::Relaxed)
    }
}

impl<T: FlagValue + fmt::Debug> fmt::Debug for Flag<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flag")
            .field("name", &self.name)
            .field("default", &self.default)
            .finish()
    }
}

/// The types a [`Flag`] can have: `bool`, `i64`, `f64` and `&'static str`. Sealed: flagpole
/// reads these from values worked out when flags are published, without converting on a read.
pub trait FlagValue: sealed::Sealed + Copy + Send + Sync + 'static {}

impl FlagValue for bool {}
impl FlagValue for i64 {}
impl FlagValue for f64 {}
impl FlagValue for &'static str {}

pub(crate) mod sealed {
    use super::*;

    /// A served entry, opaque outside the crate (the trait's methods are reachable, its
    /// argument's contents are not).
    #[allow(unreachable_pub, missing_debug_implementations)]
    pub struct Served<'a>(pub(crate) &'a Entry);

    /// A served scalar reading, opaque outside the crate.
    #[allow(unreachable_pub, missing_debug_implementations)]
    pub struct ServedScalar(pub(crate) Scalar);

    #[allow(unreachable_pub)] // reachable only as a bound: sealed
    pub trait Sealed: Sized {
        /// What a read gives: the type itself for scalars, `Arc<str>` for strings.
        type Output;
        #[doc(hidden)]
        const KIND: &'static str;
        /// Whether the value is a scalar, readable from a scalar reading alone.
        #[doc(hidden)]
        const SCALAR: bool;
        #[doc(hidden)]
        fn read(entry: Served<'_>) -> Option<Self::Output>;
        #[doc(hidden)]
        fn read_scalar(scalar: ServedScalar) -> Option<Self::Output>;
        #[doc(hidden)]
        fn fallback(flag: &Flag<Self>) -> Self::Output
        where
            Self: FlagValue;
    }

    impl Sealed for bool {
        type Output = bool;
        const KIND: &'static str = "a boolean";
        const SCALAR: bool = true;
        #[inline]
        fn read(Served(entry): Served<'_>) -> Option<bool> {
            entry.scalar.as_bool()
        }
        #[inline]
        fn read_scalar(ServedScalar(scalar): ServedScalar) -> Option<bool> {
            scalar.as_bool()
        }
        #[inline]
        fn fallback(flag: &Flag<bool>) -> bool {
            flag.default
        }
    }

    impl Sealed for i64 {
        type Output = i64;
        const KIND: &'static str = "an integer";
        const SCALAR: bool = true;
        #[inline]
        fn read(Served(entry): Served<'_>) -> Option<i64> {
            entry.scalar.as_i64()
        }
        #[inline]
        fn read_scalar(ServedScalar(scalar): ServedScalar) -> Option<i64> {
            scalar.as_i64()
        }
        #[inline]
        fn fallback(flag: &Flag<i64>) -> i64 {
            flag.default
        }
    }

    impl Sealed for f64 {
        type Output = f64;
        const KIND: &'static str = "a number";
        const SCALAR: bool = true;
        #[inline]
        fn read(Served(entry): Served<'_>) -> Option<f64> {
            entry.scalar.as_f64()
        }
        #[inline]
        fn read_scalar(ServedScalar(scalar): ServedScalar) -> Option<f64> {
            scalar.as_f64()
        }
        #[inline]
        fn fallback(flag: &Flag<f64>) -> f64 {
            flag.default
        }
    }

    impl Sealed for &'static str {
        type Output = Arc<str>;
        const KIND: &'static str = "a string";
        const SCALAR: bool = false;
        #[inline]
        fn read(Served(entry): Served<'_>) -> Option<Arc<str>> {
            entry.text.clone()
        }
        fn read_scalar(_: ServedScalar) -> Option<Arc<str>> {
            None
        }
        #[inline]
        fn fallback(flag: &Flag<&'static str>) -> Arc<str> {
            // Allocated once per Flag, at its first use; a reference count from then on.
            Arc::clone(flag.shared_default.get_or_init(|| Arc::from(flag.default)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Origin;
    use serde_json::json;

    static ON: Flag<bool> = Flag::new("on", false);
    static N: Flag<i64> = Flag::new("n", 7);
    static X: Flag<f64> = Flag::new("x", 0.5);
    static S: Flag<&'static str> = Flag::new("s", "dflt");
    static MISSING: Flag<&'static str> = Flag::new("missing", "dflt");

    fn map(pairs: &[(&str, serde_json::Value)]) -> FlagMap {
        let mut map = FlagMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            map.insert((*name).into(), Entry::new(value.clone(), Origin::Remote));
        }
        map
    }

    #[test]
    fn served_values_defaults_and_wrong_types() {
        let good = map(&[
            ("on", json!(true)),
            ("n", json!(3)),
            ("x", json!(2)),
            ("s", json!("text")),
        ]);
        assert!(ON.read(&good));
        assert_eq!(N.read(&good), 3);
        assert_eq!(X.read(&good), 2.0, "integers are numbers");
        assert_eq!(&*S.read(&good), "text");
        assert_eq!(&*MISSING.read(&good), "dflt");
        assert!(!ON.warned());

        let wrong = map(&[
            ("on", json!("yes")),
            ("n", json!(2.5)),
            ("x", json!(null)),
            ("s", json!(1)),
        ]);
        assert!(!ON.read(&wrong));
        assert_eq!(N.read(&wrong), 7);
        assert_eq!(X.read(&wrong), 0.5);
        assert_eq!(&*S.read(&wrong), "dflt");
        assert!(ON.warned() && N.warned() && X.warned() && S.warned());
        assert!(!MISSING.warned(), "a missing flag is not a wrong type");
        // The string default is one shared allocation.
        assert!(Arc::ptr_eq(&S.read(&wrong), &S.read(&wrong)));
    }

    #[test]
    fn accessors_and_debug() {
        assert_eq!(N.name(), "n");
        assert_eq!(N.default_value(), 7);
        assert_eq!(format!("{S:?}"), r#"Flag { name: "s", default: "dflt" }"#);
    }
}
