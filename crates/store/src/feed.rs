//! The changefeed: the change log read from a sequence number, at least once, through a
//! bounded channel. Only flushed (acknowledged) changes are delivered.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{Change, Store, StoreError, keys};

/// A subscriber's end of the changefeed. Dropping it stops the feeder thread.
#[derive(Debug)]
pub struct Subscription {
    pub rx: mpsc::Receiver<Change>,
}

impl Store {
    /// The latest flushed change-log sequence number (0 when empty).
    pub fn head(&self) -> u64 {
        self.inner.head.seq.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Changes with sequence ≥ `from`, up to the flushed head, in order.
    pub fn changes(&self, from: u64, max: usize) -> Result<Vec<Change>, StoreError> {
        let head = self.inner.head.seq.lock().unwrap_or_else(|e| e.into_inner()).0;
        let start = keys::log(from);
        let mut out = Vec::new();
        for entry in self.inner.db.range(start..).take(max) {
            let (k, v) = entry?;
            if k.first() != Some(&keys::LOG) {
                break;
            }
            let seq = keys::u64_at(&k, 1).ok_or_else(|| StoreError::Corrupt("log key".into()))?;
            if seq > head {
                break;
            }
            out.push(
                Change::decode(seq, &v)
                    .ok_or_else(|| StoreError::Corrupt(format!("log entry {seq}")))?,
            );
        }
        Ok(out)
    }

    /// Follows the change log from `from`: every change with sequence ≥ `from` is sent, in
    /// order, at least once, through a channel of `capacity` (a slow subscriber slows only its
    /// own feeder). A subscriber that restarts resumes from the last sequence it processed.
    pub fn subscribe(&self, from: u64, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let store = self.clone();
        std::thread::Builder::new()
            .name("capmesh-store-feed".into())
            .spawn(move || feed(store, from, tx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "changefeed thread did not start"));
        Subscription { rx }
    }
}

fn feed(store: Store, mut next: u64, tx: mpsc::Sender<Change>) {
    loop {
        let batch = match store.changes(next, 256) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "changefeed read failed");
                return;
            }
        };
        if batch.is_empty() {
            // Caught up: wait for the head to move (or the subscriber to leave).
            let head = &store.inner.head;
            let guard = head.seq.lock().unwrap_or_else(|e| e.into_inner());
            if guard.1 {
                return;
            }
            if guard.0 < next {
                let _ = head.moved.wait_timeout(guard, Duration::from_millis(200));
            }
            if tx.is_closed() {
                return;
            }
            continue;
        }
        for change in batch {
            next = change.seq + 1;
            if tx.blocking_send(change).is_err() {
                return;
            }
        }
    }
}
