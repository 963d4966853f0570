//! NATS subjects of case events: `cases.<unit_id>.<kind>` (§2, "On the bus").
//!
//! Subject permissions are how each publisher is limited to its own units and
//! kinds, so a consumer must check that the event says what its subject says.

use crate::{parse_event, Event, EventError, Kind, Validation};

/// The first token of every case-event subject.
pub const SUBJECT_PREFIX: &str = "cases";

/// The subjects the `CASES` stream captures.
pub const STREAM_SUBJECTS: &str = "cases.>";

/// The subject an event of `kind` for `unit_id` is published on.
pub fn subject_for(unit_id: &str, kind: Kind) -> String {
    format!("{SUBJECT_PREFIX}.{unit_id}.{kind}")
}

/// A subject that is not `cases.<unit_id>.<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject `{subject}` is not of the form cases.<unit_id>.<kind>")]
pub struct SubjectError {
    pub subject: String,
}

/// The unit and kind a subject routes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectRoute<'a> {
    pub unit_id: &'a str,
    pub kind: Kind,
}

impl<'a> SubjectRoute<'a> {
    pub fn parse(subject: &'a str) -> Result<Self, SubjectError> {
        let error = || SubjectError {
            subject: subject.to_owned(),
        };
        let rest = subject
            .strip_prefix(SUBJECT_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or_else(error)?;
        let (unit_id, kind) = rest.split_once('.').ok_or_else(error)?;
        let kind = Kind::parse(kind).ok_or_else(error)?;
        if unit_id.is_empty() {
            return Err(error());
        }
        Ok(SubjectRoute { unit_id, kind })
    }

    /// The event must name the unit and kind its subject names: otherwise a
    /// publisher allowed only some subjects could count anything.
    pub fn check(&self, subject: &str, event: &Event) -> Result<(), EventError> {
        if event.unit_id != self.unit_id {
            return Err(EventError::Invalid {
                field: "unit_id".into(),
                reason: format!(
                    "`{}` differs from the unit `{}` of subject `{subject}`",
                    event.unit_id, self.unit_id
                ),
            });
        }
        if event.kind() != self.kind {
            return Err(EventError::Invalid {
                field: "kind".into(),
                reason: format!(
                    "`{}` differs from the kind `{}` of subject `{subject}`",
                    event.kind(),
                    self.kind
                ),
            });
        }
        Ok(())
    }
}

/// Validates a message read from the bus: the event, its subject, and that
/// the two agree. This is the whole check a consumer makes before counting.
pub fn parse_message(
    subject: &str,
    payload: &[u8],
    validation: &Validation<'_>,
) -> Result<Event, EventError> {
    // The event's own faults first: they are what the sender must fix.
    let event = parse_event(payload, validation)?;
    let route = SubjectRoute::parse(subject).map_err(|err| EventError::Invalid {
        field: "subject".into(),
        reason: err.to_string(),
    })?;
    route.check(subject, &event)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const PAID: &str = r#"{"event_id":"676b00ec-1b9e-778d-96ef-069b25f17f9a","kind":"case.paid","case_id":"X-6","unit_id":"C1","occurred_at":"2024-12-01T08:00:00+07:00","data":{"amount_vnd":5,"online":true}}"#;

    static UNITS: std::sync::LazyLock<HashSet<String>> =
        std::sync::LazyLock::new(|| ["C1".to_owned(), "C2".to_owned()].into_iter().collect());

    fn units() -> Validation<'static> {
        Validation::now(&*UNITS)
    }

    #[test]
    fn a_message_must_say_what_its_subject_says() {
        assert!(parse_message("cases.C1.case.paid", PAID.as_bytes(), &units()).is_ok());
        let err = parse_message("cases.C2.case.paid", PAID.as_bytes(), &units()).unwrap_err();
        assert_eq!(err.field(), Some("unit_id"));
        let err = parse_message("cases.C1.case.rated", PAID.as_bytes(), &units()).unwrap_err();
        assert_eq!(err.field(), Some("kind"));
        let err = parse_message("elsewhere", PAID.as_bytes(), &units()).unwrap_err();
        assert_eq!(err.field(), Some("subject"));
    }

    #[test]
    fn subjects_round_trip() {
        let subject = subject_for("5153105", Kind::CaseReceived);
        assert_eq!(subject, "cases.5153105.case.received");
        let route = SubjectRoute::parse(&subject).expect("valid");
        assert_eq!(route.unit_id, "5153105");
        assert_eq!(route.kind, Kind::CaseReceived);
    }

    #[test]
    fn foreign_subjects_are_refused() {
        for subject in [
            "cases",
            "cases.X",
            "cases.X.case.exploded",
            "orders.X.case.paid",
            "cases..case.paid",
        ] {
            assert!(SubjectRoute::parse(subject).is_err(), "{subject}");
        }
    }
}
