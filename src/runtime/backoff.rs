//! Reconnect policy as a value: capped exponential backoff with "equal jitter", never giving up.
//!
//! Attempt n waits a random time in `[D/2, D)` where `D = min(cap, initial * 2^n)`: spread out so
//! hundreds of symbols that dropped together do not reconnect together, and never above `cap`.
//! Built on backon (its jitter adds up to 100% to a delay, so it is fed halved bounds).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::ConnectionConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub initial: Duration,
    pub cap: Duration,
}

impl ReconnectPolicy {
    pub fn from_config(c: &ConnectionConfig) -> ReconnectPolicy {
        ReconnectPolicy {
            initial: Duration::from_millis(c.reconnect_initial_ms),
            cap: Duration::from_secs(c.reconnect_max_s),
        }
    }

    /// A fresh sequence of delays (start again here after a good connection).
    /// `seed` fixes the jitter, for tests.
    pub fn delays(
        &self,
        seed: Option<u64>,
    ) -> impl Iterator<Item = Duration> + Send + Sync + use<> {
        let b = ExponentialBuilder::new()
            .with_min_delay(self.initial / 2)
            .with_max_delay(self.cap / 2)
            .with_factor(2.0)
            .without_max_times();
        let b = match seed {
            Some(s) => b.with_jitter().with_jitter_seed(s),
            None => b.with_jitter(),
        };
        let cap = self.cap;
        // never-ending; the fallback only guards against a policy that would end
        b.build().chain(std::iter::repeat(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn grows_by_two_within_equal_jitter_bounds_and_caps() {
        for seed in 0..50 {
            let got: Vec<Duration> = policy().delays(Some(seed)).take(20).collect();
            for (n, d) in got.iter().enumerate() {
                let full = Duration::from_millis(500)
                    .saturating_mul(1u32 << n.min(20))
                    .min(Duration::from_secs(60));
                assert!(
                    *d >= full / 2 && *d < full,
                    "seed {seed} attempt {n}: {d:?} not in [{:?}, {full:?})",
                    full / 2
                );
            }
            // after log2(60 / 0.5) ~ 7 doublings the cap holds
            assert!(
                got[10..]
                    .iter()
                    .all(|d| *d >= Duration::from_secs(30) && *d < Duration::from_secs(60))
            );
        }
    }

    #[test]
    fn never_gives_up() {
        assert_eq!(policy().delays(Some(1)).take(10_000).count(), 10_000);
    }

    #[test]
    fn jitter_spreads_and_reset_starts_over() {
        let firsts: std::collections::BTreeSet<Duration> = (0..20)
            .map(|s| policy().delays(Some(s)).nth(3).unwrap_or_default())
            .collect();
        assert!(firsts.len() > 10, "jitter should differ between seeds");
        let mut a = policy().delays(Some(7));
        for _ in 0..8 {
            a.next();
        }
        // a reset is a fresh sequence: back to the initial range
        let d = policy().delays(Some(7)).next().unwrap_or_default();
        assert!(d >= Duration::from_millis(250) && d < Duration::from_millis(500));
    }

    #[test]
    fn same_seed_same_delays() {
        let a: Vec<_> = policy().delays(Some(3)).take(12).collect();
        let b: Vec<_> = policy().delays(Some(3)).take(12).collect();
        assert_eq!(a, b);
    }
}
