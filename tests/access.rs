//! Access (CONTRACT §8) through the real projector: TLS with a CA made
//! here, bearer tokens scoped to a district, the operator's calls, a
//! tokens file read again on SIGHUP, and no open port on the network.

use std::path::Path;
use std::time::{Duration, Instant};

use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::{GetRatesRequest, ListRejectedRequest, ListUnitsRequest, RankUnitsRequest};
use kpi_api::Bearer;
use kpi_bus::EXIT_NEEDS_OPERATOR;
use kpi_e2e::{binaries, free_port, run_to_end, tokens_file, Projector, TestCa};
use local_nats::LocalNats;
use tonic::codegen::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const UNITS: &str = r#"{"units": [
  {"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province"},
  {"id": "D1", "name": "Huyện Một", "level": "district", "parent": "51"},
  {"id": "D2", "name": "Huyện Hai", "level": "district", "parent": "51"},
  {"id": "C11", "name": "Xã Một Một", "level": "commune", "parent": "D1"},
  {"id": "C12", "name": "Xã Một Hai", "level": "commune", "parent": "D1"},
  {"id": "C21", "name": "Xã Hai Một", "level": "commune", "parent": "D2"}
]}"#;

const DISTRICT_TOKEN: &str = "kpi_district-one-reader";
const OPERATOR_TOKEN: &str = "kpi_province-operator";

type Client = KpiServiceClient<InterceptedService<Channel, Bearer>>;

/// A TLS channel to `port` trusting `ca`, once the server answers.
async fn tls_channel(port: u16, ca: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .unwrap();
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(err) => assert!(
                started.elapsed() < Duration::from_secs(20),
                "no TLS connection: {err:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client(channel: &Channel, token: Option<&str>) -> Client {
    KpiServiceClient::with_interceptor(channel.clone(), Bearer::new(token).unwrap())
}

fn rates(unit_id: &str) -> GetRatesRequest {
    GetRatesRequest {
        unit_id: unit_id.into(),
        period: "2025".into(),
        min_stream_sequence: None,
    }
}

async fn refusal(client: &mut Client, unit_id: &str) -> Code {
    client
        .get_rates(rates(unit_id))
        .await
        .expect_err("must be refused")
        .code()
}

#[tokio::test]
async fn a_district_token_reads_its_communes_over_tls_and_nothing_else() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let units = write("units.json", UNITS);
    let test_ca = TestCa::new("KPI test CA");
    let ca = test_ca.pem.clone();
    let (cert, key) = test_ca.sign(&["localhost", "127.0.0.1"]);
    let (cert, key) = (write("server.pem", &cert), write("server.key", &key));
    let tokens = write(
        "tokens.json",
        &tokens_file(&[
            ("Phòng Nội vụ Huyện Một", DISTRICT_TOKEN, "D1", "reader"),
            ("Vận hành", OPERATOR_TOKEN, "*", "operator"),
        ]),
    );
    let projector = Projector::start(
        &nats.url(),
        Path::new(&units),
        &dir.path().join("views"),
        &["--tls-cert", &cert, "--tls-key", &key, "--tokens", &tokens],
    );
    let port: u16 = projector.addr.rsplit(':').next().unwrap().parse().unwrap();
    let channel = tls_channel(port, &ca).await;

    // Health answers without a token.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    // The district reads itself and its communes, as the operator sees them.
    let mut district = client(&channel, Some(DISTRICT_TOKEN));
    let mut operator = client(&channel, Some(OPERATOR_TOKEN));
    for unit in ["D1", "C11", "C12"] {
        let read = district
            .get_rates(rates(unit))
            .await
            .expect(unit)
            .into_inner();
        let seen = operator.get_rates(rates(unit)).await.unwrap().into_inner();
        assert_eq!(read, seen, "{unit}");
    }
    // Another district's commune, the province above and an unknown unit:
    // PERMISSION_DENIED, the unknown one too.
    for unit in ["C21", "D2", "51", "NO-SUCH-UNIT"] {
        assert_eq!(
            refusal(&mut district, unit).await,
            Code::PermissionDenied,
            "{unit}"
        );
    }
    assert_eq!(refusal(&mut operator, "NO-SUCH-UNIT").await, Code::NotFound);
    let status = district.get_rates(rates("C21")).await.unwrap_err();
    assert!(
        status.message().contains("Phòng Nội vụ Huyện Một") && status.message().contains("D1"),
        "{}",
        status.message()
    );

    // ListUnits shows the district's subtree only; RankUnits the same.
    let roots = district
        .list_units(ListUnitsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .units;
    assert_eq!(
        roots.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["D1"]
    );
    let status = district
        .list_units(ListUnitsRequest {
            parent_id: "51".into(),
            as_of: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let ranked = district
        .rank_units(RankUnitsRequest {
            parent_id: "D1".into(),
            period: "2025".into(),
            kpi: "on_time_rate".into(),
        })
        .await
        .expect("rank the district's communes")
        .into_inner();
    assert_eq!(ranked.units.len(), 2);

    // The audit calls are the operator's.
    let status = district
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    operator
        .list_rejected(ListRejectedRequest::default())
        .await
        .expect("the operator lists what was kept aside");

    // No token, or one the file does not hold: UNAUTHENTICATED.
    assert_eq!(
        refusal(&mut client(&channel, None), "C11").await,
        Code::Unauthenticated
    );
    assert_eq!(
        refusal(&mut client(&channel, Some("kpi_guessed")), "C11").await,
        Code::Unauthenticated
    );

    // A plain connection to the TLS port gets no answer.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let answered = match plain.connect().await {
        Err(_) => false,
        Ok(channel) => HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_ok(),
    };
    assert!(
        !answered,
        "a plain connection must not be answered on the TLS port"
    );

    // SIGHUP: the file as it is now. The district's token is revoked, a
    // new one for the province is in force.
    std::fs::write(
        &tokens,
        tokens_file(&[("Sở Nội vụ", "kpi_province-reader", "51", "reader")]),
    )
    .unwrap();
    let pid = projector.pid().expect("running").to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut province = client(&channel, Some("kpi_province-reader"));
    let started = Instant::now();
    while province.get_rates(rates("C21")).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new token is not in force 10 s after SIGHUP; log:\n{}",
            projector.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refusal(&mut district, "C11").await, Code::Unauthenticated);
    projector.terminate();
}

#[test]
fn a_projector_open_to_the_network_without_tokens_refuses_to_start() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let (status, stderr) = run_to_end(
        &binaries().projector,
        &[
            "--nats-url",
            &nats.url(),
            "--units",
            units.to_str().unwrap(),
            "--data-dir",
            dir.path().join("views").to_str().unwrap(),
            "--listen",
            &listen,
        ],
    );
    assert_eq!(status, Some(EXIT_NEEDS_OPERATOR as i32), "{stderr}");
    assert!(stderr.contains("--tokens"), "says what to give: {stderr}");
}

