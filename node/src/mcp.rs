//! The node's side of the MCP bridge: `[[import]]` tables turned into running importers, and
//! `capmesh mcp` (the MCP server over the running node's API).

use std::time::Duration;

use anyhow::Context;
use capmesh_mcp::{ImportConfig, Importer, MeshTools, Selection, Source};
use capmesh_types::Cid;
use capmesh_wire::{CallLimits, Price};
use tokio_util::sync::CancellationToken;

use crate::{
    DataDir,
    config::{ImportEntry, McpSection},
};

/// The importer settings of one `[[import]]` table (paths relative to the data directory).
pub fn import_config(dir: &DataDir, entry: &ImportEntry) -> anyhow::Result<ImportConfig> {
    let source = match &entry.url {
        Some(url) => {
            let bearer = match &entry.token_file {
                Some(file) => {
                    let path = dir.root().join(file);
                    let token = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(token.trim().to_owned())
                }
                None => None,
            };
            Source::Url { url: url.clone(), bearer }
        }
        None => Source::Command {
            argv: entry.command.clone(),
            env: entry.env.clone(),
            cwd: entry.cwd.as_ref().map(|c| dir.root().join(c)),
        },
    };
    Ok(ImportConfig {
        name: entry.name.clone(),
        source,
        tags: entry.tags.clone(),
        tools: entry.tools.clone(),
        price: Price { amount: entry.price_amount, unit: entry.price_unit.clone() },
        limits: CallLimits {
            timeout_ms: entry.timeout_ms,
            max_input_bytes: entry.max_input_bytes,
            concurrency: entry.concurrency,
        },
        latency_ms: entry.latency_ms,
        refresh: Duration::from_secs(entry.refresh_secs),
    })
}

/// Retires the imported capabilities an earlier run advertised, then starts one importer per
/// `[[import]]` table (each publishes its tools once it has listed them); their tasks end with
/// `cancel`.
pub(crate) async fn start_imports(
    dir: &DataDir,
    entries: &[ImportEntry],
    market: &capmesh_market::Market,
    mesh: &capmesh_mesh::Mesh,
    cancel: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Vec<Importer>> {
    let retired = capmesh_mcp::retire_imported(mesh).await;
    if retired > 0 {
        tracing::info!(
            retired,
            "imported capabilities of the previous run retired until re-listed"
        );
    }
    let mut importers = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let config = import_config(dir, entry).with_context(|| format!("import[{i}]"))?;
        let (importer, task) =
            Importer::spawn(config, market.clone(), mesh.clone(), cancel.child_token())
                .with_context(|| format!("import[{i}]"))?;
        tasks.spawn(async move {
            let _ = task.await;
        });
        importers.push(importer);
    }
    Ok(importers)
}

/// The [`Selection`] of `[mcp]`, with `overrides` (from flags) replacing what they name.
pub fn selection(section: &McpSection, overrides: SelectionFlags) -> anyhow::Result<Selection> {
    let pinned = if overrides.pinned.is_empty() {
        section
            .pinned
            .iter()
            .map(|p| p.parse::<Cid>().map_err(|e| anyhow::anyhow!("mcp.pinned: {p:?}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        overrides.pinned
    };
    let tags = if overrides.tags.is_empty() { section.tags.clone() } else { overrides.tags };
    let search = overrides.search.or_else(|| Some(section.search.clone()));
    let deadline = overrides.deadline_ms.unwrap_or(section.deadline_ms);
    Ok(Selection {
        pinned,
        tags,
        search: search.filter(|s| !s.trim().is_empty()),
        max_tools: overrides.max_tools.unwrap_or(section.max_tools).max(1),
        deadline_ms: (deadline > 0).then_some(deadline),
        max_price: None,
        // No `[mcp]` key for it yet: the default.
        refresh: capmesh_mcp::DEFAULT_REFRESH,
    })
}

/// Flags of `capmesh mcp` that override `[mcp]`.
#[derive(Debug, Default, Clone)]
pub struct SelectionFlags {
    pub pinned: Vec<Cid>,
    pub tags: Vec<String>,
    pub search: Option<String>,
    pub max_tools: Option<usize>,
    pub deadline_ms: Option<u64>,
}

/// `capmesh mcp`: serves the running node's capabilities to MCP clients over stdio, or over
/// streamable HTTP at `http` (loopback), until the client goes away or ctrl-c / SIGTERM.
pub async fn serve(
    dir: &DataDir,
    selection: Selection,
    http: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let api = capmesh_api::Client::from_data_dir(dir.root()).map_err(crate::remote::explain)?;
    // Fail now, not at the client's first request, when no node answers.
    api.status().await.map_err(crate::remote::explain)?;
    // Bound to the data directory: a node restarted meanwhile is found again.
    let tools = MeshTools::for_data_dir(dir.root(), selection).map_err(crate::remote::explain)?;
    let cancel = CancellationToken::new();
    let served = async {
        match http {
            None => {
                capmesh_mcp::serve_stdio(tools, cancel.clone()).await.map_err(anyhow::Error::from)
            }
            Some(addr) => {
                let token = capmesh_mcp::token(dir.root()).with_context(|| {
                    format!(
                        "cannot read or write {}",
                        dir.root().join(capmesh_mcp::TOKEN_FILE).display()
                    )
                })?;
                let listener = capmesh_mcp::bind(addr).await?;
                let local = listener.local_addr()?;
                announce(&format!(
                    "capmesh mcp: MCP over streamable HTTP at http://{local}{} (bearer token in {})",
                    capmesh_mcp::MCP_PATH,
                    dir.root().join(capmesh_mcp::TOKEN_FILE).display()
                ));
                capmesh_mcp::serve_http(listener, tools, token, cancel.clone())
                    .await
                    .map_err(anyhow::Error::from)
            }
        }
    };
    tokio::pin!(served);
    // A signal cancels the session, which then ends (stdio: even with stdin left open).
    tokio::select! {
        result = &mut served => result,
        () = shutdown_signal() => {
            tracing::debug!("signal: stopping the MCP server");
            cancel.cancel();
            served.await
        }
    }
}

/// The one line `capmesh mcp --http` prints on stdout (stdio mode prints nothing there: stdout
/// is the protocol).
#[allow(clippy::print_stdout)]
fn announce(line: &str) {
    println!("{line}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
