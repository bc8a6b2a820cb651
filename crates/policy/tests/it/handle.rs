//! The live policy: reload, generation, and the file watcher.

use std::{
    future::Future,
    path::Path,
    time::{Duration, Instant},
};

use capmesh_policy::{Policy, PolicyError, PolicyHandle};
use tokio_util::sync::CancellationToken;

use crate::{cap, none, peer};

const DENY_ALL: &str = "[provider]\ndefault = \"deny\"\n";
const BURST_7: &str = "[provider]\nburst = 7\n";

fn allows(handle: &PolicyHandle) -> bool {
    handle.current().check_caller(&peer(1), &cap("echo"), &none).is_ok()
}

fn burst(handle: &PolicyHandle) -> u32 {
    handle.current().limits(&cap("echo")).burst
}

/// Replaces the file's content in one step (write a sibling, then rename), as editors do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `cond` every 5 ms until it holds; panics after 10 s with `what` and what it saw.
async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = match cond().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last saw {seen}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn new_holds_a_fixed_policy() {
    let handle = PolicyHandle::new(Policy::from_toml(DENY_ALL).unwrap());
    assert!(!allows(&handle));
    assert!(handle.path().is_none());
    handle.reload().unwrap();
    assert_eq!(handle.generation(), 0);
    assert!(!allows(&handle));
}

#[test]
fn reload_swaps_the_policy_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, DENY_ALL).unwrap();
    let handle = PolicyHandle::open(&path).unwrap();
    let clone = handle.clone();
    assert_eq!(handle.generation(), 0);
    assert!(!allows(&handle));
    let before = handle.current();

    std::fs::write(&path, BURST_7).unwrap();
    handle.reload().unwrap();
    assert_eq!(handle.generation(), 1);
    assert!(allows(&clone), "clones share the live policy");
    assert_eq!(burst(&clone), 7);
    // A snapshot taken before stays what it was.
    assert!(before.check_caller(&peer(1), &cap("echo"), &none).is_err());

    std::fs::write(&path, "[provider]\nburst = 0\n").unwrap();
    assert!(matches!(handle.reload(), Err(PolicyError::Invalid { .. })));
    std::fs::write(&path, "[provider\n").unwrap();
    assert!(matches!(handle.reload(), Err(PolicyError::Parse { path: Some(_), .. })));
    assert_eq!(handle.generation(), 1);
    assert_eq!(burst(&handle), 7);

    // A deleted file is an error on reload, not a fall-back to allowing everything.
    std::fs::write(&path, DENY_ALL).unwrap();
    handle.reload().unwrap();
    std::fs::remove_file(&path).unwrap();
    match handle.reload() {
        Err(PolicyError::Io { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(handle.generation(), 2);
    assert!(!allows(&handle));
}

#[test]
fn open_a_missing_file_is_the_default_and_a_broken_one_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let handle = PolicyHandle::open(&path).unwrap();
    assert!(allows(&handle));
    assert_eq!(handle.path(), Some(path.as_path()));
    std::fs::write(&path, "[provider]\nwho = 1\n").unwrap();
    assert!(matches!(PolicyHandle::open(&path), Err(PolicyError::Parse { .. })));
}

#[tokio::test]
async fn watch_picks_up_changes_and_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, DENY_ALL).unwrap();
    let handle = PolicyHandle::open(&path).unwrap();
    let cancel = CancellationToken::new();
    let task = handle.watch(Duration::from_millis(20), cancel.clone());

    // A rewritten file is picked up.
    replace(&path, BURST_7);
    wait_for("the rewritten file", || async {
        if allows(&handle) && burst(&handle) == 7 {
            Ok(())
        } else {
            Err(format!("generation {} burst {}", handle.generation(), burst(&handle)))
        }
    })
    .await;
    let good = handle.generation();
    assert!(good >= 1);

    // A broken file is not applied; the next good one is.
    replace(&path, "[provider]\nburst = \"many\"\n");
    replace(&path, "[provider]\nburst = 0\n\n");
    replace(&path, "[provider]\nburst = 9\nconcurrency = 3\n");
    wait_for("the good file after broken ones", || async {
        if burst(&handle) == 9 { Ok(()) } else { Err(format!("burst {}", burst(&handle))) }
    })
    .await;
    assert!(handle.generation() > good);

    // A deleted file keeps the last good policy; a new file is picked up.
    std::fs::remove_file(&path).unwrap();
    let after_delete = handle.generation();
    replace(&path, DENY_ALL);
    wait_for("the re-created file", || async {
        if allows(&handle) { Err(format!("generation {}", handle.generation())) } else { Ok(()) }
    })
    .await;
    assert!(handle.generation() > after_delete);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn watch_picks_up_a_file_created_after_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.toml");
    let handle = PolicyHandle::open(&path).unwrap();
    assert!(allows(&handle));
    let cancel = CancellationToken::new();
    let task = handle.watch(Duration::from_millis(20), cancel.clone());
    std::fs::write(&path, DENY_ALL).unwrap();
    wait_for("the created file", || async {
        if allows(&handle) { Err(format!("generation {}", handle.generation())) } else { Ok(()) }
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn watch_deleted_file_keeps_the_last_good_policy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, DENY_ALL).unwrap();
    let handle = PolicyHandle::open(&path).unwrap();
    let cancel = CancellationToken::new();
    let task = handle.watch(Duration::from_millis(1), cancel.clone());
    std::fs::remove_file(&path).unwrap();
    // No event says "the watcher has seen the deletion", so let it poll many times over; the
    // policy must not change whatever the timing.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(!allows(&handle));
    }
    assert_eq!(handle.generation(), 0);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn watch_without_a_file_ends_at_once() {
    let handle = PolicyHandle::new(Policy::default());
    let task = handle.watch(Duration::from_millis(20), CancellationToken::new());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}
