//! [`Importer`]: the tools of an MCP server (a stdio command or a streamable HTTP URL) served as
//! mesh capabilities, each with an `mcp` runtime that calls the tool.
//!
//! The importer keeps one MCP client session to the server. After connecting, when the server
//! says its tool list changed, and every `refresh` in case it does not say so, it lists the
//! tools and reconciles: a tool whose contract (and so id) is new is served (published); a
//! capability whose tool is gone or changed is unserved (retired). A changed definition is never
//! served under its old id. A lost session is reconnected with backoff; calls meanwhile fail as
//! retryable.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_exec::{ExecError, Executor, Foreign};
use capmesh_market::{Market, ServeSpec};
use capmesh_mesh::Mesh;
use capmesh_types::Cid;
use capmesh_wire::{CallLimits, Price};
use rmcp::{
    ClientHandler, Peer, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, Implementation,
    },
    service::{MaybeSendFuture, NotificationContext, RunningService},
    transport::{StreamableHttpClientTransport, TokioChildProcess},
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::names::{self, ImportError};

/// Longest wait for the MCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection backoff: first and longest wait.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often a connected session is checked for having closed.
const CLOSED_POLL: Duration = Duration::from_millis(500);
/// Longest text kept from a tool's error result.
const MAX_ERROR_TEXT: usize = 2000;

/// Where the MCP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A program speaking MCP on its stdin/stdout, started with a cleared environment (only
    /// `env`), in `cwd` if set. It is stopped when the importer stops.
    Command { argv: Vec<String>, env: BTreeMap<String, String>, cwd: Option<PathBuf> },
    /// A streamable HTTP endpoint, with an optional bearer token.
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
    /// The session's peer while connected.
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
    /// Reconciliations done.
    syncs: u64,
    /// Tools that could not be imported, with why.
    refused: Vec<String>,
}

impl Importer {
    /// Checks `config` and starts importing in a task that ends with `cancel` (and stops the
    /// server's process, if it started one). Capabilities stay served and published when it
    /// stops: a node that stops does not retire them (their adverts expire).
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

