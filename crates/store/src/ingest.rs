//! The one write path: a batch of validated messages folded, parked or
//! retired, and written with its rollups and the new checkpoint in one
//! atomic sled batch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kpi_domain::fold::{BatchChanges, BatchFold, RecordSource};
use kpi_domain::{CounterDelta, Folded, Moment, OpenDelta, UnitIdx, UnitRegistry};

use crate::error::{corrupt, StoreError};
use crate::writes::Writes;
use crate::{keys, rows, BatchReport, Committed, FoldTotals, Incoming, ParkedEvent, Store};

/// What a batch is folded over: the stored records, and the log for what
/// they do not keep (this batch's messages first, then the stream).
struct Folding<'a> {
    store: &'a Store,
    units: &'a UnitRegistry,
    batch: &'a [Incoming<'a>],
}

impl Folding<'_> {
    /// The message at `sequence`: in this batch, or read back from the log.
    fn message(&self, sequence: u64) -> Result<Option<crate::LoggedMessage>, StoreError> {
        if let Some(message) = self.batch.iter().find(|m| m.sequence == sequence) {
            return Ok(Some(crate::LoggedMessage {
                subject: message.subject.to_owned(),
                payload: message.payload.to_vec(),
                published: message.published,
            }));
        }
        self.store.read_back(sequence)
    }
}

impl RecordSource for Folding<'_> {
    type Error = StoreError;

    fn load_record(
        &self,
        key: &kpi_domain::RecordKey,
    ) -> Result<Option<kpi_domain::Record>, StoreError> {
        let stored_key = keys::record(key);
        match self.store.stored(&stored_key)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|err| corrupt(&stored_key, err)),
        }
    }

    fn event_data(&self, sequence: u64) -> Result<Option<String>, StoreError> {
        let Some(message) = self.message(sequence)? else {
            return Ok(None);
        };
        let validation =
            kpi_events::Validation::new(self.units, message.published.unwrap_or_else(Utc::now));
        Ok(
            kpi_events::parse_message(&message.subject, &message.payload, &validation)
                .ok()
                .map(|event| event.data.identity_json()),
        )
    }
}

/// What a batch keeps aside and retires.
struct Kept {
    parked: Vec<ParkedEvent>,
    /// Parked entries a redriven event replaces.
    retired: Vec<u64>,
}

