//! Token buckets, concurrency and eviction, with time passed in.

use std::time::{Duration, Instant};

use capmesh_policy::{Admission, Limits, Permit, Refusal};

use crate::{cap, peer};

const RATE_10: Limits = Limits { rate_per_sec: 10.0, burst: 3, concurrency: 100 };

fn assert_send_static<T: Send + 'static>() {}

#[test]
fn permit_and_admission_are_send() {
    assert_send_static::<Permit>();
    assert_send_static::<Admission>();
    fn sync<T: Sync>() {}
    sync::<Admission>();
}

#[test]
fn burst_then_rate_limited_then_refilled() {
    let admission = Admission::new(16);
    let (caller, echo) = (peer(1), cap("echo"));
    let t0 = Instant::now();
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(admission.admit(&caller, &echo, RATE_10, t0).unwrap());
    }
    let refusal = admission.admit(&caller, &echo, RATE_10, t0).unwrap_err();
    assert_eq!(refusal, Refusal::RateLimited { retry_after_ms: 100 });
    assert_eq!(refusal.code(), capmesh_wire::Code::RateLimited);
    assert_eq!(refusal.retry_after_ms(), Some(100));
    assert!(refusal.to_string().contains("100 ms"), "{refusal}");

    // 40 ms later 0.4 of a token has refilled: 60 ms to go.
    let t1 = t0 + Duration::from_millis(40);
    assert_eq!(
        admission.admit(&caller, &echo, RATE_10, t1).unwrap_err(),
        Refusal::RateLimited { retry_after_ms: 60 }
    );
    // At 100 ms one token is back, and only one.
    let t2 = t0 + Duration::from_millis(100);
    permits.push(admission.admit(&caller, &echo, RATE_10, t2).unwrap());
    assert!(matches!(
        admission.admit(&caller, &echo, RATE_10, t2),
        Err(Refusal::RateLimited { retry_after_ms: 100 })
    ));
    // Long idle refills to the burst, not beyond.
    let t3 = t0 + Duration::from_secs(60);
    for _ in 0..3 {
        permits.push(admission.admit(&caller, &echo, RATE_10, t3).unwrap());
    }
    assert!(admission.admit(&caller, &echo, RATE_10, t3).is_err());
}

#[test]
fn retry_after_is_about_one_over_rate_and_at_least_one() {
    let admission = Admission::new(16);
    let t0 = Instant::now();
    for (rate, expected) in [(1.0, 1000), (3.0, 334), (20.0, 50), (1_000.0, 1), (1e9, 1)] {
        let limits = Limits { rate_per_sec: rate, burst: 1, concurrency: 100 };
        let capability = cap(&format!("rate {rate}"));
        let _first = admission.admit(&peer(1), &capability, limits, t0).unwrap();
        assert_eq!(
            admission.admit(&peer(1), &capability, limits, t0).unwrap_err(),
            Refusal::RateLimited { retry_after_ms: expected },
            "rate {rate}"
        );
    }
}

#[test]
fn buckets_are_per_caller_and_capability() {
    let admission = Admission::new(16);
    let limits = Limits { rate_per_sec: 1.0, burst: 1, concurrency: 100 };
    let t0 = Instant::now();
    let _a = admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap();
    assert!(admission.admit(&peer(1), &cap("echo"), limits, t0).is_err());
    let _b = admission.admit(&peer(1), &cap("other"), limits, t0).unwrap();
    let _c = admission.admit(&peer(2), &cap("echo"), limits, t0).unwrap();
}

#[test]
fn time_going_backwards_refills_nothing() {
    let admission = Admission::new(16);
    let limits = Limits { rate_per_sec: 1.0, burst: 1, concurrency: 100 };
    let t0 = Instant::now() + Duration::from_secs(10);
    let _a = admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap();
    let earlier = t0 - Duration::from_secs(5);
    assert!(admission.admit(&peer(1), &cap("echo"), limits, earlier).is_err());
    let _b = admission.admit(&peer(1), &cap("echo"), limits, t0 + Duration::from_secs(1)).unwrap();
}

