//! A runtime an agent attaches to its session over a WebSocket: the capabilities it announces
//! are served through the market (advertised while the session lives), and their calls are
//! pushed to the agent as `call` frames and answered by `result`, `error` or `chunk`s + `end`.
//!
//! The agent's socket may drop and come back: while it is gone, calls fail at once (retryably:
//! callers fail over) and after [`AgentsConfig::runtime_grace`](crate::AgentsConfig) without
//! a new socket every advert of the session is retired. A new socket replaces the old one.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use capmesh_api::{
    AgentFrame, Announcement, CancelReason, FrameError, NodeFrame, RuntimeLink, ServedCapability,
    TraceId,
};
use capmesh_contract::Compiled;
use capmesh_exec::{ExecError, Executor, Foreign, ForeignOutput, ForeignRun};
use capmesh_market::{Market, ServeSpec, SessionTag};
use capmesh_types::Cid;
use capmesh_wire::{Contract, Price};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Most capabilities one session serves.
pub const MAX_CAPABILITIES: usize = 64;
/// Most calls pushed to one agent and not answered yet.
pub const MAX_PENDING: usize = 1024;
/// Chunks of one streaming call queued between the socket and the provider's stream.
const CHUNK_QUEUE: usize = 64;
/// How close to its deadline a dropped call counts as timed out rather than cancelled.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);
/// Longest error message of an agent kept for the caller, in bytes.
const MAX_MESSAGE: usize = 4096;

/// How one pushed call is answered.
enum Reply {
    Value(oneshot::Sender<Result<Value, ExecError>>),
    Stream { chunks: mpsc::Sender<Vec<u8>>, end: oneshot::Sender<Result<(), ExecError>> },
}

struct Pending {
    compiled: Arc<Compiled>,
    reply: Reply,
}

/// What the session's runtime shows in `GET /v1/sessions/{id}`.
pub(crate) struct Snapshot {
    pub(crate) attached: bool,
    pub(crate) capabilities: Vec<ServedCapability>,
    pub(crate) calls_served: u64,
}

#[derive(Default)]
struct State {
    /// The socket attached now: its generation and the sender of frames to it.
    socket: Option<(u64, mpsc::Sender<NodeFrame>)>,
    generation: u64,
    served: BTreeMap<Cid, ServedCapability>,
    /// Capabilities being announced (counted against the cap before they are served).
    announcing: usize,
    pending: HashMap<String, Pending>,
    next_call: u64,
    calls_served: u64,
}

/// Called after the set of served capabilities changed (the node keeps a list of them), and on
/// every `ping` (which extends the session like a heartbeat).
pub(crate) type OnChange = Arc<dyn Fn() + Send + Sync>;

/// The runtime of one session (attached or not).
pub(crate) struct Attached {
    tag: SessionTag,
    changed: OnChange,
    alive: OnChange,
    market: Market,
    grace: Duration,
    /// Fires when the session ends.
    ended: CancellationToken,
    tasks: TaskTracker,
    state: Mutex<State>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached").field("session", &self.tag.id).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(code: FrameError, message: impl Into<String>, call_id: Option<String>) -> NodeFrame {
    NodeFrame::Error { code, message: message.into(), call_id }
}

impl Attached {
    pub(crate) fn new(
        tag: SessionTag,
        market: Market,
        grace: Duration,
        ended: CancellationToken,
        tasks: TaskTracker,
        changed: OnChange,
        alive: OnChange,
    ) -> Arc<Self> {
        Arc::new(Self {
            tag,
            changed,
            alive,
            market,
            grace,
            ended,
            tasks,
            state: Mutex::new(State::default()),
        })
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let state = lock(&self.state);
        Snapshot {
            attached: state.socket.is_some(),
            capabilities: state.served.values().cloned().collect(),
            calls_served: state.calls_served,
        }
    }

    /// Attaches a new socket (replacing the one attached, whose socket is closed) and starts
    /// reading its frames.
    pub(crate) fn attach(self: &Arc<Self>) -> RuntimeLink {
        let (link, from_agent, to_agent) = RuntimeLink::new();
        let generation = {
            let mut state = lock(&self.state);
            state.generation += 1;
            let welcome = NodeFrame::Welcome {
                session: self.session_id(),
                capabilities: state.served.values().cloned().collect(),
            };
            // The queue is new and empty: this cannot fail for room.
            let _ = to_agent.try_send(welcome);
            state.socket = Some((state.generation, to_agent));
            // Calls pushed to the old socket can no longer be answered there.
            fail_pending(&mut state, "the agent's runtime socket was replaced");
            state.generation
        };
        tracing::info!(session = %self.tag.id, name = %self.tag.name, "agent runtime attached");
        let this = self.clone();
        self.tasks.spawn(async move { this.read(from_agent, generation).await });
        link
    }

