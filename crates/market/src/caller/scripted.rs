//! The caller's states driven against scripted peers: no swarm, no real node. Each scripted
//! provider is a key that answers what the caller sends as its script says (offers, declines,
//! silence, refusals, `TaskDone` with a receipt it signs, `TaskAccepted` then a follow-up
//! delivered through `serve_followup`); every test checks the call's outcome and what each
//! provider received, in order. Time is tokio's paused clock, so timeouts and the deferred
//! call's probe timer run without waiting.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex as StdMutex, OnceLock, Weak},
};

use capmesh_mesh::{BoxFuture, Exchange, FindEvent, Found, Mesh, MeshConfig, MeshError, Source};
use capmesh_policy::{Policy, PolicyHandle};
use capmesh_store::{LedgerKind, Store};
use capmesh_types::{Codec, NodeKey};
use capmesh_wire::{
    Advert, CallStatus, Code, Contract, Envelope, Kind, Negotiate, NegotiateAction, Offer, Opened,
    Price, Receipt, Rules, Signed, TaskAccepted, TaskDone, TaskStart, Validation,
};
use serde_json::{Value, json};

use super::{states::Failure, *};
use crate::{Inner, MarketConfig, transport::CallTransport};

/// What a scripted provider answers to `Intent`.
#[derive(Debug, Clone, Copy)]
enum OnIntent {
    Offer,
    Decline,
    /// Never answers.
    Silent,
    Unreachable,
    /// A `TaskAccepted`: not an answer to `Intent`.
    WrongKind,
}

/// What a scripted provider answers to one `TaskStart` (the last one repeats).
#[derive(Debug, Clone)]
enum OnStart {
    /// `TaskDone` with `{"echo": args}` and an `Ok` receipt.
    Done,
    /// `TaskDone` with this output (an `Ok` receipt that names it).
    Output(Value),
    /// `TaskDone` with this error and a `Failed` receipt.
    Fails(Code),
    /// `TaskDone` whose receipt another key signed.
    ForgedReceipt,
    /// An `Error` envelope.
    Refuses(Code),
    Unreachable,
    /// Never answers.
    Silent,
    /// `TaskAccepted`; the `TaskDone` follows as the provider's own request after this long
    /// (never when `None`).
    Accepted(Option<Duration>),
    /// Runs the call, but the answer is lost on the way (the caller sees it unreachable); a
    /// repeat of the call id gets the run's `TaskDone`, whatever offer the repeat names.
    RunsUnanswered,
}

#[derive(Debug)]
struct Provider {
    key: NodeKey,
    price: Price,
    intent: OnIntent,
    starts: StdMutex<VecDeque<OnStart>>,
}

impl Provider {
    fn new(seed: u8, amount: u64, intent: OnIntent, starts: Vec<OnStart>) -> Self {
        Self {
            key: NodeKey::from_seed([seed; 32]),
            price: Price { amount, unit: "credit".into() },
            intent,
            starts: StdMutex::new(starts.into()),
        }
    }

    fn peer(&self) -> PeerId {
        self.key.peer_id()
    }

    fn next_start(&self) -> OnStart {
        let mut starts = lock(&self.starts);
        if starts.len() > 1 { starts.pop_front() } else { starts.front().cloned() }
            .unwrap_or(OnStart::Done)
    }
}

/// The scripted side of the seam: the providers, what they received, the finds asked.
#[derive(Debug)]
struct Peers {
    /// The caller's mesh: requests are signed by it, as in the node; nothing is sent through it.
    mesh: Mesh,
    caller: PeerId,
    cap: Cid,
    contract: Arc<Contract>,
    providers: Vec<Provider>,
    /// Whether `connected` says a connection is open (decides the deferred call's probes).
    connected: bool,
    /// (provider, kind) of every request, in the order they arrived.
    log: StdMutex<Vec<(PeerId, Kind)>>,
    /// The `TaskStart`s each provider saw, by call id (a `TaskCancel` answers for them).
    starts: StdMutex<HashMap<CallId, TaskStart>>,
    /// Calls run under `RunsUnanswered`, by call id, as first started (protocol.md §8.5: a
    /// repeated call id is answered with the run it names, never run again).
    ran: StdMutex<HashMap<CallId, TaskStart>>,
    finds: StdMutex<u32>,
    /// Follow-ups go to the market through `serve_followup` (held weakly: the market holds
    /// the peers).
    market: OnceLock<Weak<Inner>>,
    followups: StdMutex<JoinSet<()>>,
}

/// What a scripted provider does with a request: answer now, or never (`None`).
type Reply = Option<Result<Exchange, MeshError>>;

