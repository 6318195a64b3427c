//! Wall-clock time: the age of cached flags and `Retry-After` dates.
//!
//! Timers run on tokio's monotonic clock, which stops while the machine sleeps; the age of the
//! cache is a wall-clock question. Tests replace the wall clock (feature `test-util`) to play a
//! laptop suspend without sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

type Now = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system's wall clock, or a replacement given to the builder.
#[derive(Clone, Default)]
pub(crate) struct WallClock(Option<Now>);

impl fmt::Debug for WallClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "system" })
    }
}

impl WallClock {
    #[cfg(feature = "test-util")]
    pub(crate) fn custom(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        WallClock(Some(Arc::new(now)))
    }

    pub(crate) fn now(&self) -> SystemTime {
        match &self.0 {
            Some(now) => now(),
            None => SystemTime::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        ms_since_epoch(self.now())
    }
}

/// Milliseconds since the Unix epoch; 0 for a time before it.
pub(crate) fn ms_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
