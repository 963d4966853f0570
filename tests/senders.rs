//! Who may send (CONTRACT §7.2, §8, §8.1) through the real processes:
//! sender tokens on the ingest services over TLS, the sender named on
//! every stored event and in `GetCase`, an OpenCPS-style DVCQG sync played
//! step by step, the limits every post is held to, and the start-up
//! refusals (an open port, a token in clear, a NATS login refused).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kpi_api::pb::{GetCaseRequest, GetRatesRequest};
use kpi_bus::{Bus, EXIT_NEEDS_OPERATOR};
use kpi_e2e::{binaries, free_port, tokens_file, IngestService, Projector, TestCa};
use local_nats::LocalNats;
use serde_json::{json, Value};
use uuid::Uuid;

const FOLD_TIMEOUT: Duration = Duration::from_secs(60);

/// A province with a district of two communes, and a commune straight
/// under the province; two communes known to the national portal.
const UNITS: &str = r#"{"units": [
  {"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province"},
  {"id": "D1", "name": "Huyện Một", "level": "district", "parent": "51"},
  {"id": "C11", "name": "Xã Một Một", "level": "commune", "parent": "D1",
   "dvcqg_code": "000.00.31.H31"},
  {"id": "C12", "name": "Xã Một Hai", "level": "commune", "parent": "D1"},
  {"id": "C21", "name": "Xã Hai Một", "level": "commune", "parent": "51",
   "dvcqg_code": "000.00.32.H32"}
]}"#;

/// The one-stop software of commune C11: a name with Vietnamese letters,
/// which must reach the log and the audit intact.
const SENDER_NAME: &str = "Phần mềm một cửa Xã Một Một";
const SENDER_TOKEN: &str = "kpi_sender-c11-3f9a";
const READER_TOKEN: &str = "kpi_reader-province-77b1";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn the_tokens() -> String {
    tokens_file(&[
        (SENDER_NAME, SENDER_TOKEN, "C11", "sender"),
        ("Sở Nội vụ", READER_TOKEN, "51", "reader"),
    ])
}

fn received(case_id: &str, unit_id: &str) -> Value {
    json!({
        "event_id": Uuid::new_v4().to_string(),
        "kind": "case.received",
        "case_id": case_id,
        "unit_id": unit_id,
        "occurred_at": "2025-03-03T08:00:00+07:00",
        "data": {"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
                 "due_at": "2025-03-05T17:00:00+07:00"},
    })
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|event| format!("{event}\n")).collect()
}

async fn last_sequence(nats: &LocalNats) -> u64 {
    Bus::connect(&nats.url(), "senders-test")
        .await
        .expect("connect")
        .last_sequence()
        .await
        .expect("the stream")
}

