//! Prometheus metrics (`--metrics-listen`) of the projector and an ingest
//! service, scraped as Prometheus would and checked against what the test
//! sent.

use std::time::Duration;

use kpi_api::pb::GetRatesRequest;
use kpi_bus::Bus;
use kpi_e2e::{example_messages, free_port, publish_all, IngestService, Projector};
use kpi_testkit::{example_path, INVALID_LINES};
use local_nats::LocalNats;
use serde_json::json;

const FOLD_TIMEOUT: Duration = Duration::from_secs(60);

/// The metrics page at `address`.
async fn scrape(address: &str) -> String {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("scraping the metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The value of the sample `name` (with its labels, as printed).
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn value(page: &str, name: &str) -> f64 {
    sample(page, name).unwrap_or_else(|| panic!("{name} is not on the metrics page:\n{page}"))
}

/// Waits until `check` holds on the page (the lag is measured every few
/// seconds); returns that page.
async fn page_where(address: &str, check: impl Fn(&str) -> bool) -> String {
    let started = std::time::Instant::now();
    loop {
        let page = scrape(address).await;
        if check(&page) {
            return page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the metrics never got there:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_projector_counts_every_message_once_and_each_call_by_method_and_code() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let views = dir.path().join("views");
    let units = example_path("units.json");
    let start = || Projector::start(&nats.url(), &units, &views, &["--metrics-listen", &metrics]);
    let mut projector = start();
    let bus = Bus::connect(&nats.url(), "metrics-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, example_messages()).await;
    let last = bus.last_sequence().await.unwrap();
    projector.wait_for("P46", last, FOLD_TIMEOUT).await;

    let mut client = projector.client().await;
    let refused = client
        .get_rates(GetRatesRequest {
            unit_id: "P46".into(),
            period: "not a period".into(),
            min_stream_sequence: None,
        })
        .await
        .expect_err("a period that does not parse");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let page = page_where(&metrics, |page| sample(page, "kpi_stream_lag") == Some(0.0)).await;
    let counted = ["folded", "duplicate", "parked", "conflicting"]
        .iter()
        .map(|kind| value(&page, &format!("kpi_events_{kind}_total")))
        .sum::<f64>();
    assert_eq!(counted, last as f64, "every message counted once:\n{page}");
    assert_eq!(
        value(&page, "kpi_events_parked_total"),
        INVALID_LINES.len() as f64
    );
    assert_eq!(value(&page, "kpi_checkpoint_sequence"), last as f64);
    assert_eq!(value(&page, "kpi_stream_last_sequence"), last as f64);
    assert!(value(&page, "kpi_fold_batch_events_sum") <= last as f64);
    assert!(value(&page, "kpi_fold_batch_events_count") >= 1.0);
    assert!(value(&page, "kpi_fold_batch_duration_seconds_count") >= 1.0);
    assert_eq!(
        value(
            &page,
            r#"kpi_grpc_requests_total{method="/kpi.v1.KpiService/GetRates",code="InvalidArgument"}"#
        ),
        1.0
    );
    assert!(
        value(
            &page,
            r#"kpi_grpc_requests_total{method="/kpi.v1.KpiService/GetRates",code="Ok"}"#
        ) >= 1.0
    );
    assert!(
        value(
            &page,
            r#"kpi_grpc_requests_duration_seconds_count{method="/kpi.v1.KpiService/GetRates"}"#
        ) >= 2.0
    );
    let folded = value(&page, "kpi_events_folded_total");

    // After a restart the counters start from the views' own totals.
    drop(client);
    projector.terminate();
    let mut projector = start();
    projector.wait_for("P46", last, FOLD_TIMEOUT).await;
    let page = scrape(&metrics).await;
    assert_eq!(value(&page, "kpi_events_folded_total"), folded, "{page}");
    assert_eq!(
        value(&page, "kpi_events_parked_total"),
        INVALID_LINES.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingest_service_counts_events_by_outcome_and_requests_by_path_and_status() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let intake = IngestService::start(
        "intake",
        &nats.url(),
        &example_path("units.json"),
        dir.path(),
        &["--metrics-listen", &metrics],
    )
    .await;
    let received = |case: &str| {
        json!({"event_id": uuid::Uuid::new_v4(), "kind": "case.received", "case_id": case,
               "unit_id": "C31_2", "occurred_at": "2025-03-03T08:00:00+07:00",
               "data": {"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
                        "due_at": "2025-03-05T17:00:00+07:00"}})
        .to_string()
    };
    let body = format!(
        "{}\n{}\n{{\"kind\": \"case.received\"}}\n",
        received("METRICS-1"),
        received("METRICS-2")
    );
    let (status, _) = intake.post_events(body).await;
    assert_eq!(status, 400, "one line of three is invalid");
    let missing = reqwest::get(format!("{}/v1/nothing-here", intake.url))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let page = scrape(&metrics).await;
    assert_eq!(
        value(&page, r#"kpi_ingest_events_total{outcome="accepted"}"#),
        2.0
    );
    assert_eq!(
        value(&page, r#"kpi_ingest_events_total{outcome="rejected"}"#),
        1.0
    );
    assert_eq!(
        value(
            &page,
            r#"kpi_http_requests_total{method="/v1/events",code="400"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &page,
            r#"kpi_http_requests_total{method="unmatched",code="404"}"#
        ),
        1.0
    );
    assert!(
        value(
            &page,
            r#"kpi_http_requests_total{method="/healthz",code="200"}"#
        ) >= 1.0
    );
    assert!(
        !page.contains("nothing-here"),
        "unknown paths must not become labels:\n{page}"
    );
}
