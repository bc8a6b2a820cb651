//! The name, tag and version rules are exactly the patterns of specs/schemas/records/Contract.json
//! (which jsonschema's regex engine evaluates here as the oracle).

use capmesh_contract::check;
use proptest::prelude::*;
use serde_json::{Value, json};

const CONTRACT_SCHEMA: &str = include_str!("../../../../specs/schemas/records/Contract.json");

/// A matcher for the `pattern` at `pointer` in the Contract schema of specs/.
fn spec_pattern(pointer: &str) -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(CONTRACT_SCHEMA).expect("specs/ Contract.json is JSON");
    let pattern =
        schema.pointer(pointer).and_then(Value::as_str).expect("the spec has this pattern");
    jsonschema::draft202012::new(&json!({"type": "string", "pattern": pattern}))
        .expect("the pattern compiles")
}

proptest! {
    #[test]
    fn names_are_accepted_exactly_when_they_match_the_pattern(
        name in prop_oneof![
            "[a-z][a-z0-9_.-]{0,63}",
            "[a-z][a-z0-9_.-]{60,66}",
            "[a-zA-Z0-9_.:/ é-]{0,8}",
            any::<String>(),
        ],
    ) {
        let matches = spec_pattern("/properties/name/pattern").is_valid(&json!(name));
        let mut c = crate::contract();
        c.name = name;
        match check(&c) {
            Ok(_) => prop_assert!(matches, "{:?} accepted", c.name),
            Err(e) => {
                prop_assert!(!matches, "{:?} refused: {e}", c.name);
                prop_assert_eq!(e.code(), "BadName");
            }
        }
    }

    #[test]
    fn tags_are_accepted_exactly_when_they_match_the_pattern(
        tag in prop_oneof![
            "[a-z0-9][a-z0-9_.:-]{0,63}",
            "[a-z0-9][a-z0-9_.:-]{60,66}",
            "[a-zA-Z0-9_.:/ é-]{0,8}",
            any::<String>(),
        ],
    ) {
        let matches = spec_pattern("/$defs/Tag/pattern").is_valid(&json!(tag));
        let mut c = crate::contract();
        c.tags = vec![tag];
        match check(&c) {
            Ok(_) => prop_assert!(matches, "{:?} accepted", c.tags),
            Err(e) => {
                prop_assert!(!matches, "{:?} refused: {e}", c.tags);
                prop_assert_eq!(e.code(), "BadTags");
            }
        }
    }

    #[test]
    fn versions_are_accepted_exactly_when_they_match_the_pattern(
        version in prop_oneof![
            "(0|[1-9][0-9]{0,2}|0[0-9])\\.(0|[1-9][0-9]{0,2})\\.(0|[0-9]{1,3})(-[0-9A-Za-z.-]{0,6})?(\\+[0-9A-Za-z.+-]{0,6})?",
            "[0-9.+a-zA-Z-]{0,10}",
            any::<String>(),
        ],
    ) {
        let matches = spec_pattern("/properties/version/pattern").is_valid(&json!(version));
        let mut c = crate::contract();
        c.version = version;
        match check(&c) {
            Ok(_) => prop_assert!(matches, "{:?} accepted", c.version),
            Err(e) => {
                prop_assert!(!matches, "{:?} refused: {e}", c.version);
                prop_assert_eq!(e.code(), "BadVersion");
            }
        }
    }
}
