//! The well-formedness rules of a contract (DESIGN §3, specs/protocol.md §6.1).

use std::collections::HashSet;

use capmesh_types::{Cid, Codec};
use capmesh_wire::{
    Contract,
    cbor::{self, EncodeError},
};
use serde_json::{Value, json};

use crate::{ContractError, TagProblem, Violation, Which};

/// Largest canonical CBOR encoding of a contract, in bytes.
pub const MAX_CONTRACT_BYTES: usize = 32 * 1024;
/// Deepest nesting of a contract's canonical CBOR, counted as the decoder counts it
/// (specs/protocol.md §4.4: the contract's own map at level 0; an array or map opened at level
/// `d` is accepted only if `d` < this). Messages put a contract at most 3 levels down
/// (`DiscoverResult` and `SyncResult`: payload → body → `contracts` → contract), so a contract
/// within this limit fits in every message under the decoder's limit of 64.
pub const MAX_CONTRACT_DEPTH: usize = 61;
/// Longest name, in bytes (`^[a-z][a-z0-9_.-]{0,63}$`).
pub const MAX_NAME_BYTES: usize = 64;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most tags on one contract.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes (`^[a-z0-9][a-z0-9_.:-]{0,63}$`).
pub const MAX_TAG_BYTES: usize = 64;
/// The only `$schema` a contract's schemas may declare (with or without a trailing `#`).
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The capability id of `contract`: the CID (dag-cbor) of its canonical CBOR. It says nothing
/// about whether the contract is well-formed; [`check`] does.
pub fn capability_id(contract: &Contract) -> Result<Cid, EncodeError> {
    Ok(Cid::of(Codec::DagCbor, &cbor::to_vec(contract)?))
}

/// Checks that `contract` is well-formed and returns its capability id.
///
/// In this order: canonical CBOR size at most [`MAX_CONTRACT_BYTES`]; `name` matches
/// `^[a-z][a-z0-9_.-]{0,63}$`; `version` is a semantic version 2.0; `description` at most
/// [`MAX_DESCRIPTION_BYTES`]; at most [`MAX_TAGS`] tags, each `^[a-z0-9][a-z0-9_.:-]{0,63}$`, none
/// twice; then `input` and `output`, each: every `$schema` is [`DRAFT_2020_12`], every `$ref` and
/// `$dynamicRef` is a same-document reference (starts with `#`), the schema is valid against the
/// 2020-12 meta-schema (every violation is reported), and it compiles (e.g. its `pattern`s are
/// regular expressions and its `#` references resolve).
///
/// References are checked on the JSON text alone, before anything is compiled, and nothing is
/// ever fetched or read: the validator is built offline as well. The scan is conservative: a
/// `$ref`, `$dynamicRef` or `$schema` member with a string value is checked wherever it appears,
/// even inside `const`, `enum`, `default` or `examples` data.
pub fn check(contract: &Contract) -> Result<Cid, ContractError> {
    let bytes = cbor::to_vec(contract)?;
    admit(contract, &bytes).map(|admitted| admitted.id)
}

/// A contract that passed [`check`], with its two compiled schemas.
pub(crate) struct Admitted {
    pub(crate) id: Cid,
    pub(crate) input: jsonschema::Validator,
    pub(crate) output: jsonschema::Validator,
}

/// [`check`] given the contract's canonical bytes, keeping the compiled schemas.
pub(crate) fn admit(contract: &Contract, bytes: &[u8]) -> Result<Admitted, ContractError> {
    if bytes.len() > MAX_CONTRACT_BYTES {
        return Err(ContractError::TooLarge { size: bytes.len(), max: MAX_CONTRACT_BYTES });
    }
    let depth = cbor::Limits::default()
        .with_max_size(MAX_CONTRACT_BYTES)
        .with_max_depth(MAX_CONTRACT_DEPTH);
    if let Err(cbor::DecodeError::TooDeep { .. }) = cbor::check(bytes, depth) {
        return Err(ContractError::TooDeep { max: MAX_CONTRACT_DEPTH });
    }
    check_name(&contract.name)?;
    semver(&contract.version).map_err(|reason| ContractError::BadVersion {
        version: contract.version.clone(),
        reason,
    })?;
    if contract.description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ContractError::BadDescription {
            len: contract.description.len(),
            max: MAX_DESCRIPTION_BYTES,
        });
    }
    check_tags(&contract.tags).map_err(|problem| ContractError::BadTags { problem })?;
    let input = compile(Which::Input, &contract.input)?;
    let output = compile(Which::Output, &contract.output)?;
    Ok(Admitted { id: Cid::of(Codec::DagCbor, bytes), input, output })
}

