//! Joining a network with the `capmesh` binary (issue 13, item 3): a listen port another node
//! holds is refused by name while that node keeps running; a node with no peer to join
//! through says so; a bootstrap peer named by DNS (`/dns4/localhost/…`, answered by the
//! resolver itself) is joined, remembered, and rejoined after a restart without it; a node
//! restarted on its fixed port is not refused.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use capmesh_system_tests::User;

/// Bound on a node's start, stop or state change: a hang guard, never a measurement.
const GUARD: Duration = Duration::from_secs(60);

/// What a node with no peer to join through logs at start.
const ALONE: &str = "no bootstrap peers configured and none remembered";

/// A port free a moment ago (bound at port 0, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `capmesh run` child with `RUST_LOG=info`, its stderr in a file; killed when dropped.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Node {
    /// Starts `capmesh run args…` on `user`'s data directory, logging to `log`, and waits
    /// until it says it runs.
    fn start(user: &User, log: PathBuf, args: &[&str]) -> Node {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let file = std::fs::File::create(&log).unwrap();
        let child = user
            .command(&full)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        let mut node = Node { child, log };
        node.wait_until("the node runs", |log| log.contains("node running"));
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until `cond` holds; panics with the log if the node exits or `GUARD`
    /// passes.
    fn wait_until(&mut self, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + GUARD;
        loop {
            let log = self.log();
            if cond(&log) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("waiting for {what}: the node exited ({status}); stderr:\n{log}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; stderr:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the node with SIGTERM (clean shutdown: it remembers its connected peers).
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "stopped with {status}; stderr:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "the node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(user: &User) -> serde_json::Value {
    serde_json::from_str(&user.run(&["status", "--json"]).success()).unwrap()
}

/// Waits until `user`'s running node has at least one connected peer.
fn wait_connected(user: &User, what: &str) {
    let deadline = Instant::now() + GUARD;
    loop {
        let s = status(user);
        if s["connected_peers"].as_u64().unwrap_or(0) >= 1 {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; status: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_listen_port_another_node_holds_is_refused_by_name_and_that_node_keeps_running() {
    let logs = tempfile::tempdir().unwrap();
    let addr = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let a_user = User::new();
    let a = Node::start(&a_user, logs.path().join("a.log"), &["--listen", &addr]);
    // A has no bootstrap peer and remembers none: it says so.
    let log = a.log();
    assert!(log.contains(ALONE) && log.contains("--bootstrap"), "stderr:\n{log}");

    // B, with its own data directory, on A's port: refused at once, naming the address.
    let b_user = User::new();
    let refused = b_user.run_within(GUARD, &["run", "--listen", &addr]).failure();
    assert!(refused.contains(&addr), "{refused}");
    assert!(refused.contains("in use"), "{refused}");
    assert!(refused.contains("--listen"), "{refused}");
    assert!(!b_user.data_dir.path().join("api.addr").exists(), "B served its API");

    // A still runs, on its port, and answers.
    let s = status(&a_user);
    assert!(
        s["listen_addrs"].as_array().unwrap().iter().any(|l| l.as_str() == Some(addr.as_str())),
        "{s}"
    );
    a.stop();
}

#[test]
fn a_bootstrap_peer_named_by_dns_is_joined_remembered_and_rejoined() {
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let a_addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let a_user = User::new();
    let a = Node::start(&a_user, logs.path().join("a1.log"), &["--listen", &a_addr]);
    let a_id = status(&a_user)["peer_id"].as_str().unwrap().to_string();

    // C joins through A's DNS name: the config accepts it, the transport resolves it.
    let by_name = format!("/dns4/localhost/tcp/{port}/p2p/{a_id}");
    let c_user = User::new();
    let c_args = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let c = Node::start(
        &c_user,
        logs.path().join("c1.log"),
        &[&c_args[..], &["--bootstrap", by_name.as_str()]].concat(),
    );
    assert!(!c.log().contains(ALONE), "C has a bootstrap peer; stderr:\n{}", c.log());
    wait_connected(&c_user, "C connected to A by name");
    wait_connected(&a_user, "A sees C");

    // C stops (remembering A) and starts again without --bootstrap: not alone, and back.
    c.stop();
    let c = Node::start(&c_user, logs.path().join("c2.log"), &c_args);
    assert!(!c.log().contains(ALONE), "C remembers A; stderr:\n{}", c.log());
    wait_connected(&c_user, "C reconnected to the peer it remembered");

    // A stops while connected (its side of the connections may wait in TIME_WAIT on its
    // port) and starts again on that port: not taken for another process.
    a.stop();
    let a = Node::start(&a_user, logs.path().join("a2.log"), &["--listen", &a_addr]);
    assert_eq!(status(&a_user)["peer_id"].as_str(), Some(a_id.as_str()));
    a.stop();
    c.stop();
}
