//! Discovery by capability id (protocol.md §8.3, §10.2): the local replica and a Kademlia
//! provider lookup run in parallel; providers not yet known are asked with `Discover`, what
//! they send is verified (the contract must hash to the id) and stored, and every result is
//! reported as it arrives with where it came from.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use capmesh_net::{Multiaddr, ProviderEvent};
use capmesh_store::{Item, Query, RecordType};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Advert, Body, Code, Contract, Discover, DiscoverResult, ErrorBody, Signed};
use tokio::{sync::mpsc, task::JoinSet};

use crate::{Mesh, MeshError, error_body, kad_key, now_ms};

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This node's replica (fed by gossip and sync).
    Replica,
    /// A provider found through Kademlia, then asked with `Discover`.
    Kademlia,
}

/// One provider of the capability, verified.
#[derive(Debug, Clone)]
pub struct Found {
    pub source: Source,
    /// Kademlia requests the lookup had made when this provider was found (0 from the replica).
    pub kad_requests: u32,
    pub advert_id: Cid,
    pub advert: Advert,
    pub contract_name: String,
    pub contract_version: String,
    /// The contract, checked to hash to the capability id.
    pub contract: Arc<Contract>,
    pub elapsed: Duration,
}

/// What `find` reports: results, then one `Done`.
#[derive(Debug, Clone)]
pub enum FindEvent {
    Found(Box<Found>),
    Done { hits: u32, kad_requests: u32, elapsed: Duration, error: Option<String> },
}

/// A verified advert (with its id) and its contract, as a provider sent them.
type Discovered = (Cid, Advert, Contract);

/// Most adverts served per `Discover` answer.
const MAX_DISCOVER: usize = 200;

impl Mesh {
    /// Finds providers of `cap`; results arrive on the channel as they are verified, then one
    /// [`FindEvent::Done`]. At most `limit` results; the search stops after `timeout`
    /// (default `find_timeout`). Dropping the receiver stops the search.
    pub fn find(
        &self,
        cap: Cid,
        limit: u32,
        timeout: Option<Duration>,
    ) -> mpsc::Receiver<FindEvent> {
        let start = Instant::now();
        let (tx, rx) = mpsc::channel(64);
        let mesh = self.clone();
        let timeout = timeout.unwrap_or(self.inner.config.find_timeout);
        self.spawn_owned(async move {
            let done = mesh.run_find(cap, limit.max(1), timeout, &tx, start).await;
            // Recorded before `Done` goes out: whoever saw it sees the find counted.
            mesh.bump(|s| s.find_duration.observe(start.elapsed()));
            if let Some(done) = done {
                let _ = tx.send(done).await;
            }
        });
        rx
    }

