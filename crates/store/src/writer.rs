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
use sled::Db;

use crate::{
    Config, Stats, StoreError, keys,
    pending::Pending,
    postings,
    registry::{
        Change, ChangeOp, Checked, Outcome, RecordType, State, StateKind, Summary, advert_terms,
        remove_advert, subject_bytes,
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
    /// Last change-log sequence assigned (committed or in the current group).
    seq: u64,
    total: u64,
    /// Live records per signer, loaded on first use.
    per_signer: HashMap<PeerId, u64>,
    /// Signers whose count changed in the current group.
    touched: std::collections::HashSet<PeerId>,
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
        Ok(Self {
            db,
            config,
            stats,
            head,
            seq,
            total,
            per_signer: HashMap::new(),
            touched: Default::default(),
        })
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
            let mut pending = Pending::default();
            let mut replies: Vec<(SyncSender<Reply>, Reply)> = group
                .into_iter()
                .map(|req| {
                    let reply = match req.op {
                        Op::Apply(items) => Reply::Applied(
                            items.into_iter().map(|c| self.apply(&mut pending, c)).collect(),
                        ),
                        Op::Sweep(now) => Reply::Swept(self.sweep(&mut pending, now)),
                    };
                    (req.reply, reply)
                })
                .collect();
            // The whole group is one atomic batch, and one flush acknowledges it: nothing is
            // acknowledged before it is durable, and a crash keeps all of a group or none.
            let result = self.commit(pending);
            match result {
                Ok(()) => {
                    self.stats.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.head.publish(self.seq);
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed; the group is not acknowledged");
                    for (_, reply) in &mut replies {
                        fail_all(reply, &e.to_string());
                    }
                    self.reload();
                }
            }
            for (tx, reply) in replies {
                let _ = tx.send(reply);
            }
        }
        self.head.close();
    }

    /// After a failed commit, counters come back from what is stored (the last good group).
    fn reload(&mut self) {
        self.seq = read_u64(&self.db, &keys::meta("seq")).unwrap_or(self.seq);
        self.total = read_u64(&self.db, &keys::meta("total")).unwrap_or(self.total);
        self.per_signer.clear();
        self.touched.clear();
    }

    fn commit(&mut self, mut pending: Pending) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        pending.insert(keys::meta("seq"), self.seq.to_be_bytes().to_vec());
        pending.insert(keys::meta("total"), self.total.to_be_bytes().to_vec());
        for signer in std::mem::take(&mut self.touched) {
            let n = self.per_signer.get(&signer).copied().unwrap_or(0);
            pending.insert(keys::signer_count(&signer), n.to_be_bytes().to_vec());
        }
        self.db.apply_batch(pending.into_batch())?;
        self.db.flush()?;
        Ok(())
    }

    fn signer_count(&mut self, signer: &PeerId) -> Result<u64, StoreError> {
        if let Some(n) = self.per_signer.get(signer) {
            return Ok(*n);
        }
        let n = read_u64(&self.db, &keys::signer_count(signer))?;
        self.per_signer.insert(*signer, n);
        Ok(n)
    }

    fn set_signer_count(&mut self, signer: PeerId, n: u64) {
        self.per_signer.insert(signer, n);
        self.touched.insert(signer);
    }

    fn apply(&mut self, p: &mut Pending, checked: Checked) -> Result<Outcome, StoreError> {
        let result = self.try_apply(p, checked);
        let counter = match &result {
            Ok(Outcome::Stored { .. }) => &self.stats.stored,
            Ok(Outcome::Duplicate { .. }) => &self.stats.duplicates,
            Err(StoreError::Stale { .. }) => &self.stats.refused_stale,
            Err(StoreError::SignerCap { .. }) => &self.stats.dropped_signer_cap,
            Err(StoreError::TotalCap { .. }) => &self.stats.dropped_total_cap,
            Err(_) => &self.stats.refused_other,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Applies one record to the group: every check first, then the writes (record, summary,
    /// postings, state, change log), so a refusal leaves the group untouched.
    fn try_apply(&mut self, p: &mut Pending, checked: Checked) -> Result<Outcome, StoreError> {
        let id = checked.id();
        let signer = checked.signer();
        // What this record replaces: (state kind, id), decided before anything is written.
        let mut replaces: Option<State> = None;
        match &checked {
            Checked::Attestation { .. } => {
                if p.contains(&self.db, &keys::record(&id))? {
                    return Ok(Outcome::Duplicate { id });
                }
            }
            Checked::Advert { advert: Advert { provider, capability, seq, .. }, .. }
            | Checked::Retirement {
                retirement: Retirement { provider, capability, seq, .. },
                ..
            } => {
                let state = p.get(&self.db, &keys::state(provider, capability))?;
                if let Some(state) = state.as_deref().and_then(State::decode) {
                    if *seq <= state.seq {
                        if state.id == id {
                            return Ok(Outcome::Duplicate { id });
                        }
                        return Err(StoreError::Stale { id, have: state.seq, got: *seq });
                    }
                    replaces = Some(state);
                }
            }
        }
        let removed = u64::from(replaces.is_some_and(|s| s.kind != StateKind::Expired));
        // Caps count live records after what this record replaces.
        let signer_now = self.signer_count(&signer)?.saturating_sub(removed);
        if signer_now >= self.config.max_records_per_signer {
            return Err(StoreError::SignerCap { signer, max: self.config.max_records_per_signer });
        }
        let total_now = self.total.saturating_sub(removed);
        if total_now >= self.config.max_records {
            return Err(StoreError::TotalCap { max: self.config.max_records });
        }

        // Checks passed: write.
        if let Some(old) = replaces {
            match old.kind {
                StateKind::Advert => {
                    let (summary, contract) = self.live_advert(p, &old.id)?;
                    remove_advert(p, &self.db, &old.id, &summary, &contract)?;
                    self.log(p, ChangeOp::Delete, RecordType::Advert, old.id);
                }
                StateKind::Retired => {
                    p.remove(keys::record(&old.id));
                    self.log(p, ChangeOp::Delete, RecordType::Retirement, old.id);
                }
                StateKind::Expired => {}
            }
        }
        let record_value = |ty: RecordType, order: u64, signed: &[u8]| {
            keys::cat(&[&[ty.byte()], signer.public_key().as_bytes(), &order.to_be_bytes(), signed])
        };
        let stored_at = match checked {
            Checked::Advert { id, advert, signed, contract, contract_bytes } => {
                let order = self.log(p, ChangeOp::Put, RecordType::Advert, id);
                if !contract_bytes.is_empty() {
                    p.insert(keys::contract(&advert.capability), contract_bytes);
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
                p.insert(keys::record(&id), record_value(RecordType::Advert, order, &signed));
                p.insert(keys::summary(order), keys::cat(&[&id.to_bytes(), &summary.encode()]));
                p.insert(keys::expiry(advert.expires, &id), Vec::new());
                for term in advert_terms(&summary, &contract) {
                    postings::add(p, &self.db, &term, order, self.config.posting_chunk)?;
                }
                let state = State { seq: advert.seq, kind: StateKind::Advert, id };
                p.insert(keys::state(&advert.provider, &advert.capability), state.encode());
                order
            }
            Checked::Retirement { id, retirement, signed } => {
                let order = self.log(p, ChangeOp::Put, RecordType::Retirement, id);
                p.insert(keys::record(&id), record_value(RecordType::Retirement, order, &signed));
                let state = State { seq: retirement.seq, kind: StateKind::Retired, id };
                p.insert(keys::state(&retirement.provider, &retirement.capability), state.encode());
                order
            }
            Checked::Attestation { id, attestation, signed } => {
                let order = self.log(p, ChangeOp::Put, RecordType::Attestation, id);
                p.insert(keys::record(&id), record_value(RecordType::Attestation, order, &signed));
                p.insert(keys::expiry(attestation.expires, &id), Vec::new());
                let value = keys::cat(&[
                    attestation.issuer.public_key().as_bytes(),
                    &attestation.expires.to_be_bytes(),
                    attestation.claim.as_bytes(),
                ]);
                let subject = subject_bytes(&attestation.subject);
                p.insert(keys::cat(&[keys::ATT_SUBJECT, &subject, &id.to_bytes()]), value);
                order
            }
        };
        self.total = total_now + 1;
        self.set_signer_count(signer, signer_now + 1);
        Ok(Outcome::Stored { id, seq: stored_at })
    }

    /// Appends a change-log entry; returns its sequence number.
    fn log(&mut self, p: &mut Pending, op: ChangeOp, record: RecordType, id: Cid) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        p.insert(keys::log(seq), Change { seq, op, record, id }.encode());
        seq
    }

    /// The summary and contract of a live advert (both must exist: an invariant).
    fn live_advert(&self, p: &Pending, id: &Cid) -> Result<(Summary, Contract), StoreError> {
        let record = p
            .get(&self.db, &keys::record(id))?
            .ok_or_else(|| StoreError::Corrupt(format!("live advert {id} has no record")))?;
        let order = crate::record_order(&record)
            .ok_or_else(|| StoreError::Corrupt(format!("record {id} has no order")))?;
        let summary = p
            .get(&self.db, &keys::summary(order))?
            .as_deref()
            .and_then(|v| Summary::decode(v.get(Cid::BINARY_LEN..)?))
            .ok_or_else(|| StoreError::Corrupt(format!("live advert {id} has no summary")))?;
        let contract = match p.get(&self.db, &keys::contract(&summary.capability))? {
            Some(bytes) => cbor::from_slice(&bytes, cbor::Limits::default(), "Contract")
                .map_err(|e| StoreError::Corrupt(format!("contract: {e}")))?,
            None => {
                return Err(StoreError::Corrupt(format!(
                    "missing contract {}",
                    summary.capability
                )));
            }
        };
        Ok((summary, contract))
    }

    /// Removes every advert and attestation that expired before `now`; returns how many.
    fn sweep(&mut self, p: &mut Pending, now: u64) -> Result<u64, StoreError> {
        let mut swept = 0;
        let end = keys::cat(&[keys::IDX_EXPIRY, &now.to_be_bytes()]);
        let expired: Vec<sled::IVec> =
            self.db.range(keys::IDX_EXPIRY.to_vec()..end).keys().collect::<Result<_, _>>()?;
        for key in expired {
            if !p.contains(&self.db, &key)? {
                continue; // already removed in this group
            }
            let id = keys::cid_at(&key, keys::IDX_EXPIRY.len() + 8)
                .ok_or_else(|| StoreError::Corrupt("bad expiry key".into()))?;
            let record = p.get(&self.db, &keys::record(&id))?.ok_or_else(|| {
                StoreError::Corrupt(format!("expiry entry for missing record {id}"))
            })?;
            let (kind, signer) = match RecordType::from_byte(record[0]) {
                Some(RecordType::Advert) => {
                    let (summary, contract) = self.live_advert(p, &id)?;
                    remove_advert(p, &self.db, &id, &summary, &contract)?;
                    let state_key = keys::state(&summary.provider, &summary.capability);
                    if let Some(mut state) =
                        p.get(&self.db, &state_key)?.as_deref().and_then(State::decode)
                    {
                        state.kind = StateKind::Expired;
                        p.insert(state_key, state.encode());
                    }
                    (RecordType::Advert, summary.provider)
                }
                Some(RecordType::Attestation) => {
                    let signed = capmesh_wire::Signed::<capmesh_wire::Attestation>::from_bytes(
                        &record[41..],
                        cbor::Limits::default(),
                    )
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    let att = signed
                        .decode(cbor::Limits::default())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    p.remove(keys::record(&id));
                    p.remove(key.to_vec());
                    p.remove(keys::cat(&[
                        keys::ATT_SUBJECT,
                        &subject_bytes(&att.subject),
                        &id.to_bytes(),
                    ]));
                    (RecordType::Attestation, att.issuer)
                }
                _ => return Err(StoreError::Corrupt(format!("unexpected expiry entry for {id}"))),
            };
            self.log(p, ChangeOp::Delete, kind, id);
            let n = self.signer_count(&signer)?.saturating_sub(1);
            self.set_signer_count(signer, n);
            self.total = self.total.saturating_sub(1);
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

fn fail_all(reply: &mut Reply, e: &str) {
    let err = || StoreError::Storage(sled::Error::Io(std::io::Error::other(e.to_owned())));
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
