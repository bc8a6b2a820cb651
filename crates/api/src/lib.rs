//! The local API of a capmesh node: HTTP/1.1 and JSON on 127.0.0.1, behind a bearer token,
//! specified for other implementations and agent authors in `specs/api.md`. This crate holds
//! the server, its typed client and the files through which a running node is found; it knows
//! nothing of libp2p or the replica: the node implements [`Backend`] and the server calls it.
//!
//! - [`serve`] answers the routes under `/v1` for a [`Backend`], checking a [`Token`] first;
//!   [`bind`] makes its loopback listener.
//! - [`write_files`] / [`remove_files`]: `api.addr` and `api.token` (mode 0600) in the data
//!   directory, written by the node once it listens and removed when it stops.
//! - [`Client`]: one method per endpoint; [`Client::from_data_dir`] reads the two files.
//! - [`agents`]: sessions (each with a token scoped to it, the [`Principal`] of what is done
//!   under it), the frames of a runtime attached over a WebSocket ([`RuntimeLink`] is the
//!   backend's side), asynchronous calls and their Server-Sent Events.
//! - [`openapi`]: the API's OpenAPI 3.1 document, generated from these types, served at
//!   `GET /v1/openapi.json` (no token needed) and checked in as `specs/openapi.json`.
//! - [`types`]: the request and response bodies; [`ApiError`] (with an [`ErrorCode`] that fixes
//!   the HTTP status) for what the node refuses, [`ClientError`] for everything a caller meets.
//!
//! ```no_run
//! use std::sync::Arc;
//! use capmesh_api::{Client, Backend, Token, bind, serve, write_files};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn node(backend: Arc<impl Backend>, data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! // In the node:
//! let listener = bind("127.0.0.1:0".parse()?).await?;
//! let token = Token::generate()?;
//! write_files(data_dir, listener.local_addr()?, &token)?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn(serve(listener, backend, token, shutdown.clone()));
//!
//! // In the CLI, or an agent:
//! let status = Client::from_data_dir(data_dir)?.status().await?;
//! println!("{} has {} peers", status.peer_id, status.connected_peers);
//! # Ok(()) }
//! ```

pub mod agents;
mod client;
mod error;
mod files;
mod ndjson;
pub mod openapi;
mod runtime;
mod server;
pub mod types;

pub use agents::*;
pub use client::{Client, DEFAULT_TIMEOUT};
pub use error::{ApiError, ClientError, ErrorCode};
pub use files::{ADDR_FILE, TOKEN_FILE, remove_files, write_files};
pub use runtime::{FRAME_BURST, FRAME_MAX, FRAMES_PER_SEC, LINK_QUEUE, RuntimeLink};
pub use server::{Backend, MAX_BODY_BYTES, Principal, Token, bind, serve};
pub use types::*;
