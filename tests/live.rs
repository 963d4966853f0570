//! Live views and published reports (CONTRACT §3, §5, §6; SCORING-766.md):
//! WatchRates, RankUnits, ListAtRisk and GetScores against figures worked
//! out by hand, the monthly report rendered by headless Chromium, and next
//! year's targets.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kpi_api::pb::{
    GetRatesRequest, GetScoresRequest, ListAtRiskRequest, RankUnitsRequest, RatesReply,
};
use kpi_bus::Bus;
use kpi_e2e::{
    example_messages, headless_chromium, kpictl, publish_all, simulated_messages, Projector,
};
use kpi_testkit::example_path;
use local_nats::LocalNats;
use serde_json::{json, Value};

const FOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// nats-server and a projector with the example scenario folded.
async fn example_stack() -> (LocalNats, Projector, Bus, tempfile::TempDir) {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let catalogue =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/catalogue.json");
    let mut projector = Projector::start(
        &nats.url(),
        &example_path("units.json"),
        &dir.path().join("views"),
        &["--catalogue", catalogue.to_str().unwrap()],
    );
    let bus = Bus::connect(&nats.url(), "live-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, example_messages()).await;
    let last = bus.last_sequence().await.unwrap();
    projector.wait_for("P46", last, FOLD_TIMEOUT).await;
    (nats, projector, bus, dir)
}

fn rates_request(unit: &str, period: &str) -> GetRatesRequest {
    GetRatesRequest {
        unit_id: unit.into(),
        period: period.into(),
        min_stream_sequence: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rank_units_and_list_at_risk_match_the_scenario_worked_out_by_hand() {
    let (_nats, mut projector, _bus, _dir) = example_stack().await;
    let mut client = projector.client().await;

    // On-time resolutions in 2025, per commune of Thành phố Hải Phòng,
    // from the events by hand: C31_2 4/4, C31_0 9/10, C31_1 5/6, C31_3 4/5,
    // C31_4 5/7.
    let ranked = client
        .rank_units(RankUnitsRequest {
            parent_id: "P31".into(),
            period: "2025".into(),
            kpi: "on_time_rate".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let order: Vec<(u32, &str, u64, u64)> = ranked
        .units
        .iter()
        .map(|unit| {
            let rate = unit.rate.as_ref().unwrap();
            (
                unit.rank,
                unit.unit_id.as_str(),
                rate.numerator,
                rate.denominator,
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (1, "C31_2", 4, 4),
            (2, "C31_0", 9, 10),
            (3, "C31_1", 5, 6),
            (4, "C31_3", 4, 5),
            (5, "C31_4", 5, 7),
        ]
    );
    // Late resolutions: lower is better. D46-0 4/26, D46-2 5/29, D46-1 8/29.
    let ranked = client
        .rank_units(RankUnitsRequest {
            parent_id: "P46".into(),
            period: "2025".into(),
            kpi: "late_rate".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ranked.higher_is_better);
    let order: Vec<&str> = ranked.units.iter().map(|u| u.unit_id.as_str()).collect();
    assert_eq!(order, ["D46-0", "D46-2", "D46-1"]);
    let status = client
        .rank_units(RankUnitsRequest {
            parent_id: "P46".into(),
            period: "2025".into(),
            kpi: "speed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Open cases of Tỉnh Thừa Thiên Huế, by due time, all overdue now.
    let mut cases = Vec::new();
    let mut after = String::new();
    loop {
        let page = client
            .list_at_risk(ListAtRiskRequest {
                unit_id: "P46".into(),
                within_hours: 0,
                limit: 4,
                after,
            })
            .await
            .unwrap()
            .into_inner();
        cases.extend(page.cases);
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    let found: Vec<(&str, &str, &str, bool, bool)> = cases
        .iter()
        .map(|c| {
            (
                c.case_id.as_str(),
                c.unit_id.as_str(),
                c.due_at.as_str(),
                c.overdue,
                c.has_apology,
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                "000.00.29.H42-000017/7",
                "C46-1-1",
                "2025-01-25T07:47:00+07:00",
                true,
                false
            ),
            (
                "000.00.31.H31-250210-0901",
                "C46-0-1",
                "2025-02-14T17:00:00+07:00",
                true,
                false
            ),
            (
                "000.00.31.H31-250212-0902",
                "C46-0-1",
                "2025-02-20T17:00:00+07:00",
                true,
                false
            ),
            (
                "000.00.31.H31-250217-0903",
                "C46-0-2",
                "2025-02-24T14:00:00+07:00",
                true,
                false
            ),
            (
                "000.00.23.H42-000038/3",
                "C46-0-0",
                "2025-02-27T18:13:00+07:00",
                true,
                false
            ),
            (
                "000.00.26.H98-000065/5",
                "C46-0-2",
                "2025-02-28T23:50:00+07:00",
                true,
                false
            ),
            (
                "000.00.44.H56-000010/5",
                "C46-0-2",
                "2025-03-16T05:06:00+07:00",
                true,
                false
            ),
            (
                "000.00.43.H57-000037/3",
                "C46-1-1",
                "2025-03-23T17:54:00+07:00",
                true,
                false
            ),
            (
                "000.00.55.H88-000122/2",
                "C46-2-0",
                "2025-05-03T18:08:00+07:00",
                true,
                false
            ),
        ]
    );
    assert!(cases.iter().all(|c| c.days_overdue > 100));
    let output = kpictl(&[
        "at-risk",
        "--unit",
        "D46-0",
        "--within-hours",
        "48",
        "--json",
        "--addr",
        &projector.addr,
    ]);
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The six above under D46-0: 0901, 0902 (C46-0-1), 0903 (C46-0-2),
    // H42-000038/3 (C46-0-0) and the two of C46-0-2.
    assert_eq!(listed.as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_rates_answers_at_once_follows_a_late_rating_and_never_piles_up() {
    let (_nats, mut projector, bus, _dir) = example_stack().await;
    let mut client = projector.client().await;
    let started = Instant::now();
    let mut stream = client
        .watch_rates(rates_request("P46", "2025"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the first answer at once"
    );
    let rated = first.counts["rated"];

    // A rating dated in a past month of the watched period.
    let rating = json!({"event_id": "77777777-7777-4777-8777-777777777777", "kind": "case.rated",
        "case_id": "000.00.29.H42-000017/7", "unit_id": "C46-1-1",
        "occurred_at": "2025-02-10T09:00:00+07:00", "data": {"level": "satisfied"}});
    let published = Instant::now();
    publish_all(
        &bus,
        [(
            "cases.C46-1-1.case.rated".to_owned(),
            rating.to_string().into_bytes(),
        )],
    )
    .await;
    let update = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .expect("an update within 1 s")
        .unwrap()
        .unwrap();
    assert!(published.elapsed() < Duration::from_secs(1));
    assert_eq!(update.counts["rated"], rated + 1);

    // A watcher that stops reading while 50,000 events fold: the projector
    // keeps no backlog for it, and it then gets the latest figures.
    let mut slow = client
        .watch_rates(rates_request("P46", "2025"))
        .await
        .unwrap()
        .into_inner();
    slow.next().await.unwrap().unwrap();
    let units = kpi_domain::UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let events = simulated_messages(&units, 99, (300, 8.0), 50_000);
    let memory_before = projector.resident_kib();
    let pause = Instant::now();
    publish_all(&bus, events).await;
    let last = bus.last_sequence().await.unwrap();
    projector.wait_for("P46", last, FOLD_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(pause.elapsed())).await;
    let memory_after = projector.resident_kib();
    assert!(
        memory_after < memory_before + 64 * 1024,
        "memory grew from {memory_before} to {memory_after} KiB"
    );
    let mut answers = 0;
    let latest: RatesReply = loop {
        let answer = tokio::time::timeout(Duration::from_secs(5), slow.next())
            .await
            .expect("the watcher gets an answer")
            .unwrap()
            .unwrap();
        answers += 1;
        if answer.stream_sequence == last {
            break answer;
        }
    };
    // The pause lasted more than 10 s at up to 4 answers a second: an
    // unbounded buffer would hold 40 or more. What waits is only what the
    // HTTP/2 window took before the client stopped reading.
    assert!(
        answers <= 20,
        "no backlog: {answers} answers to reach the latest"
    );
    let direct = client
        .get_rates(rates_request("P46", "2025"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.counts, direct.counts);

    // min_stream_sequence: an answer waits for the views to reach it.
    let status = client
        .get_rates({
            let mut request = tonic::Request::new(GetRatesRequest {
                min_stream_sequence: Some(last + 1),
                ..rates_request("P46", "2025")
            });
            request.set_timeout(Duration::from_millis(300));
            request
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(
        status.message().contains(&last.to_string()),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kpictl_watch_redraws_a_past_period_when_it_is_revised_not_under_live_traffic() {
    let (_nats, projector, bus, _dir) = example_stack().await;
    let mut watch = std::process::Command::new(&kpi_e2e::binaries().kpictl)
        .args([
            "watch",
            "--unit",
            "P46",
            "--period",
            "2025-Q1",
            "--addr",
            &projector.addr,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kpictl watch");
    let received = |index: usize, day: &str| {
        let case = format!("000.00.29.H42-LIVE{index:03}");
        let event = json!({"event_id": format!("99999999-9999-4999-8999-{index:012}"),
            "kind": "case.received", "case_id": case, "unit_id": "C46-1-1",
            "occurred_at": format!("{day}T09:00:00+07:00"),
            "data": {"procedure_code": "1.001", "field": "ho_tich", "channel": "online",
                     "due_at": "2030-01-10T17:00:00+07:00"}});
        (
            "cases.C46-1-1.case.received".to_owned(),
            event.to_string().into_bytes(),
        )
    };
    // Live traffic of today for 4 s: the open cases move, 2025-Q1 does not.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(7 * 3600).unwrap())
        .date_naive()
        .to_string();
    for index in 0..16 {
        publish_all(&bus, [received(index, &today)]).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A late event of February 2025 revises the period: one more table.
    publish_all(&bus, [received(100, "2025-02-12")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = watch.kill();
    let output = watch.wait_with_output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    let tables = printed.matches("— kỳ 2025-Q1:").count();
    assert_eq!(
        tables, 2,
        "one table at once and one for the revision, none for the live traffic:\n{printed}"
    );
}

/// One commune's March and April 2025, written for the scores (see
/// `scores_match_the_components_worked_out_by_hand`).
fn scores_events() -> Vec<Value> {
    let mut events = Vec::new();
    let mut n = 0;
    let mut add = |kind: &str, case: &str, at: &str, data: Value| {
        n += 1;
        events.push(json!({"event_id": format!("00000000-0000-4000-8000-{n:012}"), "kind": kind,
            "case_id": case, "unit_id": "C", "occurred_at": format!("2025-{at}:00+07:00"), "data": data}));
    };
    let received = |due: &str, digitized: bool, reused: bool| {
        json!({"procedure_code": "1.1", "field": "ho_tich", "channel": "online",
               "due_at": format!("2025-{due}:00+07:00"), "dossier_digitized": digitized, "reused_data": reused})
    };
    let resolved = |electronic: bool| json!({"result": "approved", "result_electronic": electronic, "result_digitized": true});
    add(
        "case.received",
        "S1",
        "03-02T08:00",
        received("03-05T17:00", true, true),
    );
    add(
        "case.synced",
        "S1",
        "03-02T09:00",
        json!({"portal": "national"}),
    );
    add(
        "case.paid",
        "S1",
        "03-02T08:30",
        json!({"amount_vnd": 50000, "online": true}),
    );
    add("case.resolved", "S1", "03-04T10:00", resolved(true));
    add(
        "case.rated",
        "S1",
        "03-04T11:00",
        json!({"level": "satisfied"}),
    );
    add(
        "case.received",
        "S2",
        "03-03T08:00",
        received("03-06T17:00", true, true),
    );
    add(
        "case.paid",
        "S2",
        "03-03T08:30",
        json!({"amount_vnd": 20000, "online": false}),
    );
    add("case.resolved", "S2", "03-10T10:00", resolved(false));
    add(
        "case.rated",
        "S2",
        "03-10T11:00",
        json!({"level": "satisfied"}),
    );
    add(
        "case.received",
        "S3",
        "03-20T08:00",
        received("04-05T17:00", true, true),
    );
    add(
        "case.synced",
        "S3",
        "03-20T09:00",
        json!({"portal": "national"}),
    );
    add(
        "case.received",
        "S4",
        "03-10T08:00",
        received("03-20T17:00", false, true),
    );
    add(
        "case.received",
        "S5",
        "03-12T08:00",
        received("03-18T17:00", false, true),
    );
    add(
        "case.supplement_requested",
        "S5",
        "03-17T08:00",
        json!({"reason": "Bổ sung", "due_at": "2025-04-10T17:00:00+07:00"}),
    );
    add(
        "case.received",
        "S6",
        "02-20T08:00",
        received("02-25T17:00", false, false),
    );
    add(
        "case.synced",
        "S6",
        "02-20T09:00",
        json!({"portal": "national"}),
    );
    add("case.resolved", "S6", "03-01T10:00", resolved(true));
    add(
        "case.rated",
        "S6",
        "03-02T10:00",
        json!({"level": "unsatisfied"}),
    );
    add(
        "case.received",
        "S7",
        "02-10T08:00",
        received("02-15T17:00", false, false),
    );
    add(
        "case.synced",
        "S7",
        "02-10T09:00",
        json!({"portal": "national"}),
    );
    add("case.resolved", "S7", "02-14T10:00", resolved(true));
    add(
        "case.received",
        "S8",
        "02-25T08:00",
        received("03-03T17:00", false, false),
    );
    add("case.resolved", "S8", "04-02T10:00", resolved(true));
    add(
        "case.received",
        "W1",
        "03-05T08:00",
        received("03-10T17:00", false, false),
    );
    add(
        "case.withdrawn",
        "W1",
        "03-06T08:00",
        json!({"reason": "rút"}),
    );
    add(
        "feedback.received",
        "F1",
        "04-01T08:00",
        json!({"due_at": "2025-04-10T17:00:00+07:00"}),
    );
    add("feedback.resolved", "F1", "04-05T08:00", json!({}));
    add(
        "feedback.received",
        "F2",
        "04-20T08:00",
        json!({"due_at": "2025-05-10T17:00:00+07:00"}),
    );
    add(
        "feedback.received",
        "F3",
        "04-02T08:00",
        json!({"due_at": "2025-04-12T17:00:00+07:00"}),
    );
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn scores_match_the_components_worked_out_by_hand() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(
        &units,
        r#"{"units":[{"id":"P","name":"Tỉnh P","level":"province"},
            {"id":"C","name":"Xã C","level":"commune","parent":"P"}]}"#,
    )
    .unwrap();
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let bus = Bus::connect(&nats.url(), "scores-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    let events = scores_events();
    publish_all(
        &bus,
        events.iter().rev().map(|event| {
            let kind = event["kind"].as_str().unwrap();
            (format!("cases.C.{kind}"), event.to_string().into_bytes())
        }),
    )
    .await;
    let last = bus.last_sequence().await.unwrap();
    projector.wait_for("C", last, FOLD_TIMEOUT).await;
    let client = projector.client().await;
    let scores = |period: &str| {
        let mut client = client.clone();
        let period = period.to_owned();
        async move {
            client
                .get_scores(GetScoresRequest {
                    unit_id: "C".into(),
                    period,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };

    // March: resolved S1 (early), S2 and S6 (late); open at its end S3 and
    // S5 (within their due time, S5's moved by a supplement) and S4, S8
    // (past due); W1 withdrawn. Active: all but S7 (closed in February);
    // synced among them S1, S3, S6.
    let march = scores("2025-03").await;
    let component = |reply: &kpi_api::pb::ScoresReply, code: &str| {
        let c = reply
            .components
            .iter()
            .find(|c| c.code == code)
            .unwrap()
            .clone();
        (c.numerator, c.denominator, c.points)
    };
    assert_eq!(component(&march, "DOSSIER_SYNC"), (3, 8, Some(2.25)));
    assert_eq!(component(&march, "PROGRESS"), (3, 7, Some(8.57)));
    assert_eq!(component(&march, "ONLINE_PAYMENT"), (1, 2, Some(3.0)));
    assert_eq!(
        component(&march, "ORIGINAL_RESULT_AVAILABLE"),
        (2, 3, Some(4.0))
    );
    assert_eq!(
        component(&march, "SO_HOA_GIAY_TO_GIAI_QUYET"),
        (3, 6, Some(2.0))
    );
    assert_eq!(
        component(&march, "REUSED_DIGITIZED_DATA"),
        (5, 6, Some(2.0))
    );
    // No feedback at all: the portal gives the 6 points (d = 0).
    assert_eq!(
        component(&march, "PETITION_PROCESSING_ON_TIME"),
        (0, 0, Some(6.0))
    );
    // Only S1 was neither late nor rated unsatisfied.
    assert_eq!(
        component(&march, "DOSSIER_RECEIVING_SATISFACTION"),
        (1, 3, Some(2.22))
    );
    assert_eq!(component(&march, "FULL_ONLINE").2, None);
    assert_eq!((march.points, march.max_points), (30.04, 56.0));

    // April's feedback: F1 answered on time; F2 open within its due time,
    // F3 open past it.
    let april = scores("2025-04").await;
    assert_eq!(
        component(&april, "PETITION_PROCESSING_ON_TIME"),
        (2, 3, Some(4.0))
    );
    let output = kpictl(&[
        "scores",
        "--unit",
        "C",
        "--period",
        "2025-03",
        "--json",
        "--addr",
        &projector.addr,
    ]);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["points"], 30.04);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monthly_report_renders_in_chromium_with_every_unit_and_figure() {
    let (_nats, mut projector, _bus, dir) = example_stack().await;
    let report = dir.path().join("bao-cao.html");
    let output = kpictl(&[
        "report",
        "--unit",
        "P46",
        "--period",
        "2025-Q1",
        "--out",
        report.to_str().unwrap(),
        "--addr",
        &projector.addr,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let profile = dir.path().join("chromium-profile");
    let url = format!("file://{}", report.display());
    let dom = headless_chromium(&profile)
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let text = String::from_utf8_lossy(&dom.stdout);
    let screenshot = dir.path().join("bao-cao.png");
    let shot = headless_chromium(&profile)
        .arg(format!("--screenshot={}", screenshot.display()))
        .args(["--window-size=1240,1754", &url])
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "a screenshot was made"
    );

    // Every unit's name and figures, as GetRates gives them.
    let mut client = projector.client().await;
    let percent = |value: Option<f64>| {
        value.map_or("—".to_owned(), |p| format!("{p:.2}%").replace('.', ","))
    };
    for unit in ["P46", "D46-0", "D46-1", "D46-2"] {
        let reply = client
            .get_rates(rates_request(unit, "2025-Q1"))
            .await
            .unwrap()
            .into_inner();
        assert!(
            text.contains(&reply.unit_name),
            "{} missing",
            reply.unit_name
        );
        let on_time = reply
            .rates
            .iter()
            .find(|r| r.kpi == "on_time_rate")
            .unwrap();
        assert!(
            text.contains(&percent(on_time.percent)),
            "{unit} on time {}",
            percent(on_time.percent)
        );
        if unit == "P46" {
            for rate in &reply.rates {
                assert!(
                    text.contains(&format!("{} / {}", rate.numerator, rate.denominator)),
                    "{}",
                    rate.kpi
                );
            }
            assert!(text.contains(&format!(
                "<td class=\"n\">{}</td>",
                reply.counts["received"]
            )));
        }
    }
    assert!(text.contains("Quyết định số 766"));
    assert!(text.contains("<svg"));

    let csv = dir.path().join("bao-cao.csv");
    let output = kpictl(&[
        "report",
        "--unit",
        "P46",
        "--period",
        "2025-Q1",
        "--out",
        csv.to_str().unwrap(),
        "--format",
        "csv",
        "--addr",
        &projector.addr,
    ]);
    assert!(output.status.success());
    let csv = std::fs::read_to_string(csv).unwrap();
    assert!(csv.contains("rates,P46,Tỉnh Thừa Thiên Huế,2025-Q1,on_time_rate,52,67,"));
}

#[tokio::test(flavor = "multi_thread")]
async fn next_years_targets_follow_the_rule_and_load_as_a_targets_file() {
    let (nats, projector, _bus, dir) = example_stack().await;
    let out = dir.path().join("targets-2026.json");
    let output = kpictl(&[
        "targets",
        "--year",
        "2025",
        "--root",
        "P31",
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--addr",
        &projector.addr,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let target = |unit: &str, kpi: &str| {
        report["computation"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["unit_id"] == unit && row["kpi"] == kpi)
            .cloned()
            .unwrap()
    };
    // C31_2 resolved 4/4 on time in 2025: 100% + 10, capped at 100.
    let capped = target("C31_2", "on_time_rate");
    assert_eq!(
        (capped["result"].as_f64(), capped["target"].as_f64()),
        (Some(100.0), Some(100.0))
    );
    // C31_4: 71.43% is below the central 100: the central target.
    let below = target("C31_4", "on_time_rate");
    assert_eq!(below["target"].as_f64(), Some(100.0));
    assert!(below["rule"].as_str().unwrap().contains("central"));
    // Above the central target and below 90: result + 10, written with
    // two decimals as people write targets.
    for row in report["computation"].as_array().unwrap() {
        let (result, central, target) = (
            row["result"].as_f64(),
            row["central"].as_f64().unwrap(),
            row["target"].as_f64().unwrap(),
        );
        let expected = match result {
            Some(result) if result >= central => {
                ((result + 10.0).min(100.0) * 100.0).round() / 100.0
            }
            _ => central,
        };
        assert!((target - expected).abs() < 1e-9, "{row}");
    }
    // The file is a targets file the projector takes.
    projector.terminate();
    let mut again = Projector::start(
        &nats.url(),
        &example_path("units.json"),
        &dir.path().join("views"),
        &["--targets", out.to_str().unwrap()],
    );
    let reply = again
        .client()
        .await
        .get_rates(rates_request("C31_2", "2026"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply
        .rates
        .iter()
        .all(|rate| rate.kpi == "late_rate" || rate.target_percent.is_some()));
}

/// The words of `text` that are codes (`_`) or the project's own English.
fn codes_and_english(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        let code = word.contains('_');
        let english = PROJECT_ENGLISH.contains(&word.to_lowercase().as_str());
        if (code || english) && !found.iter().any(|seen| seen == word) {
            found.push(word.to_owned());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn kpictl_tables_for_people_carry_no_english_of_the_project() {
    let (nats, projector, _bus, dir) = example_stack().await;
    let printed = kpi_e2e::kpictl_printed;
    let addr = projector.addr.as_str();
    let rates = printed(&["rates", "--unit", "P46", "--period", "2025", "--addr", addr]);
    // An open case, and one resolved late with an apology letter.
    let case = printed(&["case", "000.00.29.H42-000017/7", "--addr", addr])
        + &printed(&["case", "000.00.91.H21-000029/9", "--addr", addr]);
    // The example's first lines again (the summary counts them as already
    // in the log), and a line of an envelope version to come: refused,
    // with its reason in Vietnamese.
    let file = dir.path().join("again.ndjson");
    let mut lines: Vec<String> = std::str::from_utf8(kpi_testkit::EVENTS_NDJSON)
        .unwrap()
        .lines()
        .take(5)
        .map(str::to_owned)
        .collect();
    let mut future: Value = serde_json::from_str(&lines[0]).unwrap();
    future["schema"] = json!(9);
    future["event_id"] = json!("99999999-9999-4999-8999-000000000009");
    lines.push(future.to_string());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let units = example_path("units.json");
    let output = kpictl(&[
        "import",
        file.to_str().unwrap(),
        "--nats-url",
        &nats.url(),
        "--units",
        units.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "a line is refused");
    let import = String::from_utf8(output.stdout).unwrap();
    assert!(
        import.contains("dòng 6: từ chối: trường `schema`: phiên bản 9"),
        "{import}"
    );
    for (what, text) in [("rates", &rates), ("case", &case), ("import", &import)] {
        assert_eq!(
            codes_and_english(text),
            Vec::<String>::new(),
            "codes or English words in kpictl {what}:\n{text}"
        );
    }
    // --json keeps the codes, for scripts.
    let json = printed(&[
        "rates", "--unit", "P46", "--period", "2025", "--addr", addr, "--json",
    ]);
    assert!(json.contains("\"on_time_rate\""), "{json}");
}

/// Words of the project's own English (reasons, counters, KPI names) that
/// must not reach a page people read.
const PROJECT_ENGLISH: &[&str] = &[
    "the",
    "and",
    "of",
    "needs",
    "facts",
    "procedure",
    "catalogue",
    "which",
    "are",
    "not",
    "case",
    "cases",
    "events",
    "event",
    "points",
    "period",
    "full",
    "marks",
    "from",
    "no",
    "dossier",
    "payment",
    "feedback",
    "rate",
    "target",
    "met",
    "missed",
    "open",
    "overdue",
    "late",
    "resolved",
    "received",
    "online",
    "unit",
    "stream",
    "sequence",
    "file",
    "portal",
    "true",
    "false",
    "none",
    "null",
];

/// The text a reader sees: no styles, scripts or tags.
fn visible_text(dom: &str) -> String {
    let mut text = dom.to_owned();
    for element in ["style", "script"] {
        while let Some(start) = text.find(&format!("<{element}")) {
            let end = text[start..]
                .find(&format!("</{element}>"))
                .map_or(text.len(), |end| start + end + element.len() + 3);
            text.replace_range(start..end, " ");
        }
    }
    let mut visible = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                visible.push(' ');
            }
            _ if !in_tag => visible.push(c),
            _ => {}
        }
    }
    visible.replace("&nbsp;", " ").replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monthly_page_fits_a4_and_speaks_only_vietnamese() {
    let (_nats, projector, _bus, dir) = example_stack().await;
    let report = dir.path().join("bao-cao-thang.html");
    let output = kpictl(&[
        "report",
        "--unit",
        "P46",
        "--period",
        "2025-03",
        "--out",
        report.to_str().unwrap(),
        "--addr",
        &projector.addr,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        page.contains("Hồ sơ trễ hạn và văn bản xin lỗi"),
        "the late cases"
    );
    assert!(page.contains("Biểu số 06/VPCP/KSTT"), "the Biểu 06 totals");

    // Measured in Chromium at A4 width (210 mm at 96 dpi: 794 px).
    let measured = page.replace(
        "</body>",
        "<script>document.body.setAttribute('data-fit', document.documentElement.scrollWidth + 'x' + window.innerWidth)</script></body>",
    );
    let probe = dir.path().join("probe.html");
    std::fs::write(&probe, measured).unwrap();
    let profile = dir.path().join("chromium-profile-a4");
    let dom = headless_chromium(&profile)
        .args(["--window-size=794,1123", "--dump-dom"])
        .arg(format!("file://{}", probe.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    let fit = dom
        .split("data-fit=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the probe did not run: {dom}"));
    let (document, viewport) = fit.split_once('x').unwrap();
    let (document, viewport): (u32, u32) = (document.parse().unwrap(), viewport.parse().unwrap());
    assert!(
        document <= viewport,
        "the page is {document} px wide in a {viewport} px A4 viewport"
    );

    // Nothing of the project's own codes or English in what people read.
    assert_eq!(
        codes_and_english(&visible_text(&dom)),
        Vec::<String>::new(),
        "codes or English words on the page"
    );
}
