//! `capmesh cap`: write a contract, compute its capability id, and try arguments or outputs
//! against its schemas, all offline.
//!
//! ```
//! use capmesh::cap::{self, Verdict};
//! use capmesh_contract::Which;
//!
//! let text = cap::scaffold_json("weather.forecast")?;
//! let contract = cap::parse_contract(text.as_bytes())?;
//! let id = cap::capability_id(&contract)?;
//! assert!(id.to_string().starts_with('b'));
//! // The scaffold's input has one example property, `text`, and allows no others.
//! let args = cap::parse_json(br#"{"city": "Lyon"}"#)?;
//! let Verdict::Invalid(violations) = cap::validate(&contract, Which::Input, &args)? else {
//!     unreachable!("an unexpected property is refused")
//! };
//! assert_eq!(violations.len(), 1);
//! # Ok::<(), cap::CapError>(())
//! ```

use capmesh_contract::{Compiled, Contract, ContractError, Violation, Which};
use capmesh_types::Cid;
use serde_json::Value;

/// Why a contract, or a value to validate, could not be used. [`CapError::code`] is a stable
/// name: the contract's refusal class (as in `capmesh_contract`), `NotJson` or `NotContract`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CapError {
    /// Not JSON text (or JSON with a member name twice in one object).
    #[error("not JSON (NotJson): {0}")]
    NotJson(serde_json::Error),
    /// JSON nested deeper than the parser goes.
    #[error(
        "JSON nested deeper than {max} levels (TooDeep): a contract nests at most {} levels",
        capmesh_contract::MAX_CONTRACT_DEPTH
    )]
    TooDeep { max: usize },
    /// JSON, but not shaped like a contract.
    #[error(
        "not a contract (NotContract): {0}; a contract has exactly the members name, version, \
         description, input, output, tags, read_only, idempotent and streaming (`capmesh cap \
         new NAME` writes one)"
    )]
    NotContract(serde_json::Error),
    /// A contract that is not well-formed.
    #[error("contract refused ({code}): {0}", code = .0.code())]
    Refused(ContractError),
}

impl CapError {
    /// Stable machine name of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "NotJson",
            Self::TooDeep { .. } => "TooDeep",
            Self::NotContract(_) => "NotContract",
            Self::Refused(e) => e.code(),
        }
    }
}

impl From<ContractError> for CapError {
    fn from(e: ContractError) -> Self {
        Self::Refused(e)
    }
}

/// The outcome of validating a value against one of a contract's schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Every violation, in the validator's order (never empty).
    Invalid(Vec<Violation>),
}

/// The pretty JSON of the starting contract `capmesh cap new NAME` prints
/// ([`capmesh_contract::scaffold`]); a name that is not a capability name is refused.
pub fn scaffold_json(name: &str) -> Result<String, CapError> {
    let contract = capmesh_contract::scaffold(name)?;
    Ok(serde_json::to_string_pretty(&contract)
        .expect("a contract has string keys and JSON values only: it always serializes"))
}

/// Parses JSON text strictly: a member name twice in one object is refused, since it would let
/// one text mean two values.
pub fn parse_json(bytes: &[u8]) -> Result<Value, CapError> {
    if nesting(bytes) > MAX_JSON_DEPTH {
        return Err(CapError::TooDeep { max: MAX_JSON_DEPTH });
    }
    capmesh_wire::json::from_slice_strict(bytes).map_err(CapError::NotJson)
}

/// serde_json's recursion limit: deeper text fails to parse, and is told so by [`nesting`]
/// first rather than as a syntax error.
const MAX_JSON_DEPTH: usize = 128;

/// The deepest nesting of arrays and objects in JSON text (outside strings). Only for the
/// message: malformed text is judged by the parser.
fn nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parses a contract from JSON text (strictly, see [`parse_json`]). Unknown members are
/// refused. Says nothing about well-formedness: [`capability_id`] checks that.
pub fn parse_contract(bytes: &[u8]) -> Result<Contract, CapError> {
    serde_json::from_value(parse_json(bytes)?).map_err(CapError::NotContract)
}

/// Checks `contract` ([`capmesh_contract::check`]) and returns its capability id: the CID of
/// its canonical CBOR, which is also `capmesh cid` of the contract's JSON.
pub fn capability_id(contract: &Contract) -> Result<Cid, CapError> {
    Ok(capmesh_contract::check(contract)?)
}

/// Checks `contract`, compiles its schemas, and validates `value` against the `which` one.
pub fn validate(contract: &Contract, which: Which, value: &Value) -> Result<Verdict, CapError> {
    let compiled = Compiled::new(contract)?;
    Ok(match compiled.validate(which, value) {
        Ok(()) => Verdict::Valid,
        Err(violations) => Verdict::Invalid(violations),
    })
}

