//! The ingest services end to end (CONTRACT §7): a real nats-server, the
//! `intake`, `resolution` and `feedback` processes, the projector, and
//! HTTP posts as the provincial system sends them.

// The DVCQG payloads below are large `json!` literals.
#![recursion_limit = "256"]

use std::collections::BTreeMap;
use std::time::Duration;

use kpi_api::pb::{GetRatesRequest, ListRejectedRequest};
use kpi_bus::Bus;
use kpi_e2e::{IngestService, Projector};
use local_nats::LocalNats;
use serde_json::{json, Value};
use uuid::Uuid;

const FOLD_TIMEOUT: Duration = Duration::from_secs(60);

/// A province, two communes; the first known to the national portal.
const UNITS: &str = r#"{"units": [
  {"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province"},
  {"id": "5153105", "name": "Phường Nguyễn Nghiêm", "level": "commune", "parent": "51",
   "dvcqg_code": "000.00.31.H31"},
  {"id": "5153107", "name": "Xã Phổ Ninh", "level": "commune", "parent": "51"}
]}"#;

const COMMUNE: &str = "5153105";

/// nats-server, the projector and the three ingest services.
struct Stack {
    nats: LocalNats,
    projector: Projector,
    intake: IngestService,
    resolution: IngestService,
    feedback: IngestService,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(service_flags: &[&str]) -> Stack {
        Stack::start_with(service_flags, &[]).await
    }

    /// `intake_flags` go to intake only (`--field-map`, say).
    async fn start_with(service_flags: &[&str], intake_flags: &[&str]) -> Stack {
        let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("units.json");
        std::fs::write(&units, UNITS).unwrap();
        let projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
        let url = nats.url();
        let start = |name: &'static str| {
            IngestService::start(name, &url, &units, dir.path(), service_flags)
        };
        let flags: Vec<&str> = service_flags.iter().chain(intake_flags).copied().collect();
        let intake = IngestService::start("intake", &url, &units, dir.path(), &flags).await;
        let resolution = start("resolution").await;
        let feedback = start("feedback").await;
        Stack {
            nats,
            projector,
            intake,
            resolution,
            feedback,
            _dir: dir,
        }
    }

    async fn bus(&self) -> Bus {
        Bus::connect(&self.nats.url(), "ingest-test")
            .await
            .expect("connect")
    }

    /// The whole answer for a unit and period once the views reflect the
    /// whole stream.
    async fn rates(&mut self, unit_id: &str, period: &str) -> kpi_api::pb::RatesReply {
        let last = self.bus().await.last_sequence().await.expect("stream");
        self.projector.wait_for(unit_id, last, FOLD_TIMEOUT).await;
        let mut client = self.projector.client().await;
        client
            .get_rates(GetRatesRequest {
                unit_id: unit_id.into(),
                period: period.into(),
                min_stream_sequence: None,
            })
            .await
            .expect("GetRates")
            .into_inner()
    }

    /// The non-zero counters of a unit for a period once the views reflect
    /// the whole stream.
    async fn counts(&mut self, unit_id: &str, period: &str) -> BTreeMap<String, u64> {
        self.rates(unit_id, period)
            .await
            .counts
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .collect()
    }
}

fn counts_of(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(name, count)| ((*name).to_owned(), *count))
        .collect()
}

fn event(kind: &str, case_id: &str, occurred_at: &str, data: Value) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(),
        "kind": kind,
        "case_id": case_id,
        "unit_id": COMMUNE,
        "occurred_at": occurred_at,
        "data": data,
    })
}

fn received(case_id: &str) -> Value {
    event(
        "case.received",
        case_id,
        "2025-03-03T08:00:00+07:00",
        json!({"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
               "due_at": "2025-03-05T17:00:00+07:00"}),
    )
}

fn resolved(case_id: &str) -> Value {
    event(
        "case.resolved",
        case_id,
        "2025-03-05T10:00:00+07:00",
        json!({"result": "approved", "result_electronic": true, "result_digitized": true}),
    )
}

fn rated(case_id: &str, level: &str) -> Value {
    event(
        "case.rated",
        case_id,
        "2025-03-05T11:00:00+07:00",
        json!({"level": level}),
    )
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|event| format!("{event}\n")).collect()
}

