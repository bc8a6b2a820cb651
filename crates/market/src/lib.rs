//! Calls between nodes (DESIGN §5, protocol.md §8.5, §9): offers, selection, the call client
//! and server, two-party receipts and the policy that guards both sides.
//!
//! [`Market`] is the node's [`capmesh_mesh::Calls`] service: as a **provider** it answers
//! `Intent` with an `Offer` (or a `Negotiate` decline), checks a `TaskStart` against its offer,
//! policy, rate and concurrency limits and the contract, runs the capability through its
//! [`capmesh_exec::Executor`], signs a Receipt and answers `TaskDone` (inline, or `TaskAccepted`
//! then `TaskProgress`/`TaskDone` as its own requests); call ids are idempotency keys. As a
//! **caller**, [`Market::call`] validates the arguments, finds providers, asks the best few for
//! offers, ranks them by [`Weights`], reuses standing offers (a warm call is one round trip),
//! verifies output and receipt, appends the receipt to the ledger (flushed) before it returns,
//! then countersigns; it fails over down the ranking, a fan-out at a time, within the deadline
//! and [`MarketConfig::max_providers`], and cancels on request.
//!
//! ```no_run
//! # async fn example(market: capmesh_market::Market, cap: capmesh_types::Cid) {
//! use capmesh_market::CallRequest;
//! let outcome = market.call(CallRequest::new(cap, serde_json::json!({"text": "hi"}))).await;
//! match outcome {
//!     Ok(done) => println!("{:?} receipt {}", done.output, done.receipt_id),
//!     Err(e) => eprintln!("{} ({})", e, e.code()),
//! }
//! # }
//! ```
//!
//! **Invariant:** owns no swarm and no sled handle; bytes go through `capmesh-mesh` (which
//! verifies every envelope before the market sees it) — the caller's through a small seam the
//! mesh implements (`CallTransport`, so its tests script the peers) — records through
//! `capmesh-store`.

mod batch;
mod caller;
mod error;
mod offers;
mod provider;
mod receipt;
mod select;
mod transport;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use capmesh_mesh::{BoxFuture, Calls, Latency, Mesh, Served};
use capmesh_policy::{Admission, PolicyHandle};
use capmesh_store::Store;
use capmesh_types::{Cid, NodeKey, PeerId};
use capmesh_wire::{Body, Code, ErrorBody, Opened};
use tokio_util::sync::CancellationToken;

pub use caller::{CallEvent, CallOutcome, CallRequest};
pub use capmesh_store::{LedgerNote, SessionTag};
pub use error::{Attempt, CallError};
pub use provider::ServeSpec;
pub use receipt::{CHAIN_START, chain_next, json_digest};
pub use select::{Record, Weights, WeightsError};

/// Market settings; every default is on its field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MarketConfig {
    /// A call that ends within this window is answered with `TaskDone` directly; longer ones
    /// get `TaskAccepted` and a later `TaskDone` request. Must stay below the rpc timeout.
    /// Default 2 s.
    pub inline_window: Duration,
    /// Lifetime of offers this node issues. Default 5 min.
    pub offer_ttl: Duration,
    /// Most calls one offer covers. Default 1000.
    pub offer_calls: u32,
    /// Providers asked with `Intent` at once (one fan-out); when a fan-out yields no offer that
    /// serves the call, the next one asks the next providers of the ranking. Default 3.
    pub intent_fanout: usize,
    /// Caller side: the most providers one call contacts (asked for an offer, or started under
    /// a standing offer) over all its fan-outs; a [`CallRequest`] may name its own. At least 1.
    /// Default 12 (four fan-outs of 3).
    pub max_providers: usize,
    /// How long an `Intent` may take. Default 5 s.
    pub intent_timeout: Duration,
    /// How long discovery may take within a call (also bounded by the deadline). Default 5 s.
    pub discover_timeout: Duration,
    /// Providers considered per call. Default 16.
    pub find_limit: u32,
    /// Deadline of a call that names none. Default 30 s.
    pub default_deadline: Duration,
    /// Provider side: calls remembered (running and finished) for idempotency. Default 4096.
    pub max_calls: usize,
    /// Provider side: how long a finished call's answer is kept for repeats. Default 10 min.
    pub done_retention: Duration,
    /// Provider side: most bytes of finished answers kept for repeats (oldest go first).
    /// Default 64 MiB.
    pub max_kept_bytes: usize,
    /// Provider side: the furthest deadline a call may ask for (bounds how long a deferred
    /// `TaskDone` is retried). Default 1 day.
    pub max_deadline: Duration,
    /// Provider side: offers remembered. Default 16384.
    pub max_offers: usize,
    /// Provider side: callers tracked by the rate limiter. Default 4096.
    pub max_callers: usize,
    /// Caller side: calls in flight. Default 1024.
    pub max_in_flight: usize,
    /// Caller side: standing offers held. Default 4096.
    pub max_standing: usize,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            inline_window: Duration::from_secs(2),
            offer_ttl: Duration::from_secs(300),
            offer_calls: 1000,
            intent_fanout: 3,
            max_providers: 12,
            intent_timeout: Duration::from_secs(5),
            discover_timeout: Duration::from_secs(5),
            find_limit: 16,
            default_deadline: Duration::from_secs(30),
            max_calls: 4096,
            done_retention: Duration::from_secs(600),
            max_kept_bytes: 64 << 20,
            max_deadline: Duration::from_secs(86_400),
            max_offers: 16384,
            max_callers: 4096,
            max_in_flight: 1024,
            max_standing: 4096,
        }
    }
}