/// A well-formed starting contract for `capmesh cap new NAME`: version 0.1.0, a description
/// that says what to write, an input of an object with no properties yet (and no others
/// allowed), an output of any object, no tags, every flag false.
pub fn scaffold(name: &str) -> Result<Contract, ContractError> {
    check_name(name)?;
    let contract = Contract {
        name: name.to_owned(),
        version: "0.1.0".to_owned(),
        description: format!(
            "Describe what {name} does, what each argument means and what it returns, in a few \
             sentences: people and agents read this to choose a tool."
        ),
        // One example argument, optional, so the scaffold published as is already takes both
        // `{}` and `{"text": "…"}`; unknown arguments stay refused.
        input: json!({
            "type": "object",
            "properties": {
                "text": {
                    "type": "string",
                    "description": "An example argument: rename it, change its type, or add others."
                }
            },
            "additionalProperties": false
        }),
        output: json!({"type": "object"}),
        tags: Vec::new(),
        read_only: false,
        idempotent: false,
        streaming: false,
    };
    check(&contract)?;
    Ok(contract)
}

fn check_name(name: &str) -> Result<(), ContractError> {
    let bytes = name.as_bytes();
    let ok = matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= MAX_NAME_BYTES
        && bytes.iter().all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(ContractError::BadName { name: name.to_owned() }) }
}

fn is_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.len() <= MAX_TAG_BYTES
        && bytes.iter().all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b':' | b'-'))
}

fn check_tags(tags: &[String]) -> Result<(), TagProblem> {
    if tags.len() > MAX_TAGS {
        return Err(TagProblem::TooMany { count: tags.len(), max: MAX_TAGS });
    }
    let mut seen = HashSet::with_capacity(tags.len());
    for tag in tags {
        if !is_tag(tag) {
            return Err(TagProblem::Malformed { tag: tag.clone() });
        }
        if !seen.insert(tag.as_str()) {
            return Err(TagProblem::Duplicate { tag: tag.clone() });
        }
    }
    Ok(())
}

/// Semantic Versioning 2.0.0, exactly the grammar of semver.org (and of the `version` pattern of
/// specs/schemas/records/Contract.json); numbers may be of any length.
fn semver(version: &str) -> Result<(), &'static str> {
    let (rest, build) = match version.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (version, None),
    };
    // The core has no '-', so the first one starts the pre-release.
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    if core.split('.').count() != 3 {
        return Err("not three dot-separated numbers");
    }
    for number in core.split('.') {
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err("MAJOR, MINOR and PATCH must be decimal numbers");
        }
        if number.len() > 1 && number.starts_with('0') {
            return Err("MAJOR, MINOR and PATCH have no leading zeros");
        }
    }
    let identifier =
        |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    for id in pre.into_iter().flat_map(|pre| pre.split('.')) {
        if !identifier(id) {
            return Err("pre-release identifiers are non-empty and use only 0-9 A-Z a-z -");
        }
        if id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()) {
            return Err("numeric pre-release identifiers have no leading zeros");
        }
    }
    for id in build.into_iter().flat_map(|build| build.split('.')) {
        if !identifier(id) {
            return Err("build identifiers are non-empty and use only 0-9 A-Z a-z -");
        }
    }
    Ok(())
}

/// Checks one schema, in order: drafts and references on the JSON text, the meta-schema, and
/// compilation (offline, so that even a reference this scan missed could not be fetched).
fn compile(which: Which, schema: &Value) -> Result<jsonschema::Validator, ContractError> {
    scan(which, schema, &mut String::new())?;
    let meta = jsonschema::draft202012::meta::validator();
    let violations: Vec<Violation> =
        meta.iter_errors(schema).map(|error| Violation::from_error(&error)).collect();
    if !violations.is_empty() {
        return Err(ContractError::InvalidSchema { which, violations });
    }
    jsonschema::draft202012::options()
        .offline()
        .build(schema)
        .map_err(|error| ContractError::Uncompilable { which, reason: error.to_string() })
}

