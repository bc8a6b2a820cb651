//! Integration tests of capmesh-store.
#![allow(unreachable_pub, clippy::unwrap_used)]

mod crash;
mod fixtures;
mod model;
mod replica;
