//! The envelope of a DVCQG payload: the body as a whole (`data`,
//! `madonvi`, `service`), its entries as JSON objects read member by
//! member under their paths (`data[0].DanhSachLePhi[1]`), and the errors
//! that name the body or one of those paths.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::batch::LineError;

use super::personal::{shown, Shown};

/// The `service` of dossier snapshots.
pub const SERVICE_SNAPSHOT: &str = "DongBoHoSoMC";

/// The `service` of progress steps.
pub const SERVICE_PROGRESS: &str = "CapNhatTienDoHoSoMC";

/// An entry's `MaHoSo`, when it has a usable one.
pub(super) fn case_id_of(entry: &Value) -> Option<String> {
    let Value::Object(object) = entry else {
        return None;
    };
    Entry {
        object,
        path: String::new(),
    }
    .text("MaHoSo")
    .ok()
    .flatten()
    .map(Cow::into_owned)
}

/// What an entry of `data` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A `DongBoHoSoMC` dossier snapshot.
    Snapshot,
    /// A `CapNhatTienDoHoSoMC` progress step.
    Progress,
}

/// The `service` of a dossier look-up (§7.2): answered with an empty
/// `result`, since ingest does not depend on `isUpdating`.
pub const SERVICE_LOOKUP: &str = "TraCuuHoSo";

/// The most dossiers (or progress steps) one body may hold (§8.1).
pub const MAX_DOSSIERS: usize = 1000;

/// What a body's `service` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Events from the entries (each entry's kind inferred when `None`).
    Entries(Option<EntryKind>),
    /// `TraCuuHoSo`: nothing to ingest.
    Lookup,
}

/// The parts of a body that hold for all its entries; the entries are
/// kept as their JSON text, each parsed only when it is converted.
pub(super) struct Payload<'b> {
    pub(super) madonvi: String,
    pub(super) asked: Asked,
    pub(super) data: Vec<&'b RawValue>,
}

/// The members of an envelope that hold for the whole body.
#[derive(Deserialize)]
struct EnvelopeJson<'b> {
    #[serde(borrow, default)]
    data: Option<&'b RawValue>,
    #[serde(default)]
    madonvi: Option<Value>,
    #[serde(default)]
    service: Option<Value>,
    #[serde(default)]
    session: Option<Value>,
}

/// What the HTTP layer needs of a body before its dossiers: who sends it
/// (its `session`) and what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub session: Option<String>,
    pub asked: Asked,
}

/// The body as JSON text, or why it is not.
fn text_of(body: &[u8]) -> Result<&str, LineError> {
    std::str::from_utf8(body).map_err(|err| {
        body_error(
            None,
            format!(
                "the body is not valid UTF-8 (first bad byte at offset {}): send JSON in UTF-8",
                err.valid_up_to()
            ),
        )
    })
}

fn envelope_of(text: &str) -> Result<Option<EnvelopeJson<'_>>, LineError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return Ok(None);
    }
    if !trimmed.starts_with('{') {
        // Not an object nor an array: say what it is.
        let value: Value = serde_json::from_str(text)
            .map_err(|err| body_error(None, format!("the body is not valid JSON: {err}")))?;
        return Err(body_error(
            None,
            format!(
                "the body must be a {SERVICE_SNAPSHOT} or {SERVICE_PROGRESS} envelope (a JSON object with `data`) or a bare `data` array, found {}",
                type_name(&value)
            ),
        ));
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|err| body_error(None, format!("the body is not valid JSON: {err}")))
}

