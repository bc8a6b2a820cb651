//! Key layout of the single sled tree. One tree, so that a record and all its index entries
//! are written by one atomic `apply_batch`.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `C` | capability id (36) | canonical contract |
//! | `R` | record id (36) | record type (1) ‖ signer key (32) ‖ order (8) ‖ signed bytes |
//! | `S` | provider key (32) ‖ capability id (36) | state: the winning seq, kind, record id |
//! | `V` | order (8) | advert id (36) ‖ [`Summary`](crate::Summary) of a live advert |
//! | `p` | kind (1) ‖ term ‖ first order (8) | a chunk of a posting list (see `postings`) |
//! | `ix` | expires (8) ‖ record id | empty |
//! | `as` | subject ‖ attestation id | issuer key (32) ‖ expires (8) ‖ claim |
//! | `G` | log sequence (8) | change: op, record type, record id |
//! | `M:` | counter name | u64 |
//! | `Mp` | signer key (32) | u64: live records signed by it |
//! | `P` | peer key (32) | peer book entry |
//! | `L` | ledger sequence (8) | chain hash (32) ‖ entry type (1) ‖ signed bytes |
//! | `l` | entry type (1) ‖ receipt id (36) | ledger sequence (8) of the receipt, or of its countersignature |
//! | `n` | receipt id (36) | the receipt's local [`LedgerNote`](crate::LedgerNote): trace id, session |
//!
//! Integers are big-endian, so byte order is numeric order. An advert's *order* is the change-log
//! sequence at which it was stored: unique, and increasing with insertion, which is what keeps
//! cursors stable while records arrive.

use capmesh_types::{Cid, PeerId};

pub(crate) const CONTRACT: u8 = b'C';
pub(crate) const RECORD: u8 = b'R';
pub(crate) const STATE: u8 = b'S';
pub(crate) const SUMMARY: u8 = b'V';
pub(crate) const LOG: u8 = b'G';
pub(crate) const PEER: u8 = b'P';
pub(crate) const LEDGER: u8 = b'L';
pub(crate) const LEDGER_INDEX: u8 = b'l';
pub(crate) const LEDGER_NOTE: u8 = b'n';

pub(crate) const POSTING: u8 = b'p';
pub(crate) const IDX_EXPIRY: &[u8] = b"ix";
pub(crate) const ATT_SUBJECT: &[u8] = b"as";
pub(crate) const META: &[u8] = b"M:";
pub(crate) const META_SIGNER: &[u8] = b"Mp";

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

pub(crate) fn contract(cap: &Cid) -> Vec<u8> {
    cat(&[&[CONTRACT], &cap.to_bytes()])
}

pub(crate) fn record(id: &Cid) -> Vec<u8> {
    cat(&[&[RECORD], &id.to_bytes()])
}

pub(crate) fn state(provider: &PeerId, cap: &Cid) -> Vec<u8> {
    cat(&[&[STATE], provider.public_key().as_bytes(), &cap.to_bytes()])
}

pub(crate) fn summary(order: u64) -> Vec<u8> {
    cat(&[&[SUMMARY], &order.to_be_bytes()])
}

pub(crate) fn log(seq: u64) -> Vec<u8> {
    cat(&[&[LOG], &seq.to_be_bytes()])
}

pub(crate) fn meta(name: &str) -> Vec<u8> {
    cat(&[META, name.as_bytes()])
}

pub(crate) fn signer_count(signer: &PeerId) -> Vec<u8> {
    cat(&[META_SIGNER, signer.public_key().as_bytes()])
}

pub(crate) fn expiry(expires: u64, id: &Cid) -> Vec<u8> {
    cat(&[IDX_EXPIRY, &expires.to_be_bytes(), &id.to_bytes()])
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn cid_at(bytes: &[u8], at: usize) -> Option<Cid> {
    Cid::from_bytes(bytes.get(at..at + Cid::BINARY_LEN)?).ok()
}

/// Words of a contract for text search: lower-cased runs of letters and digits, at least two
/// characters, deduplicated, at most 64 bytes each.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 2 && w.len() <= 64)
        .map(str::to_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_lowercase_words() {
        assert_eq!(tokens("Summarize a TEXT, text.summarize v2"), ["summarize", "text", "v2"]);
    }
}
