//! The policy file (`capmesh-policy`).

use std::time::Instant;

use capmesh_policy::{Admission, Policy};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::Price;

use crate::KEYS;

/// A policy file's text. The parser returns a policy or a typed error, never panics. For a
/// policy it accepts, every check is asked about the PeerIds, capability ids and units the text
/// names (and a few others): the limits keep their documented bounds and a fresh caller is
/// admitted, attestations can only turn a refusal into an acceptance, a unit with a maximum is
/// accepted, and a price refused at some amount is refused at every higher one.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let policy = match Policy::from_toml(text) {
        Ok(policy) => policy,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "_.:/-".contains(c)))
        .filter(|w| !w.is_empty())
        .take(64)
        .collect();
    let mut peers: Vec<PeerId> = words.iter().filter_map(|w| w.parse().ok()).collect();
    peers.extend(KEYS.iter().map(|(id, _)| *id));
    let mut capabilities: Vec<Cid> = words.iter().filter_map(|w| w.parse().ok()).collect();
    capabilities.push(Cid::of(capmesh_types::Codec::DagCbor, b"not named"));

    let yes = |_: &PeerId, _: &str, _: &PeerId| true;
    let no = |_: &PeerId, _: &str, _: &PeerId| false;
    let admission = Admission::new(4);
    let now = Instant::now();
    for capability in &capabilities {
        let limits = policy.limits(capability);
        assert!(limits.rate_per_sec.is_finite() && limits.rate_per_sec > 0.0, "{limits:?}");
        assert!(limits.burst >= 1 && limits.concurrency >= 1, "{limits:?}");
        for peer in &peers {
            if policy.check_caller(peer, capability, &yes).is_err() {
                let denial = policy.check_caller(peer, capability, &no);
                assert!(denial.is_err(), "attestations made {peer} refused");
            }
        }
        // The caller is fresh for this capability only while admission tracks it.
        let permit = admission.admit(&KEYS[0].0, capability, limits, now);
        let _ = admission.admit(&KEYS[0].0, capability, limits, now);
        if capability == &capabilities[0] {
            let _held = permit.expect("a fresh caller is admitted (burst, concurrency >= 1)");
        }
    }
    for peer in &peers {
        if policy.check_provider(peer, &yes).is_err() {
            assert!(policy.check_provider(peer, &no).is_err(), "attestations made {peer} refused");
        }
    }
    for unit in words.iter().copied().chain(["credit", ""]) {
        let price = |amount| Price { amount, unit: unit.to_owned() };
        if let Some(max) = policy.max_price(unit) {
            assert!(policy.accepts_unit(unit), "a unit with a maximum is accepted: {unit}");
            policy.check_price(&price(max), None).expect("the maximum itself is accepted");
            if let Some(above) = max.checked_add(1) {
                policy.check_price(&price(above), None).expect_err("above the maximum");
            }
        }
        if !policy.accepts_unit(unit) {
            policy.check_price(&price(0), None).expect_err("a unit not accepted");
        }
        for amount in [0, 1, 1000, u64::MAX] {
            let one = price(amount);
            let _ = policy.check_price(&one, Some(&one));
            if policy.check_price(&one, None).is_err() {
                let higher = price(amount.saturating_mul(2).max(amount.saturating_add(1)));
                assert!(policy.check_price(&higher, None).is_err(), "{one:?} refused, not more");
            }
        }
    }
}