impl MarketConfig {
    pub fn with_inline_window(mut self, window: Duration) -> Self {
        self.inline_window = window;
        self
    }
    pub fn with_offer_ttl(mut self, ttl: Duration, calls: u32) -> Self {
        self.offer_ttl = ttl;
        self.offer_calls = calls.max(1);
        self
    }
    pub fn with_intent_fanout(mut self, n: usize) -> Self {
        self.intent_fanout = n.max(1);
        self
    }
    /// The most providers one call contacts (at least 1).
    pub fn with_max_providers(mut self, n: usize) -> Self {
        self.max_providers = n.max(1);
        self
    }
    pub fn with_default_deadline(mut self, d: Duration) -> Self {
        self.default_deadline = d;
        self
    }
}

/// Counters of what the market did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarketStats {
    /// Provider side.
    pub intents_served: u64,
    pub offers_issued: u64,
    pub tasks_started: u64,
    /// `TaskStart`s answered from the call table (repeated call ids).
    pub tasks_repeated: u64,
    pub tasks_deferred: u64,
    pub runs_ok: u64,
    pub runs_failed: u64,
    pub runs_cancelled: u64,
    pub countersignatures_stored: u64,
    /// Refusals this node sent, by [`Code::metric_label`].
    pub refused: BTreeMap<String, u64>,
    pub offers_evicted: u64,
    /// Caller side: calls that returned (from [`Market::call`]), and the failed ones by
    /// [`Code::metric_label`] (a peer's unknown code counts as `Other`).
    pub calls_ok: u64,
    pub calls_failed: u64,
    pub calls_failed_by: BTreeMap<String, u64>,
    /// Caller side: how long calls took, whole (validation, discovery, offers, failovers,
    /// receipt and ledger flush), by outcome.
    pub call_ok_latency: Latency,
    pub call_failed_latency: Latency,
    /// Rpc requests sent for calls (Intent, TaskStart, TaskCancel, Receipt).
    pub requests_sent: u64,
    pub failovers: u64,
    pub countersign_failures: u64,
    /// Provider ledger batches: flushes, and the operations they covered.
    pub ledger_flushes: u64,
    pub ledger_appends: u64,
    /// Caller ledger batches: flushes, and the receipts they covered.
    pub caller_ledger_flushes: u64,
    pub caller_ledger_receipts: u64,
}

/// How long the provider gathers its ledger work into one flush: nobody waits for it on a
/// call's critical path, and fewer flushes leave the disk to the callers' flushes.
const COUNTERSIGN_WINDOW: Duration = Duration::from_millis(50);

/// The call service of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Market {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: NodeKey,
    me: PeerId,
    mesh: Mesh,
    /// What the caller sends and asks through: the mesh, or scripted peers in tests.
    transport: Arc<dyn transport::CallTransport>,
    policy: PolicyHandle,
    admission: Admission,
    config: MarketConfig,
    /// Contracts by capability id, checked to hash to it, with compiled schemas (bounded).
    contracts: Mutex<HashMap<Cid, Arc<caller::Known>>>,
    served: RwLock<HashMap<Cid, Arc<provider::Serving>>>,
    provider: Mutex<provider::State>,
    caller: Mutex<caller::State>,
    stats: Mutex<MarketStats>,
    /// The provider's ledger work (its receipt copies, countersignatures), gathered into one
    /// flush per window (started by `Market::start`).
    ledger: std::sync::OnceLock<batch::Batcher>,
    /// The caller's receipts and countersignatures: one writer with no window, so the calls in
    /// flight while a flush runs share the next one (a flush each serialized them on the disk's
    /// sync). Started with the first receipt.
    caller_ledger: std::sync::OnceLock<batch::Batcher>,
    cancel: CancellationToken,
}

impl Market {
    /// A market for this node. [`Market::start`] plugs it into the mesh.
    pub fn new(
        key: NodeKey,
        mesh: Mesh,
        policy: PolicyHandle,
        config: MarketConfig,
        cancel: CancellationToken,
    ) -> Self {
        let transport: Arc<dyn transport::CallTransport> = Arc::new(mesh.clone());
        Self::with_transport(key, mesh, transport, policy, config, cancel)
    }

