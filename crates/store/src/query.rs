//! Queries over live adverts: one index chosen by the most selective criterion, scanned in
//! key order from the cursor, every other criterion checked per candidate.

use std::collections::BTreeSet;

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Attestation, Filter, Signed, Subject, cbor::Limits};

use crate::{
    Store, StoreError, keys,
    postings::{self, Kind, partial_prefix, term_prefix},
    registry::Summary,
};

/// Scan direction over an index: insertion order, oldest or newest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Oldest,
    Newest,
}

/// A replica query: by capability id, or by the filters of a `Discover` (all must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only adverts for this capability.
    pub capability: Option<Cid>,
    pub filter: Filter,
    pub order: Order,
    /// Most hits per page. Default 50, at most 1000.
    pub limit: usize,
    /// From a previous [`Page::next`]: continue after it.
    pub cursor: Option<Vec<u8>>,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            capability: None,
            filter: Filter::default(),
            order: Order::Oldest,
            limit: 50,
            cursor: None,
        }
    }
}

/// The largest page a query returns.
pub const MAX_LIMIT: usize = 1000;

/// One live advert that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub id: Cid,
    pub summary: Summary,
}

/// A page of hits and where the next page starts. The cursor names the last posting read
/// (chunk and order), so records inserted meanwhile never shift the pages: nothing is repeated
/// or skipped that existed when the first page was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub next: Option<Vec<u8>>,
}

/// Which posting lists a query scans: one term, or (name prefix) every term under a prefix.
fn plan(q: &Query) -> Vec<u8> {
    let f = &q.filter;
    if let Some(cap) = &q.capability {
        return term_prefix(Kind::Capability, &cap.to_bytes());
    }
    if let Some(p) = &f.provider {
        return term_prefix(Kind::Provider, p.public_key().as_bytes());
    }
    if let Some(tag) = f.tags.first() {
        return term_prefix(Kind::Tag, tag.as_bytes());
    }
    if let Some(word) = f.text.as_deref().and_then(|t| keys::tokens(t).into_iter().next()) {
        return term_prefix(Kind::Word, word.as_bytes());
    }
    if let Some(prefix) = &f.name_prefix {
        // Every name starting with the prefix, ordered by name, then insertion.
        return partial_prefix(Kind::Name, prefix.as_bytes());
    }
    term_prefix(Kind::All, &[])
}

/// A cursor is the chunk key last read followed by the last order returned from it.
fn split_cursor(cursor: &[u8]) -> Option<(&[u8], u64)> {
    let (chunk, order) = cursor.split_at_checked(cursor.len().checked_sub(8)?)?;
    Some((chunk, u64::from_be_bytes(order.try_into().ok()?)))
}

