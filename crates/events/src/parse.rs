//! Parsing and validation of one event (§2), first failing rule reported.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    CaseReceived, Channel, Event, EventData, EventError, Kind, RatingLevel, ResolutionResult,
    MAX_EVENT_BYTES, SCHEMA_VERSION,
};

/// The unit registry as event validation needs it: may an event name this
/// unit on this (Vietnam-local) day?
pub trait UnitDirectory {
    /// `Err` says why not, e.g. "unit `X` is not in the unit registry" or
    /// "unit 5153105 ceased on 2025-06-30; its successor is 5101234".
    fn check_unit(&self, unit_id: &str, on: NaiveDate) -> Result<(), String>;
}

fn not_in_registry(unit_id: &str) -> String {
    format!("unit `{unit_id}` is not in the unit registry")
}

impl UnitDirectory for HashSet<String> {
    fn check_unit(&self, unit_id: &str, _: NaiveDate) -> Result<(), String> {
        self.contains(unit_id)
            .then_some(())
            .ok_or_else(|| not_in_registry(unit_id))
    }
}

impl UnitDirectory for BTreeSet<String> {
    fn check_unit(&self, unit_id: &str, _: NaiveDate) -> Result<(), String> {
        self.contains(unit_id)
            .then_some(())
            .ok_or_else(|| not_in_registry(unit_id))
    }
}

/// What validating an event needs besides its bytes.
#[derive(Clone, Copy)]
pub struct Validation<'a> {
    /// The unit registry.
    pub units: &'a (dyn UnitDirectory + Sync),
    /// When the event is validated: an `occurred_at` more than 24 hours
    /// later is refused. On the bus this is the time the stream stored the
    /// message, so that every replay decides the same way.
    pub at: DateTime<Utc>,
}

impl<'a> Validation<'a> {
    pub fn new(units: &'a (dyn UnitDirectory + Sync), at: DateTime<Utc>) -> Self {
        Validation { units, at }
    }

    /// Validation as of now (ingest, import).
    pub fn now(units: &'a (dyn UnitDirectory + Sync)) -> Self {
        Validation::new(units, Utc::now())
    }
}

/// How far in the future an `occurred_at` may be, in hours (§2).
pub const MAX_HOURS_AHEAD: i64 = 24;

/// The first day an `occurred_at` may fall on (§2), Vietnam time.
pub const EARLIEST_DAY: (i32, u32, u32) = (2000, 1, 1);

/// UTC+07:00, the offset of every day boundary of the contract.
pub fn vietnam() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).expect("+07:00 is a valid offset")
}

/// The longest `case_id`, in characters.
pub const MAX_CASE_ID_CHARS: usize = 64;

/// The longest `field` code, in characters.
const MAX_FIELD_CODE_CHARS: usize = 64;

/// Parses and validates one event against every rule of §2.
///
/// `bytes` is exactly what was sent (one NDJSON line, one NATS message).
/// On failure the error names the field and the reason.
pub fn parse_event(bytes: &[u8], validation: &Validation<'_>) -> Result<Event, EventError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge { size: bytes.len() });
    }
    // Fast path: decode straight into borrowed fields. Any doubt about a
    // field's presence or type sends the event down the detailed path, so
    // both paths apply the same rules in the same order (`build_event`).
    // Derived structs would also read a JSON array by position, so the fast
    // path takes objects only.
    if let Some((envelope, data)) = decode_fast(bytes) {
        let fields = FastFields {
            values: &envelope,
            prefix: "",
        };
        let data = || {
            Ok(FastFields {
                values: &data,
                prefix: "data.",
            })
        };
        match build_event(&fields, data, validation) {
            Err(EventError::Missing { .. } | EventError::WrongType { .. }) => {}
            decided => return decided,
        }
    }
    parse_detailed(bytes, validation)
}

fn starts_an_object(text: &[u8]) -> bool {
    text.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{')
}

/// The envelope and its data, when both are JSON objects that decode
/// without escapes, type mismatches or repeated members.
fn decode_fast(bytes: &[u8]) -> Option<(FastEnvelope<'_>, FastData<'_>)> {
    if !starts_an_object(bytes) {
        return None;
    }
    let envelope: FastEnvelope<'_> = serde_json::from_slice(bytes).ok()?;
    let raw = envelope.data?.get();
    if !starts_an_object(raw.as_bytes()) {
        return None;
    }
    let data = serde_json::from_str(raw).ok()?;
    Some((envelope, data))
}

/// The detailed path: a JSON value first, then each member with the exact
/// reason it is missing or of the wrong type.
fn parse_detailed(bytes: &[u8], validation: &Validation<'_>) -> Result<Event, EventError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|err| EventError::MalformedJson {
        detail: err.to_string(),
    })?;
    let Value::Object(envelope) = value else {
        return Err(EventError::NotAnObject {
            found: type_name(&value),
        });
    };
    let fields = JsonFields {
        object: &envelope,
        prefix: "",
    };
    let data = || match fields.required("data")? {
        Value::Object(object) => Ok(JsonFields {
            object,
            prefix: "data.",
        }),
        other => Err(fields.wrong_type("data", "an object ({} where a kind has no fields)", other)),
    };
    build_event(&fields, data, validation)
}

