//! Runtimes as written in a node's configuration (TOML) and in JSON.

use std::{collections::BTreeMap, path::PathBuf};

use capmesh_exec::{
    Builtin, CommandSpec, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_MS, HttpSpec, Runtime,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Served {
    runtime: Runtime,
}

fn parse(toml: &str) -> Result<Runtime, toml::de::Error> {
    toml::from_str::<Served>(toml).map(|s| s.runtime)
}

#[test]
fn the_documented_shapes_parse() {
    assert_eq!(
        parse(r#"runtime = { type = "builtin", name = "echo" }"#).unwrap(),
        Runtime::Builtin { name: Builtin::Echo }
    );
    assert_eq!(
        parse(
            r#"runtime = { type = "command", argv = ["/usr/bin/python3", "tool.py"], cwd = "/srv/tool", env = { K = "V" }, timeout_ms = 30000, max_output_bytes = 1048576 }"#
        )
        .unwrap(),
        Runtime::Command(CommandSpec {
            argv: vec!["/usr/bin/python3".into(), "tool.py".into()],
            cwd: Some(PathBuf::from("/srv/tool")),
            env: BTreeMap::from([("K".into(), "V".into())]),
            timeout_ms: 30_000,
            max_output_bytes: 1_048_576,
        })
    );
    assert_eq!(
        parse(
            r#"runtime = { type = "http", url = "http://127.0.0.1:8080/run", timeout_ms = 30000, max_output_bytes = 1048576 }"#
        )
        .unwrap(),
        Runtime::Http(HttpSpec {
            url: "http://127.0.0.1:8080/run".into(),
            timeout_ms: 30_000,
            max_output_bytes: 1_048_576,
        })
    );
    // As a table of its own, too.
    let table = "[runtime]\ntype = \"builtin\"\nname = \"stream\"\n";
    assert_eq!(parse(table).unwrap(), Runtime::Builtin { name: Builtin::Stream });
    for &b in Builtin::ALL {
        let text = format!("runtime = {{ type = \"builtin\", name = \"{}\" }}", b.name());
        assert_eq!(parse(&text).unwrap(), Runtime::Builtin { name: b });
    }
}

#[test]
fn defaults_fill_what_is_left_out() {
    let r = parse(r#"runtime = { type = "command", argv = ["/bin/cat"] }"#).unwrap();
    let Runtime::Command(spec) = r else { panic!("{r:?}") };
    assert_eq!(spec, CommandSpec::new(["/bin/cat"]));
    assert_eq!((spec.cwd, spec.env.len()), (None, 0));
    assert_eq!(
        (spec.timeout_ms, spec.max_output_bytes),
        (DEFAULT_TIMEOUT_MS, DEFAULT_MAX_OUTPUT_BYTES)
    );
    assert_eq!((DEFAULT_TIMEOUT_MS, DEFAULT_MAX_OUTPUT_BYTES), (30_000, 1 << 20));
    let r = parse(r#"runtime = { type = "http", url = "http://h/" }"#).unwrap();
    assert_eq!(r, Runtime::Http(HttpSpec::new("http://h/")));
}

#[test]
fn unknown_fields_types_and_names_are_refused() {
    for bad in [
        r#"runtime = { type = "command", argv = ["/bin/cat"], shell = true }"#,
        r#"runtime = { type = "http", url = "http://h/", retries = 3 }"#,
        r#"runtime = { type = "builtin", name = "echo", extra = 1 }"#,
        r#"runtime = { type = "builtin", name = "shout" }"#,
        r#"runtime = { type = "wasm", module = "x.wasm" }"#,
        r#"runtime = { argv = ["/bin/cat"] }"#,
        r#"runtime = { type = "command" }"#,
        r#"runtime = { type = "command", argv = ["/bin/cat"], timeout_ms = -1 }"#,
    ] {
        let err = parse(bad).unwrap_err();
        assert!(!err.to_string().is_empty(), "{bad}");
    }
    let err = parse(r#"runtime = { type = "command", argv = ["/bin/cat"], shell = true }"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shell"), "{err}");
}

#[test]
fn json_round_trips() {
    let mut spec = CommandSpec::new(["/bin/sh", "-c", "true"]);
    spec.cwd = Some("/tmp".into());
    spec.env.insert("A".into(), "b".into());
    for r in [
        Runtime::Builtin { name: Builtin::Blake3 },
        Runtime::Command(spec),
        Runtime::Http(HttpSpec::new("http://127.0.0.1:9/")),
    ] {
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<Runtime>(v).unwrap(), r);
    }
    assert_eq!(
        serde_json::to_value(Runtime::Builtin { name: Builtin::Sleep }).unwrap(),
        json!({"type": "builtin", "name": "sleep"})
    );
    assert_eq!(
        serde_json::to_value(Runtime::Http(HttpSpec::new("http://h/"))).unwrap(),
        json!({"type": "http", "url": "http://h/", "timeout_ms": 30000, "max_output_bytes": 1048576})
    );
}
