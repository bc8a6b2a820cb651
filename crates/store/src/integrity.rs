//! A full consistency check of the replica: records, indexes, states, counters and change log
//! agree. Used by the crash tests and available to operators.

use std::collections::HashMap;

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Advert, Attestation, Record, Retirement, Signed};

use crate::{
    ChangeOp, RecordType, Store, StoreError, keys, limits,
    registry::{Change, State, StateKind, Summary, advert_index_keys, subject_bytes},
    writer::load_contract,
};

/// What a consistent replica holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub records: u64,
    pub adverts: u64,
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
            let bytes = &v[1..];
            let bad = |e: capmesh_wire::VerifyError| corrupt(format!("record {id}: {e}"));
            let signer = match ty {
                RecordType::Advert => {
                    let advert = Signed::<Advert>::from_bytes(bytes, limits())
                        .and_then(|s| s.decode(limits()))
                        .map_err(bad)?;
                    self.check_advert(&id, &advert, &mut report)?;
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
            *per_signer.entry(signer).or_default() += 1;
        }

        // Every index entry points at a live advert.
        for prefix in [
            keys::IDX_ALL,
            keys::IDX_CAP,
            keys::IDX_PROVIDER,
            keys::IDX_TAG,
            keys::IDX_NAME,
            keys::IDX_WORD,
        ] {
            for entry in db.scan_prefix(prefix) {
                let (k, v) = entry?;
                let id = Cid::from_bytes(&v).map_err(|e| corrupt(format!("index value: {e}")))?;
                if !db.contains_key(keys::summary(&id))? || !db.contains_key(keys::record(&id))? {
                    return Err(corrupt(format!(
                        "index entry {k:?} points at missing advert {id}"
                    )));
                }
                report.index_entries += 1;
            }
        }
        for entry in db.scan_prefix([keys::SUMMARY]) {
            let (k, _) = entry?;
            let id = keys::cid_at(&k, 1).ok_or_else(|| corrupt("summary key".into()))?;
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

    fn check_advert(
        &self,
        id: &Cid,
        advert: &Advert,
        report: &mut IntegrityReport,
    ) -> Result<(), StoreError> {
        let db = &self.inner.db;
        report.adverts += 1;
        let summary = db
            .get(keys::summary(id))?
            .as_deref()
            .and_then(Summary::decode)
            .ok_or_else(|| corrupt(format!("advert {id} has no summary")))?;
        let state = db
            .get(keys::state(&advert.provider, &advert.capability))?
            .as_deref()
            .and_then(State::decode);
        if state != Some(State { seq: advert.seq, kind: StateKind::Advert, id: *id }) {
            return Err(corrupt(format!("advert {id} is not the current state")));
        }
        let contract = load_contract(db, &advert.capability)?;
        for k in advert_index_keys(&summary, &contract) {
            if db.get(&k)?.as_deref() != Some(&id.to_bytes()[..]) {
                return Err(corrupt(format!("advert {id} misses index entry {k:?}")));
            }
        }
        if !db.contains_key(keys::expiry(advert.expires, id))? {
            return Err(corrupt(format!("advert {id} has no expiry entry")));
        }
        Ok(())
    }
}
