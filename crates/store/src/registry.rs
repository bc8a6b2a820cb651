//! What the replica stores and how one record is applied: verification, latest-`seq`-wins per
//! (provider, capability), caps, and the atomic batch of a record with its index entries.

use capmesh_contract::check as check_contract;
use capmesh_types::{Cid, Codec, PeerId};
use capmesh_wire::{
    Advert, Attestation, Contract, Record, Retirement, Rules, Signed, Subject, VerifyError, cbor,
};

use crate::{StoreError, keys};

/// A record offered to the replica.
#[derive(Debug, Clone)]
pub enum Item {
    /// A signed advert with the contract it names (as `AdvertiseCapability` carries them).
    Advert {
        advert: Signed<Advert>,
        contract: Contract,
    },
    Retirement(Signed<Retirement>),
    Attestation(Signed<Attestation>),
}

/// What happened to an accepted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored, at this change-log sequence number.
    Stored { id: Cid, seq: u64 },
    /// Exactly this record was already stored: nothing to do (an idempotent acknowledgement).
    Duplicate { id: Cid },
}

impl Outcome {
    pub fn id(&self) -> Cid {
        match self {
            Outcome::Stored { id, .. } | Outcome::Duplicate { id } => *id,
        }
    }
}

/// Record type byte, stored before a record's signed bytes and in change-log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Advert,
    Retirement,
    Attestation,
}

impl RecordType {
    pub(crate) fn byte(self) -> u8 {
        match self {
            RecordType::Advert => b'A',
            RecordType::Retirement => b'T',
            RecordType::Attestation => b'X',
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'A' => Some(RecordType::Advert),
            b'T' => Some(RecordType::Retirement),
            b'X' => Some(RecordType::Attestation),
            _ => None,
        }
    }
}

/// Contracts are immutable by id, so one that passed [`check_contract`] never needs the check
/// again: ids that passed are remembered (bounded), and stored ones are known good.
pub(crate) struct ContractGate<'a> {
    pub(crate) db: &'a sled::Db,
    pub(crate) passed: &'a std::sync::Mutex<std::collections::HashSet<Cid>>,
}

impl ContractGate<'_> {
    /// Most contract ids remembered as checked; the set starts over when full.
    const MAX_REMEMBERED: usize = 4096;

    fn is_stored(&self, cap: &Cid) -> Result<bool, StoreError> {
        Ok(self.db.contains_key(keys::contract(cap))?)
    }

    fn check(&self, cap: &Cid, contract: &Contract) -> Result<(), StoreError> {
        if self.passed.lock().unwrap_or_else(|e| e.into_inner()).contains(cap) {
            return Ok(());
        }
        check_contract(contract)?;
        let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
        if passed.len() >= Self::MAX_REMEMBERED {
            passed.clear();
        }
        passed.insert(*cap);
        Ok(())
    }
}

/// A record that passed verification, ready to apply. (Variants differ in size; they live only
/// between verification and the writer, so boxing would buy nothing.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Checked {
    Advert {
        id: Cid,
        advert: Advert,
        signed: Vec<u8>,
        contract: Contract,
        /// Canonical contract bytes, when the contract is not stored yet.
        contract_bytes: Vec<u8>,
    },
    Retirement {
        id: Cid,
        retirement: Retirement,
        signed: Vec<u8>,
    },
    Attestation {
        id: Cid,
        attestation: Attestation,
        signed: Vec<u8>,
    },
}

impl Item {
    /// Full verification: strict decode, signature, time window, and for adverts a well-formed
    /// contract whose id is the advert's capability. `known_contract` skips re-checking a
    /// contract already stored (its bytes are the same: the id is their hash).
    pub(crate) fn check(
        &self,
        now_ms: u64,
        rules: &Rules,
        contracts: &ContractGate<'_>,
    ) -> Result<Checked, StoreError> {
        Ok(match self {
            Item::Advert { advert, contract } => {
                let verified = advert.verify(now_ms, rules)?;
                let contract_bytes = cbor::to_vec(contract).map_err(|e| {
                    StoreError::Corrupt(format!("contract has no canonical form: {e}"))
                })?;
                let cap = verified.record.capability;
                let actual = Cid::of(Codec::DagCbor, &contract_bytes);
                if actual != cap {
                    return Err(VerifyError::CidMismatch { expected: cap, actual }.into());
                }
                let contract_bytes = if contracts.is_stored(&cap)? {
                    Vec::new()
                } else {
                    contracts.check(&cap, contract)?;
                    contract_bytes
                };
                Checked::Advert {
                    id: verified.id,
                    advert: verified.record,
                    signed: advert.to_bytes(),
                    contract: contract.clone(),
                    contract_bytes,
                }
            }
            Item::Retirement(r) => {
                let v = r.verify(now_ms, rules)?;
                Checked::Retirement { id: v.id, retirement: v.record, signed: r.to_bytes() }
            }
            Item::Attestation(a) => {
                let v = a.verify(now_ms, rules)?;
                Checked::Attestation { id: v.id, attestation: v.record, signed: a.to_bytes() }
            }
        })
    }
}

impl Checked {
    pub(crate) fn id(&self) -> Cid {
        match self {
            Checked::Advert { id, .. }
            | Checked::Retirement { id, .. }
            | Checked::Attestation { id, .. } => *id,
        }
    }

    pub(crate) fn signer(&self) -> PeerId {
        match self {
            Checked::Advert { advert, .. } => *advert.signer(),
            Checked::Retirement { retirement, .. } => *retirement.signer(),
            Checked::Attestation { attestation, .. } => *attestation.signer(),
        }
    }
}

