//! Read replicas (README, "Read replicas"): projectors with their own data
//! directories, folding the same stream, answer alike at the same stream
//! sequence; `min_stream_sequence` gives read-your-writes on whichever one
//! a balancer picks.

use std::time::Duration;

use bytes::Bytes;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::{GetRatesRequest, ListUnitsRequest, RatesReply};
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_e2e::{publish_all, simulated_messages, Projector};
use kpi_simulator::synthetic_registry_reformed;
use local_nats::LocalNats;
use serde_json::json;
use tonic::transport::Channel;

const EVENTS: usize = 20_000;
const PERIODS: [&str; 6] = [
    "2025",
    "R2025",
    "2025-H1",
    "2025-H2",
    "2025-03",
    "2025-06-30..2025-07-01",
];
const FOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// GetRates as a comparable value: the reply, or the error's code and text.
async fn ask(
    client: &mut KpiServiceClient<Channel>,
    unit_id: &str,
    period: &str,
    min_stream_sequence: u64,
) -> Result<RatesReply, (tonic::Code, String)> {
    client
        .get_rates(GetRatesRequest {
            unit_id: unit_id.into(),
            period: period.into(),
            min_stream_sequence: Some(min_stream_sequence),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| (status.code(), status.message().to_owned()))
}

/// Every unit of the registry, ceased ones too.
fn all_units(registry_json: &str) -> Vec<String> {
    let registry: serde_json::Value = serde_json::from_str(registry_json).unwrap();
    registry["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|unit| unit["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The tree on `as_of` as the replica lists it, level by level.
async fn tree(client: &mut KpiServiceClient<Channel>, as_of: &str) -> Vec<(String, String)> {
    let mut listed = Vec::new();
    let mut parents = vec![String::new()];
    while let Some(parent_id) = parents.pop() {
        let reply = client
            .list_units(ListUnitsRequest {
                parent_id,
                as_of: as_of.into(),
            })
            .await
            .expect("ListUnits")
            .into_inner();
        for unit in reply.units {
            parents.push(unit.id.clone());
            listed.push((unit.parent_id, unit.id));
        }
    }
    listed.sort();
    listed
}

#[tokio::test(flavor = "multi_thread")]
async fn two_projectors_on_one_stream_answer_alike_at_the_same_sequence() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units_path = dir.path().join("units.json");
    let registry = synthetic_registry_reformed(1, 3, 4);
    std::fs::write(&units_path, &registry).unwrap();
    let units = UnitRegistry::from_json(&std::fs::read(&units_path).unwrap()).unwrap();
    let mut replicas = [
        Projector::start(&nats.url(), &units_path, &dir.path().join("views-a"), &[]),
        // A different batch size: the answers must not depend on how the
        // log was cut into commits.
        Projector::start(
            &nats.url(),
            &units_path,
            &dir.path().join("views-b"),
            &["--batch-size", "137"],
        ),
    ];
    let bus = Bus::connect(&nats.url(), "replicas-test").await.unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, simulated_messages(&units, 11, (365, 10.0), EVENTS)).await;
    let last = bus.last_sequence().await.unwrap();
    assert_eq!(last, EVENTS as u64);
    for replica in &mut replicas {
        replica.wait_for("P00", last, FOLD_TIMEOUT).await;
    }
    let mut a = replicas[0].client().await;
    let mut b = replicas[1].client().await;

    for as_of in ["2025-06-30", "2025-07-01"] {
        assert_eq!(tree(&mut a, as_of).await, tree(&mut b, as_of).await);
    }
    let unit_ids = all_units(&registry);
    assert!(unit_ids.len() > 15, "{unit_ids:?}");
    let mut compared = 0;
    for unit_id in &unit_ids {
        for period in PERIODS {
            let from_a = ask(&mut a, unit_id, period, last).await;
            let from_b = ask(&mut b, unit_id, period, last).await;
            assert_eq!(from_a, from_b, "{unit_id} {period}");
            if let Ok(reply) = &from_a {
                assert_eq!(reply.stream_sequence, last, "{unit_id} {period}");
                compared += 1;
            }
        }
    }
    assert!(
        compared > unit_ids.len() * 4,
        "most answers are figures, not errors"
    );

    // Read-your-writes across replicas: an event acknowledged by JetStream,
    // asked about at once on the other replica with its sequence.
    let before = ask(&mut b, "P00", "2025-H2", last).await.expect("rates");
    let event = json!({
        "event_id": uuid::Uuid::new_v4(), "kind": "case.received",
        "case_id": "REPLICA-1", "unit_id": "P00-D00-C02",
        "occurred_at": "2025-08-10T09:00:00+07:00",
        "data": {"procedure_code": "1.001193", "field": "ho_tich", "channel": "online",
                 "due_at": "2025-08-12T17:00:00+07:00"}
    });
    let ack = bus
        .publish_event(
            "cases.P00-D00-C02.case.received".into(),
            Bytes::from(event.to_string()),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    for client in [&mut b, &mut a] {
        let after = ask(client, "P00", "2025-H2", ack.sequence)
            .await
            .expect("rates");
        assert!(after.stream_sequence >= ack.sequence);
        assert_eq!(
            after.counts["received"],
            before.counts["received"] + 1,
            "the answer waited for the event"
        );
    }
}
