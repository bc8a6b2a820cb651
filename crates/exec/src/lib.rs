//! Runtimes that run one capability on the provider (DESIGN §5, "Runtimes on the provider"):
//! arguments in, one validated output (or a stream of chunks) out.
//!
//! - [`Runtime`] says how a served capability runs, as written in a node's configuration
//!   (tagged by `type`): a [`Builtin`] (`echo`, `blake3`, `sleep`, `fail`, `stream`, for tests
//!   and testnets), a [`CommandSpec`] (a program with JSON on stdin and stdout, no shell, a
//!   cleared environment, a timeout and an output cap, killed with its whole process group), or
//!   an [`HttpSpec`] (arguments POSTed as JSON to a plain `http://` URL; TLS is not compiled in).
//!   A runtime this crate does not know (the MCP bridge's) plugs in as a [`Foreign`].
//! - An [`Executor`] is one served capability: its [`Contract`](capmesh_contract::Contract)
//!   compiled and its runtime checked against it. [`Executor::run`] validates the arguments,
//!   runs the runtime under a [`Run`] (a time limit, a cancellation token, a bounded chunk
//!   sender for streaming contracts) and validates the output.
//! - Every failure is an [`ExecError`] with a stable [`code`](ExecError::code) and a
//!   [`retryable`](ExecError::retryable) flag.
//!
//! ```
//! use std::time::Duration;
//!
//! use capmesh_exec::{Builtin, ExecError, Executor, Output, Run, Runtime};
//! use serde_json::json;
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ExecError> {
//! let runtime = Runtime::Builtin { name: Builtin::Blake3 };
//! let blake3 = Executor::new(Builtin::Blake3.contract(), runtime)?;
//! let run = || Run::new(Duration::from_secs(5), CancellationToken::new());
//!
//! let output = blake3.run(json!({"text": "abc"}), run()).await?;
//! let digest = blake3::hash(b"abc").to_hex();
//! assert_eq!(output, Output::Value(json!({"digest": digest.as_str()})));
//!
//! // Arguments are validated before anything runs.
//! let refused = blake3.run(json!({"txt": "abc"}), run()).await.unwrap_err();
//! assert_eq!(refused.code(), capmesh_wire::Code::InvalidArgs);
//! assert_eq!(blake3.runs(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! **Invariant:** no network beyond an http runtime's own URL, no replica, no market: this
//! crate runs one capability and knows nothing of who asked or what it costs. Nothing a run
//! starts outlives it: a command's process group is killed when the program exits, times out,
//! is cancelled or its future is dropped.

mod builtin;
mod command;
mod error;
mod executor;
mod http;
mod runtime;

pub use builtin::{Builtin, MAX_SLEEP_MS, MAX_STREAM_CHUNKS};
pub use error::ExecError;
pub use executor::{
    ChunkSink, Executor, Foreign, ForeignOutput, ForeignRun, MAX_CHUNK_BYTES, Output, Run,
    ValidArgs,
};
pub use runtime::{CommandSpec, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_MS, HttpSpec, Runtime};
