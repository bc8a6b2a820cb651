//! How a served capability runs: the runtime configuration, as written in a node's config.

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ExecError, builtin::Builtin};

/// Default of `timeout_ms`: 30 s.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default of `max_output_bytes`: 1 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;

/// How a served capability runs. Written in TOML or JSON with an internal tag `type`; unknown
/// fields are refused:
///
/// ```toml
/// runtime = { type = "builtin", name = "echo" }
/// runtime = { type = "command", argv = ["/usr/bin/python3", "tool.py"], cwd = "/srv/tool", env = { K = "V" }, timeout_ms = 30000, max_output_bytes = 1048576 }
/// runtime = { type = "http", url = "http://127.0.0.1:8080/run", timeout_ms = 30000, max_output_bytes = 1048576 }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Runtime {
    /// Built into the node, for tests and testnets.
    Builtin {
        /// Which one.
        name: Builtin,
    },
    /// A program with the arguments as JSON on stdin and the output as JSON on stdout.
    Command(CommandSpec),
    /// A plain-HTTP endpoint the arguments are POSTed to as JSON.
    Http(HttpSpec),
}

/// A program run once per call (see [`Runtime::Command`]).
///
/// - `argv[0]` is the program, run directly (no shell), with `argv[1..]` as its arguments.
/// - The environment is **cleared**: the program sees only `env`. `PATH` is not inherited
///   either, so write `argv[0]` as an absolute path (a bare name is looked up in the `PATH` of
///   `env`, if any, else in the C library's default path).
/// - It runs in `cwd` if set (relative to the node's working directory), else in the node's.
/// - The arguments are written to its stdin as one line of JSON, then stdin is closed. Its
///   stdout, at most `max_output_bytes`, must be one JSON value (the output) when it exits with
///   status 0; for a streaming contract, stdout is forwarded as chunks instead. Only the last
///   4 KiB of its stderr are kept, for the error message of a failure.
/// - It leads a process group of its own. When it exits, and on timeout, cancellation or an
///   output over the cap, the whole group is killed (SIGKILL): nothing it started outlives the
///   run, except a process that left the group (`setsid`, `setpgid`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// The program and its arguments; not empty.
    pub argv: Vec<String>,
    /// Working directory; the node's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// The whole environment of the program (nothing else is inherited). Default: empty.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Longest run, in milliseconds (at least 1). Default: [`DEFAULT_TIMEOUT_MS`].
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most bytes read from stdout (at least 1); beyond, the program is killed and the call
    /// fails. Default: [`DEFAULT_MAX_OUTPUT_BYTES`].
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
}

impl CommandSpec {
    /// A command running `argv` with the defaults: no cwd, an empty environment, 30 s, 1 MiB.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    pub(crate) fn check(&self) -> Result<(), ExecError> {
        let Some(program) = self.argv.first() else {
            return Err(ExecError::Config(
                "a command's argv is empty: give at least the program's absolute path".into(),
            ));
        };
        if program.is_empty() {
            return Err(ExecError::Config("a command's program (argv[0]) is empty".into()));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(ExecError::Config("a command's argv contains a NUL byte".into()));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(ExecError::Config(format!(
                    "environment variable {key:?} is malformed: a name is not empty and has no \
                     '=' or NUL, a value has no NUL"
                )));
            }
        }
        check_limits(self.timeout_ms, self.max_output_bytes)
    }
}

/// A plain-HTTP endpoint (see [`Runtime::Http`]).
///
/// Each call POSTs the arguments as JSON (`content-type: application/json`) to `url`. A 2xx
/// answer whose body, at most `max_output_bytes`, is one JSON value gives the output (for a
/// streaming contract, the body is forwarded as chunks instead); any other status fails the call
/// with the status and the start of the body. Redirects are not followed and no proxy is used.
///
/// Only `http://` URLs are accepted: TLS is not compiled into capmesh-exec. Serve the tool on a
/// local or private address, or put a TLS-terminating proxy next to the node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// An `http://` URL.
    pub url: String,
    /// Longest call, in milliseconds, from connecting to the end of the body (at least 1).
    /// Default: [`DEFAULT_TIMEOUT_MS`].
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most body bytes read (at least 1); beyond, the call fails. Default:
    /// [`DEFAULT_MAX_OUTPUT_BYTES`].
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
}