    fn session_id(&self) -> capmesh_api::SessionId {
        // The tag was made from the id's text form.
        self.tag.id.parse().unwrap_or(capmesh_api::SessionId([0; 16]))
    }

    /// Reads the frames of socket `generation` until it closes or the session ends, then
    /// starts the grace period.
    async fn read(self: Arc<Self>, mut from_agent: mpsc::Receiver<AgentFrame>, generation: u64) {
        loop {
            let frame = tokio::select! {
                biased;
                () = self.ended.cancelled() => return,
                f = from_agent.recv() => f,
            };
            match frame {
                Some(frame) => self.on_frame(frame).await,
                None => break,
            }
        }
        let detached = {
            let mut state = lock(&self.state);
            let current = state.socket.as_ref().is_some_and(|(g, _)| *g == generation);
            if current {
                state.socket = None;
                fail_pending(&mut state, "the agent's runtime socket closed");
            }
            current
        };
        if !detached {
            return; // replaced by a newer socket
        }
        tracing::info!(session = %self.tag.id, grace = ?self.grace, "agent runtime socket closed");
        tokio::select! {
            () = self.ended.cancelled() => return,
            () = tokio::time::sleep(self.grace) => {}
        }
        // Retired only if no socket attached since this one closed (a newer socket that came and
        // went has a grace period of its own).
        let gone = {
            let state = lock(&self.state);
            state.socket.is_none() && state.generation == generation
        };
        if gone {
            tracing::info!(session = %self.tag.id, "agent runtime gone past its grace period: retiring its capabilities");
            self.retire_all().await;
        }
    }

    /// Sends `frame` to the attached socket, if any and if it has room (a reply the agent
    /// floods out of room is dropped: the agent caused it).
    fn reply(&self, frame: NodeFrame) {
        if let Some((_, tx)) = &lock(&self.state).socket {
            let _ = tx.try_send(frame);
        }
    }

