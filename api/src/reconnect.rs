//! How a tunnel client waits before it connects again: `mysocketctl`, and the fleets of the
//! failover bench and the fault-injection suite, which stand in for many of them.
//!
//! When a node dies, every client it held loses its session at the same moment. Each waits a
//! random time between none and the wait that is due ("full jitter"), so that a thousand of
//! them reach the other nodes spread over a second rather than in one burst of key exchanges
//! and claims; failures double the wait that is due, up to [`MAX_BACKOFF`]. The first wait is
//! gRPC's initial connection backoff (one second, doc/connection-backoff.md).

use std::time::Duration;

/// The wait due after a lost session, and after a first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait due after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A random wait between none and `due`.
pub fn jittered(due: Duration, rng: &mut impl rand::Rng) -> Duration {
    due.mul_f64(rng.gen_range(0.0..1.0))
}

/// The wait due after one more failure.
pub fn doubled(due: Duration) -> Duration {
    (due * 2).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many clients losing their node at once come back spread over the whole wait, none after it.
    #[test]
    fn waits_spread_over_the_whole_range() {
        let mut rng = rand::thread_rng();
        let mut waits: Vec<Duration> = (0..1000).map(|_| jittered(FIRST_BACKOFF, &mut rng)).collect();
        waits.sort();
        assert!(waits.iter().all(|w| *w < FIRST_BACKOFF), "{:?}", waits.last());
        // Each tenth of the second gets its share (100 expected; far from 0 or 1000).
        for tenth in 0..10u32 {
            let (lo, hi) = (FIRST_BACKOFF * tenth / 10, FIRST_BACKOFF * (tenth + 1) / 10);
            let n = waits.iter().filter(|w| **w >= lo && **w < hi).count();
            assert!((50..=160).contains(&n), "{n} waits in {lo:?}..{hi:?}");
        }
    }

    #[test]
    fn failures_double_the_wait_due_up_to_the_cap() {
        let mut due = FIRST_BACKOFF;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(due.as_millis());
            due = doubled(due);
        }
        assert_eq!(seen, [1000, 2000, 4000, 5000, 5000]);
    }
}
