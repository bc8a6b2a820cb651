//! [`MeshTools`]: an MCP server whose tools are mesh capabilities, backed by a running node
//! through its local API.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use capmesh_api::{
    CallRequest, CallResult, Client, ClientError, FindEvent, FindRequest, QueryRequest,
};
use capmesh_types::Cid;
use capmesh_wire::{CallId, Contract, Filter, Price};
use futures::{Stream, StreamExt};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        ListToolsResult, MetaObject, PaginatedRequestParams, ProgressNotificationParam,
        ServerCapabilities, ServerConfig, Tool,
    },
    service::{NotificationContext, RequestContext},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::{lock, names};

/// Name of the search tool every [`MeshTools`] lists besides the capabilities.
pub const FIND_TOOL: &str = "capmesh_find";

/// Keys of a result's `_meta`.
pub const META_RECEIPT: &str = "capmesh/receipt_id";
pub const META_CALL: &str = "capmesh/call_id";
pub const META_PROVIDER: &str = "capmesh/provider";
pub const META_CAPABILITY: &str = "capmesh/capability";
pub const META_ERROR: &str = "capmesh/error_code";

/// Contracts kept in memory (they never change: a capability id is the hash of its contract).
const CONTRACT_CACHE: usize = 1024;
/// Contracts fetched at once for a listing (one the replica lacks costs a mesh search).
const CONTRACT_FETCHES: usize = 8;
/// Replica query page size, and most pages read for one listing.
const QUERY_PAGE: u32 = 500;
const QUERY_PAGES: usize = 8;
/// Longest wait for the node to take a cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// Most results of one `capmesh_find`.
const MAX_FIND: u32 = 100;
/// Default of [`Selection::refresh`].
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
/// Shortest [`Selection::refresh`] (a shorter one is taken as this).
const MIN_REFRESH: Duration = Duration::from_millis(100);
/// Most client sessions told when the tools change (HTTP; stdio has one). Closed sessions are
/// dropped first; past the cap, the oldest is no longer told (it can still list).
const MAX_SESSIONS: usize = 256;
/// Longest wait to hand one notification to one session (a client that reads nothing does not
/// hold up the others, nor a call).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a running call reports progress to a client that asked for it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Which capabilities [`MeshTools`] lists, and the terms of its calls (`[mcp]` in config.toml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Capabilities listed whatever else is chosen (capability ids).
    pub pinned: Vec<Cid>,
    /// Live capabilities of the replica that carry every one of these tags.
    pub tags: Vec<String>,
    /// Live capabilities of the replica whose name, description or tags match these words.
    /// (With no pin, tag or search, every live capability of the replica is listed; with some,
    /// only what they choose.)
    pub search: Option<String>,
    /// Most capabilities listed (pinned first, then found by `capmesh_find`, then the rest).
    pub max_tools: usize,
    /// Deadline of a call, failovers included; `None`: the node's default.
    pub deadline_ms: Option<u64>,
    /// The most one call may cost; `None`: no limit beyond the node's policy.
    pub max_price: Option<Price>,
    /// How often the selection is evaluated again while a client is connected, so that
    /// clients are told (`notifications/tools/list_changed`) when the capabilities it chooses
    /// change on the mesh. Default [`DEFAULT_REFRESH`]; at least 100 ms; zero: never (clients
    /// are then told only of what `capmesh_find` and their own listings turn up).
    pub refresh: Duration,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            pinned: Vec::new(),
            tags: Vec::new(),
            search: None,
            max_tools: 64,
            deadline_ms: None,
            max_price: None,
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// An MCP server over a node's API: `tools/list` lists the [`Selection`]'s capabilities as
/// tools ([`names::tool_of`]) plus [`FIND_TOOL`]; `tools/call` makes a mesh call (negotiation,
/// receipts) and answers its output with the receipt id in `_meta` ([`META_RECEIPT`]), telling
/// a client that gave a `progressToken` how the call goes (`notifications/progress`); MCP
/// cancellation cancels the mesh call; mesh errors are tool errors with their code and reason.
///
/// Every client session that finished its handshake is told
/// (`notifications/tools/list_changed`) whenever an evaluation of the selection differs from
/// the one before — a listing, a `capmesh_find` that added something, or the evaluation
/// [`MeshTools::watch`] makes every [`Selection::refresh`] — while `watch` runs
/// ([`crate::serve_stdio`] and [`crate::serve_http`] run it).
///
/// Cloning is cheap and clones share their state (one per HTTP session is fine).
#[derive(Debug, Clone)]
pub struct MeshTools {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The node's API client; made again from `data_dir` when the node restarted (new address,
    /// new token).
    api: Mutex<Client>,
    data_dir: Option<std::path::PathBuf>,
    selection: Selection,
    /// Contracts by capability id, bounded by [`CONTRACT_CACHE`] (cleared when full).
    contracts: Mutex<HashMap<Cid, Arc<Contract>>>,
    /// Capabilities `capmesh_find` turned up, newest last, at most `max_tools`.
    found: Mutex<VecDeque<Cid>>,
    /// The tools of the last listing, by name.
    listed: Mutex<HashMap<String, Exposed>>,
    /// Evaluations of the selection started; each takes the next number.
    evaluations: AtomicU64,
    /// The tool names of the newest evaluation applied (a tool name carries the short id, so
    /// another capability is another name); `None` before the first.
    current: Mutex<Evaluated>,
    /// Client sessions told when the tools change, at most [`MAX_SESSIONS`].
    sessions: Mutex<Vec<Peer<RoleServer>>>,
    /// Woken when an evaluation differs from the one before; [`MeshTools::watch`] tells the
    /// sessions (changes that come while it tells are told once more, together).
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Evaluated {
    number: u64,
    names: Option<BTreeSet<String>>,
}

/// A capability listed as a tool.
#[derive(Debug, Clone)]
struct Exposed {
    capability: Cid,
    contract: Arc<Contract>,
    /// The arguments come as `{"input": …}` (see [`names::input_schema`]).
    wrapped: bool,
}

impl MeshTools {
    /// Tools of the node behind `api`, chosen by `selection`.
    pub fn new(api: Client, selection: Selection) -> Self {
        Self::build(api, None, selection)
    }

