//! The mapping of CONTRACT §7.1: each entry of a payload into the events
//! of its transitions (`received`, `supplement/<id>`, `resolved`,
//! `withdrawn`, `paid`, `synced`) under ids that are UUID v5 of the
//! dossier code and the transition; the field map (`MaLinhVuc` to field
//! codes); the payloads' dates, read as Vietnam time, and amounts.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, TimeZone};
use kpi_domain::UnitRegistry;
use kpi_events::{parse_event, vietnam, Kind, Validation};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::batch::LineError;

use super::envelope::{case_id_of, field_error, type_name, Entry, EntryKind};
use super::personal::{shown, Shown};
use super::{Dossier, ProducedEvent};

/// The namespace of every DVCQG event id (CONTRACT §7.1).
pub const NAMESPACE: Uuid = uuid::uuid!("c2acc58d-7301-53c5-b5b7-fcb2d7597d06");

/// The `reason` of every `case.withdrawn` produced here: a fixed text, since
/// the payloads' free text may hold personal data.
pub const WITHDRAWN_REASON: &str = "Công dân yêu cầu rút hồ sơ";

/// The `reason` of every `case.supplement_requested` produced here
/// (CONTRACT §7.1): `NoiDungBoSung` is free text that may name the
/// applicant's circumstances, and is never read.
pub const SUPPLEMENT_REASON: &str = "bổ sung hồ sơ (DVCQG)";

/// The `portal` of every `case.synced` produced here.
pub const PORTAL: &str = "national";

/// The longest contract field code, in characters (CONTRACT §2).
const MAX_FIELD_CODE_CHARS: usize = 64;

/// The id of the event for a dossier's transition: UUID v5 of
/// `<MaHoSo>/<transition>`, so that every re-send gives the same id.
pub fn event_id(ma_ho_so: &str, transition: &str) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("{ma_ho_so}/{transition}").as_bytes())
}

/// The province's field codes (`MaLinhVuc`) mapped to contract field
/// codes (`--field-map`, JSON `{"<MaLinhVuc>": "<field code>"}`).
#[derive(Debug, Clone, Default)]
pub struct FieldMap {
    codes: HashMap<String, String>,
}

impl FieldMap {
    /// Reads a field map file: a JSON object whose values are contract
    /// field codes (1–64 characters of `a-z`, `0-9`, `_`).
    pub fn from_json(bytes: &[u8]) -> Result<FieldMap, String> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| format!("the field map is not valid JSON: {err}"))?;
        let Value::Object(entries) = value else {
            return Err(format!(
                "the field map must be a JSON object {{\"<MaLinhVuc>\": \"<field code>\"}}, found {}",
                type_name(&value)
            ));
        };
        let mut codes = HashMap::with_capacity(entries.len());
        for (ma_linh_vuc, code) in entries {
            let Value::String(code) = code else {
                return Err(format!(
                    "field map entry `{ma_linh_vuc}`: the field code must be a string, found {}",
                    type_name(&code)
                ));
            };
            if !is_field_code(&code) {
                return Err(format!(
                    "field map entry `{ma_linh_vuc}`: `{code}` is not a field code: 1 to {MAX_FIELD_CODE_CHARS} characters of a-z, 0-9 and _ (e.g. dat_dai, xay_dung, dau_tu)"
                ));
            }
            codes.insert(ma_linh_vuc, code);
        }
        Ok(FieldMap { codes })
    }

    /// The contract field code of a `MaLinhVuc` (trimmed): the mapped
    /// code, else the code with each ASCII letter in lowercase and every
    /// character other than `a-z`, `0-9` turned into `_` (`G09-TP03` →
    /// `g09_tp03`). The result is not checked here: an empty or too long
    /// one makes the dossier invalid.
    pub fn field_code(&self, ma_linh_vuc: &str) -> String {
        let ma_linh_vuc = ma_linh_vuc.trim();
        if let Some(code) = self.codes.get(ma_linh_vuc) {
            return code.clone();
        }
        ma_linh_vuc
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// Turns entries into events for one unit.
pub(super) struct Converter<'a> {
    pub(super) units: &'a UnitRegistry,
    /// The unit `madonvi` names.
    pub(super) unit: kpi_domain::UnitIdx,
    pub(super) field_map: &'a FieldMap,
    pub(super) validation: &'a Validation<'a>,
}

