//! The local API's backend: maps API requests onto the mesh, the market and the replica, and
//! their results and errors onto the API's JSON types.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use capmesh_api::{
    ApiError, AttestRequest, Attested, Backend, BlockRequest, Blocked, CallFailure, CallRequest,
    CallResult, ContractInfo, ErrorCode, FindDone, FindEvent, FindHit, FindRequest, GossipStatus,
    LedgerEntryJson, LedgerPage, MAX_STREAM_BYTES, Optimize, PeerInfo, PublishRequest, Published,
    QueryPage, QueryRequest, ReceiptEntries, ReplicaStatus, Retired, Source, Status,
};
use capmesh_market::{CallError, CallOutcome, Market, Weights};
use capmesh_mesh::{Mesh, MeshError};
use capmesh_store::{LedgerEntry, LedgerKind, Order, Query, Store};
use capmesh_types::Cid;
use capmesh_wire::{CallId, Contract, repr::Bytes};
use tokio::sync::mpsc;

use crate::registry;

/// Longest deadline a call through the API may ask for: one day.
pub(crate) const MAX_DEADLINE_MS: u64 = 86_400_000;

/// Lifetime of an attestation that names no expiry: 30 days.
pub(crate) const DEFAULT_ATTESTATION_MS: u64 = 30 * 86_400_000;

/// Chunks of a streaming call buffered between the market and the collector.
const CHUNK_QUEUE: usize = 64;

#[derive(Debug)]
pub(crate) struct NodeApi {
    mesh: Mesh,
    store: Store,
    market: Market,
    started: Instant,
}

