//! specs/schemas against the Rust types: meta-schema validity, labelled examples, and a drift
//! guard (each type's JSON projection validates, and uses exactly the schema's properties).

use std::{collections::BTreeSet, path::PathBuf};

use capmesh_wire::*;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::fixtures::{self, NOW};

fn specs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../specs")
}

fn read_json(rel: &str) -> Value {
    let path = specs().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(rel: &str) -> (Value, jsonschema::Validator) {
    let schema = read_json(rel);
    jsonschema::meta::validate(&schema)
        .unwrap_or_else(|e| panic!("{rel} is not a valid JSON Schema: {e}"));
    let v = jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{rel}: {e}"));
    (schema, v)
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

/// Every schema under specs/schemas, as paths relative to specs/schemas.
fn all_schemas() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["", "records", "kinds"] {
        for entry in std::fs::read_dir(specs().join("schemas").join(dir)).expect("schemas dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let name = path.file_name().expect("name").to_string_lossy().into_owned();
                out.push(if dir.is_empty() { name } else { format!("{dir}/{name}") });
            }
        }
    }
    out.sort();
    out
}

/// Resolves a local `$ref` (`#/$defs/Name`).
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {r}"));
        schema = root.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    schema
}

/// Walks `value` and `schema` together; at every object, the value's keys must be exactly the
/// schema's `properties` (`full`: every optional field set) or exactly its `required` (`!full`).
fn drift(root: &Value, schema: &Value, value: &Value, full: bool, path: &str) {
    let schema = resolve(root, schema);
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let branch = branches
            .iter()
            .find(|b| {
                jsonschema::draft202012::new(&with_defs(root, b)).expect("branch").is_valid(value)
            })
            .unwrap_or_else(|| panic!("{path}: no oneOf branch matches {value}"));
        return drift(root, branch, value, full, path);
    }
    match value {
        Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return; // a free-form object (JSON Schemas, args)
            };
            let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
            let expected: BTreeSet<&str> = if full {
                props.keys().map(String::as_str).collect()
            } else {
                schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect()
            };
            assert_eq!(
                keys,
                expected,
                "{path}: fields of the Rust type vs the schema ({})",
                if full { "properties" } else { "required" }
            );
            for (k, v) in map {
                drift(root, &props[k], v, full, &format!("{path}.{k}"));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    drift(root, item_schema, item, full, &format!("{path}[{i}]"));
                }
            }
        }
        _ => {}
    }
}

fn with_defs(root: &Value, branch: &Value) -> Value {
    let mut b = branch.clone();
    if let (Some(obj), Some(defs)) = (b.as_object_mut(), root.get("$defs")) {
        obj.insert("$defs".into(), defs.clone());
    }
    b
}

/// Checks a Rust value's projection against a schema file: valid, and no field drift.
fn projection<T: Serialize>(rel: &str, value: &T, full: bool) {
    let (schema, v) = validator(&format!("schemas/{rel}"));
    let json = serde_json::to_value(value).expect("projection");
    let errs = errors(&v, &json);
    assert!(errs.is_empty(), "{rel}: projection of the Rust value is invalid: {errs:?}\n{json:#}");
    drift(&schema, &schema, &json, full, rel);
}

#[test]
fn every_schema_is_valid_2020_12_and_self_contained() {
    let schemas = all_schemas();
    assert!(schemas.len() >= 17 + 6 + 2, "schemas found: {schemas:?}");
    for rel in schemas {
        let (schema, _) = validator(&format!("schemas/{rel}"));
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{rel}");
        let text = schema.to_string();
        for r in text.split("\"$ref\":\"").skip(1) {
            assert!(r.starts_with('#'), "{rel}: $ref outside the document: {r}");
        }
        // Schema ids hash the canonical CBOR form, so it must exist.
        schema::json_cid(&schema).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }
}

#[test]
fn schema_ids_are_the_shipped_files() {
    for &kind in Kind::ALL {
        let on_disk = read_json(&format!("schemas/kinds/{}.json", kind.name()));
        assert_eq!(schema::json_cid(&on_disk).unwrap(), schema::id(kind), "{kind:?}");
        assert_eq!(on_disk["title"], kind.body_type(), "{kind:?}: title names the body type");
    }
}

/// Parses an example into `T`, and the projection of `T` must be the example again.
fn typed<T: Serialize + DeserializeOwned>(instance: &Value) -> Result<(), String> {
    let t: T = serde_json::from_value(instance.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&t).map_err(|e| e.to_string())?;
    if back != *instance {
        return Err(format!("re-serializes differently: {back}"));
    }
    Ok(())
}

