//! A group's writes before they reach sled: reads see them first (read-your-writes across the
//! records of one group), and at the end they become one sled batch, so the whole group, each
//! record with its index entries, lands atomically.

use std::collections::BTreeMap;

use sled::{Batch, Db};

use crate::StoreError;

#[derive(Default)]
pub(crate) struct Pending {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Posting-list chunks touched in this group, decoded (empty = to delete). Chunk keys live
    /// here only, never in `writes`, and are encoded once when the group is committed.
    chunks: BTreeMap<Vec<u8>, Vec<u64>>,
    /// The last chunk of each term touched in this group (appends go there).
    tails: std::collections::HashMap<Vec<u8>, Vec<u8>>,
}

impl Pending {
    pub(crate) fn get(&self, db: &Db, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(db.get(key)?.map(|v| v.to_vec())),
        }
    }

    pub(crate) fn contains(&self, db: &Db, key: &[u8]) -> Result<bool, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.is_some()),
            None => Ok(db.contains_key(key)?),
        }
    }

    pub(crate) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub(crate) fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// The greatest live chunk key `k` with `prefix ≤ k ≤ upto` that starts with `prefix`,
    /// among committed chunks and this group's.
    pub(crate) fn last_chunk_at_or_below(
        &self,
        db: &Db,
        prefix: &[u8],
        upto: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut from_db = None;
        for entry in db.range(prefix.to_vec()..=upto.to_vec()).rev() {
            let (k, _) = entry?;
            if !k.starts_with(prefix) {
                break;
            }
            if self.chunks.get(k.as_ref()).is_some_and(Vec::is_empty) {
                continue; // emptied in this group
            }
            from_db = Some(k.to_vec());
            break;
        }
        let from_group = self
            .chunks
            .range(prefix.to_vec()..=upto.to_vec())
            .rev()
            .find(|(k, v)| k.starts_with(prefix) && !v.is_empty())
            .map(|(k, _)| k.clone());
        Ok(from_db.max(from_group))
    }

    /// A chunk's orders, loaded once per group and then edited in place.
    pub(crate) fn chunk(&mut self, db: &Db, key: &[u8]) -> Result<&mut Vec<u64>, StoreError> {
        if !self.chunks.contains_key(key) {
            let orders = db.get(key)?.map(|v| crate::postings::decode(&v)).unwrap_or_default();
            self.chunks.insert(key.to_vec(), orders);
        }
        Ok(self.chunks.get_mut(key).expect("inserted above"))
    }

    pub(crate) fn tail(&self, prefix: &[u8]) -> Option<&Vec<u8>> {
        self.tails.get(prefix)
    }

    pub(crate) fn set_tail(&mut self, prefix: &[u8], key: Vec<u8>) {
        self.tails.insert(prefix.to_vec(), key);
    }

    pub(crate) fn clear_tail(&mut self, prefix: &[u8]) {
        self.tails.remove(prefix);
    }

    pub(crate) fn into_batch(self) -> Batch {
        let mut batch = Batch::default();
        for (k, orders) in self.chunks {
            if orders.is_empty() {
                batch.remove(k);
            } else {
                batch.insert(k, crate::postings::encode(&orders));
            }
        }
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.chunks.is_empty()
    }
}
