//! The MCP bridge, both ways (DESIGN §6 "agents"; issue 7):
//!
//! - **Mesh → MCP** ([`MeshTools`]): an MCP server backed by a running node through its local
//!   API. It lists the capabilities a [`Selection`] chooses (pinned ids, tags, a search) as MCP
//!   tools — name from the contract name and a short id, `inputSchema` / `outputSchema` from the
//!   contract, the capability id in the description — plus [`FIND_TOOL`]. A `tools/call` is a
//!   mesh call (negotiation, signed receipts) whose result carries the receipt id in `_meta`,
//!   with `notifications/progress` while it runs when the client asked; MCP cancellation
//!   cancels the mesh call. Clients are told when the selected tools change
//!   (`notifications/tools/list_changed`, [`MeshTools::watch`]). Served over stdio
//!   ([`serve_stdio`], which a signal stops even while the client keeps stdin open) or
//!   streamable HTTP on loopback with a bearer token and `Origin` validation ([`serve_http`]);
//!   `capmesh mcp` runs one of them.
//! - **MCP → mesh** ([`Importer`]): a node serves the tools of an MCP server (a stdio command or
//!   a URL) as capabilities, each tool a contract ([`names::contract_of`]) with an `mcp` runtime
//!   ([`capmesh_exec::Foreign`]). A changed tool definition is a new contract, so a new id: it is
//!   published and the old id retired, never changed in place.
//!
//! Both use the official Rust SDK (`rmcp`); nothing here writes JSON-RPC by hand.
//!
//! **Invariant:** no swarm and no replica writes: the server side sees the node only through
//! the API client; the import side serves and unserves through the market, and reads through
//! the mesh only what this node published (to retire imports of an earlier run).

mod import;
pub mod names;
mod serve;
mod server;

pub use import::{ImportConfig, Importer, Source, retire_imported};
pub use names::ImportError;
pub use serve::{MCP_PATH, ServeError, TOKEN_FILE, bind, serve_http, serve_stdio, token};
pub use server::{
    DEFAULT_REFRESH, FIND_TOOL, META_CALL, META_CAPABILITY, META_ERROR, META_PROVIDER,
    META_RECEIPT, MeshTools, Selection, find_tool,
};

/// A poisoned lock is still usable here: every critical section leaves its state whole.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
