//! Audits (CONTRACT §1.2, §5 GetCase, §6): a case's trail read back from
//! the log; event identity decided the same way in any arrival order;
//! replay, verify and the blue/green rebuild; a stream that no longer
//! matches the views stops the projector.

use std::time::{Duration, Instant};

use kpi_api::pb::{GetCaseRequest, GetRatesRequest, ListRejectedRequest, RatesReply};
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_e2e::{free_port, kpictl, publish_all, relaid, simulated_messages, Projector};
use kpi_simulator::synthetic_registry;
use kpi_testkit::{event_lines, example_path, subject_of};
use local_nats::LocalNats;
use serde_json::{json, Value};

const FOLD_TIMEOUT: Duration = Duration::from_secs(120);

fn example_messages(lines: &[(usize, &[u8])]) -> Vec<(String, Vec<u8>)> {
    lines
        .iter()
        .map(|(_, line)| (subject_of(line), line.to_vec()))
        .collect()
}

async fn folded(projector: &mut Projector, bus: &Bus, unit: &str) -> u64 {
    let last = bus.last_sequence().await.unwrap();
    projector.wait_for(unit, last, FOLD_TIMEOUT).await
}

async fn rates(projector: &mut Projector, unit: &str, period: &str) -> RatesReply {
    projector
        .client()
        .await
        .get_rates(GetRatesRequest {
            unit_id: unit.into(),
            period: period.into(),
            min_stream_sequence: None,
        })
        .await
        .unwrap()
        .into_inner()
}

const CASE: &str = "000.00.31.H31-240315-0001/2";

