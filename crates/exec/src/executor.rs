//! [`Executor`]: one served capability, its contract compiled and its runtime ready.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use capmesh_contract::{Compiled, Contract};
use capmesh_types::Cid;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    ExecError, Runtime,
    builtin::{self, Produced},
    command, http,
};

/// Largest chunk the command and http runtimes forward for a streaming contract, in bytes: a
/// larger read is split. (The stream builtin sends each string whole.)
pub const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// How one run goes: its time limit, its cancellation, and where a streaming output goes.
#[derive(Debug, Clone)]
pub struct Run {
    /// Longest the run may take; the runtime's own `timeout_ms`, if smaller, wins.
    pub timeout: Duration,
    /// Cancelling it stops the run ([`ExecError::Cancelled`]).
    pub cancel: CancellationToken,
    /// Where the chunks of a streaming contract's output go, in order. The sender is bounded:
    /// the run waits while it is full (backpressure), and a closed receiver cancels the run.
    /// Required for a streaming contract, ignored otherwise.
    pub chunks: Option<mpsc::Sender<Vec<u8>>>,
    /// The call's trace id, handed to runtimes that can log it (a [`Foreign`] one).
    pub trace: Option<[u8; 16]>,
}

impl Run {
    /// A run limited to `timeout` and stopped by `cancel`, with no chunk sender.
    pub fn new(timeout: Duration, cancel: CancellationToken) -> Self {
        Self { timeout, cancel, chunks: None, trace: None }
    }

    /// Names the call's trace id.
    pub fn with_trace(mut self, trace: [u8; 16]) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Sends a streaming output's chunks to `tx`.
    pub fn with_chunks(mut self, tx: mpsc::Sender<Vec<u8>>) -> Self {
        self.chunks = Some(tx);
        self
    }
}

/// What a successful run produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The output value, valid against the contract's output schema.
    Value(Value),
    /// A streaming contract's output went through [`Run::chunks`]: this many chunks, in order.
    /// (Chunks are not validated: a streamed output has no single value to validate.)
    Streamed {
        /// How many chunks were sent.
        chunks: u64,
    },
}

/// A runtime that lives outside this crate, such as the MCP bridge's `mcp` runtime (a tool of an
/// MCP server the node imported). It gets arguments already checked against the contract's input
/// schema, and its output is checked against the output schema after it. Timeouts and
/// cancellation drop the future [`call`](Foreign::call) returned: dropping it must stop the work
/// (or tell the remote end to).
pub trait Foreign: Send + Sync + 'static {
    /// What it runs, for logs and errors (e.g. `mcp server "files", tool "read_file"`).
    fn describe(&self) -> String;
    /// Runs once with `args`.
    fn call(&self, args: Value) -> Pin<Box<dyn Future<Output = Result<Value, ExecError>> + Send>>;
    /// Whether it can serve a streaming contract (through [`Foreign::run`]'s chunk sink).
    fn streams(&self) -> bool {
        false
    }
    /// Runs once with `args` and what the run knows (time limit, trace id, chunk sink). The
    /// default ignores the context and answers [`Foreign::call`]'s value.
    fn run(
        &self,
        args: Value,
        ctx: ForeignRun,
    ) -> Pin<Box<dyn Future<Output = Result<ForeignOutput, ExecError>> + Send>> {
        drop(ctx);
        let call = self.call(args);
        Box::pin(async move { call.await.map(ForeignOutput::Value) })
    }
}

/// What a [`Foreign`] run knows besides its arguments.
#[derive(Debug)]
#[non_exhaustive]
pub struct ForeignRun {
    /// The longest the run may take (it is dropped past it).
    pub limit: Duration,
    /// The call's trace id, when the call has one.
    pub trace: Option<[u8; 16]>,
    /// Where a streaming contract's chunks go (present exactly when the contract streams).
    pub chunks: Option<ChunkSink>,
}

