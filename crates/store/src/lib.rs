//! The registry replica of a capmesh node, on sled. The only crate that names sled.
//!
//! [`Store`] keeps contracts, adverts, retirements and attestations (each verified before it is
//! stored), indexes them by capability, provider, tag, name and words, answers [`Query`]s with
//! stable cursors, sweeps expired records, feeds a change log to subscribers, and holds the
//! peer book and the hash-chained receipt ledger.
//!
//! Writes go through one writer thread: each record and its index entries are one atomic sled
//! batch, and a group of requests is acknowledged after one flush (group commit), so what a
//! call reports as stored survives a crash.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capmesh_store::{Config, Query, Store};
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), Config::default())?;
//! let page = store.query(&Query::default(), 1_760_000_000_000)?;
//! assert!(page.hits.is_empty());
//! # Ok(()) }
//! ```

mod error;
mod feed;
mod integrity;
mod keys;
mod ledger;
mod notes;
mod peers;
mod pending;
mod postings;
mod query;
mod registry;
mod writer;

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{SyncSender, sync_channel},
    },
    thread::JoinHandle,
};

use capmesh_types::Cid;
use capmesh_wire::{Contract, Rules, cbor};

pub use error::StoreError;
pub use feed::Subscription;
pub use integrity::IntegrityReport;
pub use ledger::{
    HeadError, LedgerEntry, LedgerError, LedgerKind, chain as ledger_chain, verify_head,
    verify_ledger,
};
pub use notes::{LedgerNote, MAX_NOTE_TEXT, SessionTag};
pub use peers::{MAX_PEER_ADDRS, PeerEntry};
pub use query::{Hit, MAX_LIMIT, Order, Page, Query};
pub use registry::{Change, ChangeOp, Item, Outcome, RecordType, Summary};

use crate::writer::{Head, Op, Reply, Request, Writer};

/// Settings of the replica, with documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Live records kept per signer (provider or issuer). Default 10 000.
    pub max_records_per_signer: u64,
    /// Live records kept in all. Default 5 000 000.
    pub max_records: u64,
    /// Requests acknowledged by one flush at most. Default 1024.
    pub group_commit_max: usize,
    /// Requests waiting for the writer at most (callers block beyond). Default 1024.
    pub queue: usize,
    /// How records are verified (decoder limits, clock skew).
    pub rules: Rules,
    /// sled page cache in bytes. Default 256 MiB.
    pub cache_bytes: u64,
    /// Postings per posting-list chunk (one sled value). Default 512; tests use tiny chunks to
    /// exercise chunk boundaries.
    pub posting_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_records_per_signer: 10_000,
            max_records: 5_000_000,
            group_commit_max: 1024,
            queue: 1024,
            rules: Rules::default(),
            cache_bytes: 256 * 1024 * 1024,
            posting_chunk: 512,
        }
    }
}

impl Config {
    pub fn with_max_records_per_signer(mut self, n: u64) -> Self {
        self.max_records_per_signer = n;
        self
    }

    pub fn with_max_records(mut self, n: u64) -> Self {
        self.max_records = n;
        self
    }
}

/// Counters of what the replica did, including what it dropped; read as [`StatsSnapshot`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) stored: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) refused_verify: AtomicU64,
    pub(crate) refused_stale: AtomicU64,
    pub(crate) refused_other: AtomicU64,
    pub(crate) dropped_signer_cap: AtomicU64,
    pub(crate) dropped_total_cap: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) flushes: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub stored: u64,
    pub duplicates: u64,
    pub refused_verify: u64,
    pub refused_stale: u64,
    pub refused_other: u64,
    pub dropped_signer_cap: u64,
    pub dropped_total_cap: u64,
    pub expired: u64,
    pub flushes: u64,
}

