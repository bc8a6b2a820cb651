//! Every example of specs/examples/plans: valid ones parse, resolve and have one CID per plan;
//! invalid ones give exactly the violations `expected.json` lists; the JSON Schema agrees with
//! the parser on every one. `CAPMESH_PRINT_VIOLATIONS=1` prints what the code finds.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};

use capmesh_plan::{Format, PlanError, Query, Resolver, Violation, parse, resolve};
use capmesh_types::Cid;
use capmesh_wire::Contract;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs/examples/plans")
}

/// The example contracts, answering queries as a registry would (every tag, the exact name,
/// every word of the text in name, description or tags), in file order.
pub(crate) struct Table(pub(crate) Vec<(Cid, Contract)>);

impl Table {
    pub(crate) fn examples() -> Self {
        let mut files: Vec<_> = std::fs::read_dir(dir().join("contracts"))
            .expect("contracts/")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        Self(
            files
                .iter()
                .map(|f| {
                    let c: Contract = serde_json::from_slice(&std::fs::read(f).expect("read"))
                        .expect("a contract");
                    (capmesh_contract::check(&c).expect("well-formed"), c)
                })
                .collect(),
        )
    }
}

impl Resolver for Table {
    type Error = Infallible;

    async fn query(&self, q: &Query) -> Result<Vec<Cid>, Infallible> {
        Ok(self
            .0
            .iter()
            .filter(|(_, c)| {
                q.tags.iter().all(|t| c.tags.contains(t))
                    && q.name.as_ref().is_none_or(|n| *n == c.name)
                    && q.text.as_ref().is_none_or(|t| {
                        let hay = format!("{} {} {}", c.name, c.description, c.tags.join(" "))
                            .to_lowercase();
                        t.split_whitespace().all(|w| hay.contains(&w.to_lowercase()))
                    })
            })
            .map(|(id, _)| *id)
            .collect())
    }

    async fn contract(&self, id: &Cid) -> Result<Option<Contract>, Infallible> {
        Ok(self.0.iter().find(|(i, _)| i == id).map(|(_, c)| c.clone()))
    }
}

/// Parse then resolve: the violations (empty when valid) and the CID when valid.
pub(crate) fn check(text: &str, format: Format, table: &Table) -> (Vec<Violation>, Option<Cid>) {
    let plan = match parse(text, format) {
        Ok(plan) => plan,
        Err(v) => return (v.into_vec(), None),
    };
    match futures::executor::block_on(resolve(plan, table)) {
        Ok(resolved) => (Vec::new(), Some(resolved.cid())),
        Err(PlanError::Invalid(v)) => (v.into_vec(), None),
        Err(e) => panic!("resolver failed: {e}"),
    }
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir().join(sub))
        .expect("folder")
        .map(|e| e.expect("entry").path())
        .collect();
    out.sort();
    out
}

fn schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../specs/schemas/plan/Plan.json");
    let schema: Value =
        serde_json::from_slice(&std::fs::read(path).expect("Plan.json")).expect("JSON");
    jsonschema::draft202012::new(&schema).expect("Plan.json compiles")
}

/// The document as the JSON Schema sees it (`None`: not JSON / YAML at all).
fn document(text: &str, format: Format) -> Option<Value> {
    match format {
        Format::Json => capmesh_wire::json::from_str_strict(text).ok(),
        Format::Yaml => serde_saphyr::from_str::<Value>(text).ok(),
    }
}

#[test]
fn examples_check_as_expected_and_the_schema_agrees() {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir().join("expected.json")).expect("expected.json"))
            .expect("JSON");
    let expected = expected["examples"].as_object().expect("examples").clone();
    let table = Table::examples();
    let schema = schema();
    let print = std::env::var_os("CAPMESH_PRINT_VIOLATIONS").is_some();
    let mut seen = Vec::new();
    let mut cids: BTreeMap<String, Vec<(String, Cid)>> = BTreeMap::new();
    let mut failures = Vec::new();
    for sub in ["valid", "invalid"] {
        for file in files(sub) {
            let name = format!("{sub}/{}", file.file_name().expect("name").to_string_lossy());
            seen.push(name.clone());
            let text = std::fs::read_to_string(&file).expect("text");
            let format = Format::of_path(&file);
            let (found, cid) = check(&text, format, &table);
            let got: Vec<Value> =
                found.iter().map(|v| json!({"path": v.path, "code": v.kind.code()})).collect();
            if print {
                eprintln!("{name}:");
                for v in &found {
                    eprintln!("  {v}");
                }
                eprintln!("  {}", serde_json::to_string(&got).expect("json"));
            }
            let Some(entry) = expected.get(&name) else {
                failures.push(format!("{name}: not in expected.json"));
                continue;
            };
            let mut want: Vec<Value> = entry["violations"].as_array().expect("violations").clone();
            let mut got_sorted = got.clone();
            let key = |v: &Value| (v["path"].to_string(), v["code"].to_string());
            want.sort_by_key(key);
            got_sorted.sort_by_key(key);
            if want != got_sorted {
                failures.push(format!("{name}: expected {want:?}, found {got_sorted:?}"));
            }
            assert_eq!(sub == "valid", found.is_empty(), "{name}");
            if let Some(cid) = cid {
                let stem = file.file_stem().expect("stem").to_string_lossy().into_owned();
                cids.entry(stem).or_default().push((name.clone(), cid));
            }
            // The JSON Schema refuses exactly the documents with a violation it can express.
            if let Some(doc) = document(&text, format) {
                let in_schema = found.iter().any(|v| v.kind.in_schema());
                let valid = schema.is_valid(&doc);
                if valid == in_schema {
                    let errors: Vec<String> = schema
                        .iter_errors(&doc)
                        .map(|e| format!("{}: {e}", e.instance_path()))
                        .collect();
                    failures.push(format!(
                        "{name}: the schema says {} but the parser found {:?}; schema errors {errors:?}",
                        if valid { "valid" } else { "invalid" },
                        found.iter().map(ToString::to_string).collect::<Vec<_>>()
                    ));
                }
            } else {
                assert!(found.iter().any(|v| v.kind.code() == "Syntax"), "{name}");
            }
        }
    }
    for name in expected.keys() {
        if !seen.contains(name) {
            failures.push(format!("{name}: listed in expected.json but not there"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A plan written in JSON and in YAML is one plan: one CID.
    let reviews = &cids["reviews"];
    assert_eq!(reviews.len(), 2, "{reviews:?}");
    assert_eq!(reviews[0].1, reviews[1].1);
}
