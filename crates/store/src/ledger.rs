//! The receipt ledger: receipts and countersignatures, each entry chained to the one before by
//! BLAKE3, appended and flushed (group commit) before the append returns, and indexed by receipt
//! id.
//!
//! The chain proves order and integrity but not length: a prefix of a valid ledger is a valid
//! ledger. The node's signed [`LedgerHead`] (length and last chain hash) closes an export, and
//! [`verify_head`] holds the entries to it.

use std::collections::HashMap;

use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{Countersignature, LedgerHead, Receipt, Signed, VerifyError};

use crate::{Store, StoreError, keys, limits};

/// What a ledger entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerKind {
    Receipt,
    Countersignature,
}

impl LedgerKind {
    fn byte(self) -> u8 {
        match self {
            LedgerKind::Receipt => b'R',
            LedgerKind::Countersignature => b'C',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'R' => Some(LedgerKind::Receipt),
            b'C' => Some(LedgerKind::Countersignature),
            _ => None,
        }
    }
}

/// One entry: its position, chain hash, kind and the record's signed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub seq: u64,
    /// BLAKE3(previous hash ‖ kind ‖ signed bytes); the first entry chains from 32 zero bytes.
    pub hash: Digest,
    pub kind: LedgerKind,
    pub signed: Vec<u8>,
}

/// The first entry of a ledger that does not hold up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger entry {seq} is bad: {reason}")]
pub struct LedgerError {
    pub seq: u64,
    pub reason: String,
}

/// The chain hash of an entry after `prev`.
pub fn chain(prev: &Digest, kind: LedgerKind, signed: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(prev.as_bytes());
    h.update(&[kind.byte()]);
    h.update(signed);
    Digest::from_bytes(*h.finalize().as_bytes())
}

/// Where the next entry goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    next: u64,
    prev: Digest,
}

impl Store {
    /// Appends a verified record to the ledger and returns once it is flushed. Concurrent
    /// appends share flushes (group commit): whoever flushes covers every entry appended before
    /// it, so 64 callers in flight cost a few flushes, not 64. Blocking.
    pub fn ledger_append(
        &self,
        kind: LedgerKind,
        signed: &[u8],
    ) -> Result<LedgerEntry, StoreError> {
        let entry = self.ledger_append_unflushed(kind, signed)?;
        self.ledger_flush_through(entry.seq)?;
        Ok(entry)
    }

    /// Appends without waiting for the flush: the entry is durable after the next
    /// [`Store::ledger_append`] or flush. For copies the other party also holds (the
    /// provider's own receipt, which travels to the caller in `TaskDone`). Blocking.
    pub fn ledger_append_unflushed(
        &self,
        kind: LedgerKind,
        signed: &[u8],
    ) -> Result<LedgerEntry, StoreError> {
        let mut tail = self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let Tail { next: seq, prev } = match *tail {
            Some(t) => t,
            None => self.ledger_tail()?,
        };
        let hash = chain(&prev, kind, signed);
        let mut batch = sled::Batch::default();
        batch.insert(
            keys::cat(&[&[keys::LEDGER], &seq.to_be_bytes()]),
            keys::cat(&[hash.as_bytes(), &[kind.byte()], signed]),
        );
        if let Some(receipt) = receipt_id_of(kind, signed) {
            batch.insert(index_key(kind, &receipt), seq.to_be_bytes().to_vec());
        }
        self.inner.db.apply_batch(batch)?;
        *tail = Some(Tail { next: seq + 1, prev: hash });
        Ok(LedgerEntry { seq, hash, kind, signed: signed.to_vec() })
    }

