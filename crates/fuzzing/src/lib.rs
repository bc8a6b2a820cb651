//! The bodies of the fuzz targets in `fuzz/`: one `pub fn target(data: &[u8])` per target, each
//! asserting properties of what it reaches, never merely "does not panic". `fuzz/fuzz_targets/`
//! wraps each in `fuzz_target!`, and `tests/corpus.rs` replays the corpora kept in
//! `fuzz/corpus/<target>/` through the same functions, so a regression fails a normal
//! `cargo test` (no nightly needed).
//!
//! | target | reaches |
//! |---|---|
//! | [`decode`] | the strict CBOR checker, `Envelope` parsing, `open`, `Receiver::accept` |
//! | [`records`] | every signed record type: parse, decode, JSON projection, verify, re-sign |
//! | [`kinds`] | every kind's body in an envelope payload, re-signed through a `Receiver` |
//! | [`contract`] | the contract checker, compilation, and validation of values under it |
//! | [`policy`] | the policy file's parser and every check of a policy it accepts |
//! | [`rpc_frame`] | the `/capmesh/rpc/1.0.0` codec's frame reader and writer |
//! | [`api_body`] | API request bodies and query strings, through axum's own extractors |
//!
//! ```
//! capmesh_fuzzing::decode(&[0x17]);
//! for (name, target) in capmesh_fuzzing::TARGETS {
//!     target(b"");
//!     assert!(!name.is_empty());
//! }
//! ```

use std::sync::LazyLock;

use capmesh_types::{NodeKey, PeerId};

mod api;
mod contract;
mod policy;
mod rpc;
mod wire;

pub use api::api_body;
pub use contract::contract;
pub use policy::policy;
pub use rpc::rpc_frame;
pub use wire::{decode, kinds, records};

/// A target's body: takes the fuzzer's input, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, as in `fuzz/Cargo.toml` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("decode", decode),
    ("records", records),
    ("kinds", kinds),
    ("contract", contract),
    ("policy", policy),
    ("rpc_frame", rpc_frame),
    ("api_body", api_body),
];

/// The time the vectors in specs/vectors are made at (unix ms).
const NOW_MS: u64 = 1_760_000_000_000;

/// The keys of specs/vectors (seeds 0x11, 0x22, 0x33), so that records and envelopes they sign
/// can be re-signed after the fuzzer changed them.
static KEYS: LazyLock<Vec<(PeerId, NodeKey)>> = LazyLock::new(|| {
    [0x11, 0x22, 0x33]
        .into_iter()
        .map(|b| {
            let key = NodeKey::from_seed([b; 32]);
            (key.peer_id(), key)
        })
        .collect()
});

/// The key of `peer`, if it is one of [`KEYS`].
fn key_of(peer: &PeerId) -> Option<&'static NodeKey> {
    KEYS.iter().find(|(id, _)| id == peer).map(|(_, key)| key)
}

/// The first byte picks a variant among `n`, the rest is the input.
fn split(data: &[u8], n: u8) -> Option<(u8, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((first % n, rest))
}
