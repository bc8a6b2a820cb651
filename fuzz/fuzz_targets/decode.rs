//! Arbitrary bytes through every decoder: nothing panics, and whatever decodes is canonical
//! (re-encodes to the very same bytes).
#![no_main]

use capmesh_types::NodeKey;
use capmesh_wire::{Envelope, Receiver, Rules, cbor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = cbor::Limits::default();
    if let Ok(value) = cbor::from_slice::<ciborium::Value>(data, limits, "CBOR value") {
        assert_eq!(cbor::value_to_vec(&value).expect("decoded values encode"), data);
    }
    if let Ok(value) = cbor::from_slice::<serde_json::Value>(data, limits, "JSON value") {
        assert_eq!(cbor::to_vec(&value).expect("decoded values encode"), data);
    }
    if let Ok(envelope) = Envelope::from_bytes(data, limits) {
        assert_eq!(envelope.to_bytes(), data);
        let _ = envelope.open(1_760_000_000_000, &Rules::default());
    }
    let me = NodeKey::from_seed([1; 32]).peer_id();
    let _ = Receiver::new(me).accept(data, 1_760_000_000_000);
});