impl Converter<'_> {
    pub(super) fn entry(
        &self,
        position: usize,
        value: &Value,
        service: Option<EntryKind>,
    ) -> Dossier {
        let path = format!("data[{position}]");
        let index = position + 1;
        let Value::Object(object) = value else {
            return Dossier {
                index,
                case_id: None,
                outcome: Err(field_error(
                    path,
                    format!(
                        "each entry of data must be a JSON object, found {}",
                        type_name(value)
                    ),
                )),
            };
        };
        let case_id = case_id_of(value);
        let entry = Entry { object, path };
        let kind = service.unwrap_or_else(|| entry.inferred_kind());
        let outcome = match kind {
            EntryKind::Snapshot => self.snapshot(&entry),
            EntryKind::Progress => self.progress(&entry),
        };
        Dossier {
            index,
            case_id,
            outcome,
        }
    }

    /// Every event of a dossier snapshot, in the order of §7.1's table.
    fn snapshot(&self, entry: &Entry<'_>) -> Result<Vec<ProducedEvent>, LineError> {
        let case_id = entry.required_text("MaHoSo", "the dossier code")?;
        let case_id: &str = &case_id;
        // Not yet received at the desk (registered online, or refused at
        // the desk): no case yet, so no event (§7.1: `received` when
        // `NgayTiepNhan` is set; the others happen at that time).
        let Some(received_at) = entry.date("NgayTiepNhan")? else {
            return Ok(Vec::new());
        };
        let unit = self.receiving_unit(entry, "NgayTiepNhan", received_at)?;
        let dossier = Held {
            entry,
            unit,
            case_id,
        };
        let procedure_code = entry.required_text("MaTTHC", "the national procedure code")?;
        let ma_linh_vuc = entry.required_text("MaLinhVuc", "the field code (lĩnh vực)")?;
        let field = self.field_map.field_code(&ma_linh_vuc);
        // A code is never a phone or identity-card number: one that holds
        // such a run of digits is a personal value in the wrong member,
        // and must not become a field code on the bus.
        let longest_digit_run = field
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max();
        if !is_field_code(&field) || longest_digit_run.unwrap_or(0) >= 9 {
            return Err(entry.error(
                "MaLinhVuc",
                format!(
                    "{} gives no field code (1 to {MAX_FIELD_CODE_CHARS} characters of a-z, 0-9, _): map it with --field-map",
                    shown(&ma_linh_vuc, Shown::Code)
                ),
            ));
        }
        let channel = match entry.code("KenhThucHien")?.as_deref() {
            Some("1") => "in_person",
            Some("2") => "online",
            Some("3") => "postal",
            Some(other) => {
                return Err(entry.error(
                    "KenhThucHien",
                    format!(
                        "{} is not a channel: 1 (in person), 2 (online) or 3 (postal)",
                        shown(other, Shown::Code)
                    ),
                ))
            }
            None => {
                return Err(entry.error(
                    "KenhThucHien",
                    "is required: 1 (in person), 2 (online) or 3 (postal)",
                ))
            }
        };
        let due = entry.date("NgayHenTra")?;
        let supplements = supplements(entry)?;
        let received_due = match supplements.first().and_then(|first| first.due_before) {
            Some(due_before) => due_before,
            None => due.ok_or_else(|| {
                entry.error(
                    "NgayHenTra",
                    "is required: the dossier has no due time (NgayHenTra, or NgayHenTraTruoc of its first supplement request)",
                )
            })?,
        };
        let mut reused_data = false;
        for file in entry.objects("TaiLieuNop")? {
            reused_data |= matches!(file.code("DuocTaiSuDung")?.as_deref(), Some("1" | "2"))
                || file.code("DuocLayTuKhoDMQG")?.as_deref() == Some("1");
        }

        let mut events = Vec::with_capacity(supplements.len() + 5);
        events.push(self.event(
            &dossier,
            "received".to_owned(),
            Kind::CaseReceived,
            received_at,
            json!({
                "procedure_code": procedure_code,
                "field": field,
                "channel": channel,
                "due_at": rfc3339(received_due),
                "dossier_digitized": entry.code("HoSoCoThanhPhanSoHoa")?.as_deref() == Some("1"),
                "reused_data": reused_data,
            }),
        )?);

        for supplement in &supplements {
            let due_at = supplement.due_new.or(due).ok_or_else(|| {
                field_error(
                    format!("{}.NgayHenTraMoi", supplement.path),
                    "is required: the supplement request has no new due time (NgayHenTraMoi, nor the dossier's NgayHenTra)",
                )
            })?;
            events.push(self.event(
                &dossier,
                format!("supplement/{}", supplement.id),
                Kind::CaseSupplementRequested,
                supplement.asked_at,
                json!({ "reason": SUPPLEMENT_REASON, "due_at": rfc3339(due_at) }),
            )?);
        }

        let status = entry.code("TrangThaiHoSo")?;
        if matches!(status.as_deref(), Some("9" | "10")) {
            if let Some(finished_at) = entry.date("NgayKetThucXuLy")? {
                let result = if entry.date("NgayTuChoi")?.is_some() {
                    "rejected"
                } else {
                    "approved"
                };
                let (mut electronic, mut digitized) = (false, false);
                for paper in entry.objects("DanhSachGiayToKetQua")? {
                    electronic |= paper.text("DuongDanTepTinKetQua")?.is_some();
                    digitized |= paper.text("MaGiayToKetQua")?.is_some();
                }
                events.push(self.event(
                    &dossier,
                    "resolved".to_owned(),
                    Kind::CaseResolved,
                    finished_at,
                    json!({
                        "result": result,
                        "result_electronic": electronic,
                        "result_digitized": digitized,
                    }),
                )?);
            }
        }
        if status.as_deref() == Some("7") {
            if let Some(finished_at) = entry.date("NgayKetThucXuLy")? {
                events.push(self.withdrawn(&dossier, finished_at)?);
            }
        }

        let fees = entry.objects("DanhSachLePhi")?;
        if !fees.is_empty() {
            let mut amount: u64 = 0;
            for fee in &fees {
                amount = amount
                    .checked_add(fee.amount("Gia")?)
                    .ok_or_else(|| entry.error("DanhSachLePhi", "the sum of Gia is too large"))?;
            }
            events.push(self.event(
                &dossier,
                "paid".to_owned(),
                Kind::CasePaid,
                received_at,
                json!({
                    "amount_vnd": amount,
                    "online": matches!(entry.code("DuocThanhToanTrucTuyen")?.as_deref(), Some("1" | "2")),
                }),
            )?);
        }

        events.push(self.event(
            &dossier,
            "synced".to_owned(),
            Kind::CaseSynced,
            received_at,
            json!({ "portal": PORTAL }),
        )?);
        Ok(events)
    }

    /// A progress step: only `TrangThai` 7 (withdrawn) produces an event.
    fn progress(&self, entry: &Entry<'_>) -> Result<Vec<ProducedEvent>, LineError> {
        if entry.code("TrangThai")?.as_deref() != Some("7") {
            return Ok(Vec::new());
        }
        let case_id = entry.required_text("MaHoSo", "the dossier code")?;
        let case_id: &str = &case_id;
        let at = entry.date("ThoiDiemXuLy")?.ok_or_else(|| {
            entry.error(
                "ThoiDiemXuLy",
                "is required: when the applicant withdrew (yyyyMMddHHmmss, Vietnam time)",
            )
        })?;
        let unit = self.receiving_unit(entry, "ThoiDiemXuLy", at)?;
        let dossier = Held {
            entry,
            unit,
            case_id,
        };
        Ok(vec![self.withdrawn(&dossier, at)?])
    }

    /// The unit that held the dossier on the day of `at`: the one `madonvi`
    /// names, or, for a day before that unit was formed (a ward formed on
    /// 2025-07-01 re-sending a dossier received in June), the one unit it
    /// succeeds that existed then (CONTRACT §7.1).
    fn receiving_unit(
        &self,
        entry: &Entry<'_>,
        field: &str,
        at: DateTime<FixedOffset>,
    ) -> Result<kpi_domain::UnitIdx, LineError> {
        let day = kpi_domain::Moment::from(at).local_day();
        let named = self.units.unit(self.unit);
        let Some(formed) = named.days.from.filter(|from| day < *from) else {
            return Ok(self.unit);
        };
        let candidates = self.units.predecessors_on(self.unit, day);
        if let [only] = candidates[..] {
            return Ok(only);
        }
        let names: Vec<String> = candidates
            .iter()
            .map(|idx| {
                let unit = self.units.unit(*idx);
                format!("{} ({})", unit.id, unit.name)
            })
            .collect();
        let which = if names.is_empty() {
            "and none of the units it succeeds existed then: check the date or the units file"
                .to_owned()
        } else {
            format!(
                "and it succeeds {} units that existed then, {}: send the dossier under the \
                 madonvi of the one that received it",
                names.len(),
                names.join(", ")
            )
        };
        Err(entry.error(
            field,
            format!(
                "{} is {} ({}), formed on {}, after this day ({}), {which}",
                "madonvi",
                named.id,
                named.name,
                formed.to_date(),
                day.to_date()
            ),
        ))
    }

    fn withdrawn(
        &self,
        dossier: &Held<'_>,
        at: DateTime<FixedOffset>,
    ) -> Result<ProducedEvent, LineError> {
        self.event(
            dossier,
            "withdrawn".to_owned(),
            Kind::CaseWithdrawn,
            at,
            json!({ "reason": WITHDRAWN_REASON }),
        )
    }

    /// Builds the contract JSON of one event and validates it as any
    /// incoming event is.
    fn event(
        &self,
        dossier: &Held<'_>,
        transition: String,
        kind: Kind,
        occurred_at: DateTime<FixedOffset>,
        data: Value,
    ) -> Result<ProducedEvent, LineError> {
        let Held {
            entry,
            unit,
            case_id,
        } = *dossier;
        let produced = format!("{} ({transition} event)", entry.path);
        // After a merge (CONTRACT §1.1) a dossier of a ceased unit goes on
        // under its successor: each event names the unit of its day.
        let day = kpi_domain::Moment::from(occurred_at).local_day();
        let unit_id = &self.units.unit(self.units.holder_on(unit, day)).id;
        let value = json!({
            "event_id": event_id(case_id, &transition).to_string(),
            "kind": kind.as_str(),
            "case_id": case_id,
            "unit_id": unit_id,
            "occurred_at": rfc3339(occurred_at),
            "data": data,
        });
        let payload = serde_json::to_vec(&value).map_err(|err| LineError {
            field: Some(produced.clone()),
            reason: format!("the event could not be written as JSON: {err}"),
        })?;
        let event = parse_event(&payload, self.validation).map_err(|err| LineError {
            field: Some(match err.field() {
                Some(field) => format!("{produced}: {field}"),
                None => produced.clone(),
            }),
            reason: err.to_string(),
        })?;
        // Published in canonical form, like every event of ours (CONTRACT §2).
        let payload = event.to_canonical_json();
        Ok(ProducedEvent {
            transition,
            event,
            payload,
        })
    }
}