    async fn on_frame(self: &Arc<Self>, frame: AgentFrame) {
        match frame {
            AgentFrame::Ping => {
                (self.alive)();
                self.reply(NodeFrame::Pong)
            }
            AgentFrame::Announce { capabilities } => self.announce(capabilities),
            AgentFrame::Retire { capability } => self.retire(capability),
            AgentFrame::Result { call_id, output } => self.on_result(call_id, output),
            AgentFrame::Error { call_id, message } => {
                let mut message = message;
                if message.len() > MAX_MESSAGE {
                    let mut end = MAX_MESSAGE;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                match lock(&self.state).pending.remove(&call_id) {
                    Some(p) => p.reply.fail(ExecError::Failed(message)),
                    None => self.reply(unknown_call(call_id)),
                }
            }
            AgentFrame::Chunk { call_id, text, data } => {
                let bytes = match (text, data) {
                    (Some(t), None) => t.into_bytes(),
                    (None, Some(d)) => d.0,
                    _ => {
                        let m = "a chunk has exactly one of `text` and `data`";
                        return self.reply(error(FrameError::WrongAnswer, m, Some(call_id)));
                    }
                };
                let tx = match lock(&self.state).pending.get(&call_id).map(|p| &p.reply) {
                    Some(Reply::Stream { chunks, .. }) => Ok(chunks.clone()),
                    Some(Reply::Value(_)) => Err(error(
                        FrameError::WrongAnswer,
                        "a chunk for a contract that does not stream: answer with `result`",
                        Some(call_id.clone()),
                    )),
                    None => Err(unknown_call(call_id.clone())),
                };
                match tx {
                    // Waits for room: the provider streams each chunk to the caller in turn.
                    Ok(tx) => {
                        if tx.send(bytes).await.is_err() {
                            self.reply(unknown_call(call_id));
                        }
                    }
                    Err(frame) => self.reply(frame),
                }
            }
            AgentFrame::End { call_id } => {
                let mut state = lock(&self.state);
                match state.pending.remove(&call_id) {
                    Some(Pending { reply: Reply::Stream { end, .. }, .. }) => {
                        let _ = end.send(Ok(()));
                    }
                    Some(p @ Pending { reply: Reply::Value(_), .. }) => {
                        state.pending.insert(call_id.clone(), p);
                        drop(state);
                        self.reply(error(
                            FrameError::WrongAnswer,
                            "`end` for a contract that does not stream: answer with `result`",
                            Some(call_id),
                        ));
                    }
                    None => {
                        drop(state);
                        self.reply(unknown_call(call_id));
                    }
                }
            }
        }
    }

    fn on_result(&self, call_id: String, output: Value) {
        let mut state = lock(&self.state);
        let Some(pending) = state.pending.remove(&call_id) else {
            drop(state);
            return self.reply(unknown_call(call_id));
        };
        if matches!(pending.reply, Reply::Stream { .. }) {
            state.pending.insert(call_id.clone(), pending);
            drop(state);
            return self.reply(error(
                FrameError::WrongAnswer,
                "a result for a streaming contract: send `chunk`s, then `end`",
                Some(call_id),
            ));
        }
        drop(state);
        match pending.compiled.validate_output(&output) {
            Ok(()) => pending.reply.answer(output),
            Err(violations) => {
                self.reply(error(
                    FrameError::OutputInvalid,
                    format!(
                        "the output breaks the contract's output schema: {}; the call fails \
                         with OutputInvalid",
                        capmesh_contract::summarize(&violations)
                    ),
                    Some(call_id),
                ));
                pending.reply.fail(ExecError::OutputInvalid { output, violations });
            }
        }
    }

    /// Serves the announced capabilities (in the background: publishing waits for the mesh)
    /// and answers `announced`, or an error for the first one that cannot be served.
    fn announce(self: &Arc<Self>, announcements: Vec<Announcement>) {
        {
            let mut state = lock(&self.state);
            let after = state.served.len() + state.announcing + announcements.len();
            if after > MAX_CAPABILITIES {
                drop(state);
                return self.reply(error(
                    FrameError::TooMany,
                    format!("a session serves at most {MAX_CAPABILITIES} capabilities"),
                    None,
                ));
            }
            state.announcing += announcements.len();
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let count = announcements.len();
            let mut served = Vec::new();
            let mut failed = None;
            for a in announcements {
                if this.ended.is_cancelled() {
                    break;
                }
                match this.serve(a).await {
                    Ok(s) => served.push(s),
                    Err(frame) => {
                        failed = Some(frame);
                        break;
                    }
                }
            }
            lock(&this.state).announcing -= count;
            if !served.is_empty() || failed.is_none() {
                this.reply(NodeFrame::Announced { capabilities: served });
            }
            if let Some(frame) = failed {
                this.reply(frame);
            }
        });
    }

    async fn serve(self: &Arc<Self>, a: Announcement) -> Result<ServedCapability, NodeFrame> {
        let bad = |m: String| error(FrameError::BadContract, m, None);
        let contract: Contract =
            serde_json::from_value(a.contract).map_err(|e| bad(format!("not a contract: {e}")))?;
        let name = contract.name.clone();
        let compiled = Compiled::new(&contract)
            .map_err(|e| bad(format!("the contract {name:?} is refused: {e}")))?;
        let capability = compiled.id();
        // One runtime per capability on a node: an agent never takes over what a [[serve]]
        // table, an import or another session serves (nor its own twice).
        if self.market.served().contains(&capability) {
            return Err(bad(format!(
                "{capability} ({name:?}) is already served on this node; change the contract \
                 (its id changes with it) to serve your own"
            )));
        }
        let tool = AgentTool {
            runtime: Arc::downgrade(self),
            capability,
            compiled: Arc::new(compiled),
            describe: format!("the runtime of agent session {:?} ({})", self.tag.name, self.tag.id),
        };
        let executor = Executor::foreign(contract, Arc::new(tool))
            .map_err(|e| bad(format!("the contract {name:?} cannot be served: {e}")))?;
        let spec = ServeSpec {
            executor: Arc::new(executor),
            price: a.price.unwrap_or(Price { amount: 0, unit: "free".into() }),
            limits: a.limits.unwrap_or_else(capmesh_mesh::default_limits),
            latency_ms: a.latency_ms,
            ttl: None,
            session: Some(self.tag.clone()),
        };
        let published = match self.market.serve(spec).await {
            Ok(p) => p,
            Err(e) => {
                // Registered before publishing: take the runtime back (nothing was advertised).
                let _ = self.market.unserve(capability).await;
                return Err(error(
                    FrameError::Unavailable,
                    format!("{name:?} could not be advertised: {e}"),
                    None,
                ));
            }
        };
        let served = ServedCapability { capability, name, advert_id: published.advert_id };
        lock(&self.state).served.insert(capability, served.clone());
        (self.changed)();
        tracing::info!(session = %self.tag.id, %capability, name = %served.name, "agent capability served");
        Ok(served)
    }

