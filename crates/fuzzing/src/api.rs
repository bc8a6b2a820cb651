//! API request bodies (`capmesh-api`), through the extractors axum runs in the handlers.

use axum::{extract::Query, http::Uri};
use capmesh_api::{
    AgentFrame, AttestRequest, AttestationsRequest, BlockRequest, CallRequest, LedgerRequest,
    PublishRequest, QueryRequest, SessionRequest,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::split;

/// The first byte picks the request type; the rest is its JSON body (`POST /v1/block`,
/// `/v1/publish`, `/v1/query`, `/v1/call` and `/v1/calls`, `/v1/sessions`, `/v1/attest`), a
/// runtime socket's text frame ([`AgentFrame`]), or a query string (`GET /v1/ledger`,
/// `/v1/attestations`). A body that deserializes serializes to JSON that deserializes to the
/// same value; nothing panics.
pub fn api_body(data: &[u8]) {
    let Some((pick, rest)) = split(data, 9) else { return };
    match pick {
        0 => body::<BlockRequest>(rest),
        1 => body::<PublishRequest>(rest),
        2 => body::<QueryRequest>(rest),
        3 => body::<CallRequest>(rest),
        4 => body::<SessionRequest>(rest),
        5 => body::<AttestRequest>(rest),
        6 => frame(rest),
        7 => query::<LedgerRequest>(rest),
        _ => query::<AttestationsRequest>(rest),
    }
}

fn body<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(axum::Json(value)) = axum::Json::<T>::from_bytes(data) else { return };
    let json = serde_json::to_vec(&value).expect("request types serialize");
    let axum::Json(back) = axum::Json::<T>::from_bytes(&json).expect("and deserialize back");
    assert_eq!(back, value);
}

/// As the runtime socket reads a text frame: UTF-8, then `serde_json::from_str`.
fn frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(frame) = serde_json::from_str::<AgentFrame>(text) else { return };
    let json = serde_json::to_string(&frame).expect("frames serialize");
    assert_eq!(serde_json::from_str::<AgentFrame>(&json).expect("and deserialize back"), frame);
}

fn query<T: DeserializeOwned>(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(uri) = format!("/v1/x?{text}").parse::<Uri>() else { return };
    let _ = Query::<T>::try_from_uri(&uri);
}
