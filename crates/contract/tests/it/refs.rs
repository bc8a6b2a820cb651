//! A `$ref` outside the document is refused by name and place, before anything could fetch or
//! read it: a listener sees no connection, a named pipe is never opened.

use std::{
    io::ErrorKind, net::TcpListener, path::Path, process::Command, sync::mpsc, thread,
    time::Duration,
};

use capmesh_contract::{Compiled, ContractError, Validators, Which, capability_id, check};
use serde_json::{Value, json};

use crate::contract;

fn with_input_ref(reference: &str) -> capmesh_contract::Contract {
    let mut c = contract();
    c.input = json!({"type": "object", "properties": {"a": {"$ref": reference}}});
    c
}

fn assert_external(e: ContractError, reference: &str) {
    assert_eq!(
        e,
        ContractError::ExternalRef {
            which: Which::Input,
            pointer: "/properties/a/$ref".into(),
            reference: reference.into(),
        }
    );
}

fn assert_no_connection(listener: &TcpListener) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("a connection was attempted from {from}"),
        Err(e) => panic!("accept failed: {e}"),
    }
}

#[test]
fn http_ref_is_refused_without_a_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/s.json", listener.local_addr().unwrap());
    let c = with_input_ref(&url);

    assert_external(check(&c).unwrap_err(), &url);
    assert_external(Compiled::new(&c).unwrap_err(), &url);
    let validators = Validators::default();
    assert_external(validators.get(&capability_id(&c).unwrap(), &c).unwrap_err(), &url);
    assert!(validators.is_empty());
    assert_no_connection(&listener);

    // The message says what to do.
    let msg = check(&c).unwrap_err().to_string();
    assert!(msg.contains(&url) && msg.contains("/properties/a/$ref") && msg.contains("$defs"));
}

#[test]
fn jsonschema_itself_cannot_fetch() {
    // Defence in depth, and a canary: if some crate in the build turned on jsonschema's
    // `resolve-http` feature, the plain builder below would connect.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let schema = json!({"$ref": format!("http://{}/s.json", listener.local_addr().unwrap())});
    assert!(jsonschema::draft202012::new(&schema).is_err());
    assert!(jsonschema::draft202012::options().offline().build(&schema).is_err());
    assert_no_connection(&listener);
}

#[test]
fn dynamic_ref_in_output_is_refused() {
    let mut c = contract();
    c.output = json!({"items": {"$dynamicRef": "https://example.com/tree#node"}});
    assert_eq!(
        check(&c).unwrap_err(),
        ContractError::ExternalRef {
            which: Which::Output,
            pointer: "/items/$dynamicRef".into(),
            reference: "https://example.com/tree#node".into(),
        }
    );
}

#[test]
fn file_refs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.json");
    std::fs::write(&file, r#"{"type": "string"}"#).unwrap();
    let path = file.to_str().unwrap();
    for reference in
        [path.to_owned(), format!("file://{path}"), "s.json".to_owned(), "./s.json".into()]
    {
        assert_external(check(&with_input_ref(&reference)).unwrap_err(), &reference);
    }
}

/// Runs `f` on a thread and fails (instead of hanging) if it does not finish in time: opening a
/// named pipe for reading blocks until a writer comes, which none does.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return: it must have tried to read the pipe"))
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {} failed", path.display());
}

#[test]
fn named_pipe_ref_is_refused_without_opening_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("schema.json");
    mkfifo(&fifo);
    let path = fifo.to_str().unwrap().to_owned();
    for reference in [path.clone(), format!("file://{path}")] {
        let c = with_input_ref(&reference);
        let e = within("check", move || check(&c));
        assert_external(e.unwrap_err(), &reference);
    }
    // Nor can the library read it by itself.
    let schema: Value = json!({"$ref": format!("file://{path}")});
    let built = within("jsonschema", move || jsonschema::draft202012::new(&schema).is_ok());
    assert!(!built);
}
