//! `capmesh call` and `capmesh attest` between two `capmesh run` processes on 127.0.0.1: a
//! priced blake3 call with its receipt in the caller's ledger, arguments refused before they
//! leave, an attestation, and a long call interrupted with ctrl-c (SIGINT), which the provider
//! records as cancelled.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use capmesh_exec::Builtin;
use capmesh_system_tests::User;
use serde_json::Value;

/// A data directory serving blake3 (1 credit a call) and sleep, with a short inline window so
/// that long calls are deferred (`TaskAccepted`) at once.
const PROVIDER_CONFIG: &str = r#"
[market]
inline_window_ms = 300

[[serve]]
runtime = { type = "builtin", name = "blake3" }
price_amount = 1
price_unit = "credit"

[[serve]]
runtime = { type = "builtin", name = "sleep" }
"#;

/// Bound on anything awaited: a guard against hangs, never a measurement.
const HANG: Duration = Duration::from_secs(60);

/// A `capmesh run` child, stopped with SIGTERM by [`Node::stop`] (killed if dropped).
struct Node {
    user: User,
    child: Child,
}

impl Node {
    fn start(config: Option<&str>, extra: &[&str]) -> Node {
        let user = User::new();
        if let Some(config) = config {
            user.run(&["init"]).success();
            std::fs::write(user.data_dir.path().join("config.toml"), config).unwrap();
        }
        let mut args = vec!["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--announce-listen-addrs"];
        args.extend_from_slice(extra);
        let child =
            user.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let node = Node { user, child };
        wait_until("api.addr written", || node.user.data_dir.path().join("api.addr").exists());
        node
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.user.run(&["status", "--json"]).success()).unwrap()
    }

    fn peer_id(&self) -> String {
        self.status()["peer_id"].as_str().unwrap().to_owned()
    }

    /// `<listen address>/p2p/<peer id>`.
    fn addr(&self) -> String {
        let s = self.status();
        format!("{}/p2p/{}", s["listen_addrs"][0].as_str().unwrap(), s["peer_id"].as_str().unwrap())
    }

    /// `capmesh args…` to the end, with its exit code.
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let Output { status, stdout, stderr } = self.user.command(args).output().unwrap();
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (status.code(), text(stdout), text(stderr))
    }

    /// The receipts of the ledger, as `receipts list --json` prints them.
    fn receipts(&self) -> Vec<Value> {
        let out = self.user.run(&["receipts", "list", "--json", "--limit", "1000"]).success();
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["kind"] == "Receipt")
            .collect()
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = wait_for_exit(&mut self.child, Duration::from_secs(20))
            .expect("the node stops on SIGTERM");
        assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cap_of(b: Builtin) -> String {
    capmesh_contract::check(&b.contract()).unwrap().to_string()
}

