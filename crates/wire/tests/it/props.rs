//! Property tests: canonical round trips, and arbitrary or mutated bytes never panic the decoder.

use capmesh_types::{Cid, Codec, NodeKey};
use capmesh_wire::cbor::Limits as DecodeLimits;
use capmesh_wire::{repr::FixedBytes, *};
use proptest::prelude::*;
use serde_json::Value;

use crate::fixtures::{self, NOW};

/// Arbitrary JSON values: the data model of args, outputs and schemas.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{0,16}"
}

fn cid() -> impl Strategy<Value = Cid> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..8))
        .prop_map(|(raw, b)| Cid::of(if raw { Codec::Raw } else { Codec::DagCbor }, &b))
}

fn advert() -> impl Strategy<Value = Advert> {
    (
        cid(),
        prop::collection::vec(text(), 0..3),
        (any::<u64>(), text()),
        (any::<u64>(), any::<u64>(), any::<u32>()),
        prop::collection::vec(cid(), 0..3),
        (any::<u64>(), 0..NOW, NOW..u64::MAX),
    )
        .prop_map(
            |(
                capability,
                addrs,
                (amount, unit),
                (t, m, c),
                attestations,
                (seq, issued, expires),
            )| Advert {
                capability,
                provider: fixtures::provider().peer_id(),
                addrs,
                price: Price { amount, unit },
                limits: CallLimits { timeout_ms: t, max_input_bytes: m, concurrency: c },
                attestations,
                seq,
                issued,
                expires,
            },
        )
}