    /// Tools of the node of `data_dir` (its `api.addr` and `api.token`): when the node
    /// restarts, the client is made again from the files, so the MCP session outlives it.
    pub fn for_data_dir(
        data_dir: &std::path::Path,
        selection: Selection,
    ) -> Result<Self, ClientError> {
        let api = Client::from_data_dir(data_dir)?;
        Ok(Self::build(api, Some(data_dir.to_path_buf()), selection))
    }

    fn build(api: Client, data_dir: Option<std::path::PathBuf>, selection: Selection) -> Self {
        Self {
            inner: Arc::new(Inner {
                api: Mutex::new(api),
                data_dir,
                selection,
                contracts: Mutex::default(),
                found: Mutex::default(),
                listed: Mutex::default(),
                evaluations: AtomicU64::new(0),
                current: Mutex::default(),
                sessions: Mutex::default(),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The API client (see [`MeshTools::reconnected`]).
    fn api(&self) -> Client {
        lock(&self.inner.api).clone()
    }

    /// Whether `e` says the client is stale (the node restarted: new address, new token) and a
    /// fresh one was made from the data directory.
    fn reconnected(&self, e: &ClientError) -> bool {
        let stale = match e {
            ClientError::Unreachable { .. } | ClientError::NotRunning { .. } => true,
            ClientError::Api(api) => api.code == capmesh_api::ErrorCode::Unauthorized,
            _ => false,
        };
        let Some(dir) = &self.inner.data_dir else { return false };
        if !stale {
            return false;
        }
        match Client::from_data_dir(dir) {
            Ok(fresh) => {
                *lock(&self.inner.api) = fresh;
                true
            }
            Err(_) => false,
        }
    }

    /// The capability tools as listed now (without [`FIND_TOOL`]), remembered for `tools/call`.
    /// Of two capabilities with one tool name (same contract name, same short id), the first
    /// listed keeps it (pinned ones come first); the other is left out. When the tools differ
    /// from those of the evaluation before, the client sessions are told (by
    /// [`MeshTools::watch`]).
    ///
    /// Cancel-safe: a listing dropped halfway changes nothing.
    pub async fn tools(&self) -> Result<Vec<Tool>, ClientError> {
        let number = self.inner.evaluations.fetch_add(1, Ordering::Relaxed) + 1;
        let caps = match self.choose().await {
            Err(e) if self.reconnected(&e) => self.choose().await?,
            other => other?,
        };
        let contracts: Vec<_> = futures::stream::iter(caps)
            .map(|cap| async move { (cap, self.contract(cap).await) })
            .buffered(CONTRACT_FETCHES)
            .collect()
            .await;
        let mut tools = Vec::with_capacity(contracts.len());
        let mut listed = HashMap::with_capacity(contracts.len());
        for (cap, contract) in contracts {
            let contract = match contract {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(capability = %cap, error = %e, "no contract: not listed");
                    continue;
                }
            };
            let (tool, wrapped) = names::tool_of(&contract, &cap);
            let name = tool.name.to_string();
            if listed.contains_key(&name) {
                tracing::warn!(capability = %cap, tool = %name, "tool name taken by another capability: not listed");
                continue;
            }
            listed.insert(name, Exposed { capability: cap, contract, wrapped });
            tools.push(tool);
        }
        if self.apply(number, listed) {
            self.inner.changed.notify_one();
        }
        Ok(tools)
    }

    /// Keeps the tools of evaluation `number` unless a later one was kept already; whether they
    /// differ from those of the evaluation before (the first evaluation differs from nothing).
    fn apply(&self, number: u64, listed: HashMap<String, Exposed>) -> bool {
        let names: BTreeSet<String> = listed.keys().cloned().collect();
        let mut current = lock(&self.inner.current);
        if number < current.number {
            // Overtaken by a later evaluation, which was compared and told already.
            return false;
        }
        *lock(&self.inner.listed) = listed;
        current.number = number;
        match current.names.replace(names) {
            Some(before) => current.names.as_ref() != Some(&before),
            None => false,
        }
    }

    /// Sends `notifications/tools/list_changed` to every open client session, each given at most
    /// [`NOTIFY_TIMEOUT`]; closed ones are forgotten.
    async fn tell_changed(&self) {
        let sessions = {
            let mut sessions = lock(&self.inner.sessions);
            sessions.retain(|p| !p.is_transport_closed());
            sessions.clone()
        };
        tracing::debug!(sessions = sessions.len(), "the tools changed: telling the clients");
        let told = sessions.iter().map(|peer| async move {
            match tokio::time::timeout(NOTIFY_TIMEOUT, peer.notify_tool_list_changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "tools/list_changed not sent"),
                Err(_) => tracing::debug!("tools/list_changed not sent: the session is stuck"),
            }
        });
        futures::future::join_all(told).await;
    }

    /// Remembers a client session that finished its handshake, to tell it when the tools change.
    fn register(&self, peer: Peer<RoleServer>) {
        let mut sessions = lock(&self.inner.sessions);
        sessions.retain(|p| !p.is_transport_closed());
        if sessions.len() >= MAX_SESSIONS {
            tracing::warn!(
                max = MAX_SESSIONS,
                "too many MCP sessions: the oldest is no longer told when the tools change"
            );
            sessions.remove(0);
        }
        sessions.push(peer);
    }

    /// Whether some client session is open.
    fn has_sessions(&self) -> bool {
        let mut sessions = lock(&self.inner.sessions);
        sessions.retain(|p| !p.is_transport_closed());
        !sessions.is_empty()
    }

    /// Tells the client sessions (`notifications/tools/list_changed`) when the tools change,
    /// until `cancel`: when a listing or a `capmesh_find` finds them changed, and, so that
    /// changes on the mesh (capabilities published, retired, expired) are seen without a client
    /// asking, by evaluating the selection every [`Selection::refresh`] while a session is open
    /// (never with a zero `refresh`). [`crate::serve_stdio`] and [`crate::serve_http`] run it;
    /// without it, clients are not told.
    ///
    /// Cancel-safe.
    pub async fn watch(&self, cancel: CancellationToken) {
        let every = self.inner.selection.refresh;
        let mut tick = (!every.is_zero()).then(|| {
            let every = every.max(MIN_REFRESH);
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tick
        });
        loop {
            let next_tick = async {
                match &mut tick {
                    Some(tick) => tick.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = self.inner.changed.notified() => {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        () = self.tell_changed() => {}
                    }
                }
                _ = next_tick => {
                    if !self.has_sessions() {
                        continue;
                    }
                    // A change found is told at the next turn.
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        listed = self.tools() => {
                            if let Err(e) = listed {
                                tracing::debug!(error = %e, "the selection could not be evaluated again");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Capability ids to list, in order, at most `max_tools`, none twice.
    async fn choose(&self) -> Result<Vec<Cid>, ClientError> {
        let s = &self.inner.selection;
        let mut seen = HashSet::new();
        let mut caps = Vec::new();
        let found: Vec<Cid> = lock(&self.inner.found).iter().rev().copied().collect();
        for cap in s.pinned.iter().chain(&found) {
            if caps.len() < s.max_tools && seen.insert(*cap) {
                caps.push(*cap);
            }
        }
        let chosen_by_query = !s.tags.is_empty() || s.search.is_some() || s.pinned.is_empty();
        if !chosen_by_query {
            return Ok(caps);
        }
        let filter = Filter { tags: s.tags.clone(), text: s.search.clone(), ..Filter::default() };
        let mut cursor = None;
        for _ in 0..QUERY_PAGES {
            if caps.len() >= s.max_tools {
                break;
            }
            let req = QueryRequest {
                filter: filter.clone(),
                limit: Some(QUERY_PAGE),
                cursor: cursor.take(),
                ..QueryRequest::default()
            };
            let page = self.api().query(&req).await?;
            for hit in page.hits {
                if caps.len() < s.max_tools && seen.insert(hit.capability) {
                    caps.push(hit.capability);
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(caps)
    }

    async fn contract(&self, cap: Cid) -> Result<Arc<Contract>, ClientError> {
        if let Some(c) = lock(&self.inner.contracts).get(&cap) {
            return Ok(c.clone());
        }
        let info = self.api().contract(cap).await?;
        let contract: Contract = serde_json::from_value(info.contract)
            .map_err(|e| ClientError::Decode(format!("the contract of {cap}: {e}")))?;
        // The node checked that it hashes to `cap`; check again, it is cheap and it is the id.
        match capmesh_contract::capability_id(&contract) {
            Ok(id) if id == cap => {}
            _ => {
                return Err(ClientError::Decode(format!(
                    "the node's contract for {cap} has another id"
                )));
            }
        }
        let contract = Arc::new(contract);
        let mut cache = lock(&self.inner.contracts);
        if cache.len() >= CONTRACT_CACHE {
            cache.clear();
        }
        cache.insert(cap, contract.clone());
        Ok(contract)
    }

    /// The listed tool `name`, listing again if it is not known (a client may call a tool it
    /// learnt from an earlier session).
    async fn exposed(&self, name: &str) -> Result<Option<Exposed>, ClientError> {
        if let Some(e) = lock(&self.inner.listed).get(name) {
            return Ok(Some(e.clone()));
        }
        self.tools().await?;
        Ok(lock(&self.inner.listed).get(name).cloned())
    }

    /// `tools/call` of a capability tool.
    async fn call(
        &self,
        exposed: Exposed,
        arguments: Option<rmcp::model::JsonObject>,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let mut arguments = arguments.unwrap_or_default();
        let args = if exposed.wrapped {
            match arguments.remove("input") {
                Some(v) => v,
                None => {
                    return tool_error("BadRequest", "the argument \"input\" is missing".into());
                }
            }
        } else {
            Value::Object(arguments)
        };
        let call_id = match CallId::random() {
            Ok(id) => id,
            Err(e) => {
                return tool_error(
                    capmesh_wire::Code::Internal.as_str(),
                    format!("no randomness for a call id: {e}"),
                );
            }
        };
        let s = &self.inner.selection;
        let mut req = CallRequest::new(exposed.capability, args);
        req.call_id = Some(call_id);
        req.deadline_ms = s.deadline_ms;
        req.max_price = s.max_price.clone();
        let attempt = async {
            let mut api = self.api();
            let mut retried = false;
            loop {
                let outcome = api.call(&req).await;
                // A call the old node never received can go to the node that replaced it.
                match &outcome {
                    Err(e) if !retried && self.reconnected(e) => {
                        retried = true;
                        api = self.api();
                    }
                    _ => break outcome,
                }
            }
        };
        tokio::pin!(attempt);
        let token = ctx.meta.get_progress_token();
        let mut progress = match token {
            Some(_) => progress_of(self.api(), call_id).boxed(),
            None => futures::stream::pending().boxed(),
        };
        let outcome = loop {
            tokio::select! {
                biased;
                () = ctx.ct.cancelled() => {
                    tracing::debug!(capability = %exposed.capability, "MCP cancellation: cancelling the mesh call");
                    // Told by id, and by the request going away: the node cancels a call whose
                    // client left, also one it had not registered yet when the cancel came.
                    if let Err(e) = tokio::time::timeout(CANCEL_GRACE, self.api().cancel(&call_id)).await {
                        tracing::debug!(error = %e, "cancel");
                    }
                    return tool_error(capmesh_wire::Code::Cancelled.as_str(), "the call was cancelled".into());
                }
                outcome = &mut attempt => break outcome,
                Some(step) = progress.next() => {
                    if let Some(token) = &token {
                        let note = ProgressNotificationParam::new(token.clone(), step.progress)
                            .with_message(step.message);
                        // Bounded: a client that reads nothing does not hold up the call.
                        match tokio::time::timeout(NOTIFY_TIMEOUT, ctx.peer.notify_progress(note)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(error = %e, "progress not sent"),
                            Err(_) => tracing::debug!("progress not sent: the session is stuck"),
                        }
                    }
                }
            }
        };
        match outcome {
            Ok(result) => success(&exposed, result),
            Err(ClientError::Api(e)) => {
                let mut text = format!("{}: {}", e.code, e.message);
                let code = match &e.call {
                    Some(failure) => {
                        for a in &failure.attempts {
                            text.push_str(&format!("\n- {a}"));
                        }
                        failure.code.clone()
                    }
                    None => e.code.to_string(),
                };
                tool_error(&code, text)
            }
            Err(e) => tool_error("Unavailable", format!("the capmesh node cannot be asked: {e}")),
        }
    }

    /// `capmesh_find`: by capability id across the mesh, or by tags and words in the replica.
    /// What it finds is listed as tools from then on (the client is told the list changed).
    async fn find(
        &self,
        arguments: Option<rmcp::model::JsonObject>,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let args: FindArgs =
            match serde_json::from_value(Value::Object(arguments.unwrap_or_default())) {
                Ok(a) => a,
                Err(e) => return tool_error("BadRequest", format!("bad arguments: {e}")),
            };
        let limit = args.limit.unwrap_or(20).clamp(1, MAX_FIND);
        let search = async {
            match &args.capability {
                Some(text) => match text.parse::<Cid>() {
                    Ok(cap) => self.find_providers(cap, limit).await.map(Ok),
                    Err(e) => Ok(Err(format!("{text:?} is not a capability id: {e}"))),
                },
                None => self.search(args.tags.clone(), args.text.clone(), limit).await.map(Ok),
            }
        };
        let results = tokio::select! {
            r = search => r,
            () = ctx.ct.cancelled() => return tool_error(capmesh_wire::Code::Cancelled.as_str(), "the search was cancelled".into()),
        };
        let results = match results {
            Ok(Err(bad)) => return tool_error("BadRequest", bad),
            Ok(Ok(hits)) => Ok(hits),
            Err(e) => Err(e),
        };
        let results = match results {
            Ok(r) => r,
            Err(ClientError::Api(e)) => return tool_error(&e.code.to_string(), e.message),
            Err(e) => {
                return tool_error("Unavailable", format!("the capmesh node cannot be asked: {e}"));
            }
        };
        let mut added = false;
        {
            let mut found = lock(&self.inner.found);
            for r in &results {
                if !found.contains(&r.capability) {
                    found.push_back(r.capability);
                    added = true;
                }
            }
            while found.len() > self.inner.selection.max_tools {
                found.pop_front();
            }
        }
        let mut items = Vec::with_capacity(results.len());
        for r in results {
            let tool = match self.contract(r.capability).await {
                Ok(c) => Some(names::tool_name(&c, &r.capability)),
                Err(_) => None,
            };
            items.push(json!({
                "capability": r.capability.to_string(),
                "name": r.name,
                "tool": tool,
                "provider": r.provider,
                "price": r.price,
                "source": r.source,
            }));
        }
        if added {
            // Evaluated again: when the tools changed, the client sessions are told (a client
            // without list_changed support lists again itself).
            if let Err(e) = self.tools().await {
                tracing::debug!(error = %e, "the selection could not be evaluated again");
            }
        }
        let value = json!({"results": items});
        let mut result = CallToolResult::structured(value);
        result.is_error = Some(false);
        result
    }

    async fn find_providers(&self, cap: Cid, limit: u32) -> Result<Vec<Hit>, ClientError> {
        let mut req = FindRequest::new(cap);
        req.limit = Some(limit);
        let mut events = self.api().find(&req).await?;
        let mut hits = Vec::new();
        while let Some(event) = events.next().await {
            match event? {
                FindEvent::Hit(h) => hits.push(Hit {
                    capability: h.capability,
                    name: h.name,
                    provider: h.provider.to_string(),
                    price: h.price,
                    source: match h.source {
                        capmesh_api::Source::Replica => "replica",
                        capmesh_api::Source::Kademlia => "kademlia",
                    },
                }),
                FindEvent::Done(_) => break,
            }
        }
        Ok(hits)
    }

    async fn search(
        &self,
        tags: Vec<String>,
        text: Option<String>,
        limit: u32,
    ) -> Result<Vec<Hit>, ClientError> {
        let req = QueryRequest {
            filter: Filter { tags, text, ..Filter::default() },
            limit: Some(limit),
            ..QueryRequest::default()
        };
        let page = self.api().query(&req).await?;
        Ok(page
            .hits
            .into_iter()
            .map(|h| Hit {
                capability: h.capability,
                name: h.name,
                provider: h.provider.to_string(),
                price: h.price,
                source: "replica",
            })
            .collect())
    }
}

/// One step of a running call, told to a client that asked (`_meta.progressToken`).
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// Increases with every step.
    progress: f64,
    message: String,
}

/// The steps of the running call `call_id`: the one source of what a `tools/call` reports
/// while it runs — the call's events as the node streams them (`GET /v1/calls/{id}/events`:
/// providers found, offers, the provider chosen, a deferred run accepted, each chunk of a
/// streaming output), and between them the time spent waiting, once every [`PROGRESS_EVERY`].
/// `progress` counts the steps, so it increases. The stream never ends by itself: it is
/// dropped with the call.
fn progress_of(api: Client, call_id: CallId) -> impl Stream<Item = Step> + Send + 'static {
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let waited = futures::stream::unfold(tick, move |mut tick| async move {
        tick.tick().await;
        let secs = start.elapsed().as_secs_f64();
        Some((format!("waiting for the provider ({secs:.0} s)"), tick))
    });
    let events = futures::stream::once(call_steps(api, call_id)).flatten();
    futures::stream::select(waited, events)
        .enumerate()
        .map(|(i, message)| Step { progress: (i + 1) as f64, message })
}

/// How often, and how many times, the events of a call are asked for before the node knows
/// the call (the `tools/call`'s own request may still be on its way).
const EVENTS_RETRY: Duration = Duration::from_millis(100);
const EVENTS_TRIES: u32 = 50;

/// The events of call `call_id` as step messages; none if the node never knows the call.
async fn call_steps(api: Client, call_id: CallId) -> futures::stream::BoxStream<'static, String> {
    for _ in 0..EVENTS_TRIES {
        match api.call_events(&call_id, 0).await {
            Ok(events) => {
                return events
                    .filter_map(|e| async move { e.ok().and_then(|e| step_message(&e.event)) })
                    .boxed();
            }
            Err(ClientError::Api(e)) if e.code == capmesh_api::ErrorCode::NotFound => {
                tokio::time::sleep(EVENTS_RETRY).await;
            }
            Err(_) => break,
        }
    }
    futures::stream::empty().boxed()
}

/// What an event of a call says to an MCP client; `None` for the final ones (the result says it).
fn step_message(event: &capmesh_api::CallEvent) -> Option<String> {
    use capmesh_api::CallEvent as E;
    Some(match event {
        E::Providers { providers } => format!("{} provider(s) found", providers.len()),
        E::Offer { provider, price, latency_ms } => {
            format!("offer from {provider}: {} {}, ~{latency_ms} ms", price.amount, price.unit)
        }
        E::Chosen { provider, warm } => {
            format!("calling {provider}{}", if *warm { " (standing offer)" } else { "" })
        }
        E::Accepted { provider } => format!("{provider} accepted the call and runs it"),
        E::AttemptFailed { attempt } => format!("a try failed, failing over: {attempt}"),
        E::Progress { seq, data } => format!("chunk {seq} ({} bytes)", data.0.len()),
        E::ProgressTruncated { dropped } => format!("{dropped} more chunks"),
        E::Done { .. } | E::Failed { .. } | E::Cancelled { .. } => return None,
    })
}

/// Arguments of [`FIND_TOOL`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindArgs {
    capability: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    text: Option<String>,
    limit: Option<u32>,
}

/// One provider of one capability, as `capmesh_find` reports it.
struct Hit {
    capability: Cid,
    name: String,
    provider: String,
    price: Price,
    source: &'static str,
}

/// The [`FIND_TOOL`] definition.
pub fn find_tool() -> Tool {
    let input = json!({
        "type": "object",
        "properties": {
            "capability": {"type": "string", "description": "A capability id (CID, b…): find its providers across the mesh (Kademlia and the local replica)."},
            "tags": {"type": "array", "items": {"type": "string"}, "description": "Capabilities carrying every one of these tags (local replica)."},
            "text": {"type": "string", "description": "Words to search in capability names, descriptions and tags (local replica)."},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_FIND, "description": "Most results (default 20)."},
        },
        "additionalProperties": false,
    });
    let output = json!({
        "type": "object",
        "properties": {
            "results": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "capability": {"type": "string"},
                    "name": {"type": "string"},
                    "tool": {"type": ["string", "null"], "description": "The tool to call it with (listed from now on)."},
                    "provider": {"type": "string"},
                    "price": {"type": "object"},
                    "source": {"type": "string", "enum": ["replica", "kademlia"]},
                },
                "required": ["capability", "name", "provider", "price", "source"],
            }},
        },
        "required": ["results"],
    });
    let description = "Search the capmesh mesh for capabilities (tools with JSON Schema contracts): by \
        capability id across the mesh, or by tags and words among the capabilities this node knows. \
        What it finds becomes callable as tools of this server.";
    let mut tool = Tool::new(FIND_TOOL, description, Arc::new(names::as_object(input)));
    tool.output_schema = Some(Arc::new(names::as_object(output)));
    tool
}

/// The tool result of a successful call: structured content when the contract's output is an
/// object, content blocks for an imported tool's content, else the output as JSON text; then a
/// text line naming the receipt, which `_meta` carries too.
fn success(exposed: &Exposed, r: CallResult) -> CallToolResult {
    let structured = names::output_schema(&exposed.contract).is_some();
    let mut content = Vec::new();
    let mut structured_content = None;
    match r.output {
        Some(output) if names::is_content(&exposed.contract) => {
            match serde_json::from_value::<Vec<ContentBlock>>(output["content"].clone()) {
                Ok(blocks) => content = blocks,
                Err(_) => content.push(ContentBlock::text(output.to_string())),
            }
        }
        Some(output) => {
            content.push(ContentBlock::text(output.to_string()));
            if structured {
                structured_content = Some(output);
            }
        }
        None => {
            // A streaming capability: its chunks, as text (joined first: a character may
            // straddle two chunks).
            let bytes: Vec<u8> = r.stream.iter().flat_map(|c| c.0.iter().copied()).collect();
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            if r.stream_truncated {
                text.push_str("\n[output truncated]");
            }
            content.push(ContentBlock::text(text));
        }
    }
    content.push(ContentBlock::text(format!(
        "capmesh receipt {} (provider {}, call {})",
        r.receipt_id,
        r.provider,
        data_encoding::BASE64URL_NOPAD.encode(&r.call_id.0)
    )));
    let mut result = CallToolResult::success(content);
    result.structured_content = structured_content;
    let mut meta = MetaObject::default();
    meta.0.insert(META_RECEIPT.into(), json!(r.receipt_id.to_string()));
    meta.0.insert(META_CALL.into(), json!(r.call_id));
    meta.0.insert(META_PROVIDER.into(), json!(r.provider.to_string()));
    meta.0.insert(META_CAPABILITY.into(), json!(r.capability.to_string()));
    result.meta = Some(meta);
    result
}

fn tool_error(code: &str, message: String) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
    let mut meta = MetaObject::default();
    meta.0.insert(META_ERROR.into(), json!(code));
    result.meta = Some(meta);
    result
}

impl ServerHandler for MeshTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build(),
        )
        .with_server_info(Implementation::new("capmesh", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Tools of the capmesh mesh: each runs on a provider peer chosen by price, latency \
                 and reputation, and answers with a signed receipt (its id is in the result). \
                 Use capmesh_find to discover more capabilities.",
        )
    }

    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        self.register(ctx.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = self.tools().await.map_err(|e| {
            ErrorData::internal_error(format!("the capmesh node cannot be asked: {e}"), None)
        })?;
        tools.push(find_tool());
        Ok(ListToolsResult { tools, ..Default::default() })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == FIND_TOOL {
            return Ok(self.find(request.arguments, &ctx).await.into());
        }
        let exposed = match self.exposed(&request.name).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                return Err(ErrorData::invalid_params(
                    format!("no tool named {:?}; list the tools again", request.name),
                    None,
                ));
            }
            Err(e) => {
                return Ok(tool_error(
                    "Unavailable",
                    format!("the capmesh node cannot be asked: {e}"),
                )
                .into());
            }
        };
        Ok(self.call(exposed, request.arguments, &ctx).await.into())
    }
}
