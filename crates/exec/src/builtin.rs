//! The builtins: small capabilities compiled into the node, for tests and testnets.

use std::{fmt, time::Duration};

use capmesh_contract::Contract;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{ExecError, executor::Chunks};

/// Longest `ms` of [`Builtin::Sleep`] (and `delay_ms` of [`Builtin::Stream`]): one hour.
pub const MAX_SLEEP_MS: u64 = 3_600_000;
/// Most strings in the `chunks` of [`Builtin::Stream`].
pub const MAX_STREAM_CHUNKS: usize = 1024;

/// A capability built into the node. Written in lower case (`"echo"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// Returns its arguments unchanged.
    Echo,
    /// `{"text": string}` → `{"digest": "<64 lower-case hex of BLAKE3 of the UTF-8 bytes>"}`.
    Blake3,
    /// `{"ms": 0..=3600000}` → `{"slept_ms": ms}` after that long (cancellable at once).
    Sleep,
    /// `{"message"?: string}` → always fails with the message.
    Fail,
    /// Streaming: `{"chunks": [string, …], "delay_ms"?: integer}` → each string's UTF-8 bytes as
    /// one chunk, in order, `delay_ms` apart.
    Stream,
}

impl Builtin {
    /// Every builtin.
    pub const ALL: &'static [Builtin] =
        &[Builtin::Echo, Builtin::Blake3, Builtin::Sleep, Builtin::Fail, Builtin::Stream];

