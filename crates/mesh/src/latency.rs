//! A latency histogram kept as plain counts (no metrics library): the crates that measure
//! (`find` here, calls in the market) record into it under the lock of their stats, `stats()`
//! snapshots it by copy, and the node turns it into Prometheus histograms at scrape time.

use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 0.5 ms to 60 s, about ×2.5 apart (a find
/// answered from the replica takes well under a millisecond, a deferred call minutes). The
/// last bucket takes everything slower.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Observations of a duration, by bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// `counts[i]`: observations at most `LATENCY_BOUNDS_US[i]` and above the bound before
    /// (not cumulative); the last entry counts those above every bound.
    pub counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of all observations, in microseconds (saturating).
    pub sum_us: u64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|bound| *bound < us);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    /// `(upper bound in seconds, observations in that bucket alone)`, the last bound
    /// `f64::INFINITY` (the shape prometheus-client's histogram encoder takes).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
    }

    pub fn sum_secs(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let mut l = Latency::default();
        l.observe(Duration::from_micros(0));
        l.observe(Duration::from_micros(500)); // on a bound: that bucket (`le` is inclusive)
        l.observe(Duration::from_micros(501));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(61));
        l.observe(Duration::MAX);
        assert_eq!(l.count, 6);
        assert_eq!(l.counts[0], 2);
        assert_eq!(l.counts[1], 1);
        assert_eq!(l.counts[3], 1);
        assert_eq!(l.counts[LATENCY_BOUNDS_US.len()], 2);
        assert_eq!(l.counts.iter().sum::<u64>(), l.count);
        assert_eq!(l.sum_us, u64::MAX, "saturates");
        let buckets: Vec<_> = l.buckets().collect();
        assert_eq!(buckets.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(buckets[0], (0.0005, 2));
        assert_eq!(buckets[10], (1.0, 0));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 2));
    }

    #[test]
    fn the_sum_is_in_seconds() {
        let mut l = Latency::default();
        l.observe(Duration::from_millis(1500));
        l.observe(Duration::from_millis(500));
        assert_eq!(l.sum_secs(), 2.0);
    }
}
