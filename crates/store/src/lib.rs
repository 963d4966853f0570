//! The KPI views in sled.
//!
//! [`Store::ingest`] takes a batch of messages read from the stream,
//! validates each, folds the valid ones (through the domain's
//! [`BatchFold`]), parks the invalid ones with their reason, and writes all
//! of it **and** the stream sequence it reflects in one atomic batch. sled
//! flushes in the background; after a crash the store reopens at a
//! consistent checkpoint, and the projector re-reads the stream from the
//! next sequence. Exactly-once in effect, without a flush per batch.
//!
//! Queries ([`Store::snapshot`]) sum day buckets over a period, so any
//! period costs one short range scan per unit, and take the commit lock
//! shared so that an answer never mixes two batches.
//!
//! Counters are rolled up at fold time by the tree of each count's day
//! (CONTRACT §1.1), open cases by the tree of the views' live day. Both
//! depend on the unit registry, not on the log: when the registry changes
//! the units already counted, or today enters another epoch of the tree,
//! [`Store::adopt_units`] and [`Store::follow_today`] recompute every
//! rollup from the stored case records, without re-reading the stream.
//!
//! [`BatchFold`]: kpi_domain::fold::BatchFold

mod error;
mod flow;
mod ingest;
mod keys;
mod queries;
mod rollups;
pub mod rows;
mod stream;
mod types;
mod writes;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use kpi_domain::{Record, RecordKey};

use error::corrupt;

pub use error::StoreError;
pub use flow::{FlowGroup, FlowTable, LateList};
pub use keys::VIEW_PREFIXES;
pub use types::{
    content_of, BatchReport, Committed, ExportPart, FoldTotals, HeldPage, Incoming, OpenPage,
    ParkCause, ParkedEvent, ScoreSnapshot, Snapshot, StoreOptions, ViewsExport,
};

/// The stored layout version this build reads and writes (4: lean case
/// records, which keep a hash of each event's content, not its data; 5: a
/// unit's case-flow rows of one level and time in one value; 6: a unit's
/// month of rate counters with its days in one value; 7: a case record
/// names its unit once, not per event; 8: case-flow rows count the late
/// resolutions with a letter by their day, which the late-case index keeps
/// apart; 9: a case record keeps 8-byte content hashes, its events' times
/// and sequences as differences from its first's).
pub const FORMAT_VERSION: &str = "9";

/// The counting rules this build folds with: bumped whenever what an event
/// contributes changes, so that views folded by other rules are refused
/// instead of mixed.
pub const RULES_VERSION: &str = "6";

/// The sled-backed views. One writer ([`Store::ingest`]), many readers.
pub struct Store {
    db: sled::Db,
    views: sled::Tree,
    /// Held exclusively while a batch is applied, shared by queries.
    commit: Arc<RwLock<()>>,
    /// Serialises writers: counters are read, changed and written back.
    writer: Mutex<()>,
    /// Told of every commit (the API's caches and live streams).
    listener: Arc<RwLock<Option<CommitListener>>>,
    /// The commit handed to the writer thread and not yet applied
    /// ([`writes`]): the next fold reads it before sled.
    pending: Arc<RwLock<Option<Arc<writes::Writes>>>>,
    /// The writer thread, once a pipelined fold has started it.
    applier: Mutex<Option<writes::Applier>>,
    /// Which of [`keys::GENERATIONS`] the rollups are read from; changed
    /// under the exclusive commit lock.
    generation: std::sync::atomic::AtomicU8,
    /// Where messages are read back from (the projector's stream).
    log: RwLock<Option<LogReader>>,
}

/// Called after each commit, outside the commit lock.
pub type CommitListener = Box<dyn Fn(&Committed) + Send + Sync>;