/// The last message of a batch, as the commit records it.
struct LastFolded {
    sequence: u64,
    published: Option<DateTime<Utc>>,
    behind: u64,
}
impl Store {
    /// Folds and parks a batch of validated messages in stream order, then
    /// writes the changes and the new checkpoint atomically. Messages at or
    /// below the checkpoint are skipped (already folded). When it returns,
    /// queries see the batch.
    pub fn ingest(
        &self,
        units: &UnitRegistry,
        batch: &[Incoming<'_>],
    ) -> Result<BatchReport, StoreError> {
        self.ingest_as(units, batch, false)
    }

    /// [`Store::ingest`], the writes applied by a thread of their own while
    /// the caller folds the next batch (the projector's pipeline): queries
    /// see the batch once it is applied ([`Store::settle`] waits for it).
    /// An error applying it is returned by the next call.
    pub fn ingest_pipelined(
        &self,
        units: &UnitRegistry,
        batch: &[Incoming<'_>],
    ) -> Result<BatchReport, StoreError> {
        self.ingest_as(units, batch, true)
    }

    fn ingest_as(
        &self,
        units: &UnitRegistry,
        batch: &[Incoming<'_>],
        pipelined: bool,
    ) -> Result<BatchReport, StoreError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !pipelined {
            self.settle()?;
        }
        let checkpoint = self.folded_checkpoint()?;
        let mut totals = FoldTotals::default();
        let mut parked = Vec::new();
        let mut retired = Vec::new();
        let mut last = checkpoint;
        let live_day = self
            .live_day()?
            .unwrap_or_else(|| Moment::from(Utc::now().fixed_offset()).local_day());
        let source = Folding {
            store: self,
            units,
            batch,
        };
        let mut fold = BatchFold::with_capacity(units, &source, live_day, batch.len());
        for message in batch.iter().filter(|m| m.sequence > checkpoint) {
            last = last.max(message.sequence);
            match &message.event {
                Ok(event) => {
                    let counts = match fold.fold(message.sequence, event, message.content)? {
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
                            // The loser as the log holds it: this message,
                            // or the one it displaced.
                            let loser =
                                source.message(conflict.loser.sequence)?.ok_or_else(|| {
                                    StoreError::LostEvent {
                                        case_id: event.case_id.clone(),
                                        event_id: event.event_id.to_string(),
                                        sequence: conflict.loser.sequence,
                                    }
                                })?;
                            parked.push(ParkedEvent::conflict(
                                &event.case_id,
                                &conflict.loser,
                                &conflict.winner,
                                loser,
                            ));
                            conflict.loser.sequence != message.sequence
                        }
                        Folded::NeedsData(sequence) => {
                            // The batch fold reads the data back itself.
                            return Err(StoreError::Log {
                                sequence,
                                detail: "a conflict was left undecided".to_owned(),
                            });
                        }
                        Folded::OverLimit(limit) => {
                            totals.parked += 1;
                            parked.push(ParkedEvent::over_limit(message, &event.case_id, limit));
                            false
                        }
                    };
                    // A redriven event that counts retires its parked copy,
                    // when it is that copy's event (same case and event id):
                    // any publisher can set the header.
                    if let (true, Some(parked_sequence)) = (counts, message.redrive_of) {
                        let copy = match parked
                            .iter()
                            .find(|p: &&ParkedEvent| p.sequence == parked_sequence)
                        {
                            Some(pending) => Some(pending.clone()),
                            None => self.parked_for_fold(parked_sequence)?,
                        };
                        let same_event = copy.and_then(|copy| copy.identity()).is_some_and(
                            |(case_id, event_id)| {
                                case_id == event.case_id && event_id == event.event_id.to_string()
                            },
                        );
                        if same_event && !retired.contains(&parked_sequence) {
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
        let mut all_totals = self.folded_totals()?;
        all_totals.add(&totals);
        let parked_reasons = parked
            .iter()
            .map(|p| (p.sequence, p.reason.clone()))
            .collect();
        let last_message = batch.iter().find(|message| message.sequence == last);
        self.commit(
            units,
            changes,
            Kept { parked, retired },
            LastFolded {
                sequence: last,
                published: last_message.and_then(|message| message.published),
                behind: last_message.map_or(0, |message| message.behind),
            },
            &all_totals,
            pipelined,
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
        kept: Kept,
        last: LastFolded,
        totals: &FoldTotals,
        pipelined: bool,
    ) -> Result<(), StoreError> {
        let Kept { parked, retired } = kept;
        let LastFolded {
            sequence: checkpoint,
            published,
            behind,
        } = last;
        let mut batch = Writes::default();
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
        self.write_rollups(self.rollups(), &mut batch, units, &changes)?;
        self.write_flow(&mut batch, units, &changes)?;
        for event in &parked {
            let bytes = postcard::to_stdvec(event)
                .map_err(|err| corrupt(&keys::parked(event.sequence), err))?;
            batch.insert(&keys::parked(event.sequence)[..], bytes);
        }
        for sequence in &retired {
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
            // The case-flow report's receiving units.
            .chain(changes.flow.keys().map(|series| series.unit))
            .chain(changes.late_added.iter().map(|entry| entry.unit))
            .chain(changes.late_removed.iter().map(|entry| entry.unit))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let committed = Committed {
            sequence: checkpoint,
            units: touched,
            all: false,
            behind,
        };
        if pipelined {
            return self.hand_over(batch, committed);
        }
        {
            let _exclusive = self
                .commit
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.views.apply_batch(batch.to_batch())?;
        }
        self.tell(&committed);
        Ok(())
    }

    /// The parked event at `sequence` as the next fold sees it (the
    /// commit in flight may have parked or retired it).
    fn parked_for_fold(&self, sequence: u64) -> Result<Option<ParkedEvent>, StoreError> {
        let key = keys::parked(sequence);
        match self.stored(&key)? {
            None => Ok(None),
            Some(value) => postcard::from_bytes(&value)
                .map(Some)
                .map_err(|err| corrupt(&key, err)),
        }
    }

    /// Adds the rollup changes (day counters by month, open cases) to
    /// `batch`, on top of the values stored in generation `rollups`.
    pub(crate) fn write_rollups(
        &self,
        rollups: keys::Rollups,
        batch: &mut Writes,
        units: &UnitRegistry,
        changes: &BatchChanges,
    ) -> Result<(), StoreError> {
        // The days changed by month, and the sum of each month's.
        type MonthChange<'a> = (Vec<(u8, &'a CounterDelta)>, CounterDelta);
        let mut months: BTreeMap<(UnitIdx, keys::Month), MonthChange<'_>> = BTreeMap::new();
        for ((unit, day), delta) in &changes.counters {
            if delta.is_zero() {
                continue;
            }
            let (days, total) = months.entry((*unit, keys::Month::of(*day))).or_default();
            days.push((keys::day_of_month(*day), delta));
            total.add(delta);
        }
        for ((unit, month), (days, total)) in &months {
            let unit_id = &units.unit(*unit).id;
            let key = rollups.unit_month(unit_id, *month);
            self.change_month(batch, key, *month, days, total, unit_id)?;
        }
        let mut open_totals: BTreeMap<UnitIdx, OpenDelta> = BTreeMap::new();
        for ((unit, day), delta) in &changes.open_by_due_day {
            let total = open_totals.entry(*unit).or_default();
            total.open += delta.open;
            total.without_apology += delta.without_apology;
            let key = keys::unit_day(rollups.open_by_due_day, &units.unit(*unit).id, *day);
            self.add_open(batch, key, delta)?;
        }
        for (unit, delta) in &open_totals {
            self.add_open(
                batch,
                keys::unit_prefix(rollups.open_total, &units.unit(*unit).id),
                delta,
            )?;
        }
        for key in &changes.open_removed {
            batch.remove(rollups.open_index(&units.unit(key.unit).id, key.due_at, &key.case_id));
        }
        for (key, has_apology) in &changes.open_added {
            let index_key = rollups.open_index(&units.unit(key.unit).id, key.due_at, &key.case_id);
            batch.insert(index_key, &[u8::from(*has_apology)][..]);
        }
        Ok(())
    }

    /// Adds the changes of some days of `month` (and their sum, `total`)
    /// to the month of `unit_id` stored at `key`; a counter that would go
    /// below zero names its day, or the month.
    fn change_month(
        &self,
        batch: &mut Writes,
        key: Vec<u8>,
        month: keys::Month,
        days: &[(u8, &CounterDelta)],
        total: &CounterDelta,
        unit_id: &str,
    ) -> Result<(), StoreError> {
        let mut rows = match self.stored(&key)? {
            None => rows::MonthRows::default(),
            Some(bytes) => {
                rows::MonthRows::decode(&bytes).map_err(|detail| corrupt(&key, detail))?
            }
        };
        let first = month.days().0.to_date();
        rows.change(days, total).map_err(|underflow| {
            let (day, counter) = match underflow {
                rows::Underflow::Day(day, counter) => (
                    month.day(day).map_or_else(
                        || format!("{first}+{day}"),
                        |date| date.to_date().to_string(),
                    ),
                    counter,
                ),
                rows::Underflow::Total(counter) => (first.format("%Y-%m").to_string(), counter),
            };
            StoreError::Underflow {
                unit: unit_id.to_owned(),
                day,
                counter: counter.name(),
            }
        })?;
        if rows.is_zero() {
            batch.remove(key);
        } else {
            batch.insert(key, rows.encode());
        }
        Ok(())
    }

    /// Adds a change in open cases to the pair stored at `key`.
    fn add_open(
        &self,
        batch: &mut Writes,
        key: Vec<u8>,
        delta: &OpenDelta,
    ) -> Result<(), StoreError> {
        if delta.is_zero() {
            return Ok(());
        }
        let (open, without_apology) = match self.stored(&key)? {
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
}

/// An (open, open without apology) pair; anything but 8 bytes is damage.
pub(crate) fn decode_pair(bytes: &[u8]) -> Result<(u32, u32), String> {
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
