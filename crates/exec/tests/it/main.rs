//! Integration tests of capmesh-exec: every builtin, real programs under the command runtime
//! (process groups checked through /proc), and the http runtime against a local axum server on
//! 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod util;

mod builtins;
mod command;
mod config;
mod foreign;
mod http;
