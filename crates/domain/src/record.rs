//! Per-case and per-feedback records: what each needs to know to say what it
//! contributes to the counters.
//!
//! Applying an event only ever keeps a minimum, a maximum or a set member
//! (the earliest `case.received`, the latest rating, the payments by event
//! id...). Those operations are commutative and idempotent, so a record —
//! and therefore its contribution — does not depend on the order in which
//! events arrive, nor on duplicates.

use kpi_events::{Channel, Event, EventData, RatingLevel, ResolutionResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::Moment;

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

/// When an event happened and which event it was: the order used to pick
/// the earliest or latest of several events (ties broken by event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub at: Moment,
    pub event_id: Uuid,
}

impl Stamp {
    pub fn of(event: &Event) -> Stamp {
        Stamp {
            at: Moment::from(event.occurred_at),
            event_id: event.event_id,
        }
    }
}

/// Something picked among competing events by its [`Stamp`].
trait Stamped {
    fn stamp(&self) -> Stamp;
}

impl Stamped for Stamp {
    fn stamp(&self) -> Stamp {
        *self
    }
}

fn keep_earliest<T: Stamped>(slot: &mut Option<T>, candidate: T) {
    if slot
        .as_ref()
        .is_none_or(|kept| candidate.stamp() < kept.stamp())
    {
        *slot = Some(candidate);
    }
}

fn keep_latest<T: Stamped>(slot: &mut Option<T>, candidate: T) {
    if slot
        .as_ref()
        .is_none_or(|kept| candidate.stamp() > kept.stamp())
    {
        *slot = Some(candidate);
    }
}

macro_rules! stamped {
    ($($type:ty),+) => { $(impl Stamped for $type { fn stamp(&self) -> Stamp { self.stamp } })+ };
}
stamped!(
    Received,
    DueChange,
    Apology,
    Resolution,
    Rating,
    FeedbackReceived
);

/// The `case.received` that counts (the earliest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub stamp: Stamp,
    pub unit_id: String,
    pub procedure_code: String,
    pub field: String,
    pub channel: Channel,
    pub due_at: Moment,
    pub dossier_digitized: bool,
    pub reused_data: bool,
}

/// The latest `case.supplement_requested`: it replaces the due time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueChange {
    pub stamp: Stamp,
    pub due_at: Moment,
}

/// The first apology letter (thư xin lỗi).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apology {
    pub stamp: Stamp,
    pub letter_ref: String,
    pub new_due_at: Moment,
}

/// The `case.resolved` that counts (the earliest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub stamp: Stamp,
    pub result: ResolutionResult,
    pub result_electronic: bool,
    pub result_digitized: bool,
}

/// One `case.paid`; every payment counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub stamp: Stamp,
    pub amount_vnd: u64,
    pub online: bool,
}

/// The rating that counts (the latest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    pub stamp: Stamp,
    pub level: RatingLevel,
}

/// An event folded into a record: its id (the idempotency key) and where
/// it stands in the stream (for the case's audit trail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    pub event_id: Uuid,
    pub sequence: u64,
}

/// Everything about one case that its contribution depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// Every event folded in, sorted by event id.
    pub events: Vec<EventRef>,
    pub received: Option<Received>,
    pub due_change: Option<DueChange>,
    pub apology: Option<Apology>,
    pub resolution: Option<Resolution>,
    pub withdrawal: Option<Stamp>,
    /// Sorted by event id, one entry per event.
    pub payments: Vec<Payment>,
    pub rating: Option<Rating>,
    pub sync: Option<Stamp>,
}

impl CaseRecord {
    /// The due time used for timeliness: from `case.received`, replaced by
    /// the latest supplement request. Apology letters do not move it.
    pub fn due_at(&self) -> Option<Moment> {
        let received = self.received.as_ref()?;
        Some(
            self.due_change
                .as_ref()
                .map_or(received.due_at, |change| change.due_at),
        )
    }

