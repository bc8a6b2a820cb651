//! Ledger work gathered into one flush (group commit). A batcher runs queued operations one
//! after another on one blocking thread, flushes once, then answers each: an answer always
//! follows the flush, so nothing acknowledged is lost, and many calls in flight share a flush
//! instead of paying one each (and a blocking-pool thread each). The provider uses one with a
//! window for its copies of receipts and the countersignatures it receives, which nobody waits
//! for on a call's critical path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use capmesh_store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Most operations per flush.
const MAX_BATCH: usize = 256;
/// Operations waiting for the batcher; more wait for room (backpressure).
const QUEUE: usize = 1024;

/// Why ledger work was not done: a protocol code (`NotFound`, `Internal`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub code: capmesh_wire::Code,
    pub message: String,
}

impl Refused {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self { code: capmesh_wire::Code::Internal, message: e.to_string() }
    }
}

/// What an operation did: the sequence number of the entry it concerns, and whether it
/// appended (`false`: the entry was there already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    pub seq: u64,
    pub fresh: bool,
}

/// One unit of ledger work: appends without flushing (the batch flushes) and says what it did.
pub(crate) type Op = Box<dyn FnOnce(&Store) -> Result<Done, Refused> + Send>;

type Job = (Op, oneshot::Sender<Result<Done, Refused>>);

/// Sends work to a batching task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
    counts: Arc<Counts>,
    /// Fires when the task has ended.
    ended: CancellationToken,
}

/// Flushes done and operations they covered.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub flushes: AtomicU64,
    pub ops: AtomicU64,
}

impl Batcher {
    /// Starts the task for `store`: after the first job arrives it gathers more for `window`
    /// (zero: only those already queued). Ends on `cancel` or when every sender is gone.
    pub(crate) fn start(store: Store, window: Duration, cancel: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let counts_for_task = counts.clone();
        let ended = CancellationToken::new();
        let guard = ended.clone().drop_guard();
        tokio::spawn(async move {
            let _ended = guard;
            run(store, window, rx, cancel, counts_for_task).await;
        });
        Self { tx, counts, ended }
    }

    /// Waits until the task has ended.
    pub(crate) async fn stopped(&self) {
        self.ended.cancelled().await;
    }

    /// (flushes, operations) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.counts.flushes.load(Ordering::Relaxed), self.counts.ops.load(Ordering::Relaxed))
    }

    /// Runs `op` in the next batch; returns its answer once the batch is flushed.
    pub(crate) async fn run(&self, op: Op) -> Result<Done, Refused> {
        let rx = self.submit(op).await?;
        rx.await.map_err(|_| Refused::internal("the ledger is closed"))?
    }

    /// Queues `op` (waiting only for room in the queue) and returns where its answer will
    /// come. Jobs run in the order they were queued.
    pub(crate) async fn submit(
        &self,
        op: Op,
    ) -> Result<oneshot::Receiver<Result<Done, Refused>>, Refused> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((op, reply)).await.map_err(|_| Refused::internal("the ledger is closed"))?;
        Ok(rx)
    }
}

async fn run(
    store: Store,
    window: Duration,
    mut rx: mpsc::Receiver<Job>,
    cancel: CancellationToken,
    counts: Arc<Counts>,
) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => {
                // Whatever was queued is applied and flushed before the task ends: the
                // provider queued its receipt copies before their answers left.
                rx.close();
                let mut rest = Vec::new();
                while let Some(job) = rx.recv().await {
                    rest.push(job);
                }
                if !rest.is_empty() {
                    apply(store.clone(), rest, &counts).await;
                }
                return;
            }
            first = rx.recv() => match first {
                Some(f) => f,
                None => return,
            },
        };
        let mut batch = vec![first];
        if !window.is_zero() {
            let deadline = tokio::time::sleep(window);
            tokio::pin!(deadline);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    _ = &mut deadline => break,
                    next = rx.recv() => match next {
                        Some(n) => batch.push(n),
                        None => break,
                    },
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        apply(store.clone(), batch, &counts).await;
    }
}

/// Runs a batch on the blocking pool, flushes once, answers each job.
async fn apply(store: Store, batch: Vec<Job>, counts: &Counts) {
    counts.flushes.fetch_add(1, Ordering::Relaxed);
    counts.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let done = tokio::task::spawn_blocking(move || {
        let mut answers = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (op, reply) in batch {
            answers.push(op(&store));
            replies.push(reply);
        }
        let flushed = store
            .ledger_flush()
            .map_err(|e| Refused::internal(format!("ledger flush failed: {e}")));
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(flushed.clone().and(answer));
        }
    })
    .await;
    if done.is_err() {
        tracing::error!("a ledger batch panicked");
    }
}
