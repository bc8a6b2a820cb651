//! A fake [`Backend`] that records its calls, and a server running it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_api::{
    AgentFrame, ApiError, Attempt, AttestRequest, AttestationList, AttestationsRequest, Attested,
    Backend, BlockRequest, Blocked, CallAccepted, CallEvent, CallFailure, CallRequest, CallResult,
    CallState, Client, ContractInfo, ErrorCode, FindDone, FindEvent, FindHit, FindRequest,
    GossipStatus, HeadKind, LedgerEntryJson, LedgerHeadLine, LedgerKind, LedgerPage, NodeFrame,
    PeerInfo, Principal, PublishRequest, Published, QueryHit, QueryPage, QueryRequest,
    ReceiptEntries, ReplicaStatus, Retired, RuntimeLink, Sequenced, SessionCreated, SessionId,
    SessionInfo, SessionList, SessionRequest, Source, Status, Token, TraceId, bind, serve,
    write_files,
};
use capmesh_types::{Cid, Codec, Digest, NodeKey, PeerId};
use capmesh_wire::{
    Attestation, CallId, CallStatus, Countersignature, Price, Receipt, Signed, Subject, Validation,
    repr::{Bytes, FixedBytes},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Bound on anything a test awaits: a guard against hangs, never a measurement.
pub(crate) const HANG: Duration = Duration::from_secs(20);

pub(crate) async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {HANG:?}"),
    }
}

pub(crate) fn cid(n: u8) -> Cid {
    Cid::of(Codec::DagCbor, &[n])
}

pub(crate) fn peer(n: u8) -> PeerId {
    NodeKey::from_seed([n; 32]).peer_id()
}

/// A call the backend received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Status,
    Peers,
    Publish(PublishRequest),
    Retire(Cid),
    Find(FindRequest),
    Contract(Cid),
    Query(QueryRequest),
    Receipts { from: u64, limit: u32 },
    Receipt(Cid),
    Invoke(Principal, CallId, CallRequest, Option<TraceId>),
    Start(Principal, CallId, CallRequest, Option<TraceId>),
    Cancel(CallId),
    Attest(AttestRequest),
    Attestations(AttestationsRequest, u32),
    Blocked,
    Block(BlockRequest),
}

/// Between the first and the second hit of a find, the fake waits for this gate (if set).
pub(crate) type Gate = oneshot::Receiver<()>;

#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) calls: Mutex<Vec<Call>>,
    pub(crate) find_gate: Mutex<Option<Gate>>,
    /// When set, find sends its first hit and then holds the channel open until the gate opens.
    pub(crate) find_hold: Mutex<Option<Gate>>,
    /// Calls of [`waits`] in flight, ended by `cancel`.
    pub(crate) in_flight: Mutex<HashMap<CallId, oneshot::Sender<()>>>,
    /// The block list, capped at [`MAX_BLOCKED`] like a node's.
    pub(crate) blocked: Mutex<Vec<PeerId>>,
    /// Sessions and their tokens.
    pub(crate) sessions: Mutex<HashMap<SessionId, (String, SessionInfo)>>,
    /// Asynchronous calls: who made them and their events.
    pub(crate) started: Mutex<HashMap<CallId, (Principal, Vec<Sequenced>)>>,
    /// Frames the agent-side of attached runtimes received.
    pub(crate) frames: Mutex<Vec<AgentFrame>>,
    /// Itself, for the tasks of attached runtimes.
    pub(crate) self_ref: Mutex<Option<std::sync::Weak<Fake>>>,
}

/// The fake's block-list cap.
pub(crate) const MAX_BLOCKED: usize = 3;

/// Whether a call made by `owner` is `principal`'s to see.
fn visible(principal: Principal, owner: Principal) -> bool {
    principal == Principal::Node || principal == owner
}

