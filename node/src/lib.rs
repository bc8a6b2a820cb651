//! The capmesh node as a library: data directory, configuration, the offline commands (`cap`,
//! `registry`, `inspect`) and the assembly and launch of a running node ([`Node`]). The `capmesh` binary
//! is a thin CLI over this crate; tests drive it too.
//!
//! ```no_run
//! let dir = capmesh::DataDir::new("/tmp/capmesh-example");
//! let created = dir.init()?;
//! println!("{}", created.peer_id);
//! # Ok::<(), anyhow::Error>(())
//! ```

mod api;
pub mod cap;
pub mod config;
mod data_dir;
pub mod inspect;
pub mod launch;
pub mod mcp;
pub mod metrics;
pub mod registry;
pub mod remote;
pub mod telemetry;

pub use config::Config;
pub use data_dir::{DataDir, Initialized};
pub use launch::Node;

/// Unix time in milliseconds (the one clock reading of the node's crates).
pub use capmesh_mesh::now_ms;
