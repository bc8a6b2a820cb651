//! One try at one offer (protocol.md §9 steps 4–10) as named states, each left by one
//! function that returns the next [`Step`]:
//!
//! ```text
//! step         awaits                       leads to
//! Started      the TaskStart's answer       TaskDone → Concluding, TaskAccepted → Accepted,
//!                                           an Error, no answer or an odd one → Over(verdict)
//! Accepted     a follow-up or a timer tick  TaskProgress → Accepted, TaskDone → Concluding,
//!                                           tick while connected → Accepted, else → Probing
//! Probing      the repeated TaskStart       TaskDone → Concluding, TaskAccepted → Accepted,
//!                                           anything else → Over(Next)
//! Concluding   receipt, output, ledger      Over(Done | Next | Stop)
//! Cancelling   TaskCancel's TaskDone        Over(Stop: Cancelled), its receipt kept if valid
//! Expired      nothing (TaskCancel sent     Over(Next: Timeout)
//!              in the background)
//! every wait:  the agent's cancel → Cancelling, the deadline → Expired
//! ```
//!
//! Every wait is one flat `select!`, biased toward the agent's cancel, then the deadline, then
//! what the state awaits. What a failed try means for the call is decided in one place,
//! [`Failure::verdict`].

use capmesh_mesh::{BoxFuture, Exchange, MeshError, Thread};
use capmesh_types::Cid;
use capmesh_wire::{
    Body, CallStatus, Code, Opened, Price, Receipt, TaskCancel, TaskDone, TaskStart,
};
use tokio::{
    sync::mpsc,
    time::{Instant, Interval},
};
use tokio_util::sync::CancellationToken;

use super::{
    CANCEL_TIMEOUT, CallEvent, CallOutcome, Ctx, Followup, PROBE_EVERY, PROBE_RUNNING, Tried,
    attempt, fresh, from_mesh, validate_output,
};
use crate::{
    CallError, Market, error_body, lock,
    offers::Standing,
    receipt::{self, CHAIN_START, Expected, json_digest},
};

/// Where one try stands.
enum Step {
    /// The `TaskStart` is on its way; its answer is awaited.
    Started(BoxFuture<Result<Exchange, MeshError>>),
    /// The provider accepted the call and runs it past its inline window: progress and the
    /// outcome come as its own requests, and a timer probes it.
    Accepted(Watch),
    /// A repeat of the `TaskStart` (never run twice: same call id) asks whether the deferred
    /// call still runs.
    Probing(Watch),
    /// A `TaskDone` came (the answer, a follow-up or a probe's answer), with its envelope id.
    Concluding(Box<TaskDone>, Cid),
    /// The agent cancelled: `TaskCancel`, and the receipt of the cancelled run if it holds up.
    Cancelling,
    /// The deadline passed first (why): `TaskCancel` in the background, a `Timeout` attempt.
    Expired(&'static str),
    /// The try ended.
    Over(Tried),
}

/// The probe timer of a deferred call: while it runs, the caller checks every `PROBE_EVERY`
/// that the provider is reachable — it asks at once when no connection is open, and every
/// `PROBE_RUNNING` ticks anyway (a provider that restarted between two checks forgot the call).
struct Watch {
    check: Interval,
    ticks: u32,
}

impl Watch {
    fn new() -> Self {
        let check = tokio::time::interval_at(Instant::now() + PROBE_EVERY, PROBE_EVERY);
        Self { check, ticks: 0 }
    }
}

/// What one try holds besides the call's context.
struct Try<'s> {
    standing: &'s Standing,
    /// Id of the first `TaskStart` of the try (a `TaskCancel` refers to it).
    start_id: Cid,
    /// Follow-ups the provider sends as its own requests (`serve_followup`).
    followups: mpsc::Receiver<Followup>,
}

/// What ended a wait.
enum Waited<T> {
    Cancelled,
    Expired,
    Got(T),
}

/// Waits for `work`, unless the agent cancels or the deadline passes first (checked in that
/// order when several are ready).
async fn wait<T>(
    cancel: &CancellationToken,
    deadline: Instant,
    work: impl std::future::Future<Output = T>,
) -> Waited<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Waited::Cancelled,
        _ = tokio::time::sleep_until(deadline) => Waited::Expired,
        v = work => Waited::Got(v),
    }
}

