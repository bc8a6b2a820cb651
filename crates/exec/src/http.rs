//! The http runtime: the arguments POSTed as JSON to a plain-HTTP endpoint.

use std::io;

use serde_json::Value;

use crate::{
    ExecError,
    builtin::Produced,
    executor::{Collector, chain, prefix},
};

/// How much of the body of a non-2xx answer goes into the failure's message.
const ERROR_BODY_PREFIX: usize = 512;

/// POSTs `args` to `url` and reads the answer's body into `out`, as it arrives. Cancel-safe:
/// dropping the future drops the connection.
pub(crate) async fn run(
    client: &reqwest::Client,
    url: &reqwest::Url,
    args: &Value,
    mut out: Collector,
) -> Result<Produced, ExecError> {
    let mut response =
        client.post(url.clone()).json(args).send().await.map_err(|e| transport(url, &e))?;
    let status = response.status();
    if !status.is_success() {
        let body = body_prefix(&mut response, ERROR_BODY_PREFIX).await;
        return Err(ExecError::Failed(format!("HTTP {}: {body}", status.as_u16())));
    }
    if response.content_length().is_some_and(|len| out.would_overflow(len)) {
        return Err(out.over());
    }
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(url, &e))? {
        out.push(&chunk).await?;
    }
    out.finish()
}

/// A request that could not be made or whose answer broke off: the service is unreachable or
/// misbehaving, not the capability failing.
fn transport(url: &reqwest::Url, e: &reqwest::Error) -> ExecError {
    ExecError::Io(io::Error::other(format!("HTTP request to {url} failed: {}", chain(e))))
}

/// The start of the body, at most `max` bytes of it read, as text.
async fn body_prefix(response: &mut reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() <= max {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    prefix(&body, max)
}
