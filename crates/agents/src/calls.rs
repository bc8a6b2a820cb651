//! Calls made through the API, followed while they run and kept a while after: their state,
//! result and events (`GET /v1/calls/{id}`, `…/events`).
//!
//! Every call through the API gets an [`Entry`], the synchronous `POST /v1/call` too (its
//! client waits for the entry's end). Bounds: [`MAX_RUNNING`] calls at once; per call, events
//! up to [`MAX_EVENTS`] and [`MAX_EVENT_BYTES`] (progress beyond is counted, not kept; the
//! final event always is); finished calls kept up to [`MAX_FINISHED`], [`MAX_FINISHED_BYTES`]
//! and [`RETENTION`], the oldest going first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_api::{
    ApiError, CallEvent, CallResult, CallState, CallStatus, Principal, Sequenced, SessionId,
    TraceId,
};
use capmesh_market::{CallError, CallOutcome, Market};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{CallId, repr::Bytes};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::convert::{self, Stream};

/// Calls through the API running at once.
pub const MAX_RUNNING: usize = 1024;
/// Events kept per call …
pub const MAX_EVENTS: usize = 4096;
/// … and their bytes as JSON.
pub const MAX_EVENT_BYTES: usize = 4 << 20;
/// Finished calls kept …
pub const MAX_FINISHED: usize = 1024;
/// … their bytes (events and result) …
pub const MAX_FINISHED_BYTES: usize = 64 << 20;
/// … for at most this long.
pub const RETENTION: Duration = Duration::from_secs(600);
/// Market events queued between the market and the entry.
const EVENT_QUEUE: usize = 256;
/// Chunks queued between the market and the entry.
const CHUNK_QUEUE: usize = 64;
/// Events queued to one event-stream client.
pub(crate) const SUBSCRIBER_QUEUE: usize = 64;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One call through the API.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: CallId,
    capability: Cid,
    pub(crate) trace: TraceId,
    pub(crate) session: Option<SessionId>,
    created_ms: u64,
    state: Mutex<EntryState>,
    /// The number of events kept so far; subscribers wait on it.
    events: watch::Sender<u64>,
}

#[derive(Debug)]
struct EntryState {
    state: CallState,
    ended_ms: Option<u64>,
    provider: Option<PeerId>,
    result: Option<Box<CallResult>>,
    error: Option<ApiError>,
    kept: Vec<Sequenced>,
    bytes: usize,
    /// Progress events not kept for the budget.
    dropped: u64,
    next_chunk: u64,
}

impl Entry {
    fn new(id: CallId, capability: Cid, trace: TraceId, session: Option<SessionId>) -> Self {
        Self {
            id,
            capability,
            trace,
            session,
            created_ms: capmesh_mesh::now_ms(),
            state: Mutex::new(EntryState {
                state: CallState::Finding,
                ended_ms: None,
                provider: None,
                result: None,
                error: None,
                kept: Vec::new(),
                bytes: 0,
                dropped: 0,
                next_chunk: 0,
            }),
            events: watch::channel(0).0,
        }
    }

    pub(crate) fn visible_to(&self, principal: Principal) -> bool {
        match principal {
            Principal::Node => true,
            Principal::Session(id) => self.session == Some(id),
        }
    }

    pub(crate) fn status(&self) -> CallStatus {
        let s = lock(&self.state);
        CallStatus {
            call_id: self.id,
            capability: self.capability,
            trace: self.trace,
            state: s.state,
            session: self.session,
            created_ms: self.created_ms,
            ended_ms: s.ended_ms,
            provider: s.provider,
            events: s.kept.len() as u64,
            result: s.result.clone(),
            error: s.error.clone(),
        }
    }

    fn is_final(&self) -> bool {
        lock(&self.state).state.is_final()
    }

    fn bytes(&self) -> usize {
        let s = lock(&self.state);
        s.bytes
            + s.result.as_ref().map_or(0, |r| r.output.as_ref().map_or(0, |o| o.to_string().len()))
    }

    /// Keeps `event` (within the budget, unless it is final) and wakes the subscribers.
    fn push(&self, event: CallEvent) {
        let size = serde_json::to_vec(&event).map_or(0, |v| v.len());
        let mut s = lock(&self.state);
        match &event {
            CallEvent::Providers { .. } if s.state == CallState::Finding => {
                s.state = CallState::Negotiating
            }
            CallEvent::Chosen { provider, .. } => {
                s.state = CallState::Running;
                s.provider = Some(*provider);
            }
            _ => {}
        }
        let over = s.kept.len() >= MAX_EVENTS || s.bytes + size > MAX_EVENT_BYTES;
        if over && !event.is_final() {
            s.dropped += 1;
            return;
        }
        if event.is_final() && s.dropped > 0 {
            let dropped = s.dropped;
            let id = s.kept.len() as u64;
            s.kept.push(Sequenced { id, event: CallEvent::ProgressTruncated { dropped } });
        }
        let id = s.kept.len() as u64;
        s.bytes += size;
        s.kept.push(Sequenced { id, event });
        let n = s.kept.len() as u64;
        drop(s);
        self.events.send_replace(n);
    }

