//! A full consistency check of the replica: records, indexes, states, counters and change log
//! agree. Used by the crash tests and available to operators.

use std::collections::HashMap;

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Advert, Attestation, Record, Retirement, Signed};

use crate::{
    ChangeOp, RECORD_HEADER, RecordType, Store, StoreError, keys, limits, postings,
    registry::{Change, State, StateKind, Summary, advert_terms, subject_bytes},
    writer::load_contract,
};

/// What a consistent replica holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub records: u64,
    pub adverts: u64,
    /// Postings in all posting lists.
    pub index_entries: u64,
    pub log_entries: u64,
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corrupt(msg)
}

impl Store {
    /// Checks every invariant between records, indexes, states, counters and the change log.
    /// Reads the whole replica: for tests, tools and after a crash, not for hot paths.
    pub fn check_integrity(&self) -> Result<IntegrityReport, StoreError> {
        let db = &self.inner.db;
        let mut report = IntegrityReport::default();
        let mut per_signer: HashMap<PeerId, u64> = HashMap::new();

        // The last change of each record id, from the log.
        let mut last_change: HashMap<Cid, ChangeOp> = HashMap::new();
        let mut max_seq = 0;
        for entry in db.scan_prefix([keys::LOG]) {
            let (k, v) = entry?;
            let seq = keys::u64_at(&k, 1).ok_or_else(|| corrupt("log key".into()))?;
            let change =
                Change::decode(seq, &v).ok_or_else(|| corrupt(format!("log entry {seq}")))?;
            last_change.insert(change.id, change.op);
            max_seq = max_seq.max(seq);
            report.log_entries += 1;
        }
        let stored_seq = db.get(keys::meta("seq"))?.and_then(|v| keys::u64_at(&v, 0)).unwrap_or(0);
        if stored_seq != max_seq {
            return Err(corrupt(format!("log head {max_seq} but counter {stored_seq}")));
        }

        let mut expected_postings = 0u64;
        for entry in db.scan_prefix([keys::RECORD]) {
            let (k, v) = entry?;
            let id = keys::cid_at(&k, 1).ok_or_else(|| corrupt("record key".into()))?;
            report.records += 1;
            if last_change.get(&id) != Some(&ChangeOp::Put) {
                return Err(corrupt(format!("record {id} is stored but the log does not say so")));
            }
            let ty = v
                .first()
                .and_then(|b| RecordType::from_byte(*b))
                .ok_or_else(|| corrupt(format!("record {id} type")))?;
            let order =
                crate::record_order(&v).ok_or_else(|| corrupt(format!("record {id} header")))?;
            let bytes =
                v.get(RECORD_HEADER..).ok_or_else(|| corrupt(format!("record {id} header")))?;
            let bad = |e: capmesh_wire::VerifyError| corrupt(format!("record {id}: {e}"));
            let signer = match ty {
                RecordType::Advert => {
                    let advert = Signed::<Advert>::from_bytes(bytes, limits())
                        .and_then(|s| s.decode(limits()))
                        .map_err(bad)?;
                    expected_postings += self.check_advert(&id, order, &advert, &mut report)?;
                    *advert.signer()
                }
                RecordType::Retirement => {
                    let r = Signed::<Retirement>::from_bytes(bytes, limits())
                        .and_then(|s| s.decode(limits()))
                        .map_err(bad)?;
                    let state = db
                        .get(keys::state(&r.provider, &r.capability))?
                        .as_deref()
                        .and_then(State::decode);
                    if state != Some(State { seq: r.seq, kind: StateKind::Retired, id }) {
                        return Err(corrupt(format!("retirement {id} is not the current state")));
                    }
                    r.provider
                }
                RecordType::Attestation => {
                    let a = Signed::<Attestation>::from_bytes(bytes, limits())
                        .and_then(|s| s.decode(limits()))
                        .map_err(bad)?;
                    let idx =
                        keys::cat(&[keys::ATT_SUBJECT, &subject_bytes(&a.subject), &id.to_bytes()]);
                    if !db.contains_key(idx)? || !db.contains_key(keys::expiry(a.expires, &id))? {
                        return Err(corrupt(format!("attestation {id} misses an index entry")));
                    }
                    a.issuer
                }
            };
            if v.get(1..33) != Some(signer.public_key().as_bytes().as_slice()) {
                return Err(corrupt(format!("record {id} header names another signer")));
            }
            *per_signer.entry(signer).or_default() += 1;
        }

        // Every posting points at a live advert, and there are exactly as many as the live
        // adverts' terms (each of which was checked to hold its advert above).
        for entry in db.scan_prefix([keys::POSTING]) {
            let (_, v) = entry?;
            for order in postings::decode(&v) {
                if !db.contains_key(keys::summary(order))? {
                    return Err(corrupt(format!("posting {order} points at no advert")));
                }
                report.index_entries += 1;
            }
        }
        if report.index_entries != expected_postings {
            return Err(corrupt(format!(
                "{} postings, expected {expected_postings}",
                report.index_entries
            )));
        }
        for entry in db.scan_prefix([keys::SUMMARY]) {
            let (_, v) = entry?;
            let id = keys::cid_at(&v, 0).ok_or_else(|| corrupt("summary value".into()))?;
            if !db.contains_key(keys::record(&id))? {
                return Err(corrupt(format!("summary of missing advert {id}")));
            }
        }
        for entry in db.scan_prefix([keys::STATE]) {
            let (_, v) = entry?;
            let state = State::decode(&v).ok_or_else(|| corrupt("state value".into()))?;
            if state.kind != StateKind::Expired && !db.contains_key(keys::record(&state.id))? {
                return Err(corrupt(format!("state points at missing record {}", state.id)));
            }
        }

        let total = db.get(keys::meta("total"))?.and_then(|v| keys::u64_at(&v, 0)).unwrap_or(0);
        if total != report.records {
            return Err(corrupt(format!("{} records but counter {total}", report.records)));
        }
        for (signer, n) in per_signer {
            let counted =
                db.get(keys::signer_count(&signer))?.and_then(|v| keys::u64_at(&v, 0)).unwrap_or(0);
            if counted != n {
                return Err(corrupt(format!("{signer} signed {n} records but counter {counted}")));
            }
        }
        Ok(report)
    }

