//! A group's writes before they reach sled: reads see them first (read-your-writes across the
//! records of one group), and at the end they become one sled batch, so the whole group, each
//! record with its index entries, lands atomically.

use std::collections::BTreeMap;

use sled::{Batch, Db};

use crate::StoreError;

#[derive(Default)]
pub(crate) struct Pending {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
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

    /// The greatest live key `k` with `prefix ≤ k ≤ upto` that starts with `prefix`.
    pub(crate) fn last_at_or_below(
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
            if matches!(self.writes.get(k.as_ref()), Some(None)) {
                continue; // deleted in this group
            }
            from_db = Some(k.to_vec());
            break;
        }
        let from_pending = self
            .writes
            .range(prefix.to_vec()..=upto.to_vec())
            .rev()
            .find(|(k, v)| k.starts_with(prefix) && v.is_some())
            .map(|(k, _)| k.clone());
        Ok(from_db.max(from_pending))
    }

    pub(crate) fn into_batch(self) -> Batch {
        let mut batch = Batch::default();
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}