fn contract(idempotent: bool) -> Contract {
    Contract {
        name: "echo".into(),
        version: "1.0.0".into(),
        description: "echoes its arguments".into(),
        input: json!({"type": "object", "properties": {"text": {"type": "string"}}}),
        output: json!({"type": "object", "required": ["echo"]}),
        tags: Vec::new(),
        read_only: true,
        idempotent,
        streaming: false,
    }
}

fn rules() -> Rules {
    Rules::default()
}

impl Peers {
    fn new(mesh: Mesh, providers: Vec<Provider>, connected: bool, idempotent: bool) -> Self {
        let contract = contract(idempotent);
        let caller = mesh.peer_id();
        let cap = capmesh_contract::capability_id(&contract).unwrap();
        Self {
            mesh,
            caller,
            cap,
            contract: Arc::new(contract),
            providers,
            connected,
            log: StdMutex::new(Vec::new()),
            starts: StdMutex::new(HashMap::new()),
            ran: StdMutex::new(HashMap::new()),
            finds: StdMutex::new(0),
            market: OnceLock::new(),
            followups: StdMutex::new(JoinSet::new()),
        }
    }

    fn provider(&self, peer: &PeerId) -> &Provider {
        self.providers.iter().find(|p| p.peer() == *peer).expect("a scripted provider")
    }

    /// What `peer` received, in order.
    fn received(&self, peer: &Provider) -> Vec<Kind> {
        let me = peer.peer();
        lock(&self.log).iter().filter(|(p, _)| *p == me).map(|(_, k)| *k).collect()
    }

