//! The example scenario end to end: a real nats-server, the projector
//! process, `kpictl import`, and the gRPC API. Every answer must equal
//! tests/data/example/expected.json, however the events arrive.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use kpi_api::pb::{GetRatesRequest, ListRejectedRequest, ListUnitsRequest};
use kpi_bus::Bus;
use kpi_e2e::{differences_from_expected, kpictl, publish_all, relaid, Projector};
use kpi_testkit::{event_lines, example_path, subject_of, INVALID_LINES};
use local_nats::LocalNats;
use tonic::Code;

const FOLD_TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    nats: LocalNats,
    bus: Bus,
    projector: Projector,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let projector = Projector::start(
        &nats.url(),
        &example_path("units.json"),
        &dir.path().join("views"),
        &[],
    );
    let bus = Bus::connect(&nats.url(), "scenario-test")
        .await
        .expect("connect");
    bus.ensure_stream().await.expect("stream");
    Setup {
        nats,
        bus,
        projector,
        _dir: dir,
    }
}

/// Publishes lines straight onto the bus as a provincial system would:
/// on `cases.<unit_id>.<kind>`, with `Nats-Msg-Id` the hash of the line.
async fn publish_lines(bus: &Bus, lines: &[(usize, &[u8])]) {
    let messages = lines
        .iter()
        .map(|(_, line)| (subject_of(line), line.to_vec()));
    publish_all(bus, messages).await;
}

/// The same lines in another layout: bodies JetStream stores, as it
/// would byte-identical ones after its duplicate window.
async fn publish_relaid_lines(bus: &Bus, lines: &[(usize, &[u8])]) {
    let messages = lines
        .iter()
        .map(|(_, line)| (subject_of(line), relaid(line)));
    publish_all(bus, messages).await;
}

async fn wait_until_folded(setup: &mut Setup) {
    let last = setup.bus.last_sequence().await.expect("stream info");
    setup.projector.wait_for("P46", last, FOLD_TIMEOUT).await;
}

/// The invalid events kept aside (not the example's identity-conflict
/// loser, kept aside too), as (payload, field, reason).
async fn parked_payloads(setup: &mut Setup) -> Vec<(Vec<u8>, String, String)> {
    let mut client = setup.projector.client().await;
    let reply = client
        .list_rejected(ListRejectedRequest {
            after_sequence: 0,
            limit: 1000,
        })
        .await
        .expect("ListRejected")
        .into_inner();
    assert_eq!(reply.total_rejected as usize, reply.events.len());
    let conflicts = reply
        .events
        .iter()
        .filter(|e| e.cause == "conflict")
        .count();
    assert_eq!(
        conflicts, 1,
        "the same event id and content under two units"
    );
    reply
        .events
        .into_iter()
        .filter(|e| e.cause == "invalid")
        .map(|e| (e.payload, e.field, e.reason))
        .collect()
}

