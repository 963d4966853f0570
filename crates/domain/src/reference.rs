//! The views held in memory: a reference implementation of what the sled
//! store keeps, used as the oracle in property tests and in the scenario
//! test. It shares the fold with the store but answers queries the plain
//! way (scanning every open case), so it also checks the store's shortcuts.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

use kpi_events::Event;

use crate::contribution::LiveCounts;
use crate::counters::Counters;
use crate::fold::{BatchChanges, BatchFold, FoldError, OpenKey, RecordSource, UnknownUnit};
use crate::record::{Folded, Record, RecordKey};
use crate::time::{Day, Moment};
use crate::units::{UnitIdx, UnitRegistry};

/// An event kept aside by an identity conflict: (record, event id, kind,
/// unit, time, content hash).
pub type KeptAsideEvent = (
    RecordKey,
    uuid::Uuid,
    &'static str,
    String,
    Moment,
    kpi_events::ContentHash,
);

/// Every view, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryViews {
    /// The day whose tree open cases are counted by.
    live_day: Day,
    records: HashMap<RecordKey, Record>,
    counters: BTreeMap<(UnitIdx, Day), Counters>,
    open_index: BTreeMap<OpenKey, bool>,
    /// Every event folded, by stream sequence: the log the fold reads
    /// data back from.
    log: HashMap<u64, Event>,
}

impl RecordSource for MemoryViews {
    type Error = Infallible;

    fn load_record(&self, key: &RecordKey) -> Result<Option<Record>, Infallible> {
        Ok(self.records.get(key).cloned())
    }

    fn event_data(&self, sequence: u64) -> Result<Option<String>, Infallible> {
        Ok(self
            .log
            .get(&sequence)
            .map(|event| event.data.identity_json()))
    }
}

impl Default for MemoryViews {
    /// Views whose live counts follow the tree of today.
    fn default() -> Self {
        MemoryViews::at(Moment::from(chrono::Utc::now().fixed_offset()).local_day())
    }
}

impl MemoryViews {
    /// Empty views whose live counts follow the tree of `live_day`.
    pub fn at(live_day: Day) -> Self {
        MemoryViews {
            live_day,
            records: HashMap::new(),
            counters: BTreeMap::new(),
            open_index: BTreeMap::new(),
            log: HashMap::new(),
        }
    }

    /// Folds `events` (with their stream sequences) as one batch.
    pub fn fold_batch<'e>(
        &mut self,
        units: &UnitRegistry,
        events: impl IntoIterator<Item = (u64, &'e Event)>,
    ) -> Result<Vec<Folded>, FoldError<UnknownUnit>> {
        let events: Vec<(u64, &Event)> = events.into_iter().collect();
        for (sequence, event) in &events {
            self.log.insert(*sequence, (*event).clone());
        }
        let mut fold = BatchFold::new(units, &*self, self.live_day);
        let mut outcomes = Vec::with_capacity(events.len());
        for (sequence, event) in events {
            match fold.fold(sequence, event, event.content_hash()) {
                Ok(folded) => outcomes.push(folded),
                Err(FoldError::Source(never)) => match never {},
                Err(FoldError::LostEvent {
                    case_id,
                    event_id,
                    sequence,
                }) => {
                    return Err(FoldError::LostEvent {
                        case_id,
                        event_id,
                        sequence,
                    })
                }
            }
        }
        let changes = fold.finish().map_err(FoldError::Source)?;
        self.apply(changes);
        Ok(outcomes)
    }

    /// Writes a batch's changes.
    pub fn apply(&mut self, changes: BatchChanges) {
        for (key, record) in changes.records {
            self.records.insert(key, record);
        }
        for (key, delta) in changes.counters {
            let counters = self.counters.entry(key).or_default();
            counters
                .apply(&delta)
                .unwrap_or_else(|counter| panic!("{} went below zero at {key:?}", counter.name()));
            if counters.is_zero() {
                self.counters.remove(&key);
            }
        }
        for key in changes.open_removed {
            self.open_index.remove(&key);
        }
        self.open_index.extend(changes.open_added);
    }

    /// The counters of a unit summed over the inclusive range of days.
    pub fn counters(&self, unit: UnitIdx, first: Day, last: Day) -> Counters {
        let mut sum = Counters::default();
        for (_, counters) in self.counters.range((unit, first)..=(unit, last)) {
            sum.add(counters);
        }
        sum
    }

    /// The live counts of a unit at `now`.
    pub fn live(&self, unit: UnitIdx, now: Moment) -> LiveCounts {
        let mut live = LiveCounts::default();
        for (key, has_apology) in &self.open_index {
            if key.unit != unit {
                continue;
            }
            live.open += 1;
            if key.due_at < now {
                live.overdue_open += 1;
                if !has_apology {
                    live.overdue_without_apology += 1;
                }
            }
        }
        live
    }

    /// Every non-zero (unit, day) counter set: for comparing two folds.
    pub fn all_counters(&self) -> &BTreeMap<(UnitIdx, Day), Counters> {
        &self.counters
    }

    /// Every event kept aside by an identity conflict, as (record, event
    /// id, kind, unit, time, canonical data): for comparing two folds
    /// (stream sequences differ with the arrival order).
    pub fn kept_aside(&self) -> std::collections::BTreeSet<KeptAsideEvent> {
        self.records
            .iter()
            .flat_map(|(key, record)| {
                record.kept_aside.iter().map(move |event| {
                    (
                        key.clone(),
                        event.event_id,
                        event.kind().as_str(),
                        event.unit_id.clone(),
                        event.at,
                        event.content,
                    )
                })
            })
            .collect()
    }

    /// The open-case index: for comparing two folds.
    pub fn open_index(&self) -> &BTreeMap<OpenKey, bool> {
        &self.open_index
    }
}
