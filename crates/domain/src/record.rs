//! Per-case and per-feedback records: what each event of the case is, by
//! event id, and what follows from them.
//!
//! A record keeps, for each event that counts (one per event id), what
//! identity and the counters need — its id, kind, unit, time, stream
//! sequence, a hash of its content ([`ContentHash`]) and the few data
//! fields that are counted — not the event itself: the log has the events,
//! and an audit reads them there by sequence. Apart, it keeps the events
//! that lost an identity conflict (CONTRACT §1.2): two events under one
//! (case, event id) whose kind, unit, time or data differ. The one with the
//! earliest `occurred_at` counts, ties broken by the smaller kind, then the
//! smaller unit id, then the smaller canonical JSON of its data; the other
//! is kept aside with the reason `event_id reused with different content`.
//! Equal hashes mean the same event; the data of a stored event are read
//! back from the log only for the last tie-break, when two events under one
//! id share kind, unit and time ([`Folded::NeedsData`]). That choice, and
//! everything derived from the record, does not depend on arrival order: a
//! later event that wins a conflict replaces the loser, whose effect
//! disappears with it.
//!
//! What counts ([`CaseState`]) is derived on demand: the earliest
//! `case.received`, the latest supplement request, the earliest resolution,
//! withdrawal, apology letter and sync, every payment, the latest rating —
//! ties between events by event id.
//!
//! Contents are compared in the form validation gives them (the typed
//! fields of CONTRACT §2, with defaults filled in and members the contract
//! does not name ignored, times as instants), so an event re-sent with an
//! optional `false` spelled out, or with a time in another offset, is the
//! same event.

use std::cmp::Ordering;

use kpi_events::{Channel, ContentHash, Event, EventData, Kind, RatingLevel, ResolutionResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Moment;

/// The reason every identity-conflict loser is kept aside with.
pub const CONFLICT_REASON: &str = "event_id reused with different content";

/// Where an event's record lives: cases and feedback have separate codes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Case(String),
    Feedback(String),
}

impl RecordKey {
    pub fn for_event(event: &Event) -> RecordKey {
        if event.kind().is_feedback() {
            RecordKey::Feedback(event.case_id.clone())
        } else {
            RecordKey::Case(event.case_id.clone())
        }
    }

    pub fn code(&self) -> &str {
        match self {
            RecordKey::Case(code) | RecordKey::Feedback(code) => code,
        }
    }
}

/// What one event says, as far as the counters (and the case-flow report)
/// need it: the kind, and the fields of its `data` that are counted, with
/// times as instants. Free text (`reason`, `letter_ref`, `portal`) and
/// amounts are not kept: the log has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fact {
    Received {
        procedure_code: String,
        field: String,
        channel: Channel,
        due_at: Moment,
        dossier_digitized: bool,
        reused_data: bool,
    },
    SupplementRequested {
        due_at: Moment,
    },
    ApologyIssued {
        new_due_at: Moment,
    },
    Resolved {
        result: ResolutionResult,
        result_electronic: bool,
        result_digitized: bool,
    },
    Withdrawn,
    Paid {
        online: bool,
    },
    Rated {
        level: RatingLevel,
    },
    Synced,
    FeedbackReceived {
        due_at: Moment,
    },
    FeedbackResolved,
}

impl Fact {
    pub fn of(data: &EventData) -> Fact {
        match data {
            EventData::CaseReceived(received) => Fact::Received {
                procedure_code: received.procedure_code.clone(),
                field: received.field.clone(),
                channel: received.channel,
                due_at: Moment::from(received.due_at),
                dossier_digitized: received.dossier_digitized,
                reused_data: received.reused_data,
            },
            EventData::CaseSupplementRequested { due_at, .. } => Fact::SupplementRequested {
                due_at: Moment::from(*due_at),
            },
            EventData::CaseApologyIssued { new_due_at, .. } => Fact::ApologyIssued {
                new_due_at: Moment::from(*new_due_at),
            },
            EventData::CaseResolved {
                result,
                result_electronic,
                result_digitized,
            } => Fact::Resolved {
                result: *result,
                result_electronic: *result_electronic,
                result_digitized: *result_digitized,
            },
            EventData::CaseWithdrawn { .. } => Fact::Withdrawn,
            EventData::CasePaid { online, .. } => Fact::Paid { online: *online },
            EventData::CaseRated { level } => Fact::Rated { level: *level },
            EventData::CaseSynced { .. } => Fact::Synced,
            EventData::FeedbackReceived { due_at } => Fact::FeedbackReceived {
                due_at: Moment::from(*due_at),
            },
            EventData::FeedbackResolved => Fact::FeedbackResolved,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Fact::Received { .. } => Kind::CaseReceived,
            Fact::SupplementRequested { .. } => Kind::CaseSupplementRequested,
            Fact::ApologyIssued { .. } => Kind::CaseApologyIssued,
            Fact::Resolved { .. } => Kind::CaseResolved,
            Fact::Withdrawn => Kind::CaseWithdrawn,
            Fact::Paid { .. } => Kind::CasePaid,
            Fact::Rated { .. } => Kind::CaseRated,
            Fact::Synced => Kind::CaseSynced,
            Fact::FeedbackReceived { .. } => Kind::FeedbackReceived,
            Fact::FeedbackResolved => Kind::FeedbackResolved,
        }
    }
}

