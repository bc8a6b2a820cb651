//! [`Importer`]: the tools of an MCP server (a stdio command or a streamable HTTP URL) served as
//! mesh capabilities, each with an `mcp` runtime that calls the tool.
//!
//! The importer keeps one MCP client session to the server. After connecting, when the server
//! says its tool list changed, and every `refresh` in case it does not say so, it lists the
//! tools and reconciles: a tool whose contract (and so id) is new is served (published); a
//! capability whose tool is gone or changed is unserved (retired; a retirement that fails is
//! tried again at every reconciliation). A call runs only while its capability is still the one
//! served for its tool, on a session that was reconciled: once the importer has seen a change,
//! the old id never runs the new definition (a server that changes a tool without saying so is
//! seen at the next `refresh`). A lost session is reconnected with backoff; calls meanwhile fail
//! as retryable. At node start, the imported capabilities an earlier run advertised are retired
//! ([`retire_imported`]): an imported capability is advertised only while it is served.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_exec::{ExecError, Executor, Foreign};
use capmesh_market::{Market, ServeSpec};
use capmesh_mesh::{Mesh, MeshError};
use capmesh_types::Cid;
use capmesh_wire::{CallLimits, Price};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use rmcp::{
    ClientHandler, Peer, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation,
    },
    service::{ClientCacheConfig, MaybeSendFuture, NotificationContext, RunningService},
    transport::{
        StreamableHttpClientTransport, TokioChildProcess,
        streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    lock,
    names::{self, ImportError},
};

/// Longest wait for the MCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection backoff: first and longest wait.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that stayed up this long resets the backoff (a server that dies right after its
/// handshake is not restarted every second).
const STABLE_SESSION: Duration = Duration::from_secs(30);
/// How often a connected session is checked for having closed.
const CLOSED_POLL: Duration = Duration::from_millis(500);
/// Longest wait for one listing of the tools.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Most tools imported from one server.
const MAX_TOOLS: usize = 1024;
/// Longest text kept from a tool's error result.
const MAX_ERROR_TEXT: usize = 2000;
/// Largest output of an imported tool (its JSON), the command runtime's default cap: a larger
/// one would not fit in the answer's frame.
const MAX_OUTPUT_BYTES: usize = capmesh_exec::DEFAULT_MAX_OUTPUT_BYTES as usize;

/// Where the MCP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A program speaking MCP on its stdin/stdout, started with a cleared environment (only
    /// `env`), in `cwd` if set, leading its own process group, which is killed when the session
    /// ends.
    Command { argv: Vec<String>, env: BTreeMap<String, String>, cwd: Option<PathBuf> },
    /// A streamable HTTP endpoint (`http://`), with an optional bearer token.
    Url { url: String, bearer: Option<String> },
}

/// One imported MCP server (`[[import]]` in config.toml).
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Names the import: contract names are `<name>.<tool>` and `<name>` is a tag of each
    /// (`^[a-z][a-z0-9_-]{0,31}$`).
    pub name: String,
    pub source: Source,
    /// More tags on every imported contract.
    pub tags: Vec<String>,
    /// Only these tools (by their MCP name); empty: all of them.
    pub tools: Vec<String>,
    /// Terms of every imported capability.
    pub price: Price,
    pub limits: CallLimits,
    pub latency_ms: Option<u64>,
    /// How often the tools are listed again when the server does not say they changed.
    pub refresh: Duration,
}

/// One imported server, reconciled in the background (see the module doc). Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Importer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ImportConfig,
    market: Market,
    mesh: Mesh,
    /// The session's peer while connected and reconciled.
    peer: Mutex<Option<Peer<RoleClient>>>,
    /// Woken by the server's `tools/list_changed` and by [`Importer::refresh`].
    changed: Arc<Notify>,
    state: Mutex<State>,
    /// Woken after every reconciliation.
    synced: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Served capabilities by MCP tool name.
    served: BTreeMap<String, Cid>,
    /// Unserved capabilities whose retirement failed: tried again at every reconciliation.
    unretired: BTreeSet<Cid>,
    /// Reconciliations done.
    syncs: u64,
    /// Tools that could not be imported, with why.
    refused: Vec<String>,
}

