//! The live policy: swapped whole on reload, watched for changes of its file.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{Policy, PolicyError};

/// The live policy: an `Arc<Policy>` swapped on each successful reload. Cheap to clone; clones
/// share the policy.
///
/// Readers take [`PolicyHandle::current`] once per decision and keep that snapshot, so a
/// decision never mixes two policies.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: RwLock<Arc<Policy>>,
    /// The file, for handles made by [`PolicyHandle::open`].
    path: Option<PathBuf>,
    generation: AtomicU64,
    /// The file's stamp when it was last read (`None`: it did not exist).
    read_stamp: Mutex<Option<Stamp>>,
}

/// What the watcher compares: modification time and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self { modified: metadata.modified().ok(), len: metadata.len() }
    }
}

impl PolicyHandle {
    /// A handle on a fixed policy, with no file: [`PolicyHandle::reload`] does nothing.
    pub fn new(policy: Policy) -> Self {
        Self::with(policy, None, None)
    }

    /// Loads the policy at `path` now ([`Policy::load`]: a missing file is the default policy)
    /// and remembers the path for [`PolicyHandle::reload`] and [`PolicyHandle::watch`].
    pub fn open(path: &Path) -> Result<Self, PolicyError> {
        // The stamp is taken before reading, so a write racing the read is seen as a change.
        let stamp = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
        let policy = Policy::load(path)?;
        Ok(Self::with(policy, Some(path.to_path_buf()), stamp))
    }

    fn with(policy: Policy, path: Option<PathBuf>, stamp: Option<Stamp>) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(policy)),
                path,
                generation: AtomicU64::new(0),
                read_stamp: Mutex::new(stamp),
            }),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The file this handle reloads from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Re-reads the file and swaps the policy in. On error the old policy stays in force and the
    /// error is returned for the caller to log. Unlike [`Policy::load`], a file that no longer
    /// exists is an error ([`PolicyError::Io`], not found), not a fall-back to allowing
    /// everything. A handle without a file ([`PolicyHandle::new`]) does nothing.
    ///
    /// Reads the file synchronously (it is small); the node calls it on SIGHUP.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.inner.path else { return Ok(()) };
        let stamp = std::fs::metadata(path).ok().map(|m| Stamp::of(&m));
        *self.inner.read_stamp.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Io { path: path.clone(), source })?;
        let policy = crate::file::parse(&text, Some(path))?;
        self.swap(policy);
        Ok(())
    }

    /// Bumps on each successful reload (0 after `new` or `open`).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn swap(&self, policy: Policy) {
        let mut current = self.inner.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(policy);
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Spawns a task that checks the file's modification time and length every `every` and
    /// reloads when they change: a file created after `open` is picked up; a file that fails to
    /// parse is logged (warn) and the last good policy kept until the file changes again; a
    /// deleted file keeps the last good policy, with a warning. Ends when `cancel` is cancelled.
    /// A handle without a file ends at once. Must be called within a tokio runtime.
    ///
    /// SIGHUP is wired by the node, which calls [`PolicyHandle::reload`].
    pub fn watch(&self, every: Duration, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            let Some(path) = handle.inner.path.clone() else { return };
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => handle.poll_file(&path).await,
                }
            }
        })
    }

    /// One watcher step: reloads if the file's stamp differs from the one last read.
    async fn poll_file(&self, path: &Path) {
        let stamp = match tokio::fs::metadata(path).await {
            Ok(metadata) => Some(Stamp::of(&metadata)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot check policy file");
                return;
            }
        };
        {
            let mut seen = self.inner.read_stamp.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == stamp {
                return;
            }
            if stamp.is_none() {
                *seen = None;
                tracing::warn!(
                    path = %path.display(),
                    "policy file deleted; keeping the last good policy"
                );
                return;
            }
        }
        // A small file: read off the async workers all the same.
        let handle = self.clone();
        match tokio::task::spawn_blocking(move || handle.reload()).await {
            Ok(Ok(())) => tracing::info!(
                path = %path.display(),
                generation = self.generation(),
                "policy reloaded"
            ),
            Ok(Err(e)) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "policy file not reloaded; keeping the last good policy"
            ),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "policy reload failed"),
        }
    }
}
