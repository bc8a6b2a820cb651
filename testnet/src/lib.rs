//! Local testnets of `capmesh` node processes on 127.0.0.1, for researchers (the
//! `capmesh-testnet` binary is a thin CLI over this crate):
//!
//! - [`procs`]: `up` starts N `capmesh run` processes (seeded keys, bootstrap wiring, the first
//!   share of them serving the builtins), `down` stops them and checks none is left, and what
//!   `/proc` says each uses;
//! - [`manifest`]: `<dir>/testnet.json`, which processes run which nodes;
//! - [`scenario`]: the `SCENARIO.toml` format (discovery load, call load, churn);
//! - [`run`]: drives a scenario through the nodes' local APIs and reports, second by second;
//! - [`plots`]: the report's PNG plots (latency distribution; success and latency over time).
//!
//! **Invariant:** nothing reaches beyond the loopback: the nodes listen on 127.0.0.1 and dial
//! only each other; the driver talks to their APIs on 127.0.0.1.

pub mod manifest;
pub mod plots;
pub mod procs;
pub mod run;
pub mod scenario;
