//! The case events of the contract (CONTRACT.md §2) as Rust types.
//!
//! This crate owns the one place where untrusted bytes from the provincial
//! case-handling system become typed [`Event`]s: [`parse_event`] checks every
//! rule of §2 and, when one fails, says which field and why
//! ([`EventError`]). It also maps events to and from their NATS subjects
//! (`cases.<unit_id>.<kind>`). There is no I/O here: the ingest tools, the
//! projector and the tests all call the same pure functions.

mod canonical;
pub use canonical::ContentHash;
mod error;
mod kind;
mod parse;
mod subject;

pub use error::EventError;
pub use kind::{Channel, Kind, RatingLevel, ResolutionResult};
pub use parse::{
    parse_event, vietnam, UnitDirectory, Validation, EARLIEST_DAY, MAX_CASE_ID_CHARS,
    MAX_HOURS_AHEAD,
};
pub use subject::{
    parse_message, subject_for, SubjectError, SubjectRoute, STREAM_SUBJECTS, SUBJECT_PREFIX,
};

use chrono::{DateTime, FixedOffset};
use uuid::Uuid;

/// The most characters of a reason quoted back or logged (CONTRACT §8.1):
/// a reason may quote what was sent, and what was sent may be 64 KiB.
pub const MAX_REASON_CHARS: usize = 200;

/// `reason` cut to [`MAX_REASON_CHARS`] characters (an ellipsis marks the
/// cut).
pub fn cut_reason(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        None => reason.to_owned(),
        Some((end, _)) => format!("{}…", &reason[..end]),
    }
}

/// Events larger than this many bytes are invalid (§2).
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// The only envelope version this build reads.
pub const SCHEMA_VERSION: u64 = 1;

/// A valid event: the envelope of §2 with its kind-specific data.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The idempotency key: the same id twice counts once.
    pub event_id: Uuid,
    /// The case code (or the feedback's own code for `feedback.*`).
    pub case_id: String,
    /// The unit named by the event; counts go to the unit of the case's
    /// `case.received`, whatever later events name.
    pub unit_id: String,
    /// When it happened at the desk, with the offset it was sent with.
    pub occurred_at: DateTime<FixedOffset>,
    /// The kind and its fields.
    pub data: EventData,
}

impl Event {
    pub fn kind(&self) -> Kind {
        self.data.kind()
    }

    /// The subject this event is published on.
    pub fn subject(&self) -> String {
        subject_for(&self.unit_id, self.kind())
    }
}

/// The `data` object of each kind.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    CaseReceived(CaseReceived),
    CaseSupplementRequested {
        reason: String,
        due_at: DateTime<FixedOffset>,
    },
    CaseApologyIssued {
        letter_ref: String,
        reason: String,
        new_due_at: DateTime<FixedOffset>,
    },
    CaseResolved {
        result: ResolutionResult,
        result_electronic: bool,
        result_digitized: bool,
    },
    CaseWithdrawn {
        reason: String,
    },
    CasePaid {
        amount_vnd: u64,
        online: bool,
    },
    CaseRated {
        level: RatingLevel,
    },
    CaseSynced {
        portal: String,
    },
    FeedbackReceived {
        due_at: DateTime<FixedOffset>,
    },
    FeedbackResolved,
}

/// `case.received`: the desk accepted the case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseReceived {
    /// Mã TTHC, the national procedure code.
    pub procedure_code: String,
    /// Lĩnh vực, e.g. `dat_dai`, `ho_tich`.
    pub field: String,
    pub channel: Channel,
    /// Hạn trả kết quả: when the result is due.
    pub due_at: DateTime<FixedOffset>,
    pub dossier_digitized: bool,
    pub reused_data: bool,
}

impl EventData {
    pub fn kind(&self) -> Kind {
        match self {
            EventData::CaseReceived(_) => Kind::CaseReceived,
            EventData::CaseSupplementRequested { .. } => Kind::CaseSupplementRequested,
            EventData::CaseApologyIssued { .. } => Kind::CaseApologyIssued,
            EventData::CaseResolved { .. } => Kind::CaseResolved,
            EventData::CaseWithdrawn { .. } => Kind::CaseWithdrawn,
            EventData::CasePaid { .. } => Kind::CasePaid,
            EventData::CaseRated { .. } => Kind::CaseRated,
            EventData::CaseSynced { .. } => Kind::CaseSynced,
            EventData::FeedbackReceived { .. } => Kind::FeedbackReceived,
            EventData::FeedbackResolved => Kind::FeedbackResolved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_at_200_characters_not_bytes() {
        let short = "field `channel`: `x` is not a channel";
        assert_eq!(cut_reason(short), short);
        let long = "ồ".repeat(300);
        let cut = cut_reason(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