async fn rates(projector: &mut Projector, nats: &LocalNats, unit_id: &str) -> Value {
    let last = last_sequence(nats).await;
    projector.wait_for(unit_id, last, FOLD_TIMEOUT).await;
    let counts = projector
        .client()
        .await
        .get_rates(GetRatesRequest {
            unit_id: unit_id.into(),
            period: "2025".into(),
            min_stream_sequence: None,
        })
        .await
        .expect("GetRates")
        .into_inner()
        .counts;
    json!(counts)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_token_stores_its_units_only_and_every_event_names_its_sender() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = write(dir.path(), "units.json", UNITS);
    let tokens = write(dir.path(), "tokens.json", &the_tokens());
    let ca = TestCa::new("Sở TTTT Quảng Ngãi (test)");
    let (_, cert, key) = ca.write_server_files(dir.path());
    let mut projector = Projector::start(&nats.url(), &units, &dir.path().join("views"), &[]);
    let intake = IngestService::start_tls(
        "intake",
        &nats.url(),
        &units,
        dir.path(),
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &ca,
    )
    .await;
    assert!(intake.url.starts_with("https://"));
    let before = last_sequence(&nats).await;
    let body = || {
        ndjson(&[
            received("C11-250303-0001", "C11"),
            received("C21-250303-0001", "C21"),
        ])
    };

    // No token, a token the file does not hold, a reader's: nothing stored.
    let (status, answer, _) = intake
        .post("/v1/events", "application/x-ndjson", body())
        .await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("Authorization"),
        "{answer}"
    );
    let (status, answer) = intake.post_events_as("kpi_not-a-token", body()).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = intake.post_events_as(READER_TOKEN, body()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("Sở Nội vụ"),
        "names the token: {answer}"
    );
    assert_eq!(last_sequence(&nats).await, before, "nothing stored");

    // The commune's token: its own line stored, the other commune's refused.
    let (status, answer) = intake.post_events_as(SENDER_TOKEN, body()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["accepted"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["accepted"][0]["line"], 1);
    assert_eq!(
        answer["rejected"],
        json!([{"line": 2, "field": "unit_id",
                "reason": format!("unit C21 is outside the scope of sender '{SENDER_NAME}'")}])
    );
    let sequence = answer["accepted"][0]["stream_sequence"].as_u64().unwrap();
    assert_eq!(last_sequence(&nats).await, before + 1);

    // The stored message says who sent it, UTF-8 intact.
    let stored = Bus::connect(&nats.url(), "senders-test")
        .await
        .unwrap()
        .message_at(sequence)
        .await
        .unwrap()
        .expect("the stored event");
    assert_eq!(stored.sender.as_deref(), Some(SENDER_NAME));

    // GetCase and `kpictl case` name the sender.
    let counts = rates(&mut projector, &nats, "C11").await;
    assert_eq!(counts["received"], 1, "{counts}");
    let case = projector
        .client()
        .await
        .get_case(GetCaseRequest {
            case_id: "C11-250303-0001".into(),
        })
        .await
        .expect("GetCase")
        .into_inner();
    assert_eq!(case.events.len(), 1);
    assert_eq!(case.events[0].sender, SENDER_NAME);
    let output = kpi_e2e::kpictl(&["case", "C11-250303-0001", "--addr", &projector.addr]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains(&format!("người gửi: {SENDER_NAME}")),
        "{printed}"
    );

    // The tokens file read again on SIGHUP: the revoked token is refused.
    write(
        dir.path(),
        "tokens.json",
        &tokens_file(&[("Sở Nội vụ", READER_TOKEN, "51", "reader")]),
    );
    let pid = intake.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    loop {
        let (status, answer) = intake
            .post_events_as(SENDER_TOKEN, ndjson(&[received("C11-250303-0002", "C11")]))
            .await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the revoked token still sends after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One dossier of commune C11 as OpenCPS sends it (no personal data: the
/// adapter's handling of that is tested in tests/ingest.rs).
fn dossier(code: &str) -> Value {
    json!({
        "MaHoSo": code, "MaTTHC": "1.001193", "TenTTHC": "Thủ tục đăng ký khai sinh",
        "MaLinhVuc": "G09-TP03", "TenLinhVuc": "Hộ tịch", "KenhThucHien": "2",
        "NgayTiepNhan": "20250310091512", "NgayHenTra": "20250311170000", "TrangThaiHoSo": "4",
        "NgayTra": "", "ThongTinTra": "", "HinhThuc": "0", "NgayKetThucXuLy": "",
        "NoiNopHoSo": "2", "HoSoCoThanhPhanSoHoa": "1", "DuocThanhToanTrucTuyen": "0",
        "NgayTuChoi": "", "NgayNopHoSo": "20250310081044",
        "TaiLieuNop": [], "DanhSachLePhi": [], "DanhSachTepDinhKemKhac": [],
        "DanhSachHoSoBoSung": [], "DanhSachGiayToKetQua": []
    })
}

/// intake with the tokens file on loopback (no TLS needed there).
async fn intake_with_tokens(nats: &LocalNats, dir: &Path) -> IngestService {
    let units = write(dir, "units.json", UNITS);
    let tokens = write(dir, "tokens.json", &the_tokens());
    IngestService::start(
        "intake",
        &nats.url(),
        &units,
        dir,
        &["--tokens", tokens.to_str().unwrap()],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opencps_style_sync_runs_unchanged_against_intake() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let intake = intake_with_tokens(&nats, dir.path()).await;
    let mut projector = Projector::start(
        &nats.url(),
        &dir.path().join("units.json"),
        &dir.path().join("views"),
        &[],
    );
    let json_post = |path: &'static str, body: Value| {
        let intake = &intake;
        async move {
            // OpenCPS sends the national portal's `dstcode` header on
            // every call, and no Authorization header.
            let (status, answer, _) = intake
                .post_with(
                    path,
                    "application/json",
                    body.to_string(),
                    &[("dstcode", "000.00.00.G22")],
                )
                .await;
            (status, answer)
        }
    };

    // The login: a wrong password is refused the DVCQG way.
    let (status, answer) = json_post(
        "/v1/dvcqg/auth",
        json!({"username": "motcua-c11", "password": "not-the-token"}),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert_ne!(answer["error_code"], 0, "{answer}");
    assert!(answer["message"].is_string(), "{answer}");
    let (status, answer) = json_post(
        "/v1/dvcqg/auth",
        json!({"username": "motcua-c11", "password": SENDER_TOKEN}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["error_code"], 0, "{answer}");
    let session = answer["session"].as_str().unwrap().to_owned();

    let codes = [
        "000.00.31.H31-250310-0007",
        "000.00.31.H31-250310-0008",
        "000.00.31.H31-250310-0009",
    ];
    for code in codes {
        let (status, answer) = json_post(
            "/v1/dvcqg",
            json!({"session": session, "madonvi": "000.00.31.H31", "service": "TraCuuHoSo",
                   "data": [{"MaHoSo": code}]}),
        )
        .await;
        assert_eq!(
            (status, &answer["error_code"]),
            (200, &json!(0)),
            "{answer}"
        );
        assert_eq!(answer["result"], json!([]), "{answer}");
        let (status, answer) = json_post(
            "/v1/dvcqg",
            json!({"session": session, "madonvi": "000.00.31.H31", "service": "DongBoHoSoMC",
                   "isUpdating": "False", "data": [dossier(code)]}),
        )
        .await;
        assert_eq!(
            (status, &answer["error_code"]),
            (200, &json!(0)),
            "{answer}"
        );
        assert!(answer["message"].is_string(), "{answer}");
        // Only after error_code 0 does OpenCPS send the progress.
        let (status, answer) = json_post(
            "/v1/dvcqg",
            json!({"session": session, "madonvi": "000.00.31.H31",
                   "service": "CapNhatTienDoHoSoMC", "data": [{
                "MaHoSo": code, "NguoiXuLy": "Võ Thị Mai", "ChucDanh": "Công chức",
                "ThoiDiemXuLy": "20250310091512", "PhongBanXuLy": "",
                "NoiDungXuLy": "Tiếp nhận hồ sơ", "TrangThai": "2", "NgayBatDau": "",
                "NgayKetThucTheoQuyDinh": ""}]}),
        )
        .await;
        assert_eq!(
            (status, &answer["error_code"]),
            (200, &json!(0)),
            "{answer}"
        );
    }
    let counts = rates(&mut projector, &nats, "C11").await;
    assert_eq!(counts["received"], 3, "{counts}");

    // Another service: refused naming the three.
    let (status, answer) = json_post(
        "/v1/dvcqg",
        json!({"session": session, "madonvi": "000.00.31.H31", "service": "LayThuTuc",
               "data": []}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_code"], -1, "{answer}");
    for service in ["DongBoHoSoMC", "CapNhatTienDoHoSoMC", "TraCuuHoSo"] {
        assert!(answer.to_string().contains(service), "{answer}");
    }
    // A dossier of another commune, with C11's session: refused naming
    // the scope, error_code -1.
    let (status, answer) = json_post(
        "/v1/dvcqg",
        json!({"session": session, "madonvi": "000.00.32.H32", "service": "DongBoHoSoMC",
               "isUpdating": "False", "data": [dossier("000.00.32.H32-250310-0001")]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_code"], -1, "{answer}");
    assert_eq!(
        answer["rejected"][0]["reason"],
        format!("unit C21 is outside the scope of sender '{SENDER_NAME}'"),
        "{answer}"
    );
    // No session and no header: 401, error_code -1.
    let (status, answer) = json_post(
        "/v1/dvcqg",
        json!({"madonvi": "000.00.31.H31", "service": "DongBoHoSoMC",
               "data": [dossier("000.00.31.H31-250310-0010")]}),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error_code"], -1, "{answer}");
    assert_eq!(rates(&mut projector, &nats, "C11").await["received"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_1001_dossiers_is_refused_whole() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let intake = intake_with_tokens(&nats, dir.path()).await;
    let before = last_sequence(&nats).await;
    let dossiers: Vec<Value> = (0..1001)
        .map(|index| dossier(&format!("000.00.31.H31-250310-{index:04}")))
        .collect();
    let bearer = format!("Bearer {SENDER_TOKEN}");
    let (status, answer, _) = intake
        .post_with(
            "/v1/dvcqg",
            "application/json",
            json!({"madonvi": "000.00.31.H31", "service": "DongBoHoSoMC", "data": dossiers})
                .to_string(),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error_code"], -1, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("1000"),
        "{answer}"
    );
    assert_eq!(last_sequence(&nats).await, before, "nothing stored");
}

/// Opens a connection and sends a post's headers and half its body.
fn half_a_post(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
                 Content-Type: application/x-ndjson\r\nContent-Length: 2000\r\n\r\n{}",
                "x".repeat(1000)
            )
            .as_bytes(),
        )
        .unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_that_stops_halfway_is_cut_off_and_holds_one_of_64_places() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = write(dir.path(), "units.json", UNITS);
    let intake = IngestService::start("intake", &nats.url(), &units, dir.path(), &[]).await;
    let port: u16 = intake.url.rsplit(':').next().unwrap().parse().unwrap();

    // 64 posts that stop halfway hold every place: the next is told to
    // come back.
    let started = Instant::now();
    let stalled: Vec<TcpStream> = (0..64).map(|_| half_a_post(port)).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, answer, headers) = intake
        .post(
            "/v1/events",
            "application/x-ndjson",
            ndjson(&[received("C11-250303-0001", "C11")]),
        )
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");

    // Each stalled post is answered 408 and its connection closed within
    // 15 s of its start.
    let waits: Vec<_> = stalled
        .into_iter()
        .map(|mut stream| {
            tokio::task::spawn_blocking(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut answer = Vec::new();
                let read = stream.read_to_end(&mut answer);
                (read.is_ok(), String::from_utf8_lossy(&answer).into_owned())
            })
        })
        .collect();
    for wait in waits {
        let (closed, answer) = wait.await.unwrap();
        assert!(closed, "the connection was not closed: {answer}");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "disconnected only after {:?}",
        started.elapsed()
    );
    // The places are free again.
    let (status, answer) = intake
        .post_events(ndjson(&[received("C11-250303-0001", "C11")]))
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// Runs a service to its end; its status, its stderr and how long it ran.
fn exit_of(binary: &Path, args: &[&str]) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let (status, stderr) = kpi_e2e::run_to_end(binary, args);
    (status, stderr, started.elapsed())
}

#[test]
fn an_ingest_service_open_to_the_network_or_sending_tokens_in_clear_refuses_to_start() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = write(dir.path(), "units.json", UNITS);
    let tokens = write(dir.path(), "tokens.json", &the_tokens());
    let (units, tokens) = (units.to_str().unwrap(), tokens.to_str().unwrap());
    let nats_url = nats.url();
    for service in ["intake", "resolution", "feedback"] {
        let listen = format!("0.0.0.0:{}", free_port());
        let common = [
            "--nats-url",
            &nats_url,
            "--units",
            units,
            "--listen",
            &listen,
        ];
        let (status, stderr, _) = exit_of(&binaries().service(service), &common);
        assert_eq!(
            status,
            Some(EXIT_NEEDS_OPERATOR as i32),
            "{service}: {stderr}"
        );
        assert!(
            stderr.contains("--tokens"),
            "{service} says what to give: {stderr}"
        );
        let with_tokens: Vec<&str> = common.iter().copied().chain(["--tokens", tokens]).collect();
        let (status, stderr, _) = exit_of(&binaries().service(service), &with_tokens);
        assert_eq!(
            status,
            Some(EXIT_NEEDS_OPERATOR as i32),
            "{service}: {stderr}"
        );
        assert!(
            stderr.contains("--tls-cert"),
            "{service} says what to give: {stderr}"
        );
    }
    // The projector likewise refuses tokens in clear.
    let listen = format!("0.0.0.0:{}", free_port());
    let views = dir.path().join("views");
    let (status, stderr, _) = exit_of(
        &binaries().projector,
        &[
            "--nats-url",
            &nats_url,
            "--units",
            units,
            "--data-dir",
            views.to_str().unwrap(),
            "--listen",
            &listen,
            "--tokens",
            tokens,
        ],
    );
    assert_eq!(status, Some(EXIT_NEEDS_OPERATOR as i32), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

#[test]
fn every_service_whose_nats_login_is_refused_exits_78_naming_the_user() {
    let nats = kpi_e2e::nats_with_shipped_users();
    let dir = tempfile::tempdir().unwrap();
    let units = write(dir.path(), "units.json", UNITS);
    let units = units.to_str().unwrap();
    let nats_url = nats.url();
    let views = dir.path().join("views");
    let services: [(&str, PathBuf, Vec<String>); 4] = [
        ("intake", binaries().service("intake"), vec![]),
        ("resolution", binaries().service("resolution"), vec![]),
        ("feedback", binaries().service("feedback"), vec![]),
        (
            "projector",
            binaries().projector.clone(),
            vec![
                "--data-dir".to_owned(),
                views.to_str().unwrap().to_owned(),
                "--listen".to_owned(),
                format!("127.0.0.1:{}", free_port()),
            ],
        ),
    ];
    for (user, binary, extra) in &services {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--nats-url",
            &nats_url,
            "--units",
            units,
            "--nats-user",
            user,
            "--nats-password",
            "a-wrong-password",
        ];
        if extra.is_empty() {
            args.extend(["--listen", &listen]);
        }
        args.extend(extra.iter().map(String::as_str));
        let (status, stderr, took) = exit_of(binary, &args);
        assert_eq!(status, Some(EXIT_NEEDS_OPERATOR as i32), "{user}: {stderr}");
        assert!(
            stderr.contains(&format!("user `{user}`")),
            "{user}: names the user: {stderr}"
        );
        assert!(took < Duration::from_secs(20), "{user}: took {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_the_bus_refuses_what_it_must_do_exits_78_naming_the_user() {
    let nats = kpi_e2e::nats_with_shipped_users();
    let dir = tempfile::tempdir().unwrap();
    let units = write(dir.path(), "units.json", UNITS);
    kpi_e2e::stream_init_as_operator(&nats.url());
    // intake started as the feedback user: it may not publish case.received.
    let flags = kpi_e2e::nats_user_flags("feedback");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut intake = IngestService::start("intake", &nats.url(), &units, dir.path(), &flags).await;
    let (status, answer) = intake
        .post_events(ndjson(&[received("C11-250303-0001", "C11")]))
        .await;
    assert_ne!(status, 200, "{answer}");
    let status = intake.wait_for_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(EXIT_NEEDS_OPERATOR as i32),
        "{}",
        intake.log()
    );
    assert!(intake.log().contains("user `feedback`"), "{}", intake.log());
}