fn line_text(number: usize) -> Vec<u8> {
    event_lines()
        .into_iter()
        .find(|(n, _)| *n == number)
        .expect("line")
        .1
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn half_on_the_bus_half_through_kpictl_import_gives_expected_json() {
    let mut setup = setup().await;
    let lines = event_lines();
    let (direct, imported): (Vec<_>, Vec<_>) =
        lines.iter().partition(|(number, _)| number % 2 == 0);

    publish_lines(&setup.bus, &direct).await;

    // The other half goes through `kpictl import`, from a file of its own.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("half.ndjson");
    let mut out = std::fs::File::create(&file).unwrap();
    for (_, line) in &imported {
        out.write_all(line).unwrap();
        out.write_all(b"\n").unwrap();
    }
    drop(out);
    let units = example_path("units.json");
    let output = kpictl(&[
        "import",
        file.to_str().unwrap(),
        "--json",
        "--units",
        units.to_str().unwrap(),
        "--nats-url",
        &setup.nats.url(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "rejected lines make the exit status 1: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("--json report");
    let rejected: BTreeSet<usize> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            assert!(!item["reason"].as_str().unwrap().is_empty());
            // Line numbers of the file map back to the scenario's.
            imported[item["line"].as_u64().unwrap() as usize - 1].0
        })
        .collect();
    let invalid_imported: BTreeSet<usize> = INVALID_LINES
        .iter()
        .copied()
        .filter(|n| n % 2 == 1)
        .collect();
    assert_eq!(rejected, invalid_imported);
    assert_eq!(
        report["accepted"].as_u64().unwrap() as usize,
        imported.len() - invalid_imported.len()
    );

    wait_until_folded(&mut setup).await;
    let mut client = setup.projector.client().await;
    assert_eq!(
        differences_from_expected(&mut client).await,
        Vec::<String>::new()
    );

    // The invalid lines published straight onto the bus are parked with
    // their reason, verbatim.
    let parked = parked_payloads(&mut setup).await;
    let expected_parked: BTreeSet<Vec<u8>> = INVALID_LINES
        .iter()
        .filter(|n| *n % 2 == 0)
        .map(|n| line_text(*n))
        .collect();
    let parked_set: BTreeSet<Vec<u8>> = parked
        .iter()
        .map(|(payload, _, _)| payload.clone())
        .collect();
    assert_eq!(parked_set, expected_parked);
    for (payload, field, reason) in &parked {
        assert!(!reason.is_empty(), "{}", String::from_utf8_lossy(payload));
        if payload.as_slice() != b"{this is not json" {
            assert!(!field.is_empty(), "{reason}");
            assert!(
                reason.contains(field.as_str()),
                "the reason names the field: {reason}"
            );
        }
    }
    let total_rejected = parked.len() + rejected.len();
    assert_eq!(total_rejected, kpi_testkit::expected().rejected_lines);

    // `kpictl rates --json` gives the same answer as the API.
    let query = &kpi_testkit::expected().queries[0];
    let output = kpictl(&[
        "rates",
        "--unit",
        &query.unit_id,
        "--period",
        &query.period,
        "--json",
        "--addr",
        &setup.projector.addr,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["unit_name"], "Tỉnh Thừa Thiên Huế",
        "UTF-8 survives end to end"
    );
    for (kpi, want) in &query.rates {
        assert_eq!(
            json["rates"][kpi]["numerator"].as_u64(),
            Some(want.numerator),
            "{kpi}"
        );
        assert_eq!(
            json["rates"][kpi]["denominator"].as_u64(),
            Some(want.denominator),
            "{kpi}"
        );
    }
    let table = kpictl(&[
        "rates",
        "--unit",
        &query.unit_id,
        "--period",
        &query.period,
        "--addr",
        &setup.projector.addr,
    ]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("Hồ sơ giải quyết đúng hạn") && table.contains("52/67"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reverse_arrival_order_gives_expected_json() {
    let mut setup = setup().await;
    let mut lines = event_lines();
    lines.reverse();
    publish_lines(&setup.bus, &lines).await;
    wait_until_folded(&mut setup).await;
    let mut client = setup.projector.client().await;
    assert_eq!(
        differences_from_expected(&mut client).await,
        Vec::<String>::new()
    );
    assert_eq!(parked_payloads(&mut setup).await.len(), INVALID_LINES.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_sent_twice_even_past_the_dedup_window_counts_once() {
    let mut setup = setup().await;
    let lines = event_lines();
    publish_lines(&setup.bus, &lines).await;
    // The second copies differ in layout: JetStream stores them, as it
    // would after its duplicate window; only the projector can drop them.
    publish_relaid_lines(&setup.bus, &lines).await;
    let stored = setup.bus.last_sequence().await.unwrap();
    assert!(
        stored as usize > lines.len() + lines.len() / 2,
        "the copies are in the stream: {stored}"
    );
    wait_until_folded(&mut setup).await;
    let mut client = setup.projector.client().await;
    assert_eq!(
        differences_from_expected(&mut client).await,
        Vec::<String>::new()
    );
    assert_eq!(
        parked_payloads(&mut setup).await.len(),
        2 * INVALID_LINES.len(),
        "each copy of an invalid line is parked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_refuses_unknown_units_and_bad_periods_with_actionable_messages() {
    let mut setup = setup().await;
    let mut client = setup.projector.client().await;
    let status = client
        .get_rates(GetRatesRequest {
            unit_id: "NO_SUCH_UNIT".into(),
            period: "2025".into(),
            min_stream_sequence: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("NO_SUCH_UNIT"),
        "{}",
        status.message()
    );

    for period in [
        "2025-Q5",
        "Q1",
        "2025/03",
        "R2025-H1",
        "2025-03-15..2025-01-01",
    ] {
        let status = client
            .get_rates(GetRatesRequest {
                unit_id: "P46".into(),
                period: period.into(),
                min_stream_sequence: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{period}");
        for form in [
            "2024-H1",
            "2024-Q1",
            "R2024-Q1",
            "R2024-6M",
            "R2024-03",
            "2024-03-15..2024-06-14",
        ] {
            assert!(
                status.message().contains(form),
                "{period}: {}",
                status.message()
            );
        }
    }

    let roots = client
        .list_units(ListUnitsRequest {
            parent_id: String::new(),
            as_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = roots.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["Tỉnh Thừa Thiên Huế", "Thành phố Hải Phòng"]);
    let communes = client
        .list_units(ListUnitsRequest {
            parent_id: "P31".into(),
            as_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        communes.units.len(),
        5,
        "communes directly under the province"
    );

    // The standard health service answers SERVING.
    let channel = tonic::transport::Endpoint::from_shared(setup.projector.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kpi.v1.KpiService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // kpictl reports API refusals and exits non-zero.
    let output = kpictl(&[
        "rates",
        "--unit",
        "P46",
        "--period",
        "2025-Q5",
        "--addr",
        &setup.projector.addr,
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("accepted forms"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_targets_file_overrides_the_defaults_by_year_and_unit() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.json");
    std::fs::write(
        &targets,
        r#"{"targets": [
            {"year": 2025, "rates": {"on_time_rate": 77, "satisfaction_rate": 95}},
            {"year": 2025, "unit_id": "D46-0", "rates": {"on_time_rate": 60}}
        ]}"#,
    )
    .unwrap();
    let units = example_path("units.json");
    let mut projector = Projector::start(
        &nats.url(),
        &units,
        &dir.path().join("views"),
        &["--targets", targets.to_str().unwrap()],
    );
    let bus = Bus::connect(&nats.url(), "targets-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_lines(&bus, &event_lines()).await;
    projector
        .wait_for("P46", bus.last_sequence().await.unwrap(), FOLD_TIMEOUT)
        .await;
    let client = projector.client().await;
    let rate = |unit: &str, period: &str, kpi: &str| {
        let request = GetRatesRequest {
            unit_id: unit.into(),
            period: period.into(),
            min_stream_sequence: None,
        };
        let kpi = kpi.to_owned();
        let mut client = client.clone();
        async move {
            let reply = client.get_rates(request).await.unwrap().into_inner();
            reply
                .rates
                .into_iter()
                .find(|rate| rate.kpi == kpi)
                .unwrap()
        }
    };
    // The whole year's override: 52/67 = 77.61% meets 77.
    let on_time = rate("P46", "2025-Q1", "on_time_rate").await;
    assert_eq!(
        (on_time.target_percent, on_time.met),
        (Some(77.0), Some(true))
    );
    assert_eq!(
        rate("P46", "2025-Q1", "satisfaction_rate")
            .await
            .target_percent,
        Some(95.0)
    );
    // A district's override reaches its communes; others keep the year's.
    assert_eq!(
        rate("C46-0-1", "2025", "on_time_rate").await.target_percent,
        Some(60.0)
    );
    assert_eq!(
        rate("C46-1-2", "2025", "on_time_rate").await.target_percent,
        Some(77.0)
    );
    // Other years and KPIs keep the defaults (R2025 starts in 2024).
    assert_eq!(
        rate("P46", "R2025", "on_time_rate").await.target_percent,
        Some(97.0)
    );
    assert_eq!(
        rate("P46", "2025-Q1", "online_payment_rate")
            .await
            .target_percent,
        Some(60.0)
    );
    drop(client);

    // A targets file with a mistake stops the projector with the entry at fault.
    std::fs::write(
        &targets,
        r#"{"targets": [{"year": 2025, "rates": {"late_rate": 3}}]}"#,
    )
    .unwrap();
    let output = std::process::Command::new(&kpi_e2e::binaries().projector)
        .args([
            "--units",
            units.to_str().unwrap(),
            "--targets",
            targets.to_str().unwrap(),
        ])
        .args([
            "--data-dir",
            dir.path().join("other").to_str().unwrap(),
            "--nats-url",
            &nats.url(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("targets[0]: late_rate is informational"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_stream_stops_the_projector_instead_of_mixing_two_logs() {
    let Setup {
        nats,
        bus,
        mut projector,
        _dir,
    } = setup().await;
    let lines = event_lines();
    publish_lines(&bus, &lines[..100]).await;
    let folded = bus.last_sequence().await.unwrap();
    projector.wait_for("P46", folded, FOLD_TIMEOUT).await;
    let data_dir = projector.data_dir.clone();
    projector.terminate();

    // The stream is lost and recreated; more events than before arrive.
    bus.jetstream()
        .delete_stream(kpi_bus::STREAM_NAME)
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();
    publish_lines(&bus, &lines[100..400]).await;

    let units = example_path("units.json");
    let mut restarted = Projector::start(&nats.url(), &units, &data_dir, &[]);
    let status = restarted.wait_for_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = restarted.log();
    assert!(log.contains("it was recreated"), "{log}");
}
