//! The local API's backend: maps API requests onto the mesh, the market and the replica, and
//! their results and errors onto the API's JSON types.

use std::time::{Duration, Instant};

use capmesh_agents::Agents;
use capmesh_api::{
    ApiError, AttestRequest, AttestationList, AttestationsRequest, Attested, Backend, BlockRequest,
    Blocked, CallAccepted, CallRequest, CallResult, CallStatus, ContractInfo, FindDone, FindEvent,
    FindHit, FindRequest, GossipStatus, LedgerPage, PeerInfo, Principal, PublishRequest, Published,
    QueryPage, QueryRequest, ReceiptEntries, ReplicaStatus, Retired, RuntimeLink, Sequenced,
    SessionCreated, SessionId, SessionInfo, SessionList, SessionRequest, Source, Status, TraceId,
};
use capmesh_market::Market;
use capmesh_mesh::{Mesh, MeshError};
use capmesh_store::{LedgerEntry, Order, Query, Store};
use capmesh_types::Cid;
use capmesh_wire::{CallId, Contract};
use tokio::sync::mpsc;

use crate::registry::{self, ledger_entry_json as entry_json};

/// Lifetime of an attestation that names no expiry: 30 days.
pub(crate) const DEFAULT_ATTESTATION_MS: u64 = 30 * 86_400_000;

#[derive(Debug)]
pub(crate) struct NodeApi {
    /// Signs the ledger's head (`GET /v1/receipts/head`).
    key: capmesh_types::NodeKey,
    mesh: Mesh,
    store: Store,
    market: Market,
    agents: Agents,
    started: Instant,
}