impl HttpSpec {
    /// An endpoint at `url` with the defaults: 30 s, 1 MiB.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    /// The URL, parsed and checked to be plain HTTP with a host.
    pub(crate) fn check(&self) -> Result<reqwest::Url, ExecError> {
        check_limits(self.timeout_ms, self.max_output_bytes)?;
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| ExecError::Config(format!("{:?} is not a URL: {e}", self.url)))?;
        if url.scheme() != "http" {
            return Err(ExecError::Config(format!(
                "{:?} is not an http:// URL: TLS is not compiled into capmesh-exec; serve the \
                 tool over plain HTTP on a local or private address, or behind a local \
                 TLS-terminating proxy",
                self.url
            )));
        }
        if url.host().is_none() {
            return Err(ExecError::Config(format!("{:?} has no host", self.url)));
        }
        Ok(url)
    }
}

fn check_limits(timeout_ms: u64, max_output_bytes: u64) -> Result<(), ExecError> {
    if timeout_ms == 0 {
        return Err(ExecError::Config("timeout_ms is 0: give at least 1".into()));
    }
    if max_output_bytes == 0 {
        return Err(ExecError::Config("max_output_bytes is 0: give at least 1".into()));
    }
    Ok(())
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_shapes() {
        let r: Runtime =
            serde_json::from_value(json!({"type": "builtin", "name": "sleep"})).unwrap();
        assert_eq!(r, Runtime::Builtin { name: Builtin::Sleep });
        let r: Runtime =
            serde_json::from_value(json!({"type": "command", "argv": ["/bin/cat"]})).unwrap();
        assert_eq!(r, Runtime::Command(CommandSpec::new(["/bin/cat"])));
        let r: Runtime =
            serde_json::from_value(json!({"type": "http", "url": "http://h/x", "timeout_ms": 5}))
                .unwrap();
        assert_eq!(r, Runtime::Http(HttpSpec { timeout_ms: 5, ..HttpSpec::new("http://h/x") }));
        for bad in [
            json!({"type": "command", "argv": ["/bin/cat"], "shell": true}),
            json!({"type": "builtin", "name": "echo", "x": 1}),
            json!({"type": "builtin", "name": "Echo"}),
            json!({"type": "wasm"}),
            json!({"argv": ["/bin/cat"]}),
        ] {
            assert!(serde_json::from_value::<Runtime>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let mut spec = CommandSpec::new(["/bin/sh", "-c", "true"]);
        spec.env.insert("K".into(), "V".into());
        spec.cwd = Some("/tmp".into());
        for r in [
            Runtime::Builtin { name: Builtin::Stream },
            Runtime::Command(spec),
            Runtime::Command(CommandSpec::new(["/bin/true"])),
            Runtime::Http(HttpSpec::new("http://127.0.0.1:1/")),
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(serde_json::from_value::<Runtime>(v).unwrap(), r);
        }
    }

    #[test]
    fn checks() {
        assert!(CommandSpec::new(["/bin/true"]).check().is_ok());
        assert!(CommandSpec::new(Vec::<String>::new()).check().is_err());
        assert!(CommandSpec::new([""]).check().is_err());
        assert!(CommandSpec::new(["/bin/echo", "a\0b"]).check().is_err());
        let mut bad_env = CommandSpec::new(["/bin/true"]);
        bad_env.env.insert("A=B".into(), "x".into());
        assert!(bad_env.check().is_err());
        let zero = CommandSpec { timeout_ms: 0, ..CommandSpec::new(["/bin/true"]) };
        assert!(zero.check().is_err());
        let zero = CommandSpec { max_output_bytes: 0, ..CommandSpec::new(["/bin/true"]) };
        assert!(zero.check().is_err());

        assert!(HttpSpec::new("http://127.0.0.1:8080/run").check().is_ok());
        for bad in ["https://example.com/", "ftp://x/", "not a url", "unix:/tmp/s"] {
            let e = HttpSpec::new(bad).check().unwrap_err();
            assert_eq!(e.code(), capmesh_wire::Code::Internal, "{bad}: {e}");
        }
        let msg = HttpSpec::new("https://example.com/").check().unwrap_err().to_string();
        assert!(msg.contains("TLS"), "{msg}");
    }
}
