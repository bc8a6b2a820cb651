//! The provider side: `Intent` → `Offer`, `TaskStart` → checks → run → Receipt → `TaskDone`
//! (inline or deferred), `TaskCancel`, and the caller's countersignature (protocol.md §8.5, §9
//! steps 5–7).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use capmesh_exec::{ExecError, Executor, Output, Run, ValidArgs};
use capmesh_mesh::{Served, Thread};
use capmesh_policy::Refusal;
use capmesh_store::LedgerKind;
use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{
    Body, CallId, CallLimits, CallStatus, Code, ErrorBody, Intent, Negotiate, NegotiateAction,
    Offer, Opened, Price, Receipt, ReceiptCountersign, Signed, TaskAccepted, TaskCancel, TaskDone,
    TaskProgress, TaskStart, TraceId, Validation, cbor,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    Market, MarketConfig,
    batch::{Done, Refused},
    error_body, lock, now_ms,
    offers::{Book, Issued, OfferProblem},
    receipt::{CHAIN_START, chain_next, json_digest},
};

/// A capability this node serves, and on what terms.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    pub executor: Arc<Executor>,
    pub price: Price,
    pub limits: CallLimits,
    /// Expected latency quoted in offers; `None` quotes the running average of past runs.
    pub latency_ms: Option<u64>,
    /// Advert lifetime; `None` = the mesh's default.
    pub ttl: Option<Duration>,
    /// The agent session serving it (a runtime attached over the local API), named in the
    /// ledger note of every receipt it earns.
    pub session: Option<capmesh_store::SessionTag>,
}

#[derive(Debug)]
pub(crate) struct Serving {
    spec: ServeSpec,
    /// The advert's `concurrency`: calls running at once for all callers.
    slots: Arc<Semaphore>,
    /// Exponential moving average of run times, in ms.
    observed_ms: Mutex<Option<f64>>,
}

impl Serving {
    fn latency_ms(&self) -> u64 {
        self.spec
            .latency_ms
            .unwrap_or_else(|| lock(&self.observed_ms).map_or(100, |ms| ms.round().max(1.0) as u64))
    }

    fn observe(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let mut avg = lock(&self.observed_ms);
        *avg = Some(avg.map_or(ms, |a| 0.8 * a + 0.2 * ms));
    }
}

/// How a call's `TaskDone` reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The `TaskStart` handler is still waiting inside the inline window.
    Waiting,
    /// Answered as a response (to `TaskStart`, a repeat, or `TaskCancel`).
    Answered,
    /// `TaskAccepted` was sent: the provider sends `TaskDone` as its own request.
    Deferred,
}

/// A call this node runs or ran, keyed by (caller, call id).
#[derive(Debug)]
pub(crate) struct Call {
    start_id: Cid,
    trace: TraceId,
    cancel: CancellationToken,
    done: watch::Sender<Option<Arc<TaskDone>>>,
    delivery: Mutex<Delivery>,
}

impl Call {
    fn finished(&self) -> Option<Arc<TaskDone>> {
        self.done.borrow().clone()
    }
}

/// Removes a call whose run ended without a `TaskDone` (no receipt could be signed, or the run
/// task panicked), so repeats are not told forever that it still runs.
struct Unfinished<'a> {
    market: &'a Market,
    key: (PeerId, CallId),
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.market.inner.provider);
        if state.calls.get(&self.key).is_some_and(|c| c.finished().is_none()) {
            state.calls.remove(&self.key);
        }
    }
}

/// What admission granted a call: its checked arguments, the offer's price, and the rate and
/// concurrency slots it holds until the run ends.
struct Admitted {
    args: ValidArgs,
    price: Price,
    permits: (capmesh_policy::Permit, tokio::sync::OwnedSemaphorePermit),
}

/// A run not finished inline: spawned as its own task when dropped, also when the handler
/// that drove it is dropped, so an admitted call always reaches its `TaskDone`.
struct Detached(Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>);

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            tokio::spawn(run);
        }
    }
}