/// One event as a record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    /// The stream sequence it was first read at: where the log has it.
    pub sequence: u64,
    pub at: Moment,
    /// The unit the event names (counts go by the received unit's).
    pub unit_id: String,
    /// Its content, hashed: equal for the same event only.
    pub content: ContentHash,
    pub fact: Fact,
}

impl RecordedEvent {
    /// The event read at `sequence`, whose content hash is `content`
    /// ([`Event::content_hash`], computed where the event was validated).
    pub fn of(sequence: u64, event: &Event, content: ContentHash) -> RecordedEvent {
        RecordedEvent {
            event_id: event.event_id,
            sequence,
            at: Moment::from(event.occurred_at),
            unit_id: event.unit_id.clone(),
            content,
            fact: Fact::of(&event.data),
        }
    }

    pub fn kind(&self) -> Kind {
        self.fact.kind()
    }

    /// About the bytes the event takes in a stored record.
    pub fn size(&self) -> usize {
        let text = match &self.fact {
            Fact::Received {
                procedure_code,
                field,
                ..
            } => procedure_code.len() + field.len(),
            _ => 0,
        };
        64 + self.unit_id.len() + text
    }

    /// The same event: kind, unit, time and data equal (CONTRACT §1.2).
    pub fn same_content(&self, other: &RecordedEvent) -> bool {
        self.content == other.content
    }

    /// Between two events under one id whose contents differ: the one that
    /// counts first by what the record knows (CONTRACT §1.2: the earliest,
    /// then the smaller kind, then the smaller unit), `Equal` when only
    /// their data can decide.
    fn identity_order(&self, other: &RecordedEvent) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| self.kind().as_str().cmp(other.kind().as_str()))
            .then_with(|| self.unit_id.as_bytes().cmp(other.unit_id.as_bytes()))
    }

    /// The order kept-aside events are stored in: a function of their
    /// contents alone, whatever the arrival order.
    fn kept_order(&self, other: &RecordedEvent) -> Ordering {
        self.event_id
            .cmp(&other.event_id)
            .then_with(|| self.identity_order(other))
            .then_with(|| self.content.cmp(&other.content))
    }

    /// When it happened and which it was: the order that picks the earliest
    /// or latest of several events of a kind.
    pub fn stamp(&self) -> (Moment, Uuid) {
        (self.at, self.event_id)
    }
}

/// What folding one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    /// A new event: it counts.
    Applied,
    /// The same event again (same id and content); `counts` when that
    /// content is the one that counts (not one kept aside).
    Duplicate { counts: bool },
    /// An event under an id the record has with other content.
    Conflict(Box<Conflict>),
    /// A new event for a record that already holds as much as one may
    /// ([`MAX_EVENTS_PER_RECORD`], [`MAX_RECORD_BYTES`]): not recorded, it
    /// is kept aside.
    OverLimit(RecordLimit),
    /// A conflict only the data can decide: the event the record holds
    /// under the same id, at this stream sequence, shares the incoming
    /// one's kind, unit and time. Nothing was changed.
    NeedsData(u64),
}

/// The most distinct events (counting and kept aside) one case or feedback
/// record holds. A real case has a few dozen; beyond this, events under
/// one flooded case code are kept aside instead of making every further
/// event of that case cost more (the record is read and written whole).
pub const MAX_EVENTS_PER_RECORD: usize = 1000;