    fn apply(&mut self, event: &Event) {
        let stamp = Stamp::of(event);
        match &event.data {
            EventData::CaseReceived(data) => keep_earliest(
                &mut self.received,
                Received {
                    stamp,
                    unit_id: event.unit_id.clone(),
                    procedure_code: data.procedure_code.clone(),
                    field: data.field.clone(),
                    channel: data.channel,
                    due_at: Moment::from(data.due_at),
                    dossier_digitized: data.dossier_digitized,
                    reused_data: data.reused_data,
                },
            ),
            EventData::CaseSupplementRequested { due_at, .. } => keep_latest(
                &mut self.due_change,
                DueChange {
                    stamp,
                    due_at: Moment::from(*due_at),
                },
            ),
            EventData::CaseApologyIssued {
                letter_ref,
                new_due_at,
                ..
            } => keep_earliest(
                &mut self.apology,
                Apology {
                    stamp,
                    letter_ref: letter_ref.clone(),
                    new_due_at: Moment::from(*new_due_at),
                },
            ),
            EventData::CaseResolved {
                result,
                result_electronic,
                result_digitized,
            } => keep_earliest(
                &mut self.resolution,
                Resolution {
                    stamp,
                    result: *result,
                    result_electronic: *result_electronic,
                    result_digitized: *result_digitized,
                },
            ),
            EventData::CaseWithdrawn { .. } => keep_earliest(&mut self.withdrawal, stamp),
            EventData::CasePaid { amount_vnd, online } => {
                let search = self
                    .payments
                    .binary_search_by(|p| p.stamp.event_id.cmp(&stamp.event_id));
                if let Err(position) = search {
                    self.payments.insert(
                        position,
                        Payment {
                            stamp,
                            amount_vnd: *amount_vnd,
                            online: *online,
                        },
                    );
                }
            }
            EventData::CaseRated { level } => keep_latest(
                &mut self.rating,
                Rating {
                    stamp,
                    level: *level,
                },
            ),
            EventData::CaseSynced { .. } => keep_earliest(&mut self.sync, stamp),
            EventData::FeedbackReceived { .. } | EventData::FeedbackResolved => {}
        }
    }
}

/// The `feedback.received` that counts (the earliest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReceived {
    pub stamp: Stamp,
    pub unit_id: String,
    pub due_at: Moment,
}

/// A complaint or recommendation (phản ánh, kiến nghị).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// Every event folded in, sorted by event id.
    pub events: Vec<EventRef>,
    pub received: Option<FeedbackReceived>,
    /// The earliest `feedback.resolved`.
    pub resolution: Option<Stamp>,
}

impl FeedbackRecord {
    fn apply(&mut self, event: &Event) {
        let stamp = Stamp::of(event);
        match &event.data {
            EventData::FeedbackReceived { due_at } => keep_earliest(
                &mut self.received,
                FeedbackReceived {
                    stamp,
                    unit_id: event.unit_id.clone(),
                    due_at: Moment::from(*due_at),
                },
            ),
            EventData::FeedbackResolved => keep_earliest(&mut self.resolution, stamp),
            _ => {}
        }
    }
}

/// A stored record of either sort. Records live in a map keyed by
/// [`RecordKey`] and are moved rarely, so the size difference is harmless.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Case(CaseRecord),
    Feedback(FeedbackRecord),
}

impl Record {
    /// The empty record an event of this key starts.
    pub fn empty_for(key: &RecordKey) -> Record {
        match key {
            RecordKey::Case(_) => Record::Case(CaseRecord::default()),
            RecordKey::Feedback(_) => Record::Feedback(FeedbackRecord::default()),
        }
    }

    /// Folds one event read at stream `sequence` in, unless an event with
    /// its id was folded before (then it returns false: it counts once).
    /// Events of the other sort are ignored (the key separates them).
    pub fn fold(&mut self, sequence: u64, event: &Event) -> bool {
        let events = match self {
            Record::Case(case) => &mut case.events,
            Record::Feedback(feedback) => &mut feedback.events,
        };
        match events.binary_search_by(|seen| seen.event_id.cmp(&event.event_id)) {
            Ok(_) => return false,
            Err(position) => events.insert(
                position,
                EventRef {
                    event_id: event.event_id,
                    sequence,
                },
            ),
        }
        match self {
            Record::Case(case) => case.apply(event),
            Record::Feedback(feedback) => feedback.apply(event),
        }
        true
    }
}
