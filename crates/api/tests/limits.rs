//! The API under a hostile or careless client, served for real on a
//! loopback port over a store on disk: a `grpc-timeout` no server should
//! believe, a dashboard asking for thousands of distinct periods, and more
//! reads waiting for a stream sequence than the server answers at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::GetRatesRequest;
use kpi_api::{KpiApi, Serving};
use kpi_domain::{Targets, UnitRegistry};
use kpi_store::{Store, StoreOptions};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const UNITS: &str = r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
    {"id":"51531","name":"Thị xã Đức Phổ","level":"district","parent":"51"},
    {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51531"}]}"#;

struct Server {
    addr: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(cache_bytes: Option<u64>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("views"), &StoreOptions::default()).unwrap();
    let units = Arc::new(UnitRegistry::from_json(UNITS.as_bytes()).unwrap());
    let mut api = KpiApi::new(Arc::new(store), units, Arc::new(Targets::defaults()));
    if let Some(bytes) = cache_bytes {
        api = api.with_answer_cache_bytes(bytes);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kpi_api::serve(
        listener,
        api,
        Serving::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        _dir: dir,
        _stop: stop,
    }
}

async fn channel(addr: &str) -> Channel {
    for _ in 0..100 {
        if let Ok(channel) = Endpoint::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
        {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server at {addr} does not answer")
}

fn rates(period: &str) -> GetRatesRequest {
    GetRatesRequest {
        unit_id: "51".into(),
        period: period.into(),
        min_stream_sequence: None,
    }
}

/// Resident memory of this process (the server runs in it), in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_grpc_timeout_is_answered_not_a_panic() {
    let server = serve(None).await;
    let mut client = KpiServiceClient::new(channel(&server.addr).await);
    for timeout in [
        "9999999999999999999S",
        "99999999H",
        "18446744073709551615n",
        "-1S",
        "S",
    ] {
        let mut request = tonic::Request::new(rates("2025"));
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let reply = client.get_rates(request).await;
        assert!(reply.is_ok(), "grpc-timeout {timeout}: {reply:?}");
        // And with a read that waits for its own write.
        let mut request = tonic::Request::new(GetRatesRequest {
            min_stream_sequence: Some(0),
            ..rates("2025")
        });
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        assert!(client.get_rates(request).await.is_ok(), "{timeout}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_distinct_periods_keep_memory_within_the_answer_cache() {
    const BOUND: u64 = 4 * 1024 * 1024;
    let server = serve(Some(BOUND)).await;
    let mut clients: Vec<_> = Vec::new();
    for _ in 0..4 {
        clients.push(KpiServiceClient::new(channel(&server.addr).await));
    }
    // Warm up: the allocator, the runtime, the connections.
    for day in 1..=28 {
        clients[0]
            .get_rates(rates(&format!("2019-02-{day:02}")))
            .await
            .unwrap();
    }
    let before = rss();
    let first = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap();
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            for n in (index..20_000).step_by(4) {
                let last = first + chrono::Days::new(n as u64 + 1);
                let period = format!("{first}..{last}");
                client.get_rates(rates(&period)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let grown = rss().saturating_sub(before);
    assert!(
        grown < BOUND + 16 * 1024 * 1024,
        "RSS grew by {} MiB for 20,000 periods with a {} MiB answer cache",
        grown / (1024 * 1024),
        BOUND / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_waiting_for_a_sequence_leave_health_and_plain_reads_answered() {
    let server = serve(None).await;
    // 1,100 reads waiting for a sequence that will not come, on five
    // connections (each carries at most 256 calls at once).
    let mut waiting = Vec::new();
    for connection in 0..5 {
        let channel = channel(&server.addr).await;
        for _ in 0..220 {
            let mut client = KpiServiceClient::new(channel.clone());
            waiting.push(tokio::spawn(async move {
                let request = GetRatesRequest {
                    min_stream_sequence: Some(1_000_000 + connection),
                    ..rates("2025")
                };
                let _ = client.get_rates(request).await;
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let channel = channel(&server.addr).await;
    let started = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(2),
        HealthClient::new(channel.clone()).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health answers within 2 s");
    assert!(health.is_ok(), "{health:?}");
    let plain = tokio::time::timeout(
        Duration::from_secs(2),
        KpiServiceClient::new(channel).get_rates(rates("2025")),
    )
    .await
    .expect("a plain GetRates answers within 2 s");
    assert!(plain.is_ok(), "{plain:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        waiting.iter().filter(|task| !task.is_finished()).count() > 1024,
        "the reads were still waiting"
    );
    for task in waiting {
        task.abort();
    }
}
