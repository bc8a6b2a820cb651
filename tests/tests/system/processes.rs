//! The `capmesh` binary itself: three `capmesh run` processes form a mesh on 127.0.0.1 and
//! answer `capmesh find`, `status`, `peers` and `registry query` through the local API.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use capmesh_system_tests::User;

/// A `capmesh run` child, stopped with SIGTERM (clean shutdown) when dropped.
struct Running {
    user: User,
    child: Child,
}

impl Running {
    fn start(extra: &[&str]) -> Running {
        Running::start_with(User::new(), extra, Stdio::null())
    }

    /// Starts a node for `user` (whose data directory may hold a config already), its log to
    /// `stderr`.
    fn start_with(user: User, extra: &[&str], stderr: Stdio) -> Running {
        let mut args = vec!["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--announce-listen-addrs"];
        args.extend_from_slice(extra);
        let child = user.command(&args).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        let running = Running { user, child };
        running.wait_until(
            || running.user.data_dir.path().join("api.addr").exists(),
            "api.addr written",
        );
        running
    }

    fn wait_until(&self, mut cond: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.user.run(&["status", "--json"]).success()).unwrap()
    }

    /// `<listen address>/p2p/<peer id>`.
    fn addr(&self) -> String {
        let s = self.status();
        format!("{}/p2p/{}", s["listen_addrs"][0].as_str().unwrap(), s["peer_id"].as_str().unwrap())
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn three_processes_form_a_mesh_and_answer_find() {
    let a = Running::start(&[]);
    let a_addr = a.addr();
    let b = Running::start(&["--bootstrap", &a_addr]);
    let b_addr = b.addr();
    let c = Running::start(&["--bootstrap", &b_addr, "--no-gossip"]);

    let contract = a.user.data_dir.path().join("echo.json");
    let scaffold = a.user.run(&["cap", "new", "proc-echo"]).success();
    std::fs::write(&contract, scaffold).unwrap();
    // Nothing serves this contract: refused unless announced only.
    let refused = a.user.run(&["cap", "publish", contract.to_str().unwrap()]).failure();
    assert!(refused.contains("--announce-only"), "{refused}");
    let cap =
        a.user.run(&["cap", "publish", "--announce-only", contract.to_str().unwrap()]).success();
    let cap = cap.trim();

    // C does not gossip and is not connected to A: it finds A through Kademlia.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = c
            .user
            .run_within(Duration::from_secs(30), &["find", cap, "--json", "--timeout-ms", "5000"]);
        if run.stdout.contains("\"hit\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capmesh find on the third node: {run:?}; status {}",
            c.status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let found = c.user.run(&["find", cap, "--json"]).success();
    let first: serde_json::Value = serde_json::from_str(found.lines().next().unwrap()).unwrap();
    assert_eq!(first["hit"]["provider"], a.status()["peer_id"], "{found}");
    assert_eq!(first["hit"]["capability"], cap);

    // B got the advert by gossip; its replica answers through the API while it runs.
    b.wait_until(
        || b.user.run(&["registry", "query", "--json"]).success().contains(cap),
        "B's replica",
    );
    let peers = b.user.run(&["peers", "--json"]).success();
    assert!(peers.contains(a.status()["peer_id"].as_str().unwrap()), "{peers}");
    assert!(a.status()["published"].as_array().unwrap().iter().any(|p| p == cap));
    // As a table: the header on stderr, the rows alone on stdout.
    let table = b.user.run(&["peers"]);
    assert!(table.stderr.starts_with("PEER  STATE  ADDRESSES"), "{table:?}");
    assert!(table.success().lines().all(|l| l.starts_with("12D3KooW")));

    // The contract behind the id, printed from C (which found it through Kademlia).
    let shown: serde_json::Value =
        serde_json::from_str(&c.user.run(&["cap", "show", cap]).success()).unwrap();
    assert_eq!(shown["name"], "proc-echo");
    let err = c.user.run(&["find"]).failure();
    assert!(err.contains("--tag") && err.contains("--text"), "{err}");
    // A second node on A's data directory is told that one already runs there.
    let err = a
        .user
        .run_within(Duration::from_secs(60), &["run", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .failure();
    assert!(err.contains("another capmesh node is running on the data directory"), "{err}");

    for node in [c, b, a] {
        assert!(node.stop().success(), "a clean exit on SIGTERM");
    }
}

#[test]
fn commands_that_need_a_node_say_so_when_none_runs() {
    let user = User::new();
    user.run(&["init"]).success();
    for args in [&["status"][..], &["peers"], &["find", "--tag", "x"]] {
        let err = user.run(args).failure();
        assert!(err.contains("no capmesh node is running"), "{args:?}: {err}");
    }
}

/// At its default level a node tells an operator who it is, where it listens, how its
/// bootstrap went, what it serves, where its API and metrics are, and that it stopped; as
/// text without colour codes when stderr is a file, or as one JSON object per line.
#[test]
fn a_node_logs_what_an_operator_needs_as_text_or_json() {
    let logs = tempfile::tempdir().unwrap();
    let provider = User::new();
    provider.run(&["init"]).success();
    std::fs::write(
        provider.data_dir.path().join("config.toml"),
        "[[serve]]\nruntime = { type = \"builtin\", name = \"blake3\" }\n",
    )
    .unwrap();
    let a_log = logs.path().join("a.log");
    let a = Running::start_with(
        provider,
        &["--log-format", "json"],
        Stdio::from(std::fs::File::create(&a_log).unwrap()),
    );
    let (a_id, a_addr) = (a.status()["peer_id"].as_str().unwrap().to_string(), a.addr());
    let b_log = logs.path().join("b.log");
    let b = Running::start_with(
        User::new(),
        &["--bootstrap", &a_addr],
        Stdio::from(std::fs::File::create(&b_log).unwrap()),
    );
    let b_id = b.status()["peer_id"].as_str().unwrap().to_string();
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap();
    b.wait_until(|| read(&b_log).contains("bootstrap done"), "B's bootstrap logged");
    assert!(b.stop().success());
    assert!(a.stop().success());

    let lines: Vec<serde_json::Value> = read(&a_log)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {lines:#?}"))
    };
    assert_eq!(event("starting")["fields"]["peer_id"], a_id.as_str());
    assert!(
        event("listening")["fields"]["address"]
            .as_str()
            .unwrap()
            .starts_with("/ip4/127.0.0.1/tcp/")
    );
    assert_eq!(event("serving")["fields"]["name"], "builtin.blake3");
    assert!(event("serving")["fields"]["capability"].as_str().unwrap().starts_with('b'));
    let running = &event("node running")["fields"];
    assert!(running["api"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{running}");
    assert!(running["metrics"].as_str().unwrap().ends_with("/metrics"), "{running}");
    event("shutting down");
    event("stopped");

    let text = read(&b_log);
    assert!(!text.contains('\u{1b}'), "colour codes in a log file: {text}");
    for needle in [b_id.as_str(), "listening", "bootstrap done", "node running", "stopped"] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
}
