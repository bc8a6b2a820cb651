#![allow(unreachable_pub, clippy::unwrap_used)]
//! Integration tests of capmesh-policy: the file, the rules, admission and the live handle.

mod admission;
mod file;
mod handle;
mod rules;

use capmesh_types::{Cid, Codec, NodeKey, PeerId};

/// The PeerId of test node `n`.
pub fn peer(n: u8) -> PeerId {
    NodeKey::from_seed([n; 32]).peer_id()
}

/// A capability id named `name`.
pub fn cap(name: &str) -> Cid {
    Cid::of(Codec::DagCbor, name.as_bytes())
}

/// Attestations as the replica would answer: (subject, claim, issuer, expires), at time `now`.
#[derive(Debug, Default)]
pub struct Attestations {
    pub now: u64,
    pub held: Vec<(PeerId, String, PeerId, u64)>,
}

impl Attestations {
    pub fn with(mut self, subject: PeerId, claim: &str, issuer: PeerId, expires: u64) -> Self {
        self.held.push((subject, claim.to_owned(), issuer, expires));
        self
    }

    /// Whether an unexpired attestation exists: the closure the node passes to the policy.
    pub fn check(&self, subject: &PeerId, claim: &str, issuer: &PeerId) -> bool {
        self.held
            .iter()
            .any(|(s, c, i, exp)| s == subject && c == claim && i == issuer && *exp > self.now)
    }
}

/// No attestation at all.
pub fn none(_: &PeerId, _: &str, _: &PeerId) -> bool {
    false
}