    /// Reports results on `tx`; returns the `Done` to send, or `None` if the reader left.
    async fn run_find(
        &self,
        cap: Cid,
        limit: u32,
        timeout: Duration,
        tx: &mpsc::Sender<FindEvent>,
        start: Instant,
    ) -> Option<FindEvent> {
        let deadline = start + timeout;
        let mut hits = 0u32;
        let mut seen: HashSet<PeerId> = HashSet::new();
        // Kademlia first so that it runs while the replica is read.
        let lookup = self.inner.net.get_providers(kad_key(&cap)).await;
        // A replica holds a capability's contract with its adverts, or none of them.
        let stored = self.inner.store.contract(&cap).ok().flatten().map(Arc::new);
        let replica = if stored.is_some() { self.replica_adverts(&cap) } else { Vec::new() };
        for (advert_id, advert) in replica {
            let contract = stored.clone().expect("checked above");
            if hits >= limit {
                break;
            }
            seen.insert(advert.provider);
            self.hit(&mut hits, start);
            let found = Found {
                source: Source::Replica,
                kad_requests: 0,
                advert_id,
                advert,
                contract_name: contract.name.clone(),
                contract_version: contract.version.clone(),
                contract,
                elapsed: start.elapsed(),
            };
            if tx.send(FindEvent::Found(Box::new(found))).await.is_err() {
                return None;
            }
        }
        let mut error = None;
        let mut kad_requests = 0;
        let mut asks: JoinSet<(u32, Result<Vec<Discovered>, MeshError>)> = JoinSet::new();
        let mut queue: Vec<(PeerId, Vec<Multiaddr>, u32)> = Vec::new();
        let mut lookup = match lookup {
            Ok(rx) => Some(rx),
            Err(e) => {
                error = Some(e.to_string());
                None
            }
        };
        let parallel = self.inner.config.discover_parallelism.max(1);
        loop {
            while asks.len() < parallel {
                let Some((peer, addrs, requests)) = queue.pop() else { break };
                let mesh = self.clone();
                asks.spawn(async move { (requests, mesh.discover_from(peer, addrs, cap).await) });
            }
            if hits >= limit || (lookup.is_none() && asks.is_empty() && queue.is_empty()) {
                break;
            }
            tokio::select! {
                // Nobody listens any more: stop asking (and do not count the rest as find time).
                () = tx.closed() => return None,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    error.get_or_insert_with(|| "timed out".to_string());
                    break;
                }
                event = async { lookup.as_mut().expect("guarded").recv().await }, if lookup.is_some() => match event {
                    Some(ProviderEvent::Found { providers, requests }) => {
                        kad_requests = kad_requests.max(requests);
                        for (peer, addrs) in providers {
                            if peer != self.inner.me && seen.insert(peer) {
                                queue.push((peer, addrs, requests));
                            }
                        }
                    }
                    Some(ProviderEvent::Done { requests, error: e }) => {
                        kad_requests = kad_requests.max(requests);
                        if let Some(e) = e {
                            error.get_or_insert(e.to_string());
                        }
                        lookup = None;
                    }
                    None => lookup = None,
                },
                Some(joined) = asks.join_next(), if !asks.is_empty() => {
                    let Ok((requests, result)) = joined else { continue };
                    match result {
                        Ok(found) => {
                            for (advert_id, advert, contract) in found {
                                if hits >= limit {
                                    break;
                                }
                                self.hit(&mut hits, start);
                                let found = Found {
                                    source: Source::Kademlia,
                                    kad_requests: requests,
                                    advert_id,
                                    advert,
                                    contract_name: contract.name.clone(),
                                    contract_version: contract.version.clone(),
                                    contract: Arc::new(contract),
                                    elapsed: start.elapsed(),
                                };
                                if tx.send(FindEvent::Found(Box::new(found))).await.is_err() {
                                    return None;
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "discover from a provider failed"),
                    }
                }
            }
        }
        Some(FindEvent::Done { hits, kad_requests, elapsed: start.elapsed(), error })
    }

    /// Counts a result; the first one's latency is recorded.
    fn hit(&self, hits: &mut u32, start: Instant) {
        if *hits == 0 {
            self.bump(|s| s.find_first_hit.observe(start.elapsed()));
        }
        *hits += 1;
    }

    /// Live adverts for `cap` in the replica.
    fn replica_adverts(&self, cap: &Cid) -> Vec<(Cid, Advert)> {
        let q = Query { capability: Some(*cap), limit: 100, ..Query::default() };
        let Ok(page) = self.inner.store.query(&q, now_ms()) else { return Vec::new() };
        let limits = self.inner.config.rules.limits;
        page.hits
            .iter()
            .filter_map(|hit| {
                let (_, bytes) = self.inner.store.record(&hit.id).ok()??;
                let advert =
                    Signed::<Advert>::from_bytes(&bytes, limits).ok()?.decode(limits).ok()?;
                Some((hit.id, advert))
            })
            .collect()
    }

    /// Asks `peer` for `cap` with `Discover`, verifies the answer and stores it.
    async fn discover_from(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        cap: Cid,
    ) -> Result<Vec<Discovered>, MeshError> {
        let body = Discover { ids: vec![cap], filter: None, limit: 50, cursor: None };
        let Some(answer) = self.rpc(peer, addrs, body).await? else {
            return Err(MeshError::Unexpected("an acknowledgement to Discover".into(), peer));
        };
        let Body::DiscoverResult(result) = answer.payload.body else {
            return Err(MeshError::Unexpected(
                format!("{:?} to Discover", answer.payload.kind()),
                peer,
            ));
        };
        // The contract must be the one the id names, whatever the peer claims.
        let mut contract = None;
        for c in result.contracts {
            let actual = capmesh_contract::capability_id(&c)
                .map_err(|e| MeshError::Unexpected(e.to_string(), peer))?;
            if actual == cap {
                contract = Some(c);
            } else {
                return Err(capmesh_wire::VerifyError::CidMismatch { expected: cap, actual }.into());
            }
        }
        let contract = match contract {
            Some(c) => c,
            None => self.inner.store.contract(&cap)?.ok_or_else(|| {
                MeshError::Unexpected("no contract for the capability".into(), peer)
            })?,
        };
        let now = now_ms();
        let mut found = Vec::new();
        let mut items = Vec::new();
        for signed in result.adverts {
            let verified = match signed.verify(now, &self.inner.config.rules) {
                Ok(v) if v.record.capability == cap => v,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "discovered advert refused");
                    continue;
                }
            };
            items.push(Item::Advert { advert: signed, contract: contract.clone() });
            found.push((verified.id, verified.record, contract.clone()));
        }
        // Verified already: the caller need not wait for the replica's flush. (Stale or over a
        // cap is still a valid answer to report.)
        let mesh = self.clone();
        self.spawn_owned(async move {
            for outcome in mesh.insert_many(items).await {
                if let Err(e) = outcome {
                    tracing::debug!(error = %e, "discovered advert not stored");
                }
            }
        });
        Ok(found)
    }

    /// Answers `Discover` from the replica: by ids (capability ids → contract and its current
    /// adverts; record ids → that record) and by filter.
    pub(crate) fn serve_discover(&self, d: &Discover) -> Result<DiscoverResult, ErrorBody> {
        let store = &self.inner.store;
        let internal =
            |e: capmesh_store::StoreError| error_body(Code::Internal, e.to_string(), true);
        let limits = self.inner.config.rules.limits;
        let now = now_ms();
        let limit = (d.limit as usize).clamp(1, MAX_DISCOVER);
        let mut out = DiscoverResult {
            contracts: Vec::new(),
            adverts: Vec::new(),
            attestations: Vec::new(),
            retirements: Vec::new(),
            cursor: None,
        };
        let mut contract_ids = HashSet::new();
        let mut advert_ids = Vec::new();
        for id in d.ids.iter().take(MAX_DISCOVER) {
            if let Some(contract) = store.contract(id).map_err(internal)? {
                contract_ids.insert(*id);
                out.contracts.push(contract);
                let q = Query { capability: Some(*id), limit, ..Query::default() };
                advert_ids
                    .extend(store.query(&q, now).map_err(internal)?.hits.into_iter().map(|h| h.id));
            } else if let Some((kind, bytes)) = store.record(id).map_err(internal)? {
                let bad = |e: capmesh_wire::VerifyError| internal(e.into());
                match kind {
                    RecordType::Advert => advert_ids.push(*id),
                    RecordType::Retirement => {
                        out.retirements.push(Signed::from_bytes(&bytes, limits).map_err(bad)?)
                    }
                    RecordType::Attestation => {
                        out.attestations.push(Signed::from_bytes(&bytes, limits).map_err(bad)?)
                    }
                }
            }
        }
        if let Some(filter) = &d.filter {
            let cursor = d.cursor.as_ref().map(|c| c.0.clone());
            let q = Query { filter: filter.clone(), limit, cursor, ..Query::default() };
            let page = store.query(&q, now).map_err(internal)?;
            advert_ids.extend(page.hits.into_iter().map(|h| h.id));
            out.cursor = page.next.map(capmesh_wire::repr::Bytes);
        }
        for id in advert_ids.into_iter().take(limit) {
            let Some((_, bytes)) = store.record(&id).map_err(internal)? else { continue };
            let advert =
                Signed::<Advert>::from_bytes(&bytes, limits).map_err(|e| internal(e.into()))?;
            let cap = advert.decode(limits).map_err(|e| internal(e.into()))?.capability;
            if contract_ids.insert(cap)
                && let Some(c) = store.contract(&cap).map_err(internal)?
            {
                out.contracts.push(c);
            }
            out.adverts.push(advert);
        }
        Ok(out)
    }
}
