use std::fmt;

use capmesh_types::Cid;
use capmesh_wire::cbor::EncodeError;

/// Which of a contract's two schemas something is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    /// `input`: the JSON Schema of the arguments.
    Input,
    /// `output`: the JSON Schema of the output.
    Output,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Input => "input",
            Self::Output => "output",
        })
    }
}

/// One way a JSON value breaks a schema: an argument or output against the contract's schema,
/// or a contract's schema against the JSON Schema 2020-12 meta-schema.
///
/// Displays as `"{pointer}: {reason}"`, the document root shown as `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Violation {
    /// JSON Pointer (RFC 6901) to the offending place in the validated value; `""` is the root.
    pub pointer: String,
    /// JSON Pointer to the keyword of the schema that failed (without `$ref` traversals).
    pub schema_path: String,
    /// What is wrong, in words (at most [`Violation::MAX_REASON_BYTES`]; longer text, which
    /// can echo a large part of the value, is cut and ends with `…`).
    pub reason: String,
}

impl Violation {
    /// Longest `reason` kept, in bytes.
    pub const MAX_REASON_BYTES: usize = 512;

    pub(crate) fn from_error(error: &jsonschema::ValidationError<'_>) -> Self {
        let mut reason = error.to_string();
        if reason.len() > Self::MAX_REASON_BYTES {
            let mut end = Self::MAX_REASON_BYTES - '…'.len_utf8();
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        Self {
            pointer: error.instance_path().as_str().to_owned(),
            schema_path: error.schema_path().as_str().to_owned(),
            reason,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() { "/" } else { &self.pointer };
        write!(f, "{pointer}: {}", self.reason)
    }
}

/// What is wrong with a contract's tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagProblem {
    #[error("{count} tags, more than the {max} allowed: keep the most specific ones")]
    TooMany { count: usize, max: usize },
    #[error(
        "tag {tag:?} is malformed: use 1 to 64 characters among a-z 0-9 _ . : -, starting with \
         a letter or a digit"
    )]
    Malformed { tag: String },
    #[error("tag {tag:?} appears more than once: list each tag once")]
    Duplicate { tag: String },
}

/// Why a contract was refused, or why its validators could not be had.
/// [`ContractError::code`] is the stable name of the refusal class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContractError {
    #[error(
        "the contract is {size} bytes of canonical CBOR, more than the {max} allowed: shorten \
         the description or the schemas"
    )]
    TooLarge { size: usize, max: usize },
    #[error(
        "the contract nests deeper than {max} levels (its own object is the first; each object \
         or array inside a schema opens one more): flatten the schemas, e.g. with \"$defs\" \
         and \"$ref\""
    )]
    TooDeep { max: usize },
    #[error(
        "name {name:?} is not a capability name: use 1 to 64 characters among a-z 0-9 _ . -, \
         starting with a letter (e.g. \"weather.forecast\")"
    )]
    BadName { name: String },
    #[error(
        "version {version:?} is not a semantic version 2.0 ({reason}): write MAJOR.MINOR.PATCH, \
         e.g. \"1.0.0\" or \"1.0.0-beta.1\""
    )]
    BadVersion { version: String, reason: &'static str },
    #[error("the description is {len} bytes, more than the {max} allowed: shorten it")]
    BadDescription { len: usize, max: usize },
    #[error("{problem}")]
    BadTags { problem: TagProblem },
    #[error(
        "the {which} schema declares \"$schema\": {schema:?} at {pointer}: only JSON Schema \
         2020-12 is supported; write \"{}\" or leave \"$schema\" out",
        crate::DRAFT_2020_12
    )]
    UnsupportedDraft { which: Which, pointer: String, schema: String },
    #[error(
        "the {which} schema refers outside itself at {pointer}: {reference:?}; a contract must \
         be self-contained: copy the referenced schema under \"$defs\" and refer to it as \
         \"#/$defs/NAME\""
    )]
    ExternalRef { which: Which, pointer: String, reference: String },
    #[error(
        "the {which} schema is not valid JSON Schema 2020-12 ({} problem(s)): {}",
        .violations.len(),
        summarize(.violations)
    )]
    InvalidSchema { which: Which, violations: Vec<Violation> },
    #[error("the {which} schema cannot be compiled: {reason}")]
    Uncompilable { which: Which, reason: String },
    #[error(
        "the contract's capability id is {actual}, not {expected}: the contract is not the one \
         the id names"
    )]
    IdMismatch { expected: Cid, actual: Cid },
    #[error("the contract has no canonical CBOR encoding: {0}")]
    Encode(EncodeError),
}

impl From<EncodeError> for ContractError {
    /// Too deep to encode at all is the same refusal as too deep to carry.
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::TooDeep { .. } => Self::TooDeep { max: crate::MAX_CONTRACT_DEPTH },
            e => Self::Encode(e),
        }
    }
}

impl ContractError {
    /// Stable machine name of the refusal class.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "TooLarge",
            Self::TooDeep { .. } => "TooDeep",
            Self::BadName { .. } => "BadName",
            Self::BadVersion { .. } => "BadVersion",
            Self::BadDescription { .. } => "BadDescription",
            Self::BadTags { .. } => "BadTags",
            Self::UnsupportedDraft { .. } => "UnsupportedDraft",
            Self::ExternalRef { .. } => "ExternalRef",
            Self::InvalidSchema { .. } => "InvalidSchema",
            Self::Uncompilable { .. } => "Uncompilable",
            Self::IdMismatch { .. } => "IdMismatch",
            Self::Encode(_) => "Encode",
        }
    }
}

/// The first few violations (and how many more), for a one-line message.
pub fn summarize(violations: &[Violation]) -> String {
    const SHOWN: usize = 5;
    let mut out = violations.iter().take(SHOWN).map(Violation::to_string).collect::<Vec<_>>();
    if violations.len() > SHOWN {
        out.push(format!("and {} more", violations.len() - SHOWN));
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_display_shows_root_as_slash() {
        let v = Violation {
            pointer: String::new(),
            schema_path: "/required".into(),
            reason: "x".into(),
        };
        assert_eq!(v.to_string(), "/: x");
        let v =
            Violation { pointer: "/a/0".into(), schema_path: String::new(), reason: "y".into() };
        assert_eq!(v.to_string(), "/a/0: y");
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let validator = jsonschema::draft202012::new(&serde_json::json!({"type": "integer"}))
            .expect("schema compiles");
        let instance = serde_json::Value::String(long);
        let error = validator.validate(&instance).expect_err("a string is not an integer");
        let v = Violation::from_error(&error);
        assert!(v.reason.len() <= Violation::MAX_REASON_BYTES);
        assert!(v.reason.ends_with('…'));
    }

    #[test]
    fn invalid_schema_message_lists_a_few_and_counts_the_rest() {
        let violations: Vec<_> = (0..7)
            .map(|i| Violation {
                pointer: format!("/p{i}"),
                schema_path: String::new(),
                reason: "bad".into(),
            })
            .collect();
        let e = ContractError::InvalidSchema { which: Which::Input, violations };
        let msg = e.to_string();
        assert!(msg.contains("7 problem(s)"), "{msg}");
        assert!(msg.contains("/p4: bad") && !msg.contains("/p5"), "{msg}");
        assert!(msg.ends_with("and 2 more"), "{msg}");
    }
}
