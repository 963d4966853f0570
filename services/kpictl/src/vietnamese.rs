//! The reasons an event or a line is refused, in Vietnamese, for the
//! tables people read (`kpictl import`, `rejected`, `redrive`).
//!
//! The services, the API and the stored parked events keep the reasons in
//! English (integrators and logs read them, and a parked reason is part of
//! the views); this renders them for people by their patterns. A reason
//! whose pattern is not here is shown as it is: the tests below build
//! every refusal the libraries make from real bad input and check that
//! each is rendered, so a reason reworded upstream shows up there.

/// An English reason and its Vietnamese, `{}` marking the same values in
/// both, in order. Longer, more specific patterns first.
const PATTERNS: &[(&str, &str)] = &[
    // EventError (crates/events).
    (
        "the event is {} bytes; the limit is {} bytes (64 KiB)",
        "sự kiện dài {} byte, quá giới hạn {} byte (64 KiB)",
    ),
    ("not valid JSON: {}", "không phải JSON hợp lệ: {}"),
    (
        "the event must be a JSON object, found {}",
        "sự kiện phải là một đối tượng JSON, nhận được {}",
    ),
    ("field `{}` is required", "thiếu trường bắt buộc `{}`"),
    (
        "field `{}` must be {}, found {}",
        "trường `{}` phải là {}, nhận được {}",
    ),
    ("field `{}`: {}", "trường `{}`: {}"),
    // The fields of an event.
    (
        "`{}` has leading or trailing spaces; send the code without them",
        "`{}` có khoảng trắng ở đầu hoặc cuối; gửi mã không kèm khoảng trắng",
    ),
    (
        "`{}` is not in Unicode NFC (composed) form; send it composed, e.g. `{}`, so that one case is not split in two by its spelling",
        "`{}` không ở dạng Unicode dựng sẵn (NFC); gửi ở dạng dựng sẵn, ví dụ `{}`, để một hồ sơ không bị tách làm hai vì cách gõ",
    ),
    (
        "`{}` is not a field code: 1 to {} characters of a-z, 0-9 and _ (e.g. {})",
        "`{}` không phải mã lĩnh vực: 1 đến {} ký tự a-z, 0-9 và _ (ví dụ {})",
    ),
    ("`{}` is not a UUID (e.g. {})", "`{}` không phải mã UUID (ví dụ {})"),
    (
        "`{}` is not a known kind; known kinds: {}",
        "`{}` không phải loại sự kiện đã biết; các loại: {}",
    ),
    ("`{}` is not one of {}", "`{}` không thuộc các giá trị {}"),
    (
        "envelope version {} is not supported; this build reads version {}",
        "phiên bản {} của sự kiện chưa được hỗ trợ; bản này đọc phiên bản {}",
    ),
    ("must be 0 or more, found {}", "phải từ 0 trở lên, nhận được {}"),
    (
        "must be 1 to {} characters, found {}",
        "phải dài 1 đến {} ký tự, nhận được {}",
    ),
    (
        "must be printable, found invisible character U+{}",
        "phải gồm ký tự in được, có ký tự ẩn U+{}",
    ),
    ("must not be only spaces", "không được chỉ gồm khoảng trắng"),
    (
        "{} is before {}: not a plausible time for a case event",
        "{} sớm hơn {}: không phải thời điểm hợp lý của một sự kiện hồ sơ",
    ),
    (
        "{} is more than {} hours after the time it was received ({}): check the sender's clock",
        "{} muộn hơn {} giờ so với lúc hệ thống nhận ({}): kiểm tra đồng hồ của hệ thống gửi",
    ),
    (
        "{} is not after occurred_at {}",
        "{} không sau thời điểm xảy ra (occurred_at) {}",
    ),
    (
        "`{}` has no UTC offset; send e.g. {}",
        "`{}` thiếu múi giờ; gửi ví dụ {}",
    ),
    (
        "`{}` is not an RFC 3339 time with offset (e.g. {})",
        "`{}` không phải thời điểm RFC 3339 có múi giờ (ví dụ {})",
    ),
    (
        "`{}` differs from the kind `{}` of subject `{}`",
        "`{}` khác loại `{}` của chủ đề `{}`",
    ),
    (
        "`{}` differs from the unit `{}` of subject `{}`",
        "`{}` khác đơn vị `{}` của chủ đề `{}`",
    ),
    // The units (crates/domain).
    (
        "unit `{}` is not in the unit registry",
        "đơn vị `{}` không có trong danh mục đơn vị",
    ),
    (
        "unit {} begins on {} and did not exist on {}",
        "đơn vị {} thành lập ngày {}, chưa tồn tại ngày {}",
    ),
    (
        "unit {} ceased on {}; its successor is {}",
        "đơn vị {} đã thôi hoạt động từ sau ngày {}; đơn vị kế thừa là {}",
    ),
    (
        "unit {} ceased on {} and has no successor in the registry on {}",
        "đơn vị {} đã thôi hoạt động từ sau ngày {} và không có đơn vị kế thừa trong danh mục vào ngày {}",
    ),
    ("unit {} did not exist on {}", "đơn vị {} không tồn tại ngày {}"),
    // A case's record (crates/domain).
    (
        "event_id reused with different content: the {} of {} (stream sequence {}) counts under this id",
        "event_id đã dùng cho một sự kiện khác nội dung: sự kiện {} lúc {} (số {} trong nhật ký) được tính dưới mã này",
    ),
    (
        "event_id reused with different content",
        "event_id đã dùng cho một sự kiện khác nội dung",
    ),
    (
        "case {} already holds {} distinct events, the most one case may: this one is kept aside and counts nowhere (a sender flooding one case code? `kpictl case` shows its events)",
        "hồ sơ {} đã có {} sự kiện khác nhau, mức tối đa cho một hồ sơ: sự kiện này được để riêng, không tính vào đâu (một hệ thống gửi dồn vào một mã hồ sơ? `kpictl case` cho xem các sự kiện)",
    ),
    (
        "case {} already holds {} KiB of events, the most one case may: this one is kept aside and counts nowhere (a sender flooding one case code? `kpictl case` shows its events)",
        "hồ sơ {} đã có {} KiB sự kiện, mức tối đa cho một hồ sơ: sự kiện này được để riêng, không tính vào đâu (một hệ thống gửi dồn vào một mã hồ sơ? `kpictl case` cho xem các sự kiện)",
    ),
    // Lines, cells and bodies (crates/ingest).
    (
        "the line is not valid UTF-8 (first bad byte at offset {}); send events in UTF-8",
        "dòng không phải UTF-8 hợp lệ (byte lỗi đầu tiên ở vị trí {}); gửi sự kiện bằng UTF-8",
    ),
    (
        "the cell is not valid UTF-8 (first bad byte at offset {}); export the file in UTF-8",
        "ô không phải UTF-8 hợp lệ (byte lỗi đầu tiên ở vị trí {}); xuất tệp bằng UTF-8",
    ),
    ("not a valid CSV row: {}", "không phải dòng CSV hợp lệ: {}"),
    ("reading the file: {}", "lỗi khi đọc tệp: {}"),
    (
        "the body is not valid UTF-8 (first bad byte at offset {}): send JSON in UTF-8",
        "nội dung không phải UTF-8 hợp lệ (byte lỗi đầu tiên ở vị trí {}): gửi JSON bằng UTF-8",
    ),
    (
        "the body is not valid JSON: {}",
        "nội dung không phải JSON hợp lệ: {}",
    ),
    (
        "the body must be a {} or {} envelope (a JSON object with `data`) or a bare `data` array, found {}",
        "nội dung phải là gói {} hoặc {} (đối tượng JSON có `data`) hoặc một mảng `data`, nhận được {}",
    ),
    (
        "the envelope's madonvi {} differs from ?madonvi={}; send one unit code",
        "madonvi {} của gói khác ?madonvi={}; chỉ gửi một mã đơn vị",
    ),
    (
        "{} is not a known service; known services: {}",
        "{} không phải dịch vụ đã biết; các dịch vụ: {}",
    ),
    (
        "holds {} entries; a body holds at most {}: split it into several posts",
        "có {} mục; mỗi lần gửi tối đa {}: chia thành nhiều lần gửi",
    ),
    (
        "is required: a bare data array needs the sender's unit code as ?madonvi=<code> (e.g. ?madonvi=000.00.31.H31)",
        "bắt buộc: một mảng data trần cần mã đơn vị gửi, ?madonvi=<mã> (với kpictl import: --madonvi; ví dụ 000.00.31.H31)",
    ),
    (
        "is required: the amount in VND, e.g. 50000",
        "bắt buộc: số tiền (đồng), ví dụ 50000",
    ),
    (
        "is required: the supplement request has no new due time (NgayHenTraMoi, nor the dossier's NgayHenTra)",
        "bắt buộc: yêu cầu bổ sung không có hạn mới (không có NgayHenTraMoi, cũng không có NgayHenTra của hồ sơ)",
    ),
    (
        "is required: the array of dossiers or progress steps",
        "bắt buộc: mảng các hồ sơ hoặc các bước xử lý",
    ),
    (
        "is required: the sender's unit code (e.g. 000.00.31.H31), in the envelope or as ?madonvi=",
        "bắt buộc: mã đơn vị gửi (ví dụ 000.00.31.H31), trong gói hoặc ở ?madonvi= (với kpictl import: --madonvi)",
    ),
    (
        "is required: 1 (in person), 2 (online) or 3 (postal)",
        "bắt buộc: 1 (trực tiếp), 2 (trực tuyến) hoặc 3 (bưu chính)",
    ),
    (
        "is required: the dossier has no due time (NgayHenTra, or NgayHenTraTruoc of its first supplement request)",
        "bắt buộc: hồ sơ không có hạn trả (NgayHenTra, hoặc NgayHenTraTruoc của lần yêu cầu bổ sung đầu tiên)",
    ),
    (
        "is required: when the applicant withdrew (yyyyMMddHHmmss, Vietnam time)",
        "bắt buộc: thời điểm người nộp rút hồ sơ (yyyyMMddHHmmss, giờ Việt Nam)",
    ),
    (
        "is required: when the supplement was asked for (yyyyMMddHHmmss, Vietnam time)",
        "bắt buộc: thời điểm yêu cầu bổ sung (yyyyMMddHHmmss, giờ Việt Nam)",
    ),
    ("is required: {}", "bắt buộc: {}"),
    ("the field code (lĩnh vực)", "mã lĩnh vực"),
    ("the dossier code", "mã hồ sơ"),
    ("the national procedure code", "mã thủ tục hành chính quốc gia"),
    ("a value of {} characters", "một giá trị dài {} ký tự"),
    (
        "must be a string or a number, found {}",
        "phải là chuỗi hoặc số, nhận được {}",
    ),
    ("must be a string, found {}", "phải là chuỗi, nhận được {}"),
    ("must be an array, found {}", "phải là mảng, nhận được {}"),
    (
        "must be an object, found {}",
        "phải là đối tượng JSON, nhận được {}",
    ),
    (
        "each entry of data must be a JSON object, found {}",
        "mỗi mục của data phải là đối tượng JSON, nhận được {}",
    ),
    (
        "{} gives no field code (1 to {} characters of a-z, 0-9, _): map it with --field-map",
        "{} không cho mã lĩnh vực (1 đến {} ký tự a-z, 0-9, _): ánh xạ bằng --field-map",
    ),
    (
        "{} is not a channel: 1 (in person), 2 (online) or 3 (postal)",
        "{} không phải kênh nộp: 1 (trực tiếp), 2 (trực tuyến) hoặc 3 (bưu chính)",
    ),
    (
        "{} is not a date of the form yyyyMMddHHmmss, Vietnam time (e.g. 20250310091512)",
        "{} không phải ngày giờ dạng yyyyMMddHHmmss, giờ Việt Nam (ví dụ 20250310091512)",
    ),
    (
        "{} is the id of another supplement request of this dossier",
        "{} là mã của một yêu cầu bổ sung khác của hồ sơ này",
    ),
    (
        "{} is not a whole, non-negative amount of VND in digits only, without thousands separators (e.g. 50000)",
        "{} không phải số tiền nguyên, không âm, chỉ gồm chữ số, không có dấu phân cách hàng nghìn (ví dụ 50000)",
    ),
    (
        "madonvi {} is not the dvcqg_code of any unit in the registry",
        "madonvi {} không phải mã DVCQG của đơn vị nào trong danh mục",
    ),
    (
        "token '{}' is a {}'s: it may not send events (a token of role sender or operator may)",
        "token '{}' thuộc vai trò {}: không được gửi sự kiện (chỉ token vai trò sender hoặc operator được gửi)",
    ),
    (
        "unit {} is outside the scope of sender '{}'",
        "đơn vị {} nằm ngoài phạm vi của bên gửi '{}'",
    ),
    // serde_json's details of JSON that does not parse.
    (
        "expected value at line {} column {}",
        "thiếu giá trị ở dòng {} cột {}",
    ),
    (
        "EOF while parsing {} at line {} column {}",
        "hết dữ liệu khi đang đọc {} ở dòng {} cột {}",
    ),
    (
        "trailing characters at line {} column {}",
        "có ký tự thừa ở dòng {} cột {}",
    ),
    (
        "key must be a string at line {} column {}",
        "khóa phải là chuỗi ở dòng {} cột {}",
    ),
    (
        "expected `{}` at line {} column {}",
        "thiếu `{}` ở dòng {} cột {}",
    ),
    (
        "expected `,` or `}` at line {} column {}",
        "thiếu `,` hoặc `}` ở dòng {} cột {}",
    ),
    (
        "expected `,` or `]` at line {} column {}",
        "thiếu `,` hoặc `]` ở dòng {} cột {}",
    ),
    (
        "invalid escape at line {} column {}",
        "chuỗi thoát không hợp lệ ở dòng {} cột {}",
    ),
    (
        "control character (\\u0000-\\u001F) found while parsing a string at line {} column {}",
        "có ký tự điều khiển trong chuỗi ở dòng {} cột {}",
    ),
];

