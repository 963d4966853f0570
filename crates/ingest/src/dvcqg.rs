//! DVCQG dossier snapshots into contract events (CONTRACT §7.1).
//!
//! Provincial one-stop systems already send every dossier to the national
//! public-service portal (Cổng DVCQG) as `DongBoHoSoMC` snapshots and
//! `CapNhatTienDoHoSoMC` progress steps. This module turns those payloads
//! into the events of CONTRACT §2, with ids derived from the dossier code
//! and the transition (UUID v5), so a snapshot re-sent any number of times,
//! or an older one arriving late, never counts twice.
//!
//! Personal data in those payloads (`ChuHoSo`, `SoGiayToChuHoSo`,
//! `DinhDanhCHS`, `Email`, `SoDienThoai`, `Fax`, `ThongTinKhac`,
//! `MaDoiTuong`, `TrichYeuHoSo`, file names and URLs, handler names) is
//! never read into an event, and never quoted in an error: the KPIs need
//! none of it (Decree 13/2023/NĐ-CP on personal data protection).
//!
//! Rules where the contract is silent:
//!
//! - Payload kind: the envelope's `service` decides for every entry. Without
//!   one (a bare array, or an envelope without `service`), an entry is a
//!   progress step when it has `ThoiDiemXuLy` or `TrangThai` and has
//!   neither a `NgayTiepNhan` value nor `TrangThaiHoSo`; otherwise it is a
//!   dossier snapshot.
//! - Unit: the envelope's `madonvi`, else `?madonvi=`; both given and
//!   different is an error rather than a guess.
//! - Positions: [`Dossier::index`] counts from 1 (like the lines of §7);
//!   field paths in errors count from 0 like JSON paths (`data[0].MaHoSo`,
//!   `data[0].DanhSachHoSoBoSung[1].NgayBoSung`).
//! - Scalars: a string, a number or a boolean (`true` reads as `1`, `false`
//!   as `0`); an empty or blank string and `null` mean absent.
//! - A snapshot needs `MaHoSo`, `NgayTiepNhan`, `MaTTHC`, `MaLinhVuc`,
//!   `KenhThucHien` and a due time; each supplement request needs
//!   `HoSoBoSungId` (unique in the dossier), `NgayBoSung` and a due time;
//!   each fee needs a whole, non-negative `Gia`. Anything missing or
//!   malformed refuses the whole dossier, so that no partial picture of a
//!   case is published; fixed, it can be sent again.
//! - A supplement without `NoiDungBoSung` gets an empty `reason`.
//! - The table of §7.1 is followed literally (e.g. `TaiLieuNop` entries
//!   marked `IsDeleted` still count for `reused_data`), so that every
//!   implementation produces the same content under the same ids.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, TimeZone};
use kpi_domain::UnitRegistry;
use kpi_events::{parse_event, vietnam, Event, Kind, Validation};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::batch::LineError;

/// The namespace of every DVCQG event id (CONTRACT §7.1).
pub const NAMESPACE: Uuid = uuid::uuid!("c2acc58d-7301-53c5-b5b7-fcb2d7597d06");

/// The `reason` of every `case.withdrawn` produced here: a fixed text, since
/// the payloads' free text may hold personal data.
pub const WITHDRAWN_REASON: &str = "Công dân yêu cầu rút hồ sơ";

/// The `portal` of every `case.synced` produced here.
pub const PORTAL: &str = "national";

/// The `service` of dossier snapshots.
pub const SERVICE_SNAPSHOT: &str = "DongBoHoSoMC";

/// The `service` of progress steps.
pub const SERVICE_PROGRESS: &str = "CapNhatTienDoHoSoMC";

/// The longest contract field code, in characters (CONTRACT §2).
const MAX_FIELD_CODE_CHARS: usize = 64;

/// The most characters of a value quoted in an error.
const MAX_QUOTED_CHARS: usize = 40;

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

/// An event produced from a dossier, with the contract JSON published for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducedEvent {
    /// The transition it comes from: `received`, `supplement/<id>`,
    /// `resolved`, `withdrawn`, `paid`, `synced`.
    pub transition: String,
    /// The event as validated from `payload`.
    pub event: Event,
    /// The event as a contract JSON line (what is published).
    pub payload: Vec<u8>,
}

/// One entry of a payload's `data` array.
#[derive(Debug, Clone, PartialEq)]
pub struct Dossier {
    /// Its position in `data`, from 1.
    pub index: usize,
    /// `MaHoSo`, when the entry has one.
    pub case_id: Option<String>,
    /// The events it produces (none for a progress step other than a
    /// withdrawal), or why it was refused.
    pub outcome: Result<Vec<ProducedEvent>, LineError>,
}

/// Turns one DVCQG payload into the events of each of its entries.
///
/// `body` is a `DongBoHoSoMC` or `CapNhatTienDoHoSoMC` envelope, or a bare
/// `data` array whose unit comes from `madonvi_query` (`?madonvi=`). `Err`
/// when the body as a whole cannot be read (not JSON, no `data` array, no or
/// unknown `madonvi`, unknown `service`); otherwise one [`Dossier`] per
/// entry, each accepted or refused on its own. Every produced event has
/// passed [`parse_event`] under `validation`.
pub fn convert(
    body: &[u8],
    madonvi_query: Option<&str>,
    units: &UnitRegistry,
    field_map: &FieldMap,
    validation: &Validation<'_>,
) -> Result<Vec<Dossier>, LineError> {
    let payload = Payload::read(body, madonvi_query)?;
    let Some(unit) = units.find_by_dvcqg_code(&payload.madonvi) else {
        // Every dossier is refused, naming the code (§7.1).
        let unknown = body_error(
            Some("madonvi"),
            format!(
                "madonvi {} is not the dvcqg_code of any unit in the registry",
                shown(&payload.madonvi, Shown::Code)
            ),
        );
        return Ok(payload
            .data
            .iter()
            .enumerate()
            .map(|(position, entry)| Dossier {
                index: position + 1,
                case_id: case_id_of(entry),
                outcome: Err(unknown.clone()),
            })
            .collect());
    };
    let converter = Converter {
        units,
        unit,
        field_map,
        validation,
    };
    Ok(payload
        .data
        .iter()
        .enumerate()
        .map(|(position, entry)| converter.entry(position, entry, payload.service))
        .collect())
}