fn case_event(case: &str, unit: &str, id: u32) -> (String, Vec<u8>) {
    let event = serde_json::json!({
        "event_id": format!("00000000-0000-4000-8000-{id:012}"), "kind": "case.received",
        "case_id": case, "unit_id": unit, "occurred_at": "2025-03-03T08:00:00+07:00",
        "data": {"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
                 "due_at": "2025-03-05T17:00:00+07:00"}});
    (
        format!("cases.{unit}.case.received"),
        event.to_string().into_bytes(),
    )
}

fn invalid_event(case: &str, unit: &str, id: u32) -> (String, Vec<u8>) {
    let event = serde_json::json!({
        "event_id": format!("00000000-0000-4000-8000-{id:012}"), "kind": "case.rated",
        "case_id": case, "unit_id": unit, "occurred_at": "2025-03-04T08:00:00+07:00",
        "data": {"level": "great"}});
    (
        format!("cases.{unit}.case.rated"),
        event.to_string().into_bytes(),
    )
}

/// CONTRACT §8: an operator scoped to a district audits its own units
/// only, and may not rebuild every unit's views; a reader's open watch
/// ends when its token leaves the file.
#[tokio::test(flavor = "multi_thread")]
async fn a_district_operator_audits_its_district_only_and_a_revoked_watch_ends() {
    const DISTRICT_OPERATOR: &str = "kpi_district-one-operator";
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, UNITS).unwrap();
    let tokens = dir.path().join("tokens.json");
    let all_tokens = [
        ("Phòng Nội vụ Huyện Một", DISTRICT_TOKEN, "D1", "reader"),
        ("Vận hành Huyện Một", DISTRICT_OPERATOR, "D1", "operator"),
        ("Vận hành", OPERATOR_TOKEN, "*", "operator"),
    ];
    std::fs::write(&tokens, tokens_file(&all_tokens)).unwrap();
    let projector = Projector::start(
        &nats.url(),
        &units,
        &dir.path().join("views"),
        &["--tokens", tokens.to_str().unwrap()],
    );
    let bus = kpi_bus::Bus::connect(&nats.url(), "access-test")
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();
    kpi_e2e::publish_all(
        &bus,
        [
            case_event("D1-CASE", "C11", 1),
            case_event("D2-CASE", "C21", 2),
            invalid_event("D1-CASE", "C11", 3),
            invalid_event("D2-CASE", "C21", 4),
            invalid_event("NOWHERE-CASE", "C99", 5),
        ],
    )
    .await;
    let endpoint = Endpoint::from_shared(projector.addr.clone()).unwrap();
    let started = Instant::now();
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(err) => assert!(
                started.elapsed() < Duration::from_secs(20),
                "the projector does not answer: {err:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut everything = client(&channel, Some(OPERATOR_TOKEN));
    let started = Instant::now();
    loop {
        let reply = everything
            .get_rates(rates("51"))
            .await
            .unwrap()
            .into_inner();
        if reply.stream_sequence >= 5 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not folded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut district = client(&channel, Some(DISTRICT_OPERATOR));
    let case = |code: &str| kpi_api::pb::GetCaseRequest {
        case_id: code.into(),
    };
    district
        .get_case(case("D1-CASE"))
        .await
        .expect("its own district's case");
    let status = district.get_case(case("D2-CASE")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    everything
        .get_case(case("D2-CASE"))
        .await
        .expect("scope * reads every case");
    let status = district
        .rebuild(kpi_api::pb::RebuildRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let listed = district
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap()
        .into_inner();
    let subjects: Vec<&str> = listed.events.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, ["cases.C11.case.rated"]);
    assert_eq!(listed.total_rejected, 1);
    let listed = everything
        .list_rejected(ListRejectedRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.total_rejected, 3,
        "scope * also sees the unknown unit's"
    );

    // A reader's watch, then its token leaves the file.
    let mut reader = client(&channel, Some(DISTRICT_TOKEN));
    let mut watch = reader
        .watch_rates(rates("C11"))
        .await
        .expect("the reader watches its commune")
        .into_inner();
    watch.message().await.expect("the first answer").unwrap();
    std::fs::write(
        &tokens,
        tokens_file(&[("Vận hành", OPERATOR_TOKEN, "*", "operator")]),
    )
    .unwrap();
    let pid = projector.pid().expect("running").to_string();
    let revoked_at = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the revoked watch ends within 5 s");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    projector.terminate();
}