    /// Flushes every entry appended so far (for batches of unflushed appends). Blocking.
    pub fn ledger_flush(&self) -> Result<(), StoreError> {
        let next = self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.next);
        match next {
            Some(next) if next > 0 => self.ledger_flush_through(next - 1),
            _ => Ok(()),
        }
    }

    /// Returns once every ledger entry up to `seq` is flushed.
    fn ledger_flush_through(&self, seq: u64) -> Result<(), StoreError> {
        let mut flushed = self.inner.ledger_flushed.lock().unwrap_or_else(|e| e.into_inner());
        if *flushed > seq {
            return Ok(()); // a flush that started after our append covered it
        }
        let target =
            self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner()).map_or(seq + 1, |t| t.next);
        self.inner.db.flush()?;
        *flushed = target;
        Ok(())
    }

    fn ledger_tail(&self) -> Result<Tail, StoreError> {
        Ok(match self.inner.db.scan_prefix([keys::LEDGER]).next_back() {
            Some(entry) => {
                let (k, v) = entry?;
                let last = parse_entry(&k, &v)?;
                Tail { next: last.seq + 1, prev: last.hash }
            }
            None => Tail { next: 0, prev: Digest::from_bytes([0; 32]) },
        })
    }

    /// Every ledger entry, in order.
    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        self.ledger_range(0, usize::MAX)
    }

    /// At most `limit` entries from sequence `from` on, in order.
    pub fn ledger_range(&self, from: u64, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner
            .db
            .range(
                keys::cat(&[&[keys::LEDGER], &from.to_be_bytes()])
                    ..keys::cat(&[&[keys::LEDGER + 1]]),
            )
            .take(limit)
            .map(|entry| {
                let (k, v) = entry?;
                parse_entry(&k, &v)
            })
            .collect()
    }

    /// Number of ledger entries.
    pub fn ledger_len(&self) -> Result<u64, StoreError> {
        Ok(self.ledger_tail()?.next)
    }

    /// The ledger's length and last chain hash (32 zero bytes when empty), read together under
    /// the append lock: what a [`LedgerHead`] states. Blocking.
    ///
    /// The node signs a head on demand from this (`capmesh receipts export`, `receipts head`)
    /// rather than storing one signed per append: a head is a function of these two values,
    /// which every append already keeps current under this lock, so signing on demand costs one
    /// ed25519 signature when someone asks and is always current, while a stored head would
    /// cost a signature and a sled write on every call and prove nothing more (its key lives in
    /// the same data directory as the ledger).
    pub fn ledger_tip(&self) -> Result<(u64, Digest), StoreError> {
        let mut tail = self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let t = match *tail {
            Some(t) => t,
            None => {
                let t = self.ledger_tail()?;
                *tail = Some(t);
                t
            }
        };
        Ok((t.next, t.prev))
    }

    /// The ledger entry of a receipt (by receipt id) and of its countersignature, if present.
    pub fn ledger_find(
        &self,
        receipt: &Cid,
    ) -> Result<(Option<LedgerEntry>, Option<LedgerEntry>), StoreError> {
        let get = |kind| -> Result<Option<LedgerEntry>, StoreError> {
            let Some(seq) = self.inner.db.get(index_key(kind, receipt))? else { return Ok(None) };
            let seq =
                keys::u64_at(&seq, 0).ok_or_else(|| StoreError::Corrupt("ledger index".into()))?;
            Ok(self.ledger_range(seq, 1)?.pop())
        };
        Ok((get(LedgerKind::Receipt)?, get(LedgerKind::Countersignature)?))
    }
}

impl Store {
    /// The local note of the call an entry speaks about (a receipt's, or the countersigned
    /// receipt's), if one was kept. Blocking.
    pub fn ledger_entry_note(
        &self,
        entry: &LedgerEntry,
    ) -> Result<Option<crate::LedgerNote>, StoreError> {
        match receipt_id_of(entry.kind, &entry.signed) {
            Some(receipt) => self.ledger_note(&receipt),
            None => Ok(None),
        }
    }
}

/// `l ‖ kind ‖ receipt id`.
fn index_key(kind: LedgerKind, receipt: &Cid) -> Vec<u8> {
    keys::cat(&[&[keys::LEDGER_INDEX, kind.byte()], &receipt.to_bytes()])
}

/// The receipt an entry speaks about: its own id for a receipt, the countersigned one for a
/// countersignature. Entries are verified before they are appended; bytes that do not decode
/// are kept but not indexed.
fn receipt_id_of(kind: LedgerKind, signed: &[u8]) -> Option<Cid> {
    match kind {
        LedgerKind::Receipt => Signed::<Receipt>::from_bytes(signed, limits()).ok().map(|s| s.id()),
        LedgerKind::Countersignature => Signed::<Countersignature>::from_bytes(signed, limits())
            .ok()
            .and_then(|s| s.decode(limits()).ok())
            .map(|c| c.receipt),
    }
}

/// `L ‖ seq` → `hash ‖ kind ‖ signed bytes`.
fn parse_entry(key: &[u8], value: &[u8]) -> Result<LedgerEntry, StoreError> {
    let bad = || StoreError::Corrupt("ledger entry".into());
    let seq = keys::u64_at(key, 1).ok_or_else(bad)?;
    let hash: [u8; 32] = value.get(..32).and_then(|h| h.try_into().ok()).ok_or_else(bad)?;
    let kind = value.get(32).and_then(|b| LedgerKind::from_byte(*b)).ok_or_else(bad)?;
    Ok(LedgerEntry { seq, hash: Digest::from_bytes(hash), kind, signed: value[33..].to_vec() })
}

