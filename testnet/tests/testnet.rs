//! `capmesh-testnet` as a researcher runs it: a small testnet of real `capmesh` processes on
//! 127.0.0.1 comes up, runs a short scenario with churn and one with a partition, reports counts
//! that match the workload, and goes down leaving no process behind.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

mod common;
use common::capmesh_bin;

fn testnet(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_capmesh-testnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "capmesh-testnet {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stops the testnet in its directory if the test ends early (a failed assertion must not leave
/// node processes behind).
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.join("testnet.json").exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_capmesh-testnet"))
                .arg("--dir")
                .arg(self.0)
                .arg("down")
                .output();
        }
    }
}

/// Whether `pid` is still a process (a zombie counts as gone).
fn running(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn a_small_testnet_comes_up_runs_churn_and_a_partition_and_goes_down_with_no_process_left() {
    let capmesh = capmesh_bin();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tn");
    let _down = Down(&dir);
    testnet(&dir, &["up", "-n", "4", "--capmesh", capmesh.to_str().unwrap()]);

    let status: Value =
        serde_json::from_slice(&testnet(&dir, &["status", "--json"]).stdout).unwrap();
    let nodes = status.as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    assert!(nodes.iter().all(|n| n["running"] == true), "{status:#}");
    assert_eq!(nodes.iter().filter(|n| !n["serves"].as_array().unwrap().is_empty()).count(), 2);

    let scenario = tmp.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        r#"
name = "smoke"
duration_secs = 6

[discovery]
rate = 4

[calls]
rate = 4
payload_bytes = 64

[churn]
fraction = 0.34
every_secs = 2
down_secs = 1
"#,
    )
    .unwrap();
    let report_path = tmp.path().join("report.json");
    testnet(&dir, &["run", scenario.to_str().unwrap(), "--out", report_path.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    // The plots, drawn from the report, are PNG images of some substance.
    for plot in ["report-latency.png", "report-timeline.png"] {
        let bytes = std::fs::read(tmp.path().join(plot)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{plot} is not a PNG");
        assert!(bytes.len() > 10_000, "{plot} is {} bytes", bytes.len());
    }

    // Counts match the load asked for: 4 a second for 6 s, every one accounted for.
    let answered_from = &report["finds"]["answered_from"];
    assert_eq!(
        answered_from["replica"].as_u64().unwrap() + answered_from["kademlia"].as_u64().unwrap(),
        report["finds"]["succeeded"].as_u64().unwrap(),
        "{answered_from}"
    );
    for (what, per_second_issued, per_second_ok) in
        [("finds", "finds_issued", "finds_answered"), ("calls", "calls_issued", "calls_succeeded")]
    {
        let s = &report[what];
        assert_eq!(s["asked"], 24, "{what}: {s:#}");
        assert_eq!(s["issued"], 24, "{what}: {s:#}");
        let (ok, failed) = (s["succeeded"].as_u64().unwrap(), s["failed"].as_u64().unwrap());
        let in_histogram: u64 =
            s["histogram"].as_array().unwrap().iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(in_histogram, ok, "{what}: every success is in the latency histogram");
        assert_eq!(ok + failed, 24, "{what}: {s:#}");
        // Most succeed (a node killed under its own call is counted apart); a broken path would
        // make this 0.
        assert!(s["success_rate"].as_f64().unwrap() >= 0.75, "{what}: {s:#}");
        assert_eq!(s["failed_by_reason"].get("NoNodeUp"), None, "{what}: {s:#}");
        let series = report["series"].as_array().unwrap();
        assert_eq!(series.len(), 6);
        let issued: u64 = series.iter().map(|x| x[per_second_issued].as_u64().unwrap()).sum();
        let succeeded: u64 = series.iter().map(|x| x[per_second_ok].as_u64().unwrap()).sum();
        assert_eq!((issued, succeeded), (24, ok), "{what}");
    }
    // Churn killed and restarted nodes (never node 0), and the report shows it.
    let events = report["events"].as_array().unwrap();
    let kills: Vec<&Value> = events.iter().filter(|e| e["kind"] == "kill").collect();
    let restarts = events.iter().filter(|e| e["kind"] == "restart").count();
    assert!(!kills.is_empty(), "{events:?}");
    assert_eq!(restarts, kills.len(), "every killed node came back: {events:?}");
    assert!(kills.iter().all(|e| e["node"] != 0));
    // Resources were sampled each second for each node.
    let resources = report["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 4);
    assert!(resources[0]["rss_mib"].as_array().unwrap().iter().all(|r| r.as_f64().unwrap() > 1.0));

    // A partition and its heal on the same testnet, with fresh capabilities published
    // throughout: every replica ends up holding every one published before the heal.
    let partition = tmp.path().join("partition.toml");
    std::fs::write(
        &partition,
        r#"
name = "split"
duration_secs = 8

[publish]
every_ms = 500
watchers = 2

[partition]
at_secs = 2
heal_secs = 5
converge_timeout_secs = 60
"#,
    )
    .unwrap();
    let split_path = tmp.path().join("split.json");
    testnet(&dir, &["run", partition.to_str().unwrap(), "--out", split_path.to_str().unwrap()]);
    let split: Value = serde_json::from_slice(&std::fs::read(&split_path).unwrap()).unwrap();
    let p = &split["partition"];
    assert_eq!(p["groups"], serde_json::json!([2, 2]), "{p:#}");
    assert_eq!((p["block_failures"].as_u64(), p["markers_failed"].as_u64()), (Some(0), Some(0)));
    // Both groups' markers and the publishes acknowledged before the heal (about 6 of them).
    assert!(p["expected_adverts"].as_u64().unwrap() >= 4, "{p:#}");
    assert_eq!(p["converged"], 4, "{p:#}");
    assert!(p["all_converged_ms"].as_f64().is_some(), "{p:#}");
    let kinds: Vec<&str> =
        split["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["partition", "heal", "converged"]);
    let publish = &split["publish"];
    assert_eq!((publish["asked"].as_u64(), publish["published"].as_u64()), (Some(16), Some(16)));
    let (watched, visible) =
        (publish["watched"].as_u64().unwrap(), publish["visible"].as_u64().unwrap());
    assert_eq!(
        watched,
        visible
            + publish["not_visible"].as_u64().unwrap()
            + publish["lost_with_their_node"].as_u64().unwrap()
    );
    assert!(visible > 0 && publish["visible_ms"]["p50"].as_f64().unwrap() > 0.0, "{publish:#}");
    let published: u64 =
        split["series"].as_array().unwrap().iter().map(|x| x["published"].as_u64().unwrap()).sum();
    assert_eq!(published, 16);
    // Blocks were lifted everywhere.
    for n in 0..4 {
        let blocked = std::process::Command::new(&capmesh)
            .arg("--data-dir")
            .arg(dir.join(format!("node-{n:03}")))
            .arg("block")
            .output()
            .unwrap();
        assert!(blocked.status.success(), "{}", String::from_utf8_lossy(&blocked.stderr));
        assert!(
            blocked.stdout.is_empty(),
            "node {n} still blocks: {}",
            String::from_utf8_lossy(&blocked.stdout)
        );
    }

    // The manifest knows the restarted processes; down stops them all.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let pids: Vec<u64> =
        manifest["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    assert!(pids.iter().all(|&p| running(p)), "{pids:?}");
    testnet(&dir, &["down"]);
    let left: Vec<u64> = pids.into_iter().filter(|&p| running(p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    // Nor any other process of this testnet (a start the manifest never heard of).
    let needle = tmp.path().as_os_str().as_encoded_bytes().to_vec();
    let strays: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
        .filter(|&pid| running(pid))
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|c| (pid, c)))
        .filter(|(_, c)| c.windows(needle.len()).any(|w| w == needle.as_slice()))
        .map(|(pid, c)| format!("{pid}: {}", String::from_utf8_lossy(&c)))
        .collect();
    assert!(strays.is_empty(), "processes of this testnet left: {strays:?}");
    assert!(!dir.join("testnet.json").exists());
}