    fn progress(&self, data: Vec<u8>) {
        let seq = {
            let mut s = lock(&self.state);
            s.next_chunk += 1;
            s.next_chunk - 1
        };
        self.push(CallEvent::Progress { seq, data: Bytes(data) });
    }

    /// Ends the call with `result` and its final event.
    fn finish(&self, result: Result<CallResult, ApiError>, cancelled: bool) {
        let now = capmesh_mesh::now_ms();
        let event = {
            let mut s = lock(&self.state);
            s.ended_ms = Some(now);
            match result {
                Ok(r) => {
                    s.state = CallState::Done;
                    s.provider = Some(r.provider);
                    let event = CallEvent::Done {
                        receipt_id: r.receipt_id,
                        trace: self.trace,
                        result: Box::new(r.clone()),
                    };
                    s.result = Some(Box::new(r));
                    event
                }
                Err(e) if cancelled => {
                    s.state = CallState::Cancelled;
                    s.error = Some(e);
                    CallEvent::Cancelled { trace: self.trace }
                }
                Err(e) => {
                    s.state = CallState::Failed;
                    s.error = Some(e.clone());
                    CallEvent::Failed { error: e, trace: self.trace }
                }
            }
        };
        self.push(event);
    }

    /// The kept events from `from` on.
    fn events_from(&self, from: u64) -> (Vec<Sequenced>, bool) {
        let s = lock(&self.state);
        let from = (from as usize).min(s.kept.len());
        (s.kept[from..].to_vec(), s.state.is_final())
    }

    /// The last event kept.
    fn last_event(&self) -> Option<Sequenced> {
        lock(&self.state).kept.last().cloned()
    }

    /// Waits until the call has ended (cancel-safe).
    pub(crate) async fn ended(&self) {
        let mut rx = self.events.subscribe();
        while !self.is_final() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The result or error, once ended.
    pub(crate) fn outcome(&self) -> Option<Result<CallResult, ApiError>> {
        let s = lock(&self.state);
        match (&s.result, &s.error) {
            (Some(r), _) => Some(Ok((**r).clone())),
            (None, Some(e)) => Some(Err(e.clone())),
            _ => None,
        }
    }
}

/// The calls of the API.
#[derive(Debug, Default)]
pub(crate) struct Table {
    calls: HashMap<CallId, Arc<Entry>>,
    finished: VecDeque<(CallId, u64, usize)>,
    finished_bytes: usize,
    running: usize,
}

impl Table {
    /// A new entry for `id`, or `Conflict` while a call with that id runs, `RateLimited`
    /// past [`MAX_RUNNING`].
    pub(crate) fn open(
        &mut self,
        id: CallId,
        capability: Cid,
        trace: TraceId,
        session: Option<SessionId>,
    ) -> Result<Arc<Entry>, ApiError> {
        if let Some(e) = self.calls.get(&id)
            && !e.is_final()
        {
            return Err(ApiError::conflict(
                "a call with this call_id is in flight on this node: wait for it to end, or \
                 send another call_id",
            ));
        }
        if self.running >= MAX_RUNNING {
            return Err(ApiError::new(
                capmesh_api::ErrorCode::RateLimited,
                format!("{MAX_RUNNING} calls through the API are running: retry when one ends"),
            ));
        }
        let entry = Arc::new(Entry::new(id, capability, trace, session));
        self.calls.insert(id, entry.clone());
        self.running += 1;
        Ok(entry)
    }

    pub(crate) fn get(&self, id: &CallId) -> Option<Arc<Entry>> {
        self.calls.get(id).cloned()
    }

    /// Moves a finished call to the retention queue and evicts what the bounds ask.
    fn finished(&mut self, entry: &Entry, now_ms: u64) {
        self.running = self.running.saturating_sub(1);
        let bytes = entry.bytes();
        self.finished.push_back((entry.id, now_ms, bytes));
        self.finished_bytes += bytes;
        self.evict(now_ms);
    }

