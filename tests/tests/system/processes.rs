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
        let user = User::new();
        let mut args = vec!["run", "--listen", "/ip4/127.0.0.1/tcp/0", "--announce-listen-addrs"];
        args.extend_from_slice(extra);
        let child =
            user.command(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
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
