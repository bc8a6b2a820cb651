//! Agents on a running node (specs/api.md §4): **sessions** (an agent's identity on this node,
//! with a token scoped to it: the principal of what it does, named in the ledger), **runtimes
//! attached over a WebSocket** (the agent announces contracts, the node serves them through
//! the market and pushes their calls to the agent), and **calls followed while they run**
//! (state, events as Server-Sent Events, the result kept a while).
//!
//! [`Agents`] is what the node's API backend calls for all of these. It owns its tasks (a
//! tracker under a cancellation token that dropping the last handle cancels) and ends every
//! session at [`Agents::shutdown`]: a node restart ends all sessions, and the adverts of their
//! runtimes are retired rather than left behind.
//!
//! ```no_run
//! # async fn example(agents: capmesh_agents::Agents) -> Result<(), capmesh_api::ApiError> {
//! use capmesh_api::{Principal, SessionRequest};
//! let created = agents.open_session(SessionRequest::new("summarizer"))?;
//! let link = agents.attach(created.session.id)?; // the API server pumps a WebSocket into it
//! # drop(link); Ok(()) }
//! ```
//!
//! **Invariant:** a capability is advertised for a session only while the session lives and
//! its runtime is attached or within its grace period; every call an agent's runtime serves is
//! checked against the contract on both sides, as for every runtime.

mod calls;
mod convert;
mod runtime;
mod sessions;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_api::{
    ApiError, CallAccepted, CallRequest, CallResult, CallStatus, Principal, RuntimeLink, Sequenced,
    SessionCreated, SessionId, SessionInfo, SessionList, SessionRequest, TraceId,
};
use capmesh_market::Market;
use capmesh_types::Cid;
use capmesh_wire::CallId;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use calls::{
    MAX_EVENT_BYTES, MAX_EVENTS, MAX_FINISHED, MAX_FINISHED_BYTES, MAX_RUNNING, RETENTION,
};
pub use convert::{MAX_DEADLINE_MS, Stream, call_error, call_result, market_request};
pub use runtime::{MAX_CAPABILITIES, MAX_PENDING};

/// Settings; every default is on its field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentsConfig {
    /// How long a runtime's adverts outlive its socket, so that an agent can reconnect.
    /// Default 10 s.
    pub runtime_grace: Duration,
    /// Most sessions at once. Default 1024.
    pub max_sessions: usize,
    /// Where the capabilities served for sessions are listed, so that a node that did not
    /// stop cleanly retires them at its next start. Default none.
    pub served_file: Option<PathBuf>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self { runtime_grace: Duration::from_secs(10), max_sessions: 1024, served_file: None }
    }
}

impl AgentsConfig {
    pub fn with_runtime_grace(mut self, grace: Duration) -> Self {
        self.runtime_grace = grace;
        self
    }
    pub fn with_served_file(mut self, path: PathBuf) -> Self {
        self.served_file = Some(path);
        self
    }
}

/// The agents of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Agents {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    market: Market,
    config: AgentsConfig,
    sessions: Mutex<sessions::Table>,
    calls: Arc<Mutex<calls::Table>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn no_session(id: SessionId) -> ApiError {
    ApiError::not_found(format!(
        "no session {id}: it ended, expired, or the node restarted (sessions end with the node); \
         open a new one"
    ))
}