fn event(id: &str, kind: &str, case: &str, at: &str, data: Value) -> Vec<u8> {
    json!({"event_id": id, "kind": kind, "case_id": case, "unit_id": "C46-0-0",
           "occurred_at": at, "data": data})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn get_case_returns_exactly_the_events_of_the_case_from_the_log_in_stream_order() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = example_path("units.json");
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let bus = Bus::connect(&nats.url(), "audit-test").await.unwrap();
    bus.ensure_stream().await.unwrap();

    let received = event(
        "11111111-1111-4111-8111-111111111111",
        "case.received",
        CASE,
        "2025-03-15T08:30:00+07:00",
        json!({"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
               "due_at": "2025-03-18T17:00:00+07:00"}),
    );
    let supplement = event(
        "22222222-2222-4222-8222-222222222222",
        "case.supplement_requested",
        CASE,
        "2025-03-16T09:00:00+07:00",
        json!({"reason": "Bổ sung giấy tờ", "due_at": "2025-03-20T17:00:00+07:00"}),
    );
    let resolved = event(
        "33333333-3333-4333-8333-333333333333",
        "case.resolved",
        CASE,
        "2025-03-21T10:00:00+07:00",
        json!({"result": "approved", "result_electronic": true, "result_digitized": true}),
    );
    let other = event(
        "44444444-4444-4444-8444-444444444444",
        "case.received",
        "000.00.31.H31-240315-0001/3",
        "2025-03-15T08:40:00+07:00",
        json!({"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
               "due_at": "2025-03-18T17:00:00+07:00"}),
    );
    let subject = |kind: &str| format!("cases.C46-0-0.{kind}");
    // The resolution first, then the rest; the supplement twice, the
    // second copy in another layout (stored, as after the duplicate window).
    publish_all(
        &bus,
        [
            (subject("case.resolved"), resolved.clone()),
            (subject("case.received"), other),
            (subject("case.received"), received.clone()),
            (subject("case.supplement_requested"), supplement.clone()),
            (subject("case.supplement_requested"), relaid(&supplement)),
        ],
    )
    .await;
    folded(&mut projector, &bus, "P46").await;

    let reply = projector
        .client()
        .await
        .get_case(GetCaseRequest {
            case_id: CASE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let trail: Vec<(u64, Vec<u8>, &str)> = reply
        .events
        .iter()
        .map(|e| (e.stream_sequence, e.payload.clone(), e.status.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            (1, resolved, "counts"),
            (3, received, "counts"),
            (4, supplement, "counts"),
        ]
    );
    let state = reply.state.unwrap();
    assert_eq!(state.status, "resolved");
    assert_eq!(state.due_at, "2025-03-20T17:00:00+07:00");
    assert_eq!(state.original_due_at, "2025-03-18T17:00:00+07:00");
    assert_eq!(state.timeliness, "late");
    assert_eq!(state.supplements.len(), 1);

    // kpictl case, with its dots and slashes.
    let output = kpictl(&["case", CASE, "--json", "--addr", &projector.addr]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["case_id"], CASE);
    assert_eq!(json["events"].as_array().unwrap().len(), 3);
    let output = kpictl(&["case", "no-such-case", "--addr", &projector.addr]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no event of case"));

    // A rating whose case.received never came is held: counted as such,
    // listed, and shown by GetCase.
    let held = event(
        "55555555-5555-4555-8555-555555555555",
        "case.rated",
        "000.00.31.H31-240315-0099",
        "2025-03-22T10:00:00+07:00",
        json!({"level": "satisfied"}),
    );
    publish_all(&bus, [(subject("case.rated"), held)]).await;
    folded(&mut projector, &bus, "P46").await;
    let output = kpictl(&["held", "--json", "--addr", &projector.addr]);
    let held: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(held[0]["case_id"], "000.00.31.H31-240315-0099");
    assert_eq!(held[0]["events"], 1);
    let reply = rates(&mut projector, "C46-0-0", "2025-03-22").await;
    assert_eq!(reply.counts["held_events"], 1);
    assert_eq!(reply.counts["rated"], 0);
}

/// Publishes the two conflicting events in one order into a fresh stack;
/// returns every answer of interest and the kept-aside payloads.
async fn fold_conflict(first: &[u8], second: &[u8]) -> (Vec<RatesReply>, Vec<(Vec<u8>, String)>) {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = example_path("units.json");
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let bus = Bus::connect(&nats.url(), "identity-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    let received = event(
        "11111111-1111-4111-8111-111111111111",
        "case.received",
        CASE,
        "2025-03-15T08:30:00+07:00",
        json!({"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
               "due_at": "2025-03-18T17:00:00+07:00"}),
    );
    // Two different senders: different bodies, the same event id.
    publish_all(
        &bus,
        [
            ("cases.C46-0-0.case.received".to_owned(), received),
            ("cases.C46-0-0.case.resolved".to_owned(), first.to_vec()),
            ("cases.C46-0-0.case.resolved".to_owned(), second.to_vec()),
        ],
    )
    .await;
    folded(&mut projector, &bus, "P46").await;
    let mut answers = Vec::new();
    for (unit, period) in [
        ("C46-0-0", "2025-03"),
        ("P46", "2025"),
        ("C46-0-0", "2025-03-18"),
    ] {
        let mut reply = rates(&mut projector, unit, period).await;
        reply.stream_sequence = 0;
        answers.push(reply);
    }
    let rejected = projector
        .client()
        .await
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.total_rejected, 1);
    let losers = rejected
        .events
        .into_iter()
        .map(|e| (e.payload, e.reason))
        .collect();
    (answers, losers)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_id_reused_with_other_content_is_decided_alike_in_both_orders() {
    let id = "66666666-6666-4666-8666-666666666666";
    let data = json!({"result": "approved", "result_electronic": true, "result_digitized": false});
    // On time on the 18th; the same id reused for a late resolution.
    let on_time = event(
        id,
        "case.resolved",
        CASE,
        "2025-03-18T10:00:00+07:00",
        data.clone(),
    );
    let late = event(id, "case.resolved", CASE, "2025-03-19T10:00:00+07:00", data);
    let (answers_a, losers_a) = fold_conflict(&on_time, &late).await;
    let (answers_b, losers_b) = fold_conflict(&late, &on_time).await;
    assert_eq!(answers_a, answers_b);
    assert_eq!(losers_a, losers_b);
    // The earliest counts: one on-time resolution; the later is kept aside.
    assert_eq!(answers_a[0].counts["resolved_on_time"], 1);
    assert_eq!(answers_a[0].counts["resolved_late"], 0);
    let (payload, reason) = &losers_a[0];
    assert!(
        reason.starts_with("event_id reused with different content"),
        "{reason}"
    );
    let loser: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(loser["occurred_at"], "2025-03-19T10:00:00+07:00");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_and_verify_agree_with_the_live_views_and_find_a_damaged_counter() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = example_path("units.json");
    let units_arg = units.to_str().unwrap().to_owned();
    let data_dir = dir.path().join("views");
    let mut projector = Projector::start(&nats.url(), &units, &data_dir, &[]);
    let bus = Bus::connect(&nats.url(), "verify-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    let lines = event_lines();
    let (first_half, second_half) = lines.split_at(lines.len() / 2);

    // What the live views answer at the middle of the log.
    publish_all(&bus, example_messages(first_half)).await;
    let middle = folded(&mut projector, &bus, "P46").await;
    let mut at_middle = Vec::new();
    for query in kpi_testkit::expected().queries {
        at_middle.push(rates(&mut projector, &query.unit_id, &query.period).await);
    }
    publish_all(&bus, example_messages(second_half)).await;
    folded(&mut projector, &bus, "P46").await;

    let verify = || {
        kpictl(&[
            "verify",
            "--addr",
            &projector.addr,
            "--units",
            &units_arg,
            "--nats-url",
            &nats.url(),
        ])
    };
    let output = verify();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("số liệu đang chạy khớp với nhật ký"));
    // Its log lines, beside the report in a file or a pipe, are plain.
    let logged = String::from_utf8_lossy(&output.stderr);
    assert!(logged.contains("verify: "), "{logged}");
    assert!(!logged.contains('\u{1b}'), "colour codes in: {logged:?}");

    // Replay up to the middle reproduces the answers given then.
    let replayed = dir.path().join("replayed");
    let middle_text = middle.to_string();
    let output = kpictl(&[
        "replay",
        "--data-dir",
        replayed.to_str().unwrap(),
        "--until",
        &middle_text,
        "--units",
        &units_arg,
        "--nats-url",
        &nats.url(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let mut from_replay = Projector::start(&nowhere, &units, &replayed, &[]);
    for (query, then) in kpi_testkit::expected().queries.iter().zip(&at_middle) {
        let now = rates(&mut from_replay, &query.unit_id, &query.period).await;
        assert_eq!(&now, then, "{} {}", query.unit_id, query.period);
    }
    drop(from_replay);

    // One live counter changed on disk: verify names it.
    projector.terminate();
    let (unit, day) = tamper_with_a_day_counter(&data_dir.join("current"));
    let mut projector = Projector::start(&nats.url(), &units, &data_dir, &[]);
    projector.client().await;
    let output = kpictl(&[
        "verify",
        "--addr",
        &projector.addr,
        "--units",
        &units_arg,
        "--nats-url",
        &nats.url(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "khác nhau: đơn vị {unit} ngày {day} chỉ số received: đang chạy "
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("nguyên nhân: theo tệp đơn vị"), "{stdout}");

    // verify given a units file that ends C31_2 before its events: the
    // differences are named as the units file's doing.
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&units).unwrap()).unwrap();
    for unit in file["units"].as_array_mut().unwrap() {
        if unit["id"] == "C31_2" {
            unit["valid_to"] = json!("2025-01-31");
        }
    }
    let narrowed = dir.path().join("units-narrowed.json");
    std::fs::write(&narrowed, file.to_string()).unwrap();
    let output = kpictl(&[
        "verify",
        "--addr",
        &projector.addr,
        "--units",
        narrowed.to_str().unwrap(),
        "--nats-url",
        &nats.url(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("nguyên nhân: theo tệp đơn vị") && stdout.contains("của đơn vị C31_2"),
        "{stdout}"
    );

    // The projector itself refuses that file for its views (status 78),
    // naming the unit and the rebuild.
    projector.terminate();
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, stderr) = kpi_e2e::run_to_end(
        &kpi_e2e::binaries().projector,
        &[
            "--nats-url",
            &nats.url(),
            "--units",
            narrowed.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &listen,
        ],
    );
    assert_eq!(
        status,
        Some(kpi_bus::EXIT_NEEDS_OPERATOR as i32),
        "{stderr}"
    );
    assert!(
        stderr.contains("C31_2") && stderr.contains("move its data directory aside"),
        "{stderr}"
    );
}

/// Adds one to the `received` counter of the first day of the first
/// stored month, as damage on disk would (the month's total left as it
/// was); returns the unit and the day.
fn tamper_with_a_day_counter(views: &std::path::Path) -> (String, String) {
    let db = sled::open(views).unwrap();
    let tree = db.open_tree("views").unwrap();
    let (key, value) = tree.scan_prefix(b"M").next().unwrap().unwrap();
    let nul = key.iter().position(|b| *b == 0).unwrap();
    let unit = String::from_utf8(key[1..nul].to_vec()).unwrap();
    let month = u32::from_be_bytes(key[key.len() - 4..].try_into().unwrap()) ^ 0x8000_0000;
    let mut stored = kpi_store::rows::MonthRows::decode(&value).unwrap();
    let (&day, counters) = stored.days.iter_mut().next().unwrap();
    counters[kpi_domain::Counter::Received] += 1;
    tree.insert(key, stored.encode()).unwrap();
    db.flush().unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(month as i32 / 12, month % 12 + 1, u32::from(day));
    (unit, date.unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_recreated_under_a_running_projector_stops_it_within_15_s() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = example_path("units.json");
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let bus = Bus::connect(&nats.url(), "recreate-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    let lines = event_lines();
    publish_all(&bus, example_messages(&lines[..300])).await;
    folded(&mut projector, &bus, "P46").await;

    bus.jetstream()
        .delete_stream(kpi_bus::STREAM_NAME)
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, example_messages(&lines[300..350])).await;
    let started = Instant::now();
    let status = projector.wait_for_exit(Duration::from_secs(15));
    assert!(!status.success(), "stopped in {:?}", started.elapsed());
    // An operator must act: the systemd unit does not restart on it.
    assert_eq!(
        status.code(),
        Some(kpi_bus::EXIT_NEEDS_OPERATOR as i32),
        "{}",
        projector.log()
    );
    let log = projector.log();
    assert!(
        log.contains("rebuild"),
        "the message says what to do: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blue_green_rebuild_keeps_answering_and_ends_equal_to_the_log() {
    const EVENTS: usize = 100_000;
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units_path = dir.path().join("units.json");
    std::fs::write(&units_path, synthetic_registry(1, 4, 5)).unwrap();
    let units = UnitRegistry::from_json(&std::fs::read(&units_path).unwrap()).unwrap();
    let events = simulated_messages(&units, 7, (365, 20.0), EVENTS);
    let bus = Bus::connect(&nats.url(), "rebuild-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, events).await;
    let data_dir = dir.path().join("views");
    let mut projector = Projector::start(&nats.url(), &units_path, &data_dir, &[]);
    let last = folded(&mut projector, &bus, "P00").await;
    let before = rates(&mut projector, "P00", "2025").await;

    let output = kpictl(&["rebuild", "--addr", &projector.addr]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("rebuilding the views"));

    // Queries go on while the new views are built; the switch shows as the
    // `current` link moving to views-2.
    let mut client = projector.client().await;
    let started = Instant::now();
    let mut answered = 0;
    loop {
        let reply = client
            .get_rates(GetRatesRequest {
                unit_id: "P00".into(),
                period: "2025".into(),
                min_stream_sequence: None,
            })
            .await
            .expect("answers during the rebuild");
        assert_eq!(reply.into_inner().counts, before.counts);
        answered += 1;
        let current = std::fs::read_link(data_dir.join("current")).unwrap();
        if current == std::path::Path::new("views-2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no switch; log:\n{}",
            projector.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        answered > 10,
        "queries answered during the rebuild: {answered}"
    );
    let after = rates(&mut projector, "P00", "2025").await;
    assert_eq!(after.stream_sequence, last);
    assert_eq!(after.counts, before.counts);

    let output = kpictl(&[
        "verify",
        "--addr",
        &projector.addr,
        "--units",
        units_path.to_str().unwrap(),
        "--nats-url",
        &nats.url(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_copy_stays_at_its_sequence_while_the_live_projector_moves_on() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = example_path("units.json");
    let units_arg = units.to_str().unwrap().to_owned();
    let mut live = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let bus = Bus::connect(&nats.url(), "frozen-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    let lines = event_lines();
    let (first_half, second_half) = lines.split_at(lines.len() / 2);
    publish_all(&bus, example_messages(first_half)).await;
    let middle = folded(&mut live, &bus, "P46").await;

    let replayed = dir.path().join("audit");
    let output = kpictl(&[
        "replay",
        "--data-dir",
        replayed.to_str().unwrap(),
        "--until",
        &middle.to_string(),
        "--units",
        &units_arg,
        "--nats-url",
        &nats.url(),
    ]);
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(said.contains("projector --frozen --data-dir"), "{said}");

    // The copy, served against the live stream, and events going on.
    let mut frozen = Projector::start(&nats.url(), &units, &replayed, &["--frozen"]);
    let mut client = frozen.client().await;
    assert_eq!(Projector::sequence(&mut client, "P46").await, middle);
    publish_all(&bus, example_messages(second_half)).await;
    let end = folded(&mut live, &bus, "P46").await;
    assert!(end > middle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(Projector::sequence(&mut client, "P46").await, middle);

    // Asked for what it will never reflect: refused at once, saying why.
    let started = Instant::now();
    let refused = client
        .get_rates(GetRatesRequest {
            unit_id: "P46".into(),
            period: "2024-01-01".into(),
            min_stream_sequence: Some(end),
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("frozen audit copy"),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        frozen.log().contains("answered from a frozen audit copy"),
        "{}",
        frozen.log()
    );
}
