//! Per-peer token buckets for inbound gossip: a burst, then a steady rate. Bounded: buckets of
//! peers that left are removed, and at most `max_peers` are kept.

use std::{collections::HashMap, hash::Hash, time::Instant};

#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    max_peers: usize,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub(crate) fn new(per_sec: u32, burst: u32, max_peers: usize) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            max_peers: max_peers.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`; false when the peer is over its rate.
    pub(crate) fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_peers {
            // Full: forget the bucket that was refilled longest ago (it is the closest to full).
            if let Some(oldest) =
                self.buckets.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone())
            {
                self.buckets.remove(&oldest);
            }
        }
        let (tokens, last) = self.buckets.entry(key.clone()).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.buckets.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate_per_peer() {
        let mut rl = RateLimiter::new(10, 5, 8);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| rl.allow(&1, t0)).count(), 5);
        // Another peer has its own bucket.
        assert!(rl.allow(&2, t0));
        // 300 ms at 10/s refills 3 tokens.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| rl.allow(&1, t1)).count(), 3);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut rl = RateLimiter::new(1, 1, 4);
        let t0 = Instant::now();
        for k in 0..100 {
            rl.allow(&k, t0 + Duration::from_millis(k));
        }
        assert_eq!(rl.buckets.len(), 4);
    }
}
