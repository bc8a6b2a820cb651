//! The caller side (protocol.md §9 steps 2–5, 8–10): validate, find, ask for offers, rank,
//! start, verify, ledger, countersign; fail over and cancel.
//!
//! Failover walks the ranking: standing offers first, then the find's providers ranked by
//! their advertised terms and this node's record, asked `intent_fanout` at a time; when every
//! offer of a fan-out failed (or none came), the next fan-out asks the next providers, until
//! one serves the call, the ranking runs out, `max_providers` were contacted, a try says that
//! trying elsewhere cannot help (`InvalidArgs`, `Cancelled`), or the deadline passes. Every
//! failed try is an [`Attempt`], in order.
//!
//! The call (`run_call`) is a loop over that walk: find (`find_providers`), one fan-out of
//! `Intent`s (`ask_for_offers`), then one try per offer (`try_offer`, in `states.rs`: the
//! `Started`, `Accepted`, `Probing`, `Concluding`, `Cancelling` and `Expired` steps, and the
//! one verdict on a failed try). Everything goes out through the market's `CallTransport`
//! (the mesh; scripted peers in `scripted.rs`, the tests of every transition).

#[cfg(test)]
mod scripted;
mod states;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use capmesh_contract::Contract;
use capmesh_mesh::{Exchange, FindEvent, MeshError, Multiaddr, Thread};
use capmesh_store::{LedgerKind, LedgerNote, SessionTag};
use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{
    Body, CallId, CallStatus, Code, Countersignature, ErrorBody, Intent, Negotiate, Offer, Opened,
    Price, Receipt, ReceiptCountersign, Signed, TaskDone, TraceId,
};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    Attempt, CallError, Market, MarketConfig, Record, Weights,
    batch::{Done, Refused},
    error_body, lock, now_ms,
    offers::{Held, Standing},
    receipt::{CHAIN_START, chain_next, json_digest},
    select::rank,
};

/// What an agent asks for.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub capability: Cid,
    pub args: Value,
    pub weights: Weights,
    /// The most the agent pays per call (also checked against the caller policy's maximum).
    pub max_price: Option<Price>,
    /// Default: the market's `default_deadline`.
    pub deadline: Option<Duration>,
    /// The most providers the call contacts over all its fan-outs (at least 1). Default: the
    /// market's `max_providers`.
    pub max_providers: Option<usize>,
    /// Idempotency key; random when absent.
    pub call_id: Option<CallId>,
    /// Where a streaming capability's chunks go, in order, as they arrive.
    pub chunks: Option<mpsc::Sender<Vec<u8>>>,
    /// The trace id of every envelope of the call (an agent's W3C `traceparent`); random when
    /// absent.
    pub trace: Option<TraceId>,
    /// Where the call's steps are reported as they happen ([`CallEvent`]). Sent with
    /// `try_send`: a full channel loses events, never stalls the call.
    pub events: Option<mpsc::Sender<CallEvent>>,
    /// The agent session the call is made under, kept in the receipt's ledger note.
    pub session: Option<SessionTag>,
}

/// A step of a call, as it happens (for agents that follow a call).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CallEvent {
    /// One fan-out: providers found and admitted by policy, in the order they are asked for
    /// offers. A call that goes further down the ranking reports each fan-out.
    Providers { providers: Vec<PeerId> },
    /// A provider's offer, usable for this call.
    Offer { provider: PeerId, price: Price, latency_ms: u64 },
    /// A try starts at `provider` (`warm`: under a standing offer, without asking for terms).
    Chosen { provider: PeerId, warm: bool },
    /// The provider accepted the call and runs it past its inline window.
    Accepted { provider: PeerId },
    /// A try that did not succeed; the call fails over if it can.
    Failed(Attempt),
}

impl CallRequest {
    pub fn new(capability: Cid, args: Value) -> Self {
        Self {
            capability,
            args,
            weights: Weights::default(),
            max_price: None,
            deadline: None,
            max_providers: None,
            call_id: None,
            chunks: None,
            trace: None,
            events: None,
            session: None,
        }
    }
    pub fn with_weights(mut self, w: Weights) -> Self {
        self.weights = w;
        self
    }
    pub fn with_max_price(mut self, p: Price) -> Self {
        self.max_price = Some(p);
        self
    }
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }
    /// Contacts at most `n` providers (at least 1) over all the call's fan-outs.
    pub fn with_max_providers(mut self, n: usize) -> Self {
        self.max_providers = Some(n.max(1));
        self
    }
    pub fn with_call_id(mut self, id: CallId) -> Self {
        self.call_id = Some(id);
        self
    }
    pub fn with_chunks(mut self, tx: mpsc::Sender<Vec<u8>>) -> Self {
        self.chunks = Some(tx);
        self
    }
    pub fn with_trace(mut self, trace: TraceId) -> Self {
        self.trace = Some(trace);
        self
    }
    pub fn with_events(mut self, tx: mpsc::Sender<CallEvent>) -> Self {
        self.events = Some(tx);
        self
    }
    pub fn with_session(mut self, session: SessionTag) -> Self {
        self.session = Some(session);
        self
    }
}