/// Why a ledger's entries do not match its signed head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    #[error("the ledger head does not verify: {0} ({code})", code = .0.code())]
    Signature(#[source] VerifyError),
    #[error(
        "ledger entry {seq} is not one of {node}'s calls (neither provider nor caller): the head \
         is signed by another node than the one whose ledger this is"
    )]
    Foreign { seq: u64, node: PeerId },
    #[error(
        "the head signed by {node} counts {head} entries, the ledger has {actual}: entries were \
         {change} after the head was signed{hint}",
        change = if .head > .actual { "removed" } else { "added" },
        hint = if .head > .actual { " (a truncated ledger)" } else { "" }
    )]
    Length { node: PeerId, head: u64, actual: u64 },
    #[error(
        "the head signed by {node} names another chain hash than {what}: the entries are not \
         the ones it was signed over",
        what = match .last {
            Some(seq) => format!("ledger entry {seq}'s"),
            None => "an empty ledger's (32 zero bytes)".to_owned(),
        }
    )]
    Hash {
        node: PeerId,
        /// The last entry's sequence number; `None` for an empty ledger.
        last: Option<u64>,
    },
}

/// Checks `head` (signed bytes of a [`LedgerHead`]) against `entries`, which [`verify_ledger`]
/// has passed: the head's signature by its `node`, every entry one of that node's calls (a
/// receipt it issued or received, a countersignature it made or of a receipt it issued), and
/// the head's `len` and `hash` those of the entries. Time windows are not judged. Returns the
/// head.
pub fn verify_head(entries: &[LedgerEntry], head: &[u8]) -> Result<LedgerHead, HeadError> {
    let signed = Signed::<LedgerHead>::from_bytes(head, limits()).map_err(HeadError::Signature)?;
    let record = signed.decode(limits()).map_err(HeadError::Signature)?;
    signed.check_signature(&record).map_err(HeadError::Signature)?;
    let node = record.node;
    // The providers of the receipts seen so far, for the countersignatures that follow them.
    let mut providers: HashMap<Cid, PeerId> = HashMap::new();
    for e in entries {
        let ours = match e.kind {
            LedgerKind::Receipt => Signed::<Receipt>::from_bytes(&e.signed, limits())
                .and_then(|s| Ok((s.id(), s.decode(limits())?)))
                .is_ok_and(|(id, r)| {
                    providers.insert(id, r.provider);
                    r.provider == node || r.caller == node
                }),
            LedgerKind::Countersignature => {
                Signed::<Countersignature>::from_bytes(&e.signed, limits())
                    .and_then(|s| s.decode(limits()))
                    .is_ok_and(|c| c.caller == node || providers.get(&c.receipt) == Some(&node))
            }
        };
        if !ours {
            return Err(HeadError::Foreign { seq: e.seq, node });
        }
    }
    let actual = entries.len() as u64;
    if record.len != actual {
        return Err(HeadError::Length { node, head: record.len, actual });
    }
    let last = entries.last().map_or(Digest::from_bytes(LedgerHead::EMPTY_HASH), |e| e.hash);
    if record.hash != last {
        return Err(HeadError::Hash { node, last: actual.checked_sub(1) });
    }
    Ok(record)
}

/// Checks a ledger offline: consecutive sequence numbers, every chain hash, and every
/// signature (time windows are not judged: a receipt stays valid evidence after the fact).
/// Names the first bad entry.
pub fn verify_ledger(entries: &[LedgerEntry]) -> Result<(), LedgerError> {
    let mut prev = Digest::from_bytes([0; 32]);
    for (i, e) in entries.iter().enumerate() {
        let bad = |reason: String| LedgerError { seq: e.seq, reason };
        if e.seq != i as u64 {
            return Err(bad(format!("expected sequence {i}")));
        }
        if chain(&prev, e.kind, &e.signed) != e.hash {
            return Err(bad("chain hash does not match".into()));
        }
        let checked = match e.kind {
            LedgerKind::Receipt => Signed::<Receipt>::from_bytes(&e.signed, limits())
                .and_then(|s| s.decode(limits()).and_then(|r| s.check_signature(&r))),
            LedgerKind::Countersignature => {
                Signed::<Countersignature>::from_bytes(&e.signed, limits())
                    .and_then(|s| s.decode(limits()).and_then(|r| s.check_signature(&r)))
            }
        };
        checked.map_err(|err| bad(format!("{} ({})", err, err.code())))?;
        prev = e.hash;
    }
    Ok(())
}
