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
