//! The receipt ledger: receipts and countersignatures, each entry chained to the one before by
//! BLAKE3, appended and flushed before the append returns.

use capmesh_types::Digest;
use capmesh_wire::{Countersignature, Receipt, Signed};

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

impl Store {
    /// Appends a verified record to the ledger and flushes; returns the new entry.
    pub fn ledger_append(
        &self,
        kind: LedgerKind,
        signed: &[u8],
    ) -> Result<LedgerEntry, StoreError> {
        let _guard = self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let db = &self.inner.db;
        let (seq, prev) = match db.scan_prefix([keys::LEDGER]).next_back() {
            Some(entry) => {
                let (k, v) = entry?;
                let last = parse_entry(&k, &v)?;
                (last.seq + 1, last.hash)
            }
            None => (0, Digest::from_bytes([0; 32])),
        };
        let hash = chain(&prev, kind, signed);
        db.insert(
            keys::cat(&[&[keys::LEDGER], &seq.to_be_bytes()]),
            keys::cat(&[hash.as_bytes(), &[kind.byte()], signed]),
        )?;
        db.flush()?;
        Ok(LedgerEntry { seq, hash, kind, signed: signed.to_vec() })
    }

    /// Every ledger entry, in order.
    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, StoreError> {
        self.inner
            .db
            .scan_prefix([keys::LEDGER])
            .map(|entry| {
                let (k, v) = entry?;
                parse_entry(&k, &v)
            })
            .collect()
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