fn task_start() -> impl Strategy<Value = Body> {
    (any::<[u8; 16]>(), cid(), cid(), json_value(), any::<u64>()).prop_map(
        |(call, capability, offer, args, deadline)| {
            TaskStart { call: FixedBytes(call), capability, offer, args, deadline }.into()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn json_values_round_trip_canonically(value in json_value()) {
        let bytes = cbor::to_vec(&value).unwrap();
        cbor::check(&bytes, DecodeLimits::default()).unwrap();
        // The direct serializer and the value-tree writer agree.
        prop_assert_eq!(&cbor::value_to_vec(&ciborium::Value::serialized(&value).unwrap()).unwrap(), &bytes);
        let back: Value = cbor::from_slice(&bytes, DecodeLimits::default(), "JSON value").unwrap();
        prop_assert_eq!(cbor::to_vec(&back).unwrap(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_is_canonical(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(value) = cbor::from_slice::<Value>(&bytes, DecodeLimits::default(), "JSON value") {
            prop_assert_eq!(cbor::to_vec(&value).unwrap(), bytes.clone());
        }
        if let Ok(value) = cbor::from_slice::<ciborium::Value>(&bytes, DecodeLimits::default(), "CBOR value") {
            prop_assert_eq!(cbor::value_to_vec(&value).unwrap(), bytes.clone());
        }
        let _ = Envelope::from_bytes(&bytes, DecodeLimits::default()).map(|e| e.open(NOW, &Rules::default()));
        let _ = Receiver::new(fixtures::caller().peer_id()).accept(&bytes, NOW);
        let _ = Signed::<Advert>::from_parts(bytes.clone(), [0; 64]).verify(NOW, &Rules::default());
    }

    #[test]
    fn signed_adverts_round_trip(advert in advert()) {
        let signed = Signed::sign(&fixtures::provider(), &advert).unwrap();
        let parsed = Signed::<Advert>::from_bytes(&signed.to_bytes(), DecodeLimits::default()).unwrap();
        let verified = parsed.verify(NOW, &Rules::default()).unwrap();
        prop_assert_eq!(&verified.record, &advert);
        prop_assert_eq!(verified.id, signed.id());
        // The JSON projection is lossless: it rebuilds the same payload bytes.
        let json = serde_json::to_value(&signed).unwrap();
        let again: Signed<Advert> = serde_json::from_value(json).unwrap();
        prop_assert_eq!(again, signed);
    }

    #[test]
    fn envelopes_round_trip(body in task_start(), ttl in 1u64..600_000) {
        let (alice, bob) = (fixtures::caller(), fixtures::provider());
        let env = Envelope::builder(body.clone()).to(bob.peer_id()).ttl_ms(ttl).sign(&alice, NOW).unwrap();
        let opened = Receiver::new(bob.peer_id()).accept(&env.to_bytes(), NOW).unwrap();
        // Compared as canonical bytes: numeric reduction maps e.g. -0.0 to 0 by design.
        prop_assert_eq!(cbor::to_vec(&opened.payload.body).unwrap(), cbor::to_vec(&body).unwrap());
        let json = serde_json::to_value(&opened.payload).unwrap();
        let back: EnvelopePayload = serde_json::from_value(json).unwrap();
        prop_assert_eq!(cbor::to_vec(&back).unwrap(), env.payload().to_vec());
    }

    #[test]
    fn any_single_byte_change_to_an_envelope_is_refused(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let env = fixtures::envelope(fixtures::bodies(true).swap_remove(Kind::TaskDone as usize));
        let mut bytes = env.to_bytes();
        let at = pos.index(bytes.len());
        bytes[at] ^= xor;
        let mut rx = Receiver::new(fixtures::caller().peer_id());
        prop_assert!(rx.accept(&bytes, NOW).is_err(), "mutation at {} accepted", at);
    }
}

/// A small edit of canonical bytes: flip, insert or delete one byte.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip(i, x) => {
                let at = i.index(bytes.len());
                bytes[at] ^= x;
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            Mutation::Delete(i) => {
                bytes.remove(i.index(bytes.len()));
            }
        }
    }
    bytes
}

/// If `bytes` decode as `T`, they are exactly `T`'s canonical encoding.
fn strict<T: Payload>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(value) = T::decode_payload(bytes, DecodeLimits::default()) {
        prop_assert_eq!(
            cbor::to_vec(&value).unwrap(),
            bytes.to_vec(),
            "{} decoded leniently",
            T::NAME
        );
    }
    Ok(())
}

/// Every payload the fixtures make: each record type and each envelope payload (built once).
fn payloads() -> &'static [(&'static str, Vec<u8>)] {
    static ALL: std::sync::OnceLock<Vec<(&'static str, Vec<u8>)>> = std::sync::OnceLock::new();
    ALL.get_or_init(build_payloads)
}

fn build_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![];
    for full in [true, false] {
        out.push(("Advert", cbor::to_vec(&fixtures::advert(full)).unwrap()));
        out.push(("Attestation", cbor::to_vec(&fixtures::attestation(full)).unwrap()));
        out.push(("Receipt", cbor::to_vec(&fixtures::receipt(full)).unwrap()));
        for body in fixtures::bodies(full) {
            out.push(("EnvelopePayload", fixtures::envelope(body).payload().to_vec()));
        }
    }
    out.push(("Retirement", cbor::to_vec(&fixtures::retirement()).unwrap()));
    out.push(("Countersignature", cbor::to_vec(&fixtures::countersignature()).unwrap()));
    out.push(("LedgerHead", cbor::to_vec(&fixtures::ledger_head(true)).unwrap()));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Structure-aware: small edits of real payloads reach the typed decoders, which must
    /// either refuse the result or have decoded exactly its canonical form.
    #[test]
    fn typed_decoders_admit_only_canonical_forms(which in any::<prop::sample::Index>(), edits in prop::collection::vec(mutation(), 1..3)) {
        let all = payloads();
        let (ty, original) = &all[which.index(all.len())];
        let bytes = mutate(original.clone(), &edits);
        match *ty {
            "Advert" => strict::<Advert>(&bytes)?,
            "Attestation" => strict::<Attestation>(&bytes)?,
            "Receipt" => strict::<Receipt>(&bytes)?,
            "Retirement" => strict::<Retirement>(&bytes)?,
            "Countersignature" => strict::<Countersignature>(&bytes)?,
            "LedgerHead" => strict::<LedgerHead>(&bytes)?,
            _ => strict::<EnvelopePayload>(&bytes)?,
        }
    }
}

#[test]
fn every_fixture_body_round_trips_in_both_forms() {
    for full in [true, false] {
        for body in fixtures::bodies(full) {
            let env = fixtures::envelope(body.clone());
            let (_, to) = fixtures::parties(body.kind());
            let me = to.unwrap_or_else(|| NodeKey::from_seed([0x44; 32]).peer_id());
            let opened = Receiver::new(me).accept(&env.to_bytes(), NOW).unwrap();
            assert_eq!(opened.payload.body, body);
            let json = serde_json::to_value(&body).unwrap();
            assert_eq!(Body::from_json(body.kind(), json).unwrap(), body);
            let tree = ciborium::Value::serialized(&opened.payload).unwrap();
            assert_eq!(cbor::value_to_vec(&tree).unwrap(), env.payload(), "{:?}", body.kind());
        }
    }
}
