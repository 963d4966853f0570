//! The canonical form of a valid event: what the project's own publishers
//! put on the bus (CONTRACT §2, "On the bus").
//!
//! The members of §2 only (no `schema`, whose one version is the
//! default), every data field of the kind with its default filled in, keys
//! sorted, no insignificant spaces; strings and times as the sender gave
//! them (a time keeps its offset). Since `Nats-Msg-Id` is the hash of the
//! body, a re-send that differs only in layout, key order or members the
//! contract does not know is then byte-identical, and JetStream drops it.

use chrono::{DateTime, FixedOffset, SecondsFormat};
use serde_json::{json, Value};

use crate::{Event, EventData};

fn time(at: &DateTime<FixedOffset>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

impl EventData {
    /// The `data` object with every field of the kind.
    pub fn to_json(&self) -> Value {
        match self {
            EventData::CaseReceived(received) => json!({
                "procedure_code": received.procedure_code,
                "field": received.field,
                "channel": received.channel.as_str(),
                "due_at": time(&received.due_at),
                "dossier_digitized": received.dossier_digitized,
                "reused_data": received.reused_data,
            }),
            EventData::CaseSupplementRequested { reason, due_at } => {
                json!({"reason": reason, "due_at": time(due_at)})
            }
            EventData::CaseApologyIssued {
                letter_ref,
                reason,
                new_due_at,
            } => {
                json!({"letter_ref": letter_ref, "reason": reason, "new_due_at": time(new_due_at)})
            }
            EventData::CaseResolved {
                result,
                result_electronic,
                result_digitized,
            } => json!({"result": result.as_str(), "result_electronic": result_electronic,
                        "result_digitized": result_digitized}),
            EventData::CaseWithdrawn { reason } => json!({ "reason": reason }),
            EventData::CasePaid { amount_vnd, online } => {
                json!({"amount_vnd": amount_vnd, "online": online})
            }
            EventData::CaseRated { level } => json!({"level": level.as_str()}),
            EventData::CaseSynced { portal } => json!({ "portal": portal }),
            EventData::FeedbackReceived { due_at } => json!({"due_at": time(due_at)}),
            EventData::FeedbackResolved => json!({}),
        }
    }
}

/// A time as §1.2 compares it: in Vietnam time, whatever offset it was
/// sent with, so that one instant has one spelling.
fn identity_time(at: &DateTime<FixedOffset>) -> String {
    at.with_timezone(&crate::vietnam())
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

impl EventData {
    /// The data as CONTRACT §1.2 compares them: JSON with keys sorted and
    /// no spaces, every field of the kind with its default, times in
    /// Vietnam time. The last tie-break between two events under one id.
    pub fn identity_json(&self) -> String {
        let mut value = self.to_json();
        let retimed = |text: &Value| {
            text.as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|at| Value::String(identity_time(&at)))
        };
        if let Value::Object(members) = &mut value {
            for key in ["due_at", "new_due_at"] {
                if let Some(retimed) = members.get(key).and_then(retimed) {
                    members.insert(key.to_owned(), retimed);
                }
            }
        }
        value.to_string()
    }
}

/// What makes two events under one id the same event (CONTRACT §1.2):
/// a hash of their kind, unit, instant and data. Equal content, equal
/// hash; a record keeps the hash, not the event.
///
/// The first 8 bytes of a SHA-256: hashes are only ever compared between
/// events under one (case, event id), a handful at most, so two contents
/// meet on one by chance once in 2^64. Finding two that do on purpose
/// takes about 2^32 hashes, and only makes a sender's own second event,
/// under its own id, count as a re-send of its first: a sender entitled
/// to the unit (CONTRACT §8.1) could write either anyway. Eight bytes an
/// event less, in every case record.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct ContentHash(pub [u8; 8]);

/// The fields of a content hash, each fed in a form of its own.
struct Fields(sha2::Sha256);

impl Fields {
    fn number(&mut self, value: u64) {
        use sha2::Digest;
        self.0.update(value.to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        use sha2::Digest;
        self.number(text.len() as u64);
        self.0.update(text.as_bytes());
    }

    fn instant(&mut self, at: &DateTime<FixedOffset>) {
        use sha2::Digest;
        let at = at.with_timezone(&chrono::Utc);
        self.0.update(at.timestamp().to_le_bytes());
        self.0.update(at.timestamp_subsec_nanos().to_le_bytes());
    }

    fn flags(&mut self, values: &[bool]) {
        use sha2::Digest;
        let byte = values
            .iter()
            .enumerate()
            .fold(0u8, |byte, (bit, value)| byte | (u8::from(*value) << bit));
        self.0.update([byte]);
    }

    fn finish(self) -> ContentHash {
        use sha2::Digest;
        let digest = self.0.finalize();
        let mut hash = ContentHash::default();
        let length = hash.0.len();
        hash.0.copy_from_slice(&digest[..length]);
        hash
    }
}

impl Event {
    /// The hash of the event's content (kind, unit, instant, data): of
    /// each field in a fixed order, strings with their length, times as
    /// instants (seconds and nanoseconds since the epoch), so that equal
    /// contents, however spelt, hash alike.
    pub fn content_hash(&self) -> ContentHash {
        let mut hash = Fields(sha2::Sha256::default());
        hash.text(self.kind().as_str());
        hash.text(&self.unit_id);
        hash.instant(&self.occurred_at);
        match &self.data {
            EventData::CaseReceived(received) => {
                hash.text(&received.procedure_code);
                hash.text(&received.field);
                hash.text(received.channel.as_str());
                hash.instant(&received.due_at);
                hash.flags(&[received.dossier_digitized, received.reused_data]);
            }
            EventData::CaseSupplementRequested { reason, due_at } => {
                hash.instant(due_at);
                hash.text(reason);
            }
            EventData::CaseApologyIssued {
                letter_ref,
                reason,
                new_due_at,
            } => {
                hash.instant(new_due_at);
                hash.text(letter_ref);
                hash.text(reason);
            }
            EventData::CaseResolved {
                result,
                result_electronic,
                result_digitized,
            } => {
                hash.text(result.as_str());
                hash.flags(&[*result_electronic, *result_digitized]);
            }
            EventData::CaseWithdrawn { reason } => hash.text(reason),
            EventData::CasePaid { amount_vnd, online } => {
                hash.number(*amount_vnd);
                hash.flags(&[*online]);
            }
            EventData::CaseRated { level } => hash.text(level.as_str()),
            EventData::CaseSynced { portal } => hash.text(portal),
            EventData::FeedbackReceived { due_at } => hash.instant(due_at),
            EventData::FeedbackResolved => {}
        }
        hash.finish()
    }

    /// The event in canonical form (module documentation).
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // serde_json's maps keep their keys sorted (no `preserve_order`).
        json!({
            "event_id": self.event_id.to_string(),
            "kind": self.kind().as_str(),
            "case_id": self.case_id,
            "unit_id": self.unit_id,
            "occurred_at": time(&self.occurred_at),
            "data": self.data.to_json(),
        })
        .to_string()
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use crate::{parse_event, Validation};
    use std::collections::HashSet;

    fn parse(line: &str) -> crate::Event {
        let units: HashSet<String> = ["C1".to_owned()].into_iter().collect();
        parse_event(line.as_bytes(), &Validation::now(&units)).expect("valid")
    }

    #[test]
    fn layout_key_order_defaults_and_unknown_members_make_no_difference() {
        let a = parse(
            r#"{"event_id":"8F1D2A4E-6B0C-4F3E-9A57-0C2B1D3E4F51","kind":"case.received","case_id":"X-1",
               "unit_id":"C1","occurred_at":"2025-03-01T08:00:00+07:00","schema":1,"note":"ignored",
               "data":{"procedure_code":"1.0","field":"ho_tich","channel":"online",
                       "due_at":"2025-03-05T08:00:00+07:00","extra":true}}"#,
        );
        let b = parse(
            r#"{ "data": {"due_at": "2025-03-05T08:00:00+07:00", "channel": "online", "field": "ho_tich",
                 "procedure_code": "1.0", "dossier_digitized": false, "reused_data": false},
                 "occurred_at": "2025-03-01T08:00:00+07:00", "unit_id": "C1", "case_id": "X-1",
                 "kind": "case.received", "event_id": "8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51" }"#,
        );
        assert_eq!(a.to_canonical_json(), b.to_canonical_json());
        let text = String::from_utf8(a.to_canonical_json()).unwrap();
        assert_eq!(
            text,
            r#"{"case_id":"X-1","data":{"channel":"online","dossier_digitized":false,"due_at":"2025-03-05T08:00:00+07:00","field":"ho_tich","procedure_code":"1.0","reused_data":false},"event_id":"8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51","kind":"case.received","occurred_at":"2025-03-01T08:00:00+07:00","unit_id":"C1"}"#
        );
        // The canonical form reads back as the same event, and is its own
        // canonical form.
        let again = parse(&text);
        assert_eq!(again, a);
        assert_eq!(again.to_canonical_json(), a.to_canonical_json());
    }

    #[test]
    fn the_content_hash_is_that_of_the_instant_and_the_data_as_validated() {
        let a = parse(
            r#"{"event_id":"8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51","kind":"case.supplement_requested","case_id":"X-1",
               "unit_id":"C1","occurred_at":"2025-03-01T08:00:00+07:00","data":{"reason":"r","due_at":"2025-03-05T10:00:00+07:00"}}"#,
        );
        let b = parse(
            r#"{"event_id":"8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51","kind":"case.supplement_requested","case_id":"X-1",
               "unit_id":"C1","occurred_at":"2025-03-01T01:00:00Z","data":{"due_at":"2025-03-05T03:00:00Z","reason":"r","x":1}}"#,
        );
        assert_eq!(a.content_hash(), b.content_hash());
        assert_eq!(
            a.data.identity_json(),
            r#"{"due_at":"2025-03-05T10:00:00+07:00","reason":"r"}"#
        );
        let mut c = a.clone();
        c.unit_id = "C2".into();
        assert_ne!(a.content_hash(), c.content_hash());
        let mut d = a.clone();
        d.data = crate::EventData::CaseSupplementRequested {
            reason: "other".into(),
            due_at: a.occurred_at,
        };
        assert_ne!(a.content_hash(), d.content_hash());
    }

    #[test]
    fn a_time_keeps_its_offset_and_fraction() {
        let event = parse(
            r#"{"event_id":"8f1d2a4e-6b0c-4f3e-9a57-0c2b1d3e4f51","kind":"case.rated","case_id":"X-1",
               "unit_id":"C1","occurred_at":"2025-03-01T01:00:00.250Z","data":{"level":"satisfied"}}"#,
        );
        let text = String::from_utf8(event.to_canonical_json()).unwrap();
        assert!(
            text.contains(r#""occurred_at":"2025-03-01T01:00:00.250+00:00""#),
            "{text}"
        );
    }
}
