//! `capmesh envelope inspect`: verify an envelope or signed record and project it to JSON.

use std::collections::{BTreeMap, BTreeSet};

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{
    Advert, Attestation, Countersignature, Envelope, EnvelopePayload, LedgerHead, Payload, Receipt,
    Record, Retirement, Rules, Signed, VerifyError,
};
use serde::de::IgnoredAny;
use serde_json::json;

/// What was found and verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `Envelope` or the record type (`Advert`, …).
    pub type_name: &'static str,
    pub id: Cid,
    pub signer: PeerId,
    /// `{payload, sig}` in its JSON projection.
    pub json: serde_json::Value,
}

impl Report {
    /// The JSON printed by the CLI.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "type": self.type_name,
            "id": self.id.to_string(),
            "signer": self.signer.to_string(),
            "verified": true,
            "object": self.json,
        })
    }
}

/// Why inspection failed: which step, and the typed error with its stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error("not a signed object ({code}): {0}", code = .0.code())]
    NotSigned(VerifyError),
    #[error("the payload is neither an envelope nor a record; as an envelope ({code}): {envelope}", code = .envelope.code())]
    UnknownPayload { envelope: VerifyError },
    #[error("{type_name} {id} failed verification ({}): {error}", .error.code())]
    Failed { type_name: &'static str, id: Cid, error: VerifyError },
}

impl InspectError {
    /// The stable error code (as in specs/protocol.md and the vectors).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotSigned(e)
            | Self::UnknownPayload { envelope: e }
            | Self::Failed { error: e, .. } => e.code(),
        }
    }
}

/// Accepts binary CBOR, or the same bytes as hex text (as in the test vectors).
pub fn read_input(raw: &[u8]) -> Vec<u8> {
    let text = raw.trim_ascii();
    let is_hex =
        !text.is_empty() && text.len().is_multiple_of(2) && text.iter().all(u8::is_ascii_hexdigit);
    match is_hex.then(|| data_encoding::HEXLOWER_PERMISSIVE.decode(text)) {
        Some(Ok(bytes)) => bytes,
        _ => raw.to_vec(),
    }
}

/// Verifies `bytes` as an envelope (signature, version, time window at `now_ms`, schema id) or
/// as one of the signed records. Replay and recipient need a receiving node and are not judged.
pub fn inspect(bytes: &[u8], now_ms: u64, rules: &Rules) -> Result<Report, InspectError> {
    let envelope = Envelope::from_bytes(bytes, rules.limits).map_err(InspectError::NotSigned)?;
    let as_envelope = match envelope.decode(rules.limits) {
        Ok(payload) => return envelope_report(&envelope, &payload, now_ms, rules),
        Err(e) => e,
    };
    // Not an envelope: the payload's field names say which record it means to be, so a
    // broken record is reported as that record's error, not as a failed envelope.
    let keys = capmesh_wire::cbor::from_slice::<BTreeMap<String, IgnoredAny>>(
        envelope.payload(),
        rules.limits,
        "signed payload",
    )
    .map(|m| m.into_keys().collect::<BTreeSet<_>>())
    .unwrap_or_default();
    let has = |k: &str| keys.contains(k);
    let (payload, sig) = (envelope.payload().to_vec(), *envelope.sig());
    if has("kind") {
        Err(InspectError::Failed { type_name: "Envelope", id: envelope.id(), error: as_envelope })
    } else if has("addrs") {
        record_report(&Signed::<Advert>::from_parts(payload, sig), now_ms, rules)
    } else if has("subject") {
        record_report(&Signed::<Attestation>::from_parts(payload, sig), now_ms, rules)
    } else if has("validation") {
        record_report(&Signed::<Receipt>::from_parts(payload, sig), now_ms, rules)
    } else if has("receipt") {
        record_report(&Signed::<Countersignature>::from_parts(payload, sig), now_ms, rules)
    } else if has("provider") && has("seq") {
        record_report(&Signed::<Retirement>::from_parts(payload, sig), now_ms, rules)
    } else if has("len") && has("hash") {
        record_report(&Signed::<LedgerHead>::from_parts(payload, sig), now_ms, rules)
    } else {
        Err(InspectError::UnknownPayload { envelope: as_envelope })
    }
}

fn envelope_report(
    envelope: &Envelope,
    payload: &EnvelopePayload,
    now_ms: u64,
    rules: &Rules,
) -> Result<Report, InspectError> {
    let fail = |error| InspectError::Failed { type_name: "Envelope", id: envelope.id(), error };
    let opened = envelope.open(now_ms, rules).map_err(fail)?;
    Ok(Report {
        type_name: "Envelope",
        id: opened.id,
        signer: payload.sender(),
        json: serde_json::to_value(envelope).map_err(|e| fail(json_error(e)))?,
    })
}

fn record_report<T: Record>(
    signed: &Signed<T>,
    now_ms: u64,
    rules: &Rules,
) -> Result<Report, InspectError> {
    let fail = |error| InspectError::Failed { type_name: T::NAME, id: signed.id(), error };
    let verified = signed.verify(now_ms, rules).map_err(fail)?;
    Ok(Report {
        type_name: <T as Payload>::NAME,
        id: verified.id,
        signer: *verified.record.signer(),
        json: serde_json::to_value(signed).map_err(|e| fail(json_error(e)))?,
    })
}

/// The projection of a verified object cannot fail; if it ever does, say so as a decode error.
fn json_error(e: serde_json::Error) -> VerifyError {
    VerifyError::Decode(capmesh_wire::cbor::DecodeError::Invalid {
        expected: "JSON projection",
        reason: e.to_string(),
    })
}
