//! Support for the cross-service tests: the real `projector` and `kpictl`
//! binaries, started as processes against a real `nats-server`.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::{GetRatesRequest, RatesReply};
use kpi_bus::Bus;
use kpi_testkit::{Answer, ExpectedLive, ExpectedRate};
use tonic::transport::Channel;

pub mod demo;

/// The service binaries, built once per test process in the profile the
/// tests were built in.
pub struct Binaries {
    pub projector: PathBuf,
    pub kpictl: PathBuf,
    dir: PathBuf,
}

impl Binaries {
    /// An ingest service's binary (`intake`, `resolution`, `feedback`).
    pub fn service(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory all the binaries are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        // target/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from target/<profile>/deps")
            .to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--profile",
                &profile,
                "-p",
                "projector",
                "-p",
                "kpictl",
                "-p",
                "intake",
                "-p",
                "resolution",
                "-p",
                "feedback",
            ])
            .status()
            .expect("running cargo build for the service binaries");
        assert!(
            status.success(),
            "cargo build of the service binaries failed"
        );
        Binaries {
            projector: profile_dir.join("projector"),
            kpictl: profile_dir.join("kpictl"),
            dir: profile_dir,
        }
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Runs a binary to its end (at most 30 s); its exit status and stderr.
pub fn run_to_end(binary: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (
                status.code(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{} did not stop within 30 s", binary.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `child` exits by itself; its status. Fails with its log
/// after `timeout`.
fn wait_for_exit(child: &mut Child, timeout: Duration, log: &Path) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the process") {
            return status;
        }
        assert!(
            started.elapsed() < timeout,
            "the process kept running; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running projector process, killed on drop.
pub struct Projector {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Projector {
    /// Starts the projector on a free port; extra arguments are appended.
    pub fn start(nats_url: &str, units: &Path, data_dir: &Path, extra: &[&str]) -> Projector {
        let port = free_port();
        let log = data_dir.with_extension(format!("{port}.log"));
        let log_file = std::fs::File::create(&log).expect("projector log file");
        let child = Command::new(&binaries().projector)
            .arg("--nats-url")
            .arg(nats_url)
            .arg("--units")
            .arg(units)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting the projector");
        Projector {
            child: Some(child),
            addr: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory of the process, KiB.
    pub fn resident_kib(&self) -> u64 {
        let status = self
            .pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    }

    /// A client, once the server answers (within 20 s).
    pub async fn client(&mut self) -> KpiServiceClient<Channel> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the projector exited with {status}; its log:\n{}",
                        self.log()
                    );
                }
            }
            if let Ok(client) = KpiServiceClient::connect(self.addr.clone()).await {
                return client;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the projector did not answer; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The stream sequence the views reflect.
    pub async fn sequence(client: &mut KpiServiceClient<Channel>, unit_id: &str) -> u64 {
        client
            .get_rates(GetRatesRequest {
                unit_id: unit_id.into(),
                period: "2024-01-01".into(),
                min_stream_sequence: None,
            })
            .await
            .expect("GetRates")
            .into_inner()
            .stream_sequence
    }

    /// Waits until the views reflect at least `sequence`; returns what they
    /// reflect then. Polls every few milliseconds.
    pub async fn wait_for(&mut self, unit_id: &str, sequence: u64, timeout: Duration) -> u64 {
        let mut client = self.client().await;
        let started = Instant::now();
        loop {
            let now = Self::sequence(&mut client, unit_id).await;
            if now >= sequence {
                return now;
            }
            assert!(
                started.elapsed() < timeout,
                "the views reached sequence {now}, not {sequence}, within {timeout:?}; projector log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }

    /// Waits for the process to exit on its own (within `timeout`).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let log = self.log.clone();
        let child = self.child.as_mut().expect("the projector was started");
        wait_for_exit(child, timeout, &log)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill_9(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaping the projector");
        }
    }

    /// SIGTERM, then waits for a clean exit (the views are flushed).
    pub fn terminate(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the projector") {
                assert!(
                    status.success(),
                    "the projector exited with {status}; its log:\n{}",
                    self.log()
                );
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!(
                    "the projector did not stop on SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running ingest service (`intake`, `resolution` or `feedback`),
/// killed on drop.
pub struct IngestService {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`, or `https://…` when it serves TLS.
    pub url: String,
    log: PathBuf,
    /// A client that trusts the service's certificate, if any.
    client: reqwest::Client,
}

impl IngestService {
    /// Starts `name` on a free port and waits until it answers `/healthz`
    /// with 200 (within 20 s). `log_dir` receives its log.
    pub async fn start(
        name: &str,
        nats_url: &str,
        units: &Path,
        log_dir: &Path,
        extra: &[&str],
    ) -> IngestService {
        IngestService::start_with_env(name, nats_url, units, log_dir, extra, &[]).await
    }

    /// [`IngestService::start`] with environment variables (`RUST_LOG`, say).
    pub async fn start_with_env(
        name: &str,
        nats_url: &str,
        units: &Path,
        log_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> IngestService {
        IngestService::launch(name, nats_url, units, log_dir, extra, env, None).await
    }

    /// [`IngestService::start`] serving HTTPS with a certificate of `ca`
    /// (`extra` names the certificate and key: `--tls-cert`, `--tls-key`).
    pub async fn start_tls(
        name: &str,
        nats_url: &str,
        units: &Path,
        log_dir: &Path,
        extra: &[&str],
        ca: &TestCa,
    ) -> IngestService {
        IngestService::launch(name, nats_url, units, log_dir, extra, &[], Some(ca)).await
    }

    async fn launch(
        name: &str,
        nats_url: &str,
        units: &Path,
        log_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        ca: Option<&TestCa>,
    ) -> IngestService {
        let port = free_port();
        let log = log_dir.join(format!("{name}-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("service log file");
        let child = Command::new(binaries().service(name))
            .arg("--nats-url")
            .arg(nats_url)
            .arg("--units")
            .arg(units)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting the ingest service");
        let (url, client) = match ca {
            None => (format!("http://127.0.0.1:{port}"), reqwest::Client::new()),
            Some(ca) => (format!("https://127.0.0.1:{port}"), ca.https_client()),
        };
        let mut service = IngestService {
            child: Some(child),
            url,
            log,
            client,
        };
        service.wait_healthy(Duration::from_secs(20)).await;
        service
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the service exits by itself; its status.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let log = self.log.clone();
        let child = self.child.as_mut().expect("the service was started");
        wait_for_exit(child, timeout, &log)
    }

    /// The process id while it runs (to send it SIGHUP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&mut self, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the service exited with {status}; its log:\n{}", self.log());
                }
            }
            let health = self
                .client
                .get(format!("{}/healthz", self.url))
                .send()
                .await;
            if health.is_ok_and(|response| response.status() == 200) {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "the service did not become healthy; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Posts a body with a content type; returns the status and JSON answer.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        self.post_with(path, content_type, body, &[]).await
    }

    /// [`IngestService::post`] with more headers (`authorization`, say).
    pub async fn post_with(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("posting to the service");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let json = response.json().await.unwrap_or_default();
        (status, json, headers)
    }

    /// Posts NDJSON to `/v1/events`.
    pub async fn post_events(&self, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        let (status, json, _) = self.post("/v1/events", "application/x-ndjson", body).await;
        (status, json)
    }

    /// Posts NDJSON to `/v1/events` with a sender token.
    pub async fn post_events_as(
        &self,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {token}");
        let (status, json, _) = self
            .post_with(
                "/v1/events",
                "application/x-ndjson",
                body,
                &[("authorization", &bearer)],
            )
            .await;
        (status, json)
    }
}

/// A certificate authority made for a test, and the certificates it signs.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA's certificate (PEM), for clients to trust.
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        let pem = issuer.pem();
        TestCa { issuer, pem }
    }

    /// A certificate for `names` (host names or IP addresses) signed by
    /// the CA: its PEM and its key's PEM.
    pub fn sign(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let certificate = rcgen::CertificateParams::new(names)
            .expect("certificate parameters")
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        (certificate.pem(), key.serialize_pem())
    }

    /// An HTTP client that trusts the CA.
    pub fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("the CA's PEM"),
            )
            .build()
            .expect("an HTTPS client")
    }

    /// Writes the CA and a certificate for localhost and 127.0.0.1 into
    /// `dir` (`ca.pem`, `cert.pem`, `key.pem`); their paths.
    pub fn write_server_files(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let (cert, key) = self.sign(&["localhost", "127.0.0.1"]);
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&paths.0, &self.pem).unwrap();
        std::fs::write(&paths.1, cert).unwrap();
        std::fs::write(&paths.2, key).unwrap();
        paths
    }
}

/// The passwords the tests give nats-server in its environment for the
/// users of the shipped `deploy/nats/users.conf`: `<user>-secret`.
pub const NATS_PASSWORDS: [(&str, &str); 5] = [
    ("KPI_INTAKE_PASSWORD", "intake-secret"),
    ("KPI_RESOLUTION_PASSWORD", "resolution-secret"),
    ("KPI_FEEDBACK_PASSWORD", "feedback-secret"),
    ("KPI_PROJECTOR_PASSWORD", "projector-secret"),
    ("KPI_OPERATOR_PASSWORD", "operator-secret"),
];

/// A file of the repository's `deploy/` directory, as shipped.
pub fn deploy_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// nats-server with the users and permissions of the shipped
/// `deploy/nats/users.conf`, passwords [`NATS_PASSWORDS`].
pub fn nats_with_shipped_users() -> local_nats::LocalNats {
    local_nats::LocalNats::start_with_config_and_env(
        &deploy_file("nats/users.conf"),
        &NATS_PASSWORDS,
    )
    .unwrap_or_else(|err| panic!("{err}"))
}

/// How a service logs in as `user` of the shipped users.conf.
pub fn nats_user_args(url: &str, user: &str) -> kpi_bus::NatsArgs {
    kpi_bus::NatsArgs {
        nats_user: Some(user.to_owned()),
        nats_password: Some(format!("{user}-secret")),
        ..kpi_bus::NatsArgs::plain(url.to_owned())
    }
}

/// The flags of a service logging in as `user` of the shipped users.conf.
pub fn nats_user_flags(user: &str) -> Vec<String> {
    vec![
        "--nats-user".to_owned(),
        user.to_owned(),
        "--nats-password".to_owned(),
        format!("{user}-secret"),
    ]
}

/// Creates `CASES` as the operator user of the shipped users.conf, as the
/// README says to (`kpictl stream-init`); what kpictl printed.
pub fn stream_init_as_operator(nats_url: &str) -> String {
    let flags = nats_user_flags("operator");
    let mut args = vec!["stream-init", "--nats-url", nats_url];
    args.extend(flags.iter().map(String::as_str));
    let output = kpictl(&args);
    assert!(
        output.status.success(),
        "kpictl stream-init: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A tokens file (CONTRACT §8) of `(name, token, scope, role)` entries.
pub fn tokens_file(entries: &[(&str, &str, &str, &str)]) -> String {
    let entries: Vec<_> = entries
        .iter()
        .map(|(name, token, scope, role)| {
            serde_json::json!({
                "name": name,
                "sha256": kpi_api::access::token_sha256(token),
                "scope": scope,
                "role": role,
            })
        })
        .collect();
    serde_json::json!({ "tokens": entries }).to_string()
}

impl Drop for IngestService {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `kpictl` with arguments; returns its output.
pub fn kpictl(args: &[&str]) -> Output {
    Command::new(&binaries().kpictl)
        .args(args)
        .output()
        .expect("running kpictl")
}

/// What `kpictl` printed on stdout, after checking it ended well (else
/// panics with its stderr).
pub fn kpictl_printed(args: &[&str]) -> String {
    let output = kpictl(args);
    assert!(
        output.status.success(),
        "kpictl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kpictl prints UTF-8")
}

/// The first `count` events of a simulated history from 2 January 2025
/// (`days` days, `cases_per_commune_day` cases a commune a day), as
/// messages for [`publish_all`].
pub fn simulated_messages(
    units: &kpi_domain::UnitRegistry,
    seed: u64,
    (days, cases_per_commune_day): (u32, f64),
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    use chrono::TimeZone;
    let first_day = kpi_simulator::vietnam_day(
        chrono::Utc
            .with_ymd_and_hms(2025, 1, 2, 0, 0, 0)
            .single()
            .expect("a valid date"),
        1,
    );
    kpi_simulator::Simulator::new(units, seed)
        .history(first_day, days, cases_per_commune_day)
        .take(count)
        .map(|event| (event.subject, event.payload))
        .collect()
}

/// Publishes `(subject, payload)` straight onto the bus, as any publisher
/// may (`Nats-Msg-Id` the hash of the body), and waits for every ack.
pub async fn publish_all(bus: &Bus, messages: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let mut acks = FuturesUnordered::new();
    for (subject, payload) in messages {
        let ack = bus
            .publish_event(subject, Bytes::from(payload))
            .await
            .expect("publish");
        acks.push(ack.into_future());
        while acks.len() >= 512 {
            acks.next().await.expect("ack").expect("stored");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
}

/// Every line of the example scenario as a message for [`publish_all`],
/// as a provincial system would publish it: on its subject, byte for byte.
pub fn example_messages() -> Vec<(String, Vec<u8>)> {
    kpi_testkit::event_lines()
        .into_iter()
        .map(|(_, line)| (kpi_testkit::subject_of(line), line.to_vec()))
        .collect()
}

/// The same message in another layout (a space after its first byte):
/// the same event to the projector, another body to JetStream, which
/// stores it as it stores a byte-identical re-send after its duplicate
/// window.
pub fn relaid(payload: &[u8]) -> Vec<u8> {
    let mut copy = Vec::with_capacity(payload.len() + 1);
    copy.extend_from_slice(payload.get(..1).unwrap_or_default());
    copy.push(b' ');
    copy.extend_from_slice(payload.get(1..).unwrap_or_default());
    copy
}

/// A gRPC answer in the comparable form.
pub fn answer_of(reply: &RatesReply) -> Answer {
    let live = reply.live.unwrap_or_default();
    Answer {
        first_day: reply.first_day.clone(),
        last_day: reply.last_day.clone(),
        rates: reply
            .rates
            .iter()
            .map(|rate| {
                (
                    rate.kpi.clone(),
                    ExpectedRate {
                        numerator: rate.numerator,
                        denominator: rate.denominator,
                        percent: rate.percent,
                        target_percent: rate.target_percent,
                        met: rate.met,
                    },
                )
            })
            .collect(),
        live: ExpectedLive {
            open: live.open,
            overdue_open: live.overdue_open,
            overdue_without_apology: live.overdue_without_apology,
        },
    }
}

/// Asks every query of expected.json and returns the differences.
pub async fn differences_from_expected(client: &mut KpiServiceClient<Channel>) -> Vec<String> {
    let mut differences = Vec::new();
    for query in kpi_testkit::expected().queries {
        let reply = client
            .get_rates(GetRatesRequest {
                unit_id: query.unit_id.clone(),
                period: query.period.clone(),
                min_stream_sequence: None,
            })
            .await
            .expect("GetRates")
            .into_inner();
        assert_eq!(reply.unit_id, query.unit_id);
        differences.extend(kpi_testkit::differences(&query, &answer_of(&reply)));
    }
    differences
}

/// Every view entry, the fold totals and the checkpoint of a projector's
/// data directory: what two folds of the same log must share.
pub type Views = (Vec<(Vec<u8>, Vec<u8>)>, kpi_store::FoldTotals, u64);

/// [`Views`] of the views a projector's data directory serves (its
/// `current` link).
pub fn views_of(dir: &Path) -> Views {
    let store = kpi_store::Store::open(&dir.join("current"), &kpi_store::StoreOptions::default())
        .expect("open the views");
    let entries = store
        .view_entries()
        .collect::<Result<Vec<_>, _>>()
        .expect("read the views");
    (
        entries,
        store.totals().unwrap(),
        store.checkpoint().unwrap(),
    )
}

/// Headless Chromium for the page tests: Debian's, installed when missing.
pub fn chromium() -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/bin/chromium");
    if !path.exists() {
        let installed = std::process::Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium"])
            .status();
        assert!(
            installed.is_ok_and(|status| status.success()) && path.exists(),
            "headless Chromium is needed: install it with `sudo apt-get install -y chromium`"
        );
    }
    path
}

/// Headless Chromium with its own profile under `profile`, kept off the
/// network, ready for the arguments of one run.
pub fn headless_chromium(profile: &Path) -> Command {
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}
