//! The values the store takes and hands out (messages in, parked events,
//! pages, snapshots, totals, commit notices), apart from the code that
//! reads and writes them.

use chrono::{DateTime, Utc};
use kpi_domain::{
    Counters, Day, LiveCounts, Moment, RecordKey, RecordLimit, RecordedEvent, UnitIdx,
    UnitRegistry, CONFLICT_REASON,
};
use kpi_events::{ContentHash, Event, EventError, Validation};
use serde::{Deserialize, Serialize};

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
    /// The hash of the event's content ([`Event::content_hash`]; zero for
    /// an invalid one), computed where it was validated.
    pub content: ContentHash,
}

impl<'a> Incoming<'a> {
    /// Validates a message (CONTRACT §2, and its subject) as of the time
    /// the stream stored it, so that every replay decides alike. This is
    /// the costly part of ingesting; it may run on another thread than
    /// [`Store::ingest`](crate::Store::ingest).
    pub fn validate(
        sequence: u64,
        subject: &'a str,
        payload: &'a [u8],
        published: Option<DateTime<Utc>>,
        units: &UnitRegistry,
    ) -> Incoming<'a> {
        let validation = Validation::new(units, published.unwrap_or_else(Utc::now));
        let event = kpi_events::parse_message(subject, payload, &validation);
        Incoming {
            sequence,
            subject,
            payload,
            published,
            redrive_of: None,
            behind: 0,
            content: content_of(&event),
            event,
        }
    }
}

/// The content hash of a validated message (zero for an invalid one).
pub fn content_of(event: &Result<Event, EventError>) -> ContentHash {
    event
        .as_ref()
        .map_or(ContentHash::default(), Event::content_hash)
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
    /// Why it was kept aside.
    pub cause: ParkCause,
}

/// Why an event was kept aside: what sending it again can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParkCause {
    /// Invalid (CONTRACT §2): sent again after a fix, it counts.
    Invalid,
    /// Its case already held as much as one may: sent again, it would be
    /// kept aside again.
    OverLimit,
    /// It lost an identity conflict (CONTRACT §1.2): it never counts.
    Conflict,
}

impl ParkCause {
    /// The name in API answers.
    pub fn as_str(self) -> &'static str {
        match self {
            ParkCause::Invalid => "invalid",
            ParkCause::OverLimit => "over_limit",
            ParkCause::Conflict => "conflict",
        }
    }

    /// Whether sending the event again may make it count (`kpictl redrive`).
    pub fn redrivable(self) -> bool {
        self == ParkCause::Invalid
    }
}

impl ParkedEvent {
    /// The unit its subject names (`cases.<unit_id>.<kind>`), if any.
    pub fn unit_id(&self) -> &str {
        self.subject
            .strip_prefix(kpi_events::SUBJECT_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split('.').next())
            .unwrap_or_default()
    }

    /// The (case, event id) its payload names, if it is JSON that has them.
    pub fn identity(&self) -> Option<(String, String)> {
        #[derive(Deserialize)]
        struct Identity {
            case_id: String,
            event_id: String,
        }
        let identity: Identity = serde_json::from_slice(&self.payload).ok()?;
        Some((identity.case_id, identity.event_id.to_ascii_lowercase()))
    }

    /// A message kept aside as it came.
    pub(crate) fn of_message(
        message: &Incoming<'_>,
        field: Option<String>,
        reason: String,
    ) -> ParkedEvent {
        ParkedEvent {
            sequence: message.sequence,
            subject: message.subject.to_owned(),
            payload: message.payload.to_vec(),
            field,
            reason: kpi_events::cut_reason(&reason),
            published_unix: message.published.map(|at| at.timestamp()),
            cause: ParkCause::Invalid,
        }
    }

    /// A new event for a case that holds the most one may.
    pub(crate) fn over_limit(
        message: &Incoming<'_>,
        case_id: &str,
        limit: RecordLimit,
    ) -> ParkedEvent {
        ParkedEvent {
            cause: ParkCause::OverLimit,
            ..ParkedEvent::of_message(message, Some("case_id".to_owned()), limit.reason(case_id))
        }
    }

    /// The loser of an identity conflict, as the log holds it at its
    /// sequence (the same whichever of the two arrived first).
    pub(crate) fn conflict(
        case_id: &str,
        loser: &RecordedEvent,
        winner: &RecordedEvent,
        message: crate::LoggedMessage,
    ) -> ParkedEvent {
        ParkedEvent {
            sequence: loser.sequence,
            subject: message.subject,
            payload: message.payload,
            field: Some("event_id".to_owned()),
            // The same words whichever arrived first (`kpictl case` shows
            // the stream sequences).
            reason: format!(
                "{CONFLICT_REASON}: in case {case_id} the event that counts under {} is the {} of {}",
                loser.event_id,
                winner.kind(),
                winner.at.to_utc().with_timezone(&kpi_domain::vietnam()).to_rfc3339(),
            ),
            published_unix: message.published.map(|at| at.timestamp()),
            cause: ParkCause::Conflict,
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

/// One part of an export, as [`crate::Store::export_each`] hands it on.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportPart {
    /// First: the checkpoint, the day whose tree the open cases follow, and
    /// the open cases per unit (unit id, open, open without apology).
    Head {
        checkpoint: u64,
        live_day: Option<Day>,
        open: Vec<(String, u32, u32)>,
    },
    /// Non-zero day counters: (unit id, day, counters), by unit then day.
    Days(Vec<(String, Day, Counters)>),
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

/// What one call to [`Store::ingest`](crate::Store::ingest) did.
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
