//! The NAT lab (issue 13 items 1, 4 and 5a-5d): real `capmesh` processes in network namespaces
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
/// How long test (d) keeps the lab cut: several TCP retransmission back-offs, so the heal has
/// real work to do (connections across the cut stay open: ping failures do not close them). A
/// parameter of the scenario, not a wait for an event.
const CUT_HOLD: Duration = Duration::from_secs(25);

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

/// What [`find_and_call`] saw: the source of the first hit any find gave (`replica` or
/// `kademlia`), and the call's answer.
struct Called {
    first_source: String,
    answer: Value,
}

/// `caller` finds `provider`'s echo by id (an advert naming a circuit address, through `via`
/// when given) and calls it.
fn find_and_call(lab: &Lab, caller: &str, provider: &str, text: &str) -> Called {
    find_and_call_via(lab, caller, provider, text, "/p2p-circuit")
}

fn find_and_call_via(lab: &Lab, caller: &str, provider: &str, text: &str, via: &str) -> Called {
    let provider_id = peer_id(lab, provider);
    let cap = wait_for("the provider publishes echo", T, || {
        let s = lab.status(provider)?;
        s["published"][0].as_str().map(String::from).ok_or(s.to_string())
    });
    let mut first_source = None;
    wait_for(&format!("the caller finds the provider through {via}"), T, || {
        let out = lab.cli(caller, &["find", &cap, "--timeout-ms", "3000", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hits: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["hit"]["provider"] == provider_id.as_str())
            .collect();
        if first_source.is_none()
            && let Some(h) = hits.first()
        {
            first_source = h["hit"]["source"].as_str().map(String::from);
        }
        let found = hits.iter().any(|v| {
            v["hit"]["addrs"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a.as_str().is_some_and(|a| a.contains("/p2p-circuit") && a.contains(via))
                })
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
    Called { first_source: first_source.unwrap_or_default(), answer }
}

/// The ledger entries of `host` (`capmesh receipts list --json`).
fn ledger(lab: &Lab, host: &str) -> Vec<Value> {
    let out = lab.cli(host, &["receipts", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Both sides hold the call's receipt (the caller also its countersignature) and each side's
/// exported ledger verifies offline.
fn receipts_as_usual(lab: &Lab, caller: &str, provider: &str, receipt: &str) {
    for host in [caller, provider] {
        wait_for(&format!("{host}'s ledger holds receipt {receipt}"), T, || {
            let entries = ledger(lab, host);
            let has = |kind: &str, id: Option<&str>| {
                entries.iter().any(|e| {
                    e["kind"].as_str().is_some_and(|k| k.eq_ignore_ascii_case(kind))
                        && id.is_none_or(|id| e["id"] == id)
                        && (kind == "receipt" || e["record"].to_string().contains(receipt))
                })
            };
            // The provider learns the countersignature when the caller sends it (not awaited by
            // the call); the caller signs it after verifying.
            if has("receipt", Some(receipt)) && has("countersignature", None) {
                Ok(())
            } else {
                Err(format!("{entries:?}"))
            }
        });
        let out = lab.cli(host, &["receipts", "export"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let file = lab.dir.join(format!("{host}-ledger.ndjson"));
        std::fs::write(&file, &out.stdout).unwrap();
        let verify = lab.cli(host, &["receipts", "verify", file.to_str().unwrap()]);
        let said = String::from_utf8_lossy(&verify.stdout);
        assert!(
            verify.status.success(),
            "{host}: {said}{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
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

    // b neither gossips nor syncs (eim.toml): its replica is empty, so only a Kademlia lookup
    // can name a as the provider (issue 13 item 4).
    let called = find_and_call(&lab, "b", "a", "across two NATs");
    assert_eq!(called.first_source, "kademlia", "b's first find of a's echo");
    let receipt = called.answer["receipt_id"].as_str().unwrap().to_string();
    receipts_as_usual(&lab, "b", "a", &receipt);
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
    // already punched; then DCUtR replaces it with a direct one (endpoint-independent NATs).
    assert!(["relayed", "hole_punched"].contains(&first.as_str()), "b→a: {first}; then {last}");
    assert!(punched.is_some(), "no hole punch within {PUNCH_WAIT:?}: b→a {first}, then {last}");
    // A call over the punched connection succeeds, and both sides know the connection's kind:
    // DCUtR reports the punch on one side, the other sees a direct connection come beside the
    // relayed one.
    find_and_call(&lab, "b", "a", "direct now");
    let kind = lab.connection("b", &peer_id(&lab, "a"));
    let other = lab.connection("a", &peer_id(&lab, "b"));
    eprintln!("lab (a): after the second call b→a is {kind:?}, a→b {other:?}");
    assert!(kind == "hole_punched" && other == "hole_punched", "b→a {kind}, a→b {other}");
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

/// The relays `status` names in `relay_reservations`: in each circuit address, the peer before
/// the last `/p2p-circuit`.
fn reserved_on(status: &Value, relays: &[(&str, String)]) -> Vec<String> {
    let mut on: Vec<String> = status["relay_reservations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let a = a.as_str()?;
            let before = &a[..a.rfind("/p2p-circuit")?];
            let relay = before.rsplit("/p2p/").next()?;
            relays.iter().find(|(_, id)| id == relay).map(|(n, _)| n.to_string())
        })
        .collect();
    on.sort();
    on.dedup();
    on
}

#[test]
fn when_its_relay_dies_a_private_host_reserves_on_another_and_stays_callable() {
    if !lab_possible("lab (c)") {
        return;
    }
    let lab = Lab::up("failover.toml");
    let started = Instant::now();
    let relays = [("relay1", peer_id(&lab, "relay1")), ("relay2", peer_id(&lab, "relay2"))];
    // a holds one reservation (failover.toml), on whichever relay it met first.
    let old = wait_for("a: private, with one reservation", T, || {
        let s = lab.status("a")?;
        match reserved_on(&s, &relays).as_slice() {
            [one] if s["reachability"] == "private" => Ok(one.clone()),
            _ => Err(s.to_string()),
        }
    });
    let (old_id, new, new_id) = match old.as_str() {
        "relay1" => (relays[0].1.clone(), "relay2", relays[1].1.clone()),
        _ => (relays[1].1.clone(), "relay1", relays[0].1.clone()),
    };
    // b (symmetric NAT) calls a through the relay a holds its reservation on.
    find_and_call_via(&lab, "b", "a", "through the first relay", &old_id);
    assert_eq!(lab.connection("b", &peer_id(&lab, "a")), "relayed");

    let out = testnet(&lab.dir, &["lab", "stop", &old, "--kill"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let killed = Instant::now();
    // a notices, reserves on the other relay by itself, and drops the dead one.
    let s = wait_for(&format!("a: a reservation on {new} and none on {old}"), T, || {
        let s = lab.status("a")?;
        if reserved_on(&s, &relays) == [new.to_string()] { Ok(s) } else { Err(s.to_string()) }
    });
    assert_eq!(s["reachability"], "private", "{s:#}");
    let moved = killed.elapsed();
    // Its advert names the new circuit; b finds it there and the call goes through.
    find_and_call_via(&lab, "b", "a", "through the second relay", &new_id);
    assert_eq!(lab.connection("b", &peer_id(&lab, "a")), "relayed");
    let b_sees = lab.status("b").unwrap();
    assert!(!b_sees["relay_reservations"].to_string().contains(&old_id), "{b_sees:#}");
    eprintln!(
        "lab (c) measurement: a reserved on {new} {:.1} s after {old} was killed; {:.1} s in all",
        moved.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    lab.down();
}

/// Publishes an announce-only capability named `name` from `host`; returns its id.
fn publish_marker(lab: &Lab, host: &str, name: &str) -> String {
    let out = lab.cli(host, &["cap", "new", name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = lab.dir.join(format!("{name}.json"));
    std::fs::write(&file, &out.stdout).unwrap();
    let out = lab.cli(host, &["cap", "publish", file.to_str().unwrap(), "--announce-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// The names of the `lab.mark.` capabilities in `host`'s replica.
fn markers(lab: &Lab, host: &str) -> Result<Vec<String>, String> {
    let out = lab.cli(host, &["registry", "query", "--name", "lab.mark.", "--json"]);
    // No match is an empty page (and a non-zero exit): still an answer.
    let page: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{host}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let mut names: Vec<String> = page["hits"]
        .as_array()
        .ok_or_else(|| format!("{host}: {page}"))?
        .iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[test]
fn a_real_cut_keeps_adverts_on_their_side_and_after_the_heal_everyone_converges() {
    if !lab_possible("lab (d)") {
        return;
    }
    let lab = Lab::up("partition.toml");
    let started = Instant::now();
    let (left, right) = (["relay1", "a1", "a2"], ["relay2", "b1", "b2"]);
    let all: Vec<&str> = left.iter().chain(&right).copied().collect();
    let holds = |host: &str, wanted: &[&str]| -> Result<Vec<String>, String> {
        let have = markers(&lab, host)?;
        if wanted.iter().all(|w| have.iter().any(|h| h == w)) {
            Ok(have)
        } else {
            Err(format!("{host}: {have:?}"))
        }
    };
    // The mesh first: a marker published before the cut reaches everyone.
    publish_marker(&lab, "a1", "lab.mark.before");
    for host in &all {
        wait_for(&format!("{host} holds lab.mark.before"), T, || holds(host, &["lab.mark.before"]));
    }
    let out = testnet(&lab.dir, &["lab", "cut", "relay2", "right"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cut_at = Instant::now();
    publish_marker(&lab, "a2", "lab.mark.left");
    publish_marker(&lab, "b2", "lab.mark.right");
    // Each side spreads its own marker…
    for host in left {
        wait_for(&format!("{host} holds lab.mark.left"), T, || holds(host, &["lab.mark.left"]));
    }
    for host in right {
        wait_for(&format!("{host} holds lab.mark.right"), T, || holds(host, &["lab.mark.right"]));
    }
    // …and nothing crosses the cut while it holds.
    let held = CUT_HOLD.saturating_sub(cut_at.elapsed());
    std::thread::sleep(held);
    for host in left {
        let have = markers(&lab, host).unwrap();
        assert!(!have.contains(&"lab.mark.right".to_string()), "{host} across the cut: {have:?}");
    }
    for host in right {
        let have = markers(&lab, host).unwrap();
        assert!(!have.contains(&"lab.mark.left".to_string()), "{host} across the cut: {have:?}");
    }
    let status: Value =
        serde_json::from_slice(&testnet(&lab.dir, &["lab", "status", "--json"]).stdout).unwrap();
    assert_eq!(status["cut"], json!(["relay2", "right"]), "{status:#}");
    let cut_for = cut_at.elapsed();

    let out = testnet(&lab.dir, &["lab", "heal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let healed = Instant::now();
    for host in &all {
        wait_for(&format!("{host} converges"), T, || {
            holds(host, &["lab.mark.left", "lab.mark.right"])
        });
    }
    eprintln!(
        "lab (d) measurement: cut for {:.1} s; every node held both sides' markers {:.1} s after the heal; {:.1} s in all",
        cut_for.as_secs_f64(),
        healed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    lab.down();
}

/// TCP handshake round trips (ms) from `from` to `to`'s node port, as `lab rtt` measures them.
fn rtt(lab: &Lab, from: &str, to: &str) -> Vec<f64> {
    let out = testnet(&lab.dir, &["lab", "rtt", from, to, "--count", "5"]);
    assert!(out.status.success(), "lab rtt {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_20_ms_link_delays_every_round_trip_by_at_least_40_ms() {
    if !lab_possible("lab latency") {
        return;
    }
    let lab = Lab::up("latency.toml");
    let status: Value =
        serde_json::from_slice(&testnet(&lab.dir, &["lab", "status", "--json"]).stdout).unwrap();
    let shaper = status["shaper"].as_str().unwrap_or_default().to_string();
    assert!(["netem", "delay-line"].contains(&shaper.as_str()), "{status:#}");
    // Lower bounds only: the delay a link adds is a floor, never a ceiling.
    for (from, to, floor) in
        [("q", "p", 40.0), ("p", "q", 40.0), ("c", "q", 40.0), ("c", "p", 80.0)]
    {
        let ms = rtt(&lab, from, to);
        assert!(ms.iter().all(|m| *m >= floor), "{from}→{to}: {ms:?}, each at least {floor} ms");
        eprintln!("lab latency measurement ({shaper}): {from}→{to} TCP handshakes {ms:.1?} ms");
    }
    // libp2p works through the shaped links and the NAT: c connects to its bootstrap peer.
    let c = wait_for("c connects to its bootstrap peer through the shaped uplink", T, || {
        let s = lab.status("c")?;
        if s["connected_peers"].as_u64().unwrap_or(0) >= 1 { Ok(s) } else { Err(s.to_string()) }
    });
    eprintln!("lab latency: c sees {} peers", c["connected_peers"]);
    if shaper == "delay-line" {
        let status: Value =
            serde_json::from_slice(&testnet(&lab.dir, &["lab", "status", "--json"]).stdout)
                .unwrap();
        assert_eq!(status["delay_running"], true, "{status:#}");
        let wires = status["delay"]["wires"].as_array().cloned().unwrap_or_default();
        assert_eq!(wires.len(), 2, "{status:#}");
        for w in &wires {
            assert!(w["up"]["forwarded"].as_u64().unwrap_or(0) > 0, "{w:#}");
            assert_eq!(w["up"]["dropped_oversize"], 0, "{w:#}");
            assert_eq!(w["down"]["dropped_oversize"], 0, "{w:#}");
        }
    }
    lab.down();
}