fn typed_for(rel: &str, instance: &Value) -> Result<(), String> {
    let name = rel.rsplit('/').next().expect("name").trim_end_matches(".json");
    if rel.starts_with("kinds/") {
        let kind = Kind::ALL.iter().find(|k| k.name() == name).expect("kind");
        let body = Body::from_json(*kind, instance.clone()).map_err(|e| e.to_string())?;
        let back = serde_json::to_value(&body).map_err(|e| e.to_string())?;
        return if back == *instance {
            Ok(())
        } else {
            Err(format!("re-serializes differently: {back}"))
        };
    }
    match name {
        "Contract" => typed::<Contract>(instance),
        "Advert" => typed::<Advert>(instance),
        "Retirement" => typed::<Retirement>(instance),
        "Attestation" => typed::<Attestation>(instance),
        "Receipt" => typed::<Receipt>(instance),
        "Countersignature" => typed::<Countersignature>(instance),
        // `v` is judged when an envelope is opened (UnsupportedVersion), not by the type.
        "EnvelopePayload" => {
            typed::<EnvelopePayload>(instance).and_then(|()| match instance["v"].as_u64() {
                Some(VERSION) => Ok(()),
                v => Err(format!("UnsupportedVersion {v:?}")),
            })
        }
        "Envelope" => typed::<Envelope>(instance),
        // Generic {payload, sig}: the shape every `Signed<T>` projects to.
        "Signed" => typed::<SignedShape>(instance),
        other => Err(format!("no Rust type for {other}")),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedShape {
    payload: serde_json::Map<String, Value>,
    sig: capmesh_wire::repr::FixedBytes<64>,
}

#[test]
fn examples_validate_or_fail_as_labelled() {
    for rel in all_schemas() {
        let (_, v) = validator(&format!("schemas/{rel}"));
        let examples = read_json(&format!("examples/{rel}"));
        let valid = examples["valid"].as_array().unwrap_or_else(|| panic!("examples/{rel}: valid"));
        let invalid =
            examples["invalid"].as_array().unwrap_or_else(|| panic!("examples/{rel}: invalid"));
        assert!(!valid.is_empty() && !invalid.is_empty(), "examples/{rel}: one of each at least");
        for (i, instance) in valid.iter().enumerate() {
            let errs = errors(&v, instance);
            assert!(errs.is_empty(), "examples/{rel} valid[{i}] fails its schema: {errs:?}");
            // The Rust types accept exactly what the schema accepts (for examples with real ids;
            // envelope signatures in examples are not checked here).
            typed_for(&rel, instance)
                .unwrap_or_else(|e| panic!("examples/{rel} valid[{i}]: Rust type refuses it: {e}"));
        }
        for (i, case) in invalid.iter().enumerate() {
            let instance = &case["instance"];
            assert!(case["why"].as_str().is_some(), "examples/{rel} invalid[{i}]: why");
            let why = &case["why"];
            assert!(!v.is_valid(instance), "examples/{rel} invalid[{i}] ({why}) passes its schema");
            // Shape errors must be refused by the Rust type too. Content rules (patterns,
            // ranges) belong to the validation layers above the types (e.g. contract checks).
            let structural = v.iter_errors(instance).any(|e| {
                use jsonschema::error::ValidationErrorKind as K;
                matches!(
                    e.kind(),
                    K::Required { .. } | K::AdditionalProperties { .. } | K::Type { .. }
                )
            });
            if structural {
                assert!(
                    typed_for(&rel, instance).is_err(),
                    "examples/{rel} invalid[{i}] ({why}) is accepted by the Rust type"
                );
            }
        }
    }
}

#[test]
fn rust_projections_match_their_schemas_exactly() {
    for full in [true, false] {
        projection("records/Contract.json", &fixtures::contract(full), full);
        projection("records/Advert.json", &fixtures::advert(full), full);
        projection("records/Retirement.json", &fixtures::retirement(), full);
        projection("records/Attestation.json", &fixtures::attestation(full), full);
        projection("records/Receipt.json", &fixtures::receipt(full), full);
        projection("records/Countersignature.json", &fixtures::countersignature(), full);
        projection(
            "records/Signed.json",
            &fixtures::signed(&fixtures::provider(), &fixtures::retirement()),
            full,
        );
        for body in fixtures::bodies(full) {
            let kind = body.kind();
            projection(&format!("kinds/{}.json", kind.name()), &body, full);
            let env = fixtures::envelope(body);
            let payload = env.decode(cbor::Limits::default()).expect("decodes");
            // Bodies are checked above; here the envelope's own fields.
            let (schema, v) = validator("schemas/EnvelopePayload.json");
            let json = serde_json::to_value(&payload).expect("json");
            assert!(
                errors(&v, &json).is_empty(),
                "EnvelopePayload {kind:?}: {:?}",
                errors(&v, &json)
            );
            // Fixtures address rpc kinds (`to`, `re` set) and leave gossip kinds open (neither).
            let mut header = json.clone();
            header["body"] = serde_json::json!({});
            drift(&schema, &schema, &header, payload.to.is_some(), "EnvelopePayload");
            let (_, env_v) = validator("schemas/Envelope.json");
            let env_json = serde_json::to_value(&env).expect("json");
            assert!(errors(&env_v, &env_json).is_empty(), "Envelope {kind:?}");
        }
    }
    let _ = NOW;
}