impl Store {
    /// Opens (or creates) the views in `dir`.
    ///
    /// One process at a time: sled locks the directory. A store dropped by
    /// this process releases it a moment later, so opening waits up to two
    /// seconds for the lock before saying who may hold it.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(Some(options.flush_every_ms));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            dir: dir.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => return Err(err.into()),
            }
        };
        let views = db.open_tree("views")?;
        match views.get(keys::FORMAT)? {
            None => {
                views.insert(keys::FORMAT, FORMAT_VERSION.as_bytes())?;
                views.insert(keys::RULES, RULES_VERSION.as_bytes())?;
            }
            Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => {}
            Some(found) => {
                return Err(StoreError::Format {
                    found: String::from_utf8_lossy(&found).into_owned(),
                })
            }
        }
        match views.get(keys::RULES)? {
            Some(found) if found.as_ref() == RULES_VERSION.as_bytes() => {}
            found => {
                return Err(StoreError::Rules {
                    found: found.map_or_else(
                        || "(unknown)".to_owned(),
                        |found| String::from_utf8_lossy(&found).into_owned(),
                    ),
                })
            }
        }
        let generation = match views.get(keys::ROLLUP_GENERATION)?.as_deref() {
            None | Some([0]) => 0,
            Some([1]) => 1,
            Some(other) => return Err(corrupt(keys::ROLLUP_GENERATION, format!("{other:?}"))),
        };
        Ok(Store {
            db,
            views,
            commit: Arc::new(RwLock::new(())),
            writer: Mutex::new(()),
            listener: Arc::new(RwLock::new(None)),
            pending: Arc::new(RwLock::new(None)),
            applier: Mutex::new(None),
            generation: std::sync::atomic::AtomicU8::new(generation),
            log: RwLock::new(None),
        })
    }

    /// Waits until the commit handed to the writer thread, if any, is
    /// applied; the error that stopped it, if one did.
    pub fn settle(&self) -> Result<(), StoreError> {
        match self
            .applier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            Some(applier) => applier.settle(),
            None => Ok(()),
        }
    }

    /// Why what was committed could not be written, if it could not: the
    /// writer thread's failure to apply a commit, or sled's to write to
    /// disk what it applied (a disk that filled after the last batch is
    /// noticed although no batch follows). For a fold with nothing to do.
    pub fn check_written(&self) -> Result<(), StoreError> {
        if let Some(applier) = self
            .applier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            applier.failure()?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Hands a commit to the writer thread (started on first use).
    pub(crate) fn hand_over(
        &self,
        writes: writes::Writes,
        committed: Committed,
    ) -> Result<(), StoreError> {
        let mut applier = self
            .applier
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if applier.is_none() {
            *applier = Some(writes::Applier::start(writes::Shared {
                views: self.views.clone(),
                commit: self.commit.clone(),
                listener: self.listener.clone(),
                pending: self.pending.clone(),
            })?);
        }
        match applier.as_ref() {
            Some(applier) => applier.hand_over(&self.pending, writes, committed),
            None => Ok(()),
        }
    }

    /// The value of `key` for the next fold: as the commit in flight
    /// leaves it, else as stored.
    pub(crate) fn stored(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        if let Some(pending) = self
            .pending
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            if let Some(value) = pending.get(key) {
                return Ok(value.map(sled::IVec::from));
            }
        }
        Ok(self.views.get(key)?)
    }

    /// The rollups queries read now: under the commit lock (shared or
    /// exclusive) or the writer lock, they stay the same.
    pub(crate) fn rollups(&self) -> keys::Rollups {
        keys::GENERATIONS[self.generation() as usize]
    }

    pub(crate) fn generation(&self) -> u8 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Calls `listener` after every commit from now on (one listener).
    pub fn set_commit_listener(&self, listener: CommitListener) {
        *self
            .listener
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(listener);
    }

    fn tell(&self, committed: &Committed) {
        if let Some(listener) = self
            .listener
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            listener(committed);
        }
    }

    /// Writes everything to disk now (on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.settle()?;
        self.db.flush()?;
        Ok(())
    }
}

impl Store {
    /// The record stored under `key`, if any.
    pub fn load_record(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        let stored_key = keys::record(key);
        match self.views.get(&stored_key)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|err| corrupt(&stored_key, err)),
        }
    }

    /// Reads messages back from the log from now on: what the fold needs
    /// for the rare decisions a record cannot make alone (CONTRACT §1.2's
    /// last tie-break, and the bytes of an event a conflict displaced).
    pub fn set_log_reader(&self, reader: LogReader) {
        *self
            .log
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reader);
    }

    /// The message the log holds at `sequence`.
    pub(crate) fn read_back(&self, sequence: u64) -> Result<Option<LoggedMessage>, StoreError> {
        let reader = self
            .log
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(StoreError::NoLog { sequence })?;
        reader(sequence).map_err(|detail| StoreError::Log { sequence, detail })
    }
}

/// A message as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedMessage {
    pub subject: String,
    pub payload: Vec<u8>,
    pub published: Option<chrono::DateTime<chrono::Utc>>,
}

/// Reads the message at a stream sequence (`None`: the log has none).
pub type LogReader =
    std::sync::Arc<dyn Fn(u64) -> Result<Option<LoggedMessage>, String> + Send + Sync>;