/// About the most bytes one record holds, beside the count of events: a
/// real case's events take a few kilobytes; events of up to 64 KiB each
/// under one case code would otherwise make a record of megabytes that
/// every batch touching it reads, decodes and rewrites.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Which bound of a record a new event would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordLimit {
    /// [`MAX_EVENTS_PER_RECORD`].
    Events,
    /// [`MAX_RECORD_BYTES`].
    Bytes,
}

impl RecordLimit {
    /// Why an event of `case_id` was kept aside.
    pub fn reason(self, case_id: &str) -> String {
        let holds = match self {
            RecordLimit::Events => format!("{MAX_EVENTS_PER_RECORD} distinct events"),
            RecordLimit::Bytes => format!("{} KiB of events", MAX_RECORD_BYTES / 1024),
        };
        format!(
            "case {case_id} already holds {holds}, the most one case may: this one is kept aside \
             and counts nowhere (a sender flooding one case code? `kpictl case` shows its events)"
        )
    }
}

/// Two events under one id: `loser` is kept aside (the incoming event, or
/// the one it displaced), `winner` counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub loser: RecordedEvent,
    pub winner: RecordedEvent,
}

/// Every event of one case (or feedback), by event id. Serialized as a
/// `StoredRecord`: the unit its events name once, not per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The events that count, one per event id, sorted by event id.
    pub events: Vec<RecordedEvent>,
    /// Identity-conflict losers, sorted by event id then identity order.
    pub kept_aside: Vec<RecordedEvent>,
}

/// A [`Record`] as stored: the unit, time and stream sequence of its
/// first event, once; each event's time and sequence as differences from
/// them (the events of a case lie days, and a few hundred thousand
/// messages, apart: a few bytes instead of eight), its unit only when it
/// names another (the events of a case name one unit but for a mistake or
/// a conflict).
#[derive(Serialize, Deserialize)]
struct StoredRecord<Text, Events> {
    unit: Text,
    base_secs: i64,
    base_sequence: u64,
    events: Events,
    kept_aside: Events,
}

/// A [`RecordedEvent`] as stored in a [`StoredRecord`]: borrowed to be
/// written, owned when read. The event id as its 16 bytes, without the
/// length a byte string carries.
#[derive(Serialize, Deserialize)]
struct StoredEvent<Text, Data> {
    event_id: [u8; 16],
    sequence_after_base: i64,
    secs_after_base: i64,
    nanos: u32,
    unit: Option<Text>,
    content: ContentHash,
    fact: Data,
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let first = self.events.first().or(self.kept_aside.first());
        let unit = first.map_or("", |event| event.unit_id.as_str());
        let base_secs = first.map_or(0, |event| event.at.unix_seconds());
        let base_sequence = first.map_or(0, |event| event.sequence);
        fn stored<'a>(
            events: &'a [RecordedEvent],
            unit: &str,
            base_secs: i64,
            base_sequence: u64,
        ) -> Vec<StoredEvent<&'a str, &'a Fact>> {
            events
                .iter()
                .map(|event| StoredEvent {
                    event_id: *event.event_id.as_bytes(),
                    sequence_after_base: event.sequence.wrapping_sub(base_sequence) as i64,
                    secs_after_base: event.at.unix_seconds().wrapping_sub(base_secs),
                    nanos: event.at.subsec_nanos(),
                    unit: (event.unit_id != unit).then_some(event.unit_id.as_str()),
                    content: event.content,
                    fact: &event.fact,
                })
                .collect()
        }
        StoredRecord {
            unit,
            base_secs,
            base_sequence,
            events: stored(&self.events, unit, base_secs, base_sequence),
            kept_aside: stored(&self.kept_aside, unit, base_secs, base_sequence),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Record, D::Error> {
        type Read = Vec<StoredEvent<String, Fact>>;
        let stored = StoredRecord::<String, Read>::deserialize(deserializer)?;
        let unit = stored.unit;
        let read = |events: Read| -> Vec<RecordedEvent> {
            events
                .into_iter()
                .map(|event| {
                    let at = Moment::from_parts(
                        stored.base_secs.wrapping_add(event.secs_after_base),
                        event.nanos,
                    );
                    RecordedEvent {
                        event_id: Uuid::from_bytes(event.event_id),
                        sequence: stored
                            .base_sequence
                            .wrapping_add(event.sequence_after_base as u64),
                        at,
                        unit_id: event.unit.unwrap_or_else(|| unit.clone()),
                        content: event.content,
                        fact: event.fact,
                    }
                })
                .collect()
        };
        Ok(Record {
            events: read(stored.events),
            kept_aside: read(stored.kept_aside),
        })
    }
}

