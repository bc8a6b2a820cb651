//! Shared helpers: contracts, runs, and checks on processes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use capmesh_contract::Contract;
use capmesh_exec::Run;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A run with a limit far beyond any test (the runtimes' own limits are what tests exercise).
pub(crate) fn run() -> Run {
    Run::new(Duration::from_secs(1000), CancellationToken::new())
}

/// A well-formed contract with these schemas.
pub(crate) fn contract(name: &str, input: Value, output: Value, streaming: bool) -> Contract {
    let c = Contract {
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        description: format!("{name}, a capability of the capmesh-exec tests."),
        input,
        output,
        tags: vec!["test".to_owned()],
        read_only: true,
        idempotent: true,
        streaming,
    };
    capmesh_contract::check(&c).unwrap();
    c
}

/// Any object in, anything out.
pub(crate) fn open_contract(name: &str) -> Contract {
    contract(name, json!({"type": "object"}), json!({}), false)
}

/// Any object in, a stream out.
pub(crate) fn streaming_contract(name: &str) -> Contract {
    contract(name, json!({"type": "object"}), json!({}), true)
}

/// Receives every chunk until the sender side is gone.
pub(crate) async fn collect(mut rx: mpsc::Receiver<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    while let Some(chunk) = rx.recv().await {
        chunks.push(chunk);
    }
    chunks
}

/// Whether process `pid` is gone or a zombie (killed, not yet reaped by its new parent).
pub(crate) fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // pid (comm) STATE …; comm may hold spaces and parentheses, so split at the last ')'.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
    }
}

/// Waits (at most 30 s) for every pid to be dead, else panics with what it saw.
pub(crate) async fn wait_dead(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| !is_dead(p)).collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let states: Vec<String> = alive
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                .collect();
            panic!("processes still alive after 30 s: {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most 30 s) for `path` to hold a complete line, and returns its pids.
pub(crate) async fn read_pids(path: &Path) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.ends_with('\n') {
            return text.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
        assert!(Instant::now() < deadline, "{} not written after 30 s", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
