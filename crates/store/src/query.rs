//! Queries over live adverts: one index chosen by the most selective criterion, scanned in
//! key order from the cursor, every other criterion checked per candidate.

use std::collections::BTreeSet;

use capmesh_types::{Cid, PeerId};
use capmesh_wire::Filter;

use crate::{Store, StoreError, keys, registry::Summary};

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

/// A page of hits and where the next page starts. The cursor is the last index key read, so
/// records inserted meanwhile never shift the pages: nothing is repeated or skipped that
/// existed when the first page was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub next: Option<Vec<u8>>,
}

/// Which index a query scans, and under which prefix.
fn plan(q: &Query) -> Vec<u8> {
    let f = &q.filter;
    if let Some(cap) = &q.capability {
        return keys::cat(&[keys::IDX_CAP, &cap.to_bytes()]);
    }
    if let Some(p) = &f.provider {
        return keys::cat(&[keys::IDX_PROVIDER, p.public_key().as_bytes()]);
    }
    if let Some(tag) = f.tags.first() {
        return keys::text_prefix(keys::IDX_TAG, tag);
    }
    if let Some(word) = f.text.as_deref().and_then(|t| keys::tokens(t).into_iter().next()) {
        return keys::text_prefix(keys::IDX_WORD, &word);
    }
    if let Some(prefix) = &f.name_prefix {
        // Names share the index: every name starting with the prefix, ordered by name.
        return keys::cat(&[keys::IDX_NAME, prefix.as_bytes()]);
    }
    keys::IDX_ALL.to_vec()
}

impl Store {
    /// Live adverts matching `q` at `now_ms` (expired ones are never returned, swept or not).
    pub fn query(&self, q: &Query, now_ms: u64) -> Result<Page, StoreError> {
        let db = &self.inner.db;
        let limit = q.limit.clamp(1, MAX_LIMIT);
        let prefix = plan(q);
        let words: BTreeSet<String> =
            q.filter.text.as_deref().map(keys::tokens).unwrap_or_default().into_iter().collect();
        let after = q.cursor.clone().filter(|c| c.starts_with(&prefix));
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            match (q.order, after) {
                (Order::Oldest, None) => Box::new(db.scan_prefix(&prefix)),
                (Order::Newest, None) => Box::new(db.scan_prefix(&prefix).rev()),
                (Order::Oldest, Some(c)) => Box::new(
                    db.range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                        .take_while(move |r| {
                            r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                        }),
                ),
                (Order::Newest, Some(c)) => Box::new(
                    db.range((
                        std::ops::Bound::Included(prefix.clone()),
                        std::ops::Bound::Excluded(c),
                    ))
                    .rev(),
                ),
            };
        let mut hits = Vec::with_capacity(limit);
        let mut last = None;
        for entry in iter {
            let (key, value) = entry?;
            last = Some(key.to_vec());
            let id = Cid::from_bytes(&value)
                .map_err(|e| StoreError::Corrupt(format!("index value: {e}")))?;
            let summary =
                db.get(keys::summary(&id))?.as_deref().and_then(Summary::decode).ok_or_else(
                    || StoreError::Corrupt(format!("index points at missing advert {id}")),
                )?;
            if self.matches(q, &words, &summary, now_ms)? {
                hits.push(Hit { id, summary });
                if hits.len() == limit {
                    break;
                }
            }
        }
        let next = if hits.len() == limit { last } else { None };
        Ok(Page { hits, next })
    }

    fn matches(
        &self,
        q: &Query,
        words: &BTreeSet<String>,
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
        // Tags and words: the advert's own index entries say whether it has them.
        for tag in &f.tags {
            if !db.contains_key(keys::text_index(keys::IDX_TAG, tag, s.order))? {
                return Ok(false);
            }
        }
        for word in words {
            if !db.contains_key(keys::text_index(keys::IDX_WORD, word, s.order))? {
                return Ok(false);
            }
        }
        if f.claim.is_some() || f.issuer.is_some() {
            return self.attested(&s.provider, f.claim.as_deref(), f.issuer.as_ref(), now_ms);
        }
        Ok(true)
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
            let (Some(by), Some(expires)) = (v.get(..32), keys::u64_at(&v, 32)) else {
                return Err(StoreError::Corrupt("attestation index value".into()));
            };
            let ok_issuer = issuer.is_none_or(|i| i.public_key().as_bytes().as_slice() == by);
            let ok_claim = claim.is_none_or(|c| v.get(40..) == Some(c.as_bytes()));
            if ok_issuer && ok_claim && expires >= now_ms {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
