//! `capmesh cap`: new, id, validate — contracts written, identified and tried offline.

use std::path::PathBuf;

use capmesh_system_tests::User;
use serde_json::{Value, json};

/// A contract whose input has two rules to break: `city` is required, `days` is at least 1.
fn forecast() -> Value {
    json!({
        "name": "weather.forecast",
        "version": "1.2.0",
        "description": "Daily forecast for a city.",
        "input": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city"],
            "additionalProperties": false,
        },
        "output": {
            "type": "object",
            "properties": {"days": {"type": "array"}},
            "required": ["days"],
        },
        "tags": ["weather", "geo:forecast"],
        "read_only": true,
        "idempotent": true,
        "streaming": false,
    })
}

fn write(user: &User, name: &str, text: &str) -> PathBuf {
    let path = user.data_dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn arg(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn cap_new_prints_a_contract_that_cap_id_accepts() {
    let user = User::new();
    let text = user.run(&["cap", "new", "text.summarize"]).success();
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["name"], "text.summarize");
    assert_eq!(json["version"], "0.1.0");
    let file = write(&user, "new.json", &text);
    let id = user.run(&["cap", "id", arg(&file)]).success();
    assert!(id.trim().starts_with("bafyr4i"), "{id}");
    assert_eq!(id, user.run(&["cid", arg(&file)]).success());
    // From stdin too.
    assert_eq!(user.run_with_stdin(&["cap", "id", "-"], text.as_bytes()).success(), id);
}

#[test]
fn cap_new_refuses_a_bad_name() {
    let err = User::new().run(&["cap", "new", "Weather Forecast"]).failure();
    assert!(err.contains("(BadName)"), "{err}");
    assert!(err.contains("a-z 0-9 _ . -"), "says what a name may hold: {err}");
}

#[test]
fn cap_id_is_the_cid_of_the_contract_json() {
    let user = User::new();
    // Members in no particular order and spaced out: the id is of the canonical form.
    let file = write(&user, "forecast.json", &serde_json::to_string_pretty(&forecast()).unwrap());
    let id = user.run(&["cap", "id", arg(&file)]).success();
    assert_eq!(id, user.run(&["cid", arg(&file)]).success());
    assert_eq!(id.lines().count(), 1);
    // Another version is another capability.
    let mut next = forecast();
    next["version"] = json!("1.2.1");
    let next = write(&user, "next.json", &next.to_string());
    assert_ne!(user.run(&["cap", "id", arg(&next)]).success(), id);
}

#[test]
fn cap_id_refuses_malformed_contracts_by_code() {
    let user = User::new();
    let refused = |name: &str, contract: Value| {
        let file = write(&user, name, &contract.to_string());
        let err = user.run(&["cap", "id", arg(&file)]).failure();
        assert!(err.contains(name), "names the file: {err}");
        err
    };

    let mut bad_name = forecast();
    bad_name["name"] = json!("Weather");
    let err = refused("bad-name.json", bad_name);
    assert!(err.contains("contract refused (BadName)") && err.contains("\"Weather\""), "{err}");

    let mut external = forecast();
    external["input"]["properties"]["city"] = json!({"$ref": "https://example.com/city.json"});
    let err = refused("external.json", external);
    assert!(err.contains("contract refused (ExternalRef)"), "{err}");
    assert!(err.contains("/properties/city/$ref"), "says where: {err}");
    assert!(err.contains("$defs"), "says how to fix it: {err}");

    let mut extra = forecast();
    extra["price"] = json!(3);
    let err = refused("extra.json", extra);
    assert!(err.contains("not a contract (NotContract)") && err.contains("price"), "{err}");

    let file = write(&user, "dup.json", r#"{"name": "a", "name": "b"}"#);
    let err = user.run(&["cap", "id", arg(&file)]).failure();
    assert!(err.contains("not JSON (NotJson)") && err.contains("duplicate"), "{err}");
}

#[test]
fn cap_validate_lists_every_violation_and_fails() {
    let user = User::new();
    let contract = write(&user, "forecast.json", &forecast().to_string());
    let args = write(&user, "args.json", r#"{"days": 0}"#);
    let run = user.run(&["cap", "validate", arg(&contract), arg(&args)]);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    let err = run.failure();
    let mut lines: Vec<&str> = err.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 2, "one line per violation:\n{err}");
    assert!(lines[0].starts_with("/: ") && lines[0].contains("\"city\""), "{err}");
    assert!(lines[1].starts_with("/days: ") && lines[1].contains("minimum"), "{err}");

    // Three broken rules, three lines.
    let args = write(&user, "worse.json", r#"{"city": 7, "days": 99, "units": "metric"}"#);
    let err = user.run(&["cap", "validate", arg(&contract), arg(&args)]).failure();
    let mut pointers: Vec<&str> = err.lines().map(|l| l.split(": ").next().unwrap()).collect();
    pointers.sort_unstable();
    assert_eq!(pointers, ["/", "/city", "/days"], "{err}");
}

#[test]
fn cap_validate_prints_valid_for_good_arguments() {
    let user = User::new();
    let contract = write(&user, "forecast.json", &forecast().to_string());
    let args = write(&user, "args.json", r#"{"city": "Lyon", "days": 3}"#);
    assert_eq!(user.run(&["cap", "validate", arg(&contract), arg(&args)]).success(), "valid\n");
    let stdin = br#"{"city": "Oslo"}"#;
    let run = user.run_with_stdin(&["cap", "validate", arg(&contract), "-"], stdin);
    assert_eq!(run.success(), "valid\n");
}

#[test]
fn cap_validate_output_uses_the_output_schema() {
    let user = User::new();
    let contract = write(&user, "forecast.json", &forecast().to_string());
    let output = write(&user, "output.json", r#"{"days": []}"#);
    let validate = |file: &std::path::Path, flags: &[&str]| {
        let mut args = vec!["cap", "validate", arg(&contract), arg(file)];
        args.extend_from_slice(flags);
        user.run(&args)
    };
    assert_eq!(validate(&output, &["--output"]).success(), "valid\n");
    // The same value breaks the input schema (no city, an unknown member).
    assert!(!validate(&output, &[]).ok);
    let empty = write(&user, "empty.json", "{}");
    let err = validate(&empty, &["--output"]).failure();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("/: ") && err.contains("\"days\""), "{err}");
}

#[test]
fn cap_validate_refuses_a_malformed_contract_or_value() {
    let user = User::new();
    let mut external = forecast();
    external["output"] = json!({"$ref": "https://example.com/out.json"});
    let contract = write(&user, "external.json", &external.to_string());
    let args = write(&user, "args.json", r#"{"city": "Lyon"}"#);
    let err = user.run(&["cap", "validate", arg(&contract), arg(&args)]).failure();
    assert!(err.contains("contract refused (ExternalRef)"), "{err}");

    let contract = write(&user, "forecast.json", &forecast().to_string());
    let args = write(&user, "broken.json", "{city: Lyon}");
    let err = user.run(&["cap", "validate", arg(&contract), arg(&args)]).failure();
    assert!(err.contains("broken.json") && err.contains("(NotJson)"), "{err}");
}