fn asked_of(service: Option<&Value>) -> Result<Asked, LineError> {
    match service {
        None | Some(Value::Null) => Ok(Asked::Entries(None)),
        Some(Value::String(service)) if service == SERVICE_SNAPSHOT => {
            Ok(Asked::Entries(Some(EntryKind::Snapshot)))
        }
        Some(Value::String(service)) if service == SERVICE_PROGRESS => {
            Ok(Asked::Entries(Some(EntryKind::Progress)))
        }
        Some(Value::String(service)) if service == SERVICE_LOOKUP => Ok(Asked::Lookup),
        Some(Value::String(other)) => Err(body_error(
            Some("service"),
            format!(
                "{} is not a known service; known services: {SERVICE_SNAPSHOT}, {SERVICE_PROGRESS}, {SERVICE_LOOKUP}",
                shown(other, Shown::Code)
            ),
        )),
        Some(other) => Err(body_error(
            Some("service"),
            format!("must be a string, found {}", type_name(other)),
        )),
    }
}

/// The `session` and `service` of a body (none for a bare array).
pub fn header(body: &[u8]) -> Result<Header, LineError> {
    let Some(envelope) = envelope_of(text_of(body)?)? else {
        return Ok(Header {
            session: None,
            asked: Asked::Entries(None),
        });
    };
    let session = match envelope.session {
        Some(Value::String(session)) if !session.trim().is_empty() => Some(session),
        _ => None,
    };
    Ok(Header {
        session,
        asked: asked_of(envelope.service.as_ref())?,
    })
}

/// The entries of a `data` array, each as its JSON text, at most
/// [`MAX_DOSSIERS`].
fn entries_of(data: &RawValue) -> Result<Vec<&RawValue>, LineError> {
    let entries: Vec<&RawValue> = serde_json::from_str(data.get()).map_err(|_| {
        let found: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
        body_error(
            Some("data"),
            format!("must be an array, found {}", type_name(&found)),
        )
    })?;
    if entries.len() > MAX_DOSSIERS {
        return Err(body_error(
            Some("data"),
            format!(
                "holds {} entries; a body holds at most {MAX_DOSSIERS}: split it into several posts",
                entries.len()
            ),
        ));
    }
    Ok(entries)
}

impl<'b> Payload<'b> {
    pub(super) fn read(
        body: &'b [u8],
        madonvi_query: Option<&str>,
    ) -> Result<Payload<'b>, LineError> {
        let text = text_of(body)?;
        let query = madonvi_query.filter(|code| !code.is_empty());
        let Some(envelope) = envelope_of(text)? else {
            let data: &RawValue = serde_json::from_str(text)
                .map_err(|err| body_error(None, format!("the body is not valid JSON: {err}")))?;
            let madonvi = query.ok_or_else(|| {
                body_error(
                    Some("madonvi"),
                    "is required: a bare data array needs the sender's unit code as ?madonvi=<code> (e.g. ?madonvi=000.00.31.H31)",
                )
            })?;
            return Ok(Payload {
                madonvi: madonvi.to_owned(),
                asked: Asked::Entries(None),
                data: entries_of(data)?,
            });
        };
        let asked = asked_of(envelope.service.as_ref())?;
        let data = match envelope.data {
            _ if asked == Asked::Lookup => Vec::new(),
            Some(data) if data.get().trim() != "null" => entries_of(data)?,
            _ => {
                return Err(body_error(
                    Some("data"),
                    "is required: the array of dossiers or progress steps",
                ))
            }
        };
        let madonvi = match (envelope.madonvi.as_ref(), query) {
            (Some(Value::String(code)), query) if !code.is_empty() => {
                if let Some(query) = query.filter(|query| query != code) {
                    return Err(body_error(
                        Some("madonvi"),
                        format!(
                            "the envelope's madonvi {} differs from ?madonvi={}; send one unit code",
                            shown(code, Shown::Code),
                            shown(query, Shown::Code)
                        ),
                    ));
                }
                code.clone()
            }
            (None | Some(Value::Null) | Some(Value::String(_)), Some(query)) => query.to_owned(),
            (None | Some(Value::Null) | Some(Value::String(_)), None) => {
                if asked == Asked::Lookup {
                    String::new()
                } else {
                    return Err(body_error(
                        Some("madonvi"),
                        "is required: the sender's unit code (e.g. 000.00.31.H31), in the envelope or as ?madonvi=",
                    ));
                }
            }
            (Some(other), _) => {
                return Err(body_error(
                    Some("madonvi"),
                    format!("must be a string, found {}", type_name(other)),
                ))
            }
        };
        Ok(Payload {
            madonvi,
            asked,
            data,
        })
    }
}

