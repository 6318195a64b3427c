//! The handle's reads: typed [`Flag`]s first, then by name; the same family as [`Snapshot`]'s.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Flags;
use crate::entry::Scalar;
use crate::flag::{Flag, FlagValue};
use crate::snapshot::Snapshot;

impl Flags {
    /// The served value of a typed [`Flag`], or the `Flag`'s default when the flag is missing
    /// or of another type: the main and fastest read. No hashing once the `Flag` knows the
    /// current flag set (it stays valid across refreshes that keep the flag names), no lock, no
    /// allocation; `Flag<&'static str>` gives an `Arc<str>` shared with the snapshot.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use flagpole::{Flag, Flags};
    ///
    /// static NEW_CHECKOUT: Flag<bool> = Flag::new("new-checkout", false);
    /// static BANNER: Flag<&'static str> = Flag::new("banner", "hello");
    ///
    /// let flags = Flags::builder()
    ///     .default_flag("new-checkout", true)
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// if flags.value(&NEW_CHECKOUT) {
    ///     // the new checkout
    /// }
    /// let banner: Arc<str> = flags.value(&BANNER); // missing: the Flag's default
    /// assert_eq!(&*banner, "hello");
    /// # }
    /// ```
    #[inline]
    pub fn value<T: FlagValue>(&self, flag: &Flag<T>) -> T::Output {
        self.inner.shared.current().value(flag)
    }

    /// The flag as a boolean, by name; `None` when absent or of another type. For flags known
    /// in advance, a [`Flag`] and [`value`](Self::value) are faster and carry their default.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("beta", true)
    ///     .default_flag("ratio", 0.5)
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(flags.get_bool("beta"), Some(true));
    /// assert_eq!(flags.get_bool("ratio"), None); // another type
    /// assert!(flags.get_bool("missing").unwrap_or(true));
    /// # }
    /// ```
    #[inline]
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        self.inner
            .shared
            .current()
            .read_scalar(name, Scalar::as_bool)
    }

    /// The flag as an integer, by name; `None` when absent, not an integer, or out of range.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder().default_flag("max", 3).enabled(false).build().unwrap();
    /// assert_eq!(flags.get_i64("max"), Some(3));
    /// assert_eq!(flags.get_i64("missing"), None);
    /// # }
    /// ```
    #[inline]
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.inner
            .shared
            .current()
            .read_scalar(name, Scalar::as_i64)
    }

    /// The flag as a float (integers convert), by name; `None` when absent or not a number.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder().default_flag("ratio", 0.5).enabled(false).build().unwrap();
    /// assert_eq!(flags.get_f64("ratio"), Some(0.5));
    /// # }
    /// ```
    #[inline]
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        self.inner
            .shared
            .current()
            .read_scalar(name, Scalar::as_f64)
    }

    /// The flag as a shared string, by name: the snapshot's own copy, handed out without copying
    /// the text; `None` when absent or not a string.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("banner", "hello")
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(flags.get_str("banner").as_deref(), Some("hello"));
    /// assert_eq!(flags.get_str("missing").as_deref().unwrap_or("none"), "none");
    /// # }
    /// ```
    pub fn get_str(&self, name: &str) -> Option<Arc<str>> {
        self.with(|s| s.get_str(name))
    }

    /// The flag's JSON value, cloned, by name; `None` when absent.
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
    /// assert_eq!(flags.get("theme"), Some(json!({"accent": "teal"})));
    /// # }
    /// ```
    pub fn get(&self, name: &str) -> Option<Value> {
        self.with(|s| s.get(name))
    }

    /// The flag deserialized into `T`, by name; `None` when absent or of another shape.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// #[derive(serde::Deserialize)]
    /// struct Limits { max: u32 }
    ///
    /// let flags = flagpole::Flags::builder()
    ///     .default_flag("limits", serde_json::json!({"max": 3}))
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(flags.get_as::<Limits>("limits").unwrap().max, 3);
    /// assert!(flags.get_as::<Vec<u8>>("limits").is_none());
    /// # }
    /// ```
    pub fn get_as<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.with(|s| s.get_as(name))
    }

    /// The current snapshot: one consistent view of every flag, to keep as long as needed. Its
    /// reads are the same as the handle's ([`value`](Snapshot::value),
    /// [`get_bool`](Snapshot::get_bool), ...), all from one moment.
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
    ///     .default_flag("max-items", 50)
    ///     .enabled(false)
    ///     .build()
    ///     .unwrap();
    /// let view = flags.snapshot(); // one request, one view
    /// assert_eq!((view.value(&CHECKOUT), view.value(&MAX_ITEMS)), (false, 50));
    /// assert_eq!(view.source(), flagpole::Source::Defaults);
    /// # }
    /// ```
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.shared.load_full()
    }

    // Reads go through a short-lived guard: no reference count is touched and nothing allocates.
    #[inline]
    fn with<T>(&self, read: impl FnOnce(&Snapshot) -> T) -> T {
        read(&self.inner.shared.load())
    }
}