/// The winner for one (provider, capability): `seq`, what it is, and its record id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) seq: u64,
    pub(crate) kind: StateKind,
    pub(crate) id: Cid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateKind {
    Advert,
    Retired,
    /// The advert expired and was swept; its `seq` still bars older records.
    Expired,
}

impl State {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            StateKind::Advert => b'A',
            StateKind::Retired => b'T',
            StateKind::Expired => b'E',
        };
        keys::cat(&[&self.seq.to_be_bytes(), &[kind], &self.id.to_bytes()])
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let kind = match *bytes.get(8)? {
            b'A' => StateKind::Advert,
            b'T' => StateKind::Retired,
            b'E' => StateKind::Expired,
            _ => return None,
        };
        Some(State { seq: keys::u64_at(bytes, 0)?, kind, id: keys::cid_at(bytes, 9)? })
    }
}

/// What queries need of a live advert, without decoding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Insertion order (the change-log sequence that stored it).
    pub order: u64,
    pub provider: PeerId,
    pub capability: Cid,
    pub amount: u64,
    pub unit: String,
    pub issued: u64,
    pub expires: u64,
    pub name: String,
}

impl Summary {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let unit = &self.unit.as_bytes()[..self.unit.len().min(255)];
        let name = &self.name.as_bytes()[..self.name.len().min(255)];
        keys::cat(&[
            &self.order.to_be_bytes(),
            self.provider.public_key().as_bytes(),
            &self.capability.to_bytes(),
            &self.amount.to_be_bytes(),
            &self.issued.to_be_bytes(),
            &self.expires.to_be_bytes(),
            &[unit.len() as u8],
            unit,
            &[name.len() as u8],
            name,
        ])
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let key: [u8; 32] = b.get(8..40)?.try_into().ok()?;
        let unit_len = usize::from(*b.get(100)?);
        let unit = std::str::from_utf8(b.get(101..101 + unit_len)?).ok()?;
        let name_at = 101 + unit_len;
        let name_len = usize::from(*b.get(name_at)?);
        let name = std::str::from_utf8(b.get(name_at + 1..name_at + 1 + name_len)?).ok()?;
        Some(Summary {
            order: keys::u64_at(b, 0)?,
            provider: PeerId::from_public_key(capmesh_types::PublicKey::from_bytes(key)),
            capability: keys::cid_at(b, 40)?,
            amount: keys::u64_at(b, 76)?,
            issued: keys::u64_at(b, 84)?,
            expires: keys::u64_at(b, 92)?,
            unit: unit.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Every posting-list term of a live advert, as term prefixes.
pub(crate) fn advert_terms(summary: &Summary, contract: &Contract) -> Vec<Vec<u8>> {
    use crate::postings::{Kind, term_prefix};
    let mut out = vec![
        term_prefix(Kind::All, &[]),
        term_prefix(Kind::Capability, &summary.capability.to_bytes()),
        term_prefix(Kind::Provider, summary.provider.public_key().as_bytes()),
        term_prefix(Kind::Name, contract.name.as_bytes()),
    ];
    let mut tags = contract.tags.clone();
    tags.sort();
    tags.dedup();
    out.extend(tags.iter().map(|t| term_prefix(Kind::Tag, t.as_bytes())));
    out.extend(contract_tokens(contract).iter().map(|w| term_prefix(Kind::Word, w.as_bytes())));
    out
}

/// Searchable words of a contract: its name, description and tags.
pub(crate) fn contract_tokens(contract: &Contract) -> Vec<String> {
    let text = format!("{} {} {}", contract.name, contract.description, contract.tags.join(" "));
    keys::tokens(&text)
}

pub(crate) fn subject_bytes(subject: &Subject) -> Vec<u8> {
    match subject {
        Subject::Peer(p) => keys::cat(&[b"p", p.public_key().as_bytes()]),
        Subject::Cid(c) => keys::cat(&[b"c", &c.to_bytes()]),
    }
}

/// A change-log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub op: ChangeOp,
    pub record: RecordType,
    pub id: Cid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// The record was stored.
    Put,
    /// The record was removed: superseded by a higher `seq`, or expired.
    Delete,
}

impl Change {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let op = match self.op {
            ChangeOp::Put => b'P',
            ChangeOp::Delete => b'D',
        };
        keys::cat(&[&[op, self.record.byte()], &self.id.to_bytes()])
    }

    pub(crate) fn decode(seq: u64, b: &[u8]) -> Option<Self> {
        let op = match *b.first()? {
            b'P' => ChangeOp::Put,
            b'D' => ChangeOp::Delete,
            _ => return None,
        };
        Some(Change {
            seq,
            op,
            record: RecordType::from_byte(*b.get(1)?)?,
            id: keys::cid_at(b, 2)?,
        })
    }
}

/// Removes a live advert (record, summary, postings, expiry entry) in `p`.
pub(crate) fn remove_advert(
    p: &mut crate::pending::Pending,
    db: &sled::Db,
    id: &Cid,
    summary: &Summary,
    contract: &Contract,
) -> Result<(), StoreError> {
    p.remove(keys::record(id));
    p.remove(keys::summary(summary.order));
    p.remove(keys::expiry(summary.expires, id));
    for term in advert_terms(summary, contract) {
        crate::postings::remove(p, db, &term, summary.order)?;
    }
    Ok(())
}
