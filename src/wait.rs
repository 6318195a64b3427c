//! Waiting for the first remote flags: [`Flags::ready`] for async code, and
//! [`Flags::ready_blocking`] for code without a runtime.
//!
//! Both only watch the snapshot and status channels, which need no runtime, so the blocking
//! form parks the calling thread instead of borrowing a runtime to drive them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::client::Flags;
use crate::error::Error;
use crate::snapshot::Source;
use crate::status::Status;
use crate::transport::BoxFuture;

/// Resolves when remote flags are served; see [`Flags::ready`].
#[must_use = "a future does nothing unless awaited: await it to wait for the flags"]
pub struct Ready(BoxFuture<'static, Result<Source, Error>>);

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

impl Future for Ready {
    type Output = Result<Source, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl Flags {
    /// Resolves once remote flags are served, from the cache or the network, with their
    /// [`Source`]; at once when they already are. Wrap it in your own timeout: it waits as long
    /// as the poller keeps trying.
    ///
    /// # Errors
    /// [`Error::Disabled`] when remote flags are switched off, and [`Error::Stopped`] when the
    /// poller stops, before any arrived (defaults are served meanwhile).
    ///
    /// # Cancellation safety
    /// Cancel-safe: it only observes.
    ///
    /// ```
    /// # use flagpole::{BoxFuture, Error, Request, Response, Transport};
    /// # struct Api; // a stand-in for the flag service
    /// # impl Transport for Api {
    /// #     fn send(&self, _: Request) -> BoxFuture<'static, Result<Response, Error>> {
    /// #         Box::pin(async { Ok(Response::new(http::StatusCode::OK, Default::default(), br#"{"beta":true}"#.to_vec())) })
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), flagpole::Error> {
    /// use std::time::Duration;
    /// use flagpole::{Flags, Source};
    ///
    /// let flags = Flags::builder().transport(Api).build()?;
    /// match tokio::time::timeout(Duration::from_secs(2), flags.ready()).await {
    ///     Ok(Ok(source)) => assert_eq!(source, Source::Network),
    ///     Ok(Err(error)) => println!("serving defaults: {error}"),
    ///     Err(_) => println!("serving defaults: the flag service is slow"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn ready(&self) -> Ready {
        let mut snapshots = self.subscribe();
        let mut status = self.status_receiver();
        Ready(Box::pin(async move {
            loop {
                let source = snapshots.borrow_and_update().source();
                if source != Source::Defaults {
                    return Ok(source);
                }
                match &*status.borrow_and_update() {
                    Status::Disabled => return Err(Error::Disabled),
                    Status::Stopped => return Err(Error::Stopped),
                    _ => {}
                }
                tokio::select! {
                    changed = snapshots.changed() => changed.map_err(|_| Error::Stopped)?,
                    changed = status.changed() => changed.map_err(|_| Error::Stopped)?,
                }
            }
        }))
    }

    /// [`ready`](Self::ready) for synchronous code: blocks the calling thread for at most
    /// `timeout`.
    ///
    /// # Errors
    /// [`Error::NotReady`] when `timeout` passes first; [`Error::Disabled`] or
    /// [`Error::Stopped`] as for `ready`; [`Error::InsideRuntime`] when called on a thread that
    /// runs an async runtime (blocking it could stall the poller; await `ready()` there).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// // No runtime here: the poller gets a thread of its own.
    /// let flags = flagpole::Flags::builder().enabled(false).build().unwrap();
    /// let waited = flags.ready_blocking(Duration::from_secs(1));
    /// assert!(matches!(waited, Err(flagpole::Error::Disabled)));
    /// ```
    pub fn ready_blocking(&self, timeout: Duration) -> Result<Source, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        // A timeout too long to add (`Duration::MAX`: wait as long as it takes) has no deadline.
        block_on_until(self.ready(), Instant::now().checked_add(timeout))
            .unwrap_or(Err(Error::NotReady { waited: timeout }))
    }
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` on this thread, parking between wake-ups, until it resolves or `deadline`
/// (if any) passes (`None`). Only for futures that need no runtime to make progress.
fn block_on_until<F: Future>(future: F, deadline: Option<Instant>) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        // A spurious wake-up only costs one more poll.
        match deadline {
            Some(deadline) => {
                let left = deadline.checked_duration_since(Instant::now())?;
                if left.is_zero() {
                    return None;
                }
                std::thread::park_timeout(left);
            }
            None => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_until_gives_up_at_the_deadline_and_wakes_on_a_send() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let start = Instant::now();
        let mut rx = rx;
        assert_eq!(
            block_on_until(&mut rx, Some(start + Duration::from_millis(30))),
            None
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        let got = block_on_until(rx, None);
        assert_eq!(got, Some(Ok(7)));
        sender.join().unwrap();
    }
}
