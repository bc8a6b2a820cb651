//! The NAT lab (issue 13 items 1 and 5a/5b): real `capmesh` processes in network namespaces
//! behind nftables NATs, driven through `capmesh-testnet lab` and the capmesh CLI run inside
//! each host's namespace. Needs root (CI runs as root; elsewhere the tests say they skip) and
//! `ip` / `nft` (`.ci/run` installs them; missing as root is a failure).
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod common;
use common::capmesh_bin;

/// Bound on anything awaited: a guard against hangs, never a measurement.
const T: Duration = Duration::from_secs(90);
/// How long a relayed connection is watched for DCUtR's upgrade.
const PUNCH_WAIT: Duration = Duration::from_secs(10);

/// Whether the lab can run here: not root → skip (with a message); root without the tools →
/// fail, saying what to install.
fn lab_possible(test: &str) -> bool {
    if !capmesh_testnet::lab::net::is_root() {
        eprintln!(
            "SKIPPED {test}: the NAT lab needs root (network namespaces, nftables); CI runs it as root"
        );
        return false;
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let ok = Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "`{tool}` is missing: install {package} (apt-get install -y {package}); .ci/run does"
        );
    }
    true
}

fn testnet(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capmesh-testnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

/// A lab that is taken down when the test ends, however it ends.
struct Lab {
    dir: PathBuf,
    run: String,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn up(topology: &str) -> Lab {
        let capmesh = capmesh_bin();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let topology =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join("lab").join(topology);
        let out = testnet(
            &dir,
            &["lab", "up", topology.to_str().unwrap(), "--capmesh", capmesh.to_str().unwrap()],
        );
        // Read the run id first, so even a failed `up` is taken down by the guard.
        let manifest: Value = std::fs::read(dir.join("lab.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let lab = Lab { dir, run: manifest["run"].as_str().unwrap_or_default().into(), _tmp: tmp };
        assert!(out.status.success(), "lab up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    /// The capmesh CLI of `host`, inside its namespace.
    fn cli(&self, host: &str, args: &[&str]) -> Output {
        let mut all = vec!["lab", "cli", host, "--"];
        all.extend_from_slice(args);
        testnet(&self.dir, &all)
    }

    fn json(&self, host: &str, args: &[&str]) -> Result<Value, String> {
        let out = self.cli(host, args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn status(&self, host: &str) -> Result<Value, String> {
        self.json(host, &["status", "--json"])
    }

    /// How `host` is connected to `peer`, as `capmesh peers --json` says.
    fn connection(&self, host: &str, peer: &str) -> String {
        let peers = self.json(host, &["peers", "--json"]).unwrap_or(Value::Null);
        peers
            .as_array()
            .and_then(|a| a.iter().find(|p| p["peer_id"] == peer))
            .and_then(|p| p["connection"].as_str())
            .unwrap_or("none")
            .to_string()
    }

    /// Takes the lab down and checks nothing of it is left.
    fn down(&self) {
        let out = testnet(&self.dir, &["lab", "down"]);
        assert!(out.status.success(), "lab down failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let left = lab_namespaces(&self.run);
        assert!(left.is_empty(), "namespaces left after down: {left:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.dir.join("lab.json").exists() {
            let _ = testnet(&self.dir, &["lab", "down"]);
        }
    }
}

fn lab_namespaces(run: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("cmlab-{run}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !run.is_empty() && n.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// Polls `check` until it gives a value; panics with the last thing it saw after `limit`.
fn wait_for<V>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<V, String>) -> V {
    let started = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(seen) if started.elapsed() > limit => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            // Each check starts processes (the CLI in a namespace): poll gently, the nodes
            // share the cores.
            Err(_) => std::thread::sleep(Duration::from_millis(1000)),
        }
    }
}

/// Waits until `host` says it is private and holds a reservation on `relay`; returns its status.
fn private_with_reservation(lab: &Lab, host: &str, relay: &str) -> Value {
    wait_for(&format!("{host}: private, with a reservation on the relay"), T, || {
        let s = lab.status(host)?;
        let on_relay = s["relay_reservations"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| c.as_str().is_some_and(|c| c.contains(relay))));
        if s["reachability"] == "private" && on_relay { Ok(s) } else { Err(s.to_string()) }
    })
}

/// The lab's peer ids by host name.
fn peer_id(lab: &Lab, host: &str) -> String {
    let m: Value =
        serde_json::from_slice(&std::fs::read(lab.dir.join("lab.json")).unwrap()).unwrap();
    let h = m["hosts"].as_array().unwrap().iter().find(|h| h["name"] == host).unwrap();
    h["peer_id"].as_str().unwrap().to_string()
}

/// `caller` finds `provider`'s echo by id (an advert naming a circuit address) and calls it;
/// returns the echo's capability id.
fn find_and_call(lab: &Lab, caller: &str, provider: &str, text: &str) -> String {
    let provider_id = peer_id(lab, provider);
    let cap = wait_for("the provider publishes echo", T, || {
        let s = lab.status(provider)?;
        s["published"][0].as_str().map(String::from).ok_or(s.to_string())
    });
    wait_for("the caller finds the provider through a relay circuit", T, || {
        let out = lab.cli(caller, &["find", &cap, "--timeout-ms", "3000", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|v| {
            v["hit"]["provider"] == provider_id.as_str()
                && v["hit"]["addrs"].as_array().is_some_and(|a| {
                    a.iter().any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")))
                })
        });
        if found { Ok(()) } else { Err(text) }
    });
    let out =
        lab.cli(caller, &["call", &cap, "--args", &json!({ "text": text }).to_string(), "--json"]);
    assert!(
        out.status.success(),
        "the call from {caller} to {provider} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["output"], json!({ "text": text }), "{answer:#}");
    assert_eq!(answer["provider"], provider_id.as_str(), "{answer:#}");
    cap
}

/// Watches the caller's and the provider's view of their connection for [`PUNCH_WAIT`] (until
/// either says hole_punched); returns the caller's kind first seen after the call, both views
/// last seen (caller / provider), and how long the upgrade took if it happened.
fn watch_connection(lab: &Lab, caller: &str, provider: &str) -> (String, String, Option<Duration>) {
    let (caller_id, provider_id) = (peer_id(lab, caller), peer_id(lab, provider));
    let started = Instant::now();
    let first = lab.connection(caller, &provider_id);
    let mut last = (first.clone(), String::new());
    while started.elapsed() < PUNCH_WAIT {
        last = (lab.connection(caller, &provider_id), lab.connection(provider, &caller_id));
        if last.0 == "hole_punched" || last.1 == "hole_punched" {
            return (first, format!("{} / {}", last.0, last.1), Some(started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (first, format!("{} / {}", last.0, last.1), None)
}

#[test]
fn two_hosts_behind_endpoint_independent_nats_reserve_by_themselves_and_call_each_other() {
    if !lab_possible("lab (a)") {
        return;
    }
    let lab = Lab::up("eim.toml");
    // From the nodes' start (building capmesh in `up` is not the lab's time).
    let started = Instant::now();
    let relay = peer_id(&lab, "relay");
    // Nothing but the bootstrap peer in their config: AutoNAT decides, the node reserves.
    for host in ["a", "b"] {
        let config =
            std::fs::read_to_string(lab.dir.join(format!("node-{host}/config.toml"))).unwrap();
        assert!(!config.contains("relays"), "{config}");
    }
    let sa = private_with_reservation(&lab, "a", &relay);
    private_with_reservation(&lab, "b", &relay);
    assert!(sa["external_addrs"].to_string().contains("/p2p-circuit"), "{sa:#}");
    let private_after = started.elapsed();

    find_and_call(&lab, "b", "a", "across two NATs");
    let (first, last, punched) = watch_connection(&lab, "b", "a");
    eprintln!(
        "lab (a) measurement: private + reserved {:.1} s after up; after the call b→a was {first:?}; \
         then (b's view / a's view) {last}; hole punch {}",
        private_after.as_secs_f64(),
        punched.map_or(format!("not within {PUNCH_WAIT:?}"), |d| format!(
            "succeeded {:.1} s after the call",
            d.as_secs_f64()
        )),
    );
    // The two hosts have no address the other can dial: the first connection is relayed, or
    // already punched.
    assert!(["relayed", "hole_punched"].contains(&first.as_str()), "b→a: {first}; then {last}");
    if punched.is_some() {
        // DCUtR upgraded, and a call over the punched connection succeeds.
        find_and_call(&lab, "b", "a", "direct now");
        let kind = lab.connection("b", &peer_id(&lab, "a"));
        let other = lab.connection("a", &peer_id(&lab, "b"));
        eprintln!("lab (a): after the second call b→a is {kind:?}, a→b {other:?}");
        // Both sides know it: DCUtR reports the punch on one side, the other sees a direct
        // connection come beside the relayed one.
        assert!(kind == "hole_punched" && other == "hole_punched", "b→a {kind}, a→b {other}");
    }
    lab.down();
    eprintln!("lab (a): {:.1} s from up to down", started.elapsed().as_secs_f64());
}

#[test]
fn behind_a_symmetric_nat_a_provider_stays_private_and_is_called_through_the_relay() {
    if !lab_possible("lab (b)") {
        return;
    }
    let lab = Lab::up("symmetric.toml");
    // From the nodes' start (building capmesh in `up` is not the lab's time).
    let started = Instant::now();
    let relay = peer_id(&lab, "relay");
    // a, the provider, is behind the symmetric NAT.
    let sa = private_with_reservation(&lab, "a", &relay);
    assert_eq!(sa["reachability"], "private");
    private_with_reservation(&lab, "b", &relay);

    find_and_call(&lab, "b", "a", "through the relay");
    let (first, last, punched) = watch_connection(&lab, "b", "a");
    eprintln!(
        "lab (b) measurement: after the call b→a was {first:?}; then (b's view / a's view) {last}; \
         hole punch {}",
        punched.map_or("none (expected: a symmetric NAT)".into(), |d| format!(
            "succeeded after {:.1} s (unexpected)",
            d.as_secs_f64()
        )),
    );
    assert_eq!(first, "relayed");
    // A new port for every destination: the punch cannot meet, the path stays the relay.
    assert!(punched.is_none(), "a hole punch through a symmetric NAT: {last}");
    assert_eq!(lab.status("a").unwrap()["reachability"], "private");
    lab.down();
    eprintln!("lab (b): {:.1} s from up to down", started.elapsed().as_secs_f64());
}