impl Fake {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

pub(crate) fn status() -> Status {
    Status {
        peer_id: peer(1),
        version: "0.1.0".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        external_addrs: vec![],
        connected_peers: 2,
        kad_mode: "server".into(),
        routing_table_peers: 3,
        replica: ReplicaStatus {
            records: 4,
            stored: 5,
            duplicates: 6,
            refused: 7,
            dropped: 8,
            expired: 9,
        },
        gossip: GossipStatus { accepted: 10, ignored: 11, rejected: 12, rate_limited: 13 },
        published: vec![cid(1), cid(2)],
        uptime_ms: 14,
        reachability: "private".into(),
        relay_reservations: vec![
            "/ip4/127.0.0.1/tcp/4003/p2p/12D3KooWRelay/p2p-circuit/p2p/12D3KooWSelf".into(),
        ],
    }
}

pub(crate) fn peers() -> Vec<PeerInfo> {
    vec![
        PeerInfo {
            peer_id: peer(2),
            addrs: vec!["/ip4/127.0.0.1/tcp/4002".into()],
            connected: true,
            last_seen: 1,
            connection: "relayed".into(),
        },
        PeerInfo {
            peer_id: peer(3),
            addrs: vec![],
            connected: false,
            last_seen: 2,
            connection: "none".into(),
        },
    ]
}

pub(crate) fn free() -> Price {
    Price { amount: 0, unit: "free".into() }
}

pub(crate) fn hit(capability: Cid, n: u8) -> FindHit {
    FindHit {
        source: if n == 1 { Source::Replica } else { Source::Kademlia },
        kad_requests: u32::from(n),
        provider: peer(n + 10),
        addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 5000 + u16::from(n))],
        capability,
        advert_id: cid(n + 100),
        name: "echo".into(),
        version: "1.0.0".into(),
        price: free(),
        expires: 1_000,
        elapsed_ms: u64::from(n),
    }
}

pub(crate) fn done() -> FindDone {
    FindDone { hits: 2, kad_requests: 2, elapsed_ms: 3, error: None }
}

/// The receipt the fake's ledger holds: provider `peer(1)`, caller `peer(2)`.
pub(crate) fn receipt() -> Signed<Receipt> {
    let receipt = Receipt {
        call: FixedBytes([7; 16]),
        capability: cid(1),
        caller: peer(2),
        provider: peer(1),
        offer: cid(3),
        input: Digest::of(b"args"),
        output: Some(Digest::of(b"output")),
        price: Price { amount: 5, unit: "usd-micro".into() },
        started: 1_000,
        ended: 1_200,
        status: CallStatus::Ok,
        validation: Validation::Passed,
    };
    Signed::sign(&NodeKey::from_seed([1; 32]), &receipt).unwrap()
}

/// The caller's countersignature of [`receipt`].
pub(crate) fn countersignature() -> Signed<Countersignature> {
    let c = Countersignature { receipt: receipt().id(), caller: peer(2), signed: 1_300 };
    Signed::sign(&NodeKey::from_seed([2; 32]), &c).unwrap()
}

/// The fake's ledger: the receipt, then its countersignature (chain hashes are made up: the
/// API does not check them).
pub(crate) fn ledger() -> [LedgerEntryJson; 2] {
    [
        LedgerEntryJson::new(0, Digest::of(b"0"), LedgerKind::Receipt, receipt().to_bytes()),
        LedgerEntryJson::new(
            1,
            Digest::of(b"1"),
            LedgerKind::Countersignature,
            countersignature().to_bytes(),
        ),
    ]
}

/// The capability the fake's calls succeed with.
pub(crate) fn answers() -> Cid {
    cid(20)
}

/// A capability whose calls every provider refuses as rate limited.
pub(crate) fn rate_limited() -> Cid {
    cid(21)
}

/// A capability whose calls run until cancelled.
pub(crate) fn waits() -> Cid {
    cid(22)
}

