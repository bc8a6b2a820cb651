//! Nodes launched and dropped in one process leave nothing behind: no task, thread, file
//! descriptor, sled lock or API file. A dropped `Node` (no `shutdown`) and a launch that fails
//! half-way both cancel what they started.

#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use capmesh::{Config, DataDir, Node};

/// What the process holds now: (alive tokio tasks, OS threads, open file descriptors).
fn held() -> (usize, usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    (tasks, count("/proc/self/task"), count("/proc/self/fd"))
}

fn config() -> Config {
    let mut config = Config::default();
    config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    config.api.listen = "127.0.0.1:0".into();
    config.metrics.listen = "127.0.0.1:0".into();
    config
}

/// Waits (bounded; a hang guard, not a measurement) until `ok` holds, polling.
async fn settle(what: &str, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn no_api_files(dir: &Path) -> Result<(), String> {
    for name in ["api.addr", "api.token", "metrics.addr"] {
        if dir.join(name).exists() {
            return Err(format!("{name} left in {}", dir.display()));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_launched_and_dropped_leave_nothing_behind() {
    if !Path::new("/proc/self/fd").exists() {
        eprintln!("SKIPPED: no /proc to count threads and file descriptors");
        return;
    }
    let dirs: Vec<tempfile::TempDir> = (0..50).map(|_| tempfile::tempdir().unwrap()).collect();
    // One launch first, so lazily made process-wide things (the blocking pool's first threads,
    // resolver state) are in the baseline.
    let warm = tempfile::tempdir().unwrap();
    drop(Node::launch(DataDir::new(warm.path()), config(), Default::default()).await.unwrap());
    settle("the warm-up node gone", || no_api_files(warm.path())).await;
    tokio::time::sleep(Duration::from_secs(11)).await; // idle blocking threads end after 10 s
    let before = held();

    for (i, dir) in dirs.iter().enumerate() {
        let node = Node::launch(DataDir::new(dir.path()), config(), Default::default()).await;
        let node = node.unwrap_or_else(|e| panic!("node {i}: {e:#}"));
        assert!(dir.path().join("api.addr").exists());
        drop(node);
    }

    settle("every task, thread and descriptor released", || {
        let now = held();
        let ok = now.0 <= before.0 && now.1 <= before.1 && now.2 <= before.2;
        if ok {
            Ok(())
        } else {
            Err(format!("(tasks, threads, fds) {before:?} before, {now:?} now"))
        }
    })
    .await;
    for dir in &dirs {
        no_api_files(dir.path()).unwrap();
    }
    // The replica's lock is free: a new node starts on the same data directory.
    let again = Node::launch(DataDir::new(dirs[0].path()), config(), Default::default()).await;
    again.unwrap().shutdown().await.unwrap();
}

/// A launch that fails after the API is up (here: a contract to publish that does not exist)
/// cancels everything it started and removes the API files it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_failing_half_way_cancels_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = config();
    bad.publish.contracts.push(dir.path().join("no-such-contract.json"));
    let err = Node::launch(DataDir::new(dir.path()), bad, Default::default()).await.unwrap_err();
    assert!(format!("{err:#}").contains("no-such-contract.json"), "{err:#}");
    no_api_files(dir.path()).unwrap();
    // Nothing still holds the replica: the same data directory starts a node.
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.is_none() {
        match Node::launch(DataDir::new(dir.path()), config(), Default::default()).await {
            Ok(node) => started = Some(node),
            // sled releases its file lock from its own thread, a moment after the last handle
            // is dropped.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the replica stayed locked: {e:#}"),
        }
    }
    started.unwrap().shutdown().await.unwrap();
}
