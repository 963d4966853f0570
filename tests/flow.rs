//! The case-flow report (Biểu 06, CONTRACT §9) end to end: the example
//! through a real nats-server and projector, `GetCaseFlow` and `ListLate`
//! against expected.json, the filings `kpictl flow --out` writes read back
//! (the .xlsx with calamine), a reader outside its scope refused, and the
//! report moving as events arrive.

use calamine::{Data, DataType, Reader, Xlsx};
use kpi_api::pb::{self, GetCaseFlowRequest, ListLateRequest};
use kpi_bus::Bus;
use kpi_e2e::{example_messages, headless_chromium, kpictl, publish_all, tokens_file, Projector};
use local_nats::LocalNats;
use tonic::metadata::MetadataValue;

const PROVINCE_READER: &str = "kpi_province-46-reader-token";
const COMMUNE_READER: &str = "kpi_commune-46-0-1-reader-token";
const OPERATOR: &str = "kpi_operator-token-for-the-flow-test";

fn group_of(name: &str) -> pb::GroupBy {
    match name {
        "unit" => pb::GroupBy::Unit,
        "field" => pb::GroupBy::Field,
        _ => pb::GroupBy::Procedure,
    }
}

fn columns(flow: Option<pb::CaseFlow>) -> kpi_testkit::FlowColumns {
    let flow = flow.unwrap_or_default();
    let values = [
        flow.carried_over,
        flow.received_online,
        flow.received_in_person,
        flow.received_postal,
        flow.to_handle,
        flow.resolved_early,
        flow.resolved_on_time,
        flow.resolved_late,
        flow.resolved,
        flow.resolved_rejected,
        flow.withdrawn,
        flow.pending_not_due,
        flow.pending_overdue,
        flow.pending,
        flow.late_total,
        flow.late_with_apology,
    ];
    kpi_domain::CASE_FLOW_COLUMNS
        .iter()
        .zip(values)
        .map(|(name, value)| ((*name).to_owned(), value))
        .collect()
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

fn flow_request(unit: &str, period: &str, group: pb::GroupBy) -> GetCaseFlowRequest {
    GetCaseFlowRequest {
        unit_id: unit.into(),
        period: period.into(),
        group_by: group as i32,
        min_stream_sequence: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_reports_its_case_flow_and_late_cases_and_files_them() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = kpi_testkit::example_path("units.json");
    let tokens = dir.path().join("tokens.json");
    std::fs::write(
        &tokens,
        tokens_file(&[
            ("Sở Nội vụ tỉnh 46", PROVINCE_READER, "P46", "reader"),
            ("UBND xã 46-0-1", COMMUNE_READER, "C46-0-1", "reader"),
            ("Vận hành", OPERATOR, "*", "operator"),
        ]),
    )
    .unwrap();
    let catalogue =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/catalogue.json");
    let mut projector = Projector::start(
        &nats.url(),
        &units,
        &dir.path().join("views"),
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--catalogue",
            catalogue.to_str().unwrap(),
        ],
    );
    let bus = Bus::connect(&nats.url(), "flow-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, example_messages()).await;
    let last = bus.last_sequence().await.unwrap();
    let mut client = projector.client().await;

    // Every expected table, exactly; the first call waits for the fold.
    let expected = kpi_testkit::expected();
    let mut differences = Vec::new();
    for query in &expected.case_flow {
        let mut request = flow_request(&query.unit_id, &query.period, group_of(&query.group_by));
        request.min_stream_sequence = Some(last);
        let reply = client
            .get_case_flow(with_token(request, OPERATOR))
            .await
            .unwrap_or_else(|status| panic!("{} {}: {status}", query.unit_id, query.period))
            .into_inner();
        assert_eq!(reply.stream_sequence, last);
        let rows: Vec<(String, kpi_testkit::FlowColumns)> = reply
            .rows
            .iter()
            .map(|row| (row.key.clone(), columns(row.flow)))
            .collect();
        differences.extend(kpi_testkit::flow_differences(
            query,
            &reply.as_of,
            &rows,
            &columns(reply.total),
        ));
        if query.group_by == "field" {
            let land = reply.rows.iter().find(|row| row.key == "dat_dai").unwrap();
            assert_eq!(land.name, "Đất đai", "named from --catalogue");
        }
    }
    for query in &expected.late {
        let reply = client
            .list_late(with_token(
                ListLateRequest {
                    unit_id: query.unit_id.clone(),
                    period: query.period.clone(),
                    min_stream_sequence: Some(last),
                },
                OPERATOR,
            ))
            .await
            .unwrap()
            .into_inner();
        let due: Vec<&String> = reply.cases.iter().map(|case| &case.due_at).collect();
        let mut sorted = due.clone();
        sorted.sort_by_key(|text| chrono::DateTime::parse_from_rfc3339(text).unwrap());
        assert_eq!(due, sorted, "ordered by due time");
        differences.extend(kpi_testkit::late_differences(
            query,
            reply
                .cases
                .iter()
                .map(|case| (case.case_id.clone(), case.days_late)),
        ));
        // Letters read back from the log carry their number.
        for case in &reply.cases {
            for letter in &case.apologies {
                assert!(
                    !letter.letter_ref.is_empty(),
                    "{}: {letter:?}",
                    case.case_id
                );
            }
        }
    }
    assert_eq!(differences, Vec::<String>::new());

    // The filings.
    let api = [
        "--addr",
        projector.addr.as_str(),
        "--token",
        PROVINCE_READER,
    ];
    let reply = client
        .get_case_flow(with_token(
            flow_request("P46", "2025-Q1", pb::GroupBy::Unit),
            PROVINCE_READER,
        ))
        .await
        .unwrap()
        .into_inner();
    let xlsx = dir.path().join("bieu06.xlsx");
    let mut args = vec![
        "flow",
        "--unit",
        "P46",
        "--period",
        "2025-Q1",
        "--out",
        xlsx.to_str().unwrap(),
    ];
    args.extend(api);
    let output = kpictl(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut workbook: Xlsx<_> = calamine::open_workbook(&xlsx).unwrap();
    let sheet = workbook.worksheet_range("Biểu 06").unwrap();
    let text: Vec<String> = sheet
        .rows()
        .flat_map(|row| {
            row.iter()
                .filter_map(|cell| cell.get_string().map(str::to_owned))
        })
        .collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("TÌNH HÌNH, KẾT QUẢ GIẢI QUYẾT TTHC")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t == "Kỳ báo cáo: 2025-Q1 (Từ ngày 01/01/2025 đến ngày 31/03/2025)"),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t == "(3) = (4) + (5) + (6)"),
        "{text:?}"
    );
    let merged = workbook.worksheet_merge_cells("Biểu 06").unwrap().unwrap();
    assert!(
        merged
            .iter()
            .any(|cell| cell.start.1 == 2 && cell.end.1 == 5),
        "the header 'Số hồ sơ nhận giải quyết' spans columns 3 to 6: {merged:?}"
    );
    // Data rows: after the column numbers row, one per reply row, then the total.
    let numbers_row = sheet
        .rows()
        .position(|row| row.first().and_then(Data::get_string) == Some("(1)"))
        .unwrap();
    let number_rows: Vec<Vec<f64>> = sheet
        .rows()
        .skip(numbers_row + 1)
        .map(|row| {
            row[2..16]
                .iter()
                .map(|cell| cell.as_f64().expect("a number"))
                .collect()
        })
        .collect();
    let form = |flow: pb::CaseFlow| -> Vec<f64> {
        [
            flow.to_handle,
            flow.received_online,
            flow.received_in_person + flow.received_postal,
            flow.carried_over,
            flow.resolved,
            flow.resolved_early,
            flow.resolved_on_time,
            flow.resolved_late,
            flow.pending,
            flow.pending_not_due,
            flow.pending_overdue,
            flow.withdrawn,
            flow.resolved_rejected,
            flow.late_with_apology,
        ]
        .map(|value| value as f64)
        .to_vec()
    };
    let mut wanted: Vec<Vec<f64>> = reply
        .rows
        .iter()
        .map(|row| form(row.flow.unwrap()))
        .collect();
    wanted.push(form(reply.total.unwrap()));
    assert_eq!(number_rows, wanted);

    let html = dir.path().join("bieu06.html");
    let csv = dir.path().join("bieu06.csv");
    for path in [&html, &csv] {
        let mut args = vec![
            "flow",
            "--unit",
            "P46",
            "--period",
            "2025-Q1",
            "--out",
            path.to_str().unwrap(),
        ];
        args.extend(api);
        let output = kpictl(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("rowspan=\"3\"") && page.contains("Tổng số"),
        "{page}"
    );
    // Printable: headless Chromium makes a PDF of it.
    let pdf = dir.path().join("bieu06.pdf");
    let printed = headless_chromium(&dir.path().join("chromium"))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert!(std::fs::read(&pdf).unwrap().starts_with(b"%PDF"));
    let csv_bytes = std::fs::read(&csv).unwrap();
    assert!(csv_bytes.starts_with("\u{feff}key,name,carried_over".as_bytes()));

    // JSON for scripts, the late list for publishing.
    let mut args = vec![
        "flow", "--unit", "P46", "--period", "2025-Q1", "--json", "--by", "field",
    ];
    args.extend(api);
    let output = kpictl(&args);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["total"]["to_handle"], 77);
    let mut args = vec!["late", "--unit", "P46", "--period", "2025-Q1"];
    args.extend(api);
    let output = kpictl(&args);
    let listed = String::from_utf8(output.stdout).unwrap();
    assert!(listed.contains("23 hồ sơ trễ hạn"), "{listed}");

    // A commune's reader asking for the province: PERMISSION_DENIED.
    let output = kpictl(&[
        "flow",
        "--unit",
        "P46",
        "--period",
        "2025-Q1",
        "--addr",
        &projector.addr,
        "--token",
        COMMUNE_READER,
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("C46-0-1") && stderr.contains("P46"),
        "{stderr}"
    );
    let status = client
        .get_case_flow(with_token(
            flow_request("P46", "2025-Q1", pb::GroupBy::Unit),
            COMMUNE_READER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // Live: a late event revises the past quarter, and a resolution moves
    // a case from pending to resolved in the next answer.
    let received = |case: &str, at: &str, due: &str| {
        let line = format!(
            r#"{{"event_id":"{}","kind":"case.received","case_id":"{case}","unit_id":"C46-0-1","occurred_at":"{at}","data":{{"procedure_code":"1.001","field":"ho_tich","channel":"online","due_at":"{due}"}}}}"#,
            uuid::Uuid::new_v4()
        );
        ("cases.C46-0-1.case.received".to_owned(), line.into_bytes())
    };
    let before = reply.total.unwrap();
    publish_all(
        &bus,
        [received(
            "LATE-ARRIVAL",
            "2025-02-03T09:00:00+07:00",
            "2025-02-10T17:00:00+07:00",
        )],
    )
    .await;
    let mut request = flow_request("P46", "2025-Q1", pb::GroupBy::Unit);
    request.min_stream_sequence = Some(bus.last_sequence().await.unwrap());
    let after = client
        .get_case_flow(with_token(request, PROVINCE_READER))
        .await
        .unwrap()
        .into_inner()
        .total
        .unwrap();
    assert_eq!(after.received_online, before.received_online + 1);
    assert_eq!(
        after.pending_overdue,
        before.pending_overdue + 1,
        "open and overdue at E"
    );

    let now = chrono::Utc::now().with_timezone(&kpi_domain::vietnam());
    let earlier = (now - chrono::Duration::hours(2)).to_rfc3339();
    let due = (now + chrono::Duration::days(5)).to_rfc3339();
    let month = now.format("%Y-%m").to_string();
    publish_all(&bus, [received("TODAY", &earlier, &due)]).await;
    let mut request = flow_request("C46-0-1", &month, pb::GroupBy::Unit);
    request.min_stream_sequence = Some(bus.last_sequence().await.unwrap());
    let running = client
        .get_case_flow(with_token(request.clone(), COMMUNE_READER))
        .await
        .unwrap()
        .into_inner();
    let open = running.total.unwrap();
    assert_eq!((open.pending_not_due, open.resolved), (1, 0));
    let resolved = format!(
        r#"{{"event_id":"{}","kind":"case.resolved","case_id":"TODAY","unit_id":"C46-0-1","occurred_at":"{}","data":{{"result":"approved","result_electronic":true,"result_digitized":true}}}}"#,
        uuid::Uuid::new_v4(),
        (now - chrono::Duration::hours(1)).to_rfc3339()
    );
    publish_all(
        &bus,
        [(
            "cases.C46-0-1.case.resolved".to_owned(),
            resolved.into_bytes(),
        )],
    )
    .await;
    request.min_stream_sequence = Some(bus.last_sequence().await.unwrap());
    let next = client
        .get_case_flow(with_token(request, COMMUNE_READER))
        .await
        .unwrap()
        .into_inner();
    let closed = next.total.unwrap();
    assert_eq!(
        (
            closed.pending_not_due,
            closed.resolved_early,
            closed.resolved
        ),
        (0, 1, 1)
    );
    assert_eq!(closed.pending, open.pending - 1);
    assert!(
        chrono::DateTime::parse_from_rfc3339(&next.as_of).unwrap()
            >= chrono::DateTime::parse_from_rfc3339(&running.as_of).unwrap(),
        "as_of is now while the period runs"
    );
    projector.terminate();
}
