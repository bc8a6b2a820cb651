//! SIGKILL in the middle of a heavy ingest: every acknowledged record survives, and records,
//! indexes, states, counters and change log still agree.
//!
//! The test re-runs its own binary as the child (`crash_child`, which does nothing unless
//! `CAPMESH_CRASH_DIR` is set). The child ingests from two threads and prints `ACK <id>` for
//! each record only after `insert_many` returned it as stored; the parent kills it mid-stream.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use capmesh_store::{Config, Outcome, Store};
use capmesh_types::Cid;

use crate::fixtures::*;

const DIR_VAR: &str = "CAPMESH_CRASH_DIR";

#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else { return };
    let store = Store::open(
        std::path::Path::new(&dir),
        Config::default().with_max_records_per_signer(1 << 20),
    )
    .unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    std::thread::scope(|s| {
        for worker in 0..2u8 {
            let (store, out) = (store.clone(), out.clone());
            s.spawn(move || {
                let provider = key(100 + worker);
                for batch in 0u32.. {
                    let items = (0..32)
                        .map(|i| {
                            let c = contract(
                                &format!("w{worker}.b{batch}.i{i}"),
                                &["crash", "load"],
                                "crash test tool",
                            );
                            advert(&provider, &c, AdvertSpec::default())
                        })
                        .collect();
                    let results = store.insert_many(items, NOW);
                    let mut out = out.lock().unwrap();
                    for r in results {
                        if let Ok(Outcome::Stored { id, .. }) = r {
                            writeln!(out, "ACK {id}").unwrap();
                        }
                    }
                    out.flush().unwrap();
                }
            });
        }
    });
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash::crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_VAR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACK ") {
                let _ = tx.send(id.parse::<Cid>().unwrap());
            }
        }
    });
    // Let it ingest for a while, then kill it in the middle of whatever it is doing.
    let mut acked = Vec::new();
    let started = Instant::now();
    while acked.len() < 2_000 && started.elapsed() < Duration::from_secs(60) {
        if let Ok(id) = rx.recv_timeout(Duration::from_millis(100)) {
            acked.push(id);
        }
    }
    child.kill().unwrap(); // SIGKILL on unix
    child.wait().unwrap();
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    assert!(acked.len() >= 500, "the child acknowledged only {} records", acked.len());

    let store = Store::open(dir.path(), Config::default()).unwrap();
    let report = store.check_integrity().unwrap();
    for id in &acked {
        assert!(store.record(id).unwrap().is_some(), "acknowledged record {id} lost");
    }
    assert!(report.adverts >= acked.len() as u64, "{report:?} < {} acknowledged", acked.len());
    assert_eq!(report.records, store.len().unwrap());
}