/// A dossier as its events need it: the entry, the unit holding it on the
/// day it was received, its code.
struct Held<'a> {
    entry: &'a Entry<'a>,
    unit: kpi_domain::UnitIdx,
    case_id: &'a str,
}

/// One `DanhSachHoSoBoSung` entry, as far as events need it.
struct Supplement {
    path: String,
    id: String,
    asked_at: DateTime<FixedOffset>,
    due_before: Option<DateTime<FixedOffset>>,
    due_new: Option<DateTime<FixedOffset>>,
}

/// A dossier's supplement requests, first (earliest `NgayBoSung`, then
/// smallest `HoSoBoSungId`) first.
fn supplements(entry: &Entry<'_>) -> Result<Vec<Supplement>, LineError> {
    let mut seen = HashSet::new();
    let mut supplements = Vec::new();
    for request in entry.objects("DanhSachHoSoBoSung")? {
        let id = request
            .required_text("HoSoBoSungId", "the supplement request's id")?
            .trim()
            .to_owned();
        if !seen.insert(id.clone()) {
            return Err(request.error(
                "HoSoBoSungId",
                format!(
                    "{} is the id of another supplement request of this dossier",
                    shown(&id, Shown::Code)
                ),
            ));
        }
        let asked_at = request.date("NgayBoSung")?.ok_or_else(|| {
            request.error(
                "NgayBoSung",
                "is required: when the supplement was asked for (yyyyMMddHHmmss, Vietnam time)",
            )
        })?;
        supplements.push(Supplement {
            id,
            asked_at,
            due_before: request.date("NgayHenTraTruoc")?,
            due_new: request.date("NgayHenTraMoi")?,
            path: request.path,
        });
    }
    supplements.sort_by(|a, b| {
        a.asked_at
            .cmp(&b.asked_at)
            .then_with(|| compare_ids(&a.id, &b.id))
    });
    Ok(supplements)
}