fn lines_of(report: &Value, key: &str) -> Vec<u64> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` in {report}"))
        .iter()
        .map(|entry| entry["line"].as_u64().expect("line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_stores_its_own_kinds_and_refuses_the_rest() {
    let mut stack = Stack::start(&[]).await;
    let case = "000.00.31.H31-250303-0001";

    // One valid event to each service, as application/json.
    for (service, event) in [
        (&stack.intake, received(case)),
        (&stack.resolution, resolved(case)),
        (&stack.feedback, rated(case, "very_satisfied")),
    ] {
        let (status, report, _) = service
            .post("/v1/events", "application/json", event.to_string())
            .await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["rejected"], json!([]));
        let accepted = &report["accepted"][0];
        assert_eq!(accepted["line"], 1);
        assert_eq!(accepted["event_id"], event["event_id"]);
        assert_eq!(accepted["duplicate"], false);
        assert!(accepted["stream_sequence"].as_u64().unwrap() > 0);
    }
    let counted = counts_of(&[
        ("received", 1),
        ("received_online", 1),
        ("resolved", 1),
        ("resolved_on_time", 1),
        ("resolved_approved", 1),
        ("resolved_electronic", 1),
        ("resolved_digitized", 1),
        ("rated", 1),
        ("rated_very_satisfied", 1),
        ("closed", 1),
    ]);
    assert_eq!(stack.counts(COMMUNE, "2025").await, counted);
    assert_eq!(stack.counts("51", "2025-03").await, counted);

    // The same event again: stored once, said to be a duplicate.
    let again = rated(case, "very_satisfied");
    for expected_duplicate in [false, true] {
        let (status, report) = stack
            .feedback
            .post_events(ndjson(std::slice::from_ref(&again)))
            .await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["accepted"][0]["duplicate"], expected_duplicate);
    }

    // Invalid: 400 with line, field and reason; never published.
    let last_before = stack.bus().await.last_sequence().await.unwrap();
    let (status, report) = stack
        .feedback
        .post_events(ndjson(&[rated(case, "great")]))
        .await;
    assert_eq!(status, 400, "{report}");
    assert_eq!(report["accepted"], json!([]));
    let rejected = &report["rejected"][0];
    assert_eq!(rejected["line"], 1);
    assert_eq!(rejected["field"], "data.level");
    let reason = rejected["reason"].as_str().unwrap();
    assert!(
        reason.contains("great") && reason.contains("very_satisfied"),
        "{reason}"
    );

    // A kind of another service: refused, naming the right one.
    let (status, report) = stack.intake.post_events(ndjson(&[resolved(case)])).await;
    assert_eq!(status, 400, "{report}");
    assert_eq!(report["rejected"][0]["field"], "kind");
    let reason = report["rejected"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("resolution service"), "{reason}");
    let (status, report) = stack
        .resolution
        .post_events(ndjson(&[rated(case, "satisfied")]))
        .await;
    assert_eq!(status, 400);
    assert!(
        report["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("feedback service"),
        "{report}"
    );
    assert_eq!(
        stack.bus().await.last_sequence().await.unwrap(),
        last_before
    );
    assert_eq!(stack.counts(COMMUNE, "2025").await, counted);

    // 415 for another content type, 413 for too much.
    let (status, report, _) = stack
        .intake
        .post("/v1/events", "text/plain", received(case).to_string())
        .await;
    assert_eq!(status, 415, "{report}");
    assert!(report["error"]
        .as_str()
        .unwrap()
        .contains("application/x-ndjson"));
    let line = received(case).to_string();
    let over_16_mib = line.repeat(16 * 1024 * 1024 / line.len() + 1);
    let (status, report) = stack.intake.post_events(over_16_mib).await;
    assert_eq!(status, 413, "{report}");
    let too_many_lines = format!("{line}\n").repeat(10_001);
    let (status, report) = stack.intake.post_events(too_many_lines).await;
    assert_eq!(status, 413, "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("10000 lines"),
        "{report}"
    );

    // DVCQG payloads go to intake only.
    let (status, report, _) = stack
        .feedback
        .post("/v1/dvcqg", "application/json", "{}")
        .await;
    assert_eq!(status, 404, "{report}");
    assert!(report["error"].as_str().unwrap().contains("intake"));
    assert_eq!(
        stack.bus().await.last_sequence().await.unwrap(),
        last_before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_10000_line_post_with_a_bad_line_stores_the_other_9999() {
    let mut stack = Stack::start(&[]).await;
    let mut events: Vec<Value> = (1..=10_000)
        .map(|n| received(&format!("000.00.31.H31-250303-{n:05}")))
        .collect();
    events[4_999]["data"]["channel"] = json!("fax");
    let (status, report) = stack.intake.post_events(ndjson(&events)).await;
    assert_eq!(status, 400);
    assert_eq!(lines_of(&report, "rejected"), [5_000]);
    assert_eq!(report["rejected"][0]["field"], "data.channel");
    let accepted = lines_of(&report, "accepted");
    assert_eq!(accepted.len(), 9_999);
    assert!(
        accepted.windows(2).all(|pair| pair[0] < pair[1]),
        "in line order"
    );
    assert!(!accepted.contains(&5_000));
    assert_eq!(stack.counts(COMMUNE, "2025").await["received"], 9_999);

    // Each of these is rejected with its own reason.
    let mut invalid_utf8 = received("H31-UTF8").to_string().into_bytes();
    let at = invalid_utf8.len() - 3;
    invalid_utf8.insert(at, 0xff);
    let mut too_large = received("H31-LARGE");
    too_large["data"]["procedure_code"] = json!("x".repeat(64 * 1024));
    let nfd = received("So\u{31b}n-0001"); // "Sơn" with the horn as a combining mark (NFD)
    let in_1999 = {
        let mut event = received("H31-1999");
        event["occurred_at"] = json!("1999-12-31T08:00:00+07:00");
        event
    };
    let mut body = invalid_utf8;
    body.push(b'\n');
    body.extend_from_slice(format!("{too_large}\n{nfd}\n{in_1999}\n").as_bytes());
    let (status, report) = stack.intake.post_events(body).await;
    assert_eq!(status, 400, "{report}");
    assert_eq!(report["accepted"], json!([]));
    let reasons: Vec<(u64, Value, String)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["line"].as_u64().unwrap(),
                entry["field"].clone(),
                entry["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{report}");
    assert_eq!(reasons[0].1, Value::Null);
    assert!(reasons[0].2.contains("not valid UTF-8"), "{reasons:?}");
    assert!(reasons[1].2.contains("64 KiB"), "{reasons:?}");
    assert_eq!(reasons[2].1, "case_id");
    assert!(reasons[2].2.contains("NFC"), "{reasons:?}");
    assert_eq!(reasons[3].1, "occurred_at");
    assert!(reasons[3].2.contains("before 2000-01-01"), "{reasons:?}");
    assert_eq!(stack.counts(COMMUNE, "2025").await["received"], 9_999);
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_stopped_mid_post_then_the_same_body_again_counts_every_event_once() {
    let mut stack = Stack::start(&["--publish-deadline", "2s"]).await;
    let events: Vec<Value> = (1..=10_000)
        .map(|n| received(&format!("000.00.31.H31-250304-{n:05}")))
        .collect();
    let body = ndjson(&events);

    let post = {
        let url = stack.intake.url.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{url}/v1/events"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .expect("the service answers even when NATS is down");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().to_owned());
            (status, retry_after, response.json::<Value>().await.unwrap())
        })
    };
    // Stop NATS once some, not all, of the post is stored.
    let bus = stack.bus().await;
    loop {
        let stored = bus.last_sequence().await.unwrap_or(0);
        if stored >= 500 {
            break;
        }
        assert!(
            !post.is_finished(),
            "the post ended before NATS was stopped"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stack.nats.stop();
    let (status, retry_after, report) = post.await.unwrap();
    assert_eq!(status, 503, "{report}");
    assert!(retry_after.is_some(), "503 comes with Retry-After");
    let accepted = lines_of(&report, "accepted");
    let not_stored = lines_of(&report, "not_stored");
    assert!(!accepted.is_empty() && !not_stored.is_empty(), "{report}");
    assert_eq!(accepted.len() + not_stored.len(), 10_000);
    assert_eq!(report["rejected"], json!([]));

    let health = reqwest::get(format!("{}/healthz", stack.intake.url))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);

    // NATS comes back; the client sends the same body again.
    stack.nats.restart().unwrap_or_else(|err| panic!("{err}"));
    stack.intake.wait_healthy(Duration::from_secs(30)).await;
    let (status, report) = stack.intake.post_events(body).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(lines_of(&report, "accepted").len(), 10_000);
    let duplicates = report["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["duplicate"] == true)
        .count();
    assert!(
        duplicates >= accepted.len(),
        "{duplicates} < {}",
        accepted.len()
    );

    assert_eq!(stack.counts(COMMUNE, "2025").await["received"], 10_000);
    let stream_last = stack.bus().await.last_sequence().await.unwrap();
    assert!(
        stream_last <= 10_000 + 500,
        "no flood of copies: {stream_last}"
    );
}

async fn connect_as(nats: &LocalNats, user: &str) -> Bus {
    kpi_e2e::nats_user_args(&nats.url(), user)
        .connect("permissions-test")
        .await
        .unwrap_or_else(|err| panic!("{user}: {err}"))
}

/// Publishes and waits a little for the ack; `Err` when none comes.
async fn try_publish(bus: &Bus, subject: &str, event: &Value) -> Result<u64, String> {
    let bus = bus.with_timeout(Duration::from_secs(1));
    let ack = bus
        .publish_event(subject.to_owned(), event.to_string().into())
        .await
        .map_err(|err| err.to_string())?;
    ack.await
        .map(|ack| ack.sequence)
        .map_err(|err| err.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_nats_user_may_publish_only_its_own_kinds() {
    let nats = kpi_e2e::nats_with_shipped_users();
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();

    // No user: refused. The operator creates the stream.
    assert!(Bus::connect(&nats.url(), "anonymous").await.is_err());
    kpi_e2e::stream_init_as_operator(&nats.url());

    let case = "000.00.31.H31-250305-0001";
    let subject = |kind: &str| format!("cases.{COMMUNE}.{kind}");
    let feedback = connect_as(&nats, "feedback").await;
    assert!(
        try_publish(&feedback, &subject("case.rated"), &rated(case, "satisfied"))
            .await
            .is_ok()
    );
    let refused = try_publish(&feedback, &subject("case.resolved"), &resolved(case)).await;
    assert!(
        refused.is_err(),
        "feedback published case.resolved: {refused:?}"
    );
    let projector = connect_as(&nats, "projector").await;
    for (kind, event) in [
        ("case.received", received(case)),
        ("case.rated", rated(case, "satisfied")),
    ] {
        let refused = try_publish(&projector, &subject(kind), &event).await;
        assert!(
            refused.is_err(),
            "the projector published {kind}: {refused:?}"
        );
    }
    let operator = connect_as(&nats, "operator").await;
    assert_eq!(
        operator.last_sequence().await.unwrap(),
        1,
        "only the rating is stored"
    );

    // The services and the projector work under their own users.
    let projector_flags = kpi_e2e::nats_user_flags("projector");
    let projector_flags: Vec<&str> = projector_flags.iter().map(String::as_str).collect();
    let mut projector = Projector::start(
        &nats.url(),
        &units,
        &dir.path().join("views"),
        &projector_flags,
    );
    let intake_flags = kpi_e2e::nats_user_flags("intake");
    let intake_flags: Vec<&str> = intake_flags.iter().map(String::as_str).collect();
    let intake =
        IngestService::start("intake", &nats.url(), &units, dir.path(), &intake_flags).await;
    let (status, report) = intake.post_events(ndjson(&[received(case)])).await;
    assert_eq!(status, 200, "{report}");
    projector.wait_for(COMMUNE, 2, FOLD_TIMEOUT).await;
    let mut client = projector.client().await;
    let counts = client
        .get_rates(GetRatesRequest {
            unit_id: COMMUNE.into(),
            period: "2025".into(),
            min_stream_sequence: None,
        })
        .await
        .unwrap()
        .into_inner()
        .counts;
    assert_eq!((counts["received"], counts["rated"]), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_another_configuration_is_refused_at_start() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let bus = Bus::connect(&nats.url(), "mismatch-test").await.unwrap();
    let mut config = kpi_bus::stream_config(1, kpi_bus::DUPLICATE_WINDOW);
    config.storage = async_nats::jetstream::stream::StorageType::Memory;
    bus.jetstream().create_stream(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();

    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let status = projector.wait_for_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        projector.log().contains("storage is Memory, not File"),
        "{}",
        projector.log()
    );

    let output = std::process::Command::new(kpi_e2e::binaries().service("feedback"))
        .args([
            "--nats-url",
            &nats.url(),
            "--units",
            units.to_str().unwrap(),
        ])
        .args(["--listen", &format!("127.0.0.1:{}", kpi_e2e::free_port())])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage is Memory, not File"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_event_counts_once_after_redrive_and_a_second_redrive_changes_nothing() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let views = dir.path().join("views");
    let mut projector = Projector::start(&nats.url(), &units, &views, &[]);
    let bus = Bus::connect(&nats.url(), "redrive-test").await.unwrap();
    bus.ensure_stream().await.unwrap();

    // Published straight onto the bus for a commune the registry lacks yet,
    // and one that no registry will make valid.
    let mut new_commune = received("000.00.32.H31-250306-0001");
    new_commune["unit_id"] = json!("5153109");
    let mut hopeless = rated("000.00.32.H31-250306-0002", "great");
    hopeless["unit_id"] = json!("5153109");
    for (subject, event) in [
        ("cases.5153109.case.received", &new_commune),
        ("cases.5153109.case.rated", &hopeless),
    ] {
        try_publish(&bus, subject, event).await.unwrap();
    }
    projector.wait_for("51", 2, FOLD_TIMEOUT).await;
    let mut client = projector.client().await;
    let parked = client
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parked.total_rejected, 2);
    assert!(
        parked.events[0].reason.contains("5153109"),
        "{:?}",
        parked.events[0]
    );

    // The commune is added to the registry; the projector restarts with it.
    projector.terminate();
    let mut registry: Value = serde_json::from_str(UNITS).unwrap();
    registry["units"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "5153109", "name": "Xã Phổ Vinh", "level": "commune", "parent": "51"}));
    std::fs::write(&units, registry.to_string()).unwrap();
    let mut projector = Projector::start(&nats.url(), &units, &views, &[]);

    let addr = projector.addr.clone();
    let redrive = || {
        kpi_e2e::kpictl(&[
            "redrive",
            "--json",
            "--units",
            units.to_str().unwrap(),
            "--nats-url",
            &nats.url(),
            "--addr",
            &addr,
        ])
    };
    projector.client().await;
    let output = redrive();
    assert_eq!(output.status.code(), Some(1), "one stays invalid");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["sent"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["sent"][0]["parked_sequence"], 1);
    let still = &report["still_invalid"][0];
    assert_eq!(still["parked_sequence"], 2);
    assert!(
        still["reason"].as_str().unwrap().contains("great"),
        "{report}"
    );

    let count = |reply: kpi_api::pb::RatesReply| reply.counts.get("received").copied().unwrap_or(0);
    let rates = |unit: &str| GetRatesRequest {
        unit_id: unit.into(),
        period: "2025".into(),
        min_stream_sequence: None,
    };
    projector.wait_for("51", 3, FOLD_TIMEOUT).await;
    let mut client = projector.client().await;
    assert_eq!(
        count(
            client
                .get_rates(rates("5153109"))
                .await
                .unwrap()
                .into_inner()
        ),
        1
    );
    let parked = client
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parked.total_rejected, 1, "the redriven copy is retired");
    assert_eq!(parked.events[0].stream_sequence, 2);

    // Again: nothing more is sent or counted.
    let output = redrive();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["sent"], json!([]), "{report}");
    let last = bus.last_sequence().await.unwrap();
    assert_eq!(last, 3);
    projector.wait_for("51", last, FOLD_TIMEOUT).await;
    assert_eq!(
        count(
            client
                .get_rates(rates("5153109"))
                .await
                .unwrap()
                .into_inner()
        ),
        1
    );
    assert_eq!(
        count(client.get_rates(rates("51")).await.unwrap().into_inner()),
        1
    );
}

/// One dossier of Phường Nguyễn Nghiêm as the provincial system sends it
/// to the national portal, at one stage of its life, with the applicant's
/// personal data in it as in real payloads.
fn dossier_snapshot(stage: u8) -> Value {
    let mut dossier = json!({
        "MaHoSo": "000.00.31.H31-250310-0042", "MaTTHC": "1.004227",
        "TenTTHC": "Thủ tục đăng ký biến động đất đai", "MaLinhVuc": "G01-DD",
        "TenLinhVuc": "Đất đai", "KenhThucHien": "2",
        "ChuHoSo": "Nguyễn Thị Lan", "SoGiayToChuHoSo": "051190001234", "LoaiDoiTuong": "1",
        "MaDoiTuong": "dvcqg-account-778899", "ThongTinKhac": "Tổ 5, phường Nguyễn Nghiêm",
        "Email": "lan.nt@example.vn", "Fax": "02553822111", "SoDienThoai": "0912345678",
        "TrichYeuHoSo": "Đăng ký biến động thửa đất của bà Nguyễn Thị Lan",
        "NgayTiepNhan": "20250310091500", "NgayHenTra": "20250313170000",
        "TrangThaiHoSo": "2", "NgayTra": "", "ThongTinTra": "", "HinhThuc": "0",
        "NgayKetThucXuLy": "", "DonViXuLy": "UBND Phường Nguyễn Nghiêm", "GhiChu": "",
        "NoiNopHoSo": "2", "HoSoCoThanhPhanSoHoa": "1", "TaiKhoanDuocXacThucVoiVNeID": "1",
        "DuocThanhToanTrucTuyen": "1", "NgayTuChoi": "", "NgayNopHoSo": "20250310080000",
        "DinhDanhCHS": [{"LoaiDinhDanh": "1", "SoDinhDanh": "051190001234"}],
        "DSKetNoiCSDL": [{"MaCSDL": "7"}],
        "TaiLieuNop": [{"TepDinhKemId": "88121", "TenTepDinhKem": "So do cua ba Lan.pdf",
            "IsDeleted": "False", "MaThanhPhanHoSo": "",
            "DuongDanTaiTepTin": "https://dvc.example.gov.vn/f/88121-lan", "DuocSoHoa": "1",
            "DuocTaiSuDung": "0", "DuocLayTuKhoDMQG": "0", "MaKetQuaThayThe": ""}],
        "DanhSachLePhi": [{"TenPhiLePhi": "Lệ phí", "MaPhiLePhi": "1", "HinhThucThu": "1",
            "Gia": "50000", "LoaiPhiLePhi": "1"}],
        "DanhSachTepDinhKemKhac": [], "DanhSachHoSoBoSung": [], "DanhSachGiayToKetQua": []
    });
    let supplement = |received_back: bool| {
        json!([{"HoSoBoSungId": 1, "NguoiYeuCauBoSung": "Võ Thị Mai",
            "NoiDungBoSung": "Bổ sung bản đồ địa chính", "NgayBoSung": "20250311100000",
            "NguoiTiepNhanBoSung": if received_back { "Võ Thị Mai" } else { "" },
            "ThongTinTiepNhan": "",
            "NgayTiepNhanBoSung": if received_back { "20250312090000" } else { "" },
            "TrangThaiBoSung": received_back, "DanhSachGiayToBoSung": [],
            "DanhSachLePhiBoSung": [], "NgayHenTraTruoc": "20250313170000",
            "NgayHenTraMoi": "20250318170000"}])
    };
    match stage {
        1 => {}
        2 => {
            dossier["TrangThaiHoSo"] = json!("5");
            dossier["NgayHenTra"] = json!("20250318170000");
            dossier["DanhSachHoSoBoSung"] = supplement(false);
        }
        3 => {
            dossier["TrangThaiHoSo"] = json!("4");
            dossier["NgayHenTra"] = json!("20250318170000");
            dossier["DanhSachHoSoBoSung"] = supplement(true);
        }
        _ => {
            // Resolved on the 19th, a day after the new due time: late.
            dossier["TrangThaiHoSo"] = json!("10");
            dossier["NgayHenTra"] = json!("20250318170000");
            dossier["DanhSachHoSoBoSung"] = supplement(true);
            dossier["NgayKetThucXuLy"] = json!("20250319100000");
            dossier["NgayTra"] = json!("20250319150000");
            dossier["DanhSachGiayToKetQua"] = json!([{"TenGiayTo": "Giay chung nhan cua ba Lan.pdf",
                "MaThanhPhanHoSo": "", "GiayToId": "90702",
                "DuongDanTepTinKetQua": "https://dvc.example.gov.vn/kq/90702-lan",
                "MaGiayToKetQua": "KQ.1.004227"}]);
        }
    }
    json!({"session": "token-of-the-province", "madonvi": "000.00.31.H31",
           "service": "DongBoHoSoMC", "isUpdating": if stage > 1 { "True" } else { "False" },
           "data": [dossier]})
}

/// The apology letter for the late dossier, from the resolution service.
fn apology_letter() -> Value {
    json!({"event_id": "0b9d6a51-5f0e-4a43-a3a5-5d0a7b3c2e11", "kind": "case.apology_issued",
           "case_id": "000.00.31.H31-250310-0042", "unit_id": COMMUNE,
           "occurred_at": "2025-03-18T16:00:00+07:00",
           "data": {"letter_ref": "15/TXL-UBND", "reason": "Chậm trả kết quả",
                    "new_due_at": "2025-03-19T17:00:00+07:00"}})
}

const FIELD_MAP: &str = r#"{"G01-DD": "dat_dai"}"#;

async fn dvcqg_stack() -> Stack {
    let field_map = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(field_map.path(), FIELD_MAP).unwrap();
    let (_, path) = field_map.keep().unwrap();
    Stack::start_with(&[], &["--field-map", path.to_str().unwrap()]).await
}

async fn post_snapshot(stack: &Stack, stage: u8) -> Value {
    let (status, report, _) = stack
        .intake
        .post(
            "/v1/dvcqg",
            "application/json",
            dossier_snapshot(stage).to_string(),
        )
        .await;
    assert_eq!(status, 200, "stage {stage}: {report}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn dvcqg_snapshots_in_any_order_and_doubled_give_the_same_late_case() {
    let mut in_order = dvcqg_stack().await;
    for stage in [1, 2, 3, 4, 4] {
        let report = post_snapshot(&in_order, stage).await;
        let dossier = &report["accepted"][0];
        assert_eq!(dossier["line"], 1);
        assert_eq!(dossier["case_id"], "000.00.31.H31-250310-0042");
        let kinds: Vec<&str> = dossier["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["kind"].as_str().unwrap())
            .collect();
        let expected: &[&str] = match stage {
            1 => &["case.received", "case.paid", "case.synced"],
            2 | 3 => &[
                "case.received",
                "case.supplement_requested",
                "case.paid",
                "case.synced",
            ],
            _ => &[
                "case.received",
                "case.supplement_requested",
                "case.resolved",
                "case.paid",
                "case.synced",
            ],
        };
        assert_eq!(kinds, expected, "stage {stage}");
    }
    let (status, report) = in_order
        .resolution
        .post_events(ndjson(&[apology_letter()]))
        .await;
    assert_eq!(status, 200, "{report}");

    let mut shuffled = dvcqg_stack().await;
    let (status, _) = shuffled
        .resolution
        .post_events(ndjson(&[apology_letter()]))
        .await;
    assert_eq!(status, 200);
    for stage in [4, 2, 4, 1, 3, 3, 1, 4, 2, 4] {
        post_snapshot(&shuffled, stage).await;
    }

    let late_with_apology = counts_of(&[
        ("received", 1),
        ("received_online", 1),
        ("received_dossier_digitized", 1),
        ("received_synced", 1),
        ("resolved", 1),
        ("resolved_late", 1),
        ("resolved_late_with_apology", 1),
        ("resolved_approved", 1),
        ("resolved_electronic", 1),
        ("resolved_digitized", 1),
        ("payments", 1),
        ("payments_online", 1),
        // QĐ 766 inputs: closed (and synced to the portal), overdue from
        // its due day until resolved, and resolved late.
        ("closed", 1),
        ("closed_synced", 1),
        ("became_overdue", 1),
        ("stopped_overdue", 1),
        ("resolved_late_or_unsatisfied", 1),
    ]);
    for stack in [&mut in_order, &mut shuffled] {
        assert_eq!(stack.counts(COMMUNE, "2025").await, late_with_apology);
    }
    for period in ["2025", "2025-03", "R2025-03", "2025-03-19"] {
        let mut a = in_order.rates(COMMUNE, period).await;
        let mut b = shuffled.rates(COMMUNE, period).await;
        (a.stream_sequence, b.stream_sequence) = (0, 0);
        assert_eq!(a, b, "{period}");
    }
}

/// Everything under a directory, file by file.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_data_in_dvcqg_payloads_reaches_neither_the_stream_nor_the_views_nor_the_logs() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let views = dir.path().join("views");
    let mut projector = Projector::start(&nats.url(), &units, &views, &[]);
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let intake = IngestService::start_with_env(
        "intake",
        &nats.url(),
        &units,
        &logs,
        &[],
        &[("RUST_LOG", "debug,h2=info,hyper=info,tower=info")],
    )
    .await;

    for stage in 1..=4 {
        let (status, report, _) = intake
            .post(
                "/v1/dvcqg",
                "application/json",
                dossier_snapshot(stage).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{report}");
    }
    // A progress step with the handler's name, and dossiers refused for
    // personal data in members that errors talk about.
    let progress = json!({"madonvi": "000.00.31.H31", "service": "CapNhatTienDoHoSoMC", "data": [
        {"MaHoSo": "000.00.31.H31-250310-0042", "NguoiXuLy": "Võ Thị Mai", "ChucDanh": "Công chức",
         "ThoiDiemXuLy": "20250319150000", "PhongBanXuLy": "Bộ phận Một cửa",
         "NoiDungXuLy": "Trả kết quả cho bà Nguyễn Thị Lan", "TrangThai": "10"}]});
    let (status, report, _) = intake
        .post("/v1/dvcqg", "application/json", progress.to_string())
        .await;
    assert_eq!(status, 200, "{report}");
    let mut wrong_members = dossier_snapshot(1);
    wrong_members["data"][0]["KenhThucHien"] = json!("0912345678");
    let mut second = dossier_snapshot(1)["data"][0].clone();
    second["NgayTiepNhan"] = json!("051190001234");
    let mut third = dossier_snapshot(1)["data"][0].clone();
    // Not a field code: refused, and the error does not quote it.
    third["MaLinhVuc"] = json!("Nguyễn Thị Lan, CCCD 051190001234");
    wrong_members["data"]
        .as_array_mut()
        .unwrap()
        .extend([second, third]);
    let (status, answer, _) = intake
        .post("/v1/dvcqg", "application/json", wrong_members.to_string())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 3, "{answer}");

    let last = Bus::connect(&nats.url(), "pii-test")
        .await
        .unwrap()
        .last_sequence()
        .await
        .unwrap();
    assert_eq!(
        last, 5,
        "received, paid, synced, supplement_requested, resolved"
    );
    projector.wait_for(COMMUNE, last, FOLD_TIMEOUT).await;
    projector.terminate();
    drop(intake);

    let personal = [
        "Nguyễn Thị Lan",
        "051190001234",
        "dvcqg-account-778899",
        "Tổ 5, phường",
        "lan.nt@example.vn",
        "02553822111",
        "0912345678",
        "Đăng ký biến động thửa đất",
        "So do cua ba Lan",
        "https://dvc.example.gov.vn",
        "Giay chung nhan cua ba Lan",
        "Võ Thị Mai",
        "token-of-the-province",
        // NoiDungBoSung: free text about the applicant's circumstances.
        "Bổ sung bản đồ địa chính",
    ];
    let mut places = files_under(&nats.store_dir());
    places.extend(files_under(&views));
    places.extend(files_under(&logs));
    places.push(("nats-server log".into(), nats.log().into_bytes()));
    places.push(("projector log".into(), projector_log(dir.path())));
    places.push(("the 400 answer".into(), answer.to_string().into_bytes()));
    assert!(
        places.iter().any(|(_, bytes)| contains(bytes, b"1.004227")),
        "the files were read"
    );
    for (path, bytes) in &places {
        for needle in personal {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "`{needle}` found in {}",
                path.display()
            );
        }
    }
}

fn projector_log(dir: &std::path::Path) -> Vec<u8> {
    files_under(dir)
        .into_iter()
        .filter(|(path, _)| path.extension().is_some_and(|ext| ext == "log"))
        .flat_map(|(_, bytes)| bytes)
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The example payloads of deploy/examples (the README's curl commands)
/// are accepted by the services they are for, with the seed units.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_examples_are_accepted() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = |name: &str| std::fs::read(repo.join("deploy/examples").join(name)).unwrap();
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = repo.join("deploy/units/seed-communes.json");
    let url = nats.url();
    let start = |name: &'static str| IngestService::start(name, &url, &units, dir.path(), &[]);
    let (intake, resolution, feedback) = (
        start("intake").await,
        start("resolution").await,
        start("feedback").await,
    );

    let posts = [
        (&intake, "/v1/events", "application/json", "event.json"),
        (
            &intake,
            "/v1/events",
            "application/x-ndjson",
            "intake-events.ndjson",
        ),
        (
            &resolution,
            "/v1/events",
            "application/x-ndjson",
            "resolution-events.ndjson",
        ),
        (
            &feedback,
            "/v1/events",
            "application/x-ndjson",
            "feedback-events.ndjson",
        ),
        (
            &intake,
            "/v1/dvcqg",
            "application/json",
            "dvcqg-snapshot.json",
        ),
        (
            &intake,
            "/v1/dvcqg",
            "application/json",
            "dvcqg-progress.json",
        ),
    ];
    for (service, path, content_type, file) in posts {
        let (status, report, _) = service.post(path, content_type, example(file)).await;
        assert_eq!(status, 200, "{file}: {report}");
    }
    let output = kpi_e2e::kpictl(&[
        "import",
        repo.join("deploy/examples/events.csv").to_str().unwrap(),
        "--units",
        units.to_str().unwrap(),
        "--nats-url",
        &nats.url(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("nhận 3 sự kiện"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// `Nats-Msg-Id` is the hash of the canonical body: another content under
/// the same event id is another message, stored, and the projector decides
/// the conflict; the same content again is a duplicate to JetStream.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_id_reused_for_other_content_reaches_the_projector_as_a_conflict() {
    let mut stack = Stack::start(&[]).await;
    let case = "000.00.31.H31-250307-0001";
    let (status, _) = stack.intake.post_events(ndjson(&[received(case)])).await;
    assert_eq!(status, 200);
    let first = rated(case, "satisfied");
    let mut second = first.clone();
    second["data"]["level"] = json!("unsatisfied");
    second["occurred_at"] = json!("2025-03-05T12:00:00+07:00");
    for (event, duplicate) in [
        (&first, false),
        (&second, false),
        (&second, true),
        (&first, true),
    ] {
        let (status, report) = stack
            .feedback
            .post_events(ndjson(std::slice::from_ref(event)))
            .await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["accepted"][0]["duplicate"], duplicate, "{report}");
    }
    let counts = stack.counts(COMMUNE, "2025").await;
    assert_eq!(
        (counts["rated"], counts.get("rated_unsatisfied")),
        (1, None)
    );
    let rejected = stack
        .projector
        .client()
        .await
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.total_rejected, 1);
    assert!(rejected.events[0]
        .reason
        .starts_with("event_id reused with different content"));
}

/// A case paid twice counts once; a DVCQG snapshot's `paid` and a direct
/// `case.paid` for the same dossier count once (QĐ 766 counts dossiers),
/// online when either payment was.
#[tokio::test(flavor = "multi_thread")]
async fn a_case_paid_twice_or_through_two_paths_counts_once() {
    let mut stack = dvcqg_stack().await;
    post_snapshot(&stack, 1).await;
    let dossier = "000.00.31.H31-250310-0042";
    let mut direct = event(
        "case.paid",
        dossier,
        "2025-03-12T09:00:00+07:00",
        json!({"amount_vnd": 20000, "online": false}),
    );
    let (status, report) = stack.intake.post_events(ndjson(&[direct.clone()])).await;
    assert_eq!(status, 200, "{report}");
    // And the same case paid once more, later, through /v1/events.
    direct["event_id"] = json!(Uuid::new_v4().to_string());
    direct["occurred_at"] = json!("2025-03-13T09:00:00+07:00");
    let (status, report) = stack.intake.post_events(ndjson(&[direct])).await;
    assert_eq!(status, 200, "{report}");
    let counts = stack.counts(COMMUNE, "2025-03").await;
    assert_eq!(
        (counts.get("payments"), counts.get("payments_online")),
        (Some(&1), Some(&1)),
        "{counts:?}"
    );
    // On the day of the earliest payment, the snapshot's (10 March).
    let day = stack.counts(COMMUNE, "2025-03-10").await;
    assert_eq!(day.get("payments"), Some(&1), "{day:?}");
}

/// Events of the flooded case beyond its cap are kept aside; `kpictl
/// redrive` does not send them again (they would be kept aside again, and
/// the log never forgets), however often it runs.
#[tokio::test(flavor = "multi_thread")]
async fn redrive_leaves_events_kept_aside_for_a_cap_where_they_are() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let bus = Bus::connect(&nats.url(), "flood-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    let case = "000.00.31.H31-250303-FLOOD";
    let mut messages = vec![(
        format!("cases.{COMMUNE}.case.received"),
        received(case).to_string().into_bytes(),
    )];
    for _ in 0..1004 {
        messages.push((
            format!("cases.{COMMUNE}.case.rated"),
            rated(case, "satisfied").to_string().into_bytes(),
        ));
    }
    kpi_e2e::publish_all(&bus, messages).await;
    let last = bus.last_sequence().await.unwrap();
    assert_eq!(last, 1005);
    projector.wait_for(COMMUNE, last, FOLD_TIMEOUT).await;
    let kept_aside = |reply: kpi_api::pb::ListRejectedReply| {
        reply
            .events
            .iter()
            .map(|event| (event.stream_sequence, event.cause.clone()))
            .collect::<Vec<_>>()
    };
    let mut client = projector.client().await;
    let before = kept_aside(
        client
            .list_rejected(ListRejectedRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        before,
        (1001..=1005)
            .map(|sequence| (sequence, "over_limit".to_owned()))
            .collect::<Vec<_>>()
    );
    for run in 0..2 {
        let output = kpi_e2e::kpictl(&[
            "redrive",
            "--json",
            "--units",
            units.to_str().unwrap(),
            "--nats-url",
            &nats.url(),
            "--addr",
            &projector.addr,
        ]);
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("run {run}: {}", String::from_utf8_lossy(&output.stderr)));
        assert_eq!(report["sent"], json!([]), "run {run}: {report}");
        assert_eq!(
            report["not_sent_kept_aside"].as_array().unwrap().len(),
            5,
            "{report}"
        );
        assert_eq!(output.status.code(), Some(0), "{report}");
    }
    assert_eq!(
        bus.last_sequence().await.unwrap(),
        last,
        "the stream grew by no copy"
    );
    let after = kept_aside(
        client
            .list_rejected(ListRejectedRequest::default())
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(after, before);
}

/// Published straight onto the bus with `Nats-Msg-Id` the hash of the
/// body, both events of a conflict reach the log, whichever comes first:
/// the same event id and content under two units, and one id with two
/// contents. The views are the same in both orders.
#[tokio::test(flavor = "multi_thread")]
async fn conflicts_published_straight_onto_the_bus_are_decided_alike_in_both_orders() {
    let case = "000.00.31.H31-250303-0777";
    let mut under_first = received(case);
    under_first["event_id"] = json!("6f0e8a5c-2b1d-4c3e-9f7a-1d2c3b4a5e6f");
    let mut under_second = under_first.clone();
    under_second["unit_id"] = json!("5153107");
    let mut satisfied = rated(case, "satisfied");
    satisfied["event_id"] = json!("7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d");
    let mut unsatisfied = satisfied.clone();
    unsatisfied["data"]["level"] = json!("unsatisfied");
    let message = |event: &Value| {
        let unit = event["unit_id"].as_str().unwrap();
        let kind = event["kind"].as_str().unwrap();
        (
            format!("cases.{unit}.{kind}"),
            event.to_string().into_bytes(),
        )
    };
    let mut outcomes = Vec::new();
    for order in [
        [&under_first, &under_second, &satisfied, &unsatisfied],
        [&unsatisfied, &satisfied, &under_second, &under_first],
    ] {
        let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("units.json");
        std::fs::write(&units, UNITS).unwrap();
        let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
        let bus = Bus::connect(&nats.url(), "conflict-test").await.unwrap();
        bus.ensure_stream().await.unwrap();
        // One at a time, each folded before the next: the event a record
        // holds is read back from the stream to decide by data.
        for (index, event) in order.iter().enumerate() {
            kpi_e2e::publish_all(&bus, [message(event)]).await;
            projector
                .wait_for("51", index as u64 + 1, FOLD_TIMEOUT)
                .await;
        }
        assert_eq!(
            bus.last_sequence().await.unwrap(),
            4,
            "every body is stored"
        );
        let mut client = projector.client().await;
        let mut answers = Vec::new();
        for unit in [COMMUNE, "5153107", "51"] {
            let mut reply = client
                .get_rates(GetRatesRequest {
                    unit_id: unit.into(),
                    period: "2025".into(),
                    min_stream_sequence: None,
                })
                .await
                .unwrap()
                .into_inner();
            reply.stream_sequence = 0;
            reply.live = None;
            answers.push(reply);
        }
        let rejected = client
            .list_rejected(ListRejectedRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut kept: Vec<(String, String)> = rejected
            .events
            .iter()
            .map(|event| (event.subject.clone(), event.cause.clone()))
            .collect();
        kept.sort();
        outcomes.push((answers, kept));
        projector.terminate();
    }
    assert_eq!(outcomes[0], outcomes[1]);
    let (answers, kept) = &outcomes[0];
    assert_eq!(answers[0].counts["received"], 1, "the smaller unit counts");
    assert_eq!(answers[1].counts["received"], 0);
    assert_eq!(
        answers[0].counts["rated_satisfied"], 1,
        "the smaller data counts"
    );
    assert_eq!(
        kept,
        &[
            ("cases.5153105.case.rated".to_owned(), "conflict".to_owned()),
            (
                "cases.5153107.case.received".to_owned(),
                "conflict".to_owned()
            ),
        ]
    );
}

/// Posts `event` to `service`: its `accepted` entry (duplicate, sequence).
async fn post_once(service: &IngestService, event: &Value) -> (bool, u64) {
    let (status, report, _) = service
        .post("/v1/events", "application/json", event.to_string())
        .await;
    assert_eq!(status, 200, "{report}");
    let accepted = &report["accepted"][0];
    (
        accepted["duplicate"].as_bool().expect("duplicate"),
        accepted["stream_sequence"]
            .as_u64()
            .expect("stream_sequence"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resend_three_minutes_later_is_still_answered_as_a_duplicate() {
    let mut stack = Stack::start(&[]).await;
    let event = received("000.00.31.H31-250303-0042");
    let (duplicate, first) = post_once(&stack.intake, &event).await;
    assert!(!duplicate);
    // Past JetStream's default of two minutes: the stream's window is a day.
    tokio::time::sleep(Duration::from_secs(185)).await;
    assert_eq!(post_once(&stack.intake, &event).await, (true, first));
    assert_eq!(stack.bus().await.last_sequence().await.unwrap(), first);
    assert_eq!(stack.counts(COMMUNE, "2025").await["received"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_duplicate_window_ends_where_stream_init_sets_it() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let stream_init = |window: &str| {
        let output = kpi_e2e::kpictl(&[
            "stream-init",
            "--nats-url",
            &nats.url(),
            "--duplicate-window",
            window,
        ]);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let said = stream_init("3s");
    assert!(
        said.contains("gửi lại trong vòng 3s được trả lời là trùng lặp"),
        "{said}"
    );
    let intake = IngestService::start("intake", &nats.url(), &units, dir.path(), &[]).await;

    let event = received("000.00.31.H31-250303-0043");
    let (duplicate, first) = post_once(&intake, &event).await;
    assert!(!duplicate);
    assert_eq!(post_once(&intake, &event).await, (true, first));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Past the window: stored again (the projector still counts it once).
    let (duplicate, second) = post_once(&intake, &event).await;
    assert!(!duplicate);
    assert_eq!(second, first + 1);
    assert!(
        intake.log().contains("--duplicate-window"),
        "intake asked for a day and found 3 s, and did not say so:\n{}",
        intake.log()
    );

    // Back to the default: a day, on the same stream.
    let said = stream_init("24h");
    assert!(
        said.contains("trong vòng 1day được trả lời là trùng lặp (trước đây 3s)"),
        "{said}"
    );
    let bus = Bus::connect(&nats.url(), "window-test").await.unwrap();
    let info = bus
        .jetstream()
        .get_stream("CASES")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window, Duration::from_secs(24 * 60 * 60));
    assert_eq!(post_once(&intake, &event).await, (true, second));
}
