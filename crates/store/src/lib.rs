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

mod keys;
mod month;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Datelike, Utc};
use kpi_domain::fold::{BatchChanges, BatchFold, RecordSource};
use kpi_domain::units::Fingerprint;
use kpi_domain::{
    CounterDelta, Counters, Day, Folded, LiveCounts, Moment, OpenDelta, Record, RecordKey,
    RecordedEvent, UnitIdx, UnitRegistry, CONFLICT_REASON,
};
use kpi_events::{Event, EventError, Validation};
use serde::{Deserialize, Serialize};

pub use keys::VIEW_PREFIXES;

/// The stored layout version this build reads and writes.
const FORMAT_VERSION: &[u8] = b"3";

/// The counting rules this build folds with: bumped whenever what an event
/// contributes changes, so that views folded by other rules are refused
/// instead of mixed.
pub const RULES_VERSION: &str = "4";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored entry {key:?} cannot be read: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the data directory holds views of format {found}, this build reads format 3; rebuild the views: move the directory aside and start the projector again (it re-reads the stream from the start)")]
    Format { found: String },
    #[error(transparent)]
    UnknownUnit(#[from] kpi_domain::UnknownUnit),
    #[error(
        "the views were folded with counting rules {found}; this build counts with rules {RULES_VERSION}: \
         rebuild them with the rules of this build: stop the projector, move its data directory aside and \
         start it again (it folds the whole log anew; README, Rebuilding the views)"
    )]
    Rules { found: String },
    #[error(
        "counter {counter} of unit {unit} on {day} would go below zero: the views disagree with the log. \
         Nothing of this batch was written. Rebuild the views: stop the projector, move its data directory \
         aside and start it again (it folds the whole log anew; README, Rebuilding the views)"
    )]
    Underflow {
        unit: String,
        day: String,
        counter: &'static str,
    },
    #[error(
        "the stream was created at {now} but the views were folded from a stream created at {folded_from}: \
         it was recreated, and its sequences are not the ones the checkpoint counts; rebuild the views: \
         stop the projector, move its data directory aside and start it again"
    )]
    StreamChanged { folded_from: String, now: String },
    #[error(
        "the stream starts at sequence {first} but the views reflect only up to {checkpoint}: the events \
         after {checkpoint} and before {first} were removed before they were folded; restore the stream \
         or rebuild the views from what is left (move the data directory aside)"
    )]
    StreamGap { first: u64, checkpoint: u64 },
    #[error(
        "the views in {dir} are in use by another process (a running projector?); stop it first"
    )]
    Locked { dir: String },
}

impl StoreError {
    /// The disk holding the views is full: nothing was committed, and the
    /// views resume from their checkpoint once there is space again.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sled(sled::Error::Io(err)) => {
                err.kind() == std::io::ErrorKind::StorageFull
                    || err.raw_os_error() == Some(28)
                    || err.to_string().contains("No space left on device")
            }
            _ => false,
        }
    }
}

fn corrupt(key: &[u8], detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache, in bytes: the bound on the store's memory.
    pub cache_bytes: u64,
    /// How often sled flushes to disk in the background.
    pub flush_every_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 * 1024 * 1024,
            flush_every_ms: 500,
        }
    }
}

/// One message as read from the stream, validated.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub sequence: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// When the stream stored it, if known.
    pub published: Option<DateTime<Utc>>,
    /// The parked event this message sends again after a fix
    /// (`kpictl redrive`): once this one is valid, that one is retired.
    pub redrive_of: Option<u64>,
    /// Messages the stream held after this one when it was read (0 when
    /// unknown): how far the views are behind the log.
    pub behind: u64,
    /// The event, or why it is invalid.
    pub event: Result<Event, EventError>,
}

impl<'a> Incoming<'a> {
    /// Validates a message (CONTRACT §2, and its subject) as of the time
    /// the stream stored it, so that every replay decides alike. This is
    /// the costly part of ingesting; it may run on another thread than
    /// [`Store::ingest`].
    pub fn validate(
        sequence: u64,
        subject: &'a str,
        payload: &'a [u8],
        published: Option<DateTime<Utc>>,
        units: &UnitRegistry,
    ) -> Incoming<'a> {
        let validation = Validation::new(units, published.unwrap_or_else(Utc::now));
        Incoming {
            sequence,
            subject,
            payload,
            published,
            redrive_of: None,
            behind: 0,
            event: kpi_events::parse_message(subject, payload, &validation),
        }
    }
}

/// An invalid event kept aside with its reason: never counted, never lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub sequence: u64,
    pub subject: String,
    /// Exactly the bytes that were published.
    pub payload: Vec<u8>,
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub reason: String,
    /// When the stream stored it (Unix seconds), if known.
    pub published_unix: Option<i64>,
}

