//! The first-run journey and the offline commands: init, id, cid, envelope inspect.

use std::process::Command;

use capmesh_system_tests::{Run, User, capmesh_bin, specs_dir};
use serde_json::Value;

fn vectors(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(specs_dir().join("vectors").join(file)).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["vectors"].as_array().unwrap().clone()
}

#[test]
fn init_then_id_prints_the_same_peer_id_and_never_overwrites() {
    let user = User::new();
    let created = user.run(&["init"]).success();
    let peer_id = created.trim();
    assert!(peer_id.starts_with("12D3KooW") && peer_id.len() == 52, "{peer_id}");
    assert_eq!(user.run(&["id"]).success().trim(), peer_id);

    let key = user.data_dir.path().join("node.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let config = std::fs::read_to_string(user.data_dir.path().join("config.toml")).unwrap();
    assert!(config.contains("# max_size = 1048576"), "{config}");

    let again = user.run(&["init"]).failure();
    assert!(again.contains("already exists"), "{again}");
    assert_eq!(user.run(&["id"]).success().trim(), peer_id, "identity unchanged");
}

#[test]
fn id_without_init_says_what_to_do() {
    let err = User::new().run(&["id"]).failure();
    assert!(err.contains("capmesh init"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_key_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let user = User::new();
    user.run(&["init"]).success();
    let key = user.data_dir.path().join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = user.run(&["id"]).failure();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn data_dir_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Run::of(
            Command::new(capmesh_bin())
                .args(args)
                .env("CAPMESH_DATA_DIR", dir.path())
                .output()
                .unwrap(),
        )
    };
    let created = run(&["init"]).success();
    assert_eq!(run(&["id"]).success(), created);
    assert!(dir.path().join("node.key").exists());
}

#[test]
fn cid_of_json_matches_the_vectors() {
    let user = User::new();
    for v in vectors("cbor.json").iter().filter(|v| v["valid"] == true && v.get("json").is_some()) {
        let file = user.data_dir.path().join("value.json");
        std::fs::write(&file, v["json"].to_string()).unwrap();
        let out = user.run(&["cid", file.to_str().unwrap()]).success();
        assert_eq!(out.trim(), v["cid"], "{}", v["name"]);
    }
    let bad = user.data_dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").unwrap();
    assert!(user.run(&["cid", bad.to_str().unwrap()]).failure().contains("not JSON"));
}

fn inspect(user: &User, hex: &str, now: &Value) -> Run {
    let file = user.data_dir.path().join("object.hex");
    std::fs::write(&file, hex).unwrap();
    user.run(&["envelope", "inspect", file.to_str().unwrap(), "--at", &now.to_string()])
}

#[test]
fn envelope_inspect_verifies_every_signed_vector() {
    let user = User::new();
    let mut checked = 0;
    for v in vectors("envelopes.json").iter().chain(&vectors("records.json")) {
        let (Some(hex), Some(now)) = (v["signed_hex"].as_str(), v.get("now_ms")) else { continue };
        // Replay, recipient and receiver limits need a receiving node, not an inspector.
        let stateful = v.get("deliver_first").is_some()
            || v.get("max_size").is_some()
            || v.get("max_depth").is_some()
            || matches!(v["error"].as_str(), Some("Misaddressed" | "CidMismatch"));
        if stateful {
            continue;
        }
        let run = inspect(&user, hex, now);
        if v["valid"] == true {
            let report: Value = serde_json::from_str(&run.success()).unwrap();
            assert_eq!(report["id"], v["id"], "{}", v["name"]);
            assert_eq!(report["verified"], true);
            assert_eq!(report["object"]["payload"], v["json"], "{}", v["name"]);
            assert_eq!(report["signer"], v["peer_id"], "{}", v["name"]);
        } else {
            let err = run.failure();
            let code = v["error"].as_str().unwrap();
            assert!(err.contains(&format!("({code})")), "{}: expected {code} in: {err}", v["name"]);
            // A record that decodes but fails is named as the record it is.
            if let (
                Some(ty),
                "BadSignature" | "Expired" | "FutureDated" | "BadKey" | "InvalidObject",
            ) = (v["type"].as_str(), code)
            {
                assert!(
                    err.contains(&format!("error: {ty} ")),
                    "{}: expected {ty} in: {err}",
                    v["name"]
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 40, "only {checked} vectors inspected");
}

#[test]
fn envelope_inspect_reads_binary_from_stdin() {
    let v = &vectors("envelopes.json")[0];
    let bytes =
        data_encoding::HEXLOWER.decode(v["signed_hex"].as_str().unwrap().as_bytes()).unwrap();
    let mut child = Command::new(capmesh_bin())
        .args(["envelope", "inspect", "-", "--at", &v["now_ms"].to_string()])
        .env("CAPMESH_DATA_DIR", tempfile::tempdir().unwrap().path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let report: Value =
        serde_json::from_str(&Run::of(child.wait_with_output().unwrap()).success()).unwrap();
    assert_eq!(report["type"], "Envelope");
    assert_eq!(report["id"], v["id"]);
}

#[test]
fn envelope_inspect_names_garbage() {
    let user = User::new();
    let err = inspect(&user, "00", &Value::from(0)).failure();
    assert!(err.contains("not a signed object (InvalidObject)"), "{err}");
}

/// Output closed before the command writes (`capmesh … | head` once panicked with exit 101):
/// the command ends quietly, with success and nothing on stderr.
#[test]
fn output_closed_early_ends_the_command_quietly() {
    let user = User::new();
    for args in [&["cap", "new", "tool"][..], &["init"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(capmesh_bin())
            .args(args)
            .env("CAPMESH_DATA_DIR", user.data_dir.path())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// An error says its cause once: `api.token` unreadable (a directory here, since root reads
/// any file) once printed "… Is a directory (os error 21): Is a directory (os error 21)".
#[test]
fn an_unreadable_api_token_is_named_with_its_cause_once() {
    let user = User::new();
    user.run(&["init"]).success();
    std::fs::write(user.data_dir.path().join("api.addr"), "127.0.0.1:1").unwrap();
    std::fs::create_dir(user.data_dir.path().join("api.token")).unwrap();
    let err = user.run(&["status"]).failure();
    assert!(err.contains("api.token"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
}