/// The replica. Cheap to clone; the writer thread stops when the last clone is dropped or
/// [`Store::close`] is called.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    config: Config,
    stats: Arc<Stats>,
    head: Arc<Head>,
    tx: Mutex<Option<SyncSender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The ledger's tail (loaded on first use): appends are serialized by it.
    ledger: Mutex<Option<ledger::Tail>>,
    /// Ledger entries below this sequence are flushed (group commit, see `ledger`).
    ledger_flushed: Mutex<u64>,
    /// Contract ids that passed `capmesh_contract::check` (bounded; see `ContractGate`).
    checked_contracts: Mutex<std::collections::HashSet<Cid>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
        let _ = self.db.flush();
    }
}

impl Store {
    /// Opens (creating if needed) the replica in `dir`. sled locks the directory: one process
    /// at a time.
    pub fn open(dir: &Path, config: Config) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                // sled reports a held lock only as an I/O error with this text.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(dir.to_owned())
                }
                e => StoreError::Storage(e),
            })?;
        let stats = Arc::new(Stats::default());
        let head = Arc::new(Head::default());
        let writer = Writer::new(db.clone(), config.clone(), stats.clone(), head.clone())?;
        let (tx, rx) = sync_channel(config.queue);
        let handle = std::thread::Builder::new()
            .name("capmesh-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Storage(sled::Error::Io(e)))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                config,
                stats,
                head,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                ledger: Mutex::new(None),
                ledger_flushed: Mutex::new(0),
                checked_contracts: Mutex::new(Default::default()),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Stops the writer after the requests already queued, and flushes.
    pub fn close(&self) {
        self.inner.shutdown();
    }

    /// Queues `op` for the writer; the receiver yields its reply after the group's flush.
    fn send(&self, op: Op) -> Result<std::sync::mpsc::Receiver<Reply>, StoreError> {
        let tx = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let tx = tx.ok_or(StoreError::Closed)?;
        let (reply_tx, reply_rx) = sync_channel(1);
        tx.send(Request { op, reply: reply_tx }).map_err(|_| StoreError::Closed)?;
        Ok(reply_rx)
    }

    fn request(&self, op: Op) -> Result<Reply, StoreError> {
        self.send(op)?.recv().map_err(|_| StoreError::Closed)
    }

    /// Verifies and stores one record; returns once it is flushed. Blocking.
    pub fn insert(&self, item: Item, now_ms: u64) -> Result<Outcome, StoreError> {
        self.insert_many(vec![item], now_ms).pop().unwrap_or(Err(StoreError::Closed))
    }

    /// Verifies every item (in parallel on the available cores), stores those that pass, and
    /// returns once they are flushed: one result per item, in order. A refused item leaves the
    /// store untouched. Blocking.
    pub fn insert_many(&self, items: Vec<Item>, now_ms: u64) -> Vec<Result<Outcome, StoreError>> {
        // Verify in slices and hand each to the writer without waiting, so the writer stores
        // slice k while the verifiers check slice k + 1.
        const SLICE: usize = 256;
        let mut results: Vec<Option<Result<Outcome, StoreError>>> = Vec::with_capacity(items.len());
        let mut in_flight = Vec::new();
        for (n, slice) in items.chunks(SLICE).enumerate() {
            let mut passed = Vec::new();
            let mut slots = Vec::new();
            for (i, c) in self.check_all(slice, now_ms).into_iter().enumerate() {
                match c {
                    Ok(c) => {
                        passed.push(c);
                        slots.push(n * SLICE + i);
                        results.push(None);
                    }
                    Err(e) => {
                        self.inner.stats.refused_verify.fetch_add(1, Ordering::Relaxed);
                        results.push(Some(Err(e)));
                    }
                }
            }
            if !passed.is_empty() {
                in_flight.push((slots, self.send(Op::Apply(passed))));
            }
        }
        for (slots, sent) in in_flight {
            let mut applied = match sent.and_then(|rx| rx.recv().map_err(|_| StoreError::Closed)) {
                Ok(Reply::Applied(applied)) => applied.into_iter(),
                Ok(Reply::Swept(_)) | Err(_) => Vec::new().into_iter(),
            };
            for slot in slots {
                results[slot] = Some(applied.next().unwrap_or(Err(StoreError::Closed)));
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(StoreError::Closed))).collect()
    }

    /// Verification is the dominant cost of ingest (an ed25519 check per record), so it runs on
    /// every core, in order-preserving chunks.
    fn check_all(&self, items: &[Item], now_ms: u64) -> Vec<Result<registry::Checked, StoreError>> {
        let rules = &self.inner.config.rules;
        let db = &self.inner.db;
        let gate = registry::ContractGate { db, passed: &self.inner.checked_contracts };
        let known = &gate;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if items.len() < 8 || threads < 2 {
            return items.iter().map(|i| i.check(now_ms, rules, known)).collect();
        }
        let chunk = items.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| {
                    let handle = s.spawn(move || {
                        part.iter().map(|i| i.check(now_ms, rules, known)).collect::<Vec<_>>()
                    });
                    (part.len(), handle)
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(len, h)| {
                    h.join().unwrap_or_else(|_| {
                        (0..len)
                            .map(|_| Err(StoreError::Corrupt("verifier panicked".into())))
                            .collect()
                    })
                })
                .collect()
        })
    }

    /// Removes adverts and attestations that expired before `now_ms`; returns how many.
    pub fn sweep(&self, now_ms: u64) -> Result<u64, StoreError> {
        match self.request(Op::Sweep(now_ms))? {
            Reply::Swept(r) => r,
            Reply::Applied(_) => Err(StoreError::Corrupt("writer answered out of order".into())),
        }
    }

    /// The contract of a capability, if stored.
    pub fn contract(&self, cap: &Cid) -> Result<Option<Contract>, StoreError> {
        if !self.inner.db.contains_key(keys::contract(cap))? {
            return Ok(None);
        }
        writer::load_contract(&self.inner.db, cap).map(Some)
    }

    /// A stored record's type and signed bytes (canonical `{payload, sig}`), by id.
    pub fn record(&self, id: &Cid) -> Result<Option<(RecordType, Vec<u8>)>, StoreError> {
        let Some(v) = self.inner.db.get(keys::record(id))? else { return Ok(None) };
        let ty = v
            .first()
            .and_then(|b| RecordType::from_byte(*b))
            .ok_or_else(|| StoreError::Corrupt(format!("record {id} has no type")))?;
        // type (1) ‖ signer (32) ‖ order (8) ‖ signed bytes
        let signed =
            v.get(RECORD_HEADER..).ok_or_else(|| StoreError::Corrupt(format!("record {id}")))?;
        Ok(Some((ty, signed.to_vec())))
    }

    /// What the replica did so far.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            stored: g(&s.stored),
            duplicates: g(&s.duplicates),
            refused_verify: g(&s.refused_verify),
            refused_stale: g(&s.refused_stale),
            refused_other: g(&s.refused_other),
            dropped_signer_cap: g(&s.dropped_signer_cap),
            dropped_total_cap: g(&s.dropped_total_cap),
            expired: g(&s.expired),
            flushes: g(&s.flushes),
        }
    }

    /// Live records (adverts, current retirements, attestations).
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.get(keys::meta("total"))?.and_then(|v| keys::u64_at(&v, 0)).unwrap_or(0))
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

/// Bytes before a stored record's signed bytes: type, signer key, order.
pub(crate) const RECORD_HEADER: usize = 1 + 32 + 8;

/// The order (change-log sequence) in a stored record's header.
pub(crate) fn record_order(value: &[u8]) -> Option<u64> {
    keys::u64_at(value, 1 + 32)
}

/// Decoder limits used for the replica's own stored bytes.
pub(crate) fn limits() -> cbor::Limits {
    cbor::Limits::default()
}