impl ParkedEvent {
    /// A message kept aside as it came.
    fn of_message(message: &Incoming<'_>, field: Option<String>, reason: String) -> ParkedEvent {
        ParkedEvent {
            sequence: message.sequence,
            subject: message.subject.to_owned(),
            payload: message.payload.to_vec(),
            field,
            reason,
            published_unix: message.published.map(|at| at.timestamp()),
        }
    }

    /// A new event for a case that holds the most events one may.
    fn over_limit(message: &Incoming<'_>, case_id: &str) -> ParkedEvent {
        ParkedEvent::of_message(
            message,
            Some("case_id".to_owned()),
            format!(
                "case {case_id} already holds {} distinct events, the most one case may: this one is kept aside \
                 and counts nowhere (a sender flooding one case code? `kpictl case` shows its events)",
                kpi_domain::MAX_EVENTS_PER_RECORD
            ),
        )
    }

    /// The loser of an identity conflict, shown in the form the record
    /// keeps (the same whichever of the two arrived first).
    fn conflict(case_id: &str, loser: &RecordedEvent, winner: &RecordedEvent) -> ParkedEvent {
        ParkedEvent {
            sequence: loser.sequence,
            subject: kpi_events::subject_for(&loser.unit_id, loser.kind()),
            payload: loser.to_json(case_id),
            field: Some("event_id".to_owned()),
            // The same words whichever arrived first (`kpictl case` shows
            // the stream sequences).
            reason: format!(
                "{CONFLICT_REASON}: in case {case_id} the event that counts under {} is the {} of {}",
                loser.event_id,
                winner.kind(),
                winner.at.to_utc().with_timezone(&kpi_domain::vietnam()).to_rfc3339(),
            ),
            published_unix: None,
        }
    }
}

/// A page of open cases: (due time, case code, has an apology letter).
#[derive(Debug, Clone, Default)]
pub struct OpenPage {
    pub sequence: u64,
    pub cases: Vec<(Moment, String, bool)>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Vec<u8>>,
}

/// The counters of a QĐ 766 score at one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSnapshot {
    pub sequence: u64,
    pub period: Counters,
    pub through_end: Counters,
    pub before_start: Counters,
    pub live: LiveCounts,
}

/// A page of held records.
#[derive(Debug, Clone, Default)]
pub struct HeldPage {
    pub records: Vec<(RecordKey, kpi_domain::HeldEntry)>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<String>,
}

/// Every counter of the views at one checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewsExport {
    pub checkpoint: u64,
    /// The day whose tree the open cases follow.
    pub live_day: Option<Day>,
    /// Non-zero day counters: (unit id, day, counters), by unit then day.
    pub days: Vec<(String, Day, Counters)>,
    /// Open cases per unit: (unit id, open, open without apology).
    pub open: Vec<(String, u32, u32)>,
}

/// Running totals since the views were created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldTotals {
    /// Valid events applied to their record.
    pub folded: u64,
    /// Valid events whose event id was already folded into their record.
    pub duplicates: u64,
    /// Events parked: invalid ones, and new events for a case that holds
    /// the most one may ([`kpi_domain::MAX_EVENTS_PER_RECORD`]).
    pub parked: u64,
    /// Parked events retired because a redriven copy was folded.
    pub redriven: u64,
    /// Events kept aside by an identity conflict (CONTRACT §1.2).
    pub conflicts: u64,
}

impl FoldTotals {
    pub fn add(&mut self, other: &FoldTotals) {
        self.folded += other.folded;
        self.duplicates += other.duplicates;
        self.parked += other.parked;
        self.redriven += other.redriven;
        self.conflicts += other.conflicts;
    }

    /// Events kept aside now: invalid ones not yet redriven, and identity
    /// conflicts' losers.
    pub fn kept_aside(&self) -> u64 {
        (self.parked + self.conflicts).saturating_sub(self.redriven)
    }
}

/// What one call to [`Store::ingest`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub totals: FoldTotals,
    /// The checkpoint after the batch.
    pub checkpoint: u64,
    /// The stream sequence and reason of each event parked by this batch.
    pub parked: Vec<(u64, String)>,
}

/// A consistent answer for one unit and range of days.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The last stream sequence the answer reflects.
    pub sequence: u64,
    pub counters: Counters,
    pub live: LiveCounts,
}

/// The sled-backed views. One writer ([`Store::ingest`]), many readers.
pub struct Store {
    db: sled::Db,
    views: sled::Tree,
    /// Held exclusively while a batch is applied, shared by queries.
    commit: RwLock<()>,
    /// Serialises writers: counters are read, changed and written back.
    writer: Mutex<()>,
    /// Told of every commit (the API's caches and live streams).
    listener: RwLock<Option<CommitListener>>,
}