/// A call that succeeded, with its verified, ledgered receipt.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub call: CallId,
    /// The trace id every envelope of the call carried.
    pub trace: TraceId,
    pub capability: Cid,
    pub provider: PeerId,
    /// The output (absent for a streaming capability: the chunks are the output).
    pub output: Option<Value>,
    /// Chunks received (streaming) and their chain root, which the receipt names.
    pub chunks: u64,
    pub stream_root: Option<Digest>,
    pub receipt: Signed<Receipt>,
    pub receipt_id: Cid,
    /// Position of the receipt in this node's ledger.
    pub ledger_seq: u64,
    pub price: Price,
    /// Tries that failed before this one.
    pub attempts: Vec<Attempt>,
    /// Rpc requests this call sent before it returned (`Intent`s, `TaskStart`s,
    /// `TaskCancel`s); a warm call sends exactly one.
    pub requests: u32,
    /// Made under a standing offer, without asking for terms.
    pub warm: bool,
    pub elapsed: Duration,
}

/// A contract held by id: checked to hash to the id, schemas compiled.
#[derive(Debug)]
pub(crate) struct Known {
    contract: Arc<Contract>,
    compiled: capmesh_contract::Compiled,
}

/// Contracts kept compiled; past it the cache starts over.
const MAX_CONTRACTS: usize = 1024;

/// A follow-up the provider sent as its own request.
#[derive(Debug)]
enum Followup {
    Progress(Vec<u8>),
    Done(Box<TaskDone>, Cid),
}

#[derive(Debug)]
struct InFlight {
    /// The id the agent knows the call by (the key changes when a failover of a
    /// non-idempotent call takes a fresh id).
    origin: CallId,
    cancel: CancellationToken,
    /// The provider of the current attempt and its follow-up channel.
    provider: Option<PeerId>,
    followups: Option<mpsc::Sender<Followup>>,
    chain: Digest,
    next_seq: u64,
}

/// Caller bookkeeping.
#[derive(Debug)]
pub(crate) struct State {
    held: Held,
    in_flight: HashMap<CallId, InFlight>,
    reputation: HashMap<PeerId, Record>,
    max_in_flight: usize,
}

/// While a deferred call runs, how often the caller checks that the provider is reachable …
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// … and every how many checks it asks the provider even while connected.
const PROBE_RUNNING: u32 = 10;
/// How long a `TaskCancel` may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Providers whose record is kept; past it the record restarts (a stranger's prior).
const MAX_REPUTATION: usize = 65_536;

impl State {
    pub(crate) fn new(config: &MarketConfig) -> Self {
        Self {
            held: Held::new(config.max_standing),
            in_flight: HashMap::new(),
            reputation: HashMap::new(),
            max_in_flight: config.max_in_flight.max(1),
        }
    }

    fn rate(&mut self, provider: PeerId, ok: bool) {
        if self.reputation.len() >= MAX_REPUTATION && !self.reputation.contains_key(&provider) {
            self.reputation.clear();
        }
        let r = self.reputation.entry(provider).or_default();
        if ok {
            r.ok = r.ok.saturating_add(1);
        } else {
            r.bad = r.bad.saturating_add(1);
        }
    }
}

/// Removes the call from the in-flight table however the call ends.
struct InFlightGuard<'a> {
    market: &'a Market,
    call: CallId,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        lock(&self.market.inner.caller).in_flight.retain(|_, f| f.origin != self.call);
    }
}

/// How one try ended.
enum Tried {
    Done(Box<CallOutcome>),
    /// Try the next offer.
    Next(Attempt),
    /// The provider no longer knows the offer: ask it for a new one.
    Renew(Attempt),
    /// Stop: trying elsewhere cannot help.
    Stop(CallError),
}

/// A provider a find returned, admitted by this node's policy, not yet asked for terms.
#[derive(Debug, Clone)]
struct Candidate {
    provider: PeerId,
    addrs: Vec<Multiaddr>,
    price: Price,
}

/// How far a call went down the ranking: the providers it contacted (counted against its
/// limit) and those the last find ranked and it has not asked yet.
#[derive(Debug)]
struct Walk {
    /// Most providers the call contacts, at least 1.
    limit: usize,
    /// Providers sent an `Intent`, or a `TaskStart` under a standing offer.
    contacted: HashSet<PeerId>,
    /// Contacted providers that forgot our standing offer: asked for a new one once more.
    renewing: HashSet<PeerId>,
    /// Providers this node's policy refused (reported once, never asked).
    denied: HashSet<PeerId>,
    /// The last find's providers, best first, not yet asked; `None` until a find runs (and
    /// again after a renewal, whose provider a fresh find gives its current addresses).
    ranking: Option<VecDeque<Candidate>>,
    /// A fan-out went out.
    asked: bool,
}

