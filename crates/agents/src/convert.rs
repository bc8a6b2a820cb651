//! The market's calls as the API shows them: requests in, outcomes, errors and events out.

use std::time::Duration;

use capmesh_api::{
    ApiError, CallEvent, CallFailure, CallRequest, CallResult, ErrorCode, MAX_STREAM_BYTES,
    Optimize,
};
use capmesh_market::{CallError, CallOutcome, Weights};
use capmesh_wire::{CallId, repr::Bytes};

/// Longest deadline a call through the API may ask for: one day.
pub const MAX_DEADLINE_MS: u64 = 86_400_000;

/// The market's call request for an API request.
pub fn market_request(
    call_id: CallId,
    req: CallRequest,
) -> Result<capmesh_market::CallRequest, ApiError> {
    let mut call = capmesh_market::CallRequest::new(req.capability, req.args).with_call_id(call_id);
    if let Some(optimize) = req.optimize {
        call = call.with_weights(weights(optimize)?);
    }
    if let Some(max) = req.max_price {
        call = call.with_max_price(max);
    }
    if let Some(ms) = req.deadline_ms {
        if ms == 0 || ms > MAX_DEADLINE_MS {
            return Err(ApiError::bad_request(format!(
                "deadline_ms must be 1 to {MAX_DEADLINE_MS} (one day), not {ms}"
            )));
        }
        call = call.with_deadline(Duration::from_millis(ms));
    }
    Ok(call)
}

/// Selection weights: each finite and ≥ 0, not all 0; one left out is 0.
fn weights(o: Optimize) -> Result<Weights, ApiError> {
    let w = Weights {
        price: o.price.unwrap_or(0.0),
        latency: o.latency.unwrap_or(0.0),
        reputation: o.reputation.unwrap_or(0.0),
    };
    let all = [("price", w.price), ("latency", w.latency), ("reputation", w.reputation)];
    for (name, value) in all {
        if !value.is_finite() || value < 0.0 {
            return Err(ApiError::bad_request(format!(
                "optimize.{name} must be a finite number ≥ 0, not {value}"
            )));
        }
    }
    if w.price + w.latency + w.reputation <= 0.0 {
        return Err(ApiError::bad_request(
            "optimize needs at least one weight above 0, e.g. {\"price\": 0.5, \"latency\": 0.5}",
        ));
    }
    Ok(w)
}

pub(crate) fn attempt_json(a: &capmesh_market::Attempt) -> capmesh_api::Attempt {
    capmesh_api::Attempt {
        provider: a.provider,
        code: a.code.to_string(),
        message: a.message.clone(),
        stage: a.stage.to_string(),
        retry_after_ms: a.retry_after_ms,
    }
}

/// A streaming call's chunks as returned: at most [`MAX_STREAM_BYTES`] in all.
#[derive(Debug, Default)]
pub struct Stream {
    chunks: Vec<Bytes>,
    bytes: usize,
    truncated: bool,
}

impl Stream {
    /// Keeps `chunk` while the total stays within [`MAX_STREAM_BYTES`].
    pub fn push(&mut self, chunk: Vec<u8>) {
        if self.truncated || self.bytes.saturating_add(chunk.len()) > MAX_STREAM_BYTES {
            self.truncated = true;
            return;
        }
        self.bytes += chunk.len();
        self.chunks.push(Bytes(chunk));
    }
}

/// The API's result of a call that succeeded, with the chunks it streamed.
pub fn call_result(o: CallOutcome, stream: Stream) -> CallResult {
    CallResult {
        call_id: o.call,
        capability: o.capability,
        provider: o.provider,
        output: o.output,
        chunks: o.chunks,
        stream_root: o.stream_root,
        stream: stream.chunks,
        stream_truncated: stream.truncated,
        receipt_id: o.receipt_id,
        receipt: o.receipt,
        ledger_seq: o.ledger_seq,
        price: o.price,
        warm: o.warm,
        requests: o.requests,
        elapsed_ms: o.elapsed.as_millis() as u64,
        attempts: o.attempts.iter().map(attempt_json).collect(),
        trace: Some(capmesh_api::TraceId(o.trace.0)),
    }
}

/// A failed call as the API answers it: the code fixes the HTTP status (specs/api.md §5), the
/// call's own code and every attempt ride along.
pub fn call_error(call_id: CallId, e: &CallError) -> ApiError {
    let code = match e {
        CallError::Stopped => ErrorCode::Unavailable,
        CallError::DuplicateCall => ErrorCode::Conflict,
        CallError::Ledger(_) | CallError::Sign(_) | CallError::Entropy(_) => ErrorCode::Internal,
        other => ErrorCode::of_call(&other.code()),
    };
    let message = match e {
        CallError::DuplicateCall => {
            format!("{e}: wait for it to end, or send another call_id")
        }
        _ => e.to_string(),
    };
    let failure = CallFailure {
        call_id,
        code: e.code().to_string(),
        attempts: e.attempts().iter().map(attempt_json).collect(),
        retry_after_ms: e.retry_after_ms(),
    };
    ApiError::call(code, message, failure)
}

/// A market event as the API's call event.
pub(crate) fn event_json(e: capmesh_market::CallEvent) -> Option<CallEvent> {
    use capmesh_market::CallEvent as M;
    Some(match e {
        M::Providers { providers } => CallEvent::Providers { providers },
        M::Offer { provider, price, latency_ms } => {
            CallEvent::Offer { provider, price, latency_ms }
        }
        M::Chosen { provider, warm } => CallEvent::Chosen { provider, warm },
        M::Accepted { provider } => CallEvent::Accepted { provider },
        M::Failed(a) => CallEvent::AttemptFailed { attempt: attempt_json(&a) },
        _ => return None,
    })
}
