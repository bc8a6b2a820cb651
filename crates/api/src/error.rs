//! Errors: [`ApiError`], what the node answers (and the backend returns), and [`ClientError`],
//! everything that can go wrong for a caller of [`Client`](crate::Client).

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use capmesh_wire::Code;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::types::CallFailure;

/// The class of an API error; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 401: no `Authorization: Bearer` header, or the wrong token.
    Unauthorized,
    /// 400: the request is malformed (path, query string or body).
    BadRequest,
    /// 404: no such endpoint, or no such object.
    NotFound,
    /// 409: the request contradicts the node's state.
    Conflict,
    /// 503: the node cannot do it now (starting, shutting down, no peers); retry later.
    Unavailable,
    /// 504: the node gave up waiting for the network.
    Timeout,
    /// 500: a bug or a local failure (disk); see the node's log.
    Internal,
    /// 403: a policy refused the call (this node's or the providers'), or no provider's price
    /// was acceptable.
    Denied,
    /// 429: too many calls: a provider's rate or concurrency limit, or this node's; retry after
    /// `Retry-After`.
    RateLimited,
    /// 499: the call was cancelled (`POST /v1/calls/{call_id}/cancel`, or the node stopping).
    Cancelled,
    /// 502: providers were asked, but none returned a usable result (they failed, could not be
    /// reached, or sent invalid output or receipts).
    CallFailed,
}

impl ErrorCode {
    /// The HTTP status of this code.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::BadRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
            ErrorCode::Denied => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::Cancelled => 499,
            ErrorCode::CallFailed => 502,
        }
    }

    /// The code of an HTTP status, for error bodies that are not ours (a proxy, an older node).
    pub const fn from_http_status(status: u16) -> Self {
        match status {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Denied,
            404 | 405 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            429 => ErrorCode::RateLimited,
            499 => ErrorCode::Cancelled,
            502 => ErrorCode::CallFailed,
            503 => ErrorCode::Unavailable,
            504 | 408 => ErrorCode::Timeout,
            400..=498 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        }
    }

    /// The code of a failed call (`POST /v1/call`) whose protocol code (protocol.md §11, as in
    /// [`CallFailure::code`]) is `call_code`: `InvalidArgs` → `BadRequest`, `NotFound` →
    /// `NotFound`, `PolicyDenied` and `PriceTooHigh` → `Denied`, `RateLimited` and `Busy` →
    /// `RateLimited`, `Timeout` → `Timeout`, `Cancelled` → `Cancelled`, and any other code
    /// (`Failed`, `Unreachable`, `OutputInvalid`, `BadReceipt`, `Exhausted`, …) → `CallFailed`.
    /// A node maps failures of its own (its ledger, shutting down) to `Internal` or
    /// `Unavailable` instead.
    pub fn of_call(call_code: &Code) -> Self {
        match call_code {
            Code::InvalidArgs => ErrorCode::BadRequest,
            Code::NotFound => ErrorCode::NotFound,
            Code::PolicyDenied | Code::PriceTooHigh => ErrorCode::Denied,
            Code::RateLimited | Code::Busy => ErrorCode::RateLimited,
            Code::Timeout => ErrorCode::Timeout,
            Code::Cancelled => ErrorCode::Cancelled,
            _ => ErrorCode::CallFailed,
        }
    }

    /// The name as it appears in error bodies (`"BadRequest"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Internal => "Internal",
            ErrorCode::Denied => "Denied",
            ErrorCode::RateLimited => "RateLimited",
            ErrorCode::Cancelled => "Cancelled",
            ErrorCode::CallFailed => "CallFailed",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error the node answers with: the body is `{"error": {"code": …, "message": …}}` and the
/// HTTP status is [`ErrorCode::http_status`]. The message is for people and says what to do.
/// Errors of `POST /v1/call` also carry `call`: why the call failed, provider by provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Only on errors of `POST /v1/call` (absent from the JSON otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<Box<CallFailure>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), call: None }
    }
    /// The error of a failed call.
    pub fn call(code: ErrorCode, message: impl Into<String>, failure: CallFailure) -> Self {
        Self { code, message: message.into(), call: Some(Box::new(failure)) }
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ApiError,
}

