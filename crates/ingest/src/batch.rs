//! One path in, however an event comes: lines are validated (CONTRACT §2,
//! and the service's kinds, §7), the valid ones published in canonical form
//! with the hash of that body as `Nats-Msg-Id`, and every line accounted
//! for in a report:
//! accepted with its stream sequence, rejected with the field and reason,
//! or not stored in time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_events::{parse_event, Event, Validation, MAX_EVENT_BYTES};
use serde::Serialize;
use uuid::Uuid;

use crate::publish::{Outgoing, Publisher, Stored};
use crate::senders::Sender;

use crate::service::Accepts;

/// One line of a body or a file, numbered from 1.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub number: usize,
    pub bytes: &'a [u8],
}

/// Splits NDJSON into numbered lines, dropping a trailing `\r` and blank
/// lines (which keep their number).
pub fn ndjson_lines(body: &[u8]) -> impl Iterator<Item = Line<'_>> {
    body.split(|byte| *byte == b'\n')
        .enumerate()
        .map(|(index, bytes)| Line {
            number: index + 1,
            bytes: bytes.strip_suffix(b"\r").unwrap_or(bytes),
        })
        .filter(|line| !line.bytes.iter().all(u8::is_ascii_whitespace))
}

/// A line that was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub line: usize,
    pub event_id: Uuid,
    pub stream_sequence: u64,
    /// The stream already had this event (a re-send).
    pub duplicate: bool,
}

/// A line that is invalid: never published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub line: usize,
    /// The field at fault; `null` when the line as a whole is.
    pub field: Option<String>,
    pub reason: String,
}

/// A valid line JetStream did not store in time: send it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotStored {
    pub line: usize,
    pub event_id: Uuid,
    pub reason: String,
}

/// What became of every line (CONTRACT §7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<Rejected>,
    /// Only when the bus did not store some valid lines in time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_stored: Vec<NotStored>,
}

/// Why a line is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub field: Option<String>,
    pub reason: String,
}

impl LineError {
    pub fn into_rejected(self, line: usize) -> Rejected {
        Rejected {
            line,
            field: self.field,
            reason: kpi_events::cut_reason(&self.reason),
        }
    }
}

/// Validates one line as an event this path accepts, as of `validation`.
pub fn validate_line(
    bytes: &[u8],
    accepts: Accepts,
    validation: &Validation<'_>,
) -> Result<Event, LineError> {
    let whole = |reason: String| LineError {
        field: None,
        reason,
    };
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(whole(format!(
            "the event is {} bytes; the limit is {MAX_EVENT_BYTES} bytes (64 KiB)",
            bytes.len()
        )));
    }
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(whole(format!(
            "the line is not valid UTF-8 (first bad byte at offset {}); send events in UTF-8",
            err.valid_up_to()
        )));
    }
    let event = parse_event(bytes, validation).map_err(|err| LineError {
        field: err.field().map(str::to_owned),
        reason: err.to_string(),
    })?;
    accepts.check(event.kind()).map_err(|reason| LineError {
        field: Some("kind".to_owned()),
        reason,
    })?;
    Ok(event)
}

/// Validates and publishes batches of lines for one ingest path.
#[derive(Clone)]
pub struct Ingestor {
    bus: Bus,
    units: Arc<UnitRegistry>,
    accepts: Accepts,
    deadline: Duration,
}

