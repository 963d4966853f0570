//! The 2025 reform end to end (CONTRACT §1.1): `tests/data/reform` through
//! `kpictl import`, a real nats-server and the projector; every figure of
//! the hand-computed table from the gRPC API; the tree of each day from
//! `kpictl units`.

use std::time::Duration;

use kpi_api::pb::{self, GetCaseFlowRequest, GetRatesRequest};
use kpi_bus::Bus;
use kpi_e2e::{kpictl, Projector};
use kpi_testkit::reform;
use local_nats::LocalNats;

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/reform")
        .join(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reform_scenario_gives_the_hand_computed_figures_through_the_api() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = data("units.json");
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);

    let output = kpictl(&[
        "import",
        data("events.ndjson").to_str().unwrap(),
        "--json",
        "--units",
        units.to_str().unwrap(),
        "--nats-url",
        &nats.url(),
    ]);
    assert_eq!(output.status.code(), Some(1), "one line is rejected");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["accepted"], 21);
    assert_eq!(report["rejected"][0]["line"], 22);
    assert_eq!(report["rejected"][0]["field"], "unit_id");
    let reason = report["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains(reform::REJECTED_REASON), "{reason}");

    let bus = Bus::connect(&nats.url(), "reform-test").await.unwrap();
    let last = bus.last_sequence().await.unwrap();
    projector.wait_for("P", last, Duration::from_secs(60)).await;
    let mut client = projector.client().await;
    let mut differences = Vec::new();
    for period in reform::PERIODS {
        for unit in reform::UNITS {
            let reply = client
                .get_rates(GetRatesRequest {
                    unit_id: unit.into(),
                    period: period.into(),
                    min_stream_sequence: None,
                })
                .await
                .unwrap()
                .into_inner();
            differences.extend(reform::differences(
                unit,
                period,
                |name| reply.counts.get(name).copied().unwrap_or(0),
                |kpi| {
                    let rate = reply.rates.iter().find(|r| r.kpi == kpi).unwrap();
                    (rate.numerator, rate.denominator)
                },
            ));
            let live = reply.live.unwrap();
            let got = (live.open, live.overdue_open, live.overdue_without_apology);
            if got != reform::live(unit) {
                differences.push(format!(
                    "{unit} live {got:?}, want {:?}",
                    reform::live(unit)
                ));
            }
        }
    }
    assert_eq!(differences, Vec::<String>::new());

    // The case-flow report groups by the tree of the period's last day:
    // the province's R2025 table has a row per commune of 14 December
    // 2025, the ward W carrying what B and C received before it existed
    // (CONTRACT §9).
    let report = client
        .get_case_flow(GetCaseFlowRequest {
            unit_id: "P".into(),
            period: "R2025".into(),
            group_by: pb::GroupBy::Unit as i32,
            min_stream_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(&str, &str, [u64; 6])> = report
        .rows
        .iter()
        .map(|row| {
            let f = row.flow.unwrap();
            let figures = [
                f.to_handle,
                f.resolved_early,
                f.resolved_on_time,
                f.resolved_late,
                f.pending_overdue,
                f.late_total,
            ];
            (row.key.as_str(), row.name.as_str(), figures)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("A", "Xã An Khánh", [3, 2, 0, 1, 0, 1]),
            ("W", "Phường Quyết Thắng", [6, 1, 3, 1, 1, 2]),
        ]
    );
    assert_eq!(report.total.unwrap().to_handle, 9);
    // The district ceased on 30 June: no report for the third quarter.
    let status = client
        .get_case_flow(GetCaseFlowRequest {
            unit_id: "D".into(),
            period: "2025-Q3".into(),
            group_by: pb::GroupBy::Unit as i32,
            min_stream_sequence: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("ceased on 2025-06-30"),
        "{}",
        status.message()
    );

    // A unit that did not exist for the whole period: its table says so
    // and names who carries its cases (none for one that did).
    let notice = |unit: &str, period: &str| {
        kpi_e2e::kpictl_printed(&[
            "rates",
            "--unit",
            unit,
            "--period",
            period,
            "--addr",
            &projector.addr,
        ])
        .lines()
        .filter(|line| line.starts_with("Lưu ý: "))
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let ceased = notice("B", "2025-Q4");
    assert_eq!(ceased.len(), 1, "{ceased:?}");
    assert!(
        ceased[0].contains("không tồn tại trong kỳ 2025-Q4"),
        "{ceased:?}"
    );
    assert!(
        ceased[0].contains("nay thuộc Phường Quyết Thắng (W)"),
        "{ceased:?}"
    );
    let ceasing = notice("B", "2025");
    assert!(
        ceasing[0].contains("không còn từ sau ngày 30/06/2025"),
        "{ceasing:?}"
    );
    assert!(
        ceasing[0].contains("nay thuộc Phường Quyết Thắng (W)"),
        "{ceasing:?}"
    );
    let formed = notice("W", "2025");
    assert!(
        formed[0].contains("được thành lập ngày 01/07/2025 từ B, C"),
        "{formed:?}"
    );
    assert_eq!(notice("A", "2025"), Vec::<String>::new());
    assert_eq!(notice("W", "2025-Q4"), Vec::<String>::new());

    // The tree of a day, before and after the reform.
    let tree = |as_of: &str| {
        let output = kpictl(&["units", "--as-of", as_of, "--addr", &projector.addr]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let before = tree("2025-06-30");
    assert!(
        before.contains(
            "\n  D Huyện Đồng Hỷ (thử nghiệm) [huyện] (đến 30/06/2025)\n    A Xã An Khánh"
        ),
        "{before}"
    );
    assert!(!before.contains("Phường Quyết Thắng"), "{before}");
    let after = tree("2025-07-01");
    assert!(
        after.contains(
            "\n  A Xã An Khánh [xã]\n  W Phường Quyết Thắng [xã] (từ 01/07/2025) (kế thừa B, C)"
        ),
        "{after}"
    );
    assert!(!after.contains("Huyện Đồng Hỷ"), "{after}");
}
