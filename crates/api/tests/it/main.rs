//! Integration tests of capmesh-api: the server and the client together over 127.0.0.1, with a
//! fake backend.
#![allow(clippy::unwrap_used)]

mod fake;
mod http;

mod agents;
mod calls;
mod client;
mod contracts;
mod errors;
mod find;
mod openapi;
mod receipts;
