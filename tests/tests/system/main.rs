//! System tests: the capmesh binary as a user runs it.

#![allow(clippy::unwrap_used)]

mod agents;
mod call_cli;
mod calls;
mod cap;
mod cli;
mod common;
mod failover;
mod joining;
mod mcp;
mod mesh;
mod metrics;
mod otlp;
mod overload;
mod partition;
mod processes;
mod reachability;
mod receipts;
mod registry;
