//! `GetCase`: a case's audit trail. The record says which events the case
//! has and at which stream sequences; the payloads are read back from the
//! stream itself, so what an auditor sees is what was published.

use std::sync::Arc;

use chrono::SecondsFormat;
use kpi_bus::{Bus, NatsArgs};
use kpi_domain::contribution::Timeliness;
use kpi_domain::{vietnam, Fact, Moment, Record, RecordKey, RecordedEvent, CONFLICT_REASON};
use tokio::sync::OnceCell;

use crate::pb;

/// The stream, connected on first use.
#[derive(Clone)]
pub struct Log {
    nats: NatsArgs,
    bus: Arc<OnceCell<Bus>>,
}

impl Log {
    pub fn new(nats: NatsArgs) -> Log {
        Log {
            nats,
            bus: Arc::new(OnceCell::new()),
        }
    }

    async fn bus(&self) -> Result<&Bus, String> {
        self.bus
            .get_or_try_init(|| async { self.nats.connect("kpi-projector-audit").await })
            .await
            .map_err(|err| err.to_string())
    }

    /// The `data` of the events at `sequences`, read back at once; those
    /// the log cannot give are left out.
    pub async fn event_data(&self, sequences: &[u64]) -> Vec<(u64, serde_json::Value)> {
        let Ok(bus) = self.bus().await else {
            return Vec::new();
        };
        let messages =
            futures::future::join_all(sequences.iter().map(|sequence| bus.message_at(*sequence)))
                .await;
        sequences
            .iter()
            .zip(messages)
            .filter_map(|(sequence, message)| {
                let message = message.ok()??;
                let mut value: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
                Some((*sequence, value["data"].take()))
            })
            .collect()
    }
}

