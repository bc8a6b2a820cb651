//! `capmesh registry query`: the local replica (`<data dir>/replica`), read from the command
//! line while no node holds it.
//!
//! ```
//! use capmesh::{Config, DataDir, registry};
//! use capmesh_store::Query;
//!
//! let tmp = tempfile::tempdir()?;
//! let dir = DataDir::new(tmp.path());
//! let page = registry::query(&dir, &Config::default(), &Query::default(), capmesh::now_ms())?;
//! assert!(page.hits.is_empty() && page.next.is_none());
//! assert_eq!(registry::query_page(&page).next, None);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::PathBuf;

use capmesh_api::{QueryHit, QueryPage};
use capmesh_store::{Page, Query, Store, StoreError};
use capmesh_wire::Price;

use crate::{Config, DataDir};

/// Why the replica could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// Another process has the replica open: sled lets one process at a time open it.
    #[error(
        "the replica at {} is in use by a running capmesh node (sled lets one process at a time \
         open it); commands reach a running node through its API, so this one is starting or \
         stopping: try again in a moment",
        .path.display()
    )]
    InUse { path: PathBuf },
    #[error("cannot open the replica at {}: {error}", .path.display())]
    Open { path: PathBuf, error: StoreError },
    #[error("the replica query failed: {0}")]
    Query(StoreError),
}

/// Opens the replica of `dir` (creating an empty one if there is none), with the record rules
/// of `config`. Fails at once, with [`ReplicaError::InUse`], when another process holds it.
pub fn open(dir: &DataDir, config: &Config) -> Result<Store, ReplicaError> {
    let path = dir.replica_dir();
    let store_config = capmesh_store::Config {
        rules: config.envelope.rules(),
        ..capmesh_store::Config::default()
    };
    Store::open(&path, store_config).map_err(|error| match error {
        StoreError::Locked(_) => ReplicaError::InUse { path: path.clone() },
        error => ReplicaError::Open { path: path.clone(), error },
    })
}

/// The contract of `capability` from the replica on disk (no node runs), as JSON.
pub fn replica_contract(
    dir: &DataDir,
    config: &Config,
    capability: capmesh_types::Cid,
) -> anyhow::Result<serde_json::Value> {
    let store = open(dir, config)?;
    let found = store.contract(&capability).map_err(ReplicaError::Query);
    store.close();
    match found? {
        Some(contract) => Ok(serde_json::to_value(&contract)?),
        None => anyhow::bail!(
            "no contract for capability {capability} in the replica at {}; start the node \
             (`capmesh run`) to ask the mesh for it",
            dir.replica_dir().display()
        ),
    }
}

/// Runs `q` on the replica of `dir` at `now_ms` (expired adverts are never hits), then closes
/// the replica.
pub fn query(dir: &DataDir, config: &Config, q: &Query, now_ms: u64) -> Result<Page, ReplicaError> {
    let store = open(dir, config)?;
    let page = store.query(q, now_ms).map_err(ReplicaError::Query);
    store.close();
    page
}

/// The page as the API returns it and `capmesh registry query --json` prints it (one JSON shape
/// whether the replica is read offline or through a running node).
pub fn query_page(page: &Page) -> QueryPage {
    QueryPage {
        hits: page
            .hits
            .iter()
            .map(|h| QueryHit {
                id: h.id,
                capability: h.summary.capability,
                name: h.summary.name.clone(),
                provider: h.summary.provider,
                price: Price { amount: h.summary.amount, unit: h.summary.unit.clone() },
                issued: h.summary.issued,
                expires: h.summary.expires,
            })
            .collect(),
        next: page.next.as_deref().map(cursor_hex),
    }
}

/// The ledger's head `(len, hash)` signed now by `key`, as `GET /v1/receipts/head` answers it
/// and as the last line of an export (protocol.md §6.9, §6.10).
pub fn signed_head(
    key: &capmesh_types::NodeKey,
    len: u64,
    hash: capmesh_types::Digest,
) -> anyhow::Result<capmesh_api::LedgerHeadLine> {
    let head = capmesh_wire::LedgerHead { node: key.peer_id(), len, hash, issued: crate::now_ms() };
    let signed = capmesh_wire::Signed::sign(key, &head)?;
    Ok(capmesh_api::LedgerHeadLine {
        kind: capmesh_api::HeadKind::Head,
        signed: capmesh_wire::repr::Bytes(signed.to_bytes()),
        record: serde_json::to_value(&signed)?,
    })
}