    /// Checks a live advert's summary, state, postings and expiry entry; returns how many
    /// postings it has.
    fn check_advert(
        &self,
        id: &Cid,
        order: u64,
        advert: &Advert,
        report: &mut IntegrityReport,
    ) -> Result<u64, StoreError> {
        let db = &self.inner.db;
        report.adverts += 1;
        let value = db
            .get(keys::summary(order))?
            .ok_or_else(|| corrupt(format!("advert {id} has no summary")))?;
        let summary = value
            .get(Cid::BINARY_LEN..)
            .and_then(Summary::decode)
            .filter(|s| keys::cid_at(&value, 0) == Some(*id) && s.order == order)
            .ok_or_else(|| corrupt(format!("advert {id} has a wrong summary")))?;
        let state = db
            .get(keys::state(&advert.provider, &advert.capability))?
            .as_deref()
            .and_then(State::decode);
        if state != Some(State { seq: advert.seq, kind: StateKind::Advert, id: *id }) {
            return Err(corrupt(format!("advert {id} is not the current state")));
        }
        let contract = load_contract(db, &advert.capability)?;
        let terms = advert_terms(&summary, &contract);
        for term in &terms {
            if !postings::contains(db, term, order)? {
                return Err(corrupt(format!("advert {id} is missing from posting list {term:?}")));
            }
        }
        if !db.contains_key(keys::expiry(advert.expires, id))? {
            return Err(corrupt(format!("advert {id} has no expiry entry")));
        }
        Ok(terms.len() as u64)
    }
}