/// What the fake answers a call of [`answers`] made under `call_id`.
pub(crate) fn call_result(call_id: CallId, req: &CallRequest) -> CallResult {
    CallResult {
        call_id,
        capability: req.capability,
        provider: peer(1),
        output: Some(serde_json::json!({"echo": req.args})),
        chunks: 2,
        stream_root: Some(Digest::of(b"root")),
        stream: vec![Bytes(b"ab".to_vec()), Bytes(b"c".to_vec())],
        stream_truncated: false,
        receipt_id: receipt().id(),
        receipt: receipt(),
        ledger_seq: 0,
        price: Price { amount: 5, unit: "usd-micro".into() },
        warm: true,
        requests: 1,
        elapsed_ms: 12,
        attempts: vec![attempt(3, "Busy", None)],
        trace: Some(TraceId([7; 16])),
    }
}

/// The events of an asynchronous call of [`answers`]: providers, chosen, two chunks, done.
pub(crate) fn call_events(call_id: CallId, req: &CallRequest) -> Vec<Sequenced> {
    let result = call_result(call_id, req);
    let events = vec![
        CallEvent::Providers { providers: vec![peer(1)] },
        CallEvent::Chosen { provider: peer(1), warm: false },
        CallEvent::Progress { seq: 0, data: Bytes(b"ab".to_vec()) },
        CallEvent::Progress { seq: 1, data: Bytes(b"c".to_vec()) },
        CallEvent::Done {
            receipt_id: result.receipt_id,
            trace: TraceId([7; 16]),
            result: Box::new(result),
        },
    ];
    events.into_iter().enumerate().map(|(i, event)| Sequenced { id: i as u64, event }).collect()
}

pub(crate) fn attempt(n: u8, code: &str, retry_after_ms: Option<u64>) -> Attempt {
    Attempt {
        provider: peer(n),
        code: code.into(),
        message: format!("{code} at peer {n}"),
        stage: "task".into(),
        retry_after_ms,
    }
}

/// The attestation the fake signs for `req` (issuer `peer(1)`, issued at 1 000).
pub(crate) fn attestation(req: &AttestRequest) -> Signed<Attestation> {
    let a = Attestation {
        issuer: peer(1),
        subject: req.subject.clone(),
        claim: req.claim.clone(),
        issued: 1_000,
        expires: req.expires_ms.unwrap_or(2_000),
    };
    Signed::sign(&NodeKey::from_seed([1; 32]), &a).unwrap()
}

/// The contract the fake holds in its "replica": that of [`answers`].
pub(crate) fn contract_json() -> serde_json::Value {
    serde_json::json!({
        "name": "echo",
        "version": "1.0.0",
        "description": "Returns its arguments.",
        "input": {"type": "object"},
        "output": {"type": "object"},
        "tags": ["text"],
        "read_only": true,
        "idempotent": true,
        "streaming": false,
    })
}

/// A capability whose contract the fake finds "on the mesh".
pub(crate) fn on_the_mesh() -> Cid {
    cid(23)
}

/// A capability the fake refuses to retire, with `Conflict`.
pub(crate) fn conflicting() -> Cid {
    cid(99)
}

impl Backend for Fake {
    async fn status(&self) -> Result<Status, ApiError> {
        self.record(Call::Status);
        Ok(status())
    }

    async fn peers(&self) -> Result<Vec<PeerInfo>, ApiError> {
        self.record(Call::Peers);
        Ok(peers())
    }

    async fn blocked(&self) -> Result<Blocked, ApiError> {
        self.record(Call::Blocked);
        Ok(Blocked { peers: self.blocked.lock().unwrap().clone() })
    }