impl Store {
    /// Live adverts matching `q` at `now_ms` (expired ones are never returned, swept or not).
    pub fn query(&self, q: &Query, now_ms: u64) -> Result<Page, StoreError> {
        let db = &self.inner.db;
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let prefix = plan(q);
        let words: BTreeSet<String> =
            q.filter.text.as_deref().map(keys::tokens).unwrap_or_default().into_iter().collect();
        let after =
            q.cursor.as_deref().and_then(split_cursor).filter(|(c, _)| c.starts_with(&prefix));
        use std::ops::Bound::{Included, Unbounded};
        let chunks: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (q.order, after) {
                (Order::Oldest, None) => Box::new(db.scan_prefix(&prefix)),
                (Order::Newest, None) => Box::new(db.scan_prefix(&prefix).rev()),
                (Order::Oldest, Some((c, _))) => {
                    Box::new(db.range((Included(c.to_vec()), Unbounded)))
                }
                (Order::Newest, Some((c, _))) => {
                    Box::new(db.range((Included(prefix.clone()), Included(c.to_vec()))).rev())
                }
            };
        // Lists every hit must be in. When the scanned list is a single term (always, except
        // for name prefixes) orders come sorted, so a list's next order lets the scan jump
        // over every order before it without reading a summary: a leapfrog intersection.
        let required: Vec<Vec<u8>> = q
            .filter
            .tags
            .iter()
            .map(|t| term_prefix(Kind::Tag, t.as_bytes()))
            .chain(words.iter().map(|w| term_prefix(Kind::Word, w.as_bytes())))
            .collect();
        let sorted = q.capability.is_some()
            || q.filter.provider.is_some()
            || !required.is_empty()
            || q.filter.name_prefix.is_none();
        let forward = q.order == Order::Oldest;
        let mut jump: Option<u64> = None;
        let mut hits = Vec::with_capacity(limit);
        'scan: for entry in chunks {
            let (chunk_key, value) = entry?;
            if !chunk_key.starts_with(&prefix) {
                break;
            }
            let mut orders = postings::decode(&value);
            if q.order == Order::Newest {
                orders.reverse();
            }
            for order in orders {
                // Resume strictly after the cursor within the chunk it names.
                if let Some((c, last)) = after
                    && c == chunk_key.as_ref()
                    && (if q.order == Order::Oldest { order <= last } else { order >= last })
                {
                    continue;
                }
                if sorted && !required.is_empty() {
                    if jump.is_some_and(|j| if forward { order < j } else { order > j }) {
                        continue;
                    }
                    // The nearest order that could be in every list.
                    let mut target = order;
                    for list in &required {
                        match postings::seek(db, list, target, forward)? {
                            None => break 'scan, // no order further on is in this list
                            Some(o) => target = o,
                        }
                    }
                    if target != order {
                        jump = Some(target);
                        continue;
                    }
                }
                let value = db
                    .get(keys::summary(order))?
                    .ok_or_else(|| StoreError::Corrupt(format!("posting {order} has no advert")))?;
                let (id, summary) = keys::cid_at(&value, 0)
                    .zip(value.get(Cid::BINARY_LEN..).and_then(Summary::decode))
                    .ok_or_else(|| StoreError::Corrupt(format!("summary {order}")))?;
                let lists_checked = sorted && !required.is_empty();
                if self.matches(q, &words, lists_checked, &summary, now_ms)? {
                    hits.push(Hit { id, summary });
                    if hits.len() == limit {
                        let next = keys::cat(&[&chunk_key, &order.to_be_bytes()]);
                        return Ok(Page { hits, next: Some(next) });
                    }
                }
            }
        }
        Ok(Page { hits, next: None })
    }

    fn matches(
        &self,
        q: &Query,
        words: &BTreeSet<String>,
        lists_checked: bool,
        s: &Summary,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let db = &self.inner.db;
        let f = &q.filter;
        if s.expires < now_ms {
            return Ok(false);
        }
        if q.capability.is_some_and(|c| c != s.capability)
            || f.provider.is_some_and(|p| p != s.provider)
        {
            return Ok(false);
        }
        if f.name_prefix.as_deref().is_some_and(|p| !s.name.starts_with(p)) {
            return Ok(false);
        }
        if let Some(max) = &f.max_price
            && (max.unit != s.unit || s.amount > max.amount)
        {
            return Ok(false);
        }
        if f.issued_after.is_some_and(|t| s.issued < t) {
            return Ok(false);
        }
        // Tags and words: membership in their posting lists, unless the scan's leapfrog
        // already established it for this order.
        if !lists_checked {
            for tag in &f.tags {
                if !postings::contains(db, &term_prefix(Kind::Tag, tag.as_bytes()), s.order)? {
                    return Ok(false);
                }
            }
            for word in words {
                if !postings::contains(db, &term_prefix(Kind::Word, word.as_bytes()), s.order)? {
                    return Ok(false);
                }
            }
        }
        if f.claim.is_some() || f.issuer.is_some() {
            return self.attested(&s.provider, f.claim.as_deref(), f.issuer.as_ref(), now_ms);
        }
        Ok(true)
    }

    /// Unexpired attestations at `now_ms` about `subject` (any, when `None`), issued by
    /// `issuer` and with `claim` when given, at most `limit`, in key order (by subject).
    pub fn attestations(
        &self,
        subject: Option<&Subject>,
        issuer: Option<&PeerId>,
        claim: Option<&str>,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Signed<Attestation>>, StoreError> {
        let prefix = match subject {
            Some(s) => keys::cat(&[keys::ATT_SUBJECT, &crate::registry::subject_bytes(s)]),
            None => keys::ATT_SUBJECT.to_vec(),
        };
        let mut found = Vec::new();
        for entry in self.inner.db.scan_prefix(prefix) {
            if found.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            if !index_matches(&v, claim, issuer, now_ms)? {
                continue;
            }
            // The key ends with the attestation's binary id.
            let id = k
                .len()
                .checked_sub(Cid::BINARY_LEN)
                .and_then(|at| Cid::from_bytes(&k[at..]).ok())
                .ok_or_else(|| StoreError::Corrupt("attestation index key".into()))?;
            let Some((_, bytes)) = self.record(&id)? else { continue };
            let signed = Signed::<Attestation>::from_bytes(&bytes, Limits::default())
                .map_err(|e| StoreError::Corrupt(format!("attestation {id}: {e}")))?;
            found.push(signed);
        }
        Ok(found)
    }

    /// Whether `subject` holds an unexpired attestation with `claim`, issued by `issuer`.
    pub fn attested(
        &self,
        subject: &PeerId,
        claim: Option<&str>,
        issuer: Option<&PeerId>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let prefix = keys::cat(&[keys::ATT_SUBJECT, b"p", subject.public_key().as_bytes()]);
        for entry in self.inner.db.scan_prefix(prefix) {
            let (_, v) = entry?;
            if index_matches(&v, claim, issuer, now_ms)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Whether an attestation index value (`issuer key (32) ‖ expires (8) ‖ claim`) is unexpired
/// at `now_ms` and has `claim` and `issuer` where given.
fn index_matches(
    v: &[u8],
    claim: Option<&str>,
    issuer: Option<&PeerId>,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let (Some(by), Some(expires)) = (v.get(..32), keys::u64_at(v, 32)) else {
        return Err(StoreError::Corrupt("attestation index value".into()));
    };
    let ok_issuer = issuer.is_none_or(|i| i.public_key().as_bytes().as_slice() == by);
    let ok_claim = claim.is_none_or(|c| v.get(40..) == Some(c.as_bytes()));
    Ok(ok_issuer && ok_claim && expires >= now_ms)
}