#[test]
fn calls_and_attestations_from_the_command_line() {
    let a = Node::start(Some(PROVIDER_CONFIG), &[]);
    let b = Node::start(None, &["--bootstrap", &a.addr()]);
    let (blake3, sleep) = (cap_of(Builtin::Blake3), cap_of(Builtin::Sleep));

    // B learns A's adverts (gossip or Kademlia).
    let found = b.user.run(&["find", "--text", "blake3", "--json"]);
    if !found.stdout.contains(&blake3) {
        wait_until("B finds blake3", || {
            b.user
                .run_within(HANG, &["find", &blake3, "--json", "--timeout-ms", "2000"])
                .stdout
                .contains("\"hit\"")
        });
    }
    wait_until("B finds sleep", || {
        b.user
            .run_within(HANG, &["find", &sleep, "--json", "--timeout-ms", "2000"])
            .stdout
            .contains("\"hit\"")
    });

    // A call: the digest on stdout, the receipt line on stderr.
    let (code, out, err) = b.run(&["call", &blake3, "--args", r#"{"text":"hi"}"#]);
    assert_eq!(code, Some(0), "{err}");
    let digest = blake3::hash(b"hi").to_hex().to_string();
    let output: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(output, serde_json::json!({"digest": digest}));
    assert!(out.contains("\n  "), "pretty JSON: {out}");
    let line = err.lines().find(|l| l.starts_with("receipt ")).unwrap_or_else(|| panic!("{err}"));
    let receipt = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(line.contains(&format!("provider {}", a.peer_id())), "{line}");
    assert!(line.contains("price 1 credit"), "{line}");

    // The caller's ledger holds it, and verifies.
    let shown = b.user.run(&["receipts", "show", &receipt]).success();
    assert!(shown.contains(&blake3) && shown.contains("\"Ok\""), "{shown}");
    let verified = b.user.run(&["receipts", "verify"]).success();
    assert!(verified.starts_with("ok:"), "{verified}");

    // --json: the API's answer; the second call is warm (a standing offer).
    let out = b
        .user
        .run(&["call", &blake3, "--args", r#"{"text":"hi"}"#, "--json", "--deadline", "20s"])
        .success();
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["output"]["digest"], digest);
    assert_eq!(answer["price"], serde_json::json!({"amount": 1, "unit": "credit"}));
    assert_eq!(answer["warm"], true, "{answer}");
    assert_eq!(answer["receipt"]["payload"]["status"], "Ok");
    assert_eq!(answer["receipt_id"].as_str().unwrap().len(), receipt.len());

    // Arguments the contract refuses never leave B: exit 2, with the reason.
    let (code, _, err) = b.run(&["call", &blake3, "--args", r#"{"txt":"hi"}"#]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("InvalidArgs"), "{err}");
    let (code, _, err) = b.run(&["call", &blake3, "--args", "{not json"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, out, err) = b.run(&["call", &blake3, "--args", r#"{"txt":"hi"}"#, "--json"]);
    assert_eq!(code, Some(2), "{err}");
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["error"]["code"], "BadRequest");
    assert_eq!(body["error"]["call"]["code"], "InvalidArgs");

    // An attestation about A.
    let (code, out, err) = b.run(&["attest", &a.peer_id(), "member", "--expires", "30d"]);
    assert_eq!(code, Some(0), "{err}");
    let id = out.trim();
    assert!(id.starts_with('b') && id.len() > 50, "{out}");
    let (code, _, err) = b.run(&["attest", "alice", "member"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = b.run(&["attest", &a.peer_id(), "Not A Claim"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("claim"), "{err}");
    // Listed by the issuer at once, and by A once gossip brings it (A gossips with B).
    let listed = |node: &Node| {
        let (code, out, err) =
            node.run(&["attestations", "list", "--subject", &a.peer_id(), "--claim", "member"]);
        assert_eq!(code, Some(0), "{err}");
        out.lines().filter(|l| l.starts_with(id)).count()
    };
    assert_eq!(listed(&b), 1);
    let deadline = std::time::Instant::now() + HANG;
    while listed(&a) == 0 {
        assert!(std::time::Instant::now() < deadline, "A never listed B's attestation");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, out, _) = b.run(&["attestations", "list", "--issuer", &a.peer_id()]);
    assert!(out.is_empty(), "A issued nothing: {out}");

    // A long call, interrupted. A short sleep first makes the next call warm: one TaskStart.
    b.user.run(&["call", &sleep, "--args", r#"{"ms": 1}"#]).success();
    let mut long = b
        .user
        .command(&["call", &sleep, "--args", r#"{"ms": 600000}"#, "--deadline", "10m"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past the inline window: A has accepted the call and runs it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(long.try_wait().unwrap().is_none(), "the sleep call ended early");
    let pid = long.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    if wait_for_exit(&mut long, Duration::from_secs(30)).is_none() {
        let _ = long.kill();
        panic!("capmesh call did not stop on SIGINT");
    }
    let out = long.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");

    // A, the provider, signed a receipt saying so.
    let cancelled = || {
        a.receipts()
            .iter()
            .filter(|r| {
                let p = &r["record"]["payload"];
                p["status"] == "Cancelled" && p["capability"] == sleep.as_str()
            })
            .count()
    };
    wait_until("a Cancelled receipt in A's ledger", || cancelled() == 1);

    // A caller that goes away without a word (SIGKILL) cancels its call too: B notices the
    // closed connection and tells A.
    let mut gone = b
        .user
        .command(&["call", &sleep, "--args", r#"{"ms": 600000}"#, "--deadline", "10m"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    gone.kill().unwrap();
    gone.wait().unwrap();
    wait_until("a second Cancelled receipt in A's ledger", || cancelled() == 2);

    b.stop();
    a.stop();
}

#[test]
fn call_and_attest_need_a_running_node() {
    let user = User::new();
    user.run(&["init"]).success();
    let cap = cap_of(Builtin::Echo);
    for args in [&["call", &cap, "--args", "{}"][..], &["attest", &cap, "member"]] {
        let err = user.run(args).failure();
        assert!(err.contains("no capmesh node is running"), "{args:?}: {err}");
        assert!(err.contains("capmesh run"), "{args:?}: {err}");
    }
}