impl Record {
    /// Folds one event read at stream `sequence`, whose content hash is
    /// `content`, in (module documentation). [`Folded::NeedsData`] when a
    /// conflict can only be decided by the data of the event the record
    /// holds: fold again with them ([`Record::fold_with_data`]).
    pub fn fold(&mut self, sequence: u64, event: &Event, content: ContentHash) -> Folded {
        self.fold_deciding(sequence, event, content, None)
    }

    /// [`Record::fold`], given the canonical data ([`EventData::identity_json`])
    /// of the event the record holds under the same id, read back from the
    /// log at the sequence [`Folded::NeedsData`] named.
    pub fn fold_with_data(
        &mut self,
        sequence: u64,
        event: &Event,
        content: ContentHash,
        held_data: &str,
    ) -> Folded {
        self.fold_deciding(sequence, event, content, Some(held_data))
    }

    fn fold_deciding(
        &mut self,
        sequence: u64,
        event: &Event,
        content: ContentHash,
        held_data: Option<&str>,
    ) -> Folded {
        let incoming = RecordedEvent::of(sequence, event, content);
        let is_kept_aside = |record: &Record, candidate: &RecordedEvent| {
            record
                .kept_aside
                .iter()
                .any(|kept| kept.event_id == candidate.event_id && kept.same_content(candidate))
        };
        match self
            .events
            .binary_search_by(|seen| seen.event_id.cmp(&incoming.event_id))
        {
            Err(position) => {
                if is_kept_aside(self, &incoming) {
                    return Folded::Duplicate { counts: false };
                }
                if let Some(limit) = self.limit_passed_by(&incoming) {
                    return Folded::OverLimit(limit);
                }
                self.events.insert(position, incoming);
                Folded::Applied
            }
            Ok(position) => {
                if self.events[position].same_content(&incoming) {
                    return Folded::Duplicate { counts: true };
                }
                if is_kept_aside(self, &incoming) {
                    return Folded::Duplicate { counts: false };
                }
                if let Some(limit) = self.limit_passed_by(&incoming) {
                    return Folded::OverLimit(limit);
                }
                let order = match incoming.identity_order(&self.events[position]) {
                    Ordering::Equal => match held_data {
                        None => return Folded::NeedsData(self.events[position].sequence),
                        Some(held) => event.data.identity_json().as_str().cmp(held),
                    },
                    order => order,
                };
                let loser = if order == Ordering::Less {
                    std::mem::replace(&mut self.events[position], incoming)
                } else {
                    incoming
                };
                self.kept_aside.push(loser.clone());
                self.kept_aside.sort_by(RecordedEvent::kept_order);
                Folded::Conflict(Box::new(Conflict {
                    loser,
                    winner: self.events[position].clone(),
                }))
            }
        }
    }

    /// Whether the record holds [`MAX_EVENTS_PER_RECORD`] events.
    pub fn is_full(&self) -> bool {
        self.events.len() + self.kept_aside.len() >= MAX_EVENTS_PER_RECORD
    }

    /// The bound the record would pass by also keeping `incoming`.
    fn limit_passed_by(&self, incoming: &RecordedEvent) -> Option<RecordLimit> {
        if self.is_full() {
            return Some(RecordLimit::Events);
        }
        let bytes: usize = self
            .events
            .iter()
            .chain(&self.kept_aside)
            .map(RecordedEvent::size)
            .sum();
        (bytes + incoming.size() > MAX_RECORD_BYTES).then_some(RecordLimit::Bytes)
    }

    /// The events that count, earliest first (ties by event id).
    pub fn in_time_order(&self) -> Vec<&RecordedEvent> {
        let mut events: Vec<&RecordedEvent> = self.events.iter().collect();
        events.sort_by_key(|event| event.stamp());
        events
    }

    /// The record's events while none of them is its received event (they
    /// are held), as (unit of the earliest, its time, how many).
    pub fn held(&self) -> Option<(&str, Moment, usize)> {
        let received = if self.is_feedback() {
            self.feedback_state().received
        } else {
            self.case_state().received
        };
        if received.is_some() {
            return None;
        }
        let first = self.events.iter().min_by_key(|event| event.stamp())?;
        Some((&first.unit_id, first.at, self.events.len()))
    }