impl Ingestor {
    /// `deadline`: how long each event may take to be stored.
    pub fn new(bus: Bus, units: Arc<UnitRegistry>, accepts: Accepts, deadline: Duration) -> Self {
        Ingestor {
            bus,
            units,
            accepts,
            deadline,
        }
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn units(&self) -> &Arc<UnitRegistry> {
        &self.units
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A publisher with this path's deadline.
    pub fn publisher<T: Send + 'static>(&self) -> Publisher<T> {
        Publisher::new(self.bus.clone(), self.deadline)
    }

    /// Validates one line as of now, as sent by `sender`: the message to
    /// publish (the event in canonical form, CONTRACT §2, saying who sent
    /// it), or why not (a unit outside the sender's scope included).
    pub fn prepare(&self, bytes: &[u8], sender: &Sender) -> Result<(Event, Outgoing), LineError> {
        let validation = Validation::now(&*self.units);
        let event = validate_line(bytes, self.accepts, &validation)?;
        sender.check(&self.units, &event)?;
        let message = Outgoing {
            subject: event.subject(),
            payload: Bytes::from(event.to_canonical_json()),
            sender: sender.name().clone(),
        };
        Ok((event, message))
    }

    /// Validates every line, publishes the valid ones and reports on each,
    /// in line order.
    pub async fn ingest<'a>(
        &self,
        lines: impl IntoIterator<Item = Line<'a>>,
        sender: &Sender,
    ) -> Report {
        let mut report = Report::default();
        let mut publisher = self.publisher();
        let mut outcomes = Vec::new();
        for line in lines {
            match self.prepare(line.bytes, sender) {
                Ok((event, message)) => {
                    outcomes.extend(publisher.send((line.number, event.event_id), message).await)
                }
                Err(error) => report.rejected.push(error.into_rejected(line.number)),
            }
        }
        outcomes.extend(publisher.finish().await);
        report.record(outcomes);
        report
    }
}

impl Report {
    /// Files publishing outcomes, tagged with (line, event id), in line order.
    pub fn record(&mut self, outcomes: Vec<((usize, Uuid), Result<Stored, String>)>) {
        for ((line, event_id), outcome) in outcomes {
            match outcome {
                Ok(stored) => self.accepted.push(Accepted {
                    line,
                    event_id,
                    stream_sequence: stored.sequence,
                    duplicate: stored.duplicate,
                }),
                Err(reason) => self.not_stored.push(NotStored {
                    line,
                    event_id,
                    reason,
                }),
            }
        }
        self.accepted.sort_by_key(|entry| entry.line);
        self.rejected.sort_by_key(|entry| entry.line);
        self.not_stored.sort_by_key(|entry| entry.line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Service;

    fn units() -> UnitRegistry {
        UnitRegistry::from_json(
            r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
                {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51"}]}"#
                .as_bytes(),
        )
        .unwrap()
    }

    const RATED: &str = r#"{"event_id":"8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51","kind":"case.rated","case_id":"H31-1","unit_id":"5153105","occurred_at":"2025-03-02T09:00:00+07:00","data":{"level":"satisfied"}}"#;

    #[test]
    fn lines_are_numbered_from_one_and_blank_ones_skipped() {
        let body = b"a\r\n\n  \nb\n";
        let lines: Vec<_> = ndjson_lines(body)
            .map(|line| (line.number, line.bytes))
            .collect();
        assert_eq!(lines, [(1, &b"a"[..]), (4, &b"b"[..])]);
    }

    #[test]
    fn a_line_must_be_utf8_small_enough_and_of_this_service() {
        let units = units();
        let validation = Validation::now(&units);
        let feedback = Accepts::Service(Service::Feedback);
        assert!(validate_line(RATED.as_bytes(), feedback, &validation).is_ok());

        let mut latin1 = RATED.as_bytes().to_vec();
        latin1.extend_from_slice(b" \xff");
        let err = validate_line(&latin1, feedback, &validation).unwrap_err();
        assert_eq!(err.field, None);
        assert!(err.reason.contains("not valid UTF-8"), "{}", err.reason);

        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        let err = validate_line(&big, feedback, &validation).unwrap_err();
        assert!(err.reason.contains("65537 bytes"), "{}", err.reason);

        let err = validate_line(
            RATED.as_bytes(),
            Accepts::Service(Service::Intake),
            &validation,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("kind"));
        assert!(err.reason.contains("feedback service"), "{}", err.reason);
    }
}
