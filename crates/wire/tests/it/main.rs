#![allow(unreachable_pub, clippy::unwrap_used)]
//! Integration tests of capmesh-wire against specs/: vectors, schemas, examples, properties.

mod check;
mod fixtures;
mod props;
mod schemas;
mod vectors;