    /// The unit the record counts at and when: its received event's (the
    /// case's `case.received`, a feedback's `feedback.received`), or while
    /// its events are held the earliest one's.
    pub fn home(&self) -> Option<(&str, Moment)> {
        let received = if self.is_feedback() {
            self.feedback_state().received
        } else {
            self.case_state().received
        };
        match received {
            Some(event) => Some((&event.unit_id, event.at)),
            None => self.held().map(|(unit, at, _)| (unit, at)),
        }
    }

    /// Whether the record is a feedback's (complaint, recommendation).
    pub fn is_feedback(&self) -> bool {
        self.events
            .first()
            .or(self.kept_aside.first())
            .is_some_and(|event| event.kind().is_feedback())
    }

    /// What counts in a case record.
    pub fn case_state(&self) -> CaseState<'_> {
        fn earliest<'r>(slot: &mut Option<&'r RecordedEvent>, event: &'r RecordedEvent) {
            if slot.is_none_or(|kept| event.stamp() < kept.stamp()) {
                *slot = Some(event);
            }
        }
        let mut state = CaseState::default();
        for event in &self.events {
            match &event.fact {
                Fact::Received { .. } => earliest(&mut state.received, event),
                Fact::SupplementRequested { .. } => {
                    if state
                        .due_change
                        .is_none_or(|kept| event.stamp() > kept.stamp())
                    {
                        state.due_change = Some(event);
                    }
                }
                Fact::ApologyIssued { .. } => earliest(&mut state.apology, event),
                Fact::Resolved { .. } => earliest(&mut state.resolution, event),
                Fact::Withdrawn => earliest(&mut state.withdrawal, event),
                Fact::Paid { .. } => state.payments.push(event),
                Fact::Rated { .. } => {
                    if state.rating.is_none_or(|kept| event.stamp() > kept.stamp()) {
                        state.rating = Some(event);
                    }
                }
                Fact::Synced => earliest(&mut state.sync, event),
                Fact::FeedbackReceived { .. } | Fact::FeedbackResolved => {}
            }
        }
        state
    }

    /// What counts in a feedback record.
    pub fn feedback_state(&self) -> FeedbackState<'_> {
        let mut state = FeedbackState::default();
        for event in &self.events {
            let slot = match event.fact {
                Fact::FeedbackReceived { .. } => &mut state.received,
                Fact::FeedbackResolved => &mut state.resolution,
                _ => continue,
            };
            if slot.is_none_or(|kept| event.stamp() < kept.stamp()) {
                *slot = Some(event);
            }
        }
        state
    }
}

/// The events that count in a case, each picked by the rule of §3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseState<'r> {
    /// The earliest `case.received`.
    pub received: Option<&'r RecordedEvent>,
    /// The latest supplement request: it replaces the due time.
    pub due_change: Option<&'r RecordedEvent>,
    /// The first apology letter.
    pub apology: Option<&'r RecordedEvent>,
    /// The earliest `case.resolved`.
    pub resolution: Option<&'r RecordedEvent>,
    /// The earliest `case.withdrawn`.
    pub withdrawal: Option<&'r RecordedEvent>,
    /// Every payment, by event id: the case counts once, at the earliest.
    pub payments: Vec<&'r RecordedEvent>,
    /// The latest rating.
    pub rating: Option<&'r RecordedEvent>,
    /// The first sync to the national portal.
    pub sync: Option<&'r RecordedEvent>,
}

impl CaseState<'_> {
    /// The due time used for timeliness: from `case.received`, replaced by
    /// the latest supplement request. Apology letters do not move it.
    pub fn due_at(&self) -> Option<Moment> {
        let Some(Fact::Received { due_at, .. }) = self.received.map(|e| &e.fact) else {
            return None;
        };
        match self.due_change.map(|e| &e.fact) {
            Some(Fact::SupplementRequested { due_at, .. }) => Some(*due_at),
            _ => Some(*due_at),
        }
    }
}

