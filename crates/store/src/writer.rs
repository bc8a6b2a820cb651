//! The single writer: applies records one atomic batch each, and acknowledges a whole group of
//! requests after one flush (group commit).

use std::{
    collections::HashMap,
    sync::{
        Arc, Condvar, Mutex,
        mpsc::{Receiver, SyncSender},
    },
};

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Contract, cbor};
use sled::{Batch, Db};

use crate::{
    Config, Stats, StoreError, keys,
    registry::{
        Change, ChangeOp, Checked, Outcome, RecordType, State, StateKind, Summary,
        advert_index_keys, remove_advert, subject_bytes,
    },
};

pub(crate) enum Op {
    Apply(Vec<Checked>),
    Sweep(u64),
}

pub(crate) enum Reply {
    Applied(Vec<Result<Outcome, StoreError>>),
    Swept(Result<u64, StoreError>),
}

pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) reply: SyncSender<Reply>,
}

/// The flushed change-log head, published after each group commit (for the changefeed).
#[derive(Debug, Default)]
pub(crate) struct Head {
    pub(crate) seq: Mutex<(u64, bool)>,
    pub(crate) moved: Condvar,
}

impl Head {
    pub(crate) fn publish(&self, seq: u64) {
        let mut g = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = seq;
        self.moved.notify_all();
    }

    pub(crate) fn close(&self) {
        let mut g = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = true;
        self.moved.notify_all();
    }
}

pub(crate) struct Writer {
    db: Db,
    config: Config,
    stats: Arc<Stats>,
    head: Arc<Head>,
    /// Last change-log sequence written (flushed or not).
    seq: u64,
    total: u64,
    /// Live records per signer, loaded on first use.
    per_signer: HashMap<PeerId, u64>,
}

fn read_u64(db: &Db, key: &[u8]) -> Result<u64, StoreError> {
    Ok(db.get(key)?.and_then(|v| keys::u64_at(&v, 0)).unwrap_or(0))
}