/// Every rule of §2, in the order errors are reported.
fn build_event<'a, E: Fields<'a>, D: Fields<'a>>(
    fields: &E,
    data: impl FnOnce() -> Result<D, EventError>,
    validation: &Validation<'_>,
) -> Result<Event, EventError> {
    match fields.schema()? {
        None | Some(SCHEMA_VERSION) => {}
        Some(other) => {
            return Err(EventError::invalid(
                "schema",
                format!("envelope version {other} is not supported; this build reads version {SCHEMA_VERSION}"),
            ))
        }
    }

    let event_id_text = fields.string("event_id")?;
    let event_id = Uuid::parse_str(event_id_text).map_err(|_| {
        EventError::invalid(
            "event_id",
            format!("`{event_id_text}` is not a UUID (e.g. 3f2b8c1e-5d4a-4c3b-9a8e-1b2c3d4e5f60)"),
        )
    })?;

    let kind_text = fields.string("kind")?;
    let kind = Kind::parse(kind_text).ok_or_else(|| {
        EventError::invalid(
            "kind",
            format!(
                "`{kind_text}` is not a known kind; known kinds: {}",
                Kind::accepted()
            ),
        )
    })?;

    let case_id = fields.string("case_id")?;
    validate_case_id(case_id)?;

    let unit_id = fields.string("unit_id")?;
    let occurred_at = fields.timestamp("occurred_at")?;
    validate_occurred_at(occurred_at, validation.at)?;
    let local_day = occurred_at.with_timezone(&vietnam()).date_naive();
    validation
        .units
        .check_unit(unit_id, local_day)
        .map_err(|reason| EventError::invalid("unit_id", reason))?;
    let data = parse_data(kind, &data()?, occurred_at)?;

    Ok(Event {
        event_id,
        case_id: case_id.to_owned(),
        unit_id: unit_id.to_owned(),
        occurred_at,
        data,
    })
}

fn parse_data<'a>(
    kind: Kind,
    data: &impl Fields<'a>,
    occurred_at: DateTime<FixedOffset>,
) -> Result<EventData, EventError> {
    Ok(match kind {
        Kind::CaseReceived => {
            let procedure_code = data.string("procedure_code")?.to_owned();
            let field = data.string("field")?;
            validate_field_code(field, &data.name("field"))?;
            let channel = data.choice("channel", Channel::parse, Channel::accepted)?;
            let due_at = data.timestamp("due_at")?;
            due_after(data, "due_at", due_at, occurred_at)?;
            EventData::CaseReceived(CaseReceived {
                procedure_code,
                field: field.to_owned(),
                channel,
                due_at,
                dossier_digitized: data.optional_bool("dossier_digitized")?,
                reused_data: data.optional_bool("reused_data")?,
            })
        }
        Kind::CaseSupplementRequested => {
            let reason = data.string("reason")?.to_owned();
            let due_at = data.timestamp("due_at")?;
            due_after(data, "due_at", due_at, occurred_at)?;
            EventData::CaseSupplementRequested { reason, due_at }
        }
        Kind::CaseApologyIssued => EventData::CaseApologyIssued {
            letter_ref: data.string("letter_ref")?.to_owned(),
            reason: data.string("reason")?.to_owned(),
            new_due_at: data.timestamp("new_due_at")?,
        },
        Kind::CaseResolved => EventData::CaseResolved {
            result: data.choice(
                "result",
                ResolutionResult::parse,
                ResolutionResult::accepted,
            )?,
            result_electronic: data.bool("result_electronic")?,
            result_digitized: data.bool("result_digitized")?,
        },
        Kind::CaseWithdrawn => EventData::CaseWithdrawn {
            reason: data.string("reason")?.to_owned(),
        },
        Kind::CasePaid => EventData::CasePaid {
            amount_vnd: data.non_negative_integer("amount_vnd")?,
            online: data.bool("online")?,
        },
        Kind::CaseRated => EventData::CaseRated {
            level: data.choice("level", RatingLevel::parse, RatingLevel::accepted)?,
        },
        Kind::CaseSynced => EventData::CaseSynced {
            portal: data.string("portal")?.to_owned(),
        },
        Kind::FeedbackReceived => EventData::FeedbackReceived {
            due_at: data.timestamp("due_at")?,
        },
        Kind::FeedbackResolved => EventData::FeedbackResolved,
    })
}

/// A due time must come after the event that sets it.
fn due_after<'a>(
    data: &impl Fields<'a>,
    key: &str,
    due_at: DateTime<FixedOffset>,
    occurred_at: DateTime<FixedOffset>,
) -> Result<(), EventError> {
    if due_at > occurred_at {
        return Ok(());
    }
    Err(EventError::invalid(
        data.name(key),
        format!(
            "{} is not after occurred_at {}",
            due_at.to_rfc3339(),
            occurred_at.to_rfc3339()
        ),
    ))
}