impl Walk {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            contacted: HashSet::new(),
            renewing: HashSet::new(),
            denied: HashSet::new(),
            ranking: None,
            asked: false,
        }
    }

    /// Whether a find's `provider` may still be asked for terms.
    fn may_ask(&self, provider: &PeerId) -> bool {
        !self.denied.contains(provider)
            && (!self.contacted.contains(provider) || self.renewing.contains(provider))
    }

    /// Whether a fan-out could still ask anyone: the limit leaves room, or a renewal waits.
    fn may_ask_more(&self) -> bool {
        self.contacted.len() < self.limit || !self.renewing.is_empty()
    }

    /// Counts `provider` as contacted; `false` if that would pass the limit.
    fn admit(&mut self, provider: PeerId) -> bool {
        if self.contacted.contains(&provider) {
            return true;
        }
        if self.contacted.len() >= self.limit {
            return false;
        }
        self.contacted.insert(provider)
    }

    /// The next fan-out: the best `width` providers of the ranking that may be asked, within
    /// the limit (a renewed provider is not counted twice). Empty when the ranking or the
    /// limit ran out.
    fn next_fanout(&mut self, width: usize) -> Vec<Candidate> {
        let mut fanout = Vec::new();
        let Some(ranking) = self.ranking.as_mut() else { return fanout };
        while fanout.len() < width.max(1) {
            let Some(c) = ranking.pop_front() else { break };
            let (renewal, contacted) =
                (self.renewing.contains(&c.provider), self.contacted.contains(&c.provider));
            if self.denied.contains(&c.provider) || (contacted && !renewal) {
                continue;
            }
            if !contacted && self.contacted.len() >= self.limit {
                // Only a renewal may still come (it is counted already).
                continue;
            }
            self.renewing.remove(&c.provider);
            self.contacted.insert(c.provider);
            fanout.push(c);
        }
        fanout
    }

    /// `provider` forgot our standing offer: the next fan-out comes from a fresh find and may
    /// ask it again.
    fn renew(&mut self, provider: PeerId) {
        self.renewing.insert(provider);
        self.ranking = None;
    }
}

/// The per-call context shared by its tries.
struct Ctx<'a> {
    req: &'a CallRequest,
    /// The contract held by id: from the replica, else from the find (args are validated
    /// against it before any request leaves).
    contract: Option<Arc<Known>>,
    call: CallId,
    trace: TraceId,
    deadline: Instant,
    deadline_ms: u64,
    cancel: CancellationToken,
    requests: u32,
    input: Digest,
    /// The offers a `TaskStart` went out under with the current call id, by provider. A
    /// provider asked again with the same id (an idempotent call renewing its offer) answers
    /// with the run it already did, whose receipt names the first offer (protocol.md §8.5).
    starts: Vec<(PeerId, Cid, Price)>,
}

impl Ctx<'_> {
    /// The local note kept beside the call's receipt: its trace and session.
    fn note(&self) -> LedgerNote {
        LedgerNote { trace: Some(self.trace.0), session: self.req.session.clone() }
    }

    /// Reports a step to whoever follows the call (never waits: see [`CallRequest::events`]).
    fn emit(&self, event: CallEvent) {
        if let Some(tx) = &self.req.events {
            let _ = tx.try_send(event);
        }
    }
}

impl Market {
    /// Makes one call (DESIGN §5). Returns once the receipt is verified and flushed to the
    /// ledger; the countersignature is sent afterwards. Cancel-safe: dropping the future
    /// abandons the call without `TaskCancel` — use [`Market::cancel`] to stop the provider.
    ///
    /// Every call that returns is counted by outcome (failures by [`Code::metric_label`]) with its
    /// duration, refusals before anything was sent included (`stats()`).
    pub async fn call(&self, req: CallRequest) -> Result<CallOutcome, CallError> {
        let clock = Instant::now();
        let result = self.call_from(req, clock).await;
        let elapsed = clock.elapsed();
        self.bump(|s| match &result {
            Ok(_) => {
                s.calls_ok += 1;
                s.call_ok_latency.observe(elapsed);
            }
            Err(e) => {
                s.calls_failed += 1;
                *s.calls_failed_by.entry(e.code().metric_label().to_string()).or_default() += 1;
                s.call_failed_latency.observe(elapsed);
            }
        });
        result
    }