impl ForeignRun {
    /// A run limited to `limit`, with no trace id and no chunk sink (for calling a
    /// [`Foreign`] runtime outside an executor).
    pub fn new(limit: Duration) -> Self {
        Self { limit, trace: None, chunks: None }
    }
}

/// What a [`Foreign`] run produced.
#[derive(Debug, Clone, PartialEq)]
pub enum ForeignOutput {
    /// One value, checked against the output schema afterwards.
    Value(Value),
    /// A streaming contract's chunks went to [`ForeignRun::chunks`]: this many
    /// ([`ChunkSink::sent`]).
    Streamed { chunks: u64 },
}

/// How an executor runs: a configured [`Runtime`] or a [`Foreign`] one.
enum Engine {
    Configured(Runtime),
    Foreign(Arc<dyn Foreign>),
}

/// One served capability: its contract, compiled, and its runtime. Cloning is cheap (an `Arc`),
/// and clones share the [`runs`](Executor::runs) counter.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    contract: Contract,
    engine: Engine,
    compiled: Compiled,
    /// The parsed URL and the client of an http runtime.
    http: Option<(reqwest::Url, reqwest::Client)>,
    runs: AtomicU64,
}

impl Executor {
    /// Checks `contract` ([`capmesh_contract::check`]) and compiles its schemas, and checks that
    /// `runtime` is well configured and fits the contract: a streaming contract needs a runtime
    /// that can stream (command, http, or the stream builtin) and the stream builtin needs a
    /// streaming contract. Every refusal is [`ExecError::Config`].
    pub fn new(contract: Contract, runtime: Runtime) -> Result<Self, ExecError> {
        let compiled = Compiled::new(&contract).map_err(|e| {
            ExecError::Config(format!("the contract {:?} is refused: {e}", contract.name))
        })?;
        let mut http = None;
        match &runtime {
            Runtime::Builtin { name } => {
                if name.streaming() != contract.streaming {
                    return Err(ExecError::Config(format!(
                        "the {name} builtin {} but the contract {:?} {}",
                        if name.streaming() { "streams" } else { "does not stream" },
                        contract.name,
                        if contract.streaming { "is streaming" } else { "is not streaming" },
                    )));
                }
            }
            Runtime::Command(spec) => spec.check()?,
            Runtime::Http(spec) => {
                let url = spec.check()?;
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| {
                        ExecError::Config(format!("cannot build an HTTP client: {}", chain(&e)))
                    })?;
                http = Some((url, client));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                contract,
                engine: Engine::Configured(runtime),
                compiled,
                http,
                runs: AtomicU64::new(0),
            }),
        })
    }

    /// An executor whose runs go to `runtime`, which this crate does not know. The contract is
    /// checked and compiled as in [`Executor::new`]; a streaming contract is refused unless the
    /// runtime [streams](Foreign::streams).
    pub fn foreign(contract: Contract, runtime: Arc<dyn Foreign>) -> Result<Self, ExecError> {
        let compiled = Compiled::new(&contract).map_err(|e| {
            ExecError::Config(format!("the contract {:?} is refused: {e}", contract.name))
        })?;
        if contract.streaming && !runtime.streams() {
            return Err(ExecError::Config(format!(
                "{} cannot serve the streaming contract {:?}",
                runtime.describe(),
                contract.name
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                contract,
                engine: Engine::Foreign(runtime),
                compiled,
                http: None,
                runs: AtomicU64::new(0),
            }),
        })
    }

    /// The capability id: the CID of the contract.
    pub fn capability(&self) -> Cid {
        self.inner.compiled.id()
    }

    /// The contract it serves.
    pub fn contract(&self) -> &Contract {
        &self.inner.contract
    }

    /// How it runs: the configured runtime, `None` for a [`Foreign`] one.
    pub fn runtime(&self) -> Option<&Runtime> {
        match &self.inner.engine {
            Engine::Configured(runtime) => Some(runtime),
            Engine::Foreign(_) => None,
        }
    }

    /// Checks `args` against the contract's input schema; [`ExecError::InvalidArgs`] lists every
    /// violation.
    pub fn validate_input(&self, args: &Value) -> Result<(), ExecError> {
        self.inner.compiled.validate_input(args).map_err(ExecError::InvalidArgs)
    }

    /// Checks `args` once for a later [`Executor::run_valid`] (a server refuses bad arguments
    /// before it admits a call, and need not check them again when it runs it).
    pub fn check_args(&self, args: Value) -> Result<ValidArgs, ExecError> {
        self.validate_input(&args)?;
        Ok(ValidArgs { value: args, capability: self.capability() })
    }

    /// How many runs were started: calls of [`run`](Executor::run) whose arguments were valid
    /// and that were not cancelled before they started.
    pub fn runs(&self) -> u64 {
        self.inner.runs.load(Ordering::Relaxed)
    }

    /// Validates `args`, runs the capability, and validates its output.
    ///
    /// In order: [`ExecError::InvalidArgs`] if `args` break the input schema (nothing started);
    /// [`ExecError::Config`] for a streaming contract without [`Run::chunks`];
    /// [`ExecError::Cancelled`] if `run.cancel` is already cancelled; then the runtime starts
    /// ([`runs`](Executor::runs) counts it). The run is limited to the smaller of `run.timeout`
    /// and the runtime's `timeout_ms`: past it, or when `run.cancel` fires, the runtime is
    /// stopped — a command's whole process group gets SIGKILL — and [`ExecError::Timeout`] or
    /// [`ExecError::Cancelled`] is returned at once. A value output is then checked against the
    /// output schema ([`ExecError::OutputInvalid`] keeps it); a streaming output is its chunks,
    /// sent through `run.chunks` as they come (awaiting room in the channel), and
    /// [`Output::Streamed`] counts them.
    ///
    /// Cancel-safe in this sense: dropping the future stops the run as a timeout would (the
    /// command's process group is killed). The outcome of a dropped run is lost, and chunks
    /// already sent stay sent.
    pub async fn run(&self, args: Value, run: Run) -> Result<Output, ExecError> {
        let args = self.check_args(args)?;
        self.run_valid(args, run).await
    }

    /// [`Executor::run`] with arguments already checked by this executor's
    /// [`check_args`](Executor::check_args) (checked again if they were checked by another).
    pub async fn run_valid(&self, args: ValidArgs, run: Run) -> Result<Output, ExecError> {
        let args = if args.capability == self.capability() {
            args.value
        } else {
            self.check_args(args.value)?.value
        };
        let inner = &*self.inner;
        let chunks = match (inner.contract.streaming, run.chunks) {
            (true, Some(tx)) => Some(Chunks::new(tx)),
            (true, None) => {
                return Err(ExecError::Config(format!(
                    "the contract {:?} is streaming but the run has no chunk sender",
                    inner.contract.name
                )));
            }
            (false, _) => None,
        };
        if run.cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let limit = match &inner.engine {
            Engine::Configured(Runtime::Builtin { .. }) | Engine::Foreign(_) => run.timeout,
            Engine::Configured(Runtime::Command(spec)) => {
                run.timeout.min(Duration::from_millis(spec.timeout_ms))
            }
            Engine::Configured(Runtime::Http(spec)) => {
                run.timeout.min(Duration::from_millis(spec.timeout_ms))
            }
        };
        inner.runs.fetch_add(1, Ordering::Relaxed);
        let capability = self.capability();
        tracing::debug!(%capability, ?limit, "run started");

        let work = async {
            match &inner.engine {
                Engine::Foreign(runtime) => {
                    let streamed = chunks.is_some();
                    let ctx = ForeignRun { limit, trace: run.trace, chunks: chunks.map(ChunkSink) };
                    match runtime.run(args, ctx).await? {
                        ForeignOutput::Value(v) if !streamed => Ok(Produced::Value(v)),
                        ForeignOutput::Streamed { chunks } if streamed => {
                            Ok(Produced::Streamed(chunks))
                        }
                        _ => Err(ExecError::Failed(format!(
                            "{} answered {} for a contract that {}",
                            runtime.describe(),
                            if streamed { "one value" } else { "a stream" },
                            if streamed { "streams" } else { "does not stream" },
                        ))),
                    }
                }
                Engine::Configured(Runtime::Builtin { name }) => {
                    builtin::run(*name, args, chunks).await
                }
                Engine::Configured(Runtime::Command(spec)) => {
                    let out = Collector::new(spec.max_output_bytes, chunks);
                    command::run(spec, &args, out).await
                }
                Engine::Configured(Runtime::Http(spec)) => {
                    let Some((url, client)) = &inner.http else {
                        return Err(ExecError::Config("the http runtime has no client".into()));
                    };
                    let out = Collector::new(spec.max_output_bytes, chunks);
                    http::run(client, url, &args, out).await
                }
            }
        };
        // Dropping `work` (timeout, cancellation) stops the runtime: see command::Group.
        let produced = tokio::select! {
            biased;
            () = run.cancel.cancelled() => Err(ExecError::Cancelled),
            produced = work => produced,
            () = tokio::time::sleep(limit) => Err(ExecError::Timeout(limit)),
        };
        let result = match produced {
            Ok(Produced::Value(output)) => match inner.compiled.validate_output(&output) {
                Ok(()) => Ok(Output::Value(output)),
                Err(violations) => Err(ExecError::OutputInvalid { output, violations }),
            },
            Ok(Produced::Streamed(chunks)) => Ok(Output::Streamed { chunks }),
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => tracing::debug!(%capability, "run succeeded"),
            Err(e) => tracing::debug!(%capability, code = %e.code(), error = %e, "run failed"),
        }
        result
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("capability", &self.capability())
            .field("name", &self.inner.contract.name)
            .field("runtime", &self.runtime())
            .field("runs", &self.runs())
            .finish_non_exhaustive()
    }
}

