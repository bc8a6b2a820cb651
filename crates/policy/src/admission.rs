//! Per-caller admission on the provider: rate (token buckets) and concurrency.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Instant,
};

use capmesh_types::{Cid, PeerId};
use capmesh_wire::Code;

use crate::Limits;

/// Token buckets kept per caller; past this the least recently used one is dropped (the caller
/// then gets a full bucket for that capability again).
pub const MAX_BUCKETS_PER_CALLER: usize = 256;

/// Rounding slack in token and millisecond arithmetic.
const TOKEN_EPSILON: f64 = 1e-9;

/// Per-caller admission on the provider: a token bucket per (caller, capability) and a count of
/// running calls per caller, checked against the [`Limits`] of the capability.
///
/// Bounded: at most `max_peers` callers are tracked; admitting a new one beyond that evicts the
/// least recently seen caller that has no call running (or, if every tracked caller has one, the
/// least recently seen), counted in [`Admission::evicted`]. An evicted caller starts again with
/// full buckets. Thread-safe; time is an argument so that tests are deterministic.
#[derive(Debug)]
pub struct Admission {
    table: Mutex<Table>,
    evicted: AtomicU64,
}

#[derive(Debug)]
struct Table {
    max_peers: usize,
    /// Bumped on each admit; orders callers and buckets by when they were last seen.
    tick: u64,
    callers: HashMap<PeerId, Caller>,
    /// `Caller::seen` → caller, oldest first.
    by_age: BTreeMap<u64, PeerId>,
}

#[derive(Debug)]
struct Caller {
    seen: u64,
    running: Arc<AtomicU32>,
    buckets: HashMap<Cid, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    seen: u64,
}

/// An admitted call: holds one of its caller's concurrency slots and releases it when dropped.
#[derive(Debug)]
#[must_use = "the call counts as running only while the permit is held"]
pub struct Permit {
    running: Arc<AtomicU32>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why [`Admission::admit`] refused a call; both are retryable (protocol §11.2).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The caller's token bucket for this capability is empty.
    #[error("rate limit reached for this capability; retry after {retry_after_ms} ms")]
    RateLimited {
        /// Time until one token has refilled, at least 1.
        retry_after_ms: u64,
    },
    /// The caller already runs as many calls as it may.
    #[error(
        "{running} calls of this caller are running, the limit is {limit}; retry when one ends"
    )]
    Busy { running: u32, limit: u32 },
}

impl Refusal {
    /// The code as it goes in `ErrorBody.code`: `RateLimited` or `Busy`.
    pub const fn code(&self) -> Code {
        match self {
            Refusal::RateLimited { .. } => Code::RateLimited,
            Refusal::Busy { .. } => Code::Busy,
        }
    }

    /// The suggested wait for `ErrorBody.retry_after_ms`, when there is one.
    pub const fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            Refusal::Busy { .. } => None,
        }
    }
}

impl Admission {
    /// Tracks at most `max_peers` callers (at least 1).
    pub fn new(max_peers: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                max_peers: max_peers.max(1),
                tick: 0,
                callers: HashMap::new(),
                by_age: BTreeMap::new(),
            }),
            evicted: AtomicU64::new(0),
        }
    }

    /// Admits a call of `caller` to `capability` at `now` under `limits`, or refuses it.
    ///
    /// The concurrency check comes first, so a `Busy` refusal spends no token. A new bucket is
    /// full (`burst` tokens) and refills at `rate_per_sec`; a `now` earlier than a previous one
    /// refills nothing.
    pub fn admit(
        &self,
        caller: &PeerId,
        capability: &Cid,
        limits: Limits,
        now: Instant,
    ) -> Result<Permit, Refusal> {
        // The table stays consistent at every step, so a panic elsewhere does not spoil it.
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.tick += 1;
        let tick = table.tick;
        if !table.callers.contains_key(caller) && table.callers.len() >= table.max_peers {
            table.evict_one();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let Table { callers, by_age, .. } = &mut *table;
        let state = callers.entry(*caller).or_insert_with(|| Caller {
            seen: tick,
            running: Arc::new(AtomicU32::new(0)),
            buckets: HashMap::new(),
        });
        by_age.remove(&state.seen);
        by_age.insert(tick, *caller);
        state.seen = tick;

        let running = state.running.load(Ordering::Acquire);
        if running >= limits.concurrency {
            return Err(Refusal::Busy { running, limit: limits.concurrency });
        }
        if !state.buckets.contains_key(capability) && state.buckets.len() >= MAX_BUCKETS_PER_CALLER
        {
            let oldest = state.buckets.iter().min_by_key(|(_, b)| b.seen).map(|(cid, _)| *cid);
            if let Some(oldest) = oldest {
                state.buckets.remove(&oldest);
            }
        }
        let burst = f64::from(limits.burst);
        let bucket = state.buckets.entry(*capability).or_insert(Bucket {
            tokens: burst,
            at: now,
            seen: tick,
        });
        bucket.seen = tick;
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limits.rate_per_sec).min(burst);
        if now > bucket.at {
            bucket.at = now;
        }
        // Float dust (a token short by less than a billionth) is not worth a refusal.
        if bucket.tokens < 1.0 - TOKEN_EPSILON {
            let wait_ms =
                ((1.0 - bucket.tokens) * 1000.0 / limits.rate_per_sec - TOKEN_EPSILON).ceil();
            // `as` saturates: an absurdly slow rate gives u64::MAX, not a wrap.
            return Err(Refusal::RateLimited { retry_after_ms: (wait_ms as u64).max(1) });
        }
        bucket.tokens -= 1.0;
        state.running.fetch_add(1, Ordering::AcqRel);
        Ok(Permit { running: Arc::clone(&state.running) })
    }

    /// How many callers were evicted to stay within `max_peers`.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// How many callers are tracked now (at most `max_peers`).
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).callers.len()
    }
}

impl Table {
    /// Removes the least recently seen caller with no call running, else the least recently seen.
    /// (Evicting a caller with running calls would let it exceed its concurrency, hence the
    /// preference; its permits still release their own counter.)
    fn evict_one(&mut self) {
        let idle = self.by_age.iter().find(|(_, peer)| {
            self.callers.get(peer).is_some_and(|c| c.running.load(Ordering::Acquire) == 0)
        });
        let victim = idle.or_else(|| self.by_age.iter().next()).map(|(seen, peer)| (*seen, *peer));
        if let Some((seen, peer)) = victim {
            self.by_age.remove(&seen);
            self.callers.remove(&peer);
        }
    }
}