/// What JSON types and a few words are called, inside a rendered reason.
const WORDS: &[(&str, &str)] = &[
    ("a string", "chuỗi"),
    ("a whole number", "số nguyên"),
    ("a number", "số"),
    ("an object", "đối tượng"),
    ("an array", "mảng"),
    ("a boolean", "true hoặc false"),
    ("true or false", "true hoặc false"),
    ("a list", "danh sách"),
    ("a value", "một giá trị"),
];

/// Fits `text` to `pattern`: the values its `{}` stand for, or `None`.
fn values<'a>(pattern: &str, text: &'a str) -> Option<Vec<&'a str>> {
    let pieces: Vec<&str> = pattern.split("{}").collect();
    let mut rest = text.strip_prefix(pieces[0])?;
    if pieces.len() == 1 {
        return rest.is_empty().then(Vec::new);
    }
    let mut found = Vec::new();
    for (index, piece) in pieces.iter().enumerate().skip(1) {
        let (value, after) = if index == pieces.len() - 1 {
            (rest.strip_suffix(piece)?, "")
        } else if piece.is_empty() {
            return None;
        } else {
            let at = rest.find(piece)?;
            (&rest[..at], &rest[at + piece.len()..])
        };
        found.push(value);
        rest = after;
    }
    Some(found)
}