/// The chunk sink a [`Foreign`] runtime streams into.
#[derive(Debug)]
pub struct ChunkSink(Chunks);

impl ChunkSink {
    /// Sends one chunk of at most [`MAX_CHUNK_BYTES`] (a larger one is split), waiting for room
    /// (backpressure); a closed receiver is [`ExecError::Cancelled`].
    pub async fn send(&mut self, chunk: Vec<u8>) -> Result<(), ExecError> {
        if chunk.len() <= MAX_CHUNK_BYTES {
            return self.0.send(chunk).await;
        }
        for piece in chunk.chunks(MAX_CHUNK_BYTES) {
            self.0.send(piece.to_vec()).await?;
        }
        Ok(())
    }

    /// Chunks sent so far.
    pub fn sent(&self) -> u64 {
        self.0.sent()
    }
}

/// The chunk sender of a streaming run, counting what it sent.
#[derive(Debug)]
pub(crate) struct Chunks {
    tx: mpsc::Sender<Vec<u8>>,
    sent: u64,
}

impl Chunks {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self { tx, sent: 0 }
    }

    /// Sends one chunk, waiting for room; a closed receiver cancels the run.
    pub(crate) async fn send(&mut self, chunk: Vec<u8>) -> Result<(), ExecError> {
        self.tx.send(chunk).await.map_err(|_| ExecError::Cancelled)?;
        self.sent += 1;
        Ok(())
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }
}

