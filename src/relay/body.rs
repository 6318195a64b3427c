//! Reading a request body within the relay's size limit and a deadline, so that a greedy or slow
//! client costs at most that much memory and time.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;

/// How much of a refused body is still read and thrown away, so that the client gets the 413
/// instead of a reset connection (closing a socket with unread data resets it).
const DRAIN_CAP: usize = 1024 * 1024;

/// Why a request body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// Longer than the limit (declared or sent): 413.
    #[error("the request body is over {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// Not complete before the deadline: 408.
    #[error("the request body did not arrive in time")]
    Timeout,
    /// The connection failed mid-body (or the framing was invalid): 400.
    #[error("the request body could not be read")]
    Unreadable,
}

/// The whole body, if it holds at most `limit` bytes and arrives within `deadline`.
pub(crate) async fn read<B>(
    headers: &HeaderMap,
    body: &mut B,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    // A declared length over the limit is refused before a byte is buffered.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let read = async {
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(BodyError::TooLarge { limit });
        }
        match Limited::new(&mut *body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                Err(BodyError::TooLarge { limit })
            }
            Err(_) => Err(BodyError::Unreadable),
        }
    };
    let result = tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(BodyError::Timeout));
    // Reading what is left lets the client see the 413 rather than a reset. Not when it waits
    // for `100 Continue` (reading would invite the upload) or announced more than the cap.
    let expects_continue = headers.contains_key(http::header::EXPECT);
    let small = declared.is_none_or(|length| length <= DRAIN_CAP as u64);
    if let (Err(BodyError::TooLarge { .. }), false, true) = (&result, expects_continue, small) {
        // Best effort within the same deadline: a bigger or slower body is left to the reset.
        let _ = tokio::time::timeout(deadline, drain(body, DRAIN_CAP)).await;
    }
    result
}

/// Reads and discards up to `cap` more bytes of `body`.
async fn drain<B>(body: &mut B, cap: usize)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut left = cap;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match left.checked_sub(data.len()) {
            Some(rest) => left = rest,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::HeaderValue;
    use http_body_util::Full;
    use hyper::body::Frame;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A body in chunks with no declared length (as `Transfer-Encoding: chunked` arrives), and
    /// a pending poll once they run out when `stall` is set.
    struct Chunks {
        chunks: VecDeque<Bytes>,
        stall: bool,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None if self.stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn chunks(sizes: &[usize]) -> Chunks {
        Chunks {
            chunks: sizes.iter().map(|n| Bytes::from(vec![b'x'; *n])).collect(),
            stall: false,
        }
    }

    #[tokio::test]
    async fn reads_up_to_the_limit_and_refuses_one_byte_more() {
        let none = HeaderMap::new();
        let mut exact = Full::new(Bytes::from(vec![b'a'; 10]));
        assert_eq!(read(&none, &mut exact, 10, SECOND).await.unwrap().len(), 10);
        let mut over = Full::new(Bytes::from(vec![b'a'; 11]));
        assert_eq!(
            read(&none, &mut over, 10, SECOND).await,
            Err(BodyError::TooLarge { limit: 10 })
        );
        let mut empty = Full::new(Bytes::new());
        assert!(read(&none, &mut empty, 10, SECOND)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn chunked_bodies_are_counted_as_they_come() {
        let none = HeaderMap::new();
        let mut fits = chunks(&[4, 4, 2]);
        assert_eq!(read(&none, &mut fits, 10, SECOND).await.unwrap().len(), 10);
        let mut over = chunks(&[4, 4, 4, 100]);
        assert_eq!(
            read(&none, &mut over, 10, SECOND).await,
            Err(BodyError::TooLarge { limit: 10 })
        );
        // The rest was drained.
        assert!(over.chunks.is_empty());
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
        let mut body = Chunks {
            chunks: VecDeque::new(),
            stall: true,
        };
        // The body never comes: only the header decided, and the drain gave up at the deadline.
        let refused = read(&headers, &mut body, 10, Duration::from_millis(50)).await;
        assert_eq!(refused, Err(BodyError::TooLarge { limit: 10 }));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let mut body = chunks(&[3]);
        body.stall = true;
        let started = tokio::time::Instant::now();
        let result = read(&HeaderMap::new(), &mut body, 10, Duration::from_millis(50)).await;
        assert_eq!(result, Err(BodyError::Timeout));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
