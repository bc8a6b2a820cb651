//! Why a call did not succeed, as the agent sees it.

use capmesh_types::{Cid, PeerId};
use capmesh_wire::Code;

/// One try at one provider that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub provider: PeerId,
    /// Protocol code (`PolicyDenied`, `RateLimited`, `Timeout`, …, or the caller's own
    /// `BadReceipt`, `Unreachable`, `Declined`).
    pub code: Code,
    pub message: String,
    /// Stage: `intent` or `task`.
    pub stage: &'static str,
    /// The provider's suggested wait (rate limits).
    pub retry_after_ms: Option<u64>,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}: {} ({})", self.stage, self.provider, self.message, self.code)
    }
}

fn list(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = attempts.iter().map(|a| a.to_string()).collect();
    format!(": {}", parts.join("; "))
}

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    #[error("capability {0} is unknown: no contract in the replica and no provider found")]
    UnknownCapability(Cid),
    #[error("arguments refused before anything was sent: {0}")]
    InvalidArgs(String),
    #[error("no provider of {0} found")]
    NoProviders(Cid),
    #[error("every provider refused or failed{}", list(.attempts))]
    Exhausted { attempts: Vec<Attempt> },
    /// A refusal where trying elsewhere cannot help (the provider found the args invalid).
    #[error("{}", .attempt)]
    Refused { attempt: Attempt },
    #[error("the deadline passed{}", list(.attempts))]
    Deadline { attempts: Vec<Attempt> },
    #[error("the call was cancelled")]
    Cancelled,
    #[error("too many calls in flight on this node ({0}); retry later")]
    Busy(usize),
    #[error("call id already in use by a call in flight")]
    DuplicateCall,
    #[error("replica: {0}")]
    Store(#[from] capmesh_store::StoreError),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("cannot sign: {0}")]
    Sign(#[from] capmesh_wire::SignError),
    #[error("the node is shutting down")]
    Stopped,
    #[error("no randomness for ids: {0}")]
    Entropy(String),
}

impl CallError {
    /// A protocol-style code (specs/api.md lists them).
    pub fn code(&self) -> Code {
        match self {
            CallError::UnknownCapability(_) | CallError::NoProviders(_) => Code::NotFound,
            CallError::InvalidArgs(_) => Code::InvalidArgs,
            CallError::Exhausted { attempts } => match attempts.last() {
                // The most telling refusal, if every provider said the same.
                Some(a) if attempts.iter().all(|b| b.code == a.code) => a.code.clone(),
                _ => Code::Exhausted,
            },
            CallError::Refused { attempt } => attempt.code.clone(),
            CallError::Deadline { .. } => Code::Timeout,
            CallError::Cancelled => Code::Cancelled,
            CallError::Busy(_) | CallError::DuplicateCall => Code::Busy,
            CallError::Store(_)
            | CallError::Ledger(_)
            | CallError::Sign(_)
            | CallError::Stopped
            | CallError::Entropy(_) => Code::Internal,
        }
    }

    /// The tries behind this error.
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            CallError::Exhausted { attempts } | CallError::Deadline { attempts } => attempts,
            CallError::Refused { attempt } => std::slice::from_ref(attempt),
            _ => &[],
        }
    }

    /// Suggested wait before retrying: the shortest any provider asked for.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.attempts().iter().filter_map(|a| a.retry_after_ms).min()
    }
}
