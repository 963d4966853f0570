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
//! - A supplement's `reason` is the fixed text [`SUPPLEMENT_REASON`]:
//!   `NoiDungBoSung` is free text about the applicant and is never read.
//! - The table of §7.1 is followed literally (e.g. `TaiLieuNop` entries
//!   marked `IsDeleted` still count for `reused_data`), so that every
//!   implementation produces the same content under the same ids.

mod envelope;
mod mapping;
mod personal;

use kpi_domain::UnitRegistry;
use kpi_events::{Event, Validation};

use crate::batch::LineError;

use envelope::{body_error, case_id_of, Payload};
pub use envelope::{header, Asked, EntryKind, Header, MAX_DOSSIERS, SERVICE_LOOKUP};
use mapping::Converter;
use personal::{shown, Shown};

pub use envelope::{SERVICE_PROGRESS, SERVICE_SNAPSHOT};
pub use mapping::{event_id, FieldMap, NAMESPACE, PORTAL, SUPPLEMENT_REASON, WITHDRAWN_REASON};

// What the tests below reach through `use super::*`, besides the above.
#[cfg(test)]
use chrono::{DateTime, FixedOffset};
#[cfg(test)]
use kpi_events::vietnam;
#[cfg(test)]
use serde_json::{json, Value};
#[cfg(test)]
use uuid::Uuid;

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
/// passed [`parse_event`](kpi_events::parse_event) under `validation`.
pub fn convert(
    body: &[u8],
    madonvi_query: Option<&str>,
    units: &UnitRegistry,
    field_map: &FieldMap,
    validation: &Validation<'_>,
) -> Result<Vec<Dossier>, LineError> {
    convert_from(body, madonvi_query, units, field_map, validation).map(|(_, dossiers)| dossiers)
}

/// [`convert`], with the unit `madonvi` names (when the registry has it).
pub fn convert_from(
    body: &[u8],
    madonvi_query: Option<&str>,
    units: &UnitRegistry,
    field_map: &FieldMap,
    validation: &Validation<'_>,
) -> Result<(Option<kpi_domain::UnitIdx>, Vec<Dossier>), LineError> {
    let payload = Payload::read(body, madonvi_query)?;
    let service = match payload.asked {
        Asked::Lookup => return Ok((None, Vec::new())),
        Asked::Entries(service) => service,
    };
    // Each entry is parsed when its turn comes: never one tree of the
    // whole body.
    let parsed = |raw: &serde_json::value::RawValue| {
        serde_json::from_str::<serde_json::Value>(raw.get()).unwrap_or(serde_json::Value::Null)
    };
    let Some(unit) = units.find_by_dvcqg_code(&payload.madonvi) else {
        // Every dossier is refused, naming the code (§7.1).
        let unknown = body_error(
            Some("madonvi"),
            format!(
                "madonvi {} is not the dvcqg_code of any unit in the registry",
                shown(&payload.madonvi, Shown::Code)
            ),
        );
        return Ok((
            None,
            payload
                .data
                .iter()
                .enumerate()
                .map(|(position, entry)| Dossier {
                    index: position + 1,
                    case_id: case_id_of(&parsed(entry)),
                    outcome: Err(unknown.clone()),
                })
                .collect(),
        ));
    };
    let converter = Converter {
        units,
        unit,
        field_map,
        validation,
    };
    Ok((
        Some(unit),
        payload
            .data
            .iter()
            .enumerate()
            .map(|(position, entry)| converter.entry(position, &parsed(entry), service))
            .collect(),
    ))
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

    /// Example B re-sent after the merge under the code of the new ward W
    /// (formed on 2025-03-21, after B was received on the 14th).
    fn example_b_under_the_new_ward(registry: &str) -> Dossier {
        let units = UnitRegistry::from_json(registry.as_bytes()).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 15, 0, 0, 0).unwrap();
        let body = EXAMPLE_B.replace(
            "\"madonvi\":\"000.00.31.H31\"",
            "\"madonvi\":\"000.00.31.W\"",
        );
        convert(
            body.as_bytes(),
            None,
            &units,
            &FieldMap::default(),
            &Validation::new(&units, at),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn a_dossier_sent_under_a_ward_formed_after_its_receipt_lands_on_its_predecessor() {
        let dossier = example_b_under_the_new_ward(
            r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
            {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51",
             "dvcqg_code":"000.00.31.H31","valid_to":"2025-03-20"},
            {"id":"W","name":"Phường Đức Phổ","level":"commune","parent":"51","dvcqg_code":"000.00.31.W",
             "valid_from":"2025-03-21","successor_of":["5153105"]}]}"#,
        );
        let named: Vec<(&str, &str)> = events(&dossier)
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
    fn a_dossier_under_a_ward_of_two_predecessors_is_refused_naming_both() {
        let dossier = example_b_under_the_new_ward(
            r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
            {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51",
             "dvcqg_code":"000.00.31.H31","valid_to":"2025-03-20"},
            {"id":"5153107","name":"Phường Phổ Ninh","level":"commune","parent":"51","valid_to":"2025-03-20"},
            {"id":"W","name":"Phường Đức Phổ","level":"commune","parent":"51","dvcqg_code":"000.00.31.W",
             "valid_from":"2025-03-21","successor_of":["5153105","5153107"]}]}"#,
        );
        let error = rejection(&dossier);
        assert_eq!(error.field.as_deref(), Some("data[0].NgayTiepNhan"));
        for named in [
            "W (Phường Đức Phổ)",
            "formed on 2025-03-21",
            "5153105 (Phường Nguyễn Nghiêm)",
            "5153107 (Phường Phổ Ninh)",
        ] {
            assert!(error.reason.contains(named), "{named}: {}", error.reason);
        }
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
                reason: SUPPLEMENT_REASON.into(),
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
            br#"{"madonvi":"000.00.31.H31","service":"LayDanhSachHoSo","data":[]}"#,
            None,
            &map,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("service"));
        assert!(
            err.reason
                .contains("`LayDanhSachHoSo` is not a known service")
                && err
                    .reason
                    .contains("DongBoHoSoMC, CapNhatTienDoHoSoMC, TraCuuHoSo"),
            "{}",
            err.reason
        );
        // A look-up asks nothing of ingest (§7.2).
        assert_eq!(
            run_with(
                br#"{"service":"TraCuuHoSo","madonvi":"000.00.31.H31","data":[{"MaHoSo":"x"}]}"#,
                None,
                &map
            ),
            Ok(vec![])
        );
        // At most 1,000 dossiers a body, refused as a whole beyond.
        let many = snapshots(vec![json!({}); MAX_DOSSIERS + 1]);
        let err = run_with(&many, None, &map).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("data"));
        assert!(err.reason.contains("at most 1000"), "{}", err.reason);

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
