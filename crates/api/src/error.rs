//! Errors: [`ApiError`], what the node answers (and the backend returns), and [`ClientError`],
//! everything that can go wrong for a caller of [`Client`](crate::Client).

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// The class of an API error; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
        }
    }

    /// The code of an HTTP status, for error bodies that are not ours (a proxy, an older node).
    pub const fn from_http_status(status: u16) -> Self {
        match status {
            401 | 403 => ErrorCode::Unauthorized,
            404 | 405 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            503 => ErrorCode::Unavailable,
            504 | 408 => ErrorCode::Timeout,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `api.addr` or `api.token` could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Any other HTTP failure.
    #[error("talking to the node failed: {0}")]
    Http(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 7] = [
        ErrorCode::Unauthorized,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
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
}