/// The events that count in a feedback record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedbackState<'r> {
    /// The earliest `feedback.received`.
    pub received: Option<&'r RecordedEvent>,
    /// The earliest `feedback.resolved`.
    pub resolution: Option<&'r RecordedEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_events::{parse_event, Validation};
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        /// The log of the test: what the fold reads back data from.
        static LOG: RefCell<HashMap<u64, Event>> = RefCell::new(HashMap::new());
    }

    /// Folding as the batch fold does: reading back the held event's data
    /// when only they can decide.
    trait Put {
        fn put(&mut self, sequence: u64, event: &Event) -> Folded;
    }

    impl Put for Record {
        fn put(&mut self, sequence: u64, event: &Event) -> Folded {
            LOG.with(|log| log.borrow_mut().insert(sequence, event.clone()));
            match self.fold(sequence, event, event.content_hash()) {
                Folded::NeedsData(held) => {
                    let data = LOG.with(|log| log.borrow()[&held].data.identity_json());
                    self.fold_with_data(sequence, event, event.content_hash(), &data)
                }
                other => other,
            }
        }
    }

    fn event(id: &str, kind_and_data: &str, at: &str) -> Event {
        event_of_unit("C1", id, kind_and_data, at)
    }

    fn event_of_unit(unit: &str, id: &str, kind_and_data: &str, at: &str) -> Event {
        let units: std::collections::HashSet<String> =
            ["C1".to_owned(), "C2".to_owned()].into_iter().collect();
        let (kind, data) = kind_and_data.split_once(' ').unwrap();
        let line = format!(
            r#"{{"event_id":"{id}","kind":"{kind}","case_id":"X-1","unit_id":"{unit}","occurred_at":"{at}","data":{data}}}"#
        );
        parse_event(line.as_bytes(), &Validation::now(&units)).unwrap()
    }

    #[test]
    fn a_stored_record_names_its_unit_once_and_reads_back_whole() {
        let at = "2025-03-01T08:00:00+07:00";
        let rated = r#"case.rated {"level":"satisfied"}"#;
        let mut record = Record::default();
        record.put(1, &event_of_unit("C2", ID, rated, at));
        record.put(2, &event_of_unit("C1", ID, rated, at));
        record.put(
            3,
            &event_of_unit("C2", "5f0c3f0e-0000-4000-8000-000000000002", rated, at),
        );
        assert_eq!(
            (record.events.len(), record.kept_aside.len()),
            (2, 1),
            "{record:?}"
        );
        let bytes = postcard::to_stdvec(&record).unwrap();
        assert_eq!(postcard::from_bytes::<Record>(&bytes).unwrap(), record);
        let named = |unit: &[u8]| bytes.windows(unit.len()).filter(|w| *w == unit).count();
        // The first event's unit once; the one naming the other unit, its own.
        assert_eq!((named(b"C1"), named(b"C2")), (1, 1), "{bytes:?}");
    }

    #[test]
    fn a_stored_record_keeps_times_and_sequences_apart_from_its_first_event() {
        // Events whose ids sort against their times and sequences: the
        // differences from the first stored event go both ways.
        let rated = r#"case.rated {"level":"satisfied"}"#;
        let mut record = Record::default();
        record.put(
            400_000,
            &event(
                "00000000-0000-4000-8000-000000000001",
                rated,
                "2025-03-01T08:00:00.5+07:00",
            ),
        );
        record.put(
            7,
            &event(
                "00000000-0000-4000-8000-000000000002",
                rated,
                "2024-12-30T17:00:00+07:00",
            ),
        );
        record.put(
            u64::MAX,
            &event(
                "00000000-0000-4000-8000-000000000003",
                rated,
                "2026-01-31T23:59:59.999+07:00",
            ),
        );
        let bytes = postcard::to_stdvec(&record).unwrap();
        assert_eq!(postcard::from_bytes::<Record>(&bytes).unwrap(), record);
        // A rating two days and a hundred messages after the first event
        // costs its id and hash (16 + 8 bytes) and a few bytes more.
        let mut pair = Record::default();
        pair.put(
            1_000_000,
            &event(
                "00000000-0000-4000-8000-000000000001",
                rated,
                "2025-03-01T08:00:00+07:00",
            ),
        );
        let one = postcard::to_stdvec(&pair).unwrap().len();
        pair.put(
            1_000_100,
            &event(
                "00000000-0000-4000-8000-000000000002",
                rated,
                "2025-03-03T08:00:00+07:00",
            ),
        );
        let two = postcard::to_stdvec(&pair).unwrap().len();
        assert!(
            two - one <= 24 + 10,
            "{} bytes for one more event",
            two - one
        );
    }

    #[test]
    fn the_same_event_under_two_units_is_a_conflict_won_by_the_smaller_unit() {
        let at = "2025-03-01T08:00:00+07:00";
        let rated = r#"case.rated {"level":"satisfied"}"#;
        let under_c1 = event_of_unit("C1", ID, rated, at);
        let under_c2 = event_of_unit("C2", ID, rated, at);
        for order in [[&under_c1, &under_c2], [&under_c2, &under_c1]] {
            let mut record = Record::default();
            assert_eq!(record.put(1, order[0]), Folded::Applied);
            assert!(matches!(record.put(2, order[1]), Folded::Conflict(_)));
            assert_eq!(record.events[0].unit_id, "C1");
            assert_eq!(record.kept_aside[0].unit_id, "C2");
            // Either again is a duplicate, of what counts or of what was kept aside.
            assert_eq!(record.put(3, &under_c1), Folded::Duplicate { counts: true });
            assert_eq!(
                record.put(4, &under_c2),
                Folded::Duplicate { counts: false }
            );
        }
    }

    #[test]
    fn a_tie_in_time_goes_to_the_smaller_kind_before_the_unit_or_data() {
        let at = "2025-03-01T08:00:00+07:00";
        // case.paid < case.rated, though C2 > C1.
        let paid = event_of_unit("C2", ID, r#"case.paid {"amount_vnd":1,"online":true}"#, at);
        let rated = event_of_unit("C1", ID, r#"case.rated {"level":"satisfied"}"#, at);
        for order in [[&paid, &rated], [&rated, &paid]] {
            let mut record = Record::default();
            record.put(1, order[0]);
            record.put(2, order[1]);
            assert_eq!(record.events[0].kind(), Kind::CasePaid);
        }
    }

    const ID: &str = "8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51";

    #[test]
    fn the_same_event_again_is_a_duplicate_whatever_its_spelling() {
        let mut record = Record::default();
        let a = event(
            ID,
            r#"case.rated {"level":"satisfied"}"#,
            "2025-03-01T08:00:00+07:00",
        );
        // The same instant in UTC, the same data with an extra member.
        let b = event(
            ID,
            r#"case.rated {"level":"satisfied","note":"x"}"#,
            "2025-03-01T01:00:00Z",
        );
        assert_eq!(record.put(1, &a), Folded::Applied);
        assert_eq!(record.put(2, &b), Folded::Duplicate { counts: true });
        assert_eq!(record.events.len(), 1);
        assert_eq!(record.events[0].sequence, 1);
    }

    #[test]
    fn a_full_record_keeps_new_events_out_but_still_knows_its_own() {
        let rated = r#"case.rated {"level":"satisfied"}"#;
        let id = |n: usize| format!("00000000-0000-4000-8000-{n:012}");
        let mut record = Record::default();
        for n in 0..MAX_EVENTS_PER_RECORD {
            let at = "2025-03-01T08:00:00+07:00";
            assert_eq!(
                record.put(n as u64 + 1, &event(&id(n), rated, at)),
                Folded::Applied
            );
        }
        assert!(record.is_full());
        let next = MAX_EVENTS_PER_RECORD as u64 + 1;
        let new = event(
            &id(MAX_EVENTS_PER_RECORD),
            rated,
            "2025-03-01T08:00:00+07:00",
        );
        assert_eq!(
            record.put(next, &new),
            Folded::OverLimit(RecordLimit::Events)
        );
        // An event it holds is still a duplicate, not one over the limit.
        let again = event(&id(7), rated, "2025-03-01T08:00:00+07:00");
        assert_eq!(
            record.put(next + 1, &again),
            Folded::Duplicate { counts: true }
        );
        // Another content under an id it holds would grow what it keeps aside.
        let other = event(
            &id(7),
            r#"case.rated {"level":"unsatisfied"}"#,
            "2025-03-01T07:00:00+07:00",
        );
        assert_eq!(
            record.put(next + 2, &other),
            Folded::OverLimit(RecordLimit::Events)
        );
        assert_eq!(record.events.len(), MAX_EVENTS_PER_RECORD);
        assert!(record.kept_aside.is_empty());
    }

    #[test]
    fn a_record_holds_a_bounded_number_of_bytes() {
        // Free text is not kept: a 60 KiB reason costs a record nothing.
        let reason = "x".repeat(60 * 1024);
        let mut record = Record::default();
        let supplement = event(
            ID,
            &format!(
                r#"case.supplement_requested {{"reason":"{reason}","due_at":"2025-03-09T08:00:00+07:00"}}"#
            ),
            "2025-03-01T08:00:00+07:00",
        );
        assert_eq!(record.put(1, &supplement), Folded::Applied);
        assert!(record.events[0].size() < 200);
        // What is kept is bounded: procedure codes of 60 KiB, say.
        let code = "1".repeat(60 * 1024);
        let mut applied = 0;
        for n in 0..10 {
            let id = format!("00000000-0000-4000-8000-{n:012}");
            let received = event(
                &id,
                &format!(
                    r#"case.received {{"procedure_code":"{code}","field":"ho_tich","channel":"online","due_at":"2025-03-09T08:00:00+07:00"}}"#
                ),
                "2025-03-01T08:00:00+07:00",
            );
            match record.put(n + 2, &received) {
                Folded::Applied => applied += 1,
                Folded::OverLimit(limit) => assert_eq!(limit, RecordLimit::Bytes),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(applied, MAX_RECORD_BYTES / (60 * 1024));
        assert!(RecordLimit::Bytes.reason("X-1").contains("256 KiB"));
    }

    #[test]
    fn a_conflict_keeps_the_earliest_whatever_the_arrival_order() {
        let early = event(
            ID,
            r#"case.rated {"level":"unsatisfied"}"#,
            "2025-03-01T08:00:00+07:00",
        );
        let late = event(
            ID,
            r#"case.rated {"level":"satisfied"}"#,
            "2025-03-02T08:00:00+07:00",
        );
        let mut one = Record::default();
        assert_eq!(one.put(1, &late), Folded::Applied);
        let Folded::Conflict(conflict) = one.put(2, &early) else {
            panic!("a conflict")
        };
        assert_eq!(
            (conflict.loser.sequence, conflict.loser.at),
            (1, Moment::from(late.occurred_at))
        );
        let mut two = Record::default();
        assert_eq!(two.put(1, &early), Folded::Applied);
        let Folded::Conflict(conflict) = two.put(2, &late) else {
            panic!("a conflict")
        };
        assert_eq!(conflict.loser.at, Moment::from(late.occurred_at));
        let content = |record: &Record| {
            (
                record
                    .events
                    .iter()
                    .map(|e| (e.at, e.fact.clone()))
                    .collect::<Vec<_>>(),
                record
                    .kept_aside
                    .iter()
                    .map(|e| (e.at, e.fact.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(content(&one), content(&two));
        // The loser again is a duplicate of what was kept aside.
        assert_eq!(two.put(3, &late), Folded::Duplicate { counts: false });
        assert_eq!(two.kept_aside.len(), 1);
    }

    #[test]
    fn a_tie_in_time_goes_to_the_smaller_canonical_data() {
        let at = "2025-03-01T08:00:00+07:00";
        let satisfied = event(ID, r#"case.rated {"level":"satisfied"}"#, at);
        let very = event(ID, r#"case.rated {"level":"very_satisfied"}"#, at);
        for order in [[&satisfied, &very], [&very, &satisfied]] {
            let mut record = Record::default();
            record.put(1, order[0]);
            record.put(2, order[1]);
            assert_eq!(
                record.events[0].fact,
                Fact::Rated {
                    level: RatingLevel::Satisfied
                },
                r#"{{"level":"satisfied"}} < {{"level":"very_satisfied"}}"#
            );
        }
    }

    #[test]
    fn a_winner_displaced_by_a_conflict_stops_counting() {
        let mut record = Record::default();
        let received = |at: &str, due: &str| {
            event(
                ID,
                &format!(
                    r#"case.received {{"procedure_code":"1","field":"ho_tich","channel":"online","due_at":"{due}"}}"#
                ),
                at,
            )
        };
        record.put(
            1,
            &received("2025-03-05T08:00:00+07:00", "2025-03-09T08:00:00+07:00"),
        );
        assert!(record.case_state().due_at().is_some());
        record.put(
            2,
            &received("2025-03-04T08:00:00+07:00", "2025-03-06T08:00:00+07:00"),
        );
        let due = record.case_state().due_at().unwrap();
        let at = |text: &str| Moment::from(chrono::DateTime::parse_from_rfc3339(text).unwrap());
        assert_eq!(due, at("2025-03-06T08:00:00+07:00"));
        assert_eq!(record.kept_aside.len(), 1);
        assert_eq!(record.kept_aside[0].at, at("2025-03-05T08:00:00+07:00"));
    }
}