impl NodeApi {
    pub(crate) fn new(mesh: Mesh, store: Store, market: Market) -> Self {
        Self { mesh, store, market, started: Instant::now() }
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
        let (entries, len) = tokio::task::spawn_blocking(move || {
            // Length first: entries appended between the two reads are beyond `len` and left
            // for the next page, so `next` never skips one.
            let len = store.ledger_len()?;
            let end = len.min(from.saturating_add(u64::from(limit)));
            let entries = store.ledger_range(from, end.saturating_sub(from) as usize)?;
            Ok::<_, capmesh_store::StoreError>((entries, len))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        Ok(ledger_page(&entries, from, len))
    }

    async fn receipt(&self, id: Cid) -> Result<ReceiptEntries, ApiError> {
        let store = self.store.clone();
        let (receipt, countersignature) =
            tokio::task::spawn_blocking(move || store.ledger_find(&id))
                .await
                .map_err(internal)?
                .map_err(internal)?;
        let Some(receipt) = receipt else {
            return Err(ApiError::not_found(format!(
                "no receipt {id} in this node's ledger; `capmesh receipts list` shows what it holds"
            )));
        };
        Ok(ReceiptEntries {
            receipt: entry_json(&receipt),
            countersignature: countersignature.as_ref().map(entry_json),
        })
    }

    async fn call(&self, call_id: CallId, req: CallRequest) -> Result<CallResult, ApiError> {
        let (tx, rx) = mpsc::channel(CHUNK_QUEUE);
        let call = market_request(call_id, req)?.with_chunks(tx);
        // The call runs in its own task, so that a client going away cancels it (the guard)
        // and the task still tells the provider, rather than abandoning it half-way.
        let market = self.market.clone();
        let task = tokio::spawn(async move { collect(market.call(call), rx).await });
        let guard = CancelOnDrop { armed: Some((self.market.clone(), call_id)) };
        let joined = task.await;
        guard.disarm();
        let (result, stream) = joined.map_err(internal)?;
        match result {
            Ok(outcome) => Ok(call_result(outcome, stream)),
            Err(e) => {
                tracing::debug!(?call_id, code = e.code(), error = %e, "call failed");
                Err(call_error(call_id, &e))
            }
        }
    }

    async fn cancel(&self, call_id: CallId) -> Result<bool, ApiError> {
        Ok(self.market.cancel(&call_id))
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

/// Cancels a call when the API request that made it is dropped (its client went away) before
/// the call ended; the call's task then tells the provider and keeps what it answers.
struct CancelOnDrop {
    armed: Option<(Market, CallId)>,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((market, call)) = self.armed.take()
            && market.cancel(&call)
        {
            tracing::debug!(?call, "the API client went away: call cancelled");
        }
    }
}

/// A streaming call's chunks as returned: at most [`MAX_STREAM_BYTES`] in all.
#[derive(Debug, Default)]
struct Stream {
    chunks: Vec<Bytes>,
    bytes: usize,
    truncated: bool,
}

impl Stream {
    fn push(&mut self, chunk: Vec<u8>) {
        if self.truncated || self.bytes.saturating_add(chunk.len()) > MAX_STREAM_BYTES {
            self.truncated = true;
            return;
        }
        self.bytes += chunk.len();
        self.chunks.push(Bytes(chunk));
    }
}

/// Runs `call` while collecting the chunks it sends to `rx`.
async fn collect<F: Future<Output = Result<CallOutcome, CallError>>>(
    call: F,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> (Result<CallOutcome, CallError>, Stream) {
    let mut stream = Stream::default();
    let mut call = std::pin::pin!(call);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            Some(chunk) = rx.recv() => stream.push(chunk),
        }
    };
    while let Ok(chunk) = rx.try_recv() {
        stream.push(chunk);
    }
    (result, stream)
}

/// The market's call request for an API request.
fn market_request(
    call_id: CallId,
    req: CallRequest,
) -> Result<capmesh_market::CallRequest, ApiError> {
    let mut call = capmesh_market::CallRequest::new(req.capability, req.args).with_call_id(call_id);
    if let Some(optimize) = req.optimize {
        call = call.with_weights(weights(optimize)?);
    }
    if let Some(max) = req.max_price {
        call = call.with_max_price(max);
    }
    if let Some(ms) = req.deadline_ms {
        if ms == 0 || ms > MAX_DEADLINE_MS {
            return Err(ApiError::bad_request(format!(
                "deadline_ms must be 1 to {MAX_DEADLINE_MS} (one day), not {ms}"
            )));
        }
        call = call.with_deadline(Duration::from_millis(ms));
    }
    Ok(call)
}

/// Selection weights: each finite and ≥ 0, not all 0; one left out is 0.
fn weights(o: Optimize) -> Result<Weights, ApiError> {
    let w = Weights {
        price: o.price.unwrap_or(0.0),
        latency: o.latency.unwrap_or(0.0),
        reputation: o.reputation.unwrap_or(0.0),
    };
    let all = [("price", w.price), ("latency", w.latency), ("reputation", w.reputation)];
    for (name, value) in all {
        if !value.is_finite() || value < 0.0 {
            return Err(ApiError::bad_request(format!(
                "optimize.{name} must be a finite number ≥ 0, not {value}"
            )));
        }
    }
    if w.price + w.latency + w.reputation <= 0.0 {
        return Err(ApiError::bad_request(
            "optimize needs at least one weight above 0, e.g. {\"price\": 0.5, \"latency\": 0.5}",
        ));
    }
    Ok(w)
}

fn attempt_json(a: &capmesh_market::Attempt) -> capmesh_api::Attempt {
    capmesh_api::Attempt {
        provider: a.provider,
        code: a.code.clone(),
        message: a.message.clone(),
        stage: a.stage.to_string(),
        retry_after_ms: a.retry_after_ms,
    }
}

fn call_result(o: CallOutcome, stream: Stream) -> CallResult {
    CallResult {
        call_id: o.call,
        capability: o.capability,
        provider: o.provider,
        output: o.output,
        chunks: o.chunks,
        stream_root: o.stream_root,
        stream: stream.chunks,
        stream_truncated: stream.truncated,
        receipt_id: o.receipt_id,
        receipt: o.receipt,
        ledger_seq: o.ledger_seq,
        price: o.price,
        warm: o.warm,
        requests: o.requests,
        elapsed_ms: o.elapsed.as_millis() as u64,
        attempts: o.attempts.iter().map(attempt_json).collect(),
    }
}

/// A failed call as the API answers it: the code fixes the HTTP status (specs/api.md §5), the
/// call's own code and every attempt ride along.
fn call_error(call_id: CallId, e: &CallError) -> ApiError {
    let code = match e {
        CallError::Stopped => ErrorCode::Unavailable,
        CallError::DuplicateCall => ErrorCode::Conflict,
        CallError::Ledger(_) | CallError::Sign(_) | CallError::Entropy(_) => ErrorCode::Internal,
        other => ErrorCode::of_call(other.code()),
    };
    let message = match e {
        CallError::DuplicateCall => {
            format!("{e}: wait for it to end, or send another call_id")
        }
        _ => e.to_string(),
    };
    let failure = CallFailure {
        call_id,
        code: e.code().to_string(),
        attempts: e.attempts().iter().map(attempt_json).collect(),
        retry_after_ms: e.retry_after_ms(),
    };
    ApiError::call(code, message, failure)
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

/// A ledger entry as the API serves it (and `capmesh receipts` prints it offline).
fn entry_json(e: &LedgerEntry) -> LedgerEntryJson {
    let kind = match e.kind {
        LedgerKind::Receipt => capmesh_api::LedgerKind::Receipt,
        LedgerKind::Countersignature => capmesh_api::LedgerKind::Countersignature,
    };
    LedgerEntryJson::new(e.seq, e.hash, kind, e.signed.clone())
}

/// The page of `entries` read from `from` in a ledger of `len` entries.
fn ledger_page(entries: &[LedgerEntry], from: u64, len: u64) -> LedgerPage {
    let end = from.saturating_add(entries.len() as u64);
    LedgerPage {
        entries: entries.iter().map(entry_json).collect(),
        next: (end < len && !entries.is_empty()).then_some(end),
        len,
    }
}