/// An entry's `MaHoSo`, when it has a usable one.
fn case_id_of(entry: &Value) -> Option<String> {
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
enum EntryKind {
    /// A `DongBoHoSoMC` dossier snapshot.
    Snapshot,
    /// A `CapNhatTienDoHoSoMC` progress step.
    Progress,
}

/// The parts of a body that hold for all its entries.
struct Payload {
    madonvi: String,
    /// `None` when each entry's kind is inferred.
    service: Option<EntryKind>,
    data: Vec<Value>,
}

impl Payload {
    fn read(body: &[u8], madonvi_query: Option<&str>) -> Result<Payload, LineError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| body_error(None, format!("the body is not valid JSON: {err}")))?;
        let query = madonvi_query.filter(|code| !code.is_empty());
        match value {
            Value::Array(data) => {
                let madonvi = query.ok_or_else(|| {
                    body_error(
                        Some("madonvi"),
                        "is required: a bare data array needs the sender's unit code as ?madonvi=<code> (e.g. ?madonvi=000.00.31.H31)",
                    )
                })?;
                Ok(Payload {
                    madonvi: madonvi.to_owned(),
                    service: None,
                    data,
                })
            }
            Value::Object(mut envelope) => {
                let data = match envelope.remove("data") {
                    Some(Value::Array(data)) => data,
                    None | Some(Value::Null) => {
                        return Err(body_error(
                            Some("data"),
                            "is required: the array of dossiers or progress steps",
                        ))
                    }
                    Some(other) => {
                        return Err(body_error(
                            Some("data"),
                            format!("must be an array, found {}", type_name(&other)),
                        ))
                    }
                };
                let service = match envelope.get("service") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(service)) if service == SERVICE_SNAPSHOT => {
                        Some(EntryKind::Snapshot)
                    }
                    Some(Value::String(service)) if service == SERVICE_PROGRESS => {
                        Some(EntryKind::Progress)
                    }
                    Some(Value::String(other)) => {
                        return Err(body_error(
                            Some("service"),
                            format!(
                                "{} is not a known service; known services: {SERVICE_SNAPSHOT}, {SERVICE_PROGRESS}",
                                shown(other, Shown::Code)
                            ),
                        ))
                    }
                    Some(other) => {
                        return Err(body_error(
                            Some("service"),
                            format!("must be a string, found {}", type_name(other)),
                        ))
                    }
                };
                let madonvi = match (envelope.get("madonvi"), query) {
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
                    (None | Some(Value::Null) | Some(Value::String(_)), Some(query)) => {
                        query.to_owned()
                    }
                    (None | Some(Value::Null) | Some(Value::String(_)), None) => {
                        return Err(body_error(
                            Some("madonvi"),
                            "is required: the sender's unit code (e.g. 000.00.31.H31), in the envelope or as ?madonvi=",
                        ))
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
                    service,
                    data,
                })
            }
            other => Err(body_error(
                None,
                format!(
                    "the body must be a {SERVICE_SNAPSHOT} or {SERVICE_PROGRESS} envelope (a JSON object with `data`) or a bare `data` array, found {}",
                    type_name(&other)
                ),
            )),
        }
    }
}

/// Turns entries into events for one unit.
struct Converter<'a> {
    units: &'a UnitRegistry,
    /// The unit `madonvi` names.
    unit: kpi_domain::UnitIdx,
    field_map: &'a FieldMap,
    validation: &'a Validation<'a>,
}

impl Converter<'_> {
    fn entry(&self, position: usize, value: &Value, service: Option<EntryKind>) -> Dossier {
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
            entry,
            case_id,
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
                entry,
                case_id,
                format!("supplement/{}", supplement.id),
                Kind::CaseSupplementRequested,
                supplement.asked_at,
                json!({ "reason": supplement.reason, "due_at": rfc3339(due_at) }),
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
                    entry,
                    case_id,
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
                events.push(self.withdrawn(entry, case_id, finished_at)?);
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
                entry,
                case_id,
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
            entry,
            case_id,
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
        Ok(vec![self.withdrawn(entry, case_id, at)?])
    }

    fn withdrawn(
        &self,
        entry: &Entry<'_>,
        case_id: &str,
        at: DateTime<FixedOffset>,
    ) -> Result<ProducedEvent, LineError> {
        self.event(
            entry,
            case_id,
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
        entry: &Entry<'_>,
        case_id: &str,
        transition: String,
        kind: Kind,
        occurred_at: DateTime<FixedOffset>,
        data: Value,
    ) -> Result<ProducedEvent, LineError> {
        let produced = format!("{} ({transition} event)", entry.path);
        // After a merge (CONTRACT §1.1) a dossier of a ceased unit goes on
        // under its successor: each event names the unit of its day.
        let day = kpi_domain::Moment::from(occurred_at).local_day();
        let unit_id = &self.units.unit(self.units.holder_on(self.unit, day)).id;
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
        Ok(ProducedEvent {
            transition,
            event,
            payload,
        })
    }
}

/// One `DanhSachHoSoBoSung` entry, as far as events need it.
struct Supplement {
    path: String,
    id: String,
    asked_at: DateTime<FixedOffset>,
    due_before: Option<DateTime<FixedOffset>>,
    due_new: Option<DateTime<FixedOffset>>,
    reason: String,
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
            reason: request
                .text("NoiDungBoSung")?
                .map(Cow::into_owned)
                .unwrap_or_default(),
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

/// One JSON object of a payload with its path for errors. Values are read
/// only by the fields events need; errors quote only dates and codes.
struct Entry<'a> {
    object: &'a Map<String, Value>,
    /// `data[0]`, `data[0].DanhSachLePhi[1]`.
    path: String,
}

impl<'a> Entry<'a> {
    fn error(&self, key: &str, reason: impl Into<String>) -> LineError {
        field_error(format!("{}.{key}", self.path), reason)
    }

