//! Whatever a client posts, the HTTP ingest answers with a status and,
//! for whatever it refuses, a reason: never a panic, never a silent drop.
//! Bodies are arbitrary bytes, arbitrary JSON, NDJSON of both, and DVCQG
//! payloads, sent through the real router to a real JetStream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_ingest::dvcqg::FieldMap;
use kpi_ingest::http::{router, App};
use kpi_ingest::{Accepts, Ingestor, Service};
use local_nats::LocalNats;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;

const UNITS: &str = r#"{"units": [
  {"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province", "dvcqg_code": "000.00.00.H51"},
  {"id": "C1", "name": "Phường Một", "level": "commune", "parent": "51", "dvcqg_code": "000.00.31.H51"}
]}"#;

/// Any JSON value; object members mostly named as an event's or a
/// dossier's are, so that validation gets past its first checks.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        proptest::sample::select(vec![
            "v",
            "event_id",
            "kind",
            "case_id",
            "unit_id",
            "occurred_at",
            "data",
            "channel",
            "due_at",
            "MaHoSo",
            "MaDonVi",
            "NgayTiepNhan",
            "NgayHenTra",
            "TrangThaiHoSo",
            "KenhThucHien",
            "MaTTHC",
            "MaLinhVuc",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        Just(json!("case.received")),
        Just(json!("C1")),
        Just(json!("000.00.31.H51")),
        Just(json!("2025-03-15T08:30:00+07:00")),
        Just(json!("20250315083000")),
    ];
    leaf.prop_recursive(3, 32, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(name.clone(), inner, 0..10)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// A body: bytes, one JSON value, or lines of either.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        arbitrary_json().prop_map(|value| value.to_string().into_bytes()),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1024),
        arbitrary_json().prop_map(|value| value.to_string().into_bytes()),
        proptest::collection::vec(line, 0..6).prop_map(|lines| lines.join(&b'\n')),
    ]
}

fn route() -> impl Strategy<Value = (&'static str, &'static str)> {
    proptest::sample::select(vec![
        ("/v1/events", "application/json"),
        ("/v1/events", "application/x-ndjson"),
        ("/v1/events", "text/plain"),
        ("/v1/dvcqg", "application/json"),
        ("/v1/dvcqg?madonvi=000.00.31.H51", "application/json"),
    ])
}

/// The answer is JSON; a refusal of the whole body has an `error`, and
/// every refused line or dossier a reason.
fn check(status: StatusCode, body: &[u8]) -> Result<(), TestCaseError> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|err| TestCaseError::fail(format!("{status}: not JSON ({err})")))?;
    prop_assert!(
        [200, 400, 413, 415].contains(&status.as_u16()),
        "{status}: {answer}"
    );
    if let Some(error) = answer.get("error") {
        prop_assert!(
            error.as_str().is_some_and(|text| text.len() > 10),
            "{answer}"
        );
        prop_assert!(status != StatusCode::OK, "{answer}");
        return Ok(());
    }
    let rejected = answer["rejected"].as_array().cloned().unwrap_or_default();
    for refusal in &rejected {
        prop_assert!(
            refusal["reason"]
                .as_str()
                .is_some_and(|text| text.len() > 10),
            "a refusal without a reason: {answer}"
        );
        prop_assert!(refusal["line"].as_u64().is_some(), "{answer}");
    }
    prop_assert_eq!(
        status == StatusCode::BAD_REQUEST,
        !rejected.is_empty(),
        "{}",
        answer
    );
    prop_assert!(
        answer.get("not_stored").is_none(),
        "JetStream is up: everything valid is stored: {answer}"
    );
    Ok(())
}

#[test]
fn any_body_gets_an_answer_and_every_refusal_a_reason() {
    let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(async {
        let bus = Bus::connect(&server.url(), "arbitrary-bodies")
            .await
            .expect("connect");
        bus.ensure_stream().await.expect("stream");
        let units = Arc::new(UnitRegistry::from_json(UNITS.as_bytes()).unwrap());
        router(Arc::new(App::new(
            "intake",
            Ingestor::new(
                bus,
                units,
                Accepts::Service(Service::Intake),
                Duration::from_secs(10),
            ),
            Some(FieldMap::default()),
            None,
            kpi_ingest::Senders::open(),
        )))
    });
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(route(), body()), |((path, content_type), body)| {
            let request = Request::post(path)
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap();
            let (status, answer) = runtime.block_on(async {
                let response = app.clone().oneshot(request).await.expect("infallible");
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("the body");
                (status, bytes)
            });
            check(status, &answer)
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}