/// A value inside a rendered reason: a JSON type's name, or a reason of
/// its own (after `field …:`), rendered too.
fn value_vi(value: &str) -> String {
    if let Some((_, words)) = WORDS.iter().find(|(english, _)| *english == value) {
        return (*words).to_owned();
    }
    match render(value) {
        Some(rendered) => rendered,
        None => value.to_owned(),
    }
}

fn render(text: &str) -> Option<String> {
    PATTERNS.iter().find_map(|(english, vietnamese)| {
        let found = values(english, text)?;
        let mut out = String::new();
        let mut found = found.into_iter();
        for (index, piece) in vietnamese.split("{}").enumerate() {
            if index > 0 {
                out.push_str(&value_vi(found.next().unwrap_or_default()));
            }
            out.push_str(piece);
        }
        Some(out)
    })
}

/// `reason` in Vietnamese; as it is when its pattern is not known.
pub fn reason_vi(reason: &str) -> String {
    render(reason).unwrap_or_else(|| reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_domain::UnitRegistry;
    use kpi_events::{parse_event, UnitDirectory, Validation};

    /// English words a rendered reason must not keep (codes, field names
    /// and examples aside).
    const ENGLISH: &[&str] = &[
        "the",
        "is",
        "not",
        "must",
        "be",
        "found",
        "field",
        "required",
        "unit",
        "of",
        "and",
        "send",
        "with",
        "registry",
        "ceased",
        "successor",
        "valid",
        "line",
        "column",
        "expected",
        "known",
        "kinds",
        "before",
        "after",
        "time",
        "case",
        "characters",
        "or",
        "has",
    ];

    fn english_in(text: &str) -> Vec<String> {
        // Backquoted codes and examples are the sender's own text.
        let mut plain = String::new();
        for (index, part) in text.split('`').enumerate() {
            if index % 2 == 0 {
                plain.push_str(part);
            }
        }
        // Dotted and underscored words are codes (`case.received`).
        plain
            .split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '_'))
            .map(|word| word.trim_end_matches('.'))
            .filter(|word| !word.contains(['.', '_']) && ENGLISH.contains(word))
            .map(str::to_owned)
            .collect()
    }

    /// What is wrong with the rendering of `reason`, if anything.
    fn problem(reason: &str) -> Option<String> {
        let vietnamese = reason_vi(reason);
        if vietnamese == reason {
            return Some(format!("no pattern for: {reason}"));
        }
        let english = english_in(&vietnamese);
        (!english.is_empty()).then(|| format!("{english:?} left in: {vietnamese} (from {reason})"))
    }

    fn rendered(reasons: &[String]) {
        let problems: Vec<String> = reasons
            .iter()
            .filter_map(|reason| problem(reason))
            .collect();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    const UNITS: &str = r#"{"units": [
        {"id": "P", "name": "Tỉnh", "level": "province"},
        {"id": "A", "name": "Xã A", "level": "commune", "parent": "P", "valid_to": "2025-06-30"},
        {"id": "W", "name": "Phường W", "level": "commune", "parent": "P", "valid_from": "2025-07-01", "successor_of": ["A"]}
    ]}"#;

    /// Every refusal validation makes of a bad event, rendered.
    #[test]
    fn every_refusal_of_a_bad_event_reads_in_vietnamese() {
        let units = UnitRegistry::from_json(UNITS.as_bytes()).unwrap();
        let good = serde_json::json!({
            "event_id": "3f2b8c1e-5d4a-4c3b-9a8e-1b2c3d4e5f60", "kind": "case.received",
            "case_id": "000.00.31.H31-250310-0007", "unit_id": "P",
            "occurred_at": "2025-03-10T09:15:00+07:00",
            "data": {"procedure_code": "1.001", "field": "ho_tich", "channel": "online",
                     "due_at": "2025-03-20T17:00:00+07:00"}});
        let with = |path: &[&str], value: serde_json::Value| {
            let mut event = good.clone();
            let mut at = &mut event;
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            at[path[path.len() - 1]] = value;
            event.to_string().into_bytes()
        };
        let without = |key: &str| {
            let mut event = good.clone();
            event.as_object_mut().unwrap().remove(key);
            event.to_string().into_bytes()
        };
        let bad: Vec<Vec<u8>> = vec![
            b"{\"event_id\": ".to_vec(),
            b"[1, 2]".to_vec(),
            b"{\"a\": 1} x".to_vec(),
            vec![b' '; 70_000],
            without("case_id"),
            with(&["case_id"], serde_json::json!(17)),
            with(&["case_id"], serde_json::json!(" 000.1 ")),
            with(&["case_id"], serde_json::json!("   ")),
            with(&["case_id"], serde_json::json!("a\u{200b}b")),
            with(&["case_id"], serde_json::json!("x".repeat(300))),
            with(&["case_id"], serde_json::json!("Nguye\u{0302}\u{0303}n-1")),
            with(&["event_id"], serde_json::json!("not-a-uuid")),
            with(&["kind"], serde_json::json!("case.opened")),
            with(&["unit_id"], serde_json::json!("Q")),
            with(&["occurred_at"], serde_json::json!("2025-03-10T09:15:00")),
            with(&["occurred_at"], serde_json::json!("10/03/2025")),
            with(
                &["occurred_at"],
                serde_json::json!("1990-01-01T00:00:00+07:00"),
            ),
            with(
                &["occurred_at"],
                serde_json::json!("2099-01-01T00:00:00+07:00"),
            ),
            with(
                &["data", "due_at"],
                serde_json::json!("2025-03-01T00:00:00+07:00"),
            ),
            with(&["data", "field"], serde_json::json!("Hộ tịch")),
            with(&["data", "channel"], serde_json::json!("fax")),
            with(&["data", "dossier_digitized"], serde_json::json!("yes")),
            with(&["schema"], serde_json::json!(9)),
        ];
        let mut reasons: Vec<String> = bad
            .iter()
            .map(|event| {
                parse_event(event, &Validation::now(&units))
                    .expect_err(&String::from_utf8_lossy(&event[..event.len().min(200)]))
                    .to_string()
            })
            .collect();
        // The unit checks on their own.
        for (unit, day) in [
            ("Q", "2025-08-01"),
            ("A", "2025-08-01"),
            ("W", "2025-01-01"),
        ] {
            let day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
            reasons.push(units.check_unit(unit, day).unwrap_err());
        }
        rendered(&reasons);
    }

    /// Every refusal of the DVCQG adapter and of a CSV file, rendered.
    #[test]
    fn every_refusal_of_a_dvcqg_payload_or_a_csv_row_reads_in_vietnamese() {
        let units = UnitRegistry::from_json(
            include_bytes!("../../../deploy/units/seed-communes.json").as_slice(),
        )
        .unwrap();
        let snapshot: serde_json::Value = serde_json::from_slice(include_bytes!(
            "../../../deploy/examples/dvcqg-snapshot.json"
        ))
        .unwrap();
        let dossier = snapshot["data"][0].clone();
        let changed = |member: &str, value: serde_json::Value| {
            let mut dossier = dossier.clone();
            dossier[member] = value;
            dossier
        };
        let envelope = |data: Vec<serde_json::Value>| {
            let mut body = snapshot.clone();
            body["data"] = serde_json::Value::Array(data);
            body.to_string().into_bytes()
        };
        let field_map = kpi_ingest::dvcqg::FieldMap::default();
        let validation = Validation::now(&units);
        let convert = |body: &[u8], madonvi: Option<&str>| {
            kpi_ingest::dvcqg::convert(body, madonvi, &units, &field_map, &validation)
        };
        let mut reasons = Vec::new();
        // Bodies refused whole.
        for (body, madonvi) in [
            (b"{\"data\": ".to_vec(), None),
            (b"[{\"MaHoSo\": \"x\"}]".to_vec(), None),
            (b"17".to_vec(), None),
            (envelope(vec![]).replace_service("XoaHoSo"), None),
            (envelope(vec![dossier.clone()]), Some("000.00.31.H32")),
            (
                envelope(vec![dossier.clone()]).replace_madonvi("000.00.31.H99"),
                None,
            ),
        ] {
            match convert(&body, madonvi) {
                Err(error) => reasons.push(error.reason),
                // An unknown madonvi refuses every dossier, naming it.
                Ok(dossiers) => reasons.extend(
                    dossiers
                        .into_iter()
                        .map(|dossier| dossier.outcome.expect_err("refused").reason),
                ),
            }
        }
        // Dossiers refused one by one.
        let refused = envelope(vec![
            changed("KenhThucHien", serde_json::json!("9")),
            changed("NgayTiepNhan", serde_json::json!("14/03/2025")),
            changed("MaLinhVuc", serde_json::json!("")),
            changed("MaHoSo", serde_json::json!([17])),
            serde_json::json!("not an object"),
        ]);
        for dossier in convert(&refused, None).unwrap() {
            match dossier.outcome {
                Err(error) => reasons.push(error.reason),
                Ok(_) => panic!("dossier {} was accepted", dossier.index),
            }
        }
        // A CSV row with a cell that is not UTF-8.
        let csv = b"event_id,kind,case_id,unit_id,occurred_at,reason\n\
            3f2b8c1e-5d4a-4c3b-9a8e-1b2c3d4e5f60,case.withdrawn,X-1,5101234,2025-09-10T09:00:00+07:00,\xff\n";
        let mut rows = kpi_ingest::csv::CsvEvents::new(csv.as_slice()).unwrap();
        let (_, row) = rows.next_event().unwrap();
        reasons.push(row.expect_err("not UTF-8").reason);
        rendered(&reasons);
    }

    /// A body's `service` or `madonvi` replaced, for the refusals of a
    /// whole body.
    trait Replaced {
        fn replace_service(self, service: &str) -> Vec<u8>;
        fn replace_madonvi(self, madonvi: &str) -> Vec<u8>;
    }

    impl Replaced for Vec<u8> {
        fn replace_service(self, service: &str) -> Vec<u8> {
            let mut body: serde_json::Value = serde_json::from_slice(&self).unwrap();
            body["service"] = service.into();
            body.to_string().into_bytes()
        }
        fn replace_madonvi(self, madonvi: &str) -> Vec<u8> {
            let mut body: serde_json::Value = serde_json::from_slice(&self).unwrap();
            body["madonvi"] = madonvi.into();
            body.to_string().into_bytes()
        }
    }

    #[test]
    fn kept_aside_reasons_read_in_vietnamese() {
        rendered(&[
            kpi_domain::CONFLICT_REASON.to_owned(),
            "event_id reused with different content: the case.resolved of \
             2025-03-10T09:15:00+07:00 (stream sequence 12) counts under this id"
                .to_owned(),
        ]);
    }

    #[test]
    fn an_unknown_reason_is_shown_as_it_is() {
        assert_eq!(reason_vi("something new"), "something new");
        assert_eq!(
            reason_vi("field `data.x`: something new"),
            "trường `data.x`: something new"
        );
    }
}
