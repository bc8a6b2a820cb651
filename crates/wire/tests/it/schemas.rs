//! specs/schemas against the Rust types: meta-schema validity, labelled examples, and a drift
//! guard (each type's JSON projection validates and uses only the schema's properties, and the
//! fixtures together use all of them).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

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

/// Object keys seen at each place of a schema (the path from the root, `[]` for array items,
/// `|n` for the `oneOf` branch taken), beside the properties the schema declares there.
#[derive(Default)]
struct Coverage(BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>);

impl Coverage {
    /// Every property of every place visited was present in some value: the fixtures exercise
    /// each field the schema has, even fields the body rules allow only apart (§8.8).
    fn assert_complete(&self, rel: &str) {
        for (path, (seen, declared)) in &self.0 {
            assert_eq!(seen, declared, "{rel} {path}: properties never set by a fixture");
        }
    }
}

/// Walks `value` and `schema` together; at every object, the value's keys must include the
/// schema's `required` and lie within its `properties`, and are added to `coverage`.
fn drift(root: &Value, schema: &Value, value: &Value, path: &str, coverage: &mut Coverage) {
    let schema = resolve(root, schema);
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let (i, branch) = branches
            .iter()
            .enumerate()
            .find(|(_, b)| {
                jsonschema::draft202012::new(&with_defs(root, b)).expect("branch").is_valid(value)
            })
            .unwrap_or_else(|| panic!("{path}: no oneOf branch matches {value}"));
        return drift(root, branch, value, &format!("{path}|{i}"), coverage);
    }
    match value {
        Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else {
                return; // a free-form object (JSON Schemas, args)
            };
            let keys: BTreeSet<String> = map.keys().cloned().collect();
            let declared: BTreeSet<String> = props.keys().cloned().collect();
            let required: BTreeSet<String> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            assert!(
                required.is_subset(&keys) && keys.is_subset(&declared),
                "{path}: fields of the Rust value {keys:?} vs the schema (required {required:?}, \
                 properties {declared:?})"
            );
            let entry =
                coverage.0.entry(path.to_owned()).or_insert_with(|| (BTreeSet::new(), declared));
            entry.0.extend(keys);
            for (k, v) in map {
                drift(root, &props[k], v, &format!("{path}.{k}"), coverage);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    drift(root, item_schema, item, &format!("{path}[]"), coverage);
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

/// Checks a Rust value's projection against a schema file: valid, and no field drift; what it
/// sets counts towards the file's coverage.
fn projection<T: Serialize>(rel: &str, value: &T, coverage: &mut BTreeMap<String, Coverage>) {
    let (schema, v) = validator(&format!("schemas/{rel}"));
    let json = serde_json::to_value(value).expect("projection");
    let errs = errors(&v, &json);
    assert!(errs.is_empty(), "{rel}: projection of the Rust value is invalid: {errs:?}\n{json:#}");
    drift(&schema, &schema, &json, rel, coverage.entry(rel.to_owned()).or_default());
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
        "LedgerHead" => typed::<LedgerHead>(instance),
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
    let mut coverage = BTreeMap::new();
    let cov = &mut coverage;
    let mut bodies: Vec<Body> = fixtures::more_bodies().into_iter().map(|(_, b)| b).collect();
    for full in [true, false] {
        projection("records/Contract.json", &fixtures::contract(full), cov);
        projection("records/Advert.json", &fixtures::advert(full), cov);
        projection("records/Retirement.json", &fixtures::retirement(), cov);
        projection("records/Attestation.json", &fixtures::attestation(full), cov);
        projection("records/Receipt.json", &fixtures::receipt(full), cov);
        projection("records/Countersignature.json", &fixtures::countersignature(), cov);
        projection("records/LedgerHead.json", &fixtures::ledger_head(full), cov);
        projection(
            "records/Signed.json",
            &fixtures::signed(&fixtures::provider(), &fixtures::retirement()),
            cov,
        );
        bodies.extend(fixtures::bodies(full));
    }
    for body in bodies {
        let kind = body.kind();
        projection(&format!("kinds/{}.json", kind.name()), &body, cov);
        let env = fixtures::envelope(body);
        let payload = env.decode(cbor::Limits::default()).expect("decodes");
        // Bodies are checked above; here the envelope's own fields.
        let mut header = serde_json::to_value(&payload).expect("json");
        header["body"] = serde_json::json!({});
        projection("EnvelopePayload.json", &header, cov);
        let (_, env_v) = validator("schemas/Envelope.json");
        let env_json = serde_json::to_value(&env).expect("json");
        assert!(errors(&env_v, &env_json).is_empty(), "Envelope {kind:?}");
    }
    for (rel, c) in &coverage {
        c.assert_complete(rel);
    }
    let _ = NOW;
}

/// The field (or variant) names serde's derive declares for `T`: what the Rust type can hold,
/// independent of any fixture value.
fn names_of<T: DeserializeOwned>() -> BTreeSet<&'static str> {
    #[derive(Debug)]
    struct Names(Vec<&'static str>);
    impl std::fmt::Display for Names {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl std::error::Error for Names {}
    impl serde::de::Error for Names {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Names(vec![])
        }
    }
    struct Probe;
    impl<'de> serde::Deserializer<'de> for Probe {
        type Error = Names;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Names> {
            Err(Names(vec![]))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Names> {
            Err(Names(fields.to_vec()))
        }
        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Names> {
            Err(Names(variants.to_vec()))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Err(Names(names)) if !names.is_empty() => names.into_iter().collect(),
        _ => panic!("{} is not a derived struct or enum", std::any::type_name::<T>()),
    }
}

/// The subschema reached from the root by following `path` through `properties` (and `items`).
fn subschema<'a>(root: &'a Value, path: &[&str]) -> &'a Value {
    let mut at = resolve(root, root);
    for step in path {
        at = if *step == "items" { &at["items"] } else { &at["properties"][*step] };
        at = resolve(root, at);
    }
    at
}

/// Property names of an object schema, or the variant names of a `oneOf` of one-key objects.
fn schema_names(root: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        return branches
            .iter()
            .flat_map(|b| resolve(root, b)["required"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
    }
    schema["properties"].as_object().expect("an object schema").keys().cloned().collect()
}

fn same_names<T: DeserializeOwned>(file: &str, path: &[&str]) {
    let root = read_json(&format!("schemas/{file}"));
    let schema = subschema(&root, path);
    let ours: BTreeSet<String> = names_of::<T>().into_iter().map(str::to_owned).collect();
    assert_eq!(
        ours,
        schema_names(&root, schema),
        "{file} {path:?} vs {}",
        std::any::type_name::<T>()
    );
}

#[test]
fn every_field_and_variant_of_the_types_is_in_the_schemas() {
    same_names::<Contract>("records/Contract.json", &[]);
    same_names::<Advert>("records/Advert.json", &[]);
    same_names::<Price>("records/Advert.json", &["price"]);
    same_names::<CallLimits>("records/Advert.json", &["limits"]);
    same_names::<Retirement>("records/Retirement.json", &[]);
    same_names::<Attestation>("records/Attestation.json", &[]);
    same_names::<Subject>("records/Attestation.json", &["subject"]);
    same_names::<Receipt>("records/Receipt.json", &[]);
    same_names::<Countersignature>("records/Countersignature.json", &[]);
    same_names::<LedgerHead>("records/LedgerHead.json", &[]);
    same_names::<AdvertiseCapability>("kinds/AdvertiseCapability.json", &[]);
    same_names::<Retire>("kinds/Retire.json", &[]);
    same_names::<Attest>("kinds/Attest.json", &[]);
    same_names::<Discover>("kinds/Discover.json", &[]);
    same_names::<Filter>("kinds/Discover.json", &["filter"]);
    same_names::<DiscoverResult>("kinds/DiscoverResult.json", &[]);
    same_names::<Sync>("kinds/Sync.json", &[]);
    same_names::<SyncResult>("kinds/SyncResult.json", &[]);
    same_names::<SyncRange>("kinds/SyncResult.json", &["ranges", "items"]);
    same_names::<AnyRecord>("kinds/SyncResult.json", &["records", "items"]);
    same_names::<Intent>("kinds/Intent.json", &[]);
    same_names::<Offer>("kinds/Offer.json", &[]);
    same_names::<Negotiate>("kinds/Negotiate.json", &[]);
    same_names::<TaskStart>("kinds/TaskStart.json", &[]);
    same_names::<TaskAccepted>("kinds/TaskAccepted.json", &[]);
    same_names::<TaskProgress>("kinds/TaskProgress.json", &[]);
    same_names::<TaskDone>("kinds/TaskDone.json", &[]);
    same_names::<ErrorBody>("kinds/TaskDone.json", &["error"]);
    same_names::<TaskCancel>("kinds/TaskCancel.json", &[]);
    same_names::<ReceiptCountersign>("kinds/Receipt.json", &[]);
    same_names::<ErrorBody>("kinds/Error.json", &[]);
}