/// Provider bookkeeping: issued offers and the call table (bounded).
#[derive(Debug)]
pub(crate) struct State {
    offers: Book,
    calls: HashMap<(PeerId, CallId), Arc<Call>>,
    /// Finished calls in finishing order, for retention and eviction: key, when, and the
    /// size of the answer kept for repeats.
    finished: VecDeque<((PeerId, CallId), u64, usize)>,
    /// Bytes of the answers kept in `finished`.
    kept_bytes: usize,
    max_calls: usize,
    max_kept_bytes: usize,
    retention_ms: u64,
}

impl State {
    pub(crate) fn new(config: &MarketConfig) -> Self {
        Self {
            offers: Book::new(config.max_offers),
            calls: HashMap::new(),
            finished: VecDeque::new(),
            kept_bytes: 0,
            max_calls: config.max_calls.max(1),
            max_kept_bytes: config.max_kept_bytes,
            retention_ms: config.done_retention.as_millis() as u64,
        }
    }

    /// Makes room for one more call: finished calls past retention go, then the oldest
    /// finished ones. `false` if every entry is a running call.
    fn room(&mut self, now: u64) -> bool {
        while let Some((key, at, bytes)) = self.finished.front().copied() {
            let full = self.calls.len() >= self.max_calls || self.kept_bytes > self.max_kept_bytes;
            if !full && at + self.retention_ms >= now {
                break;
            }
            self.finished.pop_front();
            self.kept_bytes -= bytes;
            self.calls.remove(&key);
        }
        self.calls.len() < self.max_calls
    }

    fn finish(&mut self, key: (PeerId, CallId), now: u64, bytes: usize) {
        self.finished.push_back((key, now, bytes));
        self.kept_bytes += bytes;
    }
}

fn refusal(code: Code, message: impl Into<String>) -> ErrorBody {
    let retryable = code.retryable();
    error_body(code, message, retryable, None)
}

impl Market {
    /// Serves `spec`'s capability: registers the runtime and publishes the advert.
    pub async fn serve(
        &self,
        spec: ServeSpec,
    ) -> Result<capmesh_mesh::Published, capmesh_mesh::MeshError> {
        let cap = spec.executor.capability();
        let serving = Arc::new(Serving {
            slots: Arc::new(Semaphore::new(spec.limits.concurrency.max(1) as usize)),
            observed_ms: Mutex::new(None),
            spec: spec.clone(),
        });
        self.inner.served.write().unwrap_or_else(|e| e.into_inner()).insert(cap, serving);
        let contract = spec.executor.contract().clone();
        self.inner.mesh.publish(contract, Some(spec.price), Some(spec.limits), spec.ttl).await
    }

    /// Stops serving `cap` and retires its advert.
    pub async fn unserve(
        &self,
        cap: Cid,
    ) -> Result<capmesh_mesh::Retired, capmesh_mesh::MeshError> {
        self.inner.served.write().unwrap_or_else(|e| e.into_inner()).remove(&cap);
        self.inner.mesh.retire(cap).await
    }

    /// Capabilities served here.
    pub fn served(&self) -> Vec<Cid> {
        let mut caps: Vec<Cid> =
            self.inner.served.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        caps.sort();
        caps
    }

    /// How many times `cap`'s runtime was started on this node.
    pub fn runs(&self, cap: &Cid) -> Option<u64> {
        self.serving(cap).map(|s| s.spec.executor.runs())
    }

    fn serving(&self, cap: &Cid) -> Option<Arc<Serving>> {
        self.inner.served.read().unwrap_or_else(|e| e.into_inner()).get(cap).cloned()
    }

