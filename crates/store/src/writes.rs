//! Writing a commit while the next batch is folded.
//!
//! Applying a batch to sled is about half of a fold's work, and it does
//! not need the fold: the fold of the next batch needs only to read what
//! the previous one wrote. So a commit's writes are kept as a map
//! ([`Writes`]), handed to a thread of their own that applies them as one
//! atomic sled batch (with the checkpoint) under the commit lock, and read
//! by the next batch's fold from the map until they are applied. Queries
//! read sled: they see a commit once it is applied, whole, with its
//! checkpoint. At most one commit is in flight.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::{CommitListener, Committed, StoreError};

/// The writes of one commit, readable before they are applied.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    entries: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Writes {
    pub(crate) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.entries.insert(key.into(), Some(value.into()));
    }

    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.entries.insert(key.into(), None);
    }

    /// What these writes make of `key`: `None` when they leave it alone,
    /// `Some(None)` when they remove it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.entries.get(key).map(Option::as_deref)
    }

    /// The writes as one sled batch.
    pub(crate) fn to_batch(&self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in &self.entries {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        batch
    }
}

/// A commit for the applier.
struct Job {
    writes: Arc<Writes>,
    committed: Committed,
}

/// Where the applier says how far it is.
#[derive(Default)]
struct Progress {
    /// Commits handed over and not yet applied (0 or 1).
    in_flight: usize,
    /// Why applying a commit failed: the views stay at the commit before
    /// it, and nothing more is applied.
    failed: Option<StoreError>,
}

/// What the applier shares with the store.
pub(crate) struct Shared {
    pub(crate) views: sled::Tree,
    pub(crate) commit: Arc<RwLock<()>>,
    pub(crate) listener: Arc<RwLock<Option<CommitListener>>>,
    /// The commit handed over and not yet applied: what reads made for
    /// the next fold see instead of sled.
    pub(crate) pending: Arc<RwLock<Option<Arc<Writes>>>>,
}

/// The thread that applies commits.
pub(crate) struct Applier {
    jobs: Option<SyncSender<Job>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    pub(crate) fn start(shared: Shared) -> Result<Applier, StoreError> {
        let (jobs, queue) = sync_channel::<Job>(1);
        let progress: Arc<(Mutex<Progress>, Condvar)> = Arc::default();
        let reported = progress.clone();
        let thread = std::thread::Builder::new()
            .name("views-writer".into())
            .spawn(move || {
                for job in queue {
                    let applied = {
                        let _exclusive = shared
                            .commit
                            .write()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        shared.views.apply_batch(job.writes.to_batch())
                    };
                    let (lock, changed) = &*reported;
                    let mut state = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    match applied {
                        Ok(()) => {
                            let mut pending = shared
                                .pending
                                .write()
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                            if pending
                                .as_ref()
                                .is_some_and(|writes| Arc::ptr_eq(writes, &job.writes))
                            {
                                *pending = None;
                            }
                            drop(pending);
                            if let Some(listener) = shared
                                .listener
                                .read()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .as_ref()
                            {
                                listener(&job.committed);
                            }
                        }
                        Err(error) => {
                            state.failed.get_or_insert(StoreError::Sled(error));
                        }
                    }
                    state.in_flight -= 1;
                    changed.notify_all();
                }
            })
            .map_err(|err| StoreError::Sled(sled::Error::Io(err)))?;
        Ok(Applier {
            jobs: Some(jobs),
            progress,
            thread: Some(thread),
        })
    }

    /// Waits until every commit handed over is applied; the first failure
    /// to apply one, if any (once: the next call says nothing more).
    pub(crate) fn settle(&self) -> Result<(), StoreError> {
        let (lock, changed) = &*self.progress;
        let mut state = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while state.in_flight > 0 {
            state = changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        match state.failed.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The failure to apply a commit, if one happened (without waiting).
    pub(crate) fn failure(&self) -> Result<(), StoreError> {
        let (lock, _) = &*self.progress;
        let mut state = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.failed.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Hands a commit over, once the one before it is applied.
    pub(crate) fn hand_over(
        &self,
        shared_pending: &RwLock<Option<Arc<Writes>>>,
        writes: Writes,
        committed: Committed,
    ) -> Result<(), StoreError> {
        self.settle()?;
        let writes = Arc::new(writes);
        *shared_pending
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(writes.clone());
        {
            let (lock, _) = &*self.progress;
            lock.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .in_flight += 1;
        }
        let job = Job { writes, committed };
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job));
        if !matches!(sent, Some(Ok(()))) {
            let (lock, _) = &*self.progress;
            lock.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .in_flight -= 1;
            return Err(StoreError::Sled(sled::Error::ReportableBug(
                "the views writer thread is gone".to_owned(),
            )));
        }
        Ok(())
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // No more jobs: the thread applies what it has and ends.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