/// What a commit changed: the units whose figures (counters or open
/// cases) changed, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The checkpoint after the commit.
    pub sequence: u64,
    /// Units whose figures changed, sorted; every unit when `all`.
    pub units: Vec<UnitIdx>,
    pub all: bool,
    /// Messages the stream held beyond the commit's last one when it was
    /// read: a projector catching up commits with many behind.
    pub behind: u64,
}

/// The last message of a batch, as the commit records it.
struct LastFolded {
    sequence: u64,
    published: Option<DateTime<Utc>>,
    behind: u64,
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
                views.insert(keys::FORMAT, FORMAT_VERSION)?;
                views.insert(keys::RULES, RULES_VERSION.as_bytes())?;
            }
            Some(found) if found.as_ref() == FORMAT_VERSION => {}
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
        Ok(Store {
            db,
            views,
            commit: RwLock::new(()),
            writer: Mutex::new(()),
            listener: RwLock::new(None),
        })
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

    /// Takes `units` as the registry the views are rolled up with, and
    /// `today` as their live day. New views simply record them. For
    /// existing views, when the registry changes units already counted
    /// (a move, a merge, new dates) or today falls in another epoch of the
    /// tree than the stored live day, every rollup is recomputed from the
    /// case records (no replay of the log); the reason is returned.
    pub fn adopt_units(
        &self,
        units: &UnitRegistry,
        today: Day,
    ) -> Result<Option<String>, StoreError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stored = match self.views.get(keys::ROLLUP_UNITS)? {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice::<Fingerprint>(&bytes)
                    .map_err(|err| corrupt(keys::ROLLUP_UNITS, err))?,
            ),
        };
        let live_day = self.live_day()?;
        let reason = match (&stored, live_day) {
            (None, _) | (_, None) if self.checkpoint()? == 0 => None,
            (None, _) | (_, None) => Some("the views record no unit registry".to_owned()),
            (Some(stored), Some(live_day)) => {
                let changes = units.changes_from(stored);
                if !changes.is_empty() {
                    Some(format!("the units file changed: {}", changes.join("; ")))
                } else if !units.same_tree(live_day, today) {
                    Some(format!(
                        "the tree of today ({}) differs from that of the live counts ({})",
                        today.to_date(),
                        live_day.to_date()
                    ))
                } else {
                    None
                }
            }
        };
        if reason.is_some() {
            self.rebuild_rollups(units, today)?;
        } else {
            let mut batch = sled::Batch::default();
            Self::record_rollup_basis(&mut batch, units, live_day.unwrap_or(today))?;
            self.views.apply_batch(batch)?;
        }
        Ok(reason)
    }

    /// Recomputes the live counts when today has entered another epoch of
    /// the tree than the one they follow (a change dated in the units file
    /// takes effect); `true` when it did.
    pub fn follow_today(&self, units: &UnitRegistry, today: Day) -> Result<bool, StoreError> {
        match self.live_day()? {
            Some(live_day) if !units.same_tree(live_day, today) => {
                let _writer = self
                    .writer
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.rebuild_rollups(units, today)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The day whose tree the open cases are counted by.
    fn live_day(&self) -> Result<Option<Day>, StoreError> {
        match self.views.get(keys::LIVE_DAY)? {
            None => Ok(None),
            Some(bytes) => {
                let array: [u8; 4] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(keys::LIVE_DAY, "not 4 bytes"))?;
                Ok(Some(Day::from_key(array)))
            }
        }
    }

    fn record_rollup_basis(
        batch: &mut sled::Batch,
        units: &UnitRegistry,
        live_day: Day,
    ) -> Result<(), StoreError> {
        let fingerprint = serde_json::to_vec(&units.fingerprint())
            .map_err(|err| corrupt(keys::ROLLUP_UNITS, err))?;
        batch.insert(keys::ROLLUP_UNITS, fingerprint);
        batch.insert(keys::LIVE_DAY, &live_day.to_key()[..]);
        Ok(())
    }

    /// Every rollup (day counters, open cases) recomputed from the stored
    /// records with `units`, written at once with the registry it reflects.
    /// The caller holds the writer lock.
    fn rebuild_rollups(&self, units: &UnitRegistry, live_day: Day) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut changes = BatchChanges::default();
        let mut records = 0u64;
        for prefix in [keys::CASE, keys::FEEDBACK] {
            for entry in self.views.scan_prefix([prefix]) {
                let (key, value) = entry?;
                let record: Record =
                    postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))?;
                if let Some(contribution) = record.contribution() {
                    let code = String::from_utf8_lossy(&key[1..]).into_owned();
                    let record_key = match prefix {
                        keys::CASE => RecordKey::Case(code),
                        _ => RecordKey::Feedback(code),
                    };
                    changes.add(units, live_day, &record_key, &contribution, 1)?;
                }
                records += 1;
            }
        }
        let mut batch = sled::Batch::default();
        for prefix in [
            keys::MONTH_COUNTERS,
            keys::OPEN_BY_DUE_DAY,
            keys::OPEN_TOTAL,
            keys::OPEN_INDEX,
        ] {
            for key in self.views.scan_prefix([prefix]).keys() {
                batch.remove(key?);
            }
        }
        self.write_rollups(&mut batch, units, &changes, Base::Empty)?;
        Self::record_rollup_basis(&mut batch, units, live_day)?;
        {
            let _exclusive = self
                .commit
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.views.apply_batch(batch)?;
        }
        self.tell(&Committed {
            sequence: self.checkpoint()?,
            units: Vec::new(),
            all: true,
            behind: 0,
        });
        tracing::info!(
            records,
            live_day = %live_day.to_date(),
            seconds = started.elapsed().as_secs_f64(),
            "rollups recomputed from the case records"
        );
        Ok(())
    }

    /// Checks that the stream about to be read is the one the views were
    /// folded from (same creation time, nothing unfolded removed from its
    /// start), and records it when the views are new.
    pub fn adopt_stream(&self, created: &str, first_sequence: u64) -> Result<(), StoreError> {
        let checkpoint = self.checkpoint()?;
        let folded_from = self.views.get(keys::STREAM)?;
        if checkpoint > 0 {
            if let Some(folded_from) = &folded_from {
                if folded_from.as_ref() != created.as_bytes() {
                    return Err(StoreError::StreamChanged {
                        folded_from: String::from_utf8_lossy(folded_from).into_owned(),
                        now: created.to_owned(),
                    });
                }
            }
            if first_sequence > checkpoint + 1 {
                return Err(StoreError::StreamGap {
                    first: first_sequence,
                    checkpoint,
                });
            }
        }
        if folded_from.as_deref() != Some(created.as_bytes()) {
            self.views.insert(keys::STREAM, created.as_bytes())?;
        }
        Ok(())
    }

    /// The stream sequence and store time (Unix nanoseconds, 0 if unknown)
    /// of the last message folded.
    pub fn last_message(&self) -> Result<Option<(u64, i64)>, StoreError> {
        let Some(bytes) = self.views.get(keys::LAST_MESSAGE)? else {
            return Ok(None);
        };
        let array: [u8; 16] = bytes
            .as_ref()
            .try_into()
            .map_err(|_| corrupt(keys::LAST_MESSAGE, "not 16 bytes"))?;
        let sequence = u64::from_be_bytes(array[..8].try_into().unwrap_or_default());
        let nanos = i64::from_be_bytes(array[8..].try_into().unwrap_or_default());
        Ok(Some((sequence, nanos)))
    }

    /// The last stream sequence folded (0 for new views).
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        read_u64(&self.views, keys::CHECKPOINT)
    }

    pub fn totals(&self) -> Result<FoldTotals, StoreError> {
        match self.views.get(keys::STATS)? {
            None => Ok(FoldTotals::default()),
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|err| corrupt(keys::STATS, err)),
        }
    }

    /// Folds and parks a batch of validated messages in stream order, then
    /// writes the changes and the new checkpoint atomically. Messages at or
    /// below the checkpoint are skipped (already folded).
    pub fn ingest(
        &self,
        units: &UnitRegistry,
        batch: &[Incoming<'_>],
    ) -> Result<BatchReport, StoreError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let checkpoint = self.checkpoint()?;
        let mut totals = FoldTotals::default();
        let mut parked = Vec::new();
        let mut retired = Vec::new();
        let mut last = checkpoint;
        let live_day = self
            .live_day()?
            .unwrap_or_else(|| Moment::from(Utc::now().fixed_offset()).local_day());
        let mut fold = BatchFold::with_capacity(units, self, live_day, batch.len());
        for message in batch.iter().filter(|m| m.sequence > checkpoint) {
            last = last.max(message.sequence);
            match &message.event {
                Ok(event) => {
                    let counts = match fold.fold(message.sequence, event)? {
                        Folded::Applied => {
                            totals.folded += 1;
                            true
                        }
                        Folded::Duplicate { counts } => {
                            totals.duplicates += 1;
                            counts
                        }
                        Folded::Conflict(conflict) => {
                            totals.conflicts += 1;
                            parked.push(ParkedEvent::conflict(
                                &event.case_id,
                                &conflict.loser,
                                &conflict.winner,
                            ));
                            conflict.loser.sequence != message.sequence
                        }
                        Folded::OverLimit => {
                            totals.parked += 1;
                            parked.push(ParkedEvent::over_limit(message, &event.case_id));
                            false
                        }
                    };
                    // A redriven event that counts retires its parked copy.
                    if let (true, Some(parked_sequence)) = (counts, message.redrive_of) {
                        let key = keys::parked(parked_sequence);
                        let pending = parked
                            .iter()
                            .any(|p: &ParkedEvent| p.sequence == parked_sequence);
                        if (pending || self.views.contains_key(key)?)
                            && !retired.contains(&parked_sequence)
                        {
                            retired.push(parked_sequence);
                        }
                    }
                }
                Err(error) => {
                    totals.parked += 1;
                    parked.push(ParkedEvent::of_message(
                        message,
                        error.field().map(str::to_owned),
                        error.to_string(),
                    ));
                }
            }
        }
        if last == checkpoint {
            return Ok(BatchReport {
                checkpoint,
                ..BatchReport::default()
            });
        }
        let changes = fold.finish()?;
        totals.redriven = retired.len() as u64;
        let mut all_totals = self.totals()?;
        all_totals.add(&totals);
        let parked_reasons = parked
            .iter()
            .map(|p| (p.sequence, p.reason.clone()))
            .collect();
        let last_message = batch.iter().find(|message| message.sequence == last);
        self.commit(
            units,
            changes,
            parked,
            &retired,
            LastFolded {
                sequence: last,
                published: last_message.and_then(|message| message.published),
                behind: last_message.map_or(0, |message| message.behind),
            },
            &all_totals,
        )?;
        Ok(BatchReport {
            totals,
            checkpoint: last,
            parked: parked_reasons,
        })
    }

    fn commit(
        &self,
        units: &UnitRegistry,
        changes: BatchChanges,
        parked: Vec<ParkedEvent>,
        retired: &[u64],
        last: LastFolded,
        totals: &FoldTotals,
    ) -> Result<(), StoreError> {
        let LastFolded {
            sequence: checkpoint,
            published,
            behind,
        } = last;
        let mut batch = sled::Batch::default();
        for (key, record) in &changes.records {
            let bytes =
                postcard::to_stdvec(record).map_err(|err| corrupt(&keys::record(key), err))?;
            batch.insert(keys::record(key), bytes);
        }
        for (key, held) in &changes.held {
            match held {
                Some(entry) => {
                    let bytes =
                        postcard::to_stdvec(entry).map_err(|err| corrupt(&keys::held(key), err))?;
                    batch.insert(keys::held(key), bytes);
                }
                None => batch.remove(keys::held(key)),
            }
        }
        self.write_rollups(&mut batch, units, &changes, Base::Stored)?;
        for event in &parked {
            let bytes = postcard::to_stdvec(event)
                .map_err(|err| corrupt(&keys::parked(event.sequence), err))?;
            batch.insert(&keys::parked(event.sequence)[..], bytes);
        }
        for sequence in retired {
            batch.remove(&keys::parked(*sequence)[..]);
        }
        let totals_bytes = postcard::to_stdvec(totals).map_err(|err| corrupt(keys::STATS, err))?;
        batch.insert(keys::STATS, totals_bytes);
        batch.insert(keys::CHECKPOINT, &checkpoint.to_be_bytes()[..]);
        let mut marker = checkpoint.to_be_bytes().to_vec();
        let nanos = published
            .and_then(|at| at.timestamp_nanos_opt())
            .unwrap_or(0);
        marker.extend_from_slice(&nanos.to_be_bytes());
        batch.insert(keys::LAST_MESSAGE, marker);

        let mut touched: Vec<UnitIdx> = changes
            .counters
            .keys()
            .map(|(unit, _)| *unit)
            .chain(changes.open_by_due_day.keys().map(|(unit, _)| *unit))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        {
            let _exclusive = self
                .commit
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.views.apply_batch(batch)?;
        }
        self.tell(&Committed {
            sequence: checkpoint,
            units: touched,
            all: false,
            behind,
        });
        Ok(())
    }

    /// Adds the rollup changes (day counters by month, open cases) to
    /// `batch`, on top of the stored values or of nothing.
    fn write_rollups(
        &self,
        batch: &mut sled::Batch,
        units: &UnitRegistry,
        changes: &BatchChanges,
        base: Base,
    ) -> Result<(), StoreError> {
        // Day changes grouped by (unit, month): one stored value each.
        let mut months: BTreeMap<(UnitIdx, keys::Month), Vec<(Day, &CounterDelta)>> =
            BTreeMap::new();
        for ((unit, day), delta) in &changes.counters {
            if !delta.is_zero() {
                months
                    .entry((*unit, keys::Month::of(*day)))
                    .or_default()
                    .push((*day, delta));
            }
        }
        for ((unit, month), days) in &months {
            let key = keys::unit_month(&units.unit(*unit).id, *month);
            let stored = match base {
                Base::Stored => self.views.get(&key)?,
                Base::Empty => None,
            };
            let mut counters = month::MonthCounters::decode(stored.as_deref())
                .map_err(|detail| corrupt(&key, detail))?;
            for (day, delta) in days {
                if let Err(counter) = counters.apply(day.to_date().day() as usize, delta) {
                    return Err(StoreError::Underflow {
                        unit: units.unit(*unit).id.clone(),
                        day: day.to_date().to_string(),
                        counter: counter.name(),
                    });
                }
            }
            if counters.is_zero() {
                batch.remove(key);
            } else {
                batch.insert(key, counters.encode());
            }
        }
        let mut open_totals: BTreeMap<UnitIdx, OpenDelta> = BTreeMap::new();
        for ((unit, day), delta) in &changes.open_by_due_day {
            let total = open_totals.entry(*unit).or_default();
            total.open += delta.open;
            total.without_apology += delta.without_apology;
            let key = keys::unit_day(keys::OPEN_BY_DUE_DAY, &units.unit(*unit).id, *day);
            self.add_open(batch, key, delta, base)?;
        }
        for (unit, delta) in &open_totals {
            self.add_open(
                batch,
                keys::unit_prefix(keys::OPEN_TOTAL, &units.unit(*unit).id),
                delta,
                base,
            )?;
        }
        for key in &changes.open_removed {
            batch.remove(keys::open_index(
                &units.unit(key.unit).id,
                key.due_at,
                &key.case_id,
            ));
        }
        for (key, has_apology) in &changes.open_added {
            let index_key = keys::open_index(&units.unit(key.unit).id, key.due_at, &key.case_id);
            batch.insert(index_key, &[u8::from(*has_apology)][..]);
        }
        Ok(())
    }

    /// Adds a change in open cases to the pair stored at `key`.
    fn add_open(
        &self,
        batch: &mut sled::Batch,
        key: Vec<u8>,
        delta: &OpenDelta,
        base: Base,
    ) -> Result<(), StoreError> {
        if delta.is_zero() {
            return Ok(());
        }
        let stored = match base {
            Base::Stored => self.views.get(&key)?,
            Base::Empty => None,
        };
        let (open, without_apology) = match stored {
            None => (0, 0),
            Some(bytes) => decode_pair(&bytes).map_err(|detail| corrupt(&key, detail))?,
        };
        let open = i64::from(open) + delta.open;
        let without_apology = i64::from(without_apology) + delta.without_apology;
        if open < 0 || without_apology < 0 {
            return Err(StoreError::Underflow {
                unit: String::from_utf8_lossy(&key[1..key.len() - 1]).into_owned(),
                day: "(open cases)".to_owned(),
                counter: if open < 0 {
                    "open"
                } else {
                    "open_without_apology"
                },
            });
        }
        let (open, without_apology) = (open as u32, without_apology as u32);
        if open == 0 && without_apology == 0 {
            batch.remove(key);
        } else {
            let mut bytes = open.to_le_bytes().to_vec();
            bytes.extend_from_slice(&without_apology.to_le_bytes());
            batch.insert(key, bytes);
        }
        Ok(())
    }

    /// The counters of `unit_id` summed over `first..=last` and its live
    /// counts at `now`, as of one checkpoint.
    pub fn snapshot(
        &self,
        unit_id: &str,
        first: Day,
        last: Day,
        now: Moment,
    ) -> Result<Snapshot, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = self.checkpoint()?;
        let counters = self.sum_counters(unit_id, first, last)?;
        let live = self.live_counts(unit_id, now)?;
        Ok(Snapshot {
            sequence,
            counters,
            live,
        })
    }

    /// One range scan over the unit's months: whole months read their
    /// total row, the first and last months the rows of their days.
    fn sum_counters(&self, unit_id: &str, first: Day, last: Day) -> Result<Counters, StoreError> {
        let mut sum = Counters::default();
        if last < first {
            return Ok(sum);
        }
        let (first_month, last_month) = (keys::Month::of(first), keys::Month::of(last));
        let start = keys::unit_month(unit_id, first_month);
        let end = keys::unit_month(unit_id, last_month);
        for entry in self.views.range(start..=end) {
            let (key, value) = entry?;
            let month = keys::month_of(&key).ok_or_else(|| corrupt(&key, "no month in key"))?;
            let (month_first, month_last) = month.days();
            if first <= month_first && month_last <= last {
                sum.add(&month::row(&value, 0).map_err(|detail| corrupt(&key, detail))?);
            } else {
                let from = first.max(month_first).to_date().day() as usize;
                let to = last.min(month_last).to_date().day() as usize;
                sum.add(&month::days(&value, from, to).map_err(|detail| corrupt(&key, detail))?);
            }
        }
        Ok(sum)
    }

    /// Live counts from the open cases' due days. Every open case is in the
    /// unit's total; those not yet overdue are the ones due on later days
    /// (a short scan: cases fall due within weeks) and those due later
    /// today, counted exactly from the open index.
    fn live_counts(&self, unit_id: &str, now: Moment) -> Result<LiveCounts, StoreError> {
        let total_key = keys::unit_prefix(keys::OPEN_TOTAL, unit_id);
        let (open, open_without_apology) = match self.views.get(&total_key)? {
            None => (0, 0),
            Some(bytes) => decode_pair(&bytes).map_err(|detail| corrupt(&total_key, detail))?,
        };
        let (open, open_without_apology) = (u64::from(open), u64::from(open_without_apology));
        let today = now.local_day();
        let tomorrow = Day::from_date(today.to_date().succ_opt().unwrap_or(chrono::NaiveDate::MAX));
        let (mut not_due, mut not_due_without_apology) = (0u64, 0u64);
        let later_days = keys::unit_day(keys::OPEN_BY_DUE_DAY, unit_id, tomorrow);
        let unit_end = keys::prefix_end(&keys::unit_prefix(keys::OPEN_BY_DUE_DAY, unit_id));
        for entry in self.views.range(later_days..unit_end) {
            let (key, value) = entry?;
            let (open, without_apology) =
                decode_pair(&value).map_err(|detail| corrupt(&key, detail))?;
            not_due += u64::from(open);
            not_due_without_apology += u64::from(without_apology);
        }
        let from_now = keys::open_index_at(unit_id, now);
        let until_tomorrow = keys::open_index_at(unit_id, Moment::start_of(tomorrow));
        for entry in self.views.range(from_now..until_tomorrow) {
            let (_, has_apology) = entry?;
            not_due += 1;
            if has_apology.first() != Some(&1) {
                not_due_without_apology += 1;
            }
        }
        Ok(LiveCounts {
            open,
            overdue_open: open.saturating_sub(not_due),
            overdue_without_apology: open_without_apology.saturating_sub(not_due_without_apology),
        })
    }

    /// A record and the stream sequence the views reflect, read together.
    pub fn record_at_checkpoint(
        &self,
        key: &RecordKey,
    ) -> Result<(Option<Record>, u64), StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok((self.load_record(key)?, self.checkpoint()?))
    }

    /// How many records have events held (their `case.received` has not
    /// come): a key scan, for the metrics every few seconds.
    pub fn held_count(&self) -> Result<u64, StoreError> {
        let mut count = 0;
        for key in self.views.scan_prefix([keys::HELD]).keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }

    /// Records whose events are held, in key order, after `after` (a
    /// previous page's last [`HeldPage::next`]), at most `limit`.
    pub fn held(&self, after: Option<&str>, limit: usize) -> Result<HeldPage, StoreError> {
        let start = match after {
            Some(after) => {
                let mut key = vec![keys::HELD];
                key.extend_from_slice(after.as_bytes());
                key.push(0);
                key
            }
            None => vec![keys::HELD],
        };
        let end = keys::prefix_end(&[keys::HELD]);
        let mut records = Vec::new();
        let mut next = None;
        for entry in self.views.range(start..end) {
            let (key, value) = entry?;
            if records.len() == limit {
                break;
            }
            let entry: kpi_domain::HeldEntry =
                postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))?;
            let code = String::from_utf8_lossy(&key[2..]).into_owned();
            let record_key = match key.get(1) {
                Some(&keys::FEEDBACK) => RecordKey::Feedback(code),
                _ => RecordKey::Case(code),
            };
            next = Some(String::from_utf8_lossy(&key[1..]).into_owned());
            records.push((record_key, entry));
        }
        if records.len() < limit {
            next = None;
        }
        Ok(HeldPage { records, next })
    }

    /// Every day counter of every unit and the open-case totals, as of one
    /// checkpoint: what `kpictl verify` compares with a rebuild.
    pub fn export(&self) -> Result<ViewsExport, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut export = ViewsExport {
            checkpoint: self.checkpoint()?,
            live_day: self.live_day()?,
            ..ViewsExport::default()
        };
        for entry in self.views.scan_prefix([keys::MONTH_COUNTERS]) {
            let (key, value) = entry?;
            let unit = keys::unit_of(&key).ok_or_else(|| corrupt(&key, "no unit in key"))?;
            let month = keys::month_of(&key).ok_or_else(|| corrupt(&key, "no month in key"))?;
            let (first, last) = month.days();
            for day_of_month in 1..=(last.to_date().day() as usize) {
                let counters =
                    month::row(&value, day_of_month).map_err(|detail| corrupt(&key, detail))?;
                if !counters.is_zero() {
                    let day = Day::from_date(
                        first.to_date() + chrono::Days::new(day_of_month as u64 - 1),
                    );
                    export.days.push((unit.clone(), day, counters));
                }
            }
        }
        for entry in self.views.scan_prefix([keys::OPEN_TOTAL]) {
            let (key, value) = entry?;
            let unit = keys::unit_of(&key).ok_or_else(|| corrupt(&key, "no unit in key"))?;
            let (open, without_apology) =
                decode_pair(&value).map_err(|detail| corrupt(&key, detail))?;
            export.open.push((unit, open, without_apology));
        }
        Ok(export)
    }

    /// Every record, in key order (audits of the whole store).
    pub fn records(&self) -> impl Iterator<Item = Result<(RecordKey, Record), StoreError>> + '_ {
        [keys::CASE, keys::FEEDBACK]
            .into_iter()
            .flat_map(move |prefix| {
                self.views.scan_prefix([prefix]).map(move |entry| {
                    let (key, value) = entry?;
                    let record: Record =
                        postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))?;
                    let code = String::from_utf8_lossy(&key[1..]).into_owned();
                    let record_key = if prefix == keys::CASE {
                        RecordKey::Case(code)
                    } else {
                        RecordKey::Feedback(code)
                    };
                    Ok((record_key, record))
                })
            })
    }

    /// Open cases of `unit_id` due before `until` (every overdue one
    /// included), by due time then case code, after the position `after`
    /// (a previous page's [`OpenPage::next`]), at most `limit`.
    pub fn open_cases(
        &self,
        unit_id: &str,
        until: Moment,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<OpenPage, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let prefix = keys::unit_prefix(keys::OPEN_INDEX, unit_id);
        let start = match after {
            Some(position) => {
                let mut key = prefix.clone();
                key.extend_from_slice(position);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let end = keys::open_index_at(unit_id, until);
        let mut page = OpenPage {
            sequence: self.checkpoint()?,
            ..OpenPage::default()
        };
        for entry in self.views.range(start..end) {
            let (key, value) = entry?;
            if page.cases.len() == limit {
                page.next = page.cases.last().map(|(due, case, _)| {
                    let mut position = keys::moment(*due).to_vec();
                    position.extend_from_slice(case.as_bytes());
                    position
                });
                break;
            }
            let rest = &key[prefix.len()..];
            let due = keys::moment_from(rest).ok_or_else(|| corrupt(&key, "no due time"))?;
            let case = String::from_utf8_lossy(&rest[12..]).into_owned();
            page.cases.push((due, case, value.first() == Some(&1)));
        }
        Ok(page)
    }

    /// The counters a QĐ 766 score needs, at one checkpoint: over the
    /// period, over every day up to its last, over every day before its
    /// first; and the live counts at `now`.
    pub fn score_inputs(
        &self,
        unit_id: &str,
        first: Day,
        last: Day,
        now: Moment,
    ) -> Result<ScoreSnapshot, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let beginning =
            Day::from_date(chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default());
        let day_before = Day::from_date(first.to_date().pred_opt().unwrap_or(first.to_date()));
        Ok(ScoreSnapshot {
            sequence: self.checkpoint()?,
            period: self.sum_counters(unit_id, first, last)?,
            through_end: self.sum_counters(unit_id, beginning, last)?,
            before_start: self.sum_counters(unit_id, beginning, day_before)?,
            live: self.live_counts(unit_id, now)?,
        })
    }

    /// Parked events after `after_sequence`, oldest first, at most `limit`.
    pub fn parked(
        &self,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let start = keys::parked(after_sequence.saturating_add(1));
        let end = keys::prefix_end(&[keys::PARKED]);
        self.views
            .range(&start[..]..&end[..])
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))
            })
            .collect()
    }

    /// Every entry of the views proper (records, event ids, counters, open
    /// cases), in key order: what two folds of the same log must share.
    pub fn view_entries(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        VIEW_PREFIXES.iter().flat_map(move |prefix| {
            self.views.scan_prefix([*prefix]).map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
        })
    }

    /// Writes everything to disk now (on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

impl RecordSource for Store {
    type Error = StoreError;

    fn load_record(&self, key: &RecordKey) -> Result<Option<Record>, StoreError> {
        let stored_key = keys::record(key);
        match self.views.get(&stored_key)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|err| corrupt(&stored_key, err)),
        }
    }
}

/// What rollup changes are added to.
#[derive(Debug, Clone, Copy)]
enum Base {
    /// The values stored now (a batch of events).
    Stored,
    /// Nothing (a recomputation: every old value is removed).
    Empty,
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match tree.get(key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes
                .as_ref()
                .try_into()
                .map_err(|_| corrupt(key, "not 8 bytes"))?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

/// An (open, open without apology) pair; anything but 8 bytes is damage.
fn decode_pair(bytes: &[u8]) -> Result<(u32, u32), String> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("{} bytes where 8 were written", bytes.len()))?;
    let word = |offset: usize| {
        u32::from_le_bytes([
            array[offset],
            array[offset + 1],
            array[offset + 2],
            array[offset + 3],
        ])
    };
    Ok((word(0), word(4)))
}