    pub(crate) fn attested(&self) -> impl Fn(&PeerId, &str, &PeerId) -> bool + '_ {
        let store = self.store();
        move |subject, claim, issuer| {
            store.attested(subject, Some(claim), Some(issuer), now_ms()).unwrap_or(false)
        }
    }

    pub(crate) async fn serve_provider(
        &self,
        peer: PeerId,
        request: &Opened,
    ) -> Result<Served, ErrorBody> {
        match &request.payload.body {
            Body::Intent(intent) => self.intent(peer, request, intent),
            Body::Negotiate(n) => Ok(Served::Answer(self.negotiate(peer, n).into())),
            Body::TaskStart(start) => self.task_start(peer, request, start).await,
            Body::TaskCancel(c) => self.task_cancel(peer, c).await,
            other => {
                Err(refusal(Code::NotFound, format!("{:?} is not a provider kind", other.kind())))
            }
        }
    }

    fn intent(&self, peer: PeerId, request: &Opened, intent: &Intent) -> Result<Served, ErrorBody> {
        self.bump(|s| s.intents_served += 1);
        let serving = self.serving(&intent.capability).ok_or_else(|| {
            refusal(Code::NotFound, format!("capability {} is not served here", intent.capability))
        })?;
        let policy = self.inner.policy.current();
        policy
            .check_caller(&peer, &intent.capability, &self.attested())
            .map_err(|d| refusal(d.code.code(), d.reason))?;
        // An offer costs a signature and a place in the book: intents spend the caller's rate
        // like calls do.
        drop(
            self.inner
                .admission
                .admit(&peer, &intent.capability, policy.limits(&intent.capability), Instant::now())
                .map_err(rate_refusal)?,
        );
        let price = serving.spec.price.clone();
        if let Some(max) = &intent.max_price
            && (max.unit != price.unit || max.amount < price.amount)
        {
            let reason = format!(
                "price {} {} is above the caller's maximum {} {}",
                price.amount, price.unit, max.amount, max.unit
            );
            return Ok(Served::Answer(
                Negotiate {
                    action: NegotiateAction::Decline,
                    offer: None,
                    price: None,
                    reason: Some(reason),
                }
                .into(),
            ));
        }
        let now = now_ms();
        let offer = Offer {
            capability: intent.capability,
            price: price.clone(),
            latency_ms: serving.latency_ms(),
            calls: intent.calls.clamp(1, self.inner.config.offer_calls),
            expires: now + self.inner.config.offer_ttl.as_millis() as u64,
        };
        let issued = Issued {
            caller: peer,
            capability: intent.capability,
            price,
            calls_left: offer.calls,
            expires: offer.expires,
        };
        let envelope = self
            .inner
            .mesh
            .answer_to(request, offer)
            .map_err(|e| refusal(Code::Internal, e.to_string()))?;
        let evicted = lock(&self.inner.provider).offers.insert(envelope.id(), issued, now);
        self.bump(|s| {
            s.offers_issued += 1;
            s.offers_evicted += evicted as u64;
        });
        Ok(Served::Signed(envelope))
    }

    /// Offers are final: `Accept` of an offer issued to this caller is confirmed, everything
    /// else declined.
    fn negotiate(&self, peer: PeerId, n: &Negotiate) -> Negotiate {
        let known = |id: &Cid| lock(&self.inner.provider).offers.issued_to(id, &peer);
        match (n.action, &n.offer) {
            (NegotiateAction::Accept, Some(id)) if known(id) => Negotiate {
                action: NegotiateAction::Accept,
                offer: Some(*id),
                price: None,
                reason: None,
            },
            (NegotiateAction::Counter, offer) => Negotiate {
                action: NegotiateAction::Decline,
                offer: *offer,
                price: None,
                reason: Some("this provider does not negotiate: its offers are final".into()),
            },
            (_, offer) => Negotiate {
                action: NegotiateAction::Decline,
                offer: *offer,
                price: None,
                reason: Some("no such offer".into()),
            },
        }
    }

    async fn task_start(
        &self,
        peer: PeerId,
        request: &Opened,
        start: &TaskStart,
    ) -> Result<Served, ErrorBody> {
        let key = (peer, start.call);
        let now = now_ms();
        // Claim the idempotency key before any other check, under one lock: a concurrent
        // TaskStart with the same call id finds the claim and never starts a second run.
        let call = Arc::new(Call {
            start_id: request.id,
            trace: request.payload.trace,
            cancel: self.inner.cancel.child_token(),
            done: watch::channel(None).0,
            delivery: Mutex::new(Delivery::Waiting),
        });
        {
            let mut state = lock(&self.inner.provider);
            if let Some(existing) = state.calls.get(&key).cloned() {
                drop(state);
                self.bump(|s| s.tasks_repeated += 1);
                let mut delivery = lock(&existing.delivery);
                return Ok(Served::Answer(match existing.finished() {
                    Some(done) => {
                        *delivery = Delivery::Answered;
                        (*done).clone().into()
                    }
                    None => {
                        // Whoever asks again while it runs is owed a TaskDone request later.
                        *delivery = Delivery::Deferred;
                        TaskAccepted { call: start.call }.into()
                    }
                }));
            }
            if !state.room(now) {
                return Err(refusal(Code::Busy, "too many calls in flight on this provider"));
            }
            state.calls.insert(key, call.clone());
        }
        // Any refusal from here on releases the claim (a refused start ran nothing).
        let release = |offer_taken: bool| {
            let mut state = lock(&self.inner.provider);
            state.calls.remove(&key);
            if offer_taken {
                state.offers.give_back(&start.offer);
            }
        };
        let serving = match self.serving(&start.capability) {
            Some(s) => s,
            None => {
                release(false);
                let message = format!("capability {} is not served here", start.capability);
                return Err(refusal(Code::NotFound, message));
            }
        };
        let max_deadline = now + self.inner.config.max_deadline.as_millis() as u64;
        if start.deadline <= now || start.deadline > max_deadline {
            release(false);
            return Err(if start.deadline <= now {
                refusal(Code::Timeout, "the call's deadline has passed")
            } else {
                refusal(
                    Code::InvalidArgs,
                    "the call's deadline is further away than this provider allows",
                )
            });
        }
        let taken =
            lock(&self.inner.provider).offers.take(&start.offer, &peer, &start.capability, now);
        let price = match taken {
            Ok(price) => price,
            Err(p) => {
                release(false);
                return Err(match p {
                    OfferProblem::Unknown => refusal(
                        Code::NotFound,
                        format!("no offer {} for this caller and capability", start.offer),
                    ),
                    OfferProblem::Spent => refusal(
                        Code::OfferExpired,
                        format!("offer {} expired or is used up", start.offer),
                    ),
                });
            }
        };
        let (permit, slot, args) = match self.admit(peer, &serving, start) {
            Ok(p) => p,
            Err(e) => {
                release(true);
                return Err(e);
            }
        };
        self.bump(|s| s.tasks_started += 1);
        let market = self.clone();
        let (run_call, run_start) = (call.clone(), start.clone());
        // The caller's trace id on every log line of the run (the agent's W3C trace id when
        // the caller's agent sent one).
        let span = tracing::info_span!("serve", trace = %capmesh_mesh::trace::trace_hex(&call.trace.0), call = ?start.call, %peer);
        capmesh_mesh::trace::link(&span, &call.trace.0);
        let mut run = Detached(Some(Box::pin(tracing::Instrument::instrument(
            async move {
                let _unfinished = Unfinished { market: &market, key };
                let admitted = Admitted { args, price, permits: (permit, slot) };
                market.run(peer, run_call, serving, run_start, admitted).await;
            },
            span,
        ))));
        // Within the inline window the run is driven right here (no task hand-off on the
        // common path); past it, or for a stream (its `TaskProgress` requests follow
        // `TaskAccepted`), it goes on as its own task.
        let streaming =
            self.serving(&start.capability).is_some_and(|s| s.spec.executor.contract().streaming);
        if !streaming && let Some(fut) = run.0.as_mut() {
            tokio::select! {
                _ = fut => run.0 = None,
                _ = tokio::time::sleep(self.inner.config.inline_window) => {}
            }
        }
        drop(run);
        let mut delivery = lock(&call.delivery);
        Ok(Served::Answer(match call.finished() {
            Some(done) => {
                *delivery = Delivery::Answered;
                (*done).clone().into()
            }
            None => {
                *delivery = Delivery::Deferred;
                self.bump(|s| s.tasks_deferred += 1);
                TaskAccepted { call: start.call }.into()
            }
        }))
    }

    /// Policy, rate, concurrency, input size and schema: every refusal before a run.
    fn admit(
        &self,
        peer: PeerId,
        serving: &Serving,
        start: &TaskStart,
    ) -> Result<(capmesh_policy::Permit, tokio::sync::OwnedSemaphorePermit, ValidArgs), ErrorBody>
    {
        let policy = self.inner.policy.current();
        policy
            .check_caller(&peer, &start.capability, &self.attested())
            .map_err(|d| refusal(d.code.code(), d.reason))?;
        let permit = self
            .inner
            .admission
            .admit(&peer, &start.capability, policy.limits(&start.capability), Instant::now())
            .map_err(rate_refusal)?;
        let slot = serving.slots.clone().try_acquire_owned().map_err(|_| {
            refusal(
                Code::Busy,
                format!(
                    "{} calls already run (the advert's concurrency)",
                    serving.spec.limits.concurrency
                ),
            )
        })?;
        let size = cbor::to_vec(&start.args)
            .map_err(|e| refusal(Code::InvalidArgs, format!("args cannot be encoded: {e}")))?
            .len() as u64;
        if size > serving.spec.limits.max_input_bytes {
            return Err(refusal(
                Code::InvalidArgs,
                format!(
                    "args are {size} bytes, over the limit of {}",
                    serving.spec.limits.max_input_bytes
                ),
            ));
        }
        let args = serving
            .spec
            .executor
            .check_args(start.args.clone())
            .map_err(|e| refusal(Code::InvalidArgs, e.to_string()))?;
        Ok((permit, slot, args))
    }

    /// Runs one admitted call to its end and delivers the outcome.
    async fn run(
        &self,
        peer: PeerId,
        call: Arc<Call>,
        serving: Arc<Serving>,
        start: TaskStart,
        admitted: Admitted,
    ) {
        let Admitted { args, price, permits } = admitted;
        let started = now_ms();
        let clock = Instant::now();
        let limit = Duration::from_millis(serving.spec.limits.timeout_ms);
        let timeout = limit.min(Duration::from_millis(start.deadline.saturating_sub(started)));
        let input = json_digest(&start.args).unwrap_or(CHAIN_START);
        let mut run = Run::new(timeout, call.cancel.clone()).with_trace(call.trace.0);
        let mut forwarder = None;
        if serving.spec.executor.contract().streaming {
            let (tx, rx) = mpsc::channel(16);
            run = run.with_chunks(tx);
            let market = self.clone();
            let (fcall, id) = (call.clone(), start.call);
            forwarder =
                Some(tokio::spawn(async move { market.forward(peer, fcall, id, rx).await }));
        }
        let result = serving.spec.executor.run_valid(args, run).await;
        drop(permits);
        serving.observe(clock.elapsed());
        let stream = match forwarder {
            Some(f) => {
                Some(f.await.unwrap_or(Err(refusal(Code::Internal, "progress forwarder failed"))))
            }
            None => None,
        };
        let (status, validation, output, out_digest, error) = match (result, stream) {
            (Ok(Output::Value(v)), _) => {
                let d = json_digest(&v).ok();
                (CallStatus::Ok, Validation::Passed, Some(v), d, None)
            }
            (Ok(Output::Streamed { .. }), Some(Ok(root))) => {
                (CallStatus::Ok, Validation::Skipped, None, Some(root), None)
            }
            (Ok(Output::Streamed { .. }), Some(Err(e))) => {
                (CallStatus::Failed, Validation::Skipped, None, None, Some(e))
            }
            (Ok(Output::Streamed { .. }), None) => {
                let e = refusal(Code::Internal, "a runtime streamed for a contract that does not");
                (CallStatus::Failed, Validation::Skipped, None, None, Some(e))
            }
            // The bad output is not sent (exactly one of output and error), so the receipt
            // names no output hash either; `validation` records why.
            (Err(ExecError::OutputInvalid { violations, .. }), _) => {
                let msg = format!(
                    "output does not match the contract: {}",
                    capmesh_contract::summarize(&violations)
                );
                (
                    CallStatus::Failed,
                    Validation::Failed,
                    None,
                    None,
                    Some(refusal(Code::OutputInvalid, msg)),
                )
            }
            (Err(e), _) => {
                let status = match &e {
                    ExecError::Timeout(_) => CallStatus::TimedOut,
                    ExecError::Cancelled => CallStatus::Cancelled,
                    _ => CallStatus::Failed,
                };
                let body = error_body(e.code(), e.to_string(), e.retryable(), None);
                (status, Validation::Skipped, None, None, Some(body))
            }
        };
        self.bump(|s| match status {
            CallStatus::Ok => s.runs_ok += 1,
            CallStatus::Cancelled => s.runs_cancelled += 1,
            _ => s.runs_failed += 1,
        });
        let receipt = Receipt {
            call: start.call,
            capability: start.capability,
            caller: peer,
            provider: self.inner.me,
            offer: start.offer,
            input,
            output: out_digest,
            price,
            started,
            ended: now_ms().max(started),
            status,
            validation,
        };
        let signed = match Signed::sign(&self.inner.key, &receipt) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a receipt");
                return;
            }
        };
        // The provider's copy, queued before the answer leaves: the caller's countersignature
        // can only come after it, and the batcher keeps that order. Flushed with the next
        // batch; the caller holds the same bytes and flushes them before it reports the call.
        let bytes = signed.to_bytes();
        let (receipt_id, note) = (
            signed.id(),
            capmesh_store::LedgerNote {
                trace: Some(call.trace.0),
                session: serving.spec.session.clone(),
            },
        );
        let op: crate::batch::Op = Box::new(move |store| {
            store.ledger_annotate(&receipt_id, &note).map_err(Refused::internal)?;
            let e = store
                .ledger_append_unflushed(LedgerKind::Receipt, &bytes)
                .map_err(Refused::internal)?;
            Ok(Done { seq: e.seq, fresh: true })
        });
        let queued = match self.ledger() {
            Ok(l) => l.submit(op).await.map_err(|r| r.message),
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            tracing::warn!(call = ?start.call, error = %e, "receipt not kept in the provider's ledger");
        }
        let done = Arc::new(TaskDone { call: start.call, output, error, receipt: signed });
        let deferred = {
            let delivery = lock(&call.delivery);
            call.done.send_replace(Some(done.clone()));
            *delivery == Delivery::Deferred
        };
        let bytes = done.output.as_ref().map_or(0, |o| o.to_string().len()) + 1024;
        lock(&self.inner.provider).finish((peer, start.call), now_ms(), bytes);
        if deferred {
            self.deliver(peer, &call, done, start.deadline).await;
        }
    }

    /// Sends a deferred `TaskDone` to the caller, retrying until its deadline.
    async fn deliver(&self, peer: PeerId, call: &Call, done: Arc<TaskDone>, deadline: u64) {
        let thread = Thread { trace: Some(call.trace), re: Some(call.start_id) };
        let mut wait = Duration::from_millis(200);
        // Retried no longer than the answer is kept for repeats (a caller that returns later
        // repeats its TaskStart and gets it from the call table).
        let until = deadline.min(now_ms() + self.inner.config.done_retention.as_millis() as u64);
        loop {
            if *lock(&call.delivery) == Delivery::Answered {
                return; // a TaskCancel or a repeated TaskStart got it first
            }
            let sent = self.inner.mesh.request(peer, Vec::new(), (*done).clone(), thread).await;
            match sent {
                Ok(_) => return,
                // The caller no longer waits for it (it answered NotFound, say).
                Err(capmesh_mesh::MeshError::Remote { code, retryable: false, .. }) => {
                    tracing::debug!(%peer, %code, "TaskDone refused by the caller");
                    return;
                }
                Err(e) if now_ms() + wait.as_millis() as u64 >= until => {
                    tracing::debug!(%peer, error = %e, "TaskDone not delivered before the deadline");
                    return;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "TaskDone delivery retried"),
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Sends each chunk as `TaskProgress`, the next only after the last was acknowledged;
    /// returns the stream root. A caller that stops acknowledging cancels the run.
    async fn forward(
        &self,
        peer: PeerId,
        call: Arc<Call>,
        id: CallId,
        mut chunks: mpsc::Receiver<Vec<u8>>,
    ) -> Result<Digest, ErrorBody> {
        let thread = Thread { trace: Some(call.trace), re: Some(call.start_id) };
        let mut chain = CHAIN_START;
        let mut seq = 0u64;
        loop {
            // A cancelled run sends nothing more (what is buffered is dropped).
            let data = tokio::select! {
                _ = call.cancel.cancelled() => return Err(refusal(Code::Cancelled, "the call was cancelled")),
                next = chunks.recv() => match next {
                    Some(data) => data,
                    None => break,
                },
            };
            chain = chain_next(&chain, &data);
            let progress =
                TaskProgress { call: id, seq, data: capmesh_wire::repr::Bytes(data), chain };
            if let Err(e) = self.inner.mesh.request(peer, Vec::new(), progress, thread).await {
                call.cancel.cancel();
                return Err(refusal(Code::Internal, format!("chunk {seq} not delivered: {e}")));
            }
            seq += 1;
        }
        Ok(chain)
    }

    async fn task_cancel(&self, peer: PeerId, c: &TaskCancel) -> Result<Served, ErrorBody> {
        let call = lock(&self.inner.provider).calls.get(&(peer, c.call)).cloned();
        let call = call.ok_or_else(|| refusal(Code::NotFound, "no such call"))?;
        call.cancel.cancel();
        let mut rx = call.done.subscribe();
        // Runtimes stop at once on cancel; bound the wait anyway.
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|d| d.is_some())).await;
        let mut delivery = lock(&call.delivery);
        match call.finished() {
            Some(done) => {
                *delivery = Delivery::Answered;
                Ok(Served::Answer((*done).clone().into()))
            }
            None => Err(refusal(Code::Internal, "the run did not stop within 10 s")),
        }
    }

    /// The caller's countersignature of a receipt this node issued to it: verified, then kept
    /// beside the receipt (flushed before the acknowledgement).
    pub(crate) async fn store_countersignature(
        &self,
        peer: PeerId,
        r: &ReceiptCountersign,
    ) -> Result<Served, ErrorBody> {
        let limits = capmesh_wire::cbor::Limits::default();
        let cs = &r.countersignature;
        let record = cs
            .verify(now_ms(), &capmesh_wire::Rules::default())
            .map(|v| v.record)
            .map_err(|e| error_body(Code::parse(e.code()), e.to_string(), e.retryable(), None))?;
        if record.caller != peer {
            return Err(refusal(Code::Misaddressed, "the countersignature is not the sender's"));
        }
        let me = self.inner.me;
        let bytes = cs.to_bytes();
        // Checked and appended in the batch, after every receipt appended before it.
        let op: crate::batch::Op = Box::new(move |store| {
            let not_found = |message: String| Refused { code: Code::NotFound, message };
            let (receipt, countersigned) =
                store.ledger_find(&record.receipt).map_err(Refused::internal)?;
            let receipt =
                receipt.ok_or_else(|| not_found(format!("no receipt {} here", record.receipt)))?;
            let receipt = Signed::<Receipt>::from_bytes(&receipt.signed, limits)
                .and_then(|s| s.decode(limits))
                .map_err(Refused::internal)?;
            if receipt.provider != me || receipt.caller != peer {
                return Err(not_found("that receipt was not issued to you by this node".into()));
            }
            if let Some(kept) = countersigned {
                return Ok(Done { seq: kept.seq, fresh: false });
            }
            let entry = store
                .ledger_append_unflushed(LedgerKind::Countersignature, &bytes)
                .map_err(Refused::internal)?;
            Ok(Done { seq: entry.seq, fresh: true })
        });
        let ledger = self.ledger().map_err(|e| refusal(Code::Internal, e))?;
        let stored = ledger.run(op).await.map_err(|r| refusal(r.code, r.message))?.fresh;
        if stored {
            self.bump(|s| s.countersignatures_stored += 1);
        }
        Ok(Served::Ack)
    }
}

fn rate_refusal(r: Refusal) -> ErrorBody {
    match r {
        Refusal::RateLimited { retry_after_ms } => error_body(
            Code::RateLimited,
            format!("rate limit reached; retry in {retry_after_ms} ms"),
            true,
            Some(retry_after_ms),
        ),
        busy @ Refusal::Busy { .. } => refusal(Code::Busy, busy.to_string()),
    }
}