    /// Waits (paused clock: at once) until `peer` received `n` requests; the countersignature
    /// and a deadline's `TaskCancel` are sent in the background.
    async fn settle(&self, peer: &Provider, n: usize) -> Vec<Kind> {
        for _ in 0..1000 {
            if self.received(peer).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received(peer)
    }

    fn finds(&self) -> u32 {
        *lock(&self.finds)
    }

    /// An envelope from `p` to the caller, opened as the mesh would hand it over.
    fn from(&self, p: &Provider, body: impl Into<Body>, re: Option<Cid>) -> Opened {
        let mut builder = Envelope::builder(body).to(self.caller);
        if let Some(re) = re {
            builder = builder.re(re);
        }
        builder.sign(&p.key, now_ms()).unwrap().open(now_ms(), &rules()).unwrap()
    }

    fn answer(&self, p: &Provider, request: &Opened, body: impl Into<Body>) -> Reply {
        let answer = self.from(p, body, Some(request.id));
        Some(Ok(Exchange { id: request.id, answer: Some(answer) }))
    }

    fn refuse(p: &Provider, code: Code) -> Reply {
        Some(Err(MeshError::Remote {
            peer: p.peer(),
            code,
            message: "scripted refusal".into(),
            retryable: false,
            retry_after_ms: None,
        }))
    }

    fn unreachable(p: &Provider) -> Reply {
        Some(Err(MeshError::Net(capmesh_mesh::NetError::Dial {
            target: p.peer().to_string(),
            reason: "scripted: unreachable".into(),
        })))
    }

    /// The `TaskDone` of `start` as `p` signs it.
    fn done(&self, p: &Provider, start: &TaskStart, outcome: &OnStart) -> TaskDone {
        let (output, error, status) = match outcome {
            OnStart::Output(v) => (Some(v.clone()), None, CallStatus::Ok),
            OnStart::Fails(code) => {
                let error = error_body(code.clone(), "scripted failure", false, None);
                (None, Some(error), CallStatus::Failed)
            }
            _ => (Some(json!({"echo": start.args})), None, CallStatus::Ok),
        };
        self.done_as(p, start, output, error, status)
    }

    fn done_as(
        &self,
        p: &Provider,
        start: &TaskStart,
        output: Option<Value>,
        error: Option<ErrorBody>,
        status: CallStatus,
    ) -> TaskDone {
        let now = now_ms();
        let receipt = Receipt {
            call: start.call,
            capability: start.capability,
            caller: self.caller,
            provider: p.peer(),
            offer: start.offer,
            input: json_digest(&start.args).unwrap(),
            output: output.as_ref().map(|v| json_digest(v).unwrap()),
            price: p.price.clone(),
            started: now,
            ended: now,
            status,
            validation: if output.is_some() { Validation::Passed } else { Validation::Skipped },
        };
        TaskDone {
            call: start.call,
            output,
            error,
            receipt: Signed::sign(&p.key, &receipt).unwrap(),
        }
    }

    fn on_intent(&self, p: &Provider, request: &Opened) -> Reply {
        match p.intent {
            OnIntent::Offer => {
                let offer = Offer {
                    capability: self.cap,
                    price: p.price.clone(),
                    latency_ms: 10,
                    calls: 1000,
                    expires: now_ms() + 300_000,
                };
                self.answer(p, request, offer)
            }
            OnIntent::Decline => {
                let decline = Negotiate {
                    action: NegotiateAction::Decline,
                    offer: None,
                    price: None,
                    reason: Some("scripted decline".into()),
                };
                self.answer(p, request, decline)
            }
            OnIntent::Silent => None,
            OnIntent::Unreachable => Self::unreachable(p),
            OnIntent::WrongKind => self.answer(p, request, TaskAccepted { call: FixedId([9; 16]) }),
        }
    }

    fn on_start(&self, p: &Provider, request: &Opened, start: &TaskStart) -> Reply {
        lock(&self.starts).insert(start.call, start.clone());
        let first = lock(&self.ran).get(&start.call).cloned();
        if let Some(first) = first {
            let done = self.done(p, &first, &OnStart::Done);
            return self.answer(p, request, done);
        }
        match p.next_start() {
            outcome @ (OnStart::Done | OnStart::Output(_) | OnStart::Fails(_)) => {
                let done = self.done(p, start, &outcome);
                self.answer(p, request, done)
            }
            OnStart::ForgedReceipt => {
                // The receipt names `p` but another key signed its bytes.
                let mut done = self.done(p, start, &OnStart::Done);
                let receipt = done.receipt.decode(capmesh_wire::cbor::Limits::default()).unwrap();
                let payload = capmesh_wire::cbor::to_vec(&receipt).unwrap();
                let domain = capmesh_wire::domain::RECEIPT.as_bytes();
                let sig = NodeKey::from_seed([250; 32]).sign(domain, &payload);
                done.receipt = Signed::from_parts(payload, sig);
                self.answer(p, request, done)
            }
            OnStart::Refuses(code) => Self::refuse(p, code),
            OnStart::Unreachable => Self::unreachable(p),
            OnStart::RunsUnanswered => {
                lock(&self.ran).insert(start.call, start.clone());
                Self::unreachable(p)
            }
            OnStart::Silent => None,
            OnStart::Accepted(after) => {
                if let Some(after) = after {
                    let done = self.done(p, start, &OnStart::Done);
                    let opened = self.from(p, done, None);
                    let (market, peer) = (self.market.get().cloned(), p.peer());
                    lock(&self.followups).spawn(async move {
                        tokio::time::sleep(after).await;
                        let Some(inner) = market.and_then(|m| m.upgrade()) else { return };
                        let market = Market { inner };
                        market.serve_followup(peer, &opened).await.expect("the caller waits");
                    });
                }
                self.answer(p, request, TaskAccepted { call: start.call })
            }
        }
    }

    /// A `TaskCancel`: the run's final `TaskDone`, status `Cancelled`, with its receipt.
    fn on_cancel(&self, p: &Provider, request: &Opened, call: &CallId) -> Reply {
        let Some(start) = lock(&self.starts).get(call).cloned() else {
            return Self::refuse(p, Code::NotFound);
        };
        let error = error_body(Code::Cancelled, "cancelled by the caller", false, None);
        let done = self.done_as(p, &start, None, Some(error), CallStatus::Cancelled);
        self.answer(p, request, done)
    }
}

use capmesh_wire::repr::FixedBytes as FixedId;

impl CallTransport for Peers {
    fn find(&self, cap: Cid, limit: u32, _: Option<Duration>) -> mpsc::Receiver<FindEvent> {
        *lock(&self.finds) += 1;
        let (tx, rx) = mpsc::channel(64);
        let now = now_ms();
        let found = self.providers.iter().filter(|_| cap == self.cap).take(limit as usize);
        for p in found {
            let advert = Advert {
                capability: cap,
                provider: p.peer(),
                addrs: Vec::new(),
                price: p.price.clone(),
                limits: capmesh_mesh::default_limits(),
                attestations: Vec::new(),
                seq: 1,
                issued: now,
                expires: now + 3_600_000,
            };
            let found = Found {
                source: Source::Replica,
                kad_requests: 0,
                advert_id: Cid::of(Codec::DagCbor, p.peer().to_string().as_bytes()),
                advert,
                contract_name: self.contract.name.clone(),
                contract_version: self.contract.version.clone(),
                contract: self.contract.clone(),
                elapsed: Duration::ZERO,
            };
            tx.try_send(FindEvent::Found(Box::new(found))).unwrap();
        }
        let done =
            FindEvent::Done { hits: 0, kad_requests: 0, elapsed: Duration::ZERO, error: None };
        tx.try_send(done).unwrap();
        rx
    }

    fn sign_request(
        &self,
        peer: PeerId,
        body: Body,
        thread: Thread,
    ) -> Result<Envelope, MeshError> {
        // Signed as the node signs: by the caller's mesh, with its key and envelope lifetime.
        self.mesh.sign_request(peer, body, thread)
    }