const NO_ANSWER: &str = "no answer before the deadline";
const NO_OUTCOME: &str = "no outcome before the deadline";

/// How a try failed, as far as what the call does next is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The provider refused the `TaskStart` with an `Error` (it did not run the call).
    Refused,
    /// The provider could not be reached where it was, or did not answer in time.
    Unreachable,
    /// The call ran, and its `TaskDone` reports a failure (its receipt is kept).
    Ran,
    /// Anything else: an answer that breaks the protocol, a receipt or output refused, a
    /// deferred call lost, or the deadline passed.
    Unusable,
}

impl Failure {
    /// The one place that decides what a failed try means for the call (protocol.md §9 step
    /// 10): stop when trying elsewhere cannot help, ask the same provider for a new offer when
    /// it forgot ours or was not where we looked, else the next offer.
    pub(super) fn verdict(self, a: crate::Attempt) -> Tried {
        match (self, &a.code) {
            // The provider judged the arguments, or the call was cancelled: no one else helps.
            (Failure::Refused | Failure::Ran, Code::InvalidArgs | Code::Cancelled) => {
                Tried::Stop(CallError::Refused { attempt: a })
            }
            // The provider forgot the offer (it restarted, or it expired) or could not be
            // reached where it was: ask for a new offer (a fresh find has its addresses).
            (Failure::Refused, Code::OfferExpired | Code::NotFound) | (Failure::Unreachable, _) => {
                Tried::Renew(a)
            }
            _ => Tried::Next(a),
        }
    }
}

impl Market {
    /// One `TaskStart` under `standing`, and whatever follows it, a [`Step`] at a time.
    pub(super) async fn try_offer(&self, ctx: &mut Ctx<'_>, standing: &Standing) -> Tried {
        let (mut t, sent) = match self.begin(ctx, standing) {
            Ok(started) => started,
            Err(e) => return Tried::Stop(e),
        };
        let mut step = Step::Started(sent);
        loop {
            step = match step {
                Step::Started(sent) => self.on_started(ctx, &t, sent).await,
                Step::Accepted(watch) => self.on_accepted(ctx, &mut t, watch).await,
                Step::Probing(watch) => self.on_probing(ctx, &t, watch).await,
                Step::Concluding(done, id) => {
                    Step::Over(self.conclude(ctx, t.standing, *done, id).await)
                }
                Step::Cancelling => Step::Over(self.cancel_at(ctx, t.standing, t.start_id).await),
                Step::Expired(why) => {
                    self.cancel_later(ctx, t.standing, t.start_id);
                    let a = attempt(t.standing.provider, "task", Code::Timeout, why, None);
                    Step::Over(Failure::Unusable.verdict(a))
                }
                Step::Over(tried) => return tried,
            };
        }
    }