/// Walks the whole document (its depth is bounded: it was encoded, at most 64 levels) and
/// refuses the first `$schema` other than 2020-12 and the first `$ref` / `$dynamicRef` that does
/// not start with `#`. `pointer` is the JSON Pointer of `value`.
fn scan(which: Which, value: &Value, pointer: &mut String) -> Result<(), ContractError> {
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                let len = pointer.len();
                push_token(pointer, key);
                if let Value::String(text) = member {
                    match key.as_str() {
                        "$ref" | "$dynamicRef" if !text.starts_with('#') => {
                            return Err(ContractError::ExternalRef {
                                which,
                                pointer: pointer.clone(),
                                reference: text.clone(),
                            });
                        }
                        "$schema" if text.trim_end_matches('#') != DRAFT_2020_12 => {
                            return Err(ContractError::UnsupportedDraft {
                                which,
                                pointer: pointer.clone(),
                                schema: text.clone(),
                            });
                        }
                        _ => {}
                    }
                }
                scan(which, member, pointer)?;
                pointer.truncate(len);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push('/');
                pointer.push_str(&index.to_string());
                scan(which, item, pointer)?;
                pointer.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Appends `/token` to a JSON Pointer, escaped as RFC 6901 says (`~` → `~0`, `/` → `~1`).
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn contract() -> Contract {
        Contract {
            name: "weather.forecast".into(),
            version: "1.2.3".into(),
            description: "Forecast for a city.".into(),
            input: json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            }),
            output: json!({"type": "object"}),
            tags: vec!["weather".into(), "geo:forecast".into()],
            read_only: true,
            idempotent: true,
            streaming: false,
        }
    }

    fn refused(contract: &Contract) -> ContractError {
        check(contract).expect_err("must be refused")
    }

    #[test]
    fn well_formed_contract_has_its_capability_id() {
        let c = contract();
        let id = check(&c).unwrap();
        assert_eq!(id, Cid::of(Codec::DagCbor, &cbor::to_vec(&c).unwrap()));
        assert_eq!(id, capability_id(&c).unwrap());
    }

    #[test]
    fn too_large() {
        let mut c = contract();
        c.input = json!({"type": "object", "description": "x".repeat(MAX_CONTRACT_BYTES)});
        let e = refused(&c);
        assert_eq!(e.code(), "TooLarge");
        assert!(matches!(e, ContractError::TooLarge { size, max } if size > max));
    }

    #[test]
    fn bad_name() {
        for name in ["", "Weather", "1abc", "a b", "é", &"a".repeat(65)] {
            let mut c = contract();
            c.name = name.into();
            let e = refused(&c);
            assert_eq!(e.code(), "BadName", "{name:?}");
            assert!(e.to_string().contains("a-z 0-9 _ . -"));
        }
        let mut c = contract();
        c.name = "a".repeat(64);
        check(&c).unwrap();
    }

    #[test]
    fn bad_version() {
        for v in [
            "",
            "1",
            "1.0",
            "1.0.0.0",
            "01.0.0",
            "1.0.0-",
            "1.0.0+",
            "1.0.0-01",
            "1.0.0-a..b",
            "v1.0.0",
            " 1.0.0",
            "1.0.0-é",
            "1.0.0+a+b",
            "1.a.0",
        ] {
            let mut c = contract();
            c.version = v.into();
            assert_eq!(refused(&c).code(), "BadVersion", "{v:?}");
        }
        for v in [
            "0.0.0",
            "1.0.0-0",
            "1.0.0-alpha.1",
            "1.0.0-0a",
            "1.0.0-x-y.-",
            "1.0.0+001",
            "1.0.0-rc.1+build.7",
            "99999999999999999999999.0.0",
        ] {
            assert_eq!(semver(v), Ok(()), "{v:?}");
        }
    }

    #[test]
    fn bad_description() {
        let mut c = contract();
        c.description = "d".repeat(MAX_DESCRIPTION_BYTES);
        check(&c).unwrap();
        c.description.push('d');
        let e = refused(&c);
        assert_eq!(e.code(), "BadDescription");
    }

    #[test]
    fn bad_tags() {
        let mut c = contract();
        c.tags = (0..MAX_TAGS + 1).map(|i| format!("t{i}")).collect();
        assert!(matches!(
            refused(&c),
            ContractError::BadTags { problem: TagProblem::TooMany { count: 33, max: 32 } }
        ));
        c.tags.pop();
        check(&c).unwrap();
        for tag in ["", "-x", "X", "a/b", "a b", &"a".repeat(65)] {
            c.tags = vec![tag.into()];
            let e = refused(&c);
            assert_eq!(e.code(), "BadTags");
            assert!(matches!(e, ContractError::BadTags { problem: TagProblem::Malformed { .. } }));
        }
        c.tags = vec!["a".into(), "b".into(), "a".into()];
        assert_eq!(
            refused(&c),
            ContractError::BadTags { problem: TagProblem::Duplicate { tag: "a".into() } }
        );
    }

    #[test]
    fn unsupported_draft() {
        let mut c = contract();
        c.output = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"});
        let e = refused(&c);
        assert_eq!(e.code(), "UnsupportedDraft");
        assert_eq!(
            e,
            ContractError::UnsupportedDraft {
                which: Which::Output,
                pointer: "/$schema".into(),
                schema: "http://json-schema.org/draft-07/schema#".into(),
            }
        );
        // Also inside an embedded resource.
        c.output = json!({"$defs": {"x": {"$id": "x", "$schema": "https://example.com/meta"}}});
        assert_eq!(refused(&c).code(), "UnsupportedDraft");
        for ok in [DRAFT_2020_12.to_owned(), format!("{DRAFT_2020_12}#")] {
            c.output = json!({"$schema": ok, "type": "object"});
            check(&c).unwrap();
        }
    }

    #[test]
    fn external_ref_names_reference_and_pointer() {
        for (reference, dynamic) in [
            ("other.json", false),
            ("file:///etc/passwd", false),
            ("http://example.com/s.json#/x", false),
            ("urn:example:schema", false),
            ("/abs/path.json", false),
            ("https://example.com/meta#meta", true),
        ] {
            let mut c = contract();
            let key = if dynamic { "$dynamicRef" } else { "$ref" };
            c.input = json!({"properties": {"a/b": {"items": [{}, {key: reference}]}}});
            let e = refused(&c);
            assert_eq!(e.code(), "ExternalRef");
            assert_eq!(
                e,
                ContractError::ExternalRef {
                    which: Which::Input,
                    pointer: format!("/properties/a~1b/items/1/{key}"),
                    reference: reference.into(),
                }
            );
            assert!(e.to_string().contains(reference));
        }
    }

    #[test]
    fn invalid_schema_reports_every_meta_violation_with_pointers() {
        let mut c = contract();
        c.input = json!({
            "type": "object",
            "properties": {"a": {"type": "strin"}, "b": {"minimum": "zero"}},
            "required": "a",
        });
        let e = refused(&c);
        assert_eq!(e.code(), "InvalidSchema");
        let ContractError::InvalidSchema { which, violations } = e else { unreachable!() };
        assert_eq!(which, Which::Input);
        let pointers: HashSet<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        for p in ["/properties/a/type", "/properties/b/minimum", "/required"] {
            assert!(pointers.contains(p), "{p} missing from {violations:?}");
        }
        assert!(violations.iter().all(|v| !v.schema_path.is_empty() && !v.reason.is_empty()));
    }

    #[test]
    fn uncompilable() {
        let mut c = contract();
        c.input = json!({"$ref": "#/$defs/missing"});
        let e = refused(&c);
        assert_eq!(e.code(), "Uncompilable");
        assert!(matches!(e, ContractError::Uncompilable { which: Which::Input, .. }));
        c.input = json!({"type": "string", "pattern": "(unclosed"});
        assert_eq!(refused(&c).code(), "Uncompilable");
    }

    #[test]
    fn too_deep_to_encode_is_too_deep() {
        // Nesting beyond what canonical CBOR admits has no encoding: the same refusal as a
        // contract too deep to carry in a message.
        let mut deep = json!({});
        for _ in 0..80 {
            deep = json!({"not": deep});
        }
        let mut c = contract();
        c.input = deep;
        let e = refused(&c);
        assert_eq!(e.code(), "TooDeep");
        assert!(matches!(e, ContractError::TooDeep { max: MAX_CONTRACT_DEPTH }), "{e}");
    }

    #[test]
    fn boolean_and_same_document_schemas_are_accepted() {
        let mut c = contract();
        c.input = json!(true);
        c.output = json!(false);
        check(&c).unwrap();
        c.input = json!({
            "$defs": {"x": {"type": "integer"}, "node": {"$dynamicAnchor": "node"}},
            "properties": {"x": {"$ref": "#/$defs/x"}, "n": {"$dynamicRef": "#node"}},
        });
        check(&c).unwrap();
    }

    #[test]
    fn scaffold_passes_check() {
        let c = scaffold("my.tool").unwrap();
        assert_eq!(c.version, "0.1.0");
        assert!(c.description.contains("my.tool"));
        assert!(c.tags.is_empty() && !c.read_only && !c.idempotent && !c.streaming);
        check(&c).unwrap();
        assert_eq!(scaffold("My Tool").unwrap_err().code(), "BadName");
    }
}