    fn send(
        &self,
        peer: PeerId,
        _: Vec<Multiaddr>,
        request: Envelope,
    ) -> BoxFuture<Result<Exchange, MeshError>> {
        let opened = request.open(now_ms(), &rules()).expect("the caller sends valid envelopes");
        assert_eq!(opened.payload.sender(), self.caller, "signed by the caller");
        lock(&self.log).push((peer, opened.payload.body.kind()));
        let p = self.provider(&peer);
        let reply = match &opened.payload.body {
            Body::Intent(_) => self.on_intent(p, &opened),
            Body::TaskStart(start) => self.on_start(p, &opened, start),
            Body::TaskCancel(cancel) => self.on_cancel(p, &opened, &cancel.call),
            Body::Receipt(_) => Some(Ok(Exchange { id: opened.id, answer: None })),
            other => panic!("the caller sent {:?}", other.kind()),
        };
        match reply {
            Some(result) => Box::pin(std::future::ready(result)),
            None => Box::pin(std::future::pending()),
        }
    }

    fn connected(&self, _: PeerId) -> BoxFuture<bool> {
        Box::pin(std::future::ready(self.connected))
    }
}

fn caller_key() -> NodeKey {
    NodeKey::from_seed([200; 32])
}

/// A market whose caller talks to scripted peers, over a replica in a temporary directory
/// and a mesh whose network service never runs (anything sent through it fails at once).
struct Harness {
    market: Market,
    peers: Arc<Peers>,
    cancel: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn harness(providers: Vec<Provider>, connected: bool, config: MarketConfig) -> Harness {
    harness_of(providers, connected, config, false)
}

/// [`harness`] with a contract that says whether it is idempotent.
fn harness_of(
    providers: Vec<Provider>,
    connected: bool,
    config: MarketConfig,
    idempotent: bool,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), capmesh_store::Config::default()).unwrap();
    let key = caller_key();
    let (service, net) =
        capmesh_net::NetworkService::new(&key, capmesh_net::Config::default()).unwrap();
    drop(service);
    let cancel = CancellationToken::new();
    let mesh = Mesh::new(key.clone(), store, net, MeshConfig::default(), cancel.child_token());
    let peers = Arc::new(Peers::new(mesh.clone(), providers, connected, idempotent));
    let policy = PolicyHandle::new(Policy::default());
    let transport: Arc<dyn CallTransport> = peers.clone();
    let market = Market::with_transport(key, mesh, transport, policy, config, cancel.clone());
    peers.market.set(Arc::downgrade(&market.inner)).unwrap();
    Harness { market, peers, cancel, _dir: dir }
}

impl Harness {
    fn request(&self) -> CallRequest {
        CallRequest::new(self.peers.cap, json!({"text": "hi"}))
    }

    fn provider(&self, i: usize) -> &Provider {
        &self.peers.providers[i]
    }

    fn peer(&self, i: usize) -> PeerId {
        self.provider(i).peer()
    }

    /// The receipts in the caller's ledger: (provider, status), in order.
    fn ledger(&self) -> Vec<(PeerId, CallStatus)> {
        let limits = capmesh_wire::cbor::Limits::default();
        let entries = self.market.store().ledger_range(0, 100).unwrap();
        entries
            .iter()
            .filter(|e| e.kind == LedgerKind::Receipt)
            .map(|e| {
                let r: Receipt = Signed::<Receipt>::from_bytes(&e.signed, limits)
                    .unwrap()
                    .decode(limits)
                    .unwrap();
                (r.provider, r.status)
            })
            .collect()
    }

    /// The contract held by id, as if the replica had it.
    fn know_contract(&self) {
        self.market.known(&self.peers.cap, Some(&self.peers.contract)).unwrap();
    }
}

use Kind::{Intent as I, Receipt as R, TaskCancel as C, TaskStart as S};

fn codes(attempts: &[Attempt]) -> Vec<(PeerId, &'static str, Code)> {
    attempts.iter().map(|a| (a.provider, a.stage, a.code.clone())).collect()
}

fn events(rx: &mut mpsc::Receiver<CallEvent>) -> Vec<CallEvent> {
    let mut all = Vec::new();
    while let Ok(e) = rx.try_recv() {
        all.push(e);
    }
    all
}

fn offer_all(n: u8) -> Vec<Provider> {
    (1..=n).map(|i| Provider::new(i, u64::from(i), OnIntent::Offer, vec![OnStart::Done])).collect()
}