/// One violation as one line: `<json pointer>: <reason>`, the root shown as `/`. A line break
/// in the reason (which can quote the value) is written `\n`, so each violation stays one line.
pub fn violation_line(violation: &Violation) -> String {
    violation.to_string().replace('\r', "\\r").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_too_deep_to_parse_says_so_and_strings_do_not_count() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = parse_json(deep.as_bytes()).unwrap_err();
        assert!(matches!(e, CapError::TooDeep { max: MAX_JSON_DEPTH }), "{e}");
        assert!(!e.to_string().contains("not JSON"), "{e}");
        let quoted = format!(r#"{{"a": "{}\"{}"}}"#, "[".repeat(300), "{".repeat(300));
        assert_eq!(nesting(quoted.as_bytes()), 1);
        parse_json(quoted.as_bytes()).expect("brackets inside a string are text");
    }

    fn forecast() -> Value {
        json!({
            "name": "weather.forecast",
            "version": "1.0.0",
            "description": "Daily forecast for a city.",
            "input": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
                "required": ["city"],
                "additionalProperties": false,
            },
            "output": {"type": "object", "required": ["days"]},
            "tags": ["weather"],
            "read_only": true,
            "idempotent": true,
            "streaming": false,
        })
    }

    fn contract(json: &Value) -> Contract {
        parse_contract(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn scaffold_is_a_well_formed_contract_and_bad_names_are_refused() {
        let text = scaffold_json("weather.forecast").unwrap();
        let c = parse_contract(text.as_bytes()).unwrap();
        assert_eq!(c.name, "weather.forecast");
        capability_id(&c).unwrap();
        // Published as is, it takes no arguments or its example one, and refuses others.
        for (args, valid) in
            [(json!({}), true), (json!({"text": "hi"}), true), (json!({"text": 1}), false)]
        {
            let verdict = validate(&c, Which::Input, &args).unwrap();
            assert_eq!(verdict == Verdict::Valid, valid, "{args}");
        }
        let e = scaffold_json("Weather").unwrap_err();
        assert_eq!(e.code(), "BadName");
        assert!(e.to_string().starts_with("contract refused (BadName): name \"Weather\""), "{e}");
    }

    #[test]
    fn capability_id_is_the_cid_of_the_contract_json() {
        let json = forecast();
        let id = capability_id(&contract(&json)).unwrap();
        assert_eq!(id, capmesh_wire::schema::json_cid(&json).unwrap());
    }

    #[test]
    fn not_json_not_a_contract_and_refusals_are_named() {
        assert_eq!(parse_contract(b"{").unwrap_err().code(), "NotJson");
        let dup = br#"{"name": "a", "name": "b"}"#;
        assert_eq!(parse_contract(dup).unwrap_err().code(), "NotJson");
        let mut extra = forecast();
        extra["price"] = json!(1);
        let e = parse_contract(extra.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.code(), "NotContract");
        assert!(e.to_string().contains("price"), "{e}");
        let mut external = forecast();
        external["input"] = json!({"$ref": "https://example.com/in.json"});
        let e = capability_id(&contract(&external)).unwrap_err();
        assert_eq!(e.code(), "ExternalRef");
        assert!(e.to_string().starts_with("contract refused (ExternalRef): "), "{e}");
        assert_eq!(
            validate(&contract(&external), Which::Input, &json!({})).unwrap_err().code(),
            "ExternalRef"
        );
    }

    #[test]
    fn validate_lists_every_violation_of_the_chosen_schema() {
        let c = contract(&forecast());
        assert_eq!(
            validate(&c, Which::Input, &json!({"city": "Lyon", "days": 3})).unwrap(),
            Verdict::Valid
        );
        let Verdict::Invalid(violations) = validate(&c, Which::Input, &json!({"days": 0})).unwrap()
        else {
            panic!("two rules are broken")
        };
        let mut lines: Vec<String> = violations.iter().map(violation_line).collect();
        lines.sort();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("/: ") && lines[0].contains("city"), "{lines:?}");
        assert!(lines[1].starts_with("/days: "), "{lines:?}");
        assert_eq!(validate(&c, Which::Output, &json!({"days": []})).unwrap(), Verdict::Valid);
        assert!(
            matches!(validate(&c, Which::Output, &json!({})).unwrap(), Verdict::Invalid(v) if v.len() == 1)
        );
    }

    #[test]
    fn a_violation_is_always_one_line() {
        let v =
            Violation { pointer: "/a".into(), schema_path: String::new(), reason: "x\ny\r".into() };
        assert_eq!(violation_line(&v), "/a: x\\ny\\r");
    }
}
