//! The peer book: addresses and last-seen time of peers, kept across restarts.

use capmesh_types::{PeerId, PublicKey};

use crate::{Store, StoreError, keys};

/// What the node remembers of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub peer: PeerId,
    /// Multiaddrs, as text.
    pub addrs: Vec<String>,
    /// Unix ms.
    pub last_seen: u64,
}

/// Most addresses remembered per peer.
pub const MAX_PEER_ADDRS: usize = 16;

impl Store {
    /// Records a peer (replacing what was known), keeping at most [`MAX_PEER_ADDRS`] addresses.
    pub fn put_peer(&self, entry: &PeerEntry) -> Result<(), StoreError> {
        let addrs: Vec<&str> =
            entry.addrs.iter().take(MAX_PEER_ADDRS).map(String::as_str).collect();
        let value = keys::cat(&[&entry.last_seen.to_be_bytes(), addrs.join("\n").as_bytes()]);
        self.inner
            .db
            .insert(keys::cat(&[&[keys::PEER], entry.peer.public_key().as_bytes()]), value)?;
        Ok(())
    }

    /// Every peer in the book.
    pub fn peers(&self) -> Result<Vec<PeerEntry>, StoreError> {
        self.inner
            .db
            .scan_prefix([keys::PEER])
            .map(|e| {
                let (k, v) = e?;
                let key: [u8; 32] = k
                    .get(1..33)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt("peer key".into()))?;
                let last_seen =
                    keys::u64_at(&v, 0).ok_or_else(|| StoreError::Corrupt("peer entry".into()))?;
                let addrs = std::str::from_utf8(&v[8..])
                    .map_err(|_| StoreError::Corrupt("peer addrs".into()))?;
                Ok(PeerEntry {
                    peer: PeerId::from_public_key(PublicKey::from_bytes(key)),
                    addrs: addrs.split('\n').filter(|a| !a.is_empty()).map(str::to_owned).collect(),
                    last_seen,
                })
            })
            .collect()
    }
}
