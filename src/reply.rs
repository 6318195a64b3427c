//! The futures returned by the handle's actions. Each action happens when its method is called;
//! the future only reports the result, so dropping it undoes nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::Error;
use crate::snapshot::Snapshot;
use crate::transport::BoxFuture;

macro_rules! reply_future {
    ($(#[$doc:meta])* $name:ident => $output:ty, $must_use:literal) => {
        $(#[$doc])*
        #[must_use = $must_use]
        pub struct $name(BoxFuture<'static, $output>);

        impl $name {
            pub(crate) fn new(future: impl Future<Output = $output> + Send + 'static) -> Self {
                $name(Box::pin(future))
            }
        }

        impl Future for $name {
            type Output = $output;

            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<$output> {
                self.0.as_mut().poll(cx)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    };
}

reply_future!(
    /// The answer to [`Flags::refresh`](crate::Flags::refresh): the snapshot of a fetch that
    /// started after the call, or its error.
    Refresh => Result<Arc<Snapshot>, Error>,
    "the refresh was asked for when `refresh()` was called; this future only reports its result"
);

reply_future!(
    /// Completes once [`Flags::set_enabled`](crate::Flags::set_enabled) is in effect.
    SetEnabled => (),
    "the switch was queued when `set_enabled()` was called; this future only reports when it took effect"
);

reply_future!(
    /// The store's answer to a change that is already served: from
    /// [`Flags::set_override`](crate::Flags::set_override) and its siblings, or
    /// [`Flags::flush`](crate::Flags::flush).
    Saved => Result<(), Error>,
    "the change is already served and its save under way; this future only reports the save"
);

reply_future!(
    /// Completes once the poller has stopped; see [`Flags::shutdown`](crate::Flags::shutdown).
    Shutdown => (),
    "the poller was told to stop when `shutdown()` was called; this future only waits for it"
);