    /// A market whose caller goes through `transport` (the provider side through `mesh`).
    pub(crate) fn with_transport(
        key: NodeKey,
        mesh: Mesh,
        transport: Arc<dyn transport::CallTransport>,
        policy: PolicyHandle,
        config: MarketConfig,
        cancel: CancellationToken,
    ) -> Self {
        let me = key.peer_id();
        Self {
            inner: Arc::new(Inner {
                key,
                me,
                admission: Admission::new(config.max_callers),
                provider: Mutex::new(provider::State::new(&config)),
                caller: Mutex::new(caller::State::new(&config)),
                contracts: Mutex::new(HashMap::new()),
                served: RwLock::new(HashMap::new()),
                stats: Mutex::new(MarketStats::default()),
                ledger: std::sync::OnceLock::new(),
                caller_ledger: std::sync::OnceLock::new(),
                mesh,
                transport,
                policy,
                config,
                cancel,
            }),
        }
    }

    /// Serves call kinds from now on, with the reputation of providers rebuilt from this
    /// node's ledger. Blocking (reads the ledger): call it before the node takes calls, from
    /// within the runtime. Returns the service the mesh refers to weakly (the market holds
    /// the mesh): keep it while the node runs.
    pub fn start(&self) -> Result<Arc<dyn Calls>, capmesh_store::StoreError> {
        self.load_reputation()?;
        let (store, cancel) = (self.store().clone(), &self.inner.cancel);
        let _ = self.inner.ledger.set(batch::Batcher::start(
            store,
            COUNTERSIGN_WINDOW,
            cancel.child_token(),
        ));
        let service: Arc<dyn Calls> = Arc::new(self.clone());
        self.inner.mesh.set_calls(&service);
        Ok(service)
    }

    /// Waits until the ledger batchers have finished their last batch (after the market's
    /// cancellation token fired), so the replica can be closed. Cancel-safe.
    pub async fn stopped(&self) {
        for l in [&self.inner.ledger, &self.inner.caller_ledger] {
            if let Some(l) = l.get() {
                l.stopped().await;
            }
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.me
    }

    pub fn policy(&self) -> &PolicyHandle {
        &self.inner.policy
    }

    pub fn stats(&self) -> MarketStats {
        let mut stats = lock(&self.inner.stats).clone();
        if let Some(l) = self.inner.ledger.get() {
            (stats.ledger_flushes, stats.ledger_appends) = l.counts();
        }
        if let Some(l) = self.inner.caller_ledger.get() {
            (stats.caller_ledger_flushes, stats.caller_ledger_receipts) = l.counts();
        }
        stats
    }

    fn store(&self) -> &Store {
        self.inner.mesh.store()
    }

    fn ledger(&self) -> Result<&batch::Batcher, String> {
        self.inner.ledger.get().ok_or_else(|| "the market is not started".to_string())
    }

    /// The caller's ledger writer (started on first use, under the market's token).
    fn caller_ledger(&self) -> &batch::Batcher {
        self.inner.caller_ledger.get_or_init(|| {
            batch::Batcher::start(
                self.store().clone(),
                Duration::ZERO,
                self.inner.cancel.child_token(),
            )
        })
    }

    /// Spawns background work owned by the node's cancellation token: stopping or dropping
    /// the node ends it, so nothing outlives the node holding its store.
    pub(crate) fn spawn_owned(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::spawn(self.inner.cancel.clone().run_until_cancelled_owned(work));
    }

    fn bump(&self, f: impl FnOnce(&mut MarketStats)) {
        f(&mut lock(&self.inner.stats));
    }

    fn refused(&self, code: &Code) {
        *lock(&self.inner.stats).refused.entry(code.metric_label().to_string()).or_default() += 1;
    }
}

impl Calls for Market {
    fn serve(&self, peer: PeerId, request: Opened) -> BoxFuture<Result<Served, ErrorBody>> {
        let market = self.clone();
        Box::pin(async move {
            let result = match &request.payload.body {
                Body::Intent(_) | Body::Negotiate(_) | Body::TaskStart(_) | Body::TaskCancel(_) => {
                    market.serve_provider(peer, &request).await
                }
                Body::Receipt(r) => market.store_countersignature(peer, r).await,
                Body::TaskProgress(_) | Body::TaskDone(_) => {
                    market.serve_followup(peer, &request).await
                }
                other => Err(error_body(
                    Code::NotFound,
                    format!("{:?} is not a call kind", other.kind()),
                    false,
                    None,
                )),
            };
            if let Err(e) = &result {
                market.refused(&e.code);
            }
            result
        })
    }
}

pub(crate) fn error_body(
    code: Code,
    message: impl Into<String>,
    retryable: bool,
    retry_after_ms: Option<u64>,
) -> ErrorBody {
    ErrorBody { code, message: message.into(), retryable, retry_after_ms }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) use capmesh_mesh::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_outside_the_protocol_are_counted_as_other() {
        let mut stats = MarketStats::default();
        for code in [Code::RateLimited, Code::BadReceipt, Code::parse("a peer's invention")] {
            *stats.refused.entry(code.metric_label().to_string()).or_default() += 1;
        }
        let labels: Vec<&str> = stats.refused.keys().map(String::as_str).collect();
        assert_eq!(labels, ["BadReceipt", "Other", "RateLimited"]);
    }
}
