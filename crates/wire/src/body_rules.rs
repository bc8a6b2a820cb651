//! The rules of protocol.md §8 that a body's shape does not express (the table of §8.8): fields
//! that must agree with each other, or with a record the body carries. Every typed decode of an
//! envelope payload runs them (§7.2 check 4), in CBOR and in JSON, before the version and the
//! signature, so that every receiver refuses the same bodies with the same code.

use capmesh_types::{Cid, Codec, Digest};
use serde::{Deserialize, Deserializer};

use crate::{
    Advert, AdvertiseCapability, Body, CallStatus, Negotiate, NegotiateAction, Receipt, SyncResult,
    TaskDone, TaskProgress,
    cbor::{self, DecodeError, Limits},
    error::VerifyError,
    repr::Bytes,
    signed::Payload,
};

/// Length of a binary record id, the only non-empty `SyncRange` bound.
const BINARY_ID_LEN: usize = 36;

impl Body {
    /// Checks the rules of protocol.md §8.8 in their order. The records they read
    /// (`AdvertiseCapability.advert`, `TaskDone.receipt`) are decoded strictly within `limits`
    /// and refused with their own decode error; their signatures are judged later, where the
    /// records are verified (§6.8).
    pub fn check(&self, limits: Limits) -> Result<(), VerifyError> {
        match self {
            Body::AdvertiseCapability(a) => {
                let advert = Advert::decode_payload(a.advert.payload(), limits)?;
                a.check_contract(&advert.capability)
            }
            Body::SyncResult(r) => r.check(),
            Body::Negotiate(n) => n.check(),
            Body::TaskProgress(p) => p.check(),
            Body::TaskDone(d) => d.check(limits),
            _ => Ok(()),
        }
    }
}

/// A body that breaks a rule of §8 is an invalid object (§11.1).
fn broken(kind: &'static str, reason: &str) -> VerifyError {
    VerifyError::Decode(DecodeError::Invalid { expected: kind, reason: reason.to_owned() })
}

impl AdvertiseCapability {
    /// The contract must be the one the advert names: its id is `capability` (§8.2).
    pub(crate) fn check_contract(&self, capability: &Cid) -> Result<(), VerifyError> {
        let bytes = cbor::to_vec(&self.contract).map_err(|e| broken("Contract", &e.to_string()))?;
        let actual = Cid::of(Codec::DagCbor, &bytes);
        if actual != *capability {
            return Err(VerifyError::CidMismatch { expected: *capability, actual });
        }
        Ok(())
    }
}

impl SyncResult {
    /// Reconcile mode sends `next` 0, log mode no ranges: both at once fit neither (§8.4).
    fn check(&self) -> Result<(), VerifyError> {
        if !self.ranges.is_empty() && self.next != 0 {
            return Err(broken("SyncResult", "ranges (reconcile mode) with a non-zero next"));
        }
        Ok(())
    }
}

impl Negotiate {
    /// `Accept` and `Counter` name the offer; `Counter` also carries its price (§8.5).
    fn check(&self) -> Result<(), VerifyError> {
        match (self.action, &self.offer, &self.price) {
            (NegotiateAction::Accept | NegotiateAction::Counter, None, _) => {
                Err(broken("Negotiate", "Accept and Counter must name an offer"))
            }
            (NegotiateAction::Counter, _, None) => {
                Err(broken("Negotiate", "Counter must carry a price"))
            }
            _ => Ok(()),
        }
    }
}

impl TaskProgress {
    /// Chunk 0 chains from 32 zero bytes, so its `chain` follows from its `data` alone (§8.5);
    /// later chunks need the previous one, which only the caller holds.
    fn check(&self) -> Result<(), VerifyError> {
        if self.seq == 0 && self.chain != Digest::of(&[&[0u8; 32][..], &self.data.0].concat()) {
            return Err(broken(
                "TaskProgress",
                "chunk 0's chain is not BLAKE3(32 zero bytes || data)",
            ));
        }
        Ok(())
    }
}

impl TaskDone {
    /// At most one of `output` and `error`; the receipt is for this call, and its status is `Ok`
    /// exactly when there is no error (§8.5). Whether neither may be absent (a successful stream)
    /// depends on the contract, which the caller checks.
    fn check(&self, limits: Limits) -> Result<(), VerifyError> {
        if self.output.is_some() && self.error.is_some() {
            return Err(broken("TaskDone", "both output and error"));
        }
        let receipt = Receipt::decode_payload(self.receipt.payload(), limits)?;
        if receipt.call != self.call {
            return Err(broken("TaskDone", "the receipt is for another call"));
        }
        if (receipt.status == CallStatus::Ok) == self.error.is_some() {
            let reason = match self.error {
                Some(_) => "an error with a receipt of status Ok".to_owned(),
                None => format!("no error with a receipt of status {:?}", receipt.status),
            };
            return Err(broken("TaskDone", &reason));
        }
        Ok(())
    }
}

/// A `SyncRange` bound: empty, or as long as a binary record id (§8.4).
pub(crate) fn sync_bound<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    let bytes = Bytes::deserialize(d)?;
    if !bytes.0.is_empty() && bytes.0.len() != BINARY_ID_LEN {
        return Err(serde::de::Error::custom(format_args!(
            "a range bound is empty or {BINARY_ID_LEN} bytes, not {}",
            bytes.0.len()
        )));
    }
    Ok(bytes)
}