#[test]
fn busy_at_the_concurrency_limit_until_a_permit_drops() {
    let admission = Admission::new(16);
    let limits = Limits { rate_per_sec: 1_000.0, burst: 1_000, concurrency: 2 };
    let caller = peer(1);
    let t0 = Instant::now();
    let first = admission.admit(&caller, &cap("echo"), limits, t0).unwrap();
    // Concurrency counts over all capabilities of the caller.
    let second = admission.admit(&caller, &cap("other"), limits, t0).unwrap();
    let refusal = admission.admit(&caller, &cap("echo"), limits, t0).unwrap_err();
    assert_eq!(refusal, Refusal::Busy { running: 2, limit: 2 });
    assert_eq!(refusal.code(), capmesh_wire::Code::Busy);
    assert_eq!(refusal.retry_after_ms(), None);
    assert!(refusal.to_string().contains("limit is 2"), "{refusal}");
    // Another caller is not affected.
    let _other = admission.admit(&peer(2), &cap("echo"), limits, t0).unwrap();

    drop(first);
    let third = admission.admit(&caller, &cap("echo"), limits, t0).unwrap();
    assert!(admission.admit(&caller, &cap("echo"), limits, t0).is_err());
    drop(second);
    drop(third);
    let _a = admission.admit(&caller, &cap("echo"), limits, t0).unwrap();
    let _b = admission.admit(&caller, &cap("echo"), limits, t0).unwrap();
}

#[test]
fn permits_release_from_another_thread() {
    let admission = Admission::new(16);
    let limits = Limits { rate_per_sec: 1_000.0, burst: 1_000, concurrency: 1 };
    let t0 = Instant::now();
    let permit = admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap();
    std::thread::spawn(move || drop(permit)).join().unwrap();
    let _again = admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap();
}

#[test]
fn busy_spends_no_token() {
    let admission = Admission::new(16);
    let limits = Limits { rate_per_sec: 1.0, burst: 2, concurrency: 1 };
    let t0 = Instant::now();
    let permit = admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap();
    for _ in 0..5 {
        assert!(matches!(
            admission.admit(&peer(1), &cap("echo"), limits, t0),
            Err(Refusal::Busy { .. })
        ));
    }
    drop(permit);
    // The second token of the burst is still there.
    let _p = admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap();
}

#[test]
fn eviction_at_max_peers_is_counted() {
    let admission = Admission::new(3);
    let limits = Limits { rate_per_sec: 1.0, burst: 1, concurrency: 100 };
    let echo = cap("echo");
    let t0 = Instant::now();
    for n in 1..=3 {
        drop(admission.admit(&peer(n), &echo, limits, t0).unwrap());
    }
    assert_eq!(admission.evicted(), 0);
    assert_eq!(admission.tracked(), 3);
    // Peer 1 is seen again (refused, but seen), so peer 2 is now the least recently seen.
    assert!(admission.admit(&peer(1), &echo, limits, t0).is_err());
    drop(admission.admit(&peer(4), &echo, limits, t0).unwrap());
    assert_eq!(admission.evicted(), 1);
    assert_eq!(admission.tracked(), 3);
    // Peer 1 and 3 kept their empty buckets; peer 2 was forgotten and starts full again
    // (evicting the least recently seen, peer 3).
    assert!(admission.admit(&peer(1), &echo, limits, t0).is_err());
    assert!(admission.admit(&peer(2), &echo, limits, t0).is_ok());
    assert_eq!(admission.evicted(), 2);
    assert!(admission.admit(&peer(3), &echo, limits, t0).is_ok());
    assert_eq!(admission.evicted(), 3);
    assert_eq!(admission.tracked(), 3);
}

#[test]
fn eviction_prefers_callers_with_nothing_running() {
    let admission = Admission::new(2);
    let limits = Limits { rate_per_sec: 1_000.0, burst: 1_000, concurrency: 1 };
    let echo = cap("echo");
    let t0 = Instant::now();
    // Peer 1 is the oldest but has a call running; peer 2 is idle.
    let running = admission.admit(&peer(1), &echo, limits, t0).unwrap();
    drop(admission.admit(&peer(2), &echo, limits, t0).unwrap());
    drop(admission.admit(&peer(3), &echo, limits, t0).unwrap());
    assert_eq!(admission.evicted(), 1);
    // Peer 1 is still tracked, so still busy.
    assert!(matches!(admission.admit(&peer(1), &echo, limits, t0), Err(Refusal::Busy { .. })));
    drop(running);
    assert!(admission.admit(&peer(1), &echo, limits, t0).is_ok());
}

#[test]
fn zero_max_peers_still_tracks_one() {
    let admission = Admission::new(0);
    let limits = Limits { rate_per_sec: 1.0, burst: 1, concurrency: 1 };
    let t0 = Instant::now();
    drop(admission.admit(&peer(1), &cap("echo"), limits, t0).unwrap());
    drop(admission.admit(&peer(2), &cap("echo"), limits, t0).unwrap());
    assert_eq!(admission.tracked(), 1);
    assert_eq!(admission.evicted(), 1);
}