    /// Prepares the try and sends its `TaskStart`. Idempotent capabilities keep the call id
    /// across providers; others get a fresh one once a `TaskStart` went out under the current
    /// id, so a provider that did run it cannot be asked to count it twice (protocol.md §9
    /// step 10).
    fn begin<'s>(
        &self,
        ctx: &mut Ctx<'_>,
        standing: &'s Standing,
    ) -> Result<(Try<'s>, BoxFuture<Result<Exchange, MeshError>>), CallError> {
        let provider = standing.provider;
        let idempotent = ctx.contract.as_ref().is_some_and(|k| k.contract.idempotent);
        if !ctx.starts.is_empty() && !idempotent {
            let id = fresh::<16>()?;
            ctx.starts.clear();
            let mut state = lock(&self.inner.caller);
            if let Some(f) = state.in_flight.remove(&ctx.call) {
                state.in_flight.insert(id, f);
            }
            ctx.call = id;
        }
        let (tx, followups) = mpsc::channel(32);
        {
            let mut state = lock(&self.inner.caller);
            state.held.spend(&ctx.req.capability, &standing.offer_id);
            if let Some(f) = state.in_flight.get_mut(&ctx.call) {
                f.provider = Some(provider);
                f.followups = Some(tx);
                f.chain = CHAIN_START;
                f.next_seq = 0;
            }
        }
        let start = self.sign_start(ctx, standing)?;
        let start_id = start.id();
        ctx.starts.push((provider, standing.offer_id, standing.offer.price.clone()));
        let sent = self.inner.transport.send(provider, standing.addrs.clone(), start);
        Ok((Try { standing, start_id, followups }, sent))
    }

    /// [`Step::Started`]: the answer to the `TaskStart`.
    async fn on_started(
        &self,
        ctx: &mut Ctx<'_>,
        t: &Try<'_>,
        sent: BoxFuture<Result<Exchange, MeshError>>,
    ) -> Step {
        let provider = t.standing.provider;
        let answer = match wait(&ctx.cancel, ctx.deadline, sent).await {
            // The provider may already run it: tell it.
            Waited::Cancelled => return Step::Cancelling,
            Waited::Expired => return Step::Expired(NO_ANSWER),
            Waited::Got(Err(e)) => return Step::Over(self.start_failed(ctx, t.standing, &e)),
            Waited::Got(Ok(exchange)) => exchange.answer,
        };
        let Some(Opened { id, payload }) = answer else {
            let a = "an acknowledgement to TaskStart";
            return Step::Over(Failure::Unusable.verdict(attempt(
                provider,
                "task",
                Code::InvalidObject,
                a,
                None,
            )));
        };
        match payload.body {
            Body::TaskDone(done) => Step::Concluding(Box::new(done), id),
            Body::TaskAccepted(_) => {
                ctx.emit(CallEvent::Accepted { provider });
                Step::Accepted(Watch::new())
            }
            other => {
                let why = format!("{:?} in answer to TaskStart", other.kind());
                let a = attempt(provider, "task", Code::InvalidObject, &why, None);
                Step::Over(Failure::Unusable.verdict(a))
            }
        }
    }

    /// The `TaskStart` was refused or never answered: the verdict, and what it means for the
    /// standing offer (forgotten when it is renewed) and the provider's record (a provider
    /// that cannot be reached counts against it).
    fn start_failed(&self, ctx: &Ctx<'_>, standing: &Standing, e: &MeshError) -> Tried {
        let provider = standing.provider;
        let failure = match e {
            MeshError::Remote { .. } => Failure::Refused,
            _ => Failure::Unreachable,
        };
        let tried = failure.verdict(from_mesh(provider, "task", e));
        let mut state = lock(&self.inner.caller);
        if matches!(tried, Tried::Renew(_)) {
            state.held.forget(&ctx.req.capability, &standing.offer_id);
        }
        if failure == Failure::Unreachable {
            state.rate(provider, false);
        }
        tried
    }

    /// [`Step::Accepted`] (steps 7–8 deferred): a follow-up, or a tick of the probe timer.
    async fn on_accepted(&self, ctx: &mut Ctx<'_>, t: &mut Try<'_>, mut watch: Watch) -> Step {
        let provider = t.standing.provider;
        let followup = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Step::Cancelling,
            _ = tokio::time::sleep_until(ctx.deadline) => return Step::Expired(NO_OUTCOME),
            f = t.followups.recv() => f,
            _ = watch.check.tick() => {
                watch.ticks += 1;
                let due = watch.ticks.is_multiple_of(PROBE_RUNNING);
                if !due && self.inner.transport.connected(provider).await {
                    return Step::Accepted(watch);
                }
                return Step::Probing(watch);
            }
        };
        match followup {
            Some(Followup::Progress(data)) => {
                if let Some(out) = &ctx.req.chunks {
                    let _ = out.send(data).await;
                }
                Step::Accepted(watch)
            }
            Some(Followup::Done(done, id)) => Step::Concluding(done, id),
            None => {
                let a = attempt(provider, "task", Code::Internal, "follow-up channel closed", None);
                Step::Over(Failure::Unusable.verdict(a))
            }
        }
    }

    /// [`Step::Probing`]: the answer to a repeated `TaskStart`.
    async fn on_probing(&self, ctx: &mut Ctx<'_>, t: &Try<'_>, watch: Watch) -> Step {
        let (cancel, deadline) = (ctx.cancel.clone(), ctx.deadline);
        match wait(&cancel, deadline, self.probe(ctx, t.standing)).await {
            Waited::Cancelled => Step::Cancelling,
            Waited::Expired => Step::Expired(NO_OUTCOME),
            Waited::Got(Ok(Some((done, id)))) => Step::Concluding(Box::new(done), id),
            Waited::Got(Ok(None)) => Step::Accepted(watch),
            Waited::Got(Err(a)) => {
                lock(&self.inner.caller).rate(t.standing.provider, false);
                Step::Over(Failure::Unusable.verdict(a))
            }
        }
    }

    /// Signs the call's `TaskStart` under `standing` (counted in the call's requests).
    fn sign_start(
        &self,
        ctx: &mut Ctx<'_>,
        standing: &Standing,
    ) -> Result<capmesh_wire::Envelope, CallError> {
        let start = TaskStart {
            call: ctx.call,
            capability: ctx.req.capability,
            offer: standing.offer_id,
            args: ctx.req.args.clone(),
            deadline: ctx.deadline_ms,
        };
        ctx.requests += 1;
        self.bump(|s| s.requests_sent += 1);
        let thread = Thread { trace: Some(ctx.trace), re: None };
        self.inner.transport.sign_request(standing.provider, start.into(), thread).map_err(|e| {
            match e {
                MeshError::Sign(e) => CallError::Sign(e),
                other => CallError::Ledger(other.to_string()),
            }
        })
    }

    /// Repeats the `TaskStart` of a deferred call: `TaskDone` if it ended, `None` while it runs.
    async fn probe(
        &self,
        ctx: &mut Ctx<'_>,
        standing: &Standing,
    ) -> Result<Option<(TaskDone, Cid)>, crate::Attempt> {
        let provider = standing.provider;
        let start = self
            .sign_start(ctx, standing)
            .map_err(|e| attempt(provider, "task", e.code(), &e.to_string(), None))?;
        let sent = self.inner.transport.send(provider, standing.addrs.clone(), start).await;
        match sent.map(|x| x.answer) {
            Ok(Some(Opened { id, payload })) => match payload.body {
                Body::TaskDone(done) => Ok(Some((done, id))),
                Body::TaskAccepted(_) => Ok(None),
                other => Err(attempt(
                    provider,
                    "task",
                    Code::InvalidObject,
                    &format!("{:?} to a repeated TaskStart", other.kind()),
                    None,
                )),
            },
            Ok(None) => Err(attempt(
                provider,
                "task",
                Code::InvalidObject,
                "an acknowledgement to TaskStart",
                None,
            )),
            Err(e) => Err(from_mesh(provider, "task", &e)),
        }
    }

    /// [`Step::Concluding`] (steps 8–9): verify output and receipt, ledger, countersign.
    async fn conclude(
        &self,
        ctx: &mut Ctx<'_>,
        standing: &Standing,
        done: TaskDone,
        done_id: Cid,
    ) -> Tried {
        let provider = standing.provider;
        let (chain, chunks) = {
            let state = lock(&self.inner.caller);
            state.in_flight.get(&ctx.call).map_or((CHAIN_START, 0), |f| (f.chain, f.next_seq))
        };
        let streaming = ctx.contract.as_ref().is_some_and(|k| k.contract.streaming);
        let r = match self.check_done(ctx, standing, &done) {
            Ok(r) => r,
            Err(bad) => {
                lock(&self.inner.caller).rate(provider, false);
                let a = attempt(provider, "task", Code::BadReceipt, &bad.0, None);
                return Failure::Unusable.verdict(a);
            }
        };
        // Step 8 in order: the output against the contract first; an output that does not
        // match is not accepted, so its receipt is neither kept nor countersigned.
        if let (Some(output), Some(known)) = (&done.output, &ctx.contract)
            && let Err(e) = validate_output(known, output)
        {
            lock(&self.inner.caller).rate(provider, false);
            return Failure::Unusable.verdict(attempt(
                provider,
                "task",
                Code::OutputInvalid,
                &e,
                None,
            ));
        }
        // A valid receipt is evidence whatever it says: keep it (flushed), with this node's
        // countersignature, then send that to the provider.
        let seq = match self
            .keep_receipt(&done.receipt, provider, &standing.addrs, ctx.note(), done_id)
            .await
        {
            Ok(seq) => seq,
            Err(e) => return Tried::Stop(e),
        };
        if r.status != CallStatus::Ok {
            lock(&self.inner.caller).rate(provider, false);
            let e = done
                .error
                .clone()
                .unwrap_or_else(|| error_body(Code::Internal, "failed", false, None));
            let a = attempt(provider, "task", e.code.clone(), &e.message, e.retry_after_ms);
            return Failure::Ran.verdict(a);
        }
        lock(&self.inner.caller).rate(provider, true);
        let receipt_id = done.receipt.id();
        Tried::Done(Box::new(CallOutcome {
            call: ctx.call,
            trace: ctx.trace,
            capability: ctx.req.capability,
            provider,
            output: done.output,
            chunks,
            stream_root: if streaming { Some(chain) } else { None },
            receipt: done.receipt,
            receipt_id,
            ledger_seq: seq,
            price: r.price,
            attempts: Vec::new(),
            requests: 0,
            warm: false,
            elapsed: std::time::Duration::ZERO,
        }))
    }

    /// [`Step::Cancelling`]: sends `TaskCancel` and keeps the receipt of the cancelled run if
    /// one comes back.
    async fn cancel_at(&self, ctx: &mut Ctx<'_>, standing: &Standing, start_id: Cid) -> Tried {
        let provider = standing.provider;
        ctx.requests += 1;
        self.bump(|s| s.requests_sent += 1);
        let body = TaskCancel { call: ctx.call, reason: Some("cancelled by the caller".into()) };
        let thread = Thread { trace: Some(ctx.trace), re: Some(start_id) };
        let mut answer = None;
        // The TaskStart may still be on its way (a cancel can overtake it on another stream):
        // a `NotFound` is asked again a few times.
        for wait in [0u64, 100, 300, 600] {
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            let sent = self.inner.transport.request(
                provider,
                standing.addrs.clone(),
                body.clone().into(),
                thread,
            );
            match tokio::time::timeout(CANCEL_TIMEOUT, sent).await {
                Ok(Err(MeshError::Remote { code: Code::NotFound, .. })) => continue,
                Ok(Ok(Exchange { answer: Some(opened), .. })) => answer = Some(opened),
                _ => {}
            }
            break;
        }
        // The run's final TaskDone: kept (and countersigned) if its receipt holds up.
        if let Some(opened) = answer
            && let Body::TaskDone(done) = opened.payload.body
        {
            match self.check_done(ctx, standing, &done) {
                Ok(_) => {
                    if let Err(e) = self
                        .keep_receipt(
                            &done.receipt,
                            provider,
                            &standing.addrs,
                            ctx.note(),
                            opened.id,
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "receipt of a cancelled call not kept");
                    }
                }
                Err(bad) => {
                    tracing::debug!(%provider, error = %bad, "cancelled call's receipt refused")
                }
            }
        }
        Tried::Stop(CallError::Cancelled)
    }

    /// [`Step::Expired`]: `TaskCancel` sent in the background (the call does not wait).
    fn cancel_later(&self, ctx: &Ctx<'_>, standing: &Standing, start_id: Cid) {
        let body =
            TaskCancel { call: ctx.call, reason: Some("the caller's deadline passed".into()) };
        let thread = Thread { trace: Some(ctx.trace), re: Some(start_id) };
        let sent = self.inner.transport.request(
            standing.provider,
            standing.addrs.clone(),
            body.into(),
            thread,
        );
        self.bump(|s| s.requests_sent += 1);
        self.spawn_owned(async move {
            let _ = tokio::time::timeout(CANCEL_TIMEOUT, sent).await;
        });
    }

    /// Checks a `TaskDone` against what this call sent and received (receipt::check).
    fn check_done(
        &self,
        ctx: &Ctx<'_>,
        standing: &Standing,
        done: &TaskDone,
    ) -> Result<Receipt, receipt::BadReceipt> {
        let chain = {
            let state = lock(&self.inner.caller);
            state.in_flight.get(&ctx.call).map_or(CHAIN_START, |f| f.chain)
        };
        let streaming = ctx.contract.as_ref().is_some_and(|k| k.contract.streaming);
        let expected_output = match (&done.output, &done.error) {
            (Some(v), _) => json_digest(v).ok(),
            (None, None) if streaming => Some(chain),
            _ => None,
        };
        let rules = capmesh_wire::Rules::default();
        let offers: Vec<(Cid, Price)> = ctx
            .starts
            .iter()
            .filter(|(p, ..)| *p == standing.provider)
            .map(|(_, offer, price)| (*offer, price.clone()))
            .collect();
        let expected = Expected {
            call: ctx.call,
            capability: ctx.req.capability,
            caller: self.inner.me,
            provider: standing.provider,
            offers: &offers,
            input: ctx.input,
            output: expected_output,
            streaming,
            rules: &rules,
        };
        receipt::check(done, &expected)
    }
}