impl NodeApi {
    pub(crate) fn new(
        key: capmesh_types::NodeKey,
        mesh: Mesh,
        store: Store,
        market: Market,
        agents: Agents,
    ) -> Self {
        Self { key, mesh, store, market, agents, started: Instant::now() }
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

fn mesh_error(e: MeshError) -> ApiError {
    match e {
        MeshError::Contract(_) => ApiError::bad_request(e.to_string()),
        MeshError::NotPublished(_) => ApiError::not_found(e.to_string()),
        MeshError::Stopped => ApiError::unavailable(e.to_string()),
        e => ApiError::internal(e.to_string()),
    }
}

impl Backend for NodeApi {
    async fn status(&self) -> Result<Status, ApiError> {
        let info =
            self.mesh.net().info().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        let stats = self.store.stats();
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || store.len())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        Ok(Status {
            peer_id: info.peer_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            listen_addrs: info.listen_addrs.iter().map(|a| a.to_string()).collect(),
            external_addrs: info.external_addrs.iter().map(|a| a.to_string()).collect(),
            connected_peers: info.connected_peers,
            kad_mode: if info.kad_server { "server" } else { "client" }.to_string(),
            routing_table_peers: info.routing_table_peers,
            replica: ReplicaStatus {
                records,
                stored: stats.stored,
                duplicates: stats.duplicates,
                refused: stats.refused_verify + stats.refused_stale + stats.refused_other,
                dropped: stats.dropped_signer_cap + stats.dropped_total_cap,
                expired: stats.expired,
            },
            gossip: GossipStatus {
                accepted: info.gossip.accepted,
                ignored: info.gossip.ignored,
                rejected: info.gossip.rejected,
                rate_limited: info.gossip.rate_limited,
            },
            published: self.mesh.published(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            reachability: info.reachability.as_str().to_string(),
            relay_reservations: info.relay_reservations.iter().map(|a| a.to_string()).collect(),
        })
    }

    async fn peers(&self) -> Result<Vec<PeerInfo>, ApiError> {
        let peers =
            self.mesh.net().peers().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        let now = crate::now_ms();
        Ok(peers
            .into_iter()
            .map(|p| PeerInfo {
                peer_id: p.peer,
                addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
                connected: p.connected,
                last_seen: if p.connected { now } else { 0 },
                connection: p.connection.map_or("none", |c| c.as_str()).to_string(),
            })
            .collect())
    }

    async fn blocked(&self) -> Result<Blocked, ApiError> {
        self.block(BlockRequest::default()).await
    }

    async fn block(&self, req: BlockRequest) -> Result<Blocked, ApiError> {
        match self.mesh.net().block(req.block, req.unblock).await {
            Ok(peers) => Ok(Blocked { peers }),
            Err(e @ capmesh_net::NetError::TooManyBlocked { .. }) => {
                Err(ApiError::bad_request(e.to_string()))
            }
            Err(e) => Err(ApiError::unavailable(e.to_string())),
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published, ApiError> {
        let contract: Contract = serde_json::from_value(req.contract)
            .map_err(|e| ApiError::bad_request(format!("not a contract: {e}")))?;
        // An advert nothing serves is a dead end for every caller: only on purpose.
        if !req.announce_only {
            let id = capmesh_contract::check(&contract)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if !self.market.served().contains(&id) {
                return Err(ApiError::conflict(format!(
                    "nothing on this node serves {id} ({:?}): serve it with a runtime — a \
                     [[serve]] table in config.toml, or an agent's runtime attached to a session \
                     (specs/api.md §4) — or set \"announce_only\": true (capmesh cap publish \
                     --announce-only) to advertise it without serving it (calls to it then fail \
                     with NotFound)",
                    contract.name
                )));
            }
        }
        let ttl = req.ttl_ms.map(Duration::from_millis);
        let p =
            self.mesh.publish(contract, req.price, req.limits, ttl).await.map_err(mesh_error)?;
        Ok(Published {
            capability: p.capability,
            advert_id: p.advert_id,
            seq: p.seq,
            expires: p.expires,
        })
    }

    async fn retire(&self, capability: Cid) -> Result<Retired, ApiError> {
        let r = self.mesh.retire(capability).await.map_err(mesh_error)?;
        Ok(Retired { capability: r.capability, retirement_id: r.retirement_id, seq: r.seq })
    }

    async fn find(&self, req: FindRequest) -> Result<mpsc::Receiver<FindEvent>, ApiError> {
        let limit = req.limit.unwrap_or(20).clamp(1, 1000);
        let timeout = req.timeout_ms.map(|ms| Duration::from_millis(ms.clamp(1, 120_000)));
        let mut found = self.mesh.find(req.capability, limit, timeout);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(event) = found.recv().await {
                let event = match event {
                    capmesh_mesh::FindEvent::Found(f) => FindEvent::Hit(FindHit {
                        source: source(f.source),
                        kad_requests: f.kad_requests,
                        provider: f.advert.provider,
                        addrs: f.advert.addrs,
                        capability: f.advert.capability,
                        advert_id: f.advert_id,
                        name: f.contract_name,
                        version: f.contract_version,
                        price: f.advert.price,
                        expires: f.advert.expires,
                        elapsed_ms: f.elapsed.as_millis() as u64,
                    }),
                    capmesh_mesh::FindEvent::Done { hits, kad_requests, elapsed, error } => {
                        FindEvent::Done(FindDone {
                            hits,
                            kad_requests,
                            elapsed_ms: elapsed.as_millis() as u64,
                            error,
                        })
                    }
                };
                // Nobody listening any more: dropping `found` stops the search.
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn contract(&self, capability: Cid) -> Result<ContractInfo, ApiError> {
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.contract(&capability))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        if let Some(contract) = stored {
            return contract_info(capability, &contract, Source::Replica);
        }
        // Not in the replica: one provider's answer is enough, so the first event is that
        // answer or the `Done` of a search that found none. The mesh checked the contract hashes
        // to the id (and stored it); dropping `found` stops the search.
        let mut found = self.mesh.find(capability, 1, None);
        match found.recv().await {
            Some(capmesh_mesh::FindEvent::Found(f)) => {
                contract_info(capability, &f.contract, source(f.source))
            }
            Some(capmesh_mesh::FindEvent::Done { error, .. }) => {
                let why =
                    error.map(|e| format!(" (the search ended early: {e})")).unwrap_or_default();
                Err(ApiError::not_found(format!(
                    "no contract for capability {capability} in the replica or on the mesh{why}"
                )))
            }
            None => Err(ApiError::unavailable(
                "the search ended without an answer: the node is stopping",
            )),
        }
    }

    async fn query(&self, req: QueryRequest) -> Result<QueryPage, ApiError> {
        let cursor = match &req.cursor {
            Some(hex) => Some(registry::parse_cursor(hex).map_err(ApiError::bad_request)?),
            None => None,
        };
        let limit = req.limit.unwrap_or(50) as usize;
        if limit == 0 || limit > capmesh_store::MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "limit must be 1 to {}",
                capmesh_store::MAX_LIMIT
            )));
        }
        let q = Query {
            capability: req.capability,
            filter: req.filter,
            order: if req.newest { Order::Newest } else { Order::Oldest },
            limit,
            cursor,
        };
        let store = self.store.clone();
        let page = tokio::task::spawn_blocking(move || store.query(&q, crate::now_ms()))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        Ok(registry::query_page(&page))
    }

    async fn receipts(&self, from: u64, limit: u32) -> Result<LedgerPage, ApiError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // Length first: entries appended between the two reads are beyond `len` and left
            // for the next page, so `next` never skips one.
            let len = store.ledger_len()?;
            let end = len.min(from.saturating_add(u64::from(limit)));
            let entries = store.ledger_range(from, end.saturating_sub(from) as usize)?;
            Ok::<_, capmesh_store::StoreError>(ledger_page(&store, &entries, from, len))
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    async fn receipt(&self, id: Cid) -> Result<ReceiptEntries, ApiError> {
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || {
            let (receipt, countersignature) = store.ledger_find(&id)?;
            Ok::<_, capmesh_store::StoreError>(receipt.map(|receipt| ReceiptEntries {
                receipt: entry_json(&store, &receipt),
                countersignature: countersignature.as_ref().map(|c| entry_json(&store, c)),
            }))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        found.ok_or_else(|| {
            ApiError::not_found(format!(
                "no receipt {id} in this node's ledger; `capmesh receipts list` shows what it holds"
            ))
        })
    }

    async fn call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<CallResult, ApiError> {
        self.agents.call(principal, call_id, req, trace).await
    }

    async fn cancel(&self, principal: Principal, call_id: CallId) -> Result<bool, ApiError> {
        Ok(self.agents.cancel(principal, call_id))
    }

    async fn start_call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<CallAccepted, ApiError> {
        self.agents.start_call(principal, call_id, req, trace)
    }

    async fn call_status(
        &self,
        principal: Principal,
        call_id: CallId,
    ) -> Result<CallStatus, ApiError> {
        self.agents.call_status(principal, call_id)
    }

    async fn call_events(
        &self,
        principal: Principal,
        call_id: CallId,
        from: u64,
    ) -> Result<mpsc::Receiver<Sequenced>, ApiError> {
        self.agents.call_events(principal, call_id, from)
    }

    fn authenticate(&self, token: &[u8]) -> Option<SessionId> {
        self.agents.authenticate(token)
    }

    async fn open_session(&self, req: SessionRequest) -> Result<SessionCreated, ApiError> {
        self.agents.open_session(req)
    }

    async fn sessions(&self) -> Result<SessionList, ApiError> {
        Ok(self.agents.sessions())
    }

    async fn session(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        self.agents.session(id)
    }

    async fn heartbeat(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        self.agents.heartbeat(id)
    }

    async fn end_session(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        self.agents.end_session(id).await
    }

    async fn attach(&self, id: SessionId) -> Result<RuntimeLink, ApiError> {
        self.agents.attach(id)
    }

    async fn attest(&self, req: AttestRequest) -> Result<Attested, ApiError> {
        if !valid_claim(&req.claim) {
            return Err(ApiError::bad_request(format!(
                "claim {:?} must match ^[a-z0-9][a-z0-9_.:/-]{{0,127}}$ (e.g. member, \
                 org:acme/audited)",
                req.claim
            )));
        }
        let now = crate::now_ms();
        let expires = req.expires_ms.unwrap_or(now.saturating_add(DEFAULT_ATTESTATION_MS));
        if expires <= now {
            return Err(ApiError::bad_request(format!(
                "expires_ms {expires} is not in the future (now is {now}, unix ms)"
            )));
        }
        let signed = self.mesh.attest(req.subject, req.claim, expires).await.map_err(mesh_error)?;
        Ok(Attested { id: signed.id(), attestation: signed })
    }

    async fn ledger_head(&self) -> Result<capmesh_api::LedgerHeadLine, ApiError> {
        let store = self.store.clone();
        // The tip is read under the ledger's lock: a count and hash of one moment.
        let (len, hash) = tokio::task::spawn_blocking(move || store.ledger_tip())
            .await
            .map_err(internal)?
            .map_err(internal)?;
        crate::registry::signed_head(&self.key, len, hash).map_err(internal)
    }

    async fn attestations(
        &self,
        req: AttestationsRequest,
        limit: u32,
    ) -> Result<AttestationList, ApiError> {
        let store = self.store.clone();
        let now = crate::now_ms();
        let found = tokio::task::spawn_blocking(move || {
            store.attestations(
                req.subject.as_ref(),
                req.issuer.as_ref(),
                req.claim.as_deref(),
                now,
                limit as usize,
            )
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let attestations =
            found.into_iter().map(|a| Attested { id: a.id(), attestation: a }).collect();
        Ok(AttestationList { attestations })
    }
}

/// Where a find result came from, as the API says it.
fn source(s: capmesh_mesh::Source) -> Source {
    match s {
        capmesh_mesh::Source::Replica => Source::Replica,
        capmesh_mesh::Source::Kademlia => Source::Kademlia,
    }
}

/// The API's answer for `contract`, found at `source`.
fn contract_info(
    capability: Cid,
    contract: &Contract,
    source: Source,
) -> Result<ContractInfo, ApiError> {
    let contract = serde_json::to_value(contract).map_err(internal)?;
    Ok(ContractInfo { capability, contract, source })
}

/// Whether `claim` matches `^[a-z0-9][a-z0-9_.:/-]{0,127}$` (protocol.md, Attestation).
fn valid_claim(claim: &str) -> bool {
    let mut bytes = claim.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && claim.len() <= 128
        && bytes.all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b':' | b'/' | b'-')
        })
}

/// The page of `entries` read from `from` in a ledger of `len` entries.
fn ledger_page(store: &Store, entries: &[LedgerEntry], from: u64, len: u64) -> LedgerPage {
    let end = from.saturating_add(entries.len() as u64);
    LedgerPage {
        entries: entries.iter().map(|e| entry_json(store, e)).collect(),
        next: (end < len && !entries.is_empty()).then_some(end),
        len,
    }
}