    pub(crate) fn evict(&mut self, now_ms: u64) {
        let retention = RETENTION.as_millis() as u64;
        while let Some(&(id, at, bytes)) = self.finished.front() {
            let full =
                self.finished.len() > MAX_FINISHED || self.finished_bytes > MAX_FINISHED_BYTES;
            if !full && at + retention > now_ms {
                break;
            }
            self.finished.pop_front();
            self.finished_bytes -= bytes;
            // A newer call may have taken the id since: only a finished entry goes.
            if self.calls.get(&id).is_some_and(|e| e.is_final()) {
                self.calls.remove(&id);
            }
        }
    }
}

/// Runs `req` through the market, recording its events and chunks in `entry`, and finishes
/// the entry. Cancel-safe only in that dropping it abandons the call (use the market's cancel).
pub(crate) async fn drive(
    market: &Market,
    table: &Mutex<Table>,
    entry: Arc<Entry>,
    req: capmesh_market::CallRequest,
) {
    let (chunk_tx, mut chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let (event_tx, mut event_rx) = mpsc::channel(EVENT_QUEUE);
    let req = req.with_chunks(chunk_tx).with_events(event_tx);
    let mut stream = Stream::default();
    let call = market.call(req);
    let mut call = std::pin::pin!(call);
    let result: Result<CallOutcome, CallError> = loop {
        tokio::select! {
            result = &mut call => break result,
            Some(chunk) = chunk_rx.recv() => {
                entry.progress(chunk.clone());
                stream.push(chunk);
            }
            Some(event) = event_rx.recv() => {
                if let Some(e) = convert::event_json(event) {
                    entry.push(e);
                }
            }
        }
    };
    while let Ok(event) = event_rx.try_recv() {
        if let Some(e) = convert::event_json(event) {
            entry.push(e);
        }
    }
    while let Ok(chunk) = chunk_rx.try_recv() {
        entry.progress(chunk.clone());
        stream.push(chunk);
    }
    match result {
        Ok(outcome) => entry.finish(Ok(convert::call_result(outcome, stream)), false),
        Err(e) => {
            tracing::debug!(call = ?entry.id, code = %e.code(), error = %e, "call failed");
            let cancelled = matches!(e, CallError::Cancelled);
            entry.finish(Err(convert::call_error(entry.id, &e)), cancelled);
        }
    }
    lock(table).finished(&entry, capmesh_mesh::now_ms());
}

/// Sends the events of `entry` from `from` on to `tx`, then the new ones as they come, until
/// the final one, the receiver going away or `stop`.
pub(crate) async fn follow(
    entry: Arc<Entry>,
    from: u64,
    tx: mpsc::Sender<Sequenced>,
    stop: CancellationToken,
) {
    let mut changed = entry.events.subscribe();
    let mut next = from;
    loop {
        let (batch, ended) = entry.events_from(next);
        for event in batch {
            next = event.id + 1;
            let last = event.event.is_final();
            if tx.send(event).await.is_err() || last {
                return;
            }
        }
        if ended {
            // `from` was past the final event: every stream ends with it, so it is sent again.
            if let Some(last) = entry.last_event() {
                let _ = tx.send(last).await;
            }
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    }
}

/// A call's events as the table sees them, for tests.
#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let cid = capmesh_types::Cid::of(capmesh_types::Codec::Raw, b"x");
        Entry::new(capmesh_wire::repr::FixedBytes([1; 16]), cid, TraceId([2; 16]), None)
    }

    #[test]
    fn progress_past_the_budget_is_counted_and_the_final_event_kept() {
        let e = entry();
        for _ in 0..MAX_EVENTS + 10 {
            e.progress(vec![b'a'; 8]);
        }
        e.finish(Err(ApiError::internal("x")), false);
        let (events, ended) = e.events_from(0);
        assert!(ended);
        assert_eq!(events.len(), MAX_EVENTS + 2);
        assert!(matches!(events[MAX_EVENTS].event, CallEvent::ProgressTruncated { dropped: 10 }));
        assert!(matches!(events[MAX_EVENTS + 1].event, CallEvent::Failed { .. }));
        assert!(events.iter().enumerate().all(|(i, ev)| ev.id == i as u64));
        assert_eq!(e.status().state, CallState::Failed);
    }

    #[test]
    fn states_follow_the_events() {
        let e = entry();
        assert_eq!(e.status().state, CallState::Finding);
        let p = capmesh_types::NodeKey::from_seed([3; 32]).peer_id();
        e.push(CallEvent::Providers { providers: vec![p] });
        assert_eq!(e.status().state, CallState::Negotiating);
        e.push(CallEvent::Chosen { provider: p, warm: false });
        assert_eq!((e.status().state, e.status().provider), (CallState::Running, Some(p)));
        e.finish(Err(ApiError::internal("c")), true);
        assert_eq!(e.status().state, CallState::Cancelled);
        assert!(matches!(e.events_from(0).0.last().unwrap().event, CallEvent::Cancelled { .. }));
    }

    #[test]
    fn the_table_bounds_running_calls_and_refuses_a_running_id() {
        let mut t = Table::default();
        let cid = capmesh_types::Cid::of(capmesh_types::Codec::Raw, b"x");
        let id = capmesh_wire::repr::FixedBytes([9; 16]);
        let e = t.open(id, cid, TraceId([1; 16]), None).unwrap();
        assert_eq!(
            t.open(id, cid, TraceId([1; 16]), None).unwrap_err().code,
            capmesh_api::ErrorCode::Conflict
        );
        e.finish(Err(ApiError::internal("x")), false);
        t.finished(&e, 0);
        // Finished: the id may be used again.
        assert!(t.open(id, cid, TraceId([1; 16]), None).is_ok());
        // Past retention the finished one is evicted, the new one stays.
        t.evict(RETENTION.as_millis() as u64 + 1);
        assert!(t.get(&id).is_some());
    }
}
