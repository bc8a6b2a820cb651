//! Why a run did not produce a valid output.

use std::time::Duration;

use capmesh_contract::Violation;
use capmesh_wire::Code;

/// Why [`Executor::new`](crate::Executor::new) refused a runtime or why a
/// [`run`](crate::Executor::run) did not produce a valid output. [`ExecError::code`] is the
/// stable name of the class, as it goes into an `ErrorBody` and a receipt's status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The arguments break the contract's input schema; nothing was started.
    #[error(
        "the arguments do not match the contract's input schema ({} problem(s)): {}; fix them \
         and call again",
        .0.len(),
        capmesh_contract::summarize(.0)
    )]
    InvalidArgs(Vec<Violation>),
    /// The capability produced an output that breaks the contract's output schema. The output is
    /// kept: the provider hashes it into the receipt.
    #[error(
        "the capability's output does not match the contract's output schema ({} problem(s)): \
         {}; the provider must fix its tool or its contract",
        .violations.len(),
        capmesh_contract::summarize(.violations)
    )]
    OutputInvalid { output: serde_json::Value, violations: Vec<Violation> },
    /// The run took longer than its limit (the smaller of the caller's and the runtime's) and
    /// was stopped.
    #[error("the run took longer than its {0:?} limit and was stopped; retry with more time")]
    Timeout(Duration),
    /// The run was cancelled (its token, or the receiver of its chunks went away) and stopped.
    #[error("the run was cancelled and stopped")]
    Cancelled,
    /// The capability ran and failed: the fail builtin, a non-zero exit (with the tail of its
    /// stderr), an HTTP status other than 2xx (with the start of the body), an output that is
    /// not JSON, or an output over its cap.
    #[error("the capability failed: {0}")]
    Failed(String),
    /// The runtime's configuration is wrong (or does not fit the contract).
    #[error("the runtime is misconfigured: {0}; fix the capability's runtime settings")]
    Config(String),
    /// The runtime could not be run or reached (a program that cannot be started, an HTTP
    /// service that cannot be connected to, a broken transfer).
    #[error("the runtime could not be run: {0}")]
    Io(#[from] std::io::Error),
}

impl ExecError {
    /// Stable machine name of the class: `InvalidArgs`, `OutputInvalid`, `Timeout`,
    /// `Cancelled`, `Failed`, or `Internal` (configuration and I/O problems of the provider).
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgs(_) => Code::InvalidArgs,
            Self::OutputInvalid { .. } => Code::OutputInvalid,
            Self::Timeout(_) => Code::Timeout,
            Self::Cancelled => Code::Cancelled,
            Self::Failed(_) => Code::Failed,
            Self::Config(_) | Self::Io(_) => Code::Internal,
        }
    }

    /// Whether the same call may succeed if tried again (here or at another provider):
    /// timeouts and I/O problems.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Io(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retry() {
        let v = Violation { pointer: "/a".into(), schema_path: "/type".into(), reason: "r".into() };
        let cases = [
            (ExecError::InvalidArgs(vec![v.clone()]), "InvalidArgs", false),
            (
                ExecError::OutputInvalid { output: serde_json::json!(1), violations: vec![v] },
                "OutputInvalid",
                false,
            ),
            (ExecError::Timeout(Duration::from_secs(1)), "Timeout", true),
            (ExecError::Cancelled, "Cancelled", false),
            (ExecError::Failed("x".into()), "Failed", false),
            (ExecError::Config("x".into()), "Internal", false),
            (ExecError::Io(std::io::Error::other("x")), "Internal", true),
        ];
        for (e, code, retry) in cases {
            assert_eq!(e.code().as_str(), code, "{e}");
            assert_eq!(e.retryable(), retry, "{e}");
        }
    }

    #[test]
    fn messages_list_violations() {
        let violations: Vec<_> = (0..7)
            .map(|i| Violation {
                pointer: format!("/p{i}"),
                schema_path: String::new(),
                reason: "bad".into(),
            })
            .collect();
        let msg = ExecError::InvalidArgs(violations).to_string();
        assert!(msg.contains("7 problem(s)") && msg.contains("/p4: bad"), "{msg}");
        assert!(!msg.contains("/p5") && msg.contains("and 2 more"), "{msg}");
    }
}