    /// A scalar as text: absent for a missing member, `null` or a blank
    /// string; numbers as written; booleans as `1`/`0`.
    fn text(&self, key: &str) -> Result<Option<Cow<'a, str>>, LineError> {
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
    fn code(&self, key: &str) -> Result<Option<Cow<'a, str>>, LineError> {
        Ok(self.text(key)?.map(|text| match text {
            Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
            Cow::Owned(text) => Cow::Owned(text.trim().to_owned()),
        }))
    }

    fn required_text(&self, key: &str, what: &str) -> Result<Cow<'a, str>, LineError> {
        self.text(key)?
            .ok_or_else(|| self.error(key, format!("is required: {what}")))
    }

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

    /// The objects of an array member; absent, `null` or `""` is empty.
    fn objects(&self, key: &str) -> Result<Vec<Entry<'a>>, LineError> {
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
    fn inferred_kind(&self) -> EntryKind {
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

/// What a value quoted in an error must look like.
#[derive(Debug, Clone, Copy)]
enum Shown {
    /// `yyyyMMddHHmmss`: exactly 14 digits.
    Date,
    /// Letters, digits and `-._/`; with 9 digits or more only when it has
    /// a letter too (`000.00.31.H31`), never like a phone or
    /// identity-card number sent in the wrong member (`0912.345.678`).
    Code,
}

/// A value for an error message: quoted when it looks like what it should
/// be, else only its length, so that personal data sent in the wrong
/// member is never echoed.
fn shown(text: &str, like: Shown) -> String {
    let chars = text.chars().count();
    let looks_right = match like {
        Shown::Date => chars == 14 && text.bytes().all(|b| b.is_ascii_digit()),
        Shown::Code => {
            let digits = text.bytes().filter(u8::is_ascii_digit).count();
            let has_letter = text.bytes().any(|b| b.is_ascii_alphabetic());
            chars <= MAX_QUOTED_CHARS
                && (digits < 9 || has_letter)
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
        }
    };
    if looks_right {
        format!("`{text}`")
    } else {
        format!("a value of {chars} characters")
    }
}

fn body_error(field: Option<&str>, reason: impl Into<String>) -> LineError {
    LineError {
        field: field.map(str::to_owned),
        reason: reason.into(),
    }
}

fn field_error(field: String, reason: impl Into<String>) -> LineError {
    LineError {
        field: Some(field),
        reason: reason.into(),
    }
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use kpi_events::{CaseReceived, Channel, EventData, ResolutionResult};

    use super::*;

    const REGISTRY: &str = r#"{"units":[
        {"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
        {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51","dvcqg_code":"000.00.31.H31"}]}"#;

    /// DVCQG-SYNC.md §5, example A.
    const EXAMPLE_A: &str = r#"{"session":"<token>","madonvi":"000.00.31.H31","service":"DongBoHoSoMC","isUpdating":"False",
 "data":[{"MaHoSo":"000.00.31.H31-250310-0007","MaTTHC":"1.001193","TenTTHC":"Thủ tục đăng ký khai sinh",
  "MaLinhVuc":"G09-TP03","TenLinhVuc":"Hộ tịch","KenhThucHien":"2","ChuHoSo":"Nguyễn Thị Lan",
  "SoGiayToChuHoSo":"051190001234","LoaiDoiTuong":"1","MaDoiTuong":"","ThongTinKhac":"","Email":"lan.nt@example.vn",
  "Fax":"","SoDienThoai":"0912345678","TrichYeuHoSo":"Đăng ký khai sinh cho con Trần Minh An",
  "NgayTiepNhan":"20250310091512","NgayHenTra":"20250311170000","TrangThaiHoSo":"4","NgayTra":"",
  "ThongTinTra":"","HinhThuc":"0","NgayKetThucXuLy":"","DonViXuLy":"UBND Phường Nguyễn Nghiêm","GhiChu":"",
  "NoiNopHoSo":"2","HoSoCoThanhPhanSoHoa":"1","TaiKhoanDuocXacThucVoiVNeID":"1","DuocThanhToanTrucTuyen":"0",
  "NgayTuChoi":"","NgayNopHoSo":"20250310081044",
  "DinhDanhCHS":[{"LoaiDinhDanh":"1","SoDinhDanh":"051190001234"}],"DSKetNoiCSDL":[{"MaCSDL":"7"}],
  "TaiLieuNop":[{"TepDinhKemId":"88121","TenTepDinhKem":"Giấy chứng sinh.pdf","IsDeleted":"False",
   "MaThanhPhanHoSo":"","DuongDanTaiTepTin":"https://dvc.example.gov.vn/f/88121","DuocSoHoa":"1",
   "DuocTaiSuDung":"0","DuocLayTuKhoDMQG":"0","MaKetQuaThayThe":""}],
  "DanhSachLePhi":[],"DanhSachTepDinhKemKhac":[],"DanhSachHoSoBoSung":[],"DanhSachGiayToKetQua":[]}]}"#;

    /// DVCQG-SYNC.md §5, example B.
    const EXAMPLE_B: &str = r#"{"session":"<token>","madonvi":"000.00.31.H31","service":"DongBoHoSoMC","isUpdating":"True",
 "data":[{"MaHoSo":"000.00.31.H31-250314-0021","MaTTHC":"1.000894","TenTTHC":"Thủ tục đăng ký kết hôn",
  "MaLinhVuc":"G09-TP03","TenLinhVuc":"Hộ tịch","KenhThucHien":"2","ChuHoSo":"Lê Văn Hùng",
  "SoGiayToChuHoSo":"051088004321","LoaiDoiTuong":"1","Email":"","Fax":"","SoDienThoai":"0987654321",
  "TrichYeuHoSo":"Đăng ký kết hôn Lê Văn Hùng - Phạm Thu Hà","NgayTiepNhan":"20250314100200",
  "NgayHenTra":"20250326170000","TrangThaiHoSo":"10","NgayKetThucXuLy":"20250328094500","NgayTra":"20250328150000",
  "ThongTinTra":"","HinhThuc":"0","DonViXuLy":"UBND Phường Nguyễn Nghiêm","GhiChu":"",
  "NoiNopHoSo":"2","HoSoCoThanhPhanSoHoa":"1","TaiKhoanDuocXacThucVoiVNeID":"1","DuocThanhToanTrucTuyen":"1",
  "NgayNopHoSo":"20250314093000","DinhDanhCHS":[{"LoaiDinhDanh":"1","SoDinhDanh":"051088004321"}],
  "DSKetNoiCSDL":[{"MaCSDL":"7"}],
  "TaiLieuNop":[{"TepDinhKemId":"90410","TenTepDinhKem":"Tờ khai đăng ký kết hôn.pdf","IsDeleted":"False",
   "MaThanhPhanHoSo":"","DuongDanTaiTepTin":"https://dvc.example.gov.vn/f/90410","DuocSoHoa":"1",
   "DuocTaiSuDung":"0","DuocLayTuKhoDMQG":"0","MaKetQuaThayThe":""}],
  "DanhSachLePhi":[{"TenPhiLePhi":"Lệ phí đăng ký kết hôn","MaPhiLePhi":"1","HinhThucThu":"1","Gia":"50000","LoaiPhiLePhi":"1"}],
  "DanhSachTepDinhKemKhac":[],
  "DanhSachHoSoBoSung":[{"HoSoBoSungId":1,"NguoiYeuCauBoSung":"Võ Thị Mai","NoiDungBoSung":"Bổ sung xác nhận tình trạng hôn nhân",
   "NgayBoSung":"20250318143000","NguoiTiepNhanBoSung":"Võ Thị Mai","ThongTinTiepNhan":"",
   "NgayTiepNhanBoSung":"20250320090000","TrangThaiBoSung":true,
   "DanhSachGiayToBoSung":[{"TepDinhKemId":"90588","TenTepDinhKem":"Xác nhận TTHN.pdf","IsDeleted":"False","MaThanhPhanHoSo":"",
    "DuongDanTaiTepTin":"https://dvc.example.gov.vn/f/90588","DuocSoHoa":"1","DuocTaiSuDung":"0","DuocLayTuKhoDMQG":"0","MaKetQuaThayThe":""}],
   "DanhSachLePhiBoSung":[],"NgayHenTraTruoc":"20250321170000","NgayHenTraMoi":"20250326170000"}],
  "DanhSachGiayToKetQua":[{"TenGiayTo":"Giấy chứng nhận kết hôn.pdf","MaThanhPhanHoSo":"","GiayToId":"90702",
   "DuongDanTepTinKetQua":"https://dvc.example.gov.vn/kq/90702","MaGiayToKetQua":"KQ.1.000894"}]}]}"#;

    /// Progress for B (DVCQG-SYNC.md §5), first and last step.
    const PROGRESS_B: &str = r#"{"session":"<token>","madonvi":"000.00.31.H31","service":"CapNhatTienDoHoSoMC","data":[
 {"MaHoSo":"000.00.31.H31-250314-0021","NguoiXuLy":"Võ Thị Mai","ChucDanh":"Công chức","ThoiDiemXuLy":"20250314100200","PhongBanXuLy":"","NoiDungXuLy":"Tiếp nhận hồ sơ","TrangThai":"2","NgayBatDau":"","NgayKetThucTheoQuyDinh":""},
 {"MaHoSo":"000.00.31.H31-250314-0021","NguoiXuLy":"Võ Thị Mai","ChucDanh":"","ThoiDiemXuLy":"20250328150000","PhongBanXuLy":"","NoiDungXuLy":"Trả kết quả","TrangThai":"10","NgayBatDau":"","NgayKetThucTheoQuyDinh":""}]}"#;

    const CASE_A: &str = "000.00.31.H31-250310-0007";
    const CASE_B: &str = "000.00.31.H31-250314-0021";

    fn registry() -> UnitRegistry {
        UnitRegistry::from_json(REGISTRY.as_bytes()).expect("test registry")
    }

    fn run_with(
        body: &[u8],
        query: Option<&str>,
        map: &FieldMap,
    ) -> Result<Vec<Dossier>, LineError> {
        let units = registry();
        let at = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
        let validation = Validation::new(&units, at);
        convert(body, query, &units, map, &validation)
    }

    fn run(body: &[u8]) -> Vec<Dossier> {
        run_with(body, None, &FieldMap::default()).expect("the body is readable")
    }

    fn events(dossier: &Dossier) -> &[ProducedEvent] {
        dossier.outcome.as_ref().expect("the dossier is accepted")
    }

    fn rejection(dossier: &Dossier) -> &LineError {
        dossier
            .outcome
            .as_ref()
            .expect_err("the dossier is rejected")
    }

    fn transitions(dossier: &Dossier) -> Vec<&str> {
        events(dossier)
            .iter()
            .map(|e| e.transition.as_str())
            .collect()
    }

    fn find<'a>(dossier: &'a Dossier, transition: &str) -> &'a ProducedEvent {
        events(dossier)
            .iter()
            .find(|e| e.transition == transition)
            .unwrap_or_else(|| panic!("no {transition} event"))
    }

    fn vn(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<FixedOffset> {
        vietnam().with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// The first entry of example B, to vary.
    fn entry_b() -> Value {
        let body: Value = serde_json::from_str(EXAMPLE_B).unwrap();
        body["data"][0].clone()
    }

    fn envelope(service: &str, entries: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "session": "<token>", "madonvi": "000.00.31.H31", "service": service,
            "isUpdating": "False", "data": entries,
        }))
        .unwrap()
    }

    fn snapshots(entries: Vec<Value>) -> Vec<u8> {
        envelope(SERVICE_SNAPSHOT, entries)
    }

    fn one(entry: Value) -> Dossier {
        run(&snapshots(vec![entry])).remove(0)
    }

    #[test]
    fn a_dossier_of_a_merged_ward_goes_on_under_its_successor() {
        // Phường Nguyễn Nghiêm (H31) ends on 2025-03-20 and merges into
        // W: example B, received on the 14th and resolved on the 28th,
        // names H31 until the merge and W after it.
        let units = UnitRegistry::from_json(
            r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
            {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51",
             "dvcqg_code":"000.00.31.H31","valid_to":"2025-03-20"},
            {"id":"W","name":"Phường Đức Phổ","level":"commune","parent":"51",
             "valid_from":"2025-03-21","successor_of":["5153105"]}]}"#
                .as_bytes(),
        )
        .unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
        let dossiers = convert(
            EXAMPLE_B.as_bytes(),
            None,
            &units,
            &FieldMap::default(),
            &Validation::new(&units, at),
        )
        .unwrap();
        let named: Vec<(&str, &str)> = events(&dossiers[0])
            .iter()
            .map(|produced| {
                (
                    produced.transition.as_str(),
                    produced.event.unit_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                ("received", "5153105"),
                ("supplement/1", "5153105"),
                ("resolved", "W"),
                ("paid", "5153105"),
                ("synced", "5153105"),
            ]
        );
    }

    #[test]
    fn example_a_is_received_and_synced() {
        let dossiers = run(EXAMPLE_A.as_bytes());
        assert_eq!(dossiers.len(), 1);
        let dossier = &dossiers[0];
        assert_eq!(dossier.index, 1);
        assert_eq!(dossier.case_id.as_deref(), Some(CASE_A));
        assert_eq!(transitions(dossier), ["received", "synced"]);

        let received = &find(dossier, "received").event;
        assert_eq!(received.case_id, CASE_A);
        assert_eq!(received.unit_id, "5153105");
        assert_eq!(received.occurred_at, vn(2025, 3, 10, 9, 15, 12));
        assert_eq!(
            received.data,
            EventData::CaseReceived(CaseReceived {
                procedure_code: "1.001193".into(),
                field: "g09_tp03".into(),
                channel: Channel::Online,
                due_at: vn(2025, 3, 11, 17, 0, 0),
                dossier_digitized: true,
                reused_data: false,
            })
        );
        let synced = &find(dossier, "synced").event;
        assert_eq!(synced.occurred_at, vn(2025, 3, 10, 9, 15, 12));
        assert_eq!(
            synced.data,
            EventData::CaseSynced {
                portal: "national".into()
            }
        );

        let payload: Value = serde_json::from_slice(&find(dossier, "received").payload).unwrap();
        assert_eq!(payload["occurred_at"], "2025-03-10T09:15:12+07:00");
        assert_eq!(payload["data"]["due_at"], "2025-03-11T17:00:00+07:00");
        assert_eq!(payload["kind"], "case.received");
    }

    #[test]
    fn example_b_follows_the_supplement_the_result_and_the_fee() {
        let map =
            FieldMap::from_json(br#"{"G09-TP03": "ho_tich", "G09-DD01": "dat_dai"}"#).unwrap();
        let dossiers = run_with(EXAMPLE_B.as_bytes(), None, &map).unwrap();
        let dossier = &dossiers[0];
        assert_eq!(dossier.case_id.as_deref(), Some(CASE_B));
        assert_eq!(
            transitions(dossier),
            ["received", "supplement/1", "resolved", "paid", "synced"]
        );
        for produced in events(dossier) {
            assert_eq!(produced.event.case_id, CASE_B);
            assert_eq!(produced.event.unit_id, "5153105");
        }

        let received = &find(dossier, "received").event;
        assert_eq!(received.occurred_at, vn(2025, 3, 14, 10, 2, 0));
        assert_eq!(
            received.data,
            EventData::CaseReceived(CaseReceived {
                procedure_code: "1.000894".into(),
                field: "ho_tich".into(),
                channel: Channel::Online,
                // The first supplement's NgayHenTraTruoc, not NgayHenTra.
                due_at: vn(2025, 3, 21, 17, 0, 0),
                dossier_digitized: true,
                reused_data: false,
            })
        );

        let supplement = &find(dossier, "supplement/1").event;
        assert_eq!(supplement.occurred_at, vn(2025, 3, 18, 14, 30, 0));
        assert_eq!(
            supplement.data,
            EventData::CaseSupplementRequested {
                reason: "Bổ sung xác nhận tình trạng hôn nhân".into(),
                due_at: vn(2025, 3, 26, 17, 0, 0),
            }
        );

        let resolved = &find(dossier, "resolved").event;
        assert_eq!(resolved.occurred_at, vn(2025, 3, 28, 9, 45, 0));
        assert_eq!(
            resolved.data,
            EventData::CaseResolved {
                result: ResolutionResult::Approved,
                result_electronic: true,
                result_digitized: true,
            }
        );

        let paid = &find(dossier, "paid").event;
        assert_eq!(paid.occurred_at, vn(2025, 3, 14, 10, 2, 0));
        assert_eq!(
            paid.data,
            EventData::CasePaid {
                amount_vnd: 50000,
                online: true
            }
        );

        let synced = &find(dossier, "synced").event;
        assert_eq!(
            synced.data,
            EventData::CaseSynced {
                portal: "national".into()
            }
        );

        // Without the map, the unmapped-code rule.
        let unmapped = run(EXAMPLE_B.as_bytes());
        let EventData::CaseReceived(received) = &find(&unmapped[0], "received").event.data else {
            panic!("not a case.received");
        };
        assert_eq!(received.field, "g09_tp03");
    }

    #[test]
    fn progress_steps_other_than_withdrawal_are_acknowledged_and_ignored() {
        let dossiers = run(PROGRESS_B.as_bytes());
        assert_eq!(dossiers.len(), 2);
        for (position, dossier) in dossiers.iter().enumerate() {
            assert_eq!(dossier.index, position + 1);
            assert_eq!(dossier.case_id.as_deref(), Some(CASE_B));
            assert_eq!(dossier.outcome, Ok(vec![]));
        }

        let mut step: Value = serde_json::from_str::<Value>(PROGRESS_B).unwrap()["data"][0].clone();
        step["TrangThai"] = json!(7);
        step["ThoiDiemXuLy"] = json!("20250316080000");
        let dossiers = run(&envelope(SERVICE_PROGRESS, vec![step.clone()]));
        assert_eq!(transitions(&dossiers[0]), ["withdrawn"]);
        let withdrawn = &find(&dossiers[0], "withdrawn");
        assert_eq!(withdrawn.event.event_id, event_id(CASE_B, "withdrawn"));
        assert_eq!(withdrawn.event.occurred_at, vn(2025, 3, 16, 8, 0, 0));
        assert_eq!(
            withdrawn.event.data,
            EventData::CaseWithdrawn {
                reason: "Công dân yêu cầu rút hồ sơ".into()
            }
        );

        step["ThoiDiemXuLy"] = json!("");
        let dossiers = run(&envelope(SERVICE_PROGRESS, vec![step]));
        assert_eq!(
            rejection(&dossiers[0]).field.as_deref(),
            Some("data[0].ThoiDiemXuLy")
        );
    }

    #[test]
    fn a_withdrawn_snapshot_needs_the_time_it_ended() {
        let mut entry = entry_b();
        entry["TrangThaiHoSo"] = json!("7");
        entry["NgayKetThucXuLy"] = json!("");
        let dossier = one(entry.clone());
        assert_eq!(
            transitions(&dossier),
            ["received", "supplement/1", "paid", "synced"]
        );

        entry["NgayKetThucXuLy"] = json!("20250319100000");
        let dossier = one(entry);
        assert_eq!(
            transitions(&dossier),
            ["received", "supplement/1", "withdrawn", "paid", "synced"]
        );
        let withdrawn = &find(&dossier, "withdrawn").event;
        assert_eq!(withdrawn.occurred_at, vn(2025, 3, 19, 10, 0, 0));
        assert_eq!(
            withdrawn.data,
            EventData::CaseWithdrawn {
                reason: WITHDRAWN_REASON.into()
            }
        );
    }

    #[test]
    fn ids_are_stable_and_uuid_v5_of_the_code_and_transition() {
        assert_eq!(
            NAMESPACE,
            Uuid::parse_str("c2acc58d-7301-53c5-b5b7-fcb2d7597d06").unwrap()
        );
        let first = run(EXAMPLE_B.as_bytes());
        let again = run(EXAMPLE_B.as_bytes());
        assert_eq!(first, again);
        for produced in events(&first[0]) {
            let name = format!("{CASE_B}/{}", produced.transition);
            let expected = Uuid::new_v5(&NAMESPACE, name.as_bytes());
            assert_eq!(produced.event.event_id, expected);
            assert_eq!(
                produced.event.event_id,
                event_id(CASE_B, &produced.transition)
            );
            assert_eq!(expected.get_version_num(), 5);
        }
        // "1" and 1 name the same supplement request.
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"][0]["HoSoBoSungId"] = json!("1");
        assert_eq!(one(entry), first[0]);
    }

    #[test]
    fn a_bare_array_takes_madonvi_from_the_query_and_infers_each_entry() {
        let step: Value = serde_json::from_str::<Value>(PROGRESS_B).unwrap()["data"][1].clone();
        let mut withdrawal = step.clone();
        withdrawal["TrangThai"] = json!("7");
        let body = serde_json::to_vec(&json!([entry_b(), step, withdrawal])).unwrap();
        let dossiers = run_with(&body, Some("000.00.31.H31"), &FieldMap::default()).unwrap();
        assert_eq!(dossiers.len(), 3);
        assert_eq!(transitions(&dossiers[0]).len(), 5);
        assert_eq!(dossiers[1].outcome, Ok(vec![]));
        assert_eq!(transitions(&dossiers[2]), ["withdrawn"]);
        assert_eq!(find(&dossiers[2], "withdrawn").event.unit_id, "5153105");

        let err = run_with(&body, None, &FieldMap::default()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("madonvi"));
        assert!(err.reason.contains("?madonvi="), "{}", err.reason);

        // An envelope and a query that disagree are refused.
        let err = run_with(
            EXAMPLE_A.as_bytes(),
            Some("000.00.31.H32"),
            &FieldMap::default(),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("madonvi"));
    }

    #[test]
    fn an_unknown_madonvi_is_refused_naming_the_code() {
        let body = EXAMPLE_A.replace(
            r#""madonvi":"000.00.31.H31""#,
            r#""madonvi":"000.00.31.H99""#,
        );
        let dossiers = run_with(body.as_bytes(), None, &FieldMap::default()).unwrap();
        assert_eq!(dossiers.len(), 1);
        assert_eq!(dossiers[0].case_id.as_deref(), Some(CASE_A));
        assert_eq!(
            rejection(&dossiers[0]),
            &LineError {
                field: Some("madonvi".into()),
                reason: "madonvi `000.00.31.H99` is not the dvcqg_code of any unit in the registry"
                    .into(),
            }
        );
    }

    #[test]
    fn unreadable_bodies_are_refused_as_a_whole() {
        let map = FieldMap::default();
        let err = run_with(b"{\"data\": [", None, &map).unwrap_err();
        assert_eq!(err.field, None);
        assert!(
            err.reason.starts_with("the body is not valid JSON"),
            "{}",
            err.reason
        );

        let err = run_with(br#"{"madonvi":"000.00.31.H31"}"#, None, &map).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("data"));
        let err = run_with(br#"{"madonvi":"000.00.31.H31","data":{}}"#, None, &map).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("data"));
        assert_eq!(err.reason, "must be an array, found an object");

        let err = run_with(
            br#"{"madonvi":"000.00.31.H31","service":"TraCuuHoSo","data":[]}"#,
            None,
            &map,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("service"));
        assert!(
            err.reason.contains("`TraCuuHoSo` is not a known service"),
            "{}",
            err.reason
        );

        let err = run_with(br#"{"data":[]}"#, None, &map).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("madonvi"));
        let err = run_with(b"42", None, &map).unwrap_err();
        assert_eq!(err.field, None);

        assert_eq!(run_with(&snapshots(vec![]), None, &map), Ok(vec![]));
    }

    #[test]
    fn a_dossier_not_yet_received_produces_no_event() {
        let mut entry = entry_b();
        entry["NgayTiepNhan"] = json!("");
        entry["TrangThaiHoSo"] = json!("1");
        let dossiers = run(&snapshots(vec![entry_b(), entry]));
        assert_eq!(transitions(&dossiers[0]).len(), 5);
        assert_eq!(dossiers[1].index, 2);
        assert_eq!(dossiers[1].case_id.as_deref(), Some(CASE_B));
        assert!(transitions(&dossiers[1]).is_empty());

        let mut entry = entry_b();
        entry.as_object_mut().unwrap().remove("NgayTiepNhan");
        assert!(transitions(&one(entry)).is_empty());
    }

    #[test]
    fn malformed_or_missing_dates_refuse_the_dossier() {
        let mut entry = entry_b();
        entry["NgayKetThucXuLy"] = json!("2025-03-28 09:45");
        let err = rejection(&one(entry)).clone();
        assert_eq!(err.field.as_deref(), Some("data[0].NgayKetThucXuLy"));
        assert_eq!(
            err.reason,
            "a value of 16 characters is not a date of the form yyyyMMddHHmmss, Vietnam time (e.g. 20250310091512)"
        );
        let mut entry = entry_b();
        entry["NgayKetThucXuLy"] = json!("20250229094500");
        assert_eq!(
            rejection(&one(entry)).reason,
            "`20250229094500` is not a date of the form yyyyMMddHHmmss, Vietnam time (e.g. 20250310091512)"
        );

        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"][0]["NgayBoSung"] = json!("20250231143000");
        assert_eq!(
            rejection(&one(entry)).field.as_deref(),
            Some("data[0].DanhSachHoSoBoSung[0].NgayBoSung")
        );

        // No due time at all.
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"] = json!([]);
        entry["NgayHenTra"] = Value::Null;
        assert_eq!(
            rejection(&one(entry)).field.as_deref(),
            Some("data[0].NgayHenTra")
        );

        // Dates as numbers are read too.
        let mut entry = entry_b();
        entry["NgayTiepNhan"] = json!(20250314100200_u64);
        assert_eq!(one(entry), run(EXAMPLE_B.as_bytes())[0]);
    }

    #[test]
    fn an_invalid_produced_event_refuses_the_dossier_naming_the_event() {
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"] = json!([]);
        entry["NgayHenTra"] = json!("20250314090000");
        let err = rejection(&one(entry)).clone();
        assert_eq!(
            err.field.as_deref(),
            Some("data[0] (received event): data.due_at")
        );
        assert!(
            err.reason.contains("is not after occurred_at"),
            "{}",
            err.reason
        );

        let mut entry = entry_b();
        entry["MaLinhVuc"] = json!("Đ");
        let dossier = one(entry);
        let EventData::CaseReceived(received) = &find(&dossier, "received").event.data else {
            panic!("not a case.received");
        };
        assert_eq!(received.field, "_");

        let mut entry = entry_b();
        entry["MaLinhVuc"] = json!("x".repeat(65));
        let err = rejection(&one(entry)).clone();
        assert_eq!(err.field.as_deref(), Some("data[0].MaLinhVuc"));
        assert!(err.reason.contains("--field-map"), "{}", err.reason);
    }

    #[test]
    fn a_rejection_date_makes_the_result_rejected() {
        let mut entry = entry_b();
        entry["NgayTuChoi"] = json!("20250327160000");
        entry["DanhSachGiayToKetQua"] = json!([]);
        let dossier = one(entry);
        assert_eq!(
            find(&dossier, "resolved").event.data,
            EventData::CaseResolved {
                result: ResolutionResult::Rejected,
                result_electronic: false,
                result_digitized: false,
            }
        );

        // Status 9 counts as resolved; 4 does not.
        let mut entry = entry_b();
        entry["TrangThaiHoSo"] = json!(9);
        assert!(transitions(&one(entry)).contains(&"resolved"));
        let mut entry = entry_b();
        entry["TrangThaiHoSo"] = json!("4");
        assert!(!transitions(&one(entry)).contains(&"resolved"));
    }

    #[test]
    fn reused_data_comes_from_submitted_files() {
        let reused = |file: Value| {
            let mut entry = entry_b();
            entry["TaiLieuNop"] = json!([{"TenTepDinhKem": "a.pdf", "DuocTaiSuDung": "0", "DuocLayTuKhoDMQG": "0"}, file]);
            let dossier = one(entry);
            let EventData::CaseReceived(received) = &find(&dossier, "received").event.data else {
                panic!("not a case.received");
            };
            received.reused_data
        };
        assert!(reused(json!({"DuocTaiSuDung": "1"})));
        assert!(reused(json!({"DuocTaiSuDung": 2})));
        assert!(reused(json!({"DuocLayTuKhoDMQG": 1})));
        assert!(reused(json!({"DuocLayTuKhoDMQG": true})));
        assert!(!reused(
            json!({"DuocTaiSuDung": "0", "DuocLayTuKhoDMQG": ""})
        ));
    }

    #[test]
    fn the_first_supplement_is_the_earliest_then_the_smallest_id() {
        let request = |id: Value, asked: &str, before: &str, new: &str| {
            json!({"HoSoBoSungId": id, "NoiDungBoSung": "Bổ sung", "NgayBoSung": asked,
                   "NgayHenTraTruoc": before, "NgayHenTraMoi": new, "TrangThaiBoSung": false})
        };
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"] = json!([
            request(
                json!(3),
                "20250320080000",
                "20250324170000",
                "20250326170000"
            ),
            request(
                json!("10"),
                "20250318143000",
                "20250322170000",
                "20250324170000"
            ),
            request(
                json!(2),
                "20250318143000",
                "20250321170000",
                "20250324170000"
            ),
        ]);
        let dossier = one(entry);
        assert_eq!(
            transitions(&dossier),
            [
                "received",
                "supplement/2",
                "supplement/10",
                "supplement/3",
                "resolved",
                "paid",
                "synced"
            ]
        );
        let EventData::CaseReceived(received) = &find(&dossier, "received").event.data else {
            panic!("not a case.received");
        };
        assert_eq!(received.due_at, vn(2025, 3, 21, 17, 0, 0));

        // A request without NgayHenTraMoi keeps the dossier's NgayHenTra.
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"][0]["NgayHenTraMoi"] = Value::Null;
        let dossier = one(entry);
        let EventData::CaseSupplementRequested { due_at, .. } =
            find(&dossier, "supplement/1").event.data
        else {
            panic!("not a case.supplement_requested");
        };
        assert_eq!(due_at, vn(2025, 3, 26, 17, 0, 0));

        // Two requests under one id are refused.
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"] = json!([
            request(
                json!(1),
                "20250318143000",
                "20250321170000",
                "20250324170000"
            ),
            request(
                json!("1"),
                "20250320143000",
                "20250324170000",
                "20250326170000"
            ),
        ]);
        assert_eq!(
            rejection(&one(entry)).field.as_deref(),
            Some("data[0].DanhSachHoSoBoSung[1].HoSoBoSungId")
        );
    }

    #[test]
    fn fees_are_summed() {
        let mut entry = entry_b();
        entry["DuocThanhToanTrucTuyen"] = json!(0);
        entry["DanhSachLePhi"] = json!([{"Gia": "50000"}, {"Gia": 20000}, {"Gia": 5000.0}]);
        assert_eq!(
            find(&one(entry), "paid").event.data,
            EventData::CasePaid {
                amount_vnd: 75000,
                online: false
            }
        );
        // Thousands separators (Vietnamese `50.000` is fifty thousand),
        // fractions and signs are refused, never read as another amount.
        for gia in [
            json!("-5"),
            json!("50.000"),
            json!("50,000"),
            json!("5000.00"),
            json!(12.5),
        ] {
            let mut entry = entry_b();
            entry["DanhSachLePhi"] = json!([{ "Gia": gia }]);
            let err = rejection(&one(entry)).clone();
            assert_eq!(err.field.as_deref(), Some("data[0].DanhSachLePhi[0].Gia"));
            assert!(
                err.reason.contains("thousands separators"),
                "{}",
                err.reason
            );
        }
    }

    #[test]
    fn a_whole_number_sent_as_a_float_gives_the_same_ids() {
        let mut entry = entry_b();
        entry["DanhSachHoSoBoSung"][0]["HoSoBoSungId"] = json!(1.0);
        assert_eq!(one(entry), one(entry_b()));
    }

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

    #[test]
    fn personal_data_never_reaches_an_event_or_an_error() {
        fn stuffed() -> Value {
            let mut entry = entry_b();
            for key in [
                "ChuHoSo",
                "SoGiayToChuHoSo",
                "Email",
                "SoDienThoai",
                "Fax",
                "ThongTinKhac",
                "MaDoiTuong",
                "TrichYeuHoSo",
                "DonViXuLy",
                "GhiChu",
                "ThongTinTra",
            ] {
                entry[key] = json!(format!("PII-{key}"));
            }
            entry["DinhDanhCHS"] = json!([{"LoaiDinhDanh": "1", "SoDinhDanh": "PII-SoDinhDanh"}]);
            entry["TaiLieuNop"] = json!([{"TenTepDinhKem": "PII-TenTepDinhKem.pdf",
                "DuongDanTaiTepTin": "https://PII-DuongDanTaiTepTin", "DuocTaiSuDung": "1"}]);
            entry["DanhSachTepDinhKemKhac"] = json!([{"TenGiayTo": "PII-TenGiayTo", "SoLuong": 1}]);
            entry["DanhSachGiayToKetQua"] = json!([{"TenGiayTo": "PII-TenGiayToKetQua",
                "DuongDanTepTinKetQua": "https://PII-DuongDanTepTinKetQua", "MaGiayToKetQua": "KQ.1"}]);
            let supplement = &mut entry["DanhSachHoSoBoSung"][0];
            supplement["NguoiYeuCauBoSung"] = json!("PII-NguoiYeuCauBoSung");
            supplement["NguoiTiepNhanBoSung"] = json!("PII-NguoiTiepNhanBoSung");
            supplement["ThongTinTiepNhan"] = json!("PII-ThongTinTiepNhan");
            supplement["DanhSachGiayToBoSung"][0]["TenTepDinhKem"] = json!("PII-TenTepBoSung");
            supplement["DanhSachGiayToBoSung"][0]["DuongDanTaiTepTin"] =
                json!("https://PII-BoSung");
            entry
        }
        let progress_step = |status: &str, at: &str| {
            json!({"MaHoSo": CASE_B, "NguoiXuLy": "PII-NguoiXuLy", "ChucDanh": "PII-ChucDanh",
                   "PhongBanXuLy": "PII-PhongBanXuLy", "NoiDungXuLy": "PII-NoiDungXuLy",
                   "ThoiDiemXuLy": at, "TrangThai": status})
        };

        let accepted = stuffed();
        // Personal data in members whose values errors may quote: a phone
        // number as a channel or an amount, a name as a field code, an
        // identity-card number as a date.
        let mut phone_as_channel = stuffed();
        phone_as_channel["KenhThucHien"] = json!("0912345678");
        let mut phone_as_amount = stuffed();
        phone_as_amount["DanhSachLePhi"] = json!([{"Gia": "0912.345.678"}]);
        let mut name_as_field = stuffed();
        name_as_field["MaLinhVuc"] = json!("PII Nguyễn Văn An 0912345678 ".repeat(3));
        let mut id_card_as_field = stuffed();
        id_card_as_field["MaLinhVuc"] = json!("Van An 051190001234");
        let mut id_card_as_date = stuffed();
        id_card_as_date["NgayTiepNhan"] = json!("051190001234");
        let mut bad_date = stuffed();
        bad_date["NgayHenTra"] = json!("PII-NgayHenTra");
        let mut bad_event = stuffed();
        bad_event["DanhSachHoSoBoSung"] = json!([]);
        bad_event["NgayHenTra"] = json!("20250101000000");
        let mut bad_url = stuffed();
        bad_url["DanhSachGiayToKetQua"][0]["DuongDanTepTinKetQua"] = json!({"url": "PII-url"});
        let mut bad_files = stuffed();
        bad_files["TaiLieuNop"] = json!("PII-TaiLieuNop");
        let mut bad_channel = stuffed();
        bad_channel["KenhThucHien"] = json!(["PII-Kenh"]);
        let not_an_object = json!("PII-entry");

        let mut outputs = Vec::new();
        let entries = vec![
            accepted,
            phone_as_channel,
            phone_as_amount,
            name_as_field,
            id_card_as_field,
            id_card_as_date,
            bad_date,
            bad_event,
            bad_url,
            bad_files,
            bad_channel,
            not_an_object,
        ];
        let dossiers = run(&snapshots(entries.clone()));
        assert_eq!(transitions(&dossiers[0]).len(), 5);
        for dossier in &dossiers[1..] {
            rejection(dossier);
        }
        outputs.push(format!("{dossiers:?}"));

        let steps = vec![
            progress_step("7", "20250316080000"),
            progress_step("7", "PII-ThoiDiemXuLy"),
            progress_step("4", "20250316080000"),
        ];
        let dossiers = run(&envelope(SERVICE_PROGRESS, steps.clone()));
        assert_eq!(transitions(&dossiers[0]), ["withdrawn"]);
        rejection(&dossiers[1]);
        outputs.push(format!("{dossiers:?}"));

        // The same as bare arrays, with and without the unit.
        let mut bare = entries;
        bare.extend(steps);
        let bare = serde_json::to_vec(&bare).unwrap();
        let dossiers = run_with(&bare, Some("000.00.31.H31"), &FieldMap::default());
        outputs.push(format!("{dossiers:?}"));
        for dossier in dossiers.unwrap() {
            if let Ok(events) = dossier.outcome {
                for produced in events {
                    outputs.push(String::from_utf8(produced.payload).unwrap());
                }
            }
        }
        outputs.push(format!("{:?}", run_with(&bare, None, &FieldMap::default())));
        outputs.push(format!(
            "{:?}",
            run_with(
                &bare,
                Some("PII-madonvi-is-not-personal"),
                &FieldMap::default()
            )
        ));
        // A body cut short in a personal field.
        outputs.push(format!(
            "{:?}",
            run_with(
                br#"{"data":[{"ChuHoSo":"PII-cut"#,
                None,
                &FieldMap::default()
            )
        ));
        outputs.push(format!(
            "{:?}",
            run_with(
                br#"{"data":[{"ChuHoSo":"PII-bad\q"}]}"#,
                None,
                &FieldMap::default()
            )
        ));

        for produced in events(&run(&snapshots(vec![stuffed()]))[0]) {
            outputs.push(String::from_utf8(produced.payload.clone()).unwrap());
        }
        for output in &outputs {
            // The madonvi code is quoted on purpose: it is an agency code.
            let output = output.replace("PII-madonvi-is-not-personal", "");
            for personal in ["PII", "0912345678", "0912.345.678", "051190001234", "Nguy"] {
                assert!(!output.contains(personal), "personal data leaked: {output}");
            }
        }
    }
}
