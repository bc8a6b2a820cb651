//! The contract checker (`capmesh-contract`).

use capmesh_contract::{Compiled, Validators, Violation, capability_id, check};
use capmesh_wire::{
    Contract,
    cbor::{self, Limits},
};
use serde_json::{Value, json};

use crate::split;

/// A contract, then values to validate under it. First byte even: the rest is a contract's
/// canonical CBOR (as it travels in adverts). Odd: JSON, either a contract or an array of a
/// contract and values (as the API and files give them).
///
/// The checker accepts or gives a typed error; what it accepts has the id [`capability_id`]
/// computes, compiles (directly and through the [`Validators`] cache), and validating any value
/// under it (the fuzzer's, a few fixed ones, and its own schemas) answers without panicking and
/// the same way twice.
pub fn contract(data: &[u8]) {
    let Some((mode, rest)) = split(data, 2) else { return };
    let (contract, mut values) = if mode == 0 {
        let Ok(contract) = cbor::from_slice::<Contract>(rest, Limits::default(), "Contract") else {
            return;
        };
        assert_eq!(cbor::to_vec(&contract).expect("a decoded contract encodes"), rest);
        (contract, Vec::new())
    } else {
        let Ok(json) = serde_json::from_slice::<Value>(rest) else { return };
        let (first, values) = match json {
            Value::Array(mut items) if !items.is_empty() => {
                let first = items.remove(0);
                (first, items)
            }
            other => (other, Vec::new()),
        };
        let Ok(contract) = serde_json::from_value::<Contract>(first) else { return };
        (contract, values)
    };

    let id = capability_id(&contract);
    match check(&contract) {
        Ok(checked) => {
            assert_eq!(id.as_ref().ok(), Some(&checked), "check returns the capability id");
            let compiled = Compiled::new(&contract).expect("a contract that checks compiles");
            assert_eq!(compiled.id(), checked);
            let cached = Validators::new(2).get(&checked, &contract).expect("and is cached");
            values.extend([json!(null), json!({}), json!([]), json!("")]);
            values.extend([contract.input.clone(), contract.output.clone()]);
            for value in &values {
                let input = compiled.validate_input(value);
                let output = compiled.validate_output(value);
                assert_eq!(cached.validate_input(value).is_ok(), input.is_ok());
                assert_eq!(cached.validate_output(value).is_ok(), output.is_ok());
                for violation in input.err().into_iter().chain(output.err()).flatten() {
                    // The reason is cut to its maximum, plus the `…` that says so.
                    assert!(violation.reason.len() <= Violation::MAX_REASON_BYTES + 3);
                    let _ = violation.to_string();
                }
            }
        }
        Err(e) => {
            assert!(!e.code().is_empty());
            let _ = e.to_string();
            assert!(Compiled::new(&contract).is_err(), "compiling refuses what check refuses");
        }
    }
}
