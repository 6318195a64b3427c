//! When the next automatic fetch comes: pure draws from the fetch interval and the schedule
//! jitter, so that a fleet of clients spreads its requests evenly over the interval and keeps
//! them spread through starts, outages and recoveries (see FLEET.md for the numbers).
//!
//! The regular wait after a success is `interval × (1 − jitter × u)`, uniform over the last
//! `jitter` part of the interval. A fleet whose clients all follow it for long ends up with its
//! next refreshes spread as [`steady_wait`] draws them: uniform over the interval, thinning out
//! over its last `jitter` part. A client whose fleet may be synchronised (it just started, or it
//! just got its first flags) draws its first wait from that same distribution, so the fleet is in
//! that steady state at once instead of after many intervals.

use std::time::Duration;

/// The wait after a successful fetch: uniform over `[interval × (1 − jitter), interval]`.
/// `u` is uniform in `[0, 1)`.
pub(super) fn regular(interval: Duration, jitter: f64, u: f64) -> Duration {
    interval.mul_f64(1.0 - jitter * u)
}

/// The wait until the next refresh of a client picked at random in a fleet that follows
/// [`regular`]: the steady-state ("equilibrium") residual of that schedule. Its density is
/// `P(regular wait > t) / mean wait`: flat over `[0, interval × (1 − jitter)]`, then falling
/// linearly to zero at `interval`. `u` and `v` are independent and uniform in `[0, 1)`.
pub(super) fn steady_wait(interval: Duration, jitter: f64, u: f64, v: f64) -> Duration {
    let flat = 1.0 - jitter;
    // The flat part holds (1 − jitter) / (1 − jitter / 2) of the mass.
    let fraction = if u < flat / (1.0 - jitter / 2.0) {
        flat * v
    } else {
        // Density proportional to (1 − x) over [flat, 1].
        1.0 - jitter * v.sqrt()
    };
    interval.mul_f64(fraction)
}

/// The first wait at a start with a fresh cache that has `remaining` life left: its expiry, or
/// the steady-state draw if that comes first. A fleet restarted with caches saved together
/// spreads over the whole interval; a cache never outlives its freshness.
pub(super) fn after_fresh_cache(
    remaining: Duration,
    interval: Duration,
    jitter: f64,
    u: f64,
    v: f64,
) -> Duration {
    remaining.min(steady_wait(interval, jitter, u, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(1000);

    fn draws(n: usize, mut f: impl FnMut(f64, f64) -> Duration) -> Vec<f64> {
        (0..n)
            .map(|_| f(fastrand::f64(), fastrand::f64()).as_secs_f64() / I.as_secs_f64())
            .collect()
    }

    #[test]
    fn regular_is_the_last_jitter_part() {
        assert_eq!(regular(I, 0.2, 0.0), I);
        assert_eq!(regular(I, 0.2, 1.0), I.mul_f64(0.8));
        assert_eq!(regular(I, 0.0, 0.7), I);
    }

    #[test]
    fn steady_wait_is_flat_then_thins_out() {
        let xs = draws(200_000, |u, v| steady_wait(I, 0.2, u, v));
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        // Tenths of the interval: 1/9 of the draws in each of the first eight, 1/9 in the rest.
        let mut tenths = [0usize; 10];
        for x in &xs {
            tenths[((x * 10.0) as usize).min(9)] += 1;
        }
        for (i, count) in tenths.iter().enumerate() {
            let share = *count as f64 / xs.len() as f64;
            let want = if i < 8 {
                1.0 / 9.0
            } else if i == 8 {
                0.75 / 9.0
            } else {
                0.25 / 9.0
            };
            assert!(
                (share - want).abs() < 0.005,
                "tenth {i}: {share} (want {want})"
            );
        }
        // Without jitter the steady state is uniform.
        let xs = draws(100_000, |u, v| steady_wait(I, 0.0, u, v));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn a_fresh_cache_is_never_kept_past_its_expiry() {
        let remaining = Duration::from_secs(300);
        let xs = draws(10_000, |u, v| after_fresh_cache(remaining, I, 0.2, u, v));
        assert!(xs.iter().all(|x| *x <= 0.3));
        // Two thirds of the steady draws come after 300 s ((0.5 + 0.1) / 0.9): those wait for
        // the expiry.
        let at_expiry = xs.iter().filter(|x| **x == 0.3).count() as f64 / xs.len() as f64;
        assert!((at_expiry - 2.0 / 3.0).abs() < 0.03, "{at_expiry}");
    }
}