    async fn block(&self, req: BlockRequest) -> Result<Blocked, ApiError> {
        self.record(Call::Block(req.clone()));
        let mut blocked = self.blocked.lock().unwrap();
        let mut after: Vec<PeerId> =
            blocked.iter().filter(|p| !req.unblock.contains(p)).copied().collect();
        after.extend(req.block.iter().filter(|p| !after.contains(p)).collect::<Vec<_>>());
        if after.len() > MAX_BLOCKED {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_BLOCKED} peers can be blocked"
            )));
        }
        *blocked = after.clone();
        Ok(Blocked { peers: after })
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published, ApiError> {
        self.record(Call::Publish(req));
        Ok(Published { capability: cid(1), advert_id: cid(2), seq: 3, expires: 4 })
    }

    async fn retire(&self, capability: Cid) -> Result<Retired, ApiError> {
        self.record(Call::Retire(capability));
        if capability == conflicting() {
            return Err(ApiError::conflict("not published by this node"));
        }
        Ok(Retired { capability, retirement_id: cid(5), seq: 6 })
    }

    async fn find(&self, req: FindRequest) -> Result<mpsc::Receiver<FindEvent>, ApiError> {
        self.record(Call::Find(req.clone()));
        let gate = self.find_gate.lock().unwrap().take();
        let hold = self.find_hold.lock().unwrap().take();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(FindEvent::Hit(hit(req.capability, 1))).await;
            if let Some(hold) = hold {
                let _ = hold.await;
                return;
            }
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            tokio::task::yield_now().await;
            let _ = tx.send(FindEvent::Hit(hit(req.capability, 2))).await;
            tokio::task::yield_now().await;
            let _ = tx.send(FindEvent::Done(done())).await;
            // Anything after the `done` must not reach the client.
            let _ = tx.send(FindEvent::Hit(hit(req.capability, 3))).await;
        });
        Ok(rx)
    }

    async fn contract(&self, capability: Cid) -> Result<ContractInfo, ApiError> {
        self.record(Call::Contract(capability));
        let source = if capability == answers() {
            Source::Replica
        } else if capability == on_the_mesh() {
            Source::Kademlia
        } else {
            return Err(ApiError::not_found(format!(
                "no contract for capability {capability} in the replica or on the mesh"
            )));
        };
        Ok(ContractInfo { capability, contract: contract_json(), source })
    }

    async fn query(&self, req: QueryRequest) -> Result<QueryPage, ApiError> {
        self.record(Call::Query(req));
        Ok(QueryPage {
            hits: vec![QueryHit {
                id: cid(7),
                capability: cid(1),
                name: "echo".into(),
                provider: peer(2),
                price: Price { amount: 100, unit: "usd-micro".into() },
                issued: 1,
                expires: 2,
            }],
            next: Some("00ff".into()),
        })
    }

    async fn receipts(&self, from: u64, limit: u32) -> Result<LedgerPage, ApiError> {
        self.record(Call::Receipts { from, limit });
        let all = ledger();
        let entries: Vec<_> =
            all.iter().skip(from as usize).take(limit as usize).cloned().collect();
        let end = from + entries.len() as u64;
        let len = all.len() as u64;
        Ok(LedgerPage { entries, next: (end < len).then_some(end), len })
    }

    async fn receipt(&self, id: Cid) -> Result<ReceiptEntries, ApiError> {
        self.record(Call::Receipt(id));
        if id != receipt().id() {
            return Err(ApiError::not_found(format!("no receipt {id} in the ledger")));
        }
        let [receipt, countersignature] = ledger();
        Ok(ReceiptEntries { receipt, countersignature: Some(countersignature) })
    }

    async fn call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<CallResult, ApiError> {
        self.record(Call::Invoke(principal, call_id, req.clone(), trace));
        let failure = |code: &str, attempts: Vec<Attempt>| CallFailure {
            call_id,
            code: code.into(),
            retry_after_ms: attempts.iter().filter_map(|a| a.retry_after_ms).min(),
            attempts,
        };
        if req.capability == answers() {
            Ok(call_result(call_id, &req))
        } else if req.capability == rate_limited() {
            let attempts = vec![attempt(3, "RateLimited", Some(2500)), attempt(4, "Busy", None)];
            Err(ApiError::call(
                ErrorCode::RateLimited,
                "every provider refused or failed",
                failure("Exhausted", attempts),
            ))
        } else if req.capability == waits() {
            let (tx, rx) = oneshot::channel();
            self.in_flight.lock().unwrap().insert(call_id, tx);
            let _ = rx.await;
            Err(ApiError::call(
                ErrorCode::Cancelled,
                "the call was cancelled",
                failure("Cancelled", vec![]),
            ))
        } else {
            Err(ApiError::call(
                ErrorCode::NotFound,
                format!("no provider of {} found", req.capability),
                failure("NotFound", vec![]),
            ))
        }
    }

    async fn cancel(&self, _principal: Principal, call_id: CallId) -> Result<bool, ApiError> {
        self.record(Call::Cancel(call_id));
        Ok(match self.in_flight.lock().unwrap().remove(&call_id) {
            Some(tx) => tx.send(()).is_ok(),
            None => false,
        })
    }

    async fn start_call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<CallAccepted, ApiError> {
        self.record(Call::Start(principal, call_id, req.clone(), trace));
        if req.capability != answers() {
            return Err(ApiError::not_found(format!("no provider of {}", req.capability)));
        }
        let events = call_events(call_id, &req);
        self.started.lock().unwrap().insert(call_id, (principal, events));
        Ok(CallAccepted {
            call_id,
            trace: trace.unwrap_or(TraceId([7; 16])),
            state: CallState::Finding,
        })
    }

    async fn call_status(
        &self,
        principal: Principal,
        call_id: CallId,
    ) -> Result<capmesh_api::CallStatus, ApiError> {
        let started = self.started.lock().unwrap();
        let Some((owner, events)) = started.get(&call_id).filter(|(o, _)| visible(principal, *o))
        else {
            return Err(ApiError::not_found("no such call"));
        };
        let _ = owner;
        let Some(CallEvent::Done { result, .. }) = events.last().map(|e| &e.event) else {
            return Err(ApiError::internal("the fake's calls end with done"));
        };
        Ok(capmesh_api::CallStatus {
            call_id,
            capability: result.capability,
            trace: TraceId([7; 16]),
            state: CallState::Done,
            session: principal.session(),
            created_ms: 1,
            ended_ms: Some(2),
            provider: Some(result.provider),
            events: events.len() as u64,
            result: Some(result.clone()),
            error: None,
        })
    }

    async fn call_events(
        &self,
        principal: Principal,
        call_id: CallId,
        from: u64,
    ) -> Result<mpsc::Receiver<Sequenced>, ApiError> {
        let events = match self.started.lock().unwrap().get(&call_id) {
            Some((owner, events)) if visible(principal, *owner) => events.clone(),
            _ => return Err(ApiError::not_found("no such call")),
        };
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for e in events.into_iter().skip(from as usize) {
            tx.try_send(e).unwrap();
        }
        Ok(rx)
    }

    fn authenticate(&self, token: &[u8]) -> Option<SessionId> {
        let sessions = self.sessions.lock().unwrap();
        sessions.iter().find(|(_, (t, _))| t.as_bytes() == token).map(|(id, _)| *id)
    }

    async fn open_session(&self, req: SessionRequest) -> Result<SessionCreated, ApiError> {
        let mut sessions = self.sessions.lock().unwrap();
        let n = sessions.len() as u8 + 1;
        let id = SessionId([n; 16]);
        let token = format!("{:064x}", n);
        let info = SessionInfo {
            id,
            name: req.name,
            metadata: req.metadata,
            ttl_secs: req.ttl_secs.unwrap_or(300),
            created_ms: 1,
            expires_ms: 300_001,
            runtime_attached: false,
            capabilities: vec![],
            calls_made: 0,
            calls_served: 0,
        };
        sessions.insert(id, (token.clone(), info.clone()));
        Ok(SessionCreated { session: info, token })
    }

    async fn sessions(&self) -> Result<SessionList, ApiError> {
        let sessions = self.sessions.lock().unwrap();
        Ok(SessionList { sessions: sessions.values().map(|(_, s)| s.clone()).collect() })
    }

    async fn session(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        let sessions = self.sessions.lock().unwrap();
        sessions.get(&id).map(|(_, s)| s.clone()).ok_or_else(|| ApiError::not_found("no session"))
    }

    async fn heartbeat(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        let mut sessions = self.sessions.lock().unwrap();
        let (_, s) = sessions.get_mut(&id).ok_or_else(|| ApiError::not_found("no session"))?;
        s.expires_ms += 1000;
        Ok(s.clone())
    }

    async fn end_session(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        let mut sessions = self.sessions.lock().unwrap();
        sessions.remove(&id).map(|(_, s)| s).ok_or_else(|| ApiError::not_found("no session"))
    }

    async fn attach(&self, id: SessionId) -> Result<RuntimeLink, ApiError> {
        if !self.sessions.lock().unwrap().contains_key(&id) {
            return Err(ApiError::not_found("no session"));
        }
        // The agent's side: a welcome, then `pong` to every `ping`; every frame is recorded.
        let (link, mut from_agent, to_agent) = RuntimeLink::new();
        to_agent.try_send(NodeFrame::Welcome { session: id, capabilities: vec![] }).unwrap();
        let fake = self.self_ref.lock().unwrap().clone();
        tokio::spawn(async move {
            while let Some(frame) = from_agent.recv().await {
                if frame == AgentFrame::Ping && to_agent.send(NodeFrame::Pong).await.is_err() {
                    return;
                }
                if let Some(fake) = fake.as_ref().and_then(|f| f.upgrade()) {
                    fake.frames.lock().unwrap().push(frame);
                }
            }
        });
        Ok(link)
    }

    async fn attest(&self, req: AttestRequest) -> Result<Attested, ApiError> {
        self.record(Call::Attest(req.clone()));
        let attestation = attestation(&req);
        Ok(Attested { id: attestation.id(), attestation })
    }

    async fn ledger_head(&self) -> Result<LedgerHeadLine, ApiError> {
        let key = NodeKey::from_seed([1; 32]);
        let head = capmesh_wire::LedgerHead {
            node: key.peer_id(),
            len: 0,
            hash: Digest::from_bytes(capmesh_wire::LedgerHead::EMPTY_HASH),
            issued: 1_000,
        };
        let signed = Signed::sign(&key, &head).unwrap();
        Ok(LedgerHeadLine {
            kind: HeadKind::Head,
            signed: Bytes(signed.to_bytes()),
            record: serde_json::to_value(&signed).unwrap(),
        })
    }

    async fn attestations(
        &self,
        req: AttestationsRequest,
        limit: u32,
    ) -> Result<AttestationList, ApiError> {
        self.record(Call::Attestations(req.clone(), limit));
        let subject = req.subject.unwrap_or(Subject::Peer(peer(2)));
        let attestation =
            attestation(&AttestRequest { subject, claim: "member".into(), expires_ms: None });
        Ok(AttestationList { attestations: vec![Attested { id: attestation.id(), attestation }] })
    }
}

/// A server running [`Fake`] on 127.0.0.1:0.
pub(crate) struct Server {
    pub(crate) fake: Arc<Fake>,
    pub(crate) addr: SocketAddr,
    pub(crate) token: Token,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start() -> Self {
        let fake = Arc::new(Fake::default());
        *fake.self_ref.lock().unwrap() = Some(Arc::downgrade(&fake));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = Token::generate().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, fake.clone(), token.clone(), shutdown.clone()));
        Server { fake, addr, token, shutdown, task }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.addr, self.token.as_str().to_owned()).unwrap()
    }

    pub(crate) fn write_files(&self, dir: &Path) {
        write_files(dir, self.addr, &self.token).unwrap();
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels the server and waits for it to return.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        guard("server shutdown", self.task).await.unwrap().unwrap();
    }
}
