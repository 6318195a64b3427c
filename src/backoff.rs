//! Retry delays after failed fetches.

use std::time::Duration;

/// Exponential backoff with jitter: the n-th delay is drawn from `[b/2, b]` where
/// `b = min(initial * 2^(n-1), cap)`.
///
/// This is "equal jitter" rather than full jitter (`[0, b]`): a fleet still spreads over half of
/// each step, but no retry can come at once, so a failing API never gets a burst of near-zero
/// retries and every delay stays within the full-jitter bounds.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            initial,
            cap: cap.max(initial.min(cap)),
            attempt: 0,
        }
    }

    /// Failures since the last success.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling `b` of the next delay.
    fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// Jumps to the cap, for failures that retrying soon will not fix.
    pub(crate) fn next_at_cap(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        jitter(self.cap)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        Some(jitter(ceiling))
    }
}

fn jitter(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    half + (ceiling - half).mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_two_within_bounds_then_caps() {
        let s = Duration::from_secs;
        for _ in 0..200 {
            let delays: Vec<_> = Backoff::new(s(1), s(300)).take(12).collect();
            let ceilings = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300];
            for (d, c) in delays.iter().zip(ceilings) {
                assert!(*d >= s(c) / 2 && *d <= s(c), "{d:?} not in [{c}/2, {c}]");
            }
        }
    }

    #[test]
    fn is_jittered() {
        let a: Vec<_> = Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
            .take(8)
            .collect();
        let b: Vec<_> = Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
            .take(8)
            .collect();
        assert_ne!(a, b, "two runs drew identical delays");
    }

    #[test]
    fn reset_and_cap_jump() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        b.by_ref().take(5).for_each(drop);
        assert_eq!(b.attempt(), 5);
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_secs(1));
        let d = b.next_at_cap();
        assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(60));
        assert_eq!(b.attempt(), 2);
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        b.attempt = u32::MAX - 1;
        assert!(b.next().unwrap() <= Duration::from_secs(300));
        assert!(b.next().unwrap() <= Duration::from_secs(300));
    }
}
