//! Receipt hashes (protocol.md §6.8) and the caller's checks of a provider's receipt.

use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{CallId, CallStatus, Price, Receipt, Rules, Signed, TaskDone, cbor};

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
    /// The offers this call id was started under at this provider, with their prices: the
    /// receipt names one of them (the one it ran under).
    pub offers: &'a [(Cid, Price)],
    pub input: Digest,
    /// Output hash (or stream root) computed from what was received; `None` if nothing was.
    pub output: Option<Digest>,
    /// The contract streams its output (then `TaskDone` carries no output).
    pub streaming: bool,
    pub rules: &'a Rules,
}

/// Why a receipt is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receipt refused: {0}")]
pub(crate) struct BadReceipt(pub(crate) String);

/// Verifies `done.receipt` against what the caller sent and received (protocol.md §6.8
/// "Receipts are two-party"). Returns the decoded receipt.
pub(crate) fn check(done: &TaskDone, expected: &Expected<'_>) -> Result<Receipt, BadReceipt> {
    // Exactly one of output and error, except a successful stream: neither (protocol.md §8.5).
    let shape_ok = match (&done.output, &done.error) {
        (Some(_), Some(_)) => false,
        (Some(_), None) => !expected.streaming,
        (None, Some(_)) => true,
        (None, None) => expected.streaming,
    };
    if !shape_ok {
        return Err(BadReceipt(
            "the answer must carry exactly one of output and error (a stream: neither)".into(),
        ));
    }
    let signed: &Signed<Receipt> = &done.receipt;
    // Signature with the provider's key, strict decode; time window of the record (`started`
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
    let offer = expected.offers.iter().find(|(id, _)| *id == r.offer);
    field("offer", offer.is_some())?;
    field("price", offer.is_some_and(|(_, price)| r.price == *price))?;
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

#[cfg(test)]
mod tests {
    use capmesh_types::{Codec, NodeKey};
    use capmesh_wire::{ErrorBody, Validation, repr::FixedBytes};
    use serde_json::json;

    use super::*;

    struct Fixture {
        provider: NodeKey,
        caller: NodeKey,
        receipt: Receipt,
        price: Price,
        /// The offer the call was started under, with its price.
        offers: Vec<(Cid, Price)>,
    }

    fn fixture() -> Fixture {
        let provider = NodeKey::from_seed([1; 32]);
        let caller = NodeKey::from_seed([2; 32]);
        let price = Price { amount: 3, unit: "credit".into() };
        let now = crate::now_ms();
        let receipt = Receipt {
            call: FixedBytes([7; 16]),
            capability: Cid::of(Codec::DagCbor, b"cap"),
            caller: caller.peer_id(),
            provider: provider.peer_id(),
            offer: Cid::of(Codec::DagCbor, b"offer"),
            input: json_digest(&json!({"a": 1})).unwrap(),
            output: Some(json_digest(&json!({"b": 2})).unwrap()),
            price: price.clone(),
            started: now,
            ended: now,
            status: CallStatus::Ok,
            validation: Validation::Passed,
        };
        let offers = vec![(receipt.offer, price.clone())];
        Fixture { provider, caller, receipt, price, offers }
    }

    fn expected<'a>(f: &'a Fixture, rules: &'a Rules, output: Option<Digest>) -> Expected<'a> {
        Expected {
            call: f.receipt.call,
            capability: f.receipt.capability,
            caller: f.caller.peer_id(),
            provider: f.provider.peer_id(),
            offers: &f.offers,
            input: f.receipt.input,
            output,
            streaming: false,
            rules,
        }
    }

    fn done(
        f: &Fixture,
        receipt: &Receipt,
        output: Option<serde_json::Value>,
        error: Option<ErrorBody>,
    ) -> TaskDone {
        TaskDone {
            call: f.receipt.call,
            output,
            error,
            receipt: Signed::sign(&f.provider, receipt).unwrap(),
        }
    }

    #[test]
    fn a_matching_receipt_passes_and_every_mismatch_is_named() {
        let f = fixture();
        let rules = Rules::default();
        let out = Some(json!({"b": 2}));
        let digest = json_digest(&json!({"b": 2})).ok();
        assert!(
            check(&done(&f, &f.receipt, out.clone(), None), &expected(&f, &rules, digest)).is_ok()
        );
        let mut dear = f.receipt.clone();
        dear.price.amount = 1_000_000_000;
        let err =
            check(&done(&f, &dear, out.clone(), None), &expected(&f, &rules, digest)).unwrap_err();
        assert!(err.0.contains("price"), "{err}");
        let mut other = f.receipt.clone();
        other.input = json_digest(&json!({"a": 2})).unwrap();
        let err = check(&done(&f, &other, out, None), &expected(&f, &rules, digest)).unwrap_err();
        assert!(err.0.contains("input"), "{err}");
    }

    #[test]
    fn a_repeat_under_a_renewed_offer_is_judged_by_the_offer_the_call_ran_under() {
        // The call id was started under `first`, then (the answer lost) under `renewed`: the
        // provider answers the repeat with its one run, whose receipt names `first`.
        let mut f = fixture();
        let renewed =
            (Cid::of(Codec::DagCbor, b"renewed"), Price { amount: 5, unit: "credit".into() });
        let rules = Rules::default();
        let out = Some(json!({"b": 2}));
        let digest = json_digest(&json!({"b": 2})).ok();
        let answer = done(&f, &f.receipt, out.clone(), None);
        f.offers = vec![renewed.clone()];
        let err = check(&answer, &expected(&f, &rules, digest)).unwrap_err();
        assert!(err.0.contains("offer"), "{err}");
        f.offers = vec![(f.receipt.offer, f.price.clone()), renewed.clone()];
        assert!(check(&answer, &expected(&f, &rules, digest)).is_ok());
        // Each offer keeps its own price: the first offer's receipt at the renewed price fails.
        let mut repriced = f.receipt.clone();
        repriced.price = renewed.1.clone();
        let err =
            check(&done(&f, &repriced, out, None), &expected(&f, &rules, digest)).unwrap_err();
        assert!(err.0.contains("price"), "{err}");
    }

    #[test]
    fn an_answer_with_neither_or_both_of_output_and_error_is_refused() {
        let f = fixture();
        let rules = Rules::default();
        let mut none = f.receipt.clone();
        none.output = None;
        let err = check(&done(&f, &none, None, None), &expected(&f, &rules, None)).unwrap_err();
        assert!(err.0.contains("exactly one"), "{err}");
        let e = ErrorBody {
            code: capmesh_wire::Code::Failed,
            message: "x".into(),
            retryable: false,
            retry_after_ms: None,
        };
        let both = done(&f, &f.receipt, Some(json!({"b": 2})), Some(e));
        let digest = json_digest(&json!({"b": 2})).ok();
        assert!(check(&both, &expected(&f, &rules, digest)).is_err());
    }

    #[test]
    fn a_receipt_signed_by_another_key_is_refused() {
        let f = fixture();
        let rules = Rules::default();
        let payload = cbor::to_vec(&f.receipt).unwrap();
        let sig =
            NodeKey::from_seed([9; 32]).sign(capmesh_wire::domain::RECEIPT.as_bytes(), &payload);
        let forged = TaskDone {
            call: f.receipt.call,
            output: Some(json!({"b": 2})),
            error: None,
            receipt: Signed::from_parts(payload, sig),
        };
        let err =
            check(&forged, &expected(&f, &rules, json_digest(&json!({"b": 2})).ok())).unwrap_err();
        assert!(err.0.contains("BadSignature"), "{err}");
    }
}