/// A cursor as the CLI prints it: lowercase hex.
pub fn cursor_hex(cursor: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(cursor)
}

/// Parses `--cursor HEX`, as printed by a previous query.
pub fn parse_cursor(text: &str) -> Result<Vec<u8>, String> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| "not a cursor: pass the hex a previous query printed as its next page".into())
}

/// Parses `--max-price AMOUNT:UNIT`, e.g. `100:usd-micro`.
pub fn parse_price(text: &str) -> Result<Price, String> {
    let usage = || format!("{text:?} is not AMOUNT:UNIT, e.g. 100:usd-micro");
    let (amount, unit) = text.split_once(':').ok_or_else(usage)?;
    let amount = amount.parse::<u64>().map_err(|_| usage())?;
    if unit.is_empty() {
        return Err(usage());
    }
    Ok(Price { amount, unit: unit.to_owned() })
}

/// A ledger entry in the API's shape, with its local note (blocking: reads the replica). The
/// API serves it so, and `capmesh receipts` prints it so offline.
pub fn ledger_entry_json(
    store: &capmesh_store::Store,
    e: &capmesh_store::LedgerEntry,
) -> capmesh_api::LedgerEntryJson {
    let kind = match e.kind {
        capmesh_store::LedgerKind::Receipt => capmesh_api::LedgerKind::Receipt,
        capmesh_store::LedgerKind::Countersignature => capmesh_api::LedgerKind::Countersignature,
    };
    let mut json = capmesh_api::LedgerEntryJson::new(e.seq, e.hash, kind, e.signed.clone());
    match store.ledger_entry_note(e) {
        Ok(note) => json.note = note.map(note_json),
        Err(err) => tracing::warn!(seq = e.seq, error = %err, "unreadable ledger note"),
    }
    json
}

fn note_json(n: capmesh_store::LedgerNote) -> capmesh_api::LedgerNoteJson {
    capmesh_api::LedgerNoteJson {
        trace: n.trace.map(capmesh_api::TraceId),
        session_id: n.session.as_ref().map(|s| s.id.clone()),
        session_name: n.session.map(|s| s.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_replica_is_refused_at_once_as_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let held = open(&dir, &Config::default()).unwrap();
        // flock conflicts between two opens of the file, even in one process.
        let e = query(&dir, &Config::default(), &Query::default(), 0).unwrap_err();
        assert!(matches!(e, ReplicaError::InUse { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("in use by a running capmesh node"), "{msg}");
        assert!(msg.contains("try again in a moment"), "{msg}");
        // Not reopened here: sled closes its file on one of its IO threads, a moment after the
        // last handle is dropped, so an immediate reopen in this process could still find it
        // locked. The system tests fill replicas in a child process for this reason.
        held.close();
    }

    #[test]
    fn other_open_failures_are_not_called_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::write(dir.replica_dir(), "not a directory").unwrap();
        let e = query(&dir, &Config::default(), &Query::default(), 0).unwrap_err();
        assert!(matches!(e, ReplicaError::Open { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot open the replica at "), "{e}");
    }

    #[test]
    fn prices_and_cursors_parse() {
        assert_eq!(
            parse_price("100:usd-micro").unwrap(),
            Price { amount: 100, unit: "usd-micro".into() }
        );
        assert_eq!(parse_price("5:a:b").unwrap().unit, "a:b");
        for bad in ["100", ":usd", "x:usd", "100:", "-1:usd"] {
            assert!(parse_price(bad).unwrap_err().contains("AMOUNT:UNIT"), "{bad}");
        }
        assert_eq!(parse_cursor(&cursor_hex(&[0, 0xab, 0xff])).unwrap(), [0, 0xab, 0xff]);
        assert_eq!(parse_cursor("ABff").unwrap(), [0xab, 0xff]);
        assert!(parse_cursor("abc").is_err());
        assert!(parse_cursor("zz").is_err());
    }
}
