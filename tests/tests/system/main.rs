//! System tests: the capmesh binary as a user runs it.

#![allow(clippy::unwrap_used)]

mod cap;
mod cli;
mod mesh;
mod processes;
mod registry;
