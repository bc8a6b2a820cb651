//! The local API's backend: maps API requests onto the mesh and the replica, and their
//! results and errors onto the API's JSON types.

use std::time::{Duration, Instant};

use capmesh_api::{
    ApiError, Backend, FindDone, FindEvent, FindHit, FindRequest, GossipStatus, PeerInfo,
    PublishRequest, Published, QueryPage, QueryRequest, ReplicaStatus, Retired, Source, Status,
};
use capmesh_mesh::{Mesh, MeshError};
use capmesh_store::{Order, Query, Store};
use capmesh_types::Cid;
use capmesh_wire::Contract;
use tokio::sync::mpsc;

use crate::registry;

#[derive(Debug)]
pub(crate) struct NodeApi {
    mesh: Mesh,
    store: Store,
    started: Instant,
}

impl NodeApi {
    pub(crate) fn new(mesh: Mesh, store: Store) -> Self {
        Self { mesh, store, started: Instant::now() }
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
            })
            .collect())
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published, ApiError> {
        let contract: Contract = serde_json::from_value(req.contract)
            .map_err(|e| ApiError::bad_request(format!("not a contract: {e}")))?;
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
                        source: match f.source {
                            capmesh_mesh::Source::Replica => Source::Replica,
                            capmesh_mesh::Source::Kademlia => Source::Kademlia,
                        },
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
}
