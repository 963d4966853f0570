//! Folding a batch of events into changes to the views.
//!
//! [`BatchFold`] loads each touched record once (through a
//! [`RecordSource`]: sled in production, a map in tests), applies the
//! batch's events to it in memory, and at the end turns "contribution after
//! minus contribution before" of every touched record into counter deltas
//! per (unit, day), credited to every unit whose figures they are part of
//! on that day ([`UnitRegistry::credited`]: the tree of the day, and
//! successors' history). Open cases are credited by the tree of the views'
//! live day. The caller writes those changes, the records, the event ids
//! and its checkpoint in one atomic write.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use kpi_events::{ContentHash, Event};

use crate::contribution::Contribution;
use crate::counters::CounterDelta;
use crate::flow::{FlowContribution, FlowRow, LateMark};
use crate::record::{Folded, Record, RecordKey};
use crate::time::{Day, Moment};
use crate::units::{UnitIdx, UnitRegistry};

/// Where the fold reads the records of earlier batches, and — for the one
/// decision a record cannot make alone — the data of an event it holds.
pub trait RecordSource {
    type Error;
    fn load_record(&self, key: &RecordKey) -> Result<Option<Record>, Self::Error>;

    /// The canonical data ([`kpi_events::EventData::identity_json`]) of the
    /// event the log holds at `sequence`, read back from the log: `None`
    /// when it has no valid event there. Asked only for two events under
    /// one id of the same kind, unit and time ([`Folded::NeedsData`]).
    fn event_data(&self, sequence: u64) -> Result<Option<String>, Self::Error>;
}

/// Why a batch could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum FoldError<E> {
    #[error(transparent)]
    Source(E),
    #[error(
        "event {event_id} of case {case_id} conflicts with the event at stream sequence {sequence}, \
         which the log no longer holds as a valid event: the views and the log disagree; rebuild the views"
    )]
    LostEvent {
        case_id: String,
        event_id: uuid::Uuid,
        sequence: u64,
    },
}

/// A record names a unit the registry does not have. Events are validated
/// against the registry and the store refuses a registry that drops units,
/// so this means the registry and the stored views disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record `{code}` belongs to unit `{unit_id}`, which is not in the units file: keep every unit that has cases in the file, with valid_to (and a successor) if it ceased")]
pub struct UnknownUnit {
    pub code: String,
    pub unit_id: String,
}

/// The change in open cases due on one day: `open` and `without_apology`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenDelta {
    pub open: i64,
    pub without_apology: i64,
}

impl OpenDelta {
    pub fn is_zero(&self) -> bool {
        self.open == 0 && self.without_apology == 0
    }
}

/// One entry of the open-case index: a unit (at every level), the case's
/// due time, the case code.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpenKey {
    pub unit: UnitIdx,
    pub due_at: Moment,
    pub case_id: String,
}

/// Everything a batch changes, ready to be written at once.
#[derive(Debug, Default)]
pub struct BatchChanges {
    /// Records whose content changed.
    pub records: Vec<(RecordKey, Record)>,
    /// Counter changes per (unit, day), already rolled up to ancestors.
    pub counters: BTreeMap<(UnitIdx, Day), CounterDelta>,
    /// Open-case changes per (unit, due day), rolled up to ancestors.
    pub open_by_due_day: BTreeMap<(UnitIdx, Day), OpenDelta>,
    /// Open-index entries to delete; applied before `open_added`.
    pub open_removed: Vec<OpenKey>,
    /// Open-index entries to write, with whether an apology letter exists.
    pub open_added: Vec<(OpenKey, bool)>,
    /// Records whose held events changed: the new summary, or `None` when
    /// none is held any more.
    pub held: Vec<(RecordKey, Option<HeldEntry>)>,
    /// Case-flow day changes per series and day, at the receiving unit
    /// only (the report groups by the tree of a period's last day when
    /// asked).
    pub flow: BTreeMap<FlowKey, FlowRow>,
    /// Late-case index entries to delete; applied before `late_added`.
    pub late_removed: Vec<LateKey>,
    pub late_added: Vec<LateKey>,
}

/// A series of the case-flow report on one day: the receiving unit, the
/// case's field and procedure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub unit: UnitIdx,
    pub field: String,
    pub procedure_code: String,
    pub day: Day,
}

/// One entry of the late-case index: a case's [`LateMark`] at its
/// receiving unit, with its field and procedure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LateKey {
    pub unit: UnitIdx,
    pub mark: LateMark,
    pub case_id: String,
    pub field: String,
    pub procedure_code: String,
}

/// A record whose events are held: its received event has not arrived.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldEntry {
    /// The unit the earliest held event names.
    pub unit_id: String,
    /// When the earliest held event happened.
    pub first_at: Moment,
    /// How many events are held.
    pub events: u64,
}

impl HeldEntry {
    fn of(record: &Record) -> Option<HeldEntry> {
        record.held().map(|(unit_id, first_at, events)| HeldEntry {
            unit_id: unit_id.to_owned(),
            first_at,
            events: events as u64,
        })
    }
}

struct Touched {
    before: Option<Record>,
    after: Record,
}

/// Folds one batch of events over a [`RecordSource`].
pub struct BatchFold<'a, S: RecordSource> {
    units: &'a UnitRegistry,
    source: &'a S,
    live_day: Day,
    touched: HashMap<RecordKey, Touched>,
}

impl<'a, S: RecordSource> BatchFold<'a, S> {
    /// `live_day`: the day whose tree the open cases are counted by (the
    /// views' live day).
    pub fn new(units: &'a UnitRegistry, source: &'a S, live_day: Day) -> Self {
        Self::with_capacity(units, source, live_day, 0)
    }