/// RFC 3339 in Vietnam time.
pub fn rfc3339(at: Moment) -> String {
    at.to_utc()
        .with_timezone(&vietnam())
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn optional_time(event: Option<&RecordedEvent>) -> String {
    event.map(|event| rfc3339(event.at)).unwrap_or_default()
}

/// The reply for a record found under `key`, reflecting `sequence`.
pub async fn reply(
    key: &RecordKey,
    record: &Record,
    sequence: u64,
    now: Moment,
    log: Option<&Log>,
) -> pb::CaseReply {
    let held = record.held().is_some();
    let mut events: Vec<(&RecordedEvent, &str, String)> = record
        .events
        .iter()
        .map(|event| (event, if held { "held" } else { "counts" }, String::new()))
        .collect();
    events.extend(record.kept_aside.iter().map(|event| {
        let winner = record
            .events
            .iter()
            .find(|winner| winner.event_id == event.event_id);
        let reason = match winner {
            Some(winner) => format!(
                "{CONFLICT_REASON}: the {} of {} (stream sequence {}) counts under this id",
                winner.kind(),
                rfc3339(winner.at),
                winner.sequence
            ),
            None => CONFLICT_REASON.to_owned(),
        };
        (event, "kept_aside", reason)
    }));
    events.sort_by_key(|(event, ..)| event.sequence);

    let bus = match log {
        Some(log) => log.bus().await.map(Some),
        None => Ok(None),
    };
    // Every event read back from the log at once.
    let read_back: Vec<Result<Option<kpi_bus::StreamMessage>, kpi_bus::BusError>> = match &bus {
        Ok(Some(bus)) => {
            futures::future::join_all(
                events
                    .iter()
                    .map(|(event, ..)| bus.message_at(event.sequence)),
            )
            .await
        }
        _ => Vec::new(),
    };
    // What the record does not keep, from the events themselves.
    let mut data_of: std::collections::HashMap<u64, serde_json::Value> = Default::default();
    let mut replies = Vec::with_capacity(events.len());
    for (index, (event, status, reason)) in events.into_iter().enumerate() {
        let mut reply = pb::CaseEvent {
            stream_sequence: event.sequence,
            event_id: event.event_id.to_string(),
            kind: event.kind().as_str().to_owned(),
            occurred_at: rfc3339(event.at),
            unit_id: event.unit_id.clone(),
            subject: kpi_events::subject_for(&event.unit_id, event.kind()),
            status: status.to_owned(),
            reason,
            ..pb::CaseEvent::default()
        };
        match &bus {
            Ok(Some(_)) => match read_back.get(index) {
                Some(Ok(Some(message))) => {
                    if let Ok(mut value) =
                        serde_json::from_slice::<serde_json::Value>(&message.payload)
                    {
                        data_of.insert(event.sequence, value["data"].take());
                    }
                    reply.subject = message.subject.clone();
                    reply.payload = message.payload.to_vec();
                    reply.sender = message.sender.clone().unwrap_or_default();
                    reply.published_at = message
                        .published
                        .map(|at| at.to_rfc3339())
                        .unwrap_or_default();
                }
                Some(Ok(None)) | None => {
                    reply.payload_error =
                        format!("the stream no longer has sequence {}", event.sequence)
                }
                Some(Err(err)) => reply.payload_error = err.to_string(),
            },
            Ok(None) => reply.payload_error = "this server does not read the stream".to_owned(),
            Err(err) => reply.payload_error = format!("the stream cannot be read: {err}"),
        }
        replies.push(reply);
    }

    let state = if matches!(key, RecordKey::Feedback(_)) {
        feedback_state(record, now)
    } else {
        case_state(record, now, &data_of)
    };
    pb::CaseReply {
        case_id: key.code().to_owned(),
        feedback: matches!(key, RecordKey::Feedback(_)),
        events: replies,
        state: Some(state),
        stream_sequence: sequence,
    }
}

/// The case's derived state; `data` has each event's `data` as the log
/// holds it, by stream sequence (the free text and amounts records do not
/// keep).
fn case_state(
    record: &Record,
    now: Moment,
    data: &std::collections::HashMap<u64, serde_json::Value>,
) -> pb::CaseState {
    let text = |event: &RecordedEvent, member: &str| {
        data.get(&event.sequence)
            .and_then(|data| data[member].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let state = record.case_state();
    let mut reply = pb::CaseState {
        held_events: record.held().map_or(0, |(_, _, events)| events as u32),
        ..pb::CaseState::default()
    };
    let Some(received) = state.received else {
        reply.status = "held".to_owned();
        return reply;
    };
    if let Fact::Received {
        procedure_code,
        field,
        channel,
        due_at,
        ..
    } = &received.fact
    {
        reply.unit_id = received.unit_id.clone();
        reply.received_at = rfc3339(received.at);
        reply.channel = channel.as_str().to_owned();
        reply.field = field.clone();
        reply.procedure_code = procedure_code.clone();
        reply.original_due_at = rfc3339(*due_at);
    }
    let due_at = state.due_at();
    reply.due_at = due_at.map(rfc3339).unwrap_or_default();
    let mut supplements: Vec<&RecordedEvent> = record
        .events
        .iter()
        .filter(|event| matches!(event.fact, Fact::SupplementRequested { .. }))
        .collect();
    supplements.sort_by_key(|event| event.stamp());
    reply.supplements = supplements
        .into_iter()
        .filter_map(|event| match &event.fact {
            Fact::SupplementRequested { due_at } => Some(pb::Supplement {
                requested_at: rfc3339(event.at),
                due_at: rfc3339(*due_at),
                reason: text(event, "reason"),
            }),
            _ => None,
        })
        .collect();
    if let Some(apology) = state.apology {
        if let Fact::ApologyIssued { new_due_at } = &apology.fact {
            reply.apology = Some(pb::Apology {
                issued_at: rfc3339(apology.at),
                letter_ref: text(apology, "letter_ref"),
                new_due_at: rfc3339(*new_due_at),
            });
        }
    }
    reply.withdrawn_at = optional_time(state.withdrawal);
    reply.synced_at = optional_time(state.sync);
    reply.payments = state
        .payments
        .iter()
        .filter_map(|event| match event.fact {
            Fact::Paid { online } => Some(pb::Payment {
                paid_at: rfc3339(event.at),
                amount_vnd: data
                    .get(&event.sequence)
                    .and_then(|data| data["amount_vnd"].as_u64())
                    .unwrap_or_default(),
                online,
            }),
            _ => None,
        })
        .collect();
    if let Some(rating) = state.rating {
        if let Fact::Rated { level } = rating.fact {
            reply.rating = level.as_str().to_owned();
            reply.rated_at = rfc3339(rating.at);
        }
    }
    if let Some(resolution) = state.resolution {
        reply.resolved_at = rfc3339(resolution.at);
        if let Fact::Resolved { result, .. } = resolution.fact {
            reply.result = result.as_str().to_owned();
        }
    }
    reply.status = if state.withdrawal.is_some() {
        "withdrawn"
    } else if let (Some(resolution), Some(due_at)) = (state.resolution, due_at) {
        reply.timeliness = match Timeliness::of(resolution.at, due_at) {
            Timeliness::Early => "early",
            Timeliness::OnTime => "on_time",
            Timeliness::Late => "late",
        }
        .to_owned();
        "resolved"
    } else {
        reply.overdue = due_at.is_some_and(|due_at| due_at < now);
        "open"
    }
    .to_owned();
    reply
}

fn feedback_state(record: &Record, now: Moment) -> pb::CaseState {
    let state = record.feedback_state();
    let mut reply = pb::CaseState {
        held_events: record.held().map_or(0, |(_, _, events)| events as u32),
        ..pb::CaseState::default()
    };
    let Some(received) = state.received else {
        reply.status = "held".to_owned();
        return reply;
    };
    reply.unit_id = received.unit_id.clone();
    reply.received_at = rfc3339(received.at);
    let due_at = match received.fact {
        Fact::FeedbackReceived { due_at } => Some(due_at),
        _ => None,
    };
    reply.due_at = due_at.map(rfc3339).unwrap_or_default();
    reply.original_due_at = reply.due_at.clone();
    match state.resolution {
        Some(resolution) => {
            reply.status = "resolved".to_owned();
            reply.resolved_at = rfc3339(resolution.at);
            reply.timeliness = if due_at.is_some_and(|due_at| resolution.at <= due_at) {
                "on_time"
            } else {
                "late"
            }
            .to_owned();
        }
        None => {
            reply.status = "open".to_owned();
            reply.overdue = due_at.is_some_and(|due_at| due_at < now);
        }
    }
    reply
}