impl Writer {
    pub(crate) fn new(
        db: Db,
        config: Config,
        stats: Arc<Stats>,
        head: Arc<Head>,
    ) -> Result<Self, StoreError> {
        let seq = read_u64(&db, &keys::meta("seq"))?;
        let total = read_u64(&db, &keys::meta("total"))?;
        head.publish(seq);
        Ok(Self { db, config, stats, head, seq, total, per_signer: HashMap::new() })
    }

    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < self.config.group_commit_max {
                match rx.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            let mut replies: Vec<(SyncSender<Reply>, Reply)> = group
                .into_iter()
                .map(|req| {
                    let reply = match req.op {
                        Op::Apply(items) => {
                            Reply::Applied(items.into_iter().map(|c| self.apply(c)).collect())
                        }
                        Op::Sweep(now) => Reply::Swept(self.sweep(now)),
                    };
                    (req.reply, reply)
                })
                .collect();
            // One flush acknowledges the whole group; nothing is acknowledged before it.
            if let Err(e) = self.db.flush() {
                tracing::error!(error = %e, "flush failed; the group is not acknowledged");
                for (_, reply) in &mut replies {
                    fail_all(reply, &e);
                }
                self.reload();
            } else {
                self.stats.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.head.publish(self.seq);
            }
            for (tx, reply) in replies {
                let _ = tx.send(reply);
            }
        }
        self.head.close();
    }

    /// After a failure, counters come back from what is stored.
    fn reload(&mut self) {
        self.seq = read_u64(&self.db, &keys::meta("seq")).unwrap_or(self.seq);
        self.total = read_u64(&self.db, &keys::meta("total")).unwrap_or(self.total);
        self.per_signer.clear();
    }

    fn signer_count(&mut self, signer: &PeerId) -> Result<u64, StoreError> {
        if let Some(n) = self.per_signer.get(signer) {
            return Ok(*n);
        }
        let n = read_u64(&self.db, &keys::signer_count(signer))?;
        self.per_signer.insert(*signer, n);
        Ok(n)
    }

    /// Applies one record as one atomic batch: record, indexes, state, change log, counters.
    fn apply(&mut self, checked: Checked) -> Result<Outcome, StoreError> {
        let result = self.try_apply(checked);
        let counter = match &result {
            Ok(Outcome::Stored { .. }) => &self.stats.stored,
            Ok(Outcome::Duplicate { .. }) => &self.stats.duplicates,
            Err(StoreError::Stale { .. }) => &self.stats.refused_stale,
            Err(StoreError::SignerCap { .. }) => &self.stats.dropped_signer_cap,
            Err(StoreError::TotalCap { .. }) => &self.stats.dropped_total_cap,
            Err(_) => &self.stats.refused_other,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if matches!(result, Err(StoreError::Storage(_))) {
            self.reload();
        }
        result
    }

    fn try_apply(&mut self, checked: Checked) -> Result<Outcome, StoreError> {
        let id = checked.id();
        let signer = checked.signer();
        let mut batch = Batch::default();
        // Change in live records (total and for this signer) and log entries of this batch.
        let mut removed = 0u64;
        let mut changes = Vec::new();

        match &checked {
            Checked::Attestation { .. } => {
                if self.db.contains_key(keys::record(&id))? {
                    return Ok(Outcome::Duplicate { id });
                }
            }
            Checked::Advert { advert: Advert { provider, capability, seq, .. }, .. }
            | Checked::Retirement {
                retirement: Retirement { provider, capability, seq, .. },
                ..
            } => {
                let state_key = keys::state(provider, capability);
                if let Some(state) = self.db.get(&state_key)?.as_deref().and_then(State::decode) {
                    if *seq <= state.seq {
                        if state.id == id {
                            return Ok(Outcome::Duplicate { id });
                        }
                        return Err(StoreError::Stale { id, have: state.seq, got: *seq });
                    }
                    match state.kind {
                        StateKind::Advert => {
                            let (summary, contract) = self.live_advert(&state.id)?;
                            remove_advert(&mut batch, &state.id, &summary, &contract);
                            changes.push((ChangeOp::Delete, RecordType::Advert, state.id));
                            removed += 1;
                        }
                        StateKind::Retired => {
                            batch.remove(keys::record(&state.id));
                            changes.push((ChangeOp::Delete, RecordType::Retirement, state.id));
                            removed += 1;
                        }
                        StateKind::Expired => {}
                    }
                }
            }
        }

        // Caps count live records after what this record replaces.
        let signer_now = self.signer_count(&signer)?.saturating_sub(removed);
        if signer_now >= self.config.max_records_per_signer {
            return Err(StoreError::SignerCap { signer, max: self.config.max_records_per_signer });
        }
        let total_now = self.total.saturating_sub(removed);
        if total_now >= self.config.max_records {
            return Err(StoreError::TotalCap { max: self.config.max_records });
        }

        let mut seq = self.seq;
        let mut log = |batch: &mut Batch, op, record, id| {
            seq += 1;
            batch.insert(keys::log(seq), crate::registry::Change { seq, op, record, id }.encode());
            seq
        };
        for (op, record, old) in changes {
            log(&mut batch, op, record, old);
        }
        match checked {
            Checked::Advert { id, advert, signed, contract, contract_bytes } => {
                let order = log(&mut batch, ChangeOp::Put, RecordType::Advert, id);
                if !contract_bytes.is_empty() {
                    batch.insert(keys::contract(&advert.capability), contract_bytes);
                }
                let summary = Summary {
                    order,
                    provider: advert.provider,
                    capability: advert.capability,
                    amount: advert.price.amount,
                    unit: advert.price.unit.clone(),
                    issued: advert.issued,
                    expires: advert.expires,
                    name: contract.name.clone(),
                };
                batch
                    .insert(keys::record(&id), keys::cat(&[&[RecordType::Advert.byte()], &signed]));
                batch.insert(keys::summary(&id), summary.encode());
                batch.insert(keys::expiry(advert.expires, &id), &[][..]);
                for k in advert_index_keys(&summary, &contract) {
                    batch.insert(k, &id.to_bytes()[..]);
                }
                let state = State { seq: advert.seq, kind: StateKind::Advert, id };
                batch.insert(keys::state(&advert.provider, &advert.capability), state.encode());
            }
            Checked::Retirement { id, retirement, signed } => {
                log(&mut batch, ChangeOp::Put, RecordType::Retirement, id);
                batch.insert(
                    keys::record(&id),
                    keys::cat(&[&[RecordType::Retirement.byte()], &signed]),
                );
                let state = State { seq: retirement.seq, kind: StateKind::Retired, id };
                batch.insert(
                    keys::state(&retirement.provider, &retirement.capability),
                    state.encode(),
                );
            }
            Checked::Attestation { id, attestation, signed } => {
                log(&mut batch, ChangeOp::Put, RecordType::Attestation, id);
                batch.insert(
                    keys::record(&id),
                    keys::cat(&[&[RecordType::Attestation.byte()], &signed]),
                );
                batch.insert(keys::expiry(attestation.expires, &id), &[][..]);
                let value = keys::cat(&[
                    attestation.issuer.public_key().as_bytes(),
                    &attestation.expires.to_be_bytes(),
                    attestation.claim.as_bytes(),
                ]);
                batch.insert(
                    keys::cat(&[
                        keys::ATT_SUBJECT,
                        &subject_bytes(&attestation.subject),
                        &id.to_bytes(),
                    ]),
                    value,
                );
            }
        }
        let stored_at = seq;
        batch.insert(keys::meta("seq"), &stored_at.to_be_bytes()[..]);
        batch.insert(keys::meta("total"), &(total_now + 1).to_be_bytes()[..]);
        batch.insert(keys::signer_count(&signer), &(signer_now + 1).to_be_bytes()[..]);
        self.db.apply_batch(batch)?;
        self.seq = stored_at;
        self.total = total_now + 1;
        self.per_signer.insert(signer, signer_now + 1);
        Ok(Outcome::Stored { id, seq: stored_at })
    }

    /// The summary and contract of a live advert (both must exist: an invariant).
    fn live_advert(&self, id: &Cid) -> Result<(Summary, Contract), StoreError> {
        let summary = self
            .db
            .get(keys::summary(id))?
            .as_deref()
            .and_then(Summary::decode)
            .ok_or_else(|| StoreError::Corrupt(format!("live advert {id} has no summary")))?;
        let contract = load_contract(&self.db, &summary.capability)?;
        Ok((summary, contract))
    }

    /// Removes every advert and attestation that expired before `now`; returns how many.
    fn sweep(&mut self, now: u64) -> Result<u64, StoreError> {
        let mut swept = 0;
        let end = keys::cat(&[keys::IDX_EXPIRY, &now.to_be_bytes()]);
        let expired: Vec<sled::IVec> =
            self.db.range(keys::IDX_EXPIRY.to_vec()..end).keys().collect::<Result<_, _>>()?;
        for key in expired {
            let id = keys::cid_at(&key, keys::IDX_EXPIRY.len() + 8)
                .ok_or_else(|| StoreError::Corrupt("bad expiry key".into()))?;
            let Some(record) = self.db.get(keys::record(&id))? else {
                return Err(StoreError::Corrupt(format!("expiry entry for missing record {id}")));
            };
            let mut batch = Batch::default();
            let (kind, signer) = match RecordType::from_byte(record[0]) {
                Some(RecordType::Advert) => {
                    let (summary, contract) = self.live_advert(&id)?;
                    remove_advert(&mut batch, &id, &summary, &contract);
                    let state_key = keys::state(&summary.provider, &summary.capability);
                    if let Some(mut state) =
                        self.db.get(&state_key)?.as_deref().and_then(State::decode)
                    {
                        state.kind = StateKind::Expired;
                        batch.insert(state_key, state.encode());
                    }
                    (RecordType::Advert, summary.provider)
                }
                Some(RecordType::Attestation) => {
                    let signed = capmesh_wire::Signed::<capmesh_wire::Attestation>::from_bytes(
                        &record[1..],
                        cbor::Limits::default(),
                    )
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let att = signed
                        .decode(cbor::Limits::default())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    batch.remove(keys::record(&id));
                    batch.remove(key.clone());
                    batch.remove(keys::cat(&[
                        keys::ATT_SUBJECT,
                        &subject_bytes(&att.subject),
                        &id.to_bytes(),
                    ]));
                    (RecordType::Attestation, att.issuer)
                }
                _ => return Err(StoreError::Corrupt(format!("unexpected expiry entry for {id}"))),
            };
            let seq = self.seq + 1;
            batch.insert(
                keys::log(seq),
                Change { seq, op: ChangeOp::Delete, record: kind, id }.encode(),
            );
            let signer_now = self.signer_count(&signer)?.saturating_sub(1);
            let total_now = self.total.saturating_sub(1);
            batch.insert(keys::meta("seq"), &seq.to_be_bytes()[..]);
            batch.insert(keys::meta("total"), &total_now.to_be_bytes()[..]);
            batch.insert(keys::signer_count(&signer), &signer_now.to_be_bytes()[..]);
            self.db.apply_batch(batch)?;
            self.seq = seq;
            self.total = total_now;
            self.per_signer.insert(signer, signer_now);
            swept += 1;
        }
        self.stats.expired.fetch_add(swept, std::sync::atomic::Ordering::Relaxed);
        Ok(swept)
    }
}

use capmesh_wire::{Advert, Retirement};

pub(crate) fn load_contract(db: &Db, cap: &Cid) -> Result<Contract, StoreError> {
    let bytes = db
        .get(keys::contract(cap))?
        .ok_or_else(|| StoreError::Corrupt(format!("missing contract {cap}")))?;
    cbor::from_slice(&bytes, cbor::Limits::default(), "Contract")
        .map_err(|e| StoreError::Corrupt(format!("contract {cap}: {e}")))
}

fn fail_all(reply: &mut Reply, e: &sled::Error) {
    let err = || StoreError::Storage(sled::Error::Io(std::io::Error::other(e.to_string())));
    match reply {
        Reply::Applied(results) => {
            for r in results.iter_mut() {
                if r.is_ok() {
                    *r = Err(err());
                }
            }
        }
        Reply::Swept(r) => *r = Err(err()),
    }
}