/// Numeric ids by value (before any other), others by text: a total order.
fn compare_ids(a: &str, b: &str) -> Ordering {
    let key = |id: &str| match id.parse::<u64>() {
        Ok(number) => (false, number),
        Err(_) => (true, 0),
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// The readings of an entry that only events need: dates and amounts.
impl Entry<'_> {
    /// A `yyyyMMddHHmmss` Vietnam-time date, absent when empty.
    fn date(&self, key: &str) -> Result<Option<DateTime<FixedOffset>>, LineError> {
        let Some(text) = self.code(key)? else {
            return Ok(None);
        };
        parse_local(&text).map(Some).ok_or_else(|| {
            self.error(
                key,
                format!(
                    "{} is not a date of the form yyyyMMddHHmmss, Vietnam time (e.g. 20250310091512)",
                    shown(&text, Shown::Date)
                ),
            )
        })
    }

    /// A whole, non-negative amount of VND: digits (`"50000"`) or a JSON
    /// whole number (`50000`, `50000.0`). A `.` or `,` in text is refused:
    /// in Vietnamese it separates thousands (`50.000` is fifty thousand).
    fn amount(&self, key: &str) -> Result<u64, LineError> {
        let invalid = |what: String| {
            self.error(
                key,
                format!("{what} is not a whole, non-negative amount of VND in digits only, without thousands separators (e.g. 50000)"),
            )
        };
        match self.object.get(key) {
            Some(Value::Number(number)) => number
                .as_u64()
                .or_else(|| {
                    number
                        .as_f64()
                        .filter(|value| value.fract() == 0.0 && (0.0..9.0e15).contains(value))
                        .map(|value| value as u64)
                })
                .ok_or_else(|| invalid(format!("the number {number}"))),
            _ => {
                let text = self
                    .code(key)?
                    .ok_or_else(|| self.error(key, "is required: the amount in VND, e.g. 50000"))?;
                text.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| text.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| invalid(shown(&text, Shown::Code)))
            }
        }
    }
}