    /// Its name in configuration: `echo`, `blake3`, `sleep`, `fail`, `stream`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Blake3 => "blake3",
            Self::Sleep => "sleep",
            Self::Fail => "fail",
            Self::Stream => "stream",
        }
    }

    /// Whether it produces its output as chunks (only [`Builtin::Stream`]).
    pub fn streaming(self) -> bool {
        self == Self::Stream
    }

    /// The contract it is served under by default: name `builtin.<name>`, version `1.0.0`,
    /// schemas of the shapes above, tags `["builtin", "<name>"]`; all are `read_only`, all but
    /// `fail` are `idempotent`, and `stream` is `streaming`. Each passes
    /// [`capmesh_contract::check`].
    pub fn contract(self) -> Contract {
        let (description, input, output) = match self {
            Self::Echo => (
                "Returns its arguments unchanged: any JSON object in, the same object out. A \
                 builtin of capmesh for tests and testnets.",
                json!({"type": "object"}),
                json!({"type": "object"}),
            ),
            Self::Blake3 => (
                "Hashes a text with BLAKE3: {\"text\": string} in, {\"digest\": 64 lower-case \
                 hex digits of the BLAKE3-256 of the text's UTF-8 bytes} out. A builtin of \
                 capmesh for tests and testnets.",
                json!({
                    "type": "object",
                    "properties": {"text": {"type": "string"}},
                    "required": ["text"],
                    "additionalProperties": false,
                }),
                json!({
                    "type": "object",
                    "properties": {"digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                    "required": ["digest"],
                    "additionalProperties": false,
                }),
            ),
            Self::Sleep => (
                "Waits: {\"ms\": milliseconds, at most one hour} in, {\"slept_ms\": ms} out once \
                 that long has passed. Stops at once when cancelled. A builtin of capmesh for \
                 tests and testnets.",
                json!({
                    "type": "object",
                    "properties": {
                        "ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS},
                    },
                    "required": ["ms"],
                    "additionalProperties": false,
                }),
                json!({
                    "type": "object",
                    "properties": {
                        "slept_ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS},
                    },
                    "required": ["slept_ms"],
                    "additionalProperties": false,
                }),
            ),
            Self::Fail => (
                "Always fails, with the message given ({\"message\"?: string}) or a default one; \
                 it never returns an output. A builtin of capmesh for tests and testnets.",
                json!({
                    "type": "object",
                    "properties": {"message": {"type": "string"}},
                    "additionalProperties": false,
                }),
                json!({
                    "type": "object",
                    "description": "Never produced: the fail builtin always fails.",
                }),
            ),
            Self::Stream => (
                "Streams chunks: {\"chunks\": [string, ...], \"delay_ms\"?: integer} in; each \
                 string's UTF-8 bytes come out as one chunk, in order, delay_ms apart. A builtin \
                 of capmesh for tests and testnets.",
                json!({
                    "type": "object",
                    "properties": {
                        "chunks": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxItems": MAX_STREAM_CHUNKS,
                        },
                        "delay_ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS},
                    },
                    "required": ["chunks"],
                    "additionalProperties": false,
                }),
                json!({
                    "type": "string",
                    "description": "A streamed output is its chunks, not one value: each \
                                    chunk is the UTF-8 bytes of one input string, in order.",
                }),
            ),
        };
        Contract {
            name: format!("builtin.{}", self.name()),
            version: "1.0.0".to_owned(),
            description: description.to_owned(),
            input,
            output,
            tags: vec!["builtin".to_owned(), self.name().to_owned()],
            read_only: true,
            idempotent: self != Self::Fail,
            streaming: self.streaming(),
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The arguments of [`Builtin::Blake3`].
#[derive(Deserialize)]
struct Blake3Args {
    text: String,
}

/// The arguments of [`Builtin::Sleep`].
#[derive(Deserialize)]
struct SleepArgs {
    ms: u64,
}

/// The arguments of [`Builtin::Fail`].
#[derive(Deserialize)]
struct FailArgs {
    message: Option<String>,
}

/// The arguments of [`Builtin::Stream`].
#[derive(Deserialize)]
struct StreamArgs {
    chunks: Vec<String>,
    #[serde(default)]
    delay_ms: u64,
}

/// What a builtin produced: a value (to be validated) or a number of chunks sent.
pub(crate) enum Produced {
    Value(Value),
    Streamed(u64),
}

/// Runs `builtin` on `args` (already valid against the executor's contract). Cancel-safe: it
/// holds nothing that must be released, so the caller stops it by dropping the future.
pub(crate) async fn run(
    builtin: Builtin,
    args: Value,
    chunks: Option<Chunks>,
) -> Result<Produced, ExecError> {
    match builtin {
        Builtin::Echo => Ok(Produced::Value(args)),
        Builtin::Blake3 => {
            let Blake3Args { text } = parse(builtin, args)?;
            let digest = blake3::hash(text.as_bytes()).to_hex();
            Ok(Produced::Value(json!({"digest": digest.as_str()})))
        }
        Builtin::Sleep => {
            let SleepArgs { ms } = parse(builtin, args)?;
            if ms > MAX_SLEEP_MS {
                return Err(ExecError::Failed(format!(
                    "the sleep builtin sleeps at most {MAX_SLEEP_MS} ms, not {ms}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Produced::Value(json!({"slept_ms": ms})))
        }
        Builtin::Fail => {
            let FailArgs { message } = parse(builtin, args)?;
            Err(ExecError::Failed(
                message.unwrap_or_else(|| "the fail builtin always fails".to_owned()),
            ))
        }
        Builtin::Stream => {
            let StreamArgs { chunks: strings, delay_ms } = parse(builtin, args)?;
            if strings.len() > MAX_STREAM_CHUNKS || delay_ms > MAX_SLEEP_MS {
                return Err(ExecError::Failed(format!(
                    "the stream builtin takes at most {MAX_STREAM_CHUNKS} chunks and a delay of \
                     at most {MAX_SLEEP_MS} ms"
                )));
            }
            let mut chunks = chunks.ok_or_else(|| {
                ExecError::Config("the stream builtin runs only under a streaming contract".into())
            })?;
            for (i, string) in strings.into_iter().enumerate() {
                if i > 0 && delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
                chunks.send(string.into_bytes()).await?;
            }
            Ok(Produced::Streamed(chunks.sent()))
        }
    }
}

/// The builtin's own arguments out of `args`. Only fails when the executor's contract admits
/// arguments the builtin does not take (a contract other than [`Builtin::contract`]).
fn parse<T: serde::de::DeserializeOwned>(builtin: Builtin, args: Value) -> Result<T, ExecError> {
    serde_json::from_value(args).map_err(|e| {
        ExecError::Failed(format!(
            "the {builtin} builtin cannot use these arguments ({e}); its contract should be \
             Builtin::contract's"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_serde_agree() {
        for &b in Builtin::ALL {
            assert_eq!(serde_json::to_value(b).unwrap(), json!(b.name()));
            assert_eq!(serde_json::from_value::<Builtin>(json!(b.name())).unwrap(), b);
            assert_eq!(b.to_string(), b.name());
        }
    }

    #[test]
    fn contracts_are_well_formed_and_distinct() {
        let mut ids = std::collections::HashSet::new();
        for &b in Builtin::ALL {
            let c = b.contract();
            let id = capmesh_contract::check(&c).unwrap_or_else(|e| panic!("{b}: {e}"));
            assert!(ids.insert(id));
            assert_eq!(c.name, format!("builtin.{b}"));
            assert_eq!(c.tags, ["builtin", b.name()]);
            assert!(c.read_only);
            assert_eq!(c.idempotent, b != Builtin::Fail);
            assert_eq!(c.streaming, b == Builtin::Stream);
        }
    }
}
