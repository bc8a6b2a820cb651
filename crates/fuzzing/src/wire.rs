//! Targets over `capmesh-wire`: raw bytes, signed records, and every kind through a `Receiver`.

use capmesh_types::NodeKey;
use capmesh_wire::{
    Advert, Attestation, Body, Carrier, Contract, Countersignature, Envelope, EnvelopePayload,
    LedgerHead, Payload, Receipt, Receiver, Record, Retirement, Rules, Signed, VERSION,
    VerifyError,
    cbor::{self, Limits},
    schema, seal,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{KEYS, NOW_MS, key_of};

/// Arbitrary bytes through every decoder: nothing panics, and whatever decodes is canonical
/// (re-encodes to the very same bytes).
pub fn decode(data: &[u8]) {
    let limits = Limits::default();
    if let Ok(value) = cbor::from_slice::<ciborium::Value>(data, limits, "CBOR value") {
        assert_eq!(cbor::value_to_vec(&value).expect("decoded values encode"), data);
    }
    if let Ok(value) = cbor::from_slice::<serde_json::Value>(data, limits, "JSON value") {
        assert_eq!(cbor::to_vec(&value).expect("decoded values encode"), data);
    }
    if let Ok(envelope) = Envelope::from_bytes(data, limits) {
        assert_eq!(envelope.to_bytes(), data);
        let _ = envelope.open(NOW_MS, &Rules::default());
    }
    let me = NodeKey::from_seed([1; 32]).peer_id();
    let _ = Receiver::new(me).accept(data, NOW_MS);
}

/// Typed records. The first byte picks the type (low 7 bits, modulo 7: Advert, Retirement,
/// Attestation, Receipt, Countersignature, LedgerHead, Contract) and the form of the rest (high
/// bit clear: a signed object `{payload, sig}`; set: a bare payload, signed here by its signer
/// when that is a key of specs/vectors).
///
/// Whatever parses is canonical, whatever decodes re-encodes to its payload and survives its
/// JSON projection, a record that verifies still verifies after re-encoding (same id), and a
/// record re-signed by its signer verifies exactly when its time window holds.
pub fn records(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else { return };
    let bare = first & 0x80 != 0;
    match (first & 0x7f) % 7 {
        0 => record::<Advert>(rest, bare),
        1 => record::<Retirement>(rest, bare),
        2 => record::<Attestation>(rest, bare),
        3 => record::<Receipt>(rest, bare),
        4 => record::<Countersignature>(rest, bare),
        5 => record::<LedgerHead>(rest, bare),
        _ => contract_record(rest),
    }
}

fn record<T: Record + Clone + PartialEq>(data: &[u8], bare: bool) {
    let limits = Limits::default();
    let signed = if bare {
        let Ok(record) = T::decode_payload(data, limits) else { return };
        match key_of(record.signer()) {
            Some(key) => Signed::<T>::sign(key, &record).expect("a decoded record encodes"),
            None => Signed::from_parts(data.to_vec(), [0; 64]),
        }
    } else {
        let Ok(signed) = Signed::<T>::from_bytes(data, limits) else { return };
        assert_eq!(signed.to_bytes(), data, "a parsed signed object is canonical");
        signed
    };
    let Ok(record) = signed.decode(limits) else { return };
    assert_eq!(
        cbor::to_vec(&record).expect("a decoded record encodes"),
        signed.payload(),
        "a decoded payload is canonical"
    );
    assert_eq!(json_round_trip(&record), record, "the JSON projection round-trips");

    let (rules, now) = (Rules::default(), record.issued());
    if let Ok(verified) = signed.verify(now, &rules) {
        assert_eq!(verified.record, record);
        assert_eq!(verified.id, signed.id());
        let again = Signed::<T>::from_bytes(&signed.to_bytes(), limits)
            .expect("a signed object parses back");
        let again = again.verify(now, &rules).expect("a verified record verifies re-encoded");
        assert_eq!(again.id, verified.id);
        assert_eq!(again.record, record);
    }
    if let Some(key) = key_of(record.signer()) {
        let resigned = Signed::<T>::sign(key, &record).expect("a decoded record encodes");
        assert_eq!(resigned.payload(), signed.payload());
        let verdict = resigned.verify(now, &rules);
        match record.check_time(now, rules.skew_ms) {
            Ok(()) => {
                verdict.expect("a record signed by its signer verifies in its time window");
            }
            Err(e) => assert_eq!(verdict.expect_err("out of its window").code(), e.code()),
        }
    }
}

fn contract_record(data: &[u8]) {
    let Ok(contract) = cbor::from_slice::<Contract>(data, Limits::default(), "Contract") else {
        return;
    };
    assert_eq!(cbor::to_vec(&contract).expect("a decoded contract encodes"), data);
    assert_eq!(json_round_trip(&contract), contract, "the JSON projection round-trips");
}

fn json_round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let json = serde_json::to_value(value).expect("wire types project to JSON");
    serde_json::from_value(json).expect("a JSON projection decodes")
}

/// Every kind through a [`Receiver`]. The input is an envelope payload (as `payload_hex` in
/// specs/vectors/envelopes.json): it decodes strictly (body rules included) or not at all, is
/// canonical, and its body's JSON projection decodes to the same body. It is then signed by a
/// key of ours as sender: as it came (any verdict, but an accepted envelope is the one sent), and
/// with a header that must pass (version, schema id, time window, recipient): accepted once,
/// then refused as a replay.
pub fn kinds(data: &[u8]) {
    let Ok(payload) = EnvelopePayload::decode_payload(data, Limits::default()) else { return };
    assert_eq!(cbor::to_vec(&payload).expect("a decoded payload encodes"), data);
    let kind = payload.kind();
    // A body's JSON projection shows the records it carries decoded, so it fails (with an
    // error) for a record whose payload does not decode: §7.2 decodes only the advert of an
    // `AdvertiseCapability` and the receipt of a `TaskDone`, the others are judged later.
    if let Ok(json) = serde_json::to_value(&payload.body) {
        let back = Body::from_json(kind, json)
            .expect("a body that passed its rules in CBOR passes them in JSON (protocol.md §8.8)");
        assert_eq!(back, payload.body);
    }

    let key: &NodeKey = key_of(&payload.sender()).unwrap_or(&KEYS[0].1);
    let me = payload.to.unwrap_or(KEYS[1].0);
    let mut sent = payload.clone();
    sent.from = key.public();
    let envelope = seal(key, &sent).expect("a decoded payload encodes");
    if let Ok(opened) = Receiver::new(me).accept(&envelope.to_bytes(), NOW_MS) {
        assert_eq!(opened.payload, sent);
        assert_eq!(opened.id, envelope.id());
    }

    let ts = sent.ts.min(u64::MAX / 2);
    sent.v = VERSION;
    sent.ts = ts;
    sent.exp = ts + 60_000;
    sent.schema = schema::id(kind);
    if kind.carrier() == Carrier::Rpc {
        sent.to = Some(me);
    }
    let bytes = seal(key, &sent).expect("a decoded payload encodes").to_bytes();
    let mut receiver = Receiver::new(me);
    let opened = receiver.accept(&bytes, ts).expect("a well-formed envelope is accepted");
    assert_eq!(opened.payload, sent);
    assert!(matches!(receiver.accept(&bytes, ts), Err(VerifyError::Replay(_))));
}