#[tokio::test(start_paused = true)]
async fn find_with_no_contract_and_no_provider_is_an_unknown_capability() {
    let h = harness(Vec::new(), true, MarketConfig::default());
    let err = h.market.call(h.request()).await.unwrap_err();
    assert!(matches!(err, CallError::UnknownCapability(c) if c == h.peers.cap), "{err}");
    assert_eq!(h.peers.finds(), 1);
    assert!(lock(&h.peers.log).is_empty(), "nothing was sent");
}

#[tokio::test(start_paused = true)]
async fn find_with_a_known_contract_and_no_provider_is_no_providers() {
    let h = harness(Vec::new(), true, MarketConfig::default());
    h.know_contract();
    let (tx, mut rx) = mpsc::channel(32);
    let err = h.market.call(h.request().with_events(tx)).await.unwrap_err();
    assert!(matches!(err, CallError::NoProviders(_)), "{err}");
    let events = events(&mut rx);
    assert!(
        matches!(&events[..], [CallEvent::Providers { providers }] if providers.is_empty()),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn find_fans_out_intents_and_the_best_offer_is_started_and_done() {
    let h = harness(offer_all(2), true, MarketConfig::default());
    let (tx, mut rx) = mpsc::channel(32);
    let done = h.market.call(h.request().with_events(tx)).await.unwrap();
    assert_eq!(done.provider, h.peer(0), "the cheaper offer");
    assert_eq!(done.output, Some(json!({"echo": {"text": "hi"}})));
    assert!(done.attempts.is_empty() && !done.warm);
    assert_eq!(done.requests, 3, "two intents, one start");
    assert_eq!(h.peers.settle(h.provider(0), 3).await, [I, S, R], "countersigned");
    assert_eq!(h.peers.received(h.provider(1)), [I]);
    assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Ok)]);
    let events = events(&mut rx);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            CallEvent::Providers { .. } => "providers",
            CallEvent::Offer { .. } => "offer",
            CallEvent::Chosen { warm: false, .. } => "chosen",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["providers", "offer", "offer", "chosen"]);
    assert_eq!(h.market.reputation(&h.peer(0)).ok, 1);
}

#[tokio::test(start_paused = true)]
async fn intent_declines_silence_and_odd_answers_are_attempts_in_asked_order() {
    let providers = vec![
        Provider::new(1, 1, OnIntent::Decline, Vec::new()),
        Provider::new(2, 2, OnIntent::Silent, Vec::new()),
        Provider::new(3, 3, OnIntent::WrongKind, Vec::new()),
        Provider::new(4, 4, OnIntent::Offer, vec![OnStart::Done]),
    ];
    let h = harness(providers, true, MarketConfig::default().with_intent_fanout(4));
    let started = Instant::now();
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(done.provider, h.peer(3));
    assert_eq!(
        codes(&done.attempts),
        [
            (h.peer(0), "intent", Code::Declined),
            (h.peer(1), "intent", Code::Timeout),
            (h.peer(2), "intent", Code::InvalidObject),
        ]
    );
    assert_eq!(started.elapsed(), Duration::from_secs(5), "the silent one held the fan-out");
    for i in 0..3 {
        assert_eq!(h.peers.received(h.provider(i)), [I]);
    }
    assert_eq!(h.peers.settle(h.provider(3), 3).await, [I, S, R]);
}

#[tokio::test(start_paused = true)]
async fn a_warm_call_starts_under_the_standing_offer_in_one_round_trip() {
    let h = harness(offer_all(1), true, MarketConfig::default());
    let first = h.market.call(h.request()).await.unwrap();
    assert!(!first.warm);
    h.peers.settle(h.provider(0), 3).await;
    let (tx, mut rx) = mpsc::channel(32);
    let second = h.market.call(h.request().with_events(tx)).await.unwrap();
    assert!(second.warm && second.requests == 1, "{second:?}");
    assert_ne!(first.call, second.call);
    assert_eq!(h.peers.settle(h.provider(0), 5).await, [I, S, R, S, R]);
    assert_eq!(h.peers.finds(), 1, "no find for a warm call");
    let events = events(&mut rx);
    assert!(matches!(&events[..], [CallEvent::Chosen { warm: true, .. }]), "{events:?}");
    assert_eq!(h.ledger().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn start_refused_or_failed_with_invalid_args_stops_without_failover() {
    for first in [OnStart::Refuses(Code::InvalidArgs), OnStart::Fails(Code::InvalidArgs)] {
        let ran = matches!(first, OnStart::Fails(_));
        let providers = vec![
            Provider::new(1, 1, OnIntent::Offer, vec![first]),
            Provider::new(2, 2, OnIntent::Offer, vec![OnStart::Done]),
        ];
        let h = harness(providers, true, MarketConfig::default());
        let err = h.market.call(h.request()).await.unwrap_err();
        let CallError::Refused { attempt } = &err else { panic!("{err}") };
        assert_eq!((attempt.provider, attempt.code.clone()), (h.peer(0), Code::InvalidArgs));
        assert_eq!(err.code(), Code::InvalidArgs);
        assert_eq!(h.peers.received(h.provider(1)), [I], "the next offer is not tried");
        if ran {
            // The run's receipt is evidence: kept and countersigned.
            assert_eq!(h.peers.settle(h.provider(0), 3).await, [I, S, R]);
            assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Failed)]);
        } else {
            assert_eq!(h.peers.received(h.provider(0)), [I, S]);
            assert!(h.ledger().is_empty());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn start_failed_with_internal_fails_over_to_the_next_offer() {
    let providers = vec![
        Provider::new(1, 1, OnIntent::Offer, vec![OnStart::Fails(Code::Internal)]),
        Provider::new(2, 2, OnIntent::Offer, vec![OnStart::Done]),
    ];
    let h = harness(providers, true, MarketConfig::default());
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(done.provider, h.peer(1));
    assert_eq!(codes(&done.attempts), [(h.peer(0), "task", Code::Internal)]);
    assert_eq!(h.peers.settle(h.provider(0), 3).await, [I, S, R]);
    assert_eq!(h.peers.settle(h.provider(1), 3).await, [I, S, R]);
    assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Failed), (h.peer(1), CallStatus::Ok)]);
    assert_eq!(h.market.reputation(&h.peer(0)).bad, 1);
    assert_eq!(h.market.stats().failovers, 1);
}