    fn retire(self: &Arc<Self>, capability: Cid) {
        if lock(&self.state).served.remove(&capability).is_none() {
            return self.reply(error(
                FrameError::NotServed,
                format!("this session does not serve {capability}"),
                None,
            ));
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            let retired = this.market.unserve(capability).await;
            (this.changed)();
            match retired {
                Ok(_) => this.reply(NodeFrame::Retired { capability }),
                Err(e) => this.reply(error(
                    FrameError::Unavailable,
                    format!("{capability} is no longer served but its retirement failed: {e}"),
                    None,
                )),
            }
        });
    }

    /// Stops serving every capability of the session and retires their adverts.
    pub(crate) async fn retire_all(&self) {
        let served = std::mem::take(&mut lock(&self.state).served);
        for capability in served.into_keys() {
            if let Err(e) = self.market.unserve(capability).await {
                tracing::warn!(session = %self.tag.id, %capability, error = %e, "retiring an agent capability failed");
            }
        }
        (self.changed)();
    }

    /// Ends the runtime with its session: closes the socket, fails pending calls, retires
    /// every advert.
    pub(crate) async fn shut(&self) {
        {
            let mut state = lock(&self.state);
            // The agent is told which calls to stop before its socket closes.
            if let Some((_, tx)) = &state.socket {
                for call_id in state.pending.keys() {
                    let frame = NodeFrame::Cancel {
                        call_id: call_id.clone(),
                        reason: CancelReason::Shutdown,
                    };
                    let _ = tx.try_send(frame);
                }
            }
            state.socket = None;
            fail_pending(&mut state, "the agent's session ended");
        }
        self.retire_all().await;
    }

    /// Registers a call to push: its id and how it will be answered.
    fn register(
        &self,
        compiled: Arc<Compiled>,
        streaming: bool,
    ) -> Result<(String, mpsc::Sender<NodeFrame>, Answer), ExecError> {
        let mut state = lock(&self.state);
        let Some((_, tx)) = state.socket.clone() else {
            return Err(ExecError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the agent's runtime is not connected (it may be reconnecting); retry",
            )));
        };
        if state.pending.len() >= MAX_PENDING {
            return Err(ExecError::Io(std::io::Error::other(format!(
                "the agent has {MAX_PENDING} calls unanswered; retry later"
            ))));
        }
        state.next_call += 1;
        state.calls_served += 1;
        let call_id = format!("c{}", state.next_call);
        let (reply, answer) = if streaming {
            let (chunks, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
            let (end, end_rx) = oneshot::channel();
            (Reply::Stream { chunks, end }, Answer::Stream(chunk_rx, end_rx))
        } else {
            let (tx, rx) = oneshot::channel();
            (Reply::Value(tx), Answer::Value(rx))
        };
        state.pending.insert(call_id.clone(), Pending { compiled, reply });
        Ok((call_id, tx, answer))
    }
}

fn unknown_call(call_id: String) -> NodeFrame {
    error(
        FrameError::UnknownCall,
        "no call with this id is waiting for an answer (it was answered, cancelled or timed out)",
        Some(call_id),
    )
}

fn fail_pending(state: &mut State, why: &str) {
    for (_, p) in state.pending.drain() {
        p.reply.fail(ExecError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            why.to_string(),
        )));
    }
}

impl Reply {
    fn answer(self, output: Value) {
        if let Reply::Value(tx) = self {
            let _ = tx.send(Ok(output));
        }
    }

    fn fail(self, e: ExecError) {
        match self {
            Reply::Value(tx) => {
                let _ = tx.send(Err(e));
            }
            Reply::Stream { end, .. } => {
                let _ = end.send(Err(e));
            }
        }
    }
}