/// One JSON object of a payload with its path for errors. Values are read
/// only by the fields events need; errors quote only dates and codes.
pub(super) struct Entry<'a> {
    pub(super) object: &'a Map<String, Value>,
    /// `data[0]`, `data[0].DanhSachLePhi[1]`.
    pub(super) path: String,
}

impl<'a> Entry<'a> {
    pub(super) fn error(&self, key: &str, reason: impl Into<String>) -> LineError {
        field_error(format!("{}.{key}", self.path), reason)
    }

    /// A scalar as text: absent for a missing member, `null` or a blank
    /// string; numbers as written; booleans as `1`/`0`.
    pub(super) fn text(&self, key: &str) -> Result<Option<Cow<'a, str>>, LineError> {
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(Cow::Borrowed(text))),
            Some(Value::Bool(flag)) => Ok(Some(Cow::Borrowed(if *flag { "1" } else { "0" }))),
            Some(Value::Number(number)) => Ok(Some(Cow::Owned(number_text(number)))),
            Some(other) => Err(self.error(
                key,
                format!("must be a string or a number, found {}", type_name(other)),
            )),
        }
    }

    /// A scalar code, trimmed.
    pub(super) fn code(&self, key: &str) -> Result<Option<Cow<'a, str>>, LineError> {
        Ok(self.text(key)?.map(|text| match text {
            Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
            Cow::Owned(text) => Cow::Owned(text.trim().to_owned()),
        }))
    }

    pub(super) fn required_text(&self, key: &str, what: &str) -> Result<Cow<'a, str>, LineError> {
        self.text(key)?
            .ok_or_else(|| self.error(key, format!("is required: {what}")))
    }

    /// The objects of an array member; absent, `null` or `""` is empty.
    pub(super) fn objects(&self, key: &str) -> Result<Vec<Entry<'a>>, LineError> {
        let items = match self.object.get(key) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::String(text)) if text.trim().is_empty() => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.error(key, format!("must be an array, found {}", type_name(other))))
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(position, item)| {
                let path = format!("{}.{key}[{position}]", self.path);
                match item {
                    Value::Object(object) => Ok(Entry { object, path }),
                    other => Err(field_error(
                        path,
                        format!("must be an object, found {}", type_name(other)),
                    )),
                }
            })
            .collect()
    }

    /// Whether an entry with no `service` to go by is a progress step.
    pub(super) fn inferred_kind(&self) -> EntryKind {
        let has = |key: &str| self.object.contains_key(key);
        let received = !matches!(self.text("NgayTiepNhan"), Ok(None));
        if (has("ThoiDiemXuLy") || has("TrangThai")) && !received && !has("TrangThaiHoSo") {
            EntryKind::Progress
        } else {
            EntryKind::Snapshot
        }
    }
}

/// A number as text; a whole number without a fraction (`1.0` → `1`), so
/// that an id sent as a float gives the same event id.
fn number_text(number: &serde_json::Number) -> String {
    match number.as_f64() {
        Some(value) if number.is_f64() && value.fract() == 0.0 && value.abs() < 9.0e15 => {
            format!("{}", value as i64)
        }
        _ => number.to_string(),
    }
}

pub(super) fn body_error(field: Option<&str>, reason: impl Into<String>) -> LineError {
    LineError {
        field: field.map(str::to_owned),
        reason: reason.into(),
    }
}

pub(super) fn field_error(field: String, reason: impl Into<String>) -> LineError {
    LineError {
        field: Some(field),
        reason: reason.into(),
    }
}

pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