    /// A fold for a batch of about `events` events.
    pub fn with_capacity(
        units: &'a UnitRegistry,
        source: &'a S,
        live_day: Day,
        events: usize,
    ) -> Self {
        BatchFold {
            units,
            source,
            live_day,
            touched: HashMap::with_capacity(events),
        }
    }

    /// Folds one valid event read at stream sequence `sequence`, whose
    /// content hash is `content` ([`Event::content_hash`]).
    pub fn fold(
        &mut self,
        sequence: u64,
        event: &Event,
        content: ContentHash,
    ) -> Result<Folded, FoldError<S::Error>> {
        let key = RecordKey::for_event(event);
        let source = self.source;
        let touched = match self.touched.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let before = source.load_record(entry.key()).map_err(FoldError::Source)?;
                let after = before.clone().unwrap_or_default();
                entry.insert(Touched { before, after })
            }
        };
        match touched.after.fold(sequence, event, content) {
            Folded::NeedsData(held) => {
                let data = source
                    .event_data(held)
                    .map_err(FoldError::Source)?
                    .ok_or_else(|| FoldError::LostEvent {
                        case_id: event.case_id.clone(),
                        event_id: event.event_id,
                        sequence: held,
                    })?;
                Ok(touched
                    .after
                    .fold_with_data(sequence, event, content, &data))
            }
            folded => Ok(folded),
        }
    }

    /// The batch's changes: new minus old contribution of every record.
    pub fn finish(self) -> Result<BatchChanges, UnknownUnit> {
        let mut changes = BatchChanges::default();
        let units = self.units;
        for (key, touched) in self.touched {
            if touched.before.as_ref() == Some(&touched.after) {
                continue;
            }
            let held_before = touched.before.as_ref().and_then(HeldEntry::of);
            let held_after = HeldEntry::of(&touched.after);
            if held_before != held_after {
                changes.held.push((key.clone(), held_after));
            }
            let before = touched.before.as_ref().and_then(Record::contribution);
            let after = touched.after.contribution();
            if before != after {
                if let Some(before) = &before {
                    changes.add(units, self.live_day, &key, before, -1)?;
                }
                if let Some(after) = &after {
                    changes.add(units, self.live_day, &key, after, 1)?;
                }
            }
            let flow_before = touched.before.as_ref().and_then(Record::flow_contribution);
            let flow_after = touched.after.flow_contribution();
            if flow_before != flow_after {
                if let Some(before) = &flow_before {
                    changes.add_flow(units, &key, before, -1)?;
                }
                if let Some(after) = &flow_after {
                    changes.add_flow(units, &key, after, 1)?;
                }
            }
            changes.records.push((key, touched.after));
        }
        changes.records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(changes)
    }
}

/// The registry's unit a record's contribution names.
fn known_unit(
    units: &UnitRegistry,
    key: &RecordKey,
    unit_id: &str,
) -> Result<UnitIdx, UnknownUnit> {
    units.find(unit_id).ok_or_else(|| UnknownUnit {
        code: key.code().to_owned(),
        unit_id: unit_id.to_owned(),
    })
}

impl BatchChanges {
    /// Adds `sign` times a case's part in the case-flow report.
    pub fn add_flow(
        &mut self,
        units: &UnitRegistry,
        key: &RecordKey,
        contribution: &FlowContribution<'_>,
        sign: i64,
    ) -> Result<(), UnknownUnit> {
        let unit = known_unit(units, key, contribution.unit_id)?;
        for &(day, column, by) in &contribution.changes {
            let series = FlowKey {
                unit,
                field: contribution.field.to_owned(),
                procedure_code: contribution.procedure_code.to_owned(),
                day,
            };
            self.flow
                .entry(series)
                .or_default()
                .change(column, by * sign);
        }
        for &mark in &contribution.late {
            let entry = LateKey {
                unit,
                mark,
                case_id: key.code().to_owned(),
                field: contribution.field.to_owned(),
                procedure_code: contribution.procedure_code.to_owned(),
            };
            if sign < 0 {
                self.late_removed.push(entry);
            } else {
                self.late_added.push(entry);
            }
        }
        Ok(())
    }

    /// Adds `sign` times a contribution, to every unit credited with it:
    /// its counts by the tree of their day, its open case by the tree of
    /// `live_day`.
    pub fn add(
        &mut self,
        units: &UnitRegistry,
        live_day: Day,
        key: &RecordKey,
        contribution: &Contribution<'_>,
        sign: i64,
    ) -> Result<(), UnknownUnit> {
        let unit = known_unit(units, key, contribution.unit_id)?;
        for &(day, counter) in &contribution.counts {
            for &credited in units.credited(unit, day) {
                self.counters
                    .entry((credited, day))
                    .or_default()
                    .change(counter, sign);
            }
        }
        if let Some(open) = contribution.open {
            for &credited in units.live_credited(unit, live_day) {
                let bucket = self
                    .open_by_due_day
                    .entry((credited, open.due_at.local_day()))
                    .or_default();
                bucket.open += sign;
                if !open.has_apology {
                    bucket.without_apology += sign;
                }
                let index_key = OpenKey {
                    unit: credited,
                    due_at: open.due_at,
                    case_id: key.code().to_owned(),
                };
                if sign < 0 {
                    self.open_removed.push(index_key);
                } else {
                    self.open_added.push((index_key, open.has_apology));
                }
            }
        }
        Ok(())
    }
}
