//! Catch-up by change-log ranges (protocol.md §8.4, log mode): a peer asks from the last `next`
//! it got from us; we send the records of the `Put` entries that are still stored, with their
//! contracts, in at most ~768 KiB per answer. Reconcile mode is refused with `NotFound`
//! (implementations may offer either; log mode is what this node asks for).

use std::collections::BTreeMap;

use capmesh_store::{ChangeOp, Item, RecordType};
use capmesh_types::PeerId;
use capmesh_wire::{Advert, AnyRecord, Body, Code, ErrorBody, Signed, Sync, SyncResult};
use tokio::sync::mpsc;

use crate::{Mesh, MeshError, error_body, lock};

/// Answer budget: leaves room under the 1 MiB frame for the envelope around it.
const ANSWER_BUDGET: usize = 768 * 1024;
/// Peers whose sync position is remembered.
const MAX_SYNC_POSITIONS: usize = 4096;
/// Most change-log entries served per request.
const MAX_SERVED: u32 = 2048;

impl Mesh {
    pub(crate) fn serve_sync(&self, sync: &Sync) -> Result<SyncResult, ErrorBody> {
        let (from, limit) = match sync {
            Sync::Log { from, limit } => (*from, (*limit).clamp(1, MAX_SERVED)),
            Sync::Reconcile { .. } => {
                return Err(error_body(
                    Code::NotFound,
                    "this node serves Sync in log mode only",
                    false,
                ));
            }
        };
        let store = &self.inner.store;
        let internal =
            |e: capmesh_store::StoreError| error_body(Code::Internal, e.to_string(), true);
        let head = store.head();
        let changes = store.changes(from, limit as usize).map_err(internal)?;
        let limits = self.inner.config.rules.limits;
        let mut result = SyncResult {
            records: Vec::new(),
            contracts: Vec::new(),
            next: from,
            head,
            ranges: Vec::new(),
        };
        let mut contracts = BTreeMap::new();
        let mut size = 0usize;
        for change in changes {
            let stored = match change.op {
                ChangeOp::Put => store.record(&change.id).map_err(internal)?,
                ChangeOp::Delete => None,
            };
            if let Some((kind, bytes)) = stored {
                if size + bytes.len() > ANSWER_BUDGET && !result.records.is_empty() {
                    break;
                }
                size += bytes.len();
                let bad = |e: capmesh_wire::VerifyError| internal(e.into());
                let record = match kind {
                    RecordType::Advert => {
                        let advert = Signed::<Advert>::from_bytes(&bytes, limits).map_err(bad)?;
                        let cap = advert.decode(limits).map_err(bad)?.capability;
                        if !contracts.contains_key(&cap)
                            && let Some(c) = store.contract(&cap).map_err(internal)?
                        {
                            // Contracts count against the budget too (up to 32 KiB each).
                            size += capmesh_wire::cbor::to_vec(&c).map(|b| b.len()).unwrap_or(0);
                            contracts.insert(cap, c);
                        }
                        AnyRecord::Advert(advert)
                    }
                    RecordType::Retirement => {
                        AnyRecord::Retirement(Signed::from_bytes(&bytes, limits).map_err(bad)?)
                    }
                    RecordType::Attestation => {
                        AnyRecord::Attestation(Signed::from_bytes(&bytes, limits).map_err(bad)?)
                    }
                };
                result.records.push(record);
            }
            result.next = change.seq + 1;
        }
        if result.next == from {
            // Nothing at or after `from`: the asker is up to date.
            result.next = head + 1;
        }
        result.contracts = contracts.into_values().collect();
        Ok(result)
    }