    /// [`Market::call`] started at `clock`.
    async fn call_from(&self, req: CallRequest, clock: Instant) -> Result<CallOutcome, CallError> {
        let span = req.deadline.unwrap_or(self.inner.config.default_deadline);
        let call = match req.call_id {
            Some(id) => id,
            None => fresh()?,
        };
        let cancel = self.inner.cancel.child_token();
        {
            let mut state = lock(&self.inner.caller);
            if state.in_flight.contains_key(&call)
                || state.in_flight.values().any(|f| f.origin == call)
            {
                return Err(CallError::DuplicateCall);
            }
            if state.in_flight.len() >= state.max_in_flight {
                return Err(CallError::Busy(state.max_in_flight));
            }
            state.in_flight.insert(
                call,
                InFlight {
                    origin: call,
                    cancel: cancel.clone(),
                    provider: None,
                    followups: None,
                    chain: CHAIN_START,
                    next_seq: 0,
                },
            );
        }
        let _guard = InFlightGuard { market: self, call };
        // Step 2: the arguments are checked before anything leaves the node — against the
        // contract held by id, when the replica has it.
        let stored = self.known(&req.capability, None)?;
        if let Some(known) = &stored {
            validate_args(known, &req.args)?;
        }
        let input = json_digest(&req.args).map_err(|e| CallError::InvalidArgs(e.to_string()))?;
        let ctx = Ctx {
            req: &req,
            contract: stored,
            call,
            trace: match req.trace {
                Some(t) => t,
                None => fresh()?,
            },
            deadline: clock + span,
            deadline_ms: now_ms() + span.as_millis() as u64,
            cancel,
            requests: 0,
            input,
            starts: Vec::new(),
        };
        self.run_call(ctx, clock).await
    }