/// Where the command and http runtimes put what they read: into a buffer parsed as JSON at the
/// end, or out as chunks; at most `max` bytes either way.
pub(crate) struct Collector {
    max: u64,
    total: u64,
    sink: Sink,
}

enum Sink {
    Buffer(Vec<u8>),
    Stream(Chunks),
}

impl Collector {
    fn new(max: u64, chunks: Option<Chunks>) -> Self {
        let sink = match chunks {
            Some(chunks) => Sink::Stream(chunks),
            None => Sink::Buffer(Vec::new()),
        };
        Self { max, total: 0, sink }
    }

    /// Takes `data`, refusing it whole if it would bring the total over the cap.
    pub(crate) async fn push(&mut self, data: &[u8]) -> Result<(), ExecError> {
        if data.is_empty() {
            return Ok(());
        }
        self.total = self.total.saturating_add(data.len() as u64);
        if self.total > self.max {
            return Err(self.over());
        }
        match &mut self.sink {
            Sink::Buffer(buffer) => buffer.extend_from_slice(data),
            Sink::Stream(chunks) => {
                for piece in data.chunks(MAX_CHUNK_BYTES) {
                    chunks.send(piece.to_vec()).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether `len` more bytes (announced, not yet read) would bring the total over the cap.
    pub(crate) fn would_overflow(&self, len: u64) -> bool {
        self.total.saturating_add(len) > self.max
    }

    /// The error of an output over the cap.
    pub(crate) fn over(&self) -> ExecError {
        ExecError::Failed(format!("output over {} bytes", self.max))
    }

    /// The buffer parsed as one JSON value, or the number of chunks sent.
    pub(crate) fn finish(self) -> Result<Produced, ExecError> {
        match self.sink {
            Sink::Stream(chunks) => Ok(Produced::Streamed(chunks.sent())),
            Sink::Buffer(buffer) => match serde_json::from_slice(&buffer) {
                Ok(value) => Ok(Produced::Value(value)),
                Err(e) => Err(ExecError::Failed(format!(
                    "the output is not one JSON value ({e}): {}",
                    prefix(&buffer, 200)
                ))),
            },
        }
    }
}

/// The first `max` bytes of `bytes` as text (lossy), trimmed, with `…` if cut.
pub(crate) fn prefix(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).trim().to_owned();
    if cut {
        text.push('…');
    }
    text
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Builtin;

    #[test]
    fn executor_is_shareable_and_its_run_is_send() {
        fn send_sync<T: Send + Sync + 'static>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Executor>();
        let e = Executor::new(Builtin::Echo.contract(), Runtime::Builtin { name: Builtin::Echo })
            .unwrap();
        let run = Run::new(Duration::from_secs(1), CancellationToken::new());
        send(&e.run(json!({}), run));
    }

    #[tokio::test]
    async fn collector_caps_and_parses() {
        let mut c = Collector::new(4, None);
        c.push(b"[1,").await.unwrap();
        assert!(c.would_overflow(2));
        assert!(!c.would_overflow(1));
        c.push(b"2").await.unwrap();
        let e = c.push(b"]").await.unwrap_err();
        assert_eq!(e.to_string(), "the capability failed: output over 4 bytes");

        let mut c = Collector::new(10, None);
        c.push(b"[1,2]").await.unwrap();
        assert!(matches!(c.finish(), Ok(Produced::Value(v)) if v == json!([1, 2])));
        let mut c = Collector::new(10, None);
        c.push(b"nope").await.unwrap();
        let e = c.finish().err().unwrap();
        assert!(e.to_string().contains("not one JSON value") && e.to_string().contains("nope"));
    }

    #[tokio::test]
    async fn collector_splits_chunks() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut c = Collector::new(u64::MAX, Some(Chunks::new(tx)));
        c.push(&vec![7; MAX_CHUNK_BYTES * 2 + 1]).await.unwrap();
        c.push(b"").await.unwrap();
        assert!(matches!(c.finish(), Ok(Produced::Streamed(3))));
        let sizes: Vec<usize> =
            std::iter::from_fn(|| rx.try_recv().ok()).map(|c| c.len()).collect();
        assert_eq!(sizes, [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 1]);
    }

    #[test]
    fn prefix_cuts_and_marks() {
        assert_eq!(prefix(b"  abc \n", 10), "abc");
        assert_eq!(prefix(b"abcdef", 3), "abc…");
    }
}

/// Arguments that passed an executor's input schema ([`Executor::check_args`]).
#[derive(Debug, Clone)]
pub struct ValidArgs {
    value: Value,
    capability: Cid,
}

impl ValidArgs {
    pub fn value(&self) -> &Value {
        &self.value
    }
}