/// `occurred_at` must fall in a plausible window: not before 2000-01-01
/// (Vietnam time), not more than 24 hours after validation.
fn validate_occurred_at(
    occurred_at: DateTime<FixedOffset>,
    validated_at: DateTime<Utc>,
) -> Result<(), EventError> {
    let (year, month, day) = EARLIEST_DAY;
    let earliest = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .and_then(|midnight| vietnam().from_local_datetime(&midnight).single())
        .expect("2000-01-01 exists");
    if occurred_at < earliest {
        return Err(EventError::invalid(
            "occurred_at",
            format!(
                "{} is before {}: not a plausible time for a case event",
                occurred_at.to_rfc3339(),
                earliest.to_rfc3339()
            ),
        ));
    }
    let latest = validated_at.checked_add_signed(chrono::Duration::hours(MAX_HOURS_AHEAD));
    if let Some(latest) = latest.filter(|latest| occurred_at > *latest) {
        return Err(EventError::invalid(
            "occurred_at",
            format!(
                "{} is more than {MAX_HOURS_AHEAD} hours after the time it was received ({}): check the sender's clock",
                occurred_at.to_rfc3339(),
                (latest - chrono::Duration::hours(MAX_HOURS_AHEAD))
                    .with_timezone(&vietnam())
                    .to_rfc3339()
            ),
        ));
    }
    Ok(())
}