    /// Catches up with `peer` from where the last sync with it ended, until its head.
    pub async fn sync_with(&self, peer: PeerId) -> Result<u64, MeshError> {
        let mut stored = 0u64;
        for _round in 0..10_000 {
            let from = lock(&self.inner.sync_from).get(&peer).copied().unwrap_or(0);
            let body = Sync::Log { from, limit: self.inner.config.sync_batch };
            let Some(answer) = self.rpc(peer, Vec::new(), body).await? else {
                return Err(MeshError::Unexpected("an acknowledgement to Sync".into(), peer));
            };
            let Body::SyncResult(result) = answer.payload.body else {
                return Err(MeshError::Unexpected(
                    format!("{:?} to Sync", answer.payload.kind()),
                    peer,
                ));
            };
            let items = items_of(result.records, result.contracts, self.inner.config.rules.limits);
            let outcomes = self.insert_many(items).await;
            for outcome in outcomes {
                match outcome {
                    Ok(capmesh_store::Outcome::Stored { .. }) => stored += 1,
                    Ok(_) => {}
                    // Expired or superseded meanwhile, or forged: the next record still counts.
                    Err(e) => tracing::debug!(%peer, error = %e, "synced record refused"),
                }
            }
            if result.next <= from {
                return Err(MeshError::Unexpected(
                    "a Sync answer that does not advance".into(),
                    peer,
                ));
            }
            {
                let mut positions = lock(&self.inner.sync_from);
                if !positions.contains_key(&peer) && positions.len() >= MAX_SYNC_POSITIONS {
                    // Forgetting a position only costs a sync from 0 with that peer.
                    if let Some(victim) = positions.keys().next().copied() {
                        positions.remove(&victim);
                    }
                }
                positions.insert(peer, result.next);
            }
            if result.next > result.head {
                break;
            }
        }
        self.bump(|s| {
            s.syncs += 1;
            s.synced_records += stored;
        });
        Ok(stored)
    }
}

impl Mesh {
    /// Writes the connected peers and their addresses into the replica's peer book, so a
    /// restarted node can reconnect (and catch up) without configured bootstrap peers.
    pub async fn remember_peers(&self) {
        let Ok(peers) = self.inner.net.peers().await else { return };
        let now = crate::now_ms();
        let store = self.inner.store.clone();
        let entries: Vec<capmesh_store::PeerEntry> = peers
            .into_iter()
            .filter(|p| p.connected && !p.addrs.is_empty())
            .map(|p| capmesh_store::PeerEntry {
                peer: p.peer,
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                last_seen: now,
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for entry in &entries {
                if let Err(e) = store.put_peer(entry) {
                    tracing::debug!(error = %e, "peer book write failed");
                }
            }
        })
        .await;
    }
}

/// Pairs synced adverts with the contracts sent beside them. An advert whose contract is
/// missing is still offered: the replica may already hold the contract.
fn items_of(
    records: Vec<AnyRecord>,
    contracts: Vec<capmesh_wire::Contract>,
    limits: capmesh_wire::cbor::Limits,
) -> Vec<Item> {
    let by_id: BTreeMap<_, _> = contracts
        .into_iter()
        .filter_map(|c| Some((capmesh_contract::capability_id(&c).ok()?, c)))
        .collect();
    records
        .into_iter()
        .filter_map(|r| match r {
            AnyRecord::Advert(advert) => {
                let cap = advert.decode(limits).ok()?.capability;
                let contract = by_id.get(&cap)?.clone();
                Some(Item::Advert { advert, contract })
            }
            AnyRecord::Retirement(r) => Some(Item::Retirement(r)),
            AnyRecord::Attestation(a) => Some(Item::Attestation(a)),
        })
        .collect()
}

/// Connected peers synced with each period. A few in turn, not all: anti-entropy needs only
/// some, and a sync with every peer each minute would keep every connection busy (the network
/// trims quiet connections only).
const PERIODIC_PEERS: usize = 4;

/// Catch-up on connect, and each period a sync with the next few connected peers in turn.
pub(crate) async fn run(mesh: Mesh, mut queue: mpsc::Receiver<PeerId>) {
    let mut tick = tokio::time::interval(mesh.inner.config.sync_every);
    tick.tick().await;
    let mut turn = 0usize;
    loop {
        let peers = tokio::select! {
            _ = mesh.inner.cancel.cancelled() => return,
            peer = queue.recv() => match peer {
                Some(p) => vec![p],
                None => return,
            },
            _ = tick.tick() => {
                mesh.remember_peers().await;
                let mut peers: Vec<PeerId> = match mesh.inner.net.peers().await {
                    Ok(peers) => peers.into_iter().filter(|p| p.connected).map(|p| p.peer).collect(),
                    Err(_) => return,
                };
                peers.sort_by_key(|p| p.to_string());
                let n = peers.len();
                let next: Vec<PeerId> =
                    (0..PERIODIC_PEERS.min(n)).map(|k| peers[(turn + k) % n]).collect();
                turn = turn.wrapping_add(PERIODIC_PEERS);
                next
            }
        };
        for peer in peers {
            match mesh.sync_with(peer).await {
                Ok(n) => tracing::debug!(%peer, stored = n, "synced"),
                Err(e) => {
                    mesh.bump(|s| s.sync_failures += 1);
                    tracing::debug!(%peer, error = %e, "sync failed");
                }
            }
        }
    }
}
