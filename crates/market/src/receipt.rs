//! Receipt hashes (protocol.md §6.8) and the caller's checks of a provider's receipt.

use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{CallId, CallStatus, Receipt, Rules, Signed, TaskDone, cbor};

/// BLAKE3 of the canonical CBOR of a JSON value: a receipt's `input` and `output`.
pub fn json_digest(value: &serde_json::Value) -> Result<Digest, cbor::EncodeError> {
    Ok(Digest::of(&cbor::to_vec(value)?))
}

/// One link of a stream's chain: BLAKE3(previous ‖ data).
pub fn chain_next(prev: &Digest, data: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(prev.as_bytes());
    h.update(data);
    Digest::from_bytes(*h.finalize().as_bytes())
}

/// The chain's start: 32 zero bytes.
pub const CHAIN_START: Digest = Digest::from_bytes([0; 32]);

/// What the caller knows independently of the provider's word.
#[derive(Debug)]
pub(crate) struct Expected<'a> {
    pub call: CallId,
    pub capability: Cid,
    pub caller: PeerId,
    pub provider: PeerId,
    pub offer: Cid,
    pub input: Digest,
    /// Output hash (or stream root) computed from what was received; `None` if nothing was.
    pub output: Option<Digest>,
    pub rules: &'a Rules,
}

/// Why a receipt is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receipt refused: {0}")]
pub(crate) struct BadReceipt(pub(crate) String);

/// Verifies `done.receipt` against what the caller sent and received (protocol.md §6.8
/// "Receipts are two-party"). Returns the decoded receipt.
pub(crate) fn check(done: &TaskDone, expected: &Expected<'_>) -> Result<Receipt, BadReceipt> {
    let signed: &Signed<Receipt> = &done.receipt;
    // Signature with the provider's key, strict decode; time window of the record (`ended`
    // not in the future).
    let verified = signed
        .verify(crate::now_ms(), expected.rules)
        .map_err(|e| BadReceipt(format!("{e} ({})", e.code())))?;
    let r = verified.record;
    let field = |name: &str, ok: bool| {
        if ok { Ok(()) } else { Err(BadReceipt(format!("its {name} is not this call's"))) }
    };
    field("call", r.call == expected.call && done.call == expected.call)?;
    field("capability", r.capability == expected.capability)?;
    field("caller", r.caller == expected.caller)?;
    field("provider", r.provider == expected.provider)?;
    field("offer", r.offer == expected.offer)?;
    field("input hash", r.input == expected.input)?;
    field("output hash", r.output == expected.output)?;
    let ok = r.status == CallStatus::Ok;
    if ok == done.error.is_some() {
        return Err(BadReceipt(format!(
            "status {:?} contradicts the answer ({})",
            r.status,
            if done.error.is_some() { "an error" } else { "no error" }
        )));
    }
    if r.ended < r.started {
        return Err(BadReceipt("it ended before it started".into()));
    }
    Ok(r)
}