/// Parses `yyyyMMddHHmmss` as Vietnam local time (UTC+07:00).
fn parse_local(text: &str) -> Option<DateTime<FixedOffset>> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%S").ok()?;
    vietnam().from_local_datetime(&naive).single()
}

fn rfc3339(at: DateTime<FixedOffset>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn is_field_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= MAX_FIELD_CODE_CHARS
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_map_is_checked_and_unmapped_codes_are_normalised() {
        let map = FieldMap::from_json(br#"{"G01-DD": "dat_dai"}"#).unwrap();
        assert_eq!(map.field_code("G01-DD"), "dat_dai");
        assert_eq!(map.field_code("G09-TP03"), "g09_tp03");
        assert_eq!(map.field_code("Đất Đai 2"), "__t__ai_2");
        assert_eq!(map.field_code(""), "");

        let err = FieldMap::from_json(br#"{"G01-DD": "Dat Dai"}"#).unwrap_err();
        assert!(
            err.starts_with("field map entry `G01-DD`: `Dat Dai` is not a field code"),
            "{err}"
        );
        let err = FieldMap::from_json(br#"{"G01-DD": 7}"#).unwrap_err();
        assert!(err.starts_with("field map entry `G01-DD`"), "{err}");
        assert!(FieldMap::from_json(b"[]").is_err());
        assert!(FieldMap::from_json(b"{").is_err());
    }
}