#[tokio::test(start_paused = true)]
async fn start_on_a_stale_offer_renews_it_once() {
    // OfferExpired, then a fresh find, Intent and TaskStart to the same provider.
    let starts = vec![OnStart::Refuses(Code::OfferExpired), OnStart::Done];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(codes(&done.attempts), [(h.peer(0), "task", Code::OfferExpired)]);
    assert_eq!(h.peers.settle(h.provider(0), 5).await, [I, S, I, S, R]);
    assert_eq!(h.peers.finds(), 2);
    assert_eq!(h.market.stats().failovers, 0, "a renewal is not a failover");

    // A provider that forgets again is not asked a third time.
    let starts = vec![OnStart::Refuses(Code::NotFound)];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let err = h.market.call(h.request()).await.unwrap_err();
    assert!(matches!(err, CallError::Exhausted { .. }), "{err}");
    let stale = (h.peer(0), "task", Code::NotFound);
    assert_eq!(codes(err.attempts()), [stale.clone(), stale]);
    assert_eq!(h.peers.received(h.provider(0)), [I, S, I, S]);
    assert_eq!(h.peers.finds(), 2);
}

#[tokio::test(start_paused = true)]
async fn start_at_an_unreachable_provider_fails_over() {
    let providers = vec![
        Provider::new(1, 1, OnIntent::Offer, vec![OnStart::Unreachable]),
        Provider::new(2, 2, OnIntent::Offer, vec![OnStart::Done]),
    ];
    let h = harness(providers, true, MarketConfig::default());
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(done.provider, h.peer(1));
    assert_eq!(codes(&done.attempts), [(h.peer(0), "task", Code::Unreachable)]);
    assert_eq!(h.peers.received(h.provider(0)), [I, S]);
    assert_eq!(h.peers.settle(h.provider(1), 3).await, [I, S, R]);
    assert_eq!(h.market.reputation(&h.peer(0)).bad, 1);
    // Its offer is forgotten: the next call asks it for a new one.
    let standing = lock(&h.market.inner.caller).held.usable(&h.peers.cap, now_ms());
    assert_eq!(standing.iter().map(|s| s.provider).collect::<Vec<_>>(), [h.peer(1)]);
}

#[tokio::test(start_paused = true)]
async fn an_idempotent_call_renewed_at_the_provider_that_ran_it_takes_that_run() {
    // The first TaskStart runs but its answer is lost: the caller renews the offer at the same
    // provider and repeats the call id, and the provider answers with its one run, whose
    // receipt names the first offer. That receipt is the call's, not a bad one.
    let starts = vec![OnStart::RunsUnanswered, OnStart::Done];
    let providers = vec![Provider::new(1, 1, OnIntent::Offer, starts)];
    let h = harness_of(providers, true, MarketConfig::default(), true);
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(codes(&done.attempts), [(h.peer(0), "task", Code::Unreachable)]);
    assert_eq!(h.peers.settle(h.provider(0), 5).await, [I, S, I, S, R]);
    let receipt = done.receipt.decode(capmesh_wire::cbor::Limits::default()).unwrap();
    let first = lock(&h.peers.ran).values().next().cloned().unwrap();
    assert_eq!((receipt.call, receipt.offer), (first.call, first.offer));
    assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Ok)]);

    // Not idempotent: the repeat gets a fresh call id, so it is a run of its own.
    let starts = vec![OnStart::RunsUnanswered, OnStart::Done];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let done = h.market.call(h.request()).await.unwrap();
    let first = lock(&h.peers.ran).values().next().cloned().unwrap();
    assert_ne!(done.call, first.call);
}

