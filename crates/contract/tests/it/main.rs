//! Integration tests of capmesh-contract: references never leave the document (network, files,
//! named pipes), and the name, tag and version rules equal the patterns of specs/.

mod props;
mod refs;

use capmesh_contract::Contract;
use serde_json::json;

/// A well-formed contract to vary.
fn contract() -> Contract {
    Contract {
        name: "echo".into(),
        version: "1.0.0".into(),
        description: "Returns its input.".into(),
        input: json!({"type": "object"}),
        output: json!({"type": "object"}),
        tags: vec![],
        read_only: true,
        idempotent: true,
        streaming: false,
    }
}

/// A contract whose deepest map opens at level `level` (its own map is at 0, `input` at 1).
fn nested_to(level: usize) -> Contract {
    let mut input = json!({});
    for _ in 1..level {
        input = json!({ "not": input });
    }
    Contract { input, ..contract() }
}

/// One limit for `cap id` and for what the node signs: a contract at the deepest nesting
/// `check` admits fits in every message that carries contracts, under the decoder's default
/// limits; one level deeper is refused by `check` itself, as `TooDeep`.
#[test]
fn a_contract_at_the_depth_limit_fits_every_message_and_one_deeper_is_refused() {
    use capmesh_contract::{ContractError, MAX_CONTRACT_DEPTH, check};
    use capmesh_wire::{DiscoverResult, Envelope, Rules, SyncResult};

    let deepest = nested_to(MAX_CONTRACT_DEPTH - 1);
    check(&deepest).expect("at the limit");
    let key = capmesh_types::NodeKey::from_seed([7; 32]);
    let now = 1_700_000_000_000;
    let discover = DiscoverResult {
        contracts: vec![deepest.clone()],
        adverts: vec![],
        attestations: vec![],
        retirements: vec![],
        cursor: None,
    };
    let sync =
        SyncResult { records: vec![], contracts: vec![deepest], next: 0, head: 0, ranges: vec![] };
    for envelope in [
        Envelope::builder(discover).sign(&key, now).expect("signs"),
        Envelope::builder(sync).sign(&key, now).expect("signs"),
    ] {
        envelope.open(now, &Rules::default()).expect("opens under the default limits");
    }

    let deeper = check(&nested_to(MAX_CONTRACT_DEPTH)).expect_err("one level deeper");
    assert!(matches!(deeper, ContractError::TooDeep { max: MAX_CONTRACT_DEPTH }), "{deeper}");
    assert_eq!(deeper.code(), "TooDeep");
    // Too deep for the encoder at all is the same refusal, not an encoding error.
    let far = check(&nested_to(100)).expect_err("far deeper");
    assert!(matches!(far, ContractError::TooDeep { .. }), "{far}");
}