    /// Cancels a call in flight on this node: the provider running it gets `TaskCancel`.
    /// Returns whether such a call was in flight.
    pub fn cancel(&self, call: &CallId) -> bool {
        let state = lock(&self.inner.caller);
        let found = state.in_flight.get(call).or_else(|| {
            // Known by its first id after a failover gave it a fresh one.
            state.in_flight.values().find(|f| f.origin == *call)
        });
        match found {
            Some(f) => {
                f.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// What this node's receipts say about `provider`.
    pub fn reputation(&self, provider: &PeerId) -> Record {
        lock(&self.inner.caller).reputation.get(provider).copied().unwrap_or_default()
    }

    /// The contract of `cap`: from the cache, else `given` (from a find) or the replica,
    /// checked to hash to `cap` and compiled once.
    fn known(&self, cap: &Cid, given: Option<&Contract>) -> Result<Option<Arc<Known>>, CallError> {
        if let Some(k) = lock(&self.inner.contracts).get(cap) {
            return Ok(Some(k.clone()));
        }
        let contract = match given {
            Some(c) => c.clone(),
            None => match self.store().contract(cap)? {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        let compiled = capmesh_contract::Compiled::new(&contract)
            .map_err(|e| CallError::InvalidArgs(format!("the contract cannot validate: {e}")))?;
        if compiled.id() != *cap {
            return Err(CallError::InvalidArgs(format!(
                "the contract found for {cap} is {}, not that capability",
                compiled.id()
            )));
        }
        let known = Arc::new(Known { contract: Arc::new(contract), compiled });
        let mut cache = lock(&self.inner.contracts);
        if cache.len() >= MAX_CONTRACTS {
            cache.clear();
        }
        cache.insert(*cap, known.clone());
        Ok(Some(known))
    }

    async fn run_call(&self, mut ctx: Ctx<'_>, clock: Instant) -> Result<CallOutcome, CallError> {
        let cap = ctx.req.capability;
        let config = &self.inner.config;
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut walk = Walk::new(ctx.req.max_providers.unwrap_or(config.max_providers));
        // Step 3: standing offers first (a warm call), then fresh ones, a fan-out at a time down
        // the find's ranking until one serves the call, the ranking or the limit on providers
        // runs out, or the deadline passes.
        let mut queue = if ctx.contract.is_some() { self.standing(&ctx) } else { Vec::new() };
        let mut warm = !queue.is_empty();
        // A provider that forgot our standing offer is asked for a new one (once per provider).
        let mut renewed: HashSet<PeerId> = HashSet::new();
        loop {
            if Instant::now() >= ctx.deadline {
                return Err(CallError::Deadline { attempts });
            }
            if queue.is_empty() {
                warm = false;
                if walk.ranking.is_none() && walk.may_ask_more() {
                    let found = self.find_providers(&mut ctx, &mut walk, &mut attempts).await?;
                    walk.ranking = Some(found.into());
                }
                let fanout = walk.next_fanout(config.intent_fanout);
                if fanout.is_empty() {
                    if !walk.asked {
                        // Whoever follows the call learns that the find left nobody to ask.
                        ctx.emit(CallEvent::Providers { providers: Vec::new() });
                    }
                    break;
                }
                walk.asked = true;
                queue = self.ask_for_offers(&mut ctx, fanout, &mut attempts).await?;
                continue;
            }
            let standing = queue.remove(0);
            // Only standing offers can come from providers not counted yet.
            if !walk.admit(standing.provider) {
                continue;
            }
            ctx.emit(CallEvent::Chosen { provider: standing.provider, warm });
            match self.try_offer(&mut ctx, &standing).await {
                Tried::Done(mut outcome) => {
                    outcome.attempts = attempts;
                    outcome.warm = warm;
                    outcome.requests = ctx.requests;
                    outcome.elapsed = clock.elapsed();
                    return Ok(*outcome);
                }
                Tried::Next(a) => {
                    self.bump(|s| s.failovers += 1);
                    tracing::debug!(call = ?ctx.call, attempt = %a, "failing over");
                    ctx.emit(CallEvent::Failed(a.clone()));
                    attempts.push(a);
                }
                Tried::Renew(a) if renewed.insert(standing.provider) => {
                    tracing::debug!(call = ?ctx.call, attempt = %a, "offer forgotten; asking again");
                    walk.renew(standing.provider);
                    ctx.emit(CallEvent::Failed(a.clone()));
                    attempts.push(a);
                }
                Tried::Renew(a) => {
                    self.bump(|s| s.failovers += 1);
                    ctx.emit(CallEvent::Failed(a.clone()));
                    attempts.push(a);
                }
                Tried::Stop(e) => return Err(e),
            }
        }
        if Instant::now() >= ctx.deadline {
            return Err(CallError::Deadline { attempts });
        }
        if attempts.is_empty() {
            return Err(CallError::NoProviders(cap));
        }
        Err(CallError::Exhausted { attempts })
    }

    /// Usable standing offers for the call, ranked.
    fn standing(&self, ctx: &Ctx<'_>) -> Vec<Standing> {
        let policy = self.inner.policy.current();
        let attested = self.attested();
        let mut state = lock(&self.inner.caller);
        let mut offers: Vec<Standing> = state
            .held
            .usable(&ctx.req.capability, now_ms())
            .into_iter()
            .filter(|s| policy.check_provider(&s.provider, &attested).is_ok())
            .filter(|s| policy.check_price(&s.offer.price, ctx.req.max_price.as_ref()).is_ok())
            .collect();
        rank(&mut offers, &ctx.req.weights, &state.reputation, |s| (&s.provider, &s.offer));
        offers
    }

    /// Finds providers the walk has not asked yet, drops (and reports once) those policy
    /// refuses, and returns the rest ranked by their advertised terms and this node's record
    /// of them: the order the call's fan-outs take them in. Learns the contract from the find
    /// when the replica lacked it, and validates the arguments before any `Intent` leaves.
    async fn find_providers(
        &self,
        ctx: &mut Ctx<'_>,
        walk: &mut Walk,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Vec<Candidate>, CallError> {
        let cap = ctx.req.capability;
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let window = self.inner.config.discover_timeout.min(remaining);
        let mut found = self.inner.transport.find(cap, self.inner.config.find_limit, Some(window));
        let mut providers: Vec<Candidate> = Vec::new();
        let policy = self.inner.policy.current();
        let attested = self.attested();
        loop {
            let event = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(CallError::Cancelled),
                e = found.recv() => e,
            };
            let Some(FindEvent::Found(f)) = event else { break };
            let provider = f.advert.provider;
            if provider == self.inner.me
                || !walk.may_ask(&provider)
                || providers.iter().any(|c| c.provider == provider)
            {
                continue;
            }
            if ctx.contract.is_none()
                && let Some(known) = self.known(&cap, Some(&f.contract))?
            {
                validate_args(&known, &ctx.req.args)?;
                ctx.contract = Some(known);
            }
            let refused = policy
                .check_provider(&provider, &attested)
                .and_then(|_| policy.check_price(&f.advert.price, ctx.req.max_price.as_ref()));
            if let Err(denial) = refused {
                walk.denied.insert(provider);
                attempts.push(Attempt {
                    provider,
                    code: denial.code.code(),
                    message: denial.reason,
                    stage: "policy",
                    retry_after_ms: None,
                });
                continue;
            }
            let addrs = f.advert.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            providers.push(Candidate { provider, addrs, price: f.advert.price.clone() });
        }
        if ctx.contract.is_none() {
            return Err(CallError::UnknownCapability(cap));
        }
        // The cheapest and most reliable first; latency is only known from offers.
        let state = lock(&self.inner.caller);
        let mut as_offers: Vec<(Candidate, Offer)> = providers
            .into_iter()
            .map(|c| {
                let price = c.price.clone();
                (c, Offer { capability: cap, price, latency_ms: 0, calls: 0, expires: 0 })
            })
            .collect();
        rank(&mut as_offers, &ctx.req.weights, &state.reputation, |(c, o)| (&c.provider, o));
        Ok(as_offers.into_iter().map(|(c, _)| c).collect())
    }

    /// One fan-out: asks `fanout` for terms in parallel (each `Intent` bounded by
    /// `intent_timeout`, all by the deadline), keeps the usable offers as standing ones and
    /// returns them ranked. Each provider that gave none is an attempt, also one still silent
    /// when the deadline passed; they are listed in the order the providers were asked.
    async fn ask_for_offers(
        &self,
        ctx: &mut Ctx<'_>,
        fanout: Vec<Candidate>,
        attempts: &mut Vec<Attempt>,
    ) -> Result<Vec<Standing>, CallError> {
        let cap = ctx.req.capability;
        let policy = self.inner.policy.current();
        ctx.emit(CallEvent::Providers { providers: fanout.iter().map(|c| c.provider).collect() });
        let asked: Vec<PeerId> = fanout.iter().map(|c| c.provider).collect();
        let mut pending = asked.clone();
        // This fan-out's failed tries, listed in the order the providers were asked (ranked).
        let mut failed: Vec<Attempt> = Vec::new();
        let mut asks: JoinSet<(PeerId, Vec<Multiaddr>, Result<Exchange, MeshError>)> =
            JoinSet::new();
        for Candidate { provider, addrs, .. } in fanout {
            let intent = Intent {
                capability: cap,
                max_price: ctx.req.max_price.clone(),
                calls: self.inner.config.offer_calls,
                deadline: ctx.deadline_ms,
            };
            let thread = Thread { trace: Some(ctx.trace), re: None };
            let timeout = self.inner.config.intent_timeout;
            ctx.requests += 1;
            self.bump(|s| s.requests_sent += 1);
            let sent = self.inner.transport.request(provider, addrs.clone(), intent.into(), thread);
            asks.spawn(async move {
                let result = match tokio::time::timeout(timeout, sent).await {
                    Ok(r) => r,
                    Err(_) => Err(MeshError::Net(capmesh_mesh::NetError::Timeout(timeout))),
                };
                (provider, addrs, result)
            });
        }
        let mut offers = Vec::new();
        loop {
            let joined = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(CallError::Cancelled),
                _ = tokio::time::sleep_until(ctx.deadline) => {
                    for provider in pending.drain(..) {
                        let a = "no offer before the deadline";
                        failed.push(attempt(provider, "intent", Code::Timeout, a, None));
                    }
                    break;
                }
                j = asks.join_next() => j,
            };
            let Some(Ok((provider, addrs, result))) = joined else {
                if asks.is_empty() {
                    break;
                }
                continue;
            };
            pending.retain(|p| *p != provider);
            match result.map(|x| x.answer) {
                Ok(Some(Opened { id, payload })) => match payload.body {
                    Body::Offer(offer) => {
                        let priced = policy.check_price(&offer.price, ctx.req.max_price.as_ref());
                        let refused = if offer.capability != cap {
                            Some((
                                Code::InvalidObject,
                                "an offer for another capability".to_string(),
                            ))
                        } else if offer.expires <= now_ms() || offer.calls == 0 {
                            Some((Code::OfferExpired, "an offer already expired or used up".into()))
                        } else if let Err(d) = priced {
                            Some((d.code.code(), d.reason))
                        } else {
                            None
                        };
                        if refused.is_none() {
                            ctx.emit(CallEvent::Offer {
                                provider,
                                price: offer.price.clone(),
                                latency_ms: offer.latency_ms,
                            });
                        }
                        match refused {
                            None => offers.push(Standing {
                                provider,
                                addrs,
                                offer_id: id,
                                calls_left: offer.calls,
                                offer,
                            }),
                            Some((code, why)) => {
                                failed.push(attempt(provider, "intent", code, &why, None))
                            }
                        }
                    }
                    Body::Negotiate(Negotiate { reason, .. }) => failed.push(attempt(
                        provider,
                        "intent",
                        Code::Declined,
                        reason.as_deref().unwrap_or("declined"),
                        None,
                    )),
                    other => failed.push(attempt(
                        provider,
                        "intent",
                        Code::InvalidObject,
                        &format!("{:?} in answer to Intent", other.kind()),
                        None,
                    )),
                },
                Ok(None) => failed.push(attempt(
                    provider,
                    "intent",
                    Code::InvalidObject,
                    "an acknowledgement to Intent",
                    None,
                )),
                Err(e) => failed.push(from_mesh(provider, "intent", &e)),
            }
        }
        failed.sort_by_key(|a| asked.iter().position(|p| *p == a.provider));
        attempts.extend(failed);
        let mut state = lock(&self.inner.caller);
        for o in &offers {
            state.held.keep(o.clone());
        }
        rank(&mut offers, &ctx.req.weights, &state.reputation, |s| (&s.provider, &s.offer));
        Ok(offers)
    }

    /// Step 8–9: appends a verified receipt and this node's countersignature of it to the
    /// ledger in the next group commit, returns the receipt's seq once flushed, and sends the
    /// countersignature to the provider without waiting. A receipt already kept (a repeated
    /// call id returns the stored one) is neither appended nor countersigned again.
    async fn keep_receipt(
        &self,
        receipt: &Signed<Receipt>,
        provider: PeerId,
        addrs: &[Multiaddr],
        note: LedgerNote,
        done_id: Cid,
    ) -> Result<u64, CallError> {
        let id = receipt.id();
        let trace: TraceId = capmesh_wire::repr::FixedBytes(note.trace.unwrap_or_default());
        let cs = Countersignature { receipt: id, caller: self.inner.me, signed: now_ms() };
        let countersigned = Signed::sign(&self.inner.key, &cs)?;
        let (receipt_bytes, cs_bytes) = (receipt.to_bytes(), countersigned.to_bytes());
        let op: crate::batch::Op = Box::new(move |store| {
            if let (Some(kept), _) = store.ledger_find(&id).map_err(Refused::internal)? {
                return Ok(Done { seq: kept.seq, fresh: false });
            }
            // Before the appends, so that their flush covers it.
            store.ledger_annotate(&id, &note).map_err(Refused::internal)?;
            let entry = store
                .ledger_append_unflushed(LedgerKind::Receipt, &receipt_bytes)
                .map_err(Refused::internal)?;
            store
                .ledger_append_unflushed(LedgerKind::Countersignature, &cs_bytes)
                .map_err(Refused::internal)?;
            Ok(Done { seq: entry.seq, fresh: true })
        });
        // Group commit: the calls in flight while a flush runs share the next one.
        let done = self.caller_ledger().run(op).await.map_err(|r| CallError::Ledger(r.message))?;
        if done.fresh {
            let market = self.clone();
            let addrs = addrs.to_vec();
            self.spawn_owned(async move {
                market.bump(|s| s.requests_sent += 1);
                let thread = Thread { trace: Some(trace), re: Some(done_id) };
                let body = ReceiptCountersign { countersignature: countersigned };
                let sent = market.inner.transport.request(provider, addrs, body.into(), thread);
                if let Err(e) = sent.await {
                    market.bump(|s| s.countersign_failures += 1);
                    tracing::debug!(%provider, error = %e, "countersignature not delivered");
                }
            });
        }
        Ok(done.seq)
    }

    /// `TaskProgress` and `TaskDone` the provider sends as its own requests.
    pub(crate) async fn serve_followup(
        &self,
        peer: PeerId,
        request: &Opened,
    ) -> Result<capmesh_mesh::Served, ErrorBody> {
        let not_found =
            || error_body(Code::NotFound, "no such call in flight from you", false, None);
        let (call, followup) = match &request.payload.body {
            Body::TaskProgress(p) => (p.call, None),
            Body::TaskDone(d) => (d.call, Some(Followup::Done(Box::new(d.clone()), request.id))),
            _ => return Err(not_found()),
        };
        let tx = {
            let mut state = lock(&self.inner.caller);
            let f = state.in_flight.get_mut(&call).ok_or_else(not_found)?;
            if f.provider != Some(peer) {
                return Err(not_found());
            }
            let tx = f.followups.clone().ok_or_else(not_found)?;
            match (&request.payload.body, followup) {
                (Body::TaskProgress(p), _) => {
                    // Each chunk must extend the chain, in order (protocol.md §8.5).
                    let next = chain_next(&f.chain, &p.data.0);
                    if p.seq != f.next_seq || p.chain != next {
                        return Err(error_body(
                            Code::InvalidObject,
                            format!("chunk {} does not extend the chain at {}", p.seq, f.next_seq),
                            false,
                            None,
                        ));
                    }
                    f.chain = next;
                    f.next_seq += 1;
                    (tx, Followup::Progress(p.data.0.clone()))
                }
                (_, Some(done)) => (tx, done),
                _ => return Err(not_found()),
            }
        };
        let (tx, followup) = tx;
        tx.send(followup).await.map_err(|_| not_found())?;
        Ok(capmesh_mesh::Served::Ack)
    }

    /// Rebuilds each provider's record from the receipts this node holds as caller.
    pub(crate) fn load_reputation(&self) -> Result<(), capmesh_store::StoreError> {
        let limits = capmesh_wire::cbor::Limits::default();
        let me = self.inner.me;
        let mut from = 0;
        loop {
            let page = self.store().ledger_range(from, 1024)?;
            let Some(last) = page.last() else { return Ok(()) };
            from = last.seq + 1;
            let mut state = lock(&self.inner.caller);
            for entry in page.iter().filter(|e| e.kind == LedgerKind::Receipt) {
                let Ok(r) = Signed::<Receipt>::from_bytes(&entry.signed, limits)
                    .and_then(|s| s.decode(limits))
                else {
                    continue;
                };
                if r.caller == me {
                    state.rate(r.provider, r.status == CallStatus::Ok);
                }
            }
        }
    }
}

fn validate_args(known: &Known, args: &Value) -> Result<(), CallError> {
    known
        .compiled
        .validate_input(args)
        .map_err(|v| CallError::InvalidArgs(capmesh_contract::summarize(&v)))
}

fn validate_output(known: &Known, output: &Value) -> Result<(), String> {
    known.compiled.validate_output(output).map_err(|v| {
        format!("output does not match the contract: {}", capmesh_contract::summarize(&v))
    })
}

fn attempt(
    provider: PeerId,
    stage: &'static str,
    code: Code,
    message: &str,
    retry_after_ms: Option<u64>,
) -> Attempt {
    Attempt { provider, code, message: message.to_string(), stage, retry_after_ms }
}

fn from_mesh(provider: PeerId, stage: &'static str, e: &MeshError) -> Attempt {
    match e {
        MeshError::Remote { code, message, retry_after_ms, .. } => {
            attempt(provider, stage, code.clone(), message, *retry_after_ms)
        }
        MeshError::Net(capmesh_mesh::NetError::Timeout(_)) => {
            attempt(provider, stage, Code::Timeout, &e.to_string(), None)
        }
        other => attempt(provider, stage, Code::Unreachable, &other.to_string(), None),
    }
}

/// Fresh random bytes for a call or trace id.
fn fresh<const N: usize>() -> Result<capmesh_wire::repr::FixedBytes<N>, CallError> {
    capmesh_wire::repr::FixedBytes::random().map_err(|e| CallError::Entropy(e.to_string()))
}

#[cfg(test)]
mod tests {
    use capmesh_types::NodeKey;

    use super::*;

    fn peer(seed: u8) -> PeerId {
        NodeKey::from_seed([seed; 32]).peer_id()
    }

    fn ranking(seeds: &[u8]) -> Option<VecDeque<Candidate>> {
        let price = Price { amount: 1, unit: "credit".into() };
        let c = |s: &u8| Candidate { provider: peer(*s), addrs: Vec::new(), price: price.clone() };
        Some(seeds.iter().map(c).collect())
    }

    fn peers(fanout: &[Candidate]) -> Vec<PeerId> {
        fanout.iter().map(|c| c.provider).collect()
    }

    #[test]
    fn the_walk_takes_the_ranking_a_fanout_at_a_time() {
        let mut walk = Walk::new(12);
        assert!(walk.next_fanout(3).is_empty(), "nothing before a find");
        walk.ranking = ranking(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(peers(&walk.next_fanout(3)), [peer(1), peer(2), peer(3)]);
        assert_eq!(peers(&walk.next_fanout(3)), [peer(4), peer(5), peer(6)]);
        assert_eq!(peers(&walk.next_fanout(3)), [peer(7)]);
        assert!(walk.next_fanout(3).is_empty(), "the ranking ran out");
        assert_eq!(walk.contacted.len(), 7);
        // A width of 0 still asks one.
        let mut walk = Walk::new(12);
        walk.ranking = ranking(&[1, 2]);
        assert_eq!(peers(&walk.next_fanout(0)), [peer(1)]);
    }

    #[test]
    fn the_walk_stops_at_its_limit_counting_standing_offers_tried() {
        let mut walk = Walk::new(4);
        // A standing offer tried first counts, and its provider is not asked again.
        assert!(walk.admit(peer(9)));
        assert!(walk.admit(peer(9)), "the same provider is not counted twice");
        walk.ranking = ranking(&[9, 1, 2, 3, 4, 5]);
        assert_eq!(peers(&walk.next_fanout(2)), [peer(1), peer(2)]);
        assert_eq!(peers(&walk.next_fanout(2)), [peer(3)], "the fourth provider is the last");
        assert!(walk.next_fanout(2).is_empty());
        assert!(!walk.admit(peer(4)), "nor a standing offer past the limit");
        assert!(!walk.may_ask_more(), "no find is needed");
        walk.renew(peer(9));
        assert!(walk.may_ask_more(), "but a renewal may ask again");
        assert_eq!(walk.contacted.len(), 4);
        assert_eq!(Walk::new(0).limit, 1, "a call contacts at least one provider");
    }

    #[test]
    fn a_renewed_provider_is_asked_again_without_counting_twice() {
        let mut walk = Walk::new(2);
        walk.ranking = ranking(&[1, 2, 3]);
        assert_eq!(peers(&walk.next_fanout(2)), [peer(1), peer(2)]);
        walk.renew(peer(1));
        assert!(walk.ranking.is_none(), "a fresh find gives its current addresses");
        assert!(walk.may_ask(&peer(1)) && !walk.may_ask(&peer(2)) && walk.may_ask(&peer(3)));
        walk.ranking = ranking(&[2, 1, 3]);
        assert_eq!(peers(&walk.next_fanout(3)), [peer(1)], "within the limit of 2");
        assert!(!walk.may_ask(&peer(1)), "renewed once");
        // Refused by policy: reported once, never asked.
        let mut walk = Walk::new(5);
        walk.denied.insert(peer(1));
        assert!(!walk.may_ask(&peer(1)));
        walk.ranking = ranking(&[1, 2]);
        assert_eq!(peers(&walk.next_fanout(3)), [peer(2)]);
    }
}