fn validate_case_id(case_id: &str) -> Result<(), EventError> {
    let chars = case_id.chars().count();
    if chars == 0 || chars > MAX_CASE_ID_CHARS {
        return Err(EventError::invalid(
            "case_id",
            format!("must be 1 to {MAX_CASE_ID_CHARS} characters, found {chars}"),
        ));
    }
    if let Some(bad) = case_id.chars().find(|c| c.is_control() || is_invisible(*c)) {
        return Err(EventError::invalid(
            "case_id",
            format!(
                "must be printable, found invisible character U+{:04X}",
                bad as u32
            ),
        ));
    }
    if case_id.trim().is_empty() {
        return Err(EventError::invalid("case_id", "must not be only spaces"));
    }
    if case_id.trim() != case_id {
        return Err(EventError::invalid(
            "case_id",
            format!("`{case_id}` has leading or trailing spaces; send the code without them"),
        ));
    }
    if !unicode_normalization::is_nfc(case_id) {
        return Err(EventError::invalid(
            "case_id",
            format!(
                "`{case_id}` is not in Unicode NFC (composed) form; send it composed, e.g. `{}`, so that one case is not split in two by its spelling",
                unicode_normalization::UnicodeNormalization::nfc(case_id).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Format and separator characters that print as nothing (zero-width
/// spaces and joiners, direction marks, the byte-order mark, soft hyphens,
/// line and paragraph separators): a case code containing one looks like
/// another code but is not.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

fn validate_field_code(code: &str, name: &str) -> Result<(), EventError> {
    let well_formed = !code.is_empty()
        && code.len() <= MAX_FIELD_CODE_CHARS
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if well_formed {
        Ok(())
    } else {
        Err(EventError::invalid(
            name,
            format!(
                "`{code}` is not a field code: 1 to {MAX_FIELD_CODE_CHARS} characters of a-z, 0-9 and _ (e.g. dat_dai, ho_tich)"
            ),
        ))
    }
}

/// Parses an RFC 3339 time that carries an offset.
fn parse_timestamp(text: &str, name: &str) -> Result<DateTime<FixedOffset>, EventError> {
    DateTime::parse_from_rfc3339(text).map_err(|_| {
        let has_no_offset = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").is_ok();
        let reason = if has_no_offset {
            format!("`{text}` has no UTC offset; send e.g. {text}+07:00")
        } else {
            format!("`{text}` is not an RFC 3339 time with offset (e.g. 2024-03-15T08:30:00+07:00)")
        };
        EventError::invalid(name, reason)
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the members of one JSON object, with errors that carry
/// the member's full dotted name.
trait Fields<'a> {
    /// The full name of a member (`data.due_at`).
    fn name(&self, key: &str) -> String;
    fn string(&self, key: &str) -> Result<&'a str, EventError>;
    fn bool(&self, key: &str) -> Result<bool, EventError>;
    /// Absent or null reads as false.
    fn optional_bool(&self, key: &str) -> Result<bool, EventError>;
    fn non_negative_integer(&self, key: &str) -> Result<u64, EventError>;
    /// The envelope version, if given.
    fn schema(&self) -> Result<Option<u64>, EventError>;

    fn timestamp(&self, key: &str) -> Result<DateTime<FixedOffset>, EventError> {
        parse_timestamp(self.string(key)?, &self.name(key))
    }

    fn choice<T>(
        &self,
        key: &str,
        parse: fn(&str) -> Option<T>,
        accepted: fn() -> String,
    ) -> Result<T, EventError> {
        let text = self.string(key)?;
        parse(text).ok_or_else(|| {
            EventError::invalid(
                self.name(key),
                format!("`{text}` is not one of {}", accepted()),
            )
        })
    }
}

/// The members of a parsed JSON object: exact errors for every case.
struct JsonFields<'a> {
    object: &'a Map<String, Value>,
    prefix: &'static str,
}

impl<'a> JsonFields<'a> {
    fn optional(&self, key: &str) -> Option<&'a Value> {
        self.object.get(key).filter(|value| !value.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value, EventError> {
        self.object.get(key).ok_or_else(|| EventError::Missing {
            field: self.name(key),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> EventError {
        EventError::WrongType {
            field: self.name(key),
            expected,
            found: type_name(found),
        }
    }
}

impl<'a> Fields<'a> for JsonFields<'a> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn string(&self, key: &str) -> Result<&'a str, EventError> {
        let value = self.required(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", value))
    }

    fn bool(&self, key: &str) -> Result<bool, EventError> {
        let value = self.required(key)?;
        value
            .as_bool()
            .ok_or_else(|| self.wrong_type(key, "true or false", value))
    }

    fn optional_bool(&self, key: &str) -> Result<bool, EventError> {
        match self.optional(key) {
            None => Ok(false),
            Some(value) => value
                .as_bool()
                .ok_or_else(|| self.wrong_type(key, "true or false", value)),
        }
    }

    fn non_negative_integer(&self, key: &str) -> Result<u64, EventError> {
        let value = self.required(key)?;
        if let Some(amount) = value.as_u64() {
            return Ok(amount);
        }
        match value.as_i64() {
            Some(negative) => Err(EventError::invalid(
                self.name(key),
                format!("must be 0 or more, found {negative}"),
            )),
            None => Err(self.wrong_type(key, "a whole number", value)),
        }
    }

    fn schema(&self) -> Result<Option<u64>, EventError> {
        match self.optional("schema") {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type("schema", "an integer", value)),
        }
    }
}

/// The envelope decoded in one pass, borrowing from the input. It fails to
/// decode (and the detailed path takes over) on escaped strings, wrong
/// types and repeated members.
#[derive(serde::Deserialize)]
struct FastEnvelope<'a> {
    #[serde(default)]
    schema: Option<u64>,
    #[serde(borrow, default)]
    event_id: Option<&'a str>,
    #[serde(borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    case_id: Option<&'a str>,
    #[serde(borrow, default)]
    unit_id: Option<&'a str>,
    #[serde(borrow, default)]
    occurred_at: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// Every member any kind's `data` has.
#[derive(serde::Deserialize)]
struct FastData<'a> {
    #[serde(borrow, default)]
    procedure_code: Option<&'a str>,
    #[serde(borrow, default)]
    field: Option<&'a str>,
    #[serde(borrow, default)]
    channel: Option<&'a str>,
    #[serde(borrow, default)]
    due_at: Option<&'a str>,
    #[serde(default)]
    dossier_digitized: Option<bool>,
    #[serde(default)]
    reused_data: Option<bool>,
    #[serde(borrow, default)]
    reason: Option<&'a str>,
    #[serde(borrow, default)]
    letter_ref: Option<&'a str>,
    #[serde(borrow, default)]
    new_due_at: Option<&'a str>,
    #[serde(borrow, default)]
    result: Option<&'a str>,
    #[serde(default)]
    result_electronic: Option<bool>,
    #[serde(default)]
    result_digitized: Option<bool>,
    #[serde(default)]
    amount_vnd: Option<u64>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(borrow, default)]
    level: Option<&'a str>,
    #[serde(borrow, default)]
    portal: Option<&'a str>,
}

/// Members of a decoded struct by name.
trait Members<'a> {
    fn text(&self, key: &str) -> Option<&'a str>;
    fn flag(&self, key: &str) -> Option<bool>;
    fn whole(&self, key: &str) -> Option<u64>;
}

impl<'a> Members<'a> for FastEnvelope<'a> {
    fn text(&self, key: &str) -> Option<&'a str> {
        match key {
            "event_id" => self.event_id,
            "kind" => self.kind,
            "case_id" => self.case_id,
            "unit_id" => self.unit_id,
            "occurred_at" => self.occurred_at,
            _ => None,
        }
    }

    fn flag(&self, _: &str) -> Option<bool> {
        None
    }

    fn whole(&self, key: &str) -> Option<u64> {
        (key == "schema").then_some(self.schema).flatten()
    }
}

impl<'a> Members<'a> for FastData<'a> {
    fn text(&self, key: &str) -> Option<&'a str> {
        match key {
            "procedure_code" => self.procedure_code,
            "field" => self.field,
            "channel" => self.channel,
            "due_at" => self.due_at,
            "reason" => self.reason,
            "letter_ref" => self.letter_ref,
            "new_due_at" => self.new_due_at,
            "result" => self.result,
            "level" => self.level,
            "portal" => self.portal,
            _ => None,
        }
    }

    fn flag(&self, key: &str) -> Option<bool> {
        match key {
            "dossier_digitized" => self.dossier_digitized,
            "reused_data" => self.reused_data,
            "result_electronic" => self.result_electronic,
            "result_digitized" => self.result_digitized,
            "online" => self.online,
            _ => None,
        }
    }

    fn whole(&self, key: &str) -> Option<u64> {
        (key == "amount_vnd").then_some(self.amount_vnd).flatten()
    }
}

/// A decoded struct as [`Fields`]. An absent (or null) member reads as
/// missing: the caller then asks the detailed path for the exact error.
struct FastFields<'v, T> {
    values: &'v T,
    prefix: &'static str,
}

impl<'a, T: Members<'a>> Fields<'a> for FastFields<'_, T> {
    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn string(&self, key: &str) -> Result<&'a str, EventError> {
        self.values.text(key).ok_or_else(|| EventError::Missing {
            field: self.name(key),
        })
    }

    fn bool(&self, key: &str) -> Result<bool, EventError> {
        self.values.flag(key).ok_or_else(|| EventError::Missing {
            field: self.name(key),
        })
    }

    fn optional_bool(&self, key: &str) -> Result<bool, EventError> {
        Ok(self.values.flag(key).unwrap_or(false))
    }

    fn non_negative_integer(&self, key: &str) -> Result<u64, EventError> {
        self.values.whole(key).ok_or_else(|| EventError::Missing {
            field: self.name(key),
        })
    }

    fn schema(&self) -> Result<Option<u64>, EventError> {
        Ok(self.values.whole("schema"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static UNITS: std::sync::LazyLock<HashSet<String>> =
        std::sync::LazyLock::new(|| ["C1".to_owned()].into_iter().collect());

    /// Validation as of 2025-06-01, against a registry of one unit.
    fn units() -> Validation<'static> {
        let at = DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Validation::new(&*UNITS, at)
    }

    fn received() -> Value {
        json!({
            "event_id": "3a5163f4-b772-8bf8-65b1-d2302cb9e2bb",
            "kind": "case.received",
            "case_id": "000.00.31.H31-240315-0001",
            "unit_id": "C1",
            "occurred_at": "2024-03-15T08:30:00+07:00",
            "data": {"procedure_code": "1.008819", "field": "ho_tich", "channel": "online",
                     "due_at": "2024-03-18T08:30:00+07:00", "dossier_digitized": true}
        })
    }

    fn parse(value: &Value) -> Result<Event, EventError> {
        parse_event(value.to_string().as_bytes(), &units())
    }

    fn with(mut value: Value, path: &[&str], replacement: Option<Value>) -> Value {
        let (last, parents) = path.split_last().expect("path");
        let mut target = &mut value;
        for key in parents {
            target = target.get_mut(*key).expect("parent");
        }
        let object = target.as_object_mut().expect("object");
        match replacement {
            Some(new) => object.insert((*last).to_owned(), new),
            None => object.remove(*last),
        };
        value
    }

    fn error_of(value: Value) -> EventError {
        parse(&value).expect_err("must be invalid")
    }

    #[test]
    fn a_valid_received_event_parses_with_defaults() {
        let event = parse(&received()).expect("valid");
        assert_eq!(event.kind(), Kind::CaseReceived);
        assert_eq!(event.case_id, "000.00.31.H31-240315-0001");
        let EventData::CaseReceived(data) = &event.data else {
            panic!("kind")
        };
        assert_eq!(data.channel, Channel::Online);
        assert!(data.dossier_digitized);
        assert!(!data.reused_data, "reused_data defaults to false");
        assert_eq!(event.subject(), "cases.C1.case.received");
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let err = parse_event(b"{this is not json", &units()).unwrap_err();
        assert!(matches!(err, EventError::MalformedJson { .. }), "{err}");
        assert_eq!(err.field(), None);
    }

    #[test]
    fn a_json_array_is_not_an_event() {
        let err = parse_event(b"[1,2]", &units()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the event must be a JSON object, found an array"
        );
        // Not even one whose members are in the envelope's order.
        let positional = br#"[null,"676b00ec-1b9e-778d-96ef-069b25f17f9a","case.paid","X-6","C1","2024-12-01T08:00:00+07:00",{"amount_vnd":5,"online":true}]"#;
        let err = parse_event(positional, &units()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the event must be a JSON object, found an array"
        );
    }

    #[test]
    fn data_must_be_an_object_even_when_empty() {
        let event = json!({"event_id": "f299414d-8d5c-64d7-0c90-c7bcef44b596",
            "kind": "feedback.resolved", "case_id": "PAKN-0032", "unit_id": "C1",
            "occurred_at": "2025-04-24T11:07:00+07:00", "data": []});
        let err = error_of(event);
        assert_eq!(err.field(), Some("data"), "{err}");
    }

    #[test]
    fn events_over_64_kib_are_refused_before_parsing() {
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert_eq!(
            parse_event(&big, &units()).unwrap_err(),
            EventError::TooLarge {
                size: MAX_EVENT_BYTES + 1
            }
        );
    }

    #[test]
    fn each_missing_envelope_field_is_named() {
        for field in [
            "event_id",
            "kind",
            "case_id",
            "unit_id",
            "occurred_at",
            "data",
        ] {
            let err = error_of(with(received(), &[field], None));
            assert_eq!(err.field(), Some(field), "{err}");
            assert!(err.to_string().contains("is required"), "{err}");
        }
    }

    #[test]
    fn missing_data_fields_are_named_with_their_path() {
        for field in ["procedure_code", "field", "channel", "due_at"] {
            let err = error_of(with(received(), &["data", field], None));
            assert_eq!(err.field(), Some(format!("data.{field}").as_str()), "{err}");
        }
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_found() {
        let err = error_of(with(received(), &["case_id"], Some(json!(42))));
        assert_eq!(
            err.to_string(),
            "field `case_id` must be a string, found a number"
        );
        let err = error_of(with(
            received(),
            &["data", "reused_data"],
            Some(json!("yes")),
        ));
        assert_eq!(
            err.to_string(),
            "field `data.reused_data` must be true or false, found a string"
        );
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        let err = error_of(with(received(), &["kind"], Some(json!("case.exploded"))));
        assert_eq!(err.field(), Some("kind"));
        assert!(
            err.to_string()
                .contains("case.received, case.supplement_requested"),
            "{err}"
        );
    }

    #[test]
    fn a_time_without_offset_is_invalid() {
        let err = error_of(with(
            received(),
            &["occurred_at"],
            Some(json!("2024-12-01T08:00:00")),
        ));
        assert_eq!(err.field(), Some("occurred_at"));
        assert!(err.to_string().contains("has no UTC offset"), "{err}");
        let err = error_of(with(received(), &["occurred_at"], Some(json!("yesterday"))));
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
    }

    #[test]
    fn due_at_must_be_after_occurred_at_on_received() {
        let err = error_of(with(
            received(),
            &["data", "due_at"],
            Some(json!("2024-03-15T08:30:00+07:00")),
        ));
        assert_eq!(err.field(), Some("data.due_at"));
        assert!(
            err.to_string().contains("is not after occurred_at"),
            "{err}"
        );
    }

    #[test]
    fn offsets_are_compared_as_instants() {
        // 02:00 UTC is 09:00 in Vietnam: after 08:30+07:00.
        let event = with(
            received(),
            &["data", "due_at"],
            Some(json!("2024-03-15T02:00:00Z")),
        );
        assert!(parse(&event).is_ok());
    }

    #[test]
    fn unknown_unit_is_invalid() {
        let err = error_of(with(received(), &["unit_id"], Some(json!("NO_SUCH_UNIT"))));
        assert_eq!(
            err.to_string(),
            "field `unit_id`: unit `NO_SUCH_UNIT` is not in the unit registry"
        );
    }

    #[test]
    fn event_id_must_be_a_uuid() {
        let err = error_of(with(received(), &["event_id"], Some(json!("not-a-uuid"))));
        assert_eq!(err.field(), Some("event_id"));
    }

    #[test]
    fn case_id_length_is_counted_in_characters() {
        let sixty_four = "đ".repeat(64);
        assert!(parse(&with(received(), &["case_id"], Some(json!(sixty_four)))).is_ok());
        let err = error_of(with(received(), &["case_id"], Some(json!("X".repeat(65)))));
        assert_eq!(
            err.to_string(),
            "field `case_id`: must be 1 to 64 characters, found 65"
        );
        let err = error_of(with(received(), &["case_id"], Some(json!(""))));
        assert_eq!(err.field(), Some("case_id"));
        let err = error_of(with(received(), &["case_id"], Some(json!("A\u{7}B"))));
        assert!(err.to_string().contains("U+0007"), "{err}");
        let err = error_of(with(received(), &["case_id"], Some(json!("A\u{200E}B"))));
        assert!(err.to_string().contains("U+200E"), "{err}");
        let err = error_of(with(received(), &["case_id"], Some(json!("   "))));
        assert_eq!(err.to_string(), "field `case_id`: must not be only spaces");
    }

    #[test]
    fn case_ids_must_be_unpadded_and_composed() {
        let err = error_of(with(received(), &["case_id"], Some(json!(" H31-0001"))));
        assert!(
            err.to_string().contains("leading or trailing spaces"),
            "{err}"
        );
        let err = error_of(with(received(), &["case_id"], Some(json!("H31-0001 "))));
        assert_eq!(err.field(), Some("case_id"));
        // "Sơn" with the horn and the dot as combining marks (NFD).
        let decomposed = "So\u{31b}n-01";
        let err = error_of(with(received(), &["case_id"], Some(json!(decomposed))));
        assert!(err.to_string().contains("not in Unicode NFC"), "{err}");
        assert!(
            err.to_string().contains("Sơn-01"),
            "the composed form is shown: {err}"
        );
        assert!(parse(&with(received(), &["case_id"], Some(json!("Sơn-01")))).is_ok());
    }

    #[test]
    fn occurred_at_must_be_plausible() {
        let err = error_of(with(
            received(),
            &["occurred_at"],
            Some(json!("1999-12-31T23:59:59+07:00")),
        ));
        assert_eq!(err.field(), Some("occurred_at"));
        assert!(err.to_string().contains("is before 2000-01-01"), "{err}");
        // 2000-01-01 00:00 in Vietnam is the first instant allowed.
        let first = with(
            received(),
            &["occurred_at"],
            Some(json!("1999-12-31T17:00:00Z")),
        );
        let first = with(
            first,
            &["data", "due_at"],
            Some(json!("2000-01-05T08:00:00+07:00")),
        );
        assert!(parse(&first).is_ok());
        // Validation happens at 2025-06-01T00:00Z: a day later is the limit.
        let ahead = |at: &str| {
            let event = with(received(), &["occurred_at"], Some(json!(at)));
            with(
                event,
                &["data", "due_at"],
                Some(json!("2025-07-01T08:00:00+07:00")),
            )
        };
        assert!(parse(&ahead("2025-06-02T00:00:00Z")).is_ok());
        let err = error_of(ahead("2025-06-02T00:00:01Z"));
        assert!(
            err.to_string().contains("more than 24 hours after"),
            "{err}"
        );
    }

    #[test]
    fn a_supplement_must_be_due_after_it_is_requested() {
        let supplement = |due: &str| {
            json!({"event_id": "676b00ec-1b9e-778d-96ef-069b25f17f9a",
                   "kind": "case.supplement_requested", "case_id": "X-6", "unit_id": "C1",
                   "occurred_at": "2024-12-01T08:00:00+07:00",
                   "data": {"reason": "Bổ sung giấy tờ", "due_at": due}})
        };
        assert!(parse(&supplement("2024-12-05T08:00:00+07:00")).is_ok());
        let err = error_of(supplement("2024-12-01T08:00:00+07:00"));
        assert_eq!(err.field(), Some("data.due_at"));
        assert!(
            err.to_string().contains("is not after occurred_at"),
            "{err}"
        );
    }

    /// A registry where C1 exists only until 2025-06-30 (Vietnam time).
    struct Ceased;
    impl UnitDirectory for Ceased {
        fn check_unit(&self, unit_id: &str, on: NaiveDate) -> Result<(), String> {
            if unit_id == "C1" && on <= NaiveDate::from_ymd_opt(2025, 6, 30).unwrap() {
                Ok(())
            } else {
                Err(format!(
                    "unit {unit_id} ceased on 2025-06-30; its successor is W"
                ))
            }
        }
    }

    #[test]
    fn units_are_checked_on_the_local_day_of_the_event() {
        let validation = Validation::new(&Ceased, Utc::now());
        let at = |time: &str| {
            let event = with(received(), &["occurred_at"], Some(json!(time)));
            with(
                event,
                &["data", "due_at"],
                Some(json!("2025-07-09T08:00:00+07:00")),
            )
            .to_string()
        };
        // 16:59 UTC on 30 June is 23:59 in Vietnam: still 30 June.
        assert!(parse_event(at("2025-06-30T16:59:00Z").as_bytes(), &validation).is_ok());
        let err = parse_event(at("2025-06-30T17:00:00Z").as_bytes(), &validation).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `unit_id`: unit C1 ceased on 2025-06-30; its successor is W"
        );
    }

    #[test]
    fn enumerated_values_list_the_accepted_ones() {
        let err = error_of(with(received(), &["data", "channel"], Some(json!("fax"))));
        assert_eq!(
            err.to_string(),
            "field `data.channel`: `fax` is not one of online, in_person, postal"
        );
    }

    #[test]
    fn field_codes_are_lowercase_tokens() {
        let err = error_of(with(received(), &["data", "field"], Some(json!("Đất đai"))));
        assert_eq!(err.field(), Some("data.field"));
    }

    #[test]
    fn payment_amount_must_be_a_non_negative_integer() {
        let paid = |amount: Value| {
            json!({"event_id": "676b00ec-1b9e-778d-96ef-069b25f17f9a", "kind": "case.paid",
                   "case_id": "X-6", "unit_id": "C1", "occurred_at": "2024-12-01T08:00:00+07:00",
                   "data": {"amount_vnd": amount, "online": true}})
        };
        assert!(parse(&paid(json!(0))).is_ok());
        assert_eq!(
            error_of(paid(json!(-5))).to_string(),
            "field `data.amount_vnd`: must be 0 or more, found -5"
        );
        assert_eq!(
            error_of(paid(json!(1.5))).to_string(),
            "field `data.amount_vnd` must be a whole number, found a number"
        );
    }

    #[test]
    fn schema_defaults_to_one_and_other_versions_are_refused() {
        assert!(parse(&with(received(), &["schema"], Some(json!(1)))).is_ok());
        let err = error_of(with(received(), &["schema"], Some(json!(2))));
        assert_eq!(err.field(), Some("schema"));
    }

    #[test]
    fn feedback_resolved_takes_an_empty_data_object() {
        let event = json!({"event_id": "f299414d-8d5c-64d7-0c90-c7bcef44b596",
            "kind": "feedback.resolved", "case_id": "PAKN-0032", "unit_id": "C1",
            "occurred_at": "2025-04-24T11:07:00+07:00", "data": {}});
        assert_eq!(
            parse(&event).expect("valid").data,
            EventData::FeedbackResolved
        );
    }

    #[test]
    fn vietnamese_text_survives_parsing_unchanged() {
        let event = with(
            received(),
            &["case_id"],
            Some(json!("Hồ sơ/Phường Nguyễn Nghiêm-01")),
        );
        assert_eq!(
            parse(&event).expect("valid").case_id,
            "Hồ sơ/Phường Nguyễn Nghiêm-01"
        );
    }

    #[test]
    fn unknown_extra_members_are_ignored() {
        let event = with(received(), &["source"], Some(json!("igate")));
        assert!(parse(&event).is_ok());
    }

    /// Values of every JSON type, some valid for some member.
    fn replacement() -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        use proptest::prelude::*;
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            any::<bool>().prop_map(|b| Some(json!(b))),
            any::<i64>().prop_map(|n| Some(json!(n))),
            Just(Some(json!(1.5))),
            Just(Some(json!("online"))),
            Just(Some(json!("case.paid"))),
            Just(Some(json!("approved"))),
            Just(Some(json!("C1"))),
            Just(Some(json!("2024-03-20T08:30:00+07:00"))),
            Just(Some(json!("2024-03-10T08:30:00"))),
            Just(Some(json!("Bổ sung\n\"giấy tờ\""))),
            Just(Some(json!({}))),
            Just(Some(json!([1]))),
            Just(Some(json!([]))),
            Just(Some(json!([
                null, null, null, null, null, null, null, null, null, null, null, null, 5, true
            ]))),
        ]
    }

    const MEMBERS: &[&[&str]] = &[
        &["schema"],
        &["event_id"],
        &["kind"],
        &["case_id"],
        &["unit_id"],
        &["occurred_at"],
        &["data"],
        &["data", "procedure_code"],
        &["data", "field"],
        &["data", "channel"],
        &["data", "due_at"],
        &["data", "dossier_digitized"],
        &["data", "reused_data"],
        &["data", "amount_vnd"],
        &["data", "online"],
        &["data", "result"],
        &["data", "level"],
        &["data", "reason"],
    ];

    proptest::proptest! {
        #[test]
        fn the_fast_path_decides_exactly_as_the_detailed_path(
            edits in proptest::collection::vec((0..MEMBERS.len(), replacement()), 0..4),
            kind in 0..Kind::ALL.len(),
        ) {
            let mut event = with(received(), &["kind"], Some(json!(Kind::ALL[kind].as_str())));
            for (member, value) in edits {
                let path = MEMBERS[member];
                if path.len() == 2 && !event.get("data").is_some_and(Value::is_object) {
                    continue;
                }
                event = with(event, path, value);
            }
            let bytes = event.to_string();
            proptest::prop_assert_eq!(
                parse_event(bytes.as_bytes(), &units()),
                parse_detailed(bytes.as_bytes(), &units())
            );
        }

        #[test]
        fn arbitrary_bytes_get_a_reason_never_a_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Err(err) = parse_event(&bytes, &units()) {
                assert_has_a_reason(&err)?;
            }
        }

        #[test]
        fn arbitrary_json_gets_a_reason_never_a_panic(value in arbitrary_json()) {
            let bytes = value.to_string();
            let parsed = parse_event(bytes.as_bytes(), &units());
            if let Err(err) = &parsed {
                assert_has_a_reason(err)?;
            }
            proptest::prop_assert_eq!(parsed, parse_detailed(bytes.as_bytes(), &units()));
        }
    }

    /// A refusal says why, and names its field (when it has one) by a
    /// path a person can find in the event.
    fn assert_has_a_reason(err: &EventError) -> Result<(), proptest::test_runner::TestCaseError> {
        proptest::prop_assert!(err.to_string().len() > 10, "{err}");
        if let Some(field) = err.field() {
            proptest::prop_assert!(
                !field.is_empty() && !field.contains(char::is_control),
                "{err}"
            );
        }
        Ok(())
    }

    /// Any JSON value, its object members mostly named as an event's are
    /// (so that the parser gets past its first checks).
    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let name = prop_oneof![
            proptest::sample::select(vec![
                "v",
                "event_id",
                "kind",
                "case_id",
                "unit_id",
                "occurred_at",
                "data",
                "procedure_code",
                "field",
                "channel",
                "due_at",
                "dossier_digitized",
                "reused_data",
                "amount_vnd",
                "online",
                "result",
                "level",
                "reason",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|x| json!(x)),
            "\\PC{0,24}".prop_map(Value::from),
            Just(json!("case.received")),
            Just(json!("C1")),
            Just(json!("2024-03-15T08:30:00+07:00")),
        ];
        leaf.prop_recursive(3, 32, 8, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(name.clone(), inner, 0..10)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }
}