#[tokio::test(start_paused = true)]
async fn start_accepted_then_the_followup_done_concludes() {
    let starts = vec![OnStart::Accepted(Some(Duration::from_millis(3500)))];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let (tx, mut rx) = mpsc::channel(32);
    let started = Instant::now();
    let done = h.market.call(h.request().with_events(tx)).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(3500));
    assert_eq!(done.output, Some(json!({"echo": {"text": "hi"}})));
    assert_eq!(done.requests, 2, "connected: no probe before the tenth tick");
    assert_eq!(h.peers.settle(h.provider(0), 3).await, [I, S, R]);
    assert!(events(&mut rx).iter().any(|e| matches!(e, CallEvent::Accepted { .. })));
}

#[tokio::test(start_paused = true)]
async fn start_accepted_on_a_lost_connection_is_probed_and_the_probe_finds_it_done() {
    let starts = vec![OnStart::Accepted(None), OnStart::Accepted(None), OnStart::Done];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], false, Default::default());
    let started = Instant::now();
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(2), "a probe a second");
    assert_eq!(done.requests, 4, "an intent, the start and two probes");
    assert_eq!(h.peers.settle(h.provider(0), 5).await, [I, S, S, S, R]);
    assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Ok)]);
}

#[tokio::test(start_paused = true)]
async fn start_accepted_past_the_deadline_is_cancelled_in_the_background() {
    let starts = vec![OnStart::Accepted(None)];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let req = h.request().with_deadline(Duration::from_secs(5));
    let err = h.market.call(req).await.unwrap_err();
    assert!(matches!(err, CallError::Deadline { .. }), "{err}");
    assert_eq!(codes(err.attempts()), [(h.peer(0), "task", Code::Timeout)]);
    assert!(err.attempts()[0].message.contains("no outcome"));
    assert_eq!(h.peers.settle(h.provider(0), 3).await, [I, S, C]);
    // The cancelled run's answer is not waited for: nothing kept.
    assert!(h.ledger().is_empty());
}

#[tokio::test(start_paused = true)]
async fn start_unanswered_past_the_deadline_is_cancelled_in_the_background() {
    let starts = vec![OnStart::Silent];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let started = Instant::now();
    let err = h.market.call(h.request().with_deadline(Duration::from_secs(3))).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert!(matches!(err, CallError::Deadline { .. }), "{err}");
    assert!(err.attempts()[0].message.contains("no answer"));
    assert_eq!(h.peers.settle(h.provider(0), 3).await, [I, S, C]);
}

/// Cancels the call once `provider` received its `TaskStart` (and the clock moved on).
async fn cancel_after_start(h: &Harness, req: CallRequest) -> Result<CallOutcome, CallError> {
    let id: CallId = FixedId([42; 16]);
    let market = h.market.clone();
    let call = tokio::spawn(async move { market.call(req.with_call_id(id)).await });
    h.peers.settle(h.provider(0), 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.market.cancel(&id));
    call.await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn cancel_while_the_start_is_in_flight_sends_task_cancel_and_keeps_the_receipt() {
    let starts = vec![OnStart::Silent];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let err = cancel_after_start(&h, h.request()).await.unwrap_err();
    assert!(matches!(err, CallError::Cancelled), "{err}");
    assert_eq!(h.peers.settle(h.provider(0), 4).await, [I, S, C, R]);
    assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Cancelled)]);
    assert!(!h.market.cancel(&FixedId([42; 16])), "no longer in flight");
}

#[tokio::test(start_paused = true)]
async fn cancel_while_accepted_sends_task_cancel_and_keeps_the_receipt() {
    let starts = vec![OnStart::Accepted(None)];
    let h = harness(vec![Provider::new(1, 1, OnIntent::Offer, starts)], true, Default::default());
    let (tx, mut rx) = mpsc::channel(32);
    let err = cancel_after_start(&h, h.request().with_events(tx)).await.unwrap_err();
    assert!(matches!(err, CallError::Cancelled), "{err}");
    assert!(events(&mut rx).iter().any(|e| matches!(e, CallEvent::Accepted { .. })));
    assert_eq!(h.peers.settle(h.provider(0), 4).await, [I, S, C, R]);
    assert_eq!(h.ledger(), [(h.peer(0), CallStatus::Cancelled)]);
}