/// How often sessions are checked for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Agents {
    /// The agents of a node whose market is `market`; `cancel` (a child of the node's root)
    /// stops everything. Starts the expiry sweep.
    pub fn new(market: Market, config: AgentsConfig, cancel: CancellationToken) -> Self {
        let agents = Self {
            inner: Arc::new(Inner {
                market,
                config,
                sessions: Mutex::new(sessions::Table::default()),
                calls: Arc::new(Mutex::new(calls::Table::default())),
                tasks: TaskTracker::new(),
                cancel,
            }),
        };
        let weak = Arc::downgrade(&agents.inner);
        let cancel = agents.inner.cancel.clone();
        agents.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                Agents { inner }.sweep().await;
            }
        });
        agents
    }

    /// Retires the capabilities an earlier run served for its sessions and did not retire (it
    /// was killed), unless this run serves them. Call once at start, after `[[serve]]`.
    pub async fn retire_leftovers(&self) {
        let Some(path) = &self.inner.config.served_file else { return };
        let listed = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the list of agent capabilities");
                return;
            }
        };
        let served = self.inner.market.served();
        for cap in listed.lines().filter_map(|l| l.trim().parse::<Cid>().ok()) {
            if served.contains(&cap) {
                continue;
            }
            match self.inner.market.unserve(cap).await {
                Ok(_) => {
                    tracing::info!(capability = %cap, "retired an agent capability left by an earlier run")
                }
                Err(e) => {
                    tracing::debug!(capability = %cap, error = %e, "leftover agent capability")
                }
            }
        }
        self.save_served();
    }

    /// Writes the capabilities served for sessions now (a crash leaves this list behind).
    fn save_served(&self) {
        let Some(path) = &self.inner.config.served_file else { return };
        let caps: Vec<String> = lock(&self.inner.sessions)
            .all()
            .flat_map(|s| s.runtime.snapshot().capabilities)
            .map(|c| c.capability.to_string())
            .collect();
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, caps.join("\n")).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the list of agent capabilities");
        }
    }

    /// The session of a session token (`None` for any other token, or an expired session).
    pub fn authenticate(&self, token: &[u8]) -> Option<SessionId> {
        lock(&self.inner.sessions).by_token(token, capmesh_mesh::now_ms())
    }

    /// Opens a session: its id and its token (shown once).
    pub fn open_session(&self, req: SessionRequest) -> Result<SessionCreated, ApiError> {
        let checked = sessions::check(req)?;
        let (id, token) = sessions::fresh()?;
        let mut table = lock(&self.inner.sessions);
        if table.len() >= self.inner.config.max_sessions {
            return Err(ApiError::new(
                capmesh_api::ErrorCode::RateLimited,
                format!(
                    "this node holds {} sessions, its limit: end one first",
                    self.inner.config.max_sessions
                ),
            ));
        }
        let ended = self.inner.cancel.child_token();
        let tag = capmesh_market::SessionTag { id: id.to_string(), name: checked.name.clone() };
        let weak = Arc::downgrade(&self.inner);
        let changed: runtime::OnChange = Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                Agents { inner }.save_served();
            }
        });
        let weak = Arc::downgrade(&self.inner);
        let alive: runtime::OnChange = Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                let _ = Agents { inner }.heartbeat(id);
            }
        });
        let runtime = runtime::Attached::new(
            tag,
            self.inner.market.clone(),
            self.inner.config.runtime_grace,
            ended.clone(),
            self.inner.tasks.clone(),
            changed,
            alive,
        );
        let session = table.insert(id, &token, checked, capmesh_mesh::now_ms(), ended, runtime);
        tracing::info!(session = %id, name = %session.name, ttl_ms = session.ttl_ms, "session opened");
        Ok(SessionCreated { session: session.info(), token })
    }

    pub fn sessions(&self) -> SessionList {
        let mut sessions: Vec<SessionInfo> =
            lock(&self.inner.sessions).all().map(|s| s.info()).collect();
        sessions.sort_by_key(|s| (s.created_ms, s.id));
        SessionList { sessions }
    }

    pub fn session(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        lock(&self.inner.sessions).get(&id).map(|s| s.info()).ok_or_else(|| no_session(id))
    }

    /// Extends the session by its lifetime from now.
    pub fn heartbeat(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        let mut table = lock(&self.inner.sessions);
        let session = table.get_mut(&id).ok_or_else(|| no_session(id))?;
        session.expires_ms = capmesh_mesh::now_ms().saturating_add(session.ttl_ms);
        Ok(session.info())
    }

    /// Ends the session: its socket is closed, its pending calls fail, its adverts are retired
    /// (awaited).
    pub async fn end_session(&self, id: SessionId) -> Result<SessionInfo, ApiError> {
        let session = lock(&self.inner.sessions).remove(&id).ok_or_else(|| no_session(id))?;
        Ok(self.end(session, "ended").await)
    }

    async fn end(&self, session: sessions::Session, why: &str) -> SessionInfo {
        let info = session.info();
        session.ended.cancel();
        session.runtime.shut().await;
        tracing::info!(session = %session.id, name = %session.name, why, "session ended");
        self.save_served();
        info
    }

    /// Ends the sessions past their expiry.
    async fn sweep(&self) {
        let now = capmesh_mesh::now_ms();
        let expired: Vec<sessions::Session> = {
            let mut table = lock(&self.inner.sessions);
            let ids = table.expired(now);
            ids.iter().filter_map(|id| table.remove(id)).collect()
        };
        for session in expired {
            self.end(session, "expired").await;
        }
        lock(&self.inner.calls).evict(now);
    }

    /// A new runtime socket for session `id` (replacing the one attached).
    pub fn attach(&self, id: SessionId) -> Result<RuntimeLink, ApiError> {
        let runtime = lock(&self.inner.sessions)
            .get(&id)
            .map(|s| s.runtime.clone())
            .ok_or_else(|| no_session(id))?;
        let link = runtime.attach();
        Ok(link)
    }

    /// Starts a call and returns at once; the call runs in the node's tasks.
    pub fn start_call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<CallAccepted, ApiError> {
        let entry = self.open_call(principal, call_id, req, trace)?;
        Ok(CallAccepted { call_id, trace: entry.trace, state: capmesh_api::CallState::Finding })
    }

    fn open_call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<Arc<calls::Entry>, ApiError> {
        let trace = match trace {
            Some(t) => t,
            None => {
                let mut t = [0u8; 16];
                getrandom::fill(&mut t).map_err(|e| {
                    ApiError::internal(format!("no randomness for a trace id: {e}"))
                })?;
                TraceId(t)
            }
        };
        let capability = req.capability;
        let mut market_req = convert::market_request(call_id, req)?
            .with_trace(capmesh_wire::repr::FixedBytes(trace.0));
        if let Some(id) = principal.session() {
            let table = lock(&self.inner.sessions);
            let session = table.get(&id).ok_or_else(|| no_session(id))?;
            market_req = market_req.with_session(session.tag());
        }
        let entry =
            lock(&self.inner.calls).open(call_id, capability, trace, principal.session())?;
        // Counted once the call is taken (not when refused as a duplicate or over the bound).
        if let Some(id) = principal.session()
            && let Some(session) = lock(&self.inner.sessions).get_mut(&id)
        {
            session.calls_made += 1;
        }
        let (market, table, run) =
            (self.inner.market.clone(), self.inner.calls.clone(), entry.clone());
        let span = tracing::info_span!("call", trace = %trace, call = ?call_id);
        capmesh_mesh::trace::link(&span, &trace.0);
        self.inner.tasks.spawn(tracing::Instrument::instrument(
            async move { calls::drive(&market, &table, run, market_req).await },
            span,
        ));
        Ok(entry)
    }

    /// Makes a call and waits for its end. Dropping the future cancels the call (its client
    /// went away); the call's task still tells the provider.
    pub async fn call(
        &self,
        principal: Principal,
        call_id: CallId,
        req: CallRequest,
        trace: Option<TraceId>,
    ) -> Result<CallResult, ApiError> {
        let entry = self.open_call(principal, call_id, req, trace)?;
        let guard = CancelOnDrop { armed: Some((self.inner.market.clone(), call_id)) };
        entry.ended().await;
        guard.disarm();
        entry.outcome().unwrap_or_else(|| Err(ApiError::unavailable("the node is stopping")))
    }

    fn visible(&self, principal: Principal, id: CallId) -> Result<Arc<calls::Entry>, ApiError> {
        lock(&self.inner.calls).get(&id).filter(|e| e.visible_to(principal)).ok_or_else(|| {
            ApiError::not_found(format!(
                "no call {id:?} on this node: it was made elsewhere or under another session, \
                 or ended more than {} min ago",
                RETENTION.as_secs() / 60
            ))
        })
    }

    pub fn call_status(&self, principal: Principal, id: CallId) -> Result<CallStatus, ApiError> {
        self.visible(principal, id).map(|e| e.status())
    }

    /// The events of call `id` from `from` on, then as they happen; the channel closes after
    /// the final event.
    pub fn call_events(
        &self,
        principal: Principal,
        id: CallId,
        from: u64,
    ) -> Result<mpsc::Receiver<Sequenced>, ApiError> {
        let entry = self.visible(principal, id)?;
        let (tx, rx) = mpsc::channel(calls::SUBSCRIBER_QUEUE);
        self.inner.tasks.spawn(calls::follow(entry, from, tx, self.inner.cancel.clone()));
        Ok(rx)
    }

    /// Cancels call `id` if `principal` made it (or is the node) and it is in flight.
    pub fn cancel(&self, principal: Principal, id: CallId) -> bool {
        if principal != Principal::Node && self.visible(principal, id).is_err() {
            return false;
        }
        self.inner.market.cancel(&id)
    }

    /// Ends every session (their adverts retired), stops the tasks and waits for them, at
    /// most `bound`.
    pub async fn shutdown(&self, bound: Duration) {
        let all: Vec<sessions::Session> = {
            let mut table = lock(&self.inner.sessions);
            let ids = table.ids();
            ids.iter().filter_map(|id| table.remove(id)).collect()
        };
        let end = async {
            for session in all {
                self.end(session, "the node is stopping").await;
            }
        };
        if tokio::time::timeout(bound, end).await.is_err() {
            tracing::warn!("sessions did not end within {bound:?}");
        }
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(bound, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!("agent tasks did not stop within {bound:?}");
        }
    }
}

/// Cancels a call when the API request that waits for it is dropped (its client went away).
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
