//! Posting lists: for each index term, the insertion orders of the live adverts that have it,
//! sorted, in chunks of at most `Config::posting_chunk` orders under
//! `p ‖ kind ‖ term ‖ first order`.
//!
//! One key per chunk instead of one per (term, advert): sled's cost is per key written, and a
//! group of adverts sharing popular terms (tags, words) updates each chunk once.

use sled::Db;

use crate::{StoreError, keys, pending::Pending};

/// The kinds of posting lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Every live advert (empty term).
    All,
    /// By capability id (36 bytes).
    Capability,
    /// By provider key (32 bytes).
    Provider,
    Tag,
    Name,
    Word,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::All => b'a',
            Kind::Capability => b'c',
            Kind::Provider => b'v',
            Kind::Tag => b't',
            Kind::Name => b'n',
            Kind::Word => b'w',
        }
    }

    /// Text terms end with a 0 byte so that one term is never a prefix of another's keys;
    /// binary terms have a fixed length instead.
    fn is_text(self) -> bool {
        matches!(self, Kind::Tag | Kind::Name | Kind::Word)
    }
}

/// `p ‖ kind ‖ term (‖ 0)`: the prefix of every chunk of one term.
pub(crate) fn term_prefix(kind: Kind, term: &[u8]) -> Vec<u8> {
    let mut out = keys::cat(&[&[keys::POSTING, kind.byte()], term]);
    if kind.is_text() {
        out.push(0);
    }
    out
}

/// `p ‖ kind ‖ partial`: every term of `kind` starting with `partial` (name prefixes).
pub(crate) fn partial_prefix(kind: Kind, partial: &[u8]) -> Vec<u8> {
    keys::cat(&[&[keys::POSTING, kind.byte()], partial])
}

pub(crate) fn decode(value: &[u8]) -> Vec<u64> {
    value.chunks_exact(8).filter_map(|c| c.try_into().ok().map(u64::from_be_bytes)).collect()
}

pub(crate) fn encode(orders: &[u64]) -> Vec<u8> {
    orders.iter().flat_map(|o| o.to_be_bytes()).collect()
}

fn chunk_key(prefix: &[u8], first: u64) -> Vec<u8> {
    keys::cat(&[prefix, &first.to_be_bytes()])
}

/// Adds `order` (greater than every order already in the list) to a term's list, in its last
/// chunk while that holds fewer than `chunk` orders.
pub(crate) fn add(
    p: &mut Pending,
    db: &Db,
    prefix: &[u8],
    order: u64,
    chunk: usize,
) -> Result<(), StoreError> {
    let tail = match p.tail(prefix) {
        Some(t) => Some(t.clone()),
        None => p.last_chunk_at_or_below(db, prefix, &chunk_key(prefix, u64::MAX))?,
    };
    if let Some(tail) = tail {
        let orders = p.chunk(db, &tail)?;
        if orders.len() < chunk.max(1) {
            orders.push(order);
            p.set_tail(prefix, tail);
            return Ok(());
        }
    }
    let key = chunk_key(prefix, order);
    p.chunk(db, &key)?.push(order);
    p.set_tail(prefix, key);
    Ok(())
}

/// Removes `order` from a term's list (a no-op when absent). An emptied chunk is deleted.
pub(crate) fn remove(
    p: &mut Pending,
    db: &Db,
    prefix: &[u8],
    order: u64,
) -> Result<(), StoreError> {
    let Some(key) = p.last_chunk_at_or_below(db, prefix, &chunk_key(prefix, order))? else {
        return Ok(());
    };
    let orders = p.chunk(db, &key)?;
    if let Ok(at) = orders.binary_search(&order) {
        orders.remove(at);
    }
    if orders.is_empty() && p.tail(prefix) == Some(&key) {
        // The tail is gone; the next append finds the new tail again.
        p.clear_tail(prefix);
    }
    Ok(())
}

/// Whether a term's list holds `order` (reads committed data only: queries).
pub(crate) fn contains(db: &Db, prefix: &[u8], order: u64) -> Result<bool, StoreError> {
    let upto = chunk_key(prefix, order);
    // The chunk that would hold `order`: the last one starting at or before it.
    match db.range(prefix.to_vec()..=upto).next_back().transpose()? {
        Some((k, v)) if k.starts_with(prefix) && k.len() == prefix.len() + 8 => {
            Ok(decode(&v).binary_search(&order).is_ok())
        }
        _ => Ok(false),
    }
}

/// The nearest order of a term's list at or after `order` (`forward`), or at or before it.
pub(crate) fn seek(
    db: &Db,
    prefix: &[u8],
    order: u64,
    forward: bool,
) -> Result<Option<u64>, StoreError> {
    let upto = chunk_key(prefix, order);
    // The chunk that would hold `order`: the last one starting at or before it.
    if let Some((k, v)) = db.range(prefix.to_vec()..=upto).next_back().transpose()?
        && k.starts_with(prefix)
        && k.len() == prefix.len() + 8
    {
        let orders = decode(&v);
        let found = if forward {
            orders.iter().copied().find(|o| *o >= order)
        } else {
            orders.iter().rev().copied().find(|o| *o <= order)
        };
        if found.is_some() || !forward {
            return Ok(found);
        }
    } else if !forward {
        return Ok(None);
    }
    // Forward past the chunk: the first order of the next chunk.
    let from = chunk_key(prefix, order.saturating_add(1));
    match db.range(from..).next().transpose()? {
        Some((k, v)) if k.starts_with(prefix) && k.len() == prefix.len() + 8 => {
            Ok(decode(&v).first().copied())
        }
        _ => Ok(None),
    }
}