impl Importer {
    /// Checks `config` and starts importing in a task that ends with `cancel` (and kills the
    /// server's process group, if it started one). Stopping retires nothing; the next start of
    /// the node does ([`retire_imported`]) before importing again.
    pub fn spawn(
        config: ImportConfig,
        market: Market,
        mesh: Mesh,
        cancel: CancellationToken,
    ) -> Result<(Importer, tokio::task::JoinHandle<()>), ImportError> {
        names::check_prefix(&config.name)?;
        let inner = Arc::new(Inner {
            config,
            market,
            mesh,
            peer: Mutex::default(),
            changed: Arc::new(Notify::new()),
            state: Mutex::default(),
            synced: Notify::new(),
        });
        let task = tokio::spawn(run(inner.clone(), cancel));
        Ok((Importer { inner }, task))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The capabilities served now, by MCP tool name.
    pub fn served(&self) -> BTreeMap<String, Cid> {
        lock(&self.inner.state).served.clone()
    }

    /// Tools that could not become contracts at the last listing, with why.
    pub fn refused(&self) -> Vec<String> {
        lock(&self.inner.state).refused.clone()
    }

    /// Whether a reconciled session to the server is up.
    pub fn connected(&self) -> bool {
        lock(&self.inner.peer).as_ref().is_some_and(|p| !p.is_transport_closed())
    }

    /// Lists the tools again now (as if the server had said they changed).
    pub fn refresh(&self) {
        self.inner.changed.notify_one();
    }

    /// Waits for the next reconciliation after this call.
    pub async fn synced(&self) {
        let before = lock(&self.inner.state).syncs;
        loop {
            let notified = self.inner.synced.notified();
            if lock(&self.inner.state).syncs > before {
                return;
            }
            notified.await;
        }
    }
}

async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let name = inner.config.name.clone();
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    loop {
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            c = tokio::time::timeout(CONNECT_TIMEOUT, connect(&inner)) => c,
        };
        match connected {
            Ok(Ok((service, group))) => {
                tracing::info!(import = %name, "connected to the MCP server");
                let up = tokio::time::Instant::now();
                serve_session(&inner, &service, &cancel, &mut first).await;
                *lock(&inner.peer) = None;
                let _ = service.cancel().await;
                // The child dies with its transport; what it started, with its group.
                if let Some(group) = group {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                if cancel.is_cancelled() {
                    return;
                }
                if up.elapsed() >= STABLE_SESSION {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(import = %name, ?backoff, "the MCP session ended; reconnecting");
            }
            Ok(Err(e)) => {
                tracing::warn!(import = %name, error = %e, ?backoff, "cannot connect to the MCP server")
            }
            Err(_) => tracing::warn!(import = %name, ?backoff, "the MCP handshake timed out"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Reconciles, then again on every change notice or refresh tick, until the session closes or
/// `cancel`. Calls go to the session only once it was reconciled.
async fn serve_session(
    inner: &Arc<Inner>,
    service: &RunningService<RoleClient, Watcher>,
    cancel: &CancellationToken,
    first: &mut bool,
) {
    let mut refresh = tokio::time::interval(inner.config.refresh.max(Duration::from_secs(1)));
    refresh.tick().await;
    let mut closed = tokio::time::interval(CLOSED_POLL);
    loop {
        let listing = tokio::select! {
            () = cancel.cancelled() => return,
            r = tokio::time::timeout(LIST_TIMEOUT, reconcile(inner, service.peer(), *first)) => r,
        };
        match listing {
            Ok(Ok(())) => {
                *first = false;
                *lock(&inner.peer) = Some(service.peer().clone());
            }
            Ok(Err(e)) => {
                tracing::warn!(import = %inner.config.name, error = %e, "cannot list the MCP server's tools")
            }
            Err(_) => {
                tracing::warn!(import = %inner.config.name, "listing the MCP server's tools timed out")
            }
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = inner.changed.notified() => break,
                _ = refresh.tick() => break,
                _ = closed.tick() => if service.is_closed() || service.peer().is_transport_closed() {
                    return;
                },
            }
        }
    }
}

/// A session, and the process group of the server it started (stdio).
type Session = (RunningService<RoleClient, Watcher>, Option<Pid>);

async fn connect(inner: &Inner) -> Result<Session, String> {
    let watcher = Watcher { changed: inner.changed.clone() };
    let session = match &inner.config.source {
        Source::Command { argv, env, cwd } => {
            let Some(program) = argv.first() else {
                return Err("the command is empty".into());
            };
            let mut command = tokio::process::Command::new(program);
            // Its own process group, killed whole when the session ends: wrappers such as npx
            // run the real server as a grandchild.
            command.args(&argv[1..]).env_clear().envs(env).kill_on_drop(true).process_group(0);
            if let Some(cwd) = cwd {
                command.current_dir(cwd);
            }
            let transport = TokioChildProcess::new(command)
                .map_err(|e| format!("cannot start {program:?}: {e}"))?;
            let group = transport.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
            match watcher.serve(transport).await {
                Ok(service) => (service, group),
                Err(e) => {
                    if let Some(group) = group {
                        let _ = killpg(group, Signal::SIGKILL);
                    }
                    return Err(e.to_string());
                }
            }
        }
        Source::Url { url, bearer } => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            if let Some(token) = bearer {
                config = config.auth_header(token.clone());
            }
            let transport = StreamableHttpClientTransport::from_config(config);
            (watcher.serve(transport).await.map_err(|e| e.to_string())?, None)
        }
    };
    // Every listing asks the server: a cached (or stale) list could hide a changed tool.
    session.0.peer().set_response_cache_config(ClientCacheConfig::disabled()).await;
    Ok(session)
}

/// Lists the tools and serves / unserves what changed; retries the retirements that failed. On
/// the first listing of this run, also retires what this node advertises for this import and no
/// longer serves.
async fn reconcile(inner: &Arc<Inner>, peer: &Peer<RoleClient>, first: bool) -> Result<(), String> {
    let config = &inner.config;
    let tools = peer.list_all_tools().await.map_err(|e| e.to_string())?;
    let mut next = BTreeMap::new();
    let mut refused = Vec::new();
    if tools.len() > MAX_TOOLS {
        refused
            .push(format!("{} tools listed; only the first {MAX_TOOLS} are imported", tools.len()));
    }
    for tool in tools.into_iter().take(MAX_TOOLS) {
        if !config.tools.is_empty() && !config.tools.iter().any(|t| *t == tool.name) {
            continue;
        }
        match names::contract_of(&config.name, &config.tags, &tool) {
            Ok((contract, id)) => {
                next.insert(tool.name.to_string(), (contract, id, tool.output_schema.is_some()));
            }
            Err(e) => {
                tracing::warn!(import = %config.name, error = %e, "tool not imported");
                refused.push(e.to_string());
            }
        }
    }
    let current = lock(&inner.state).served.clone();
    let mut served = BTreeMap::new();
    let mut unretired = BTreeSet::new();
    for (tool, (contract, id, structured)) in next {
        if current.get(&tool) == Some(&id) {
            served.insert(tool, id);
            continue;
        }
        let runtime = Arc::new(McpTool {
            import: config.name.clone(),
            tool: tool.clone(),
            capability: id,
            structured,
            inner: Arc::downgrade(inner),
        });
        let executor = match Executor::foreign(contract, runtime) {
            Ok(e) => e,
            Err(e) => {
                refused.push(format!("the tool {tool:?}: {e}"));
                continue;
            }
        };
        let spec = ServeSpec {
            executor: Arc::new(executor),
            price: config.price.clone(),
            limits: config.limits.clone(),
            latency_ms: config.latency_ms,
            ttl: None,
            session: None,
        };
        // Served before it runs anything: `served` must name it when a call arrives.
        lock(&inner.state).served.insert(tool.clone(), id);
        match inner.market.serve(spec).await {
            Ok(p) => {
                tracing::info!(import = %config.name, %tool, capability = %p.capability, "imported MCP tool served");
                served.insert(tool, id);
            }
            Err(e) => {
                tracing::warn!(import = %config.name, %tool, error = %e, "cannot serve an imported tool");
                refused.push(format!("the tool {tool:?}: {e}"));
                // `serve` registers before it publishes: take it back, and retire whatever
                // may have gone out.
                match inner.market.unserve(id).await {
                    Ok(_) | Err(MeshError::NotPublished(_)) => {}
                    Err(_) => {
                        unretired.insert(id);
                    }
                }
            }
        }
    }
    let keep: HashSet<Cid> = served.values().copied().collect();
    let mut retire: BTreeSet<Cid> = std::mem::take(&mut lock(&inner.state).unretired);
    retire.extend(current.values().copied());
    retire.retain(|c| !keep.contains(c));
    {
        // No call runs under an id about to be retired.
        let mut state = lock(&inner.state);
        state.served.retain(|_, c| keep.contains(c));
    }
    for old in retire {
        match inner.market.unserve(old).await {
            Ok(_) => {
                tracing::info!(import = %config.name, capability = %old, "changed or removed MCP tool retired")
            }
            Err(MeshError::NotPublished(_)) => {}
            Err(e) => {
                tracing::warn!(import = %config.name, capability = %old, error = %e, "cannot retire; trying again at the next listing");
                unretired.insert(old);
            }
        }
    }
    if first {
        retire_leftovers(inner, &keep).await;
    }
    let mut state = lock(&inner.state);
    state.served = served;
    state.unretired.extend(unretired);
    state.refused = refused;
    state.syncs += 1;
    drop(state);
    inner.synced.notify_waiters();
    Ok(())
}

/// Retires what this node advertises for this import and does not serve: a safety net behind
/// [`retire_imported`].
async fn retire_leftovers(inner: &Inner, keep: &HashSet<Cid>) {
    for (cap, import) in imported_adverts(&inner.mesh).await {
        if import == inner.config.name && !keep.contains(&cap) {
            match inner.mesh.retire(cap).await {
                Ok(_) => {
                    tracing::info!(import = %import, capability = %cap, "retired an imported tool no longer served")
                }
                Err(e) => tracing::warn!(capability = %cap, error = %e, "cannot retire"),
            }
        }
    }
}

/// Retires every imported capability this node advertises (contracts tagged `mcp`). The node
/// calls it at start, before its importers run, so that an imported capability is advertised
/// only while an importer serves it — also when an `[[import]]` was removed or renamed, or its
/// server never comes back. Each importer publishes its tools again once it has listed them.
/// Returns how many were retired.
pub async fn retire_imported(mesh: &Mesh) -> usize {
    let mut retired = 0;
    for (cap, import) in imported_adverts(mesh).await {
        match mesh.retire(cap).await {
            Ok(_) => {
                retired += 1;
                tracing::info!(import = %import, capability = %cap, "retired an imported tool of an earlier run");
            }
            Err(e) => {
                tracing::warn!(capability = %cap, error = %e, "cannot retire an imported tool")
            }
        }
    }
    retired
}

/// The capabilities this node advertises whose contract is an imported tool, with the import's
/// name (the contract's tags start with `mcp`, `<import>`).
async fn imported_adverts(mesh: &Mesh) -> Vec<(Cid, String)> {
    let caps = mesh.published();
    let store = mesh.store().clone();
    let found = tokio::task::spawn_blocking(move || {
        caps.into_iter()
            .filter_map(|cap| match store.contract(&cap) {
                Ok(Some(c)) if c.tags.first().map(String::as_str) == Some(names::MCP_TAG) => {
                    c.tags.get(1).map(|import| (cap, import.clone()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    })
    .await;
    found.unwrap_or_default()
}

/// The client side of the session: hears the server's `tools/list_changed`.
#[derive(Debug, Clone)]
struct Watcher {
    changed: Arc<Notify>,
}

impl ClientHandler for Watcher {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("capmesh", env!("CARGO_PKG_VERSION")),
        )
    }

    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + MaybeSendFuture + '_ {
        self.changed.notify_one();
        std::future::ready(())
    }
}

/// The `mcp` runtime: calls one tool of the imported server over the importer's session.
struct McpTool {
    import: String,
    tool: String,
    /// The capability this runtime serves: a call runs only while it is the one served for
    /// `tool` (never under an id whose definition the importer saw change).
    capability: Cid,
    /// The tool has an `outputSchema`: its output is the `structuredContent`; otherwise the
    /// output is `{"content": [...]}`.
    structured: bool,
    inner: std::sync::Weak<Inner>,
}

impl Foreign for McpTool {
    fn describe(&self) -> String {
        format!("the mcp runtime (server {:?}, tool {:?})", self.import, self.tool)
    }

    fn call(&self, args: Value) -> Pin<Box<dyn Future<Output = Result<Value, ExecError>> + Send>> {
        let (current, peer) = match self.inner.upgrade() {
            Some(inner) => (
                lock(&inner.state).served.get(&self.tool) == Some(&self.capability),
                lock(&inner.peer).clone(),
            ),
            None => (false, None),
        };
        let (tool, import, structured) = (self.tool.clone(), self.import.clone(), self.structured);
        Box::pin(async move {
            if !current {
                return Err(ExecError::Failed(format!(
                    "the tool {tool:?} of the MCP server {import:?} changed or went away: this \
                     capability is retired; find the tool's new capability"
                )));
            }
            let Some(peer) = peer else {
                return Err(ExecError::Io(std::io::Error::other(format!(
                    "the MCP server {import:?} is not connected; retry later"
                ))));
            };
            let Value::Object(arguments) = args else {
                return Err(ExecError::Failed("MCP tool arguments must be a JSON object".into()));
            };
            let params = CallToolRequestParams::new(tool).with_arguments(arguments);
            // Dropping this future (timeout, cancel) tells the server `notifications/cancelled`.
            let response = peer.call_tool_once(params).await.map_err(|e| match e {
                // The server answered, and refused: asking again, or elsewhere, will not help.
                rmcp::ServiceError::McpError(e) => ExecError::Failed(format!(
                    "the MCP server {import:?} refused the call: {} (JSON-RPC error {})",
                    e.message, e.code.0
                )),
                e => {
                    ExecError::Io(std::io::Error::other(format!("the MCP server {import:?}: {e}")))
                }
            })?;
            let result = match response {
                CallToolResponse::Complete(r) => r,
                CallToolResponse::InputRequired(_) => {
                    return Err(ExecError::Failed(
                        "the tool asked for more input, which capmesh does not relay".into(),
                    ));
                }
                _ => {
                    return Err(ExecError::Failed(
                        "the tool answered with a task, which capmesh does not relay".into(),
                    ));
                }
            };
            if result.is_error == Some(true) {
                let mut text = String::new();
                for block in &result.content {
                    if let Some(t) = block.as_text() {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&t.text);
                    }
                }
                if text.len() > MAX_ERROR_TEXT {
                    text = format!("{}…", names::cut(&text, MAX_ERROR_TEXT));
                }
                return Err(ExecError::Failed(format!("the MCP tool reported an error: {text}")));
            }
            let output = if structured {
                result.structured_content.ok_or_else(|| {
                    ExecError::Failed(
                        "the tool has an outputSchema but answered no structuredContent".into(),
                    )
                })?
            } else {
                json!({"content": result.content})
            };
            let size = serde_json::to_vec(&output).map_or(usize::MAX, |v| v.len());
            if size > MAX_OUTPUT_BYTES {
                return Err(ExecError::Failed(format!(
                    "the tool's output is {size} bytes, over the {MAX_OUTPUT_BYTES}-byte cap"
                )));
            }
            Ok(output)
        })
    }
}
