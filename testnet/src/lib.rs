//! Local testnets of `capmesh` node processes on 127.0.0.1, for researchers (the
//! `capmesh-testnet` binary is a thin CLI over this crate):
//!
//! - [`procs`]: `up` starts N `capmesh run` processes (seeded keys, bootstrap wiring, the first
//!   share of them serving the builtins), `down` stops them and checks none is left, and what
//!   `/proc` says each uses;
//! - [`manifest`]: `<dir>/testnet.json`, which processes run which nodes;
//! - [`scenario`]: the `SCENARIO.toml` format (discovery load, call load, churn, publish,
//!   partition);
//! - [`run`]: drives a scenario through the nodes' local APIs and reports, second by second;
//! - [`replicas`]: publish-to-visible times, and partitions (the nodes' block lists) with the
//!   replica convergence time after the heal;
//! - [`baseline`]: bare libp2p request-response, measured in each run beside its figures;
//! - [`plots`]: the report's PNG plots (latency distribution; success and latency over time);
//! - [`lab`]: the NAT lab (needs root): hosts in network namespaces on 198.18.0.0/15, routers
//!   doing NAT with nftables, one `capmesh run` per host;
//! - [`sim`]: the in-process Kademlia simulator (up to 1 000 nodes in one process, the node's
//!   Kademlia on libp2p's memory transport): requests, hops and latency per provider lookup.
//!
//! **Invariant:** nothing reaches beyond the loopback: the nodes listen on 127.0.0.1 and dial
//! only each other; the driver talks to their APIs on 127.0.0.1. The lab's nodes run in network
//! namespaces it made, on 198.18.0.0/15, with no route out of the lab. The simulator's nodes never
//! leave the process (memory transport); the baseline's two services listen on 127.0.0.1.

pub mod baseline;
pub mod lab;
pub mod manifest;
pub mod plots;
pub mod procs;
pub mod replicas;
mod rng;
pub mod run;
pub mod scenario;
pub mod sim;