    /// Whether a session to the server is up.
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
            Ok(Ok(service)) => {
                tracing::info!(import = %name, "connected to the MCP server");
                backoff = BACKOFF_MIN;
                *lock(&inner.peer) = Some(service.peer().clone());
                serve_session(&inner, &service, &cancel, &mut first).await;
                *lock(&inner.peer) = None;
                // Closes the session; a child process is killed with its transport.
                let _ = service.cancel().await;
                if cancel.is_cancelled() {
                    return;
                }
                tracing::warn!(import = %name, "the MCP session ended; reconnecting");
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
/// `cancel`.
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
        if let Err(e) = reconcile(inner, service.peer(), *first).await {
            tracing::warn!(import = %inner.config.name, error = %e, "cannot list the MCP server's tools");
        } else {
            *first = false;
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

async fn connect(inner: &Inner) -> Result<RunningService<RoleClient, Watcher>, String> {
    let watcher = Watcher { changed: inner.changed.clone() };
    match &inner.config.source {
        Source::Command { argv, env, cwd } => {
            let Some(program) = argv.first() else {
                return Err("the command is empty".into());
            };
            let mut command = tokio::process::Command::new(program);
            command.args(&argv[1..]).env_clear().envs(env).kill_on_drop(true);
            if let Some(cwd) = cwd {
                command.current_dir(cwd);
            }
            let transport = TokioChildProcess::new(command)
                .map_err(|e| format!("cannot start {program:?}: {e}"))?;
            watcher.serve(transport).await.map_err(|e| e.to_string())
        }
        Source::Url { url, bearer } => {
            let mut config =
                rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                    url.as_str(),
                );
            if let Some(token) = bearer {
                config = config.auth_header(token.clone());
            }
            let transport = StreamableHttpClientTransport::from_config(config);
            watcher.serve(transport).await.map_err(|e| e.to_string())
        }
    }
}

/// Lists the tools and serves / unserves what changed. On the first listing of this run, also
/// retires adverts of this import that this node published in an earlier run and that no tool
/// matches any more.
async fn reconcile(inner: &Arc<Inner>, peer: &Peer<RoleClient>, first: bool) -> Result<(), String> {
    let config = &inner.config;
    let tools = peer.list_all_tools().await.map_err(|e| e.to_string())?;
    let mut next = BTreeMap::new();
    let mut refused = Vec::new();
    for tool in tools {
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
    for (tool, (contract, id, structured)) in next {
        if current.get(&tool) == Some(&id) {
            served.insert(tool, id);
            continue;
        }
        let runtime = Arc::new(McpTool {
            import: config.name.clone(),
            tool: tool.clone(),
            structured,
            peer: Arc::downgrade(inner),
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
        };
        match inner.market.serve(spec).await {
            Ok(p) => {
                tracing::info!(import = %config.name, %tool, capability = %p.capability, "imported MCP tool served");
                served.insert(tool, id);
            }
            Err(e) => {
                tracing::warn!(import = %config.name, %tool, error = %e, "cannot serve an imported tool");
                refused.push(format!("the tool {tool:?}: {e}"));
            }
        }
    }
    let keep: HashSet<Cid> = served.values().copied().collect();
    for (tool, old) in &current {
        if keep.contains(old) {
            continue;
        }
        match inner.market.unserve(*old).await {
            Ok(_) => {
                tracing::info!(import = %config.name, %tool, capability = %old, "changed or removed MCP tool retired")
            }
            Err(e) => {
                tracing::warn!(import = %config.name, %tool, capability = %old, error = %e, "cannot retire")
            }
        }
    }
    if first {
        retire_leftovers(inner, &keep).await;
    }
    let mut state = lock(&inner.state);
    state.served = served;
    state.refused = refused;
    state.syncs += 1;
    drop(state);
    inner.synced.notify_waiters();
    Ok(())
}

/// Retires what this node published for this import in an earlier run and no longer serves.
async fn retire_leftovers(inner: &Inner, keep: &HashSet<Cid>) {
    let prefix = format!("{}.", inner.config.name);
    for cap in inner.mesh.published() {
        if keep.contains(&cap) {
            continue;
        }
        let store = inner.mesh.store().clone();
        let contract = tokio::task::spawn_blocking(move || store.contract(&cap)).await;
        let ours = matches!(&contract, Ok(Ok(Some(c)))
            if c.name.starts_with(&prefix) && c.tags.iter().any(|t| t == names::MCP_TAG)
                && c.tags.contains(&inner.config.name));
        if ours {
            match inner.mesh.retire(cap).await {
                Ok(_) => {
                    tracing::info!(import = %inner.config.name, capability = %cap, "retired a tool of an earlier run")
                }
                Err(e) => tracing::warn!(capability = %cap, error = %e, "cannot retire"),
            }
        }
    }
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
    /// The tool has an `outputSchema`: its output is the `structuredContent`; otherwise the
    /// output is `{"content": [...]}`.
    structured: bool,
    peer: std::sync::Weak<Inner>,
}

impl Foreign for McpTool {
    fn describe(&self) -> String {
        format!("the mcp runtime (server {:?}, tool {:?})", self.import, self.tool)
    }

    fn call(&self, args: Value) -> Pin<Box<dyn Future<Output = Result<Value, ExecError>> + Send>> {
        let peer = self.peer.upgrade().and_then(|inner| lock(&inner.peer).clone());
        let (tool, import, structured) = (self.tool.clone(), self.import.clone(), self.structured);
        Box::pin(async move {
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
            let response = peer.call_tool_once(params).await.map_err(|e| {
                ExecError::Io(std::io::Error::other(format!("the MCP server {import:?}: {e}")))
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
                    let mut end = MAX_ERROR_TEXT;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    text.push('…');
                }
                return Err(ExecError::Failed(format!("the MCP tool reported an error: {text}")));
            }
            if structured {
                result.structured_content.ok_or_else(|| {
                    ExecError::Failed(
                        "the tool has an outputSchema but answered no structuredContent".into(),
                    )
                })
            } else {
                Ok(json!({"content": result.content}))
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