/// Why a [`Client`](crate::Client) call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The data directory has no `api.addr`: no node runs there (or it has not finished starting).
    #[error(
        "no capmesh node is running for {} (no api.addr); start one with `capmesh run`",
        .data_dir.display()
    )]
    NotRunning { data_dir: PathBuf },
    /// Nothing accepts connections at the address (a node that stopped without cleaning up).
    #[error("the node at {addr} is not answering; is `capmesh run` still running?")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: reqwest::Error,
    },
    /// The node did not answer in time.
    #[error(
        "the node did not answer within {after:?}; it may be overloaded: retry, or raise the \
         client's timeout"
    )]
    TimedOut { after: Duration },
    /// The node refused the request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The node's answer is not what this client understands.
    #[error(
        "cannot read the node's answer ({0}); are the node and this client the same capmesh \
         version?"
    )]
    Decode(String),
    /// The find stream ended before its `done` event.
    #[error("the node closed the find stream before its final `done` event; did it shut down?")]
    Incomplete,
    /// `api.addr` or `api.token` could not be read. (The message carries the cause, so it is
    /// not a `source` too: a chain printed whole would say it twice.)
    #[error("cannot read {}: {error}", .path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// Any other HTTP failure (its cause in the message, as for `Io`).
    #[error("talking to the node failed: {0}")]
    Http(reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 11] = [
        ErrorCode::Unauthorized,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::Denied,
        ErrorCode::RateLimited,
        ErrorCode::Cancelled,
        ErrorCode::CallFailed,
    ];

    #[test]
    fn codes_map_to_statuses_and_back() {
        for code in ALL {
            assert_eq!(ErrorCode::from_http_status(code.http_status()), code);
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn error_body_shape() {
        let body = ErrorBody { error: ApiError::conflict("seq went backwards") };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"error": {"code": "Conflict", "message": "seq went backwards"}})
        );
        assert_eq!(body.error.to_string(), "seq went backwards");
    }

    #[test]
    fn call_codes_map_onto_api_codes() {
        for (call, api) in [
            ("InvalidArgs", ErrorCode::BadRequest),
            ("NotFound", ErrorCode::NotFound),
            ("PolicyDenied", ErrorCode::Denied),
            ("PriceTooHigh", ErrorCode::Denied),
            ("RateLimited", ErrorCode::RateLimited),
            ("Busy", ErrorCode::RateLimited),
            ("Timeout", ErrorCode::Timeout),
            ("Cancelled", ErrorCode::Cancelled),
            ("Failed", ErrorCode::CallFailed),
            ("Exhausted", ErrorCode::CallFailed),
            ("Unreachable", ErrorCode::CallFailed),
        ] {
            assert_eq!(ErrorCode::of_call(&Code::parse(call)), api, "{call}");
        }
    }

    #[test]
    fn call_failures_ride_in_the_error_body() {
        use crate::types::Attempt;
        let peer = capmesh_types::NodeKey::from_seed([1; 32]).peer_id();
        let failure = CallFailure {
            call_id: capmesh_wire::repr::FixedBytes([1; 16]),
            code: "RateLimited".into(),
            attempts: vec![Attempt {
                provider: peer,
                code: "RateLimited".into(),
                message: "slow down".into(),
                stage: "task".into(),
                retry_after_ms: Some(1500),
            }],
            retry_after_ms: Some(1500),
        };
        let body = ErrorBody {
            error: ApiError::call(ErrorCode::RateLimited, "every provider refused", failure),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {
                "code": "RateLimited",
                "message": "every provider refused",
                "call": {
                    "call_id": "AQEBAQEBAQEBAQEBAQEBAQ",
                    "code": "RateLimited",
                    "attempts": [{"provider": peer.to_string(), "code": "RateLimited",
                                  "message": "slow down", "stage": "task",
                                  "retry_after_ms": 1500}],
                    "retry_after_ms": 1500
                }
            }})
        );
        let back: ErrorBody = serde_json::from_value(json).unwrap();
        assert_eq!(back.error, body.error);
    }
}