#[tokio::test(start_paused = true)]
async fn a_bad_receipt_fails_over_with_bad_receipt_and_is_not_kept() {
    let providers = vec![
        Provider::new(1, 1, OnIntent::Offer, vec![OnStart::ForgedReceipt]),
        Provider::new(2, 2, OnIntent::Offer, vec![OnStart::Done]),
    ];
    let h = harness(providers, true, MarketConfig::default());
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(done.provider, h.peer(1));
    assert_eq!(codes(&done.attempts), [(h.peer(0), "task", Code::BadReceipt)]);
    assert_eq!(h.peers.settle(h.provider(1), 3).await, [I, S, R]);
    assert_eq!(h.peers.received(h.provider(0)), [I, S], "not countersigned");
    assert_eq!(h.ledger(), [(h.peer(1), CallStatus::Ok)]);
}

#[tokio::test(start_paused = true)]
async fn an_output_that_breaks_the_contract_fails_over_with_output_invalid() {
    let providers = vec![
        Provider::new(1, 1, OnIntent::Offer, vec![OnStart::Output(json!({"nope": 1}))]),
        Provider::new(2, 2, OnIntent::Offer, vec![OnStart::Done]),
    ];
    let h = harness(providers, true, MarketConfig::default());
    let done = h.market.call(h.request()).await.unwrap();
    assert_eq!(done.provider, h.peer(1));
    assert_eq!(codes(&done.attempts), [(h.peer(0), "task", Code::OutputInvalid)]);
    assert_eq!(h.peers.settle(h.provider(1), 3).await, [I, S, R]);
    assert_eq!(h.peers.received(h.provider(0)), [I, S], "its receipt is not kept");
    assert_eq!(h.ledger(), [(h.peer(1), CallStatus::Ok)]);
}

#[tokio::test(start_paused = true)]
async fn failover_goes_past_the_first_fanout() {
    let mut providers: Vec<Provider> =
        (1..=3).map(|i| Provider::new(i, 1, OnIntent::Unreachable, Vec::new())).collect();
    providers.push(Provider::new(4, 9, OnIntent::Offer, vec![OnStart::Done]));
    let h = harness(providers, true, MarketConfig::default());
    let (tx, mut rx) = mpsc::channel(32);
    let done = h.market.call(h.request().with_events(tx)).await.unwrap();
    assert_eq!(done.provider, h.peer(3));
    let unreachable: Vec<_> = (0..3).map(|i| (h.peer(i), "intent", Code::Unreachable)).collect();
    let mut got = codes(&done.attempts);
    got.sort_by_key(|(p, ..)| *p);
    let mut want = unreachable;
    want.sort_by_key(|(p, ..)| *p);
    assert_eq!(got, want);
    for i in 0..3 {
        assert_eq!(h.peers.received(h.provider(i)), [I]);
    }
    assert_eq!(h.peers.settle(h.provider(3), 3).await, [I, S, R]);
    assert_eq!(h.peers.finds(), 1, "the second fan-out comes from the same ranking");
    let fanouts: Vec<usize> = events(&mut rx)
        .iter()
        .filter_map(|e| match e {
            CallEvent::Providers { providers } => Some(providers.len()),
            _ => None,
        })
        .collect();
    assert_eq!(fanouts, [3, 1]);
}

#[test]
fn a_failed_try_is_classified_once_from_how_it_failed_and_its_code() {
    let peer = caller_key().peer_id();
    let verdict =
        |how: Failure, code: Code| match how.verdict(attempt(peer, "task", code, "", None)) {
            Tried::Stop(_) => "stop",
            Tried::Renew(_) => "renew",
            Tried::Next(_) => "next",
            Tried::Done(_) => "done",
        };
    type F = Failure;
    assert_eq!(verdict(F::Refused, Code::InvalidArgs), "stop");
    assert_eq!(verdict(F::Ran, Code::InvalidArgs), "stop");
    assert_eq!(verdict(F::Ran, Code::Cancelled), "stop");
    assert_eq!(verdict(F::Refused, Code::OfferExpired), "renew");
    assert_eq!(verdict(F::Refused, Code::NotFound), "renew");
    assert_eq!(verdict(F::Ran, Code::NotFound), "next", "a run that failed is not renewed");
    assert_eq!(verdict(F::Unreachable, Code::Unreachable), "renew");
    assert_eq!(verdict(F::Unreachable, Code::Timeout), "renew");
    assert_eq!(verdict(F::Refused, Code::RateLimited), "next");
    assert_eq!(verdict(F::Ran, Code::Internal), "next");
    assert_eq!(verdict(F::Unusable, Code::InvalidArgs), "next", "a probe's refusal fails over");
    assert_eq!(verdict(F::Unusable, Code::BadReceipt), "next");
}