/// The run's side of a pushed call.
enum Answer {
    Value(oneshot::Receiver<Result<Value, ExecError>>),
    Stream(mpsc::Receiver<Vec<u8>>, oneshot::Receiver<Result<(), ExecError>>),
}

/// Cancels a pushed call that is dropped before its answer (the caller cancelled, or its
/// time ran out): the agent gets a `cancel` frame.
struct PendingGuard {
    runtime: Weak<Attached>,
    call_id: Option<String>,
    deadline: Instant,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let (Some(call_id), Some(runtime)) = (self.call_id.take(), self.runtime.upgrade()) else {
            return;
        };
        if lock(&runtime.state).pending.remove(&call_id).is_some() {
            // The executor's timer started a moment before this deadline was taken: a drop
            // this close to it is the timeout.
            let reason = if Instant::now() + TIMEOUT_SLACK >= self.deadline {
                CancelReason::Timeout
            } else {
                CancelReason::Cancelled
            };
            runtime.reply(NodeFrame::Cancel { call_id, reason });
        }
    }
}

/// One announced capability as a [`Foreign`] runtime of the market.
struct AgentTool {
    runtime: Weak<Attached>,
    capability: Cid,
    compiled: Arc<Compiled>,
    describe: String,
}

type Run<T> = Pin<Box<dyn std::future::Future<Output = Result<T, ExecError>> + Send>>;

impl Foreign for AgentTool {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn call(&self, args: Value) -> Run<Value> {
        let run = self.run(args, ForeignRun::new(Duration::from_secs(30)));
        Box::pin(async move {
            match run.await? {
                ForeignOutput::Value(v) => Ok(v),
                ForeignOutput::Streamed { .. } => {
                    Err(ExecError::Config("a streaming capability run without a sink".into()))
                }
            }
        })
    }

    fn streams(&self) -> bool {
        true
    }

    fn run(&self, args: Value, ctx: ForeignRun) -> Run<ForeignOutput> {
        let (runtime, capability, compiled) =
            (self.runtime.clone(), self.capability, self.compiled.clone());
        Box::pin(async move {
            let Some(attached) = runtime.upgrade() else {
                return Err(ExecError::Io(std::io::Error::other("the agent's session ended")));
            };
            let mut sink = ctx.chunks;
            let (call_id, to_agent, answer) = attached.register(compiled, sink.is_some())?;
            drop(attached);
            let deadline = Instant::now() + ctx.limit;
            let mut guard = PendingGuard { runtime, call_id: Some(call_id.clone()), deadline };
            let deadline_ms = capmesh_mesh::now_ms().saturating_add(ctx.limit.as_millis() as u64);
            let frame = NodeFrame::Call {
                call_id,
                capability,
                args,
                deadline_ms,
                trace: ctx.trace.map(TraceId),
            };
            if to_agent.send(frame).await.is_err() {
                // The guard forgets the call.
                return Err(ExecError::Io(std::io::Error::other(
                    "the agent's runtime socket closed before the call was pushed",
                )));
            }
            let result = match answer {
                Answer::Value(rx) => rx
                    .await
                    .unwrap_or_else(|_| {
                        Err(ExecError::Io(std::io::Error::other("the agent's runtime went away")))
                    })
                    .map(ForeignOutput::Value),
                Answer::Stream(mut chunks, mut end) => {
                    let Some(sink) = sink.as_mut() else {
                        return Err(ExecError::Config("a streaming run without a sink".into()));
                    };
                    let ended = loop {
                        tokio::select! {
                            chunk = chunks.recv() => match chunk {
                                Some(c) => sink.send(c).await?,
                                // The pending entry is gone (ended, or failed): its `end` says which.
                                None => break (&mut end).await.unwrap_or_else(|_| Err(ExecError::Io(std::io::Error::other("the agent's runtime went away")))),
                            },
                            e = &mut end => break e.unwrap_or_else(|_| Err(ExecError::Io(std::io::Error::other("the agent's runtime went away")))),
                        }
                    };
                    // Chunks sent before `end` are queued ahead of it: forward them first.
                    while let Ok(c) = chunks.try_recv() {
                        sink.send(c).await?;
                    }
                    ended.map(|()| ForeignOutput::Streamed { chunks: sink.sent() })
                }
            };
            guard.call_id = None;
            result
        })
    }
}
