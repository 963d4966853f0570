//! The proto is usable outside Rust: a Python client generated from
//! `proto/` with grpcio-tools (`deploy/scripts/python-client.sh`, which
//! installs what it needs) reads every expected case-flow table of the
//! example from a real projector.

use std::path::Path;
use std::process::Command;

use kpi_bus::Bus;
use kpi_e2e::{example_messages, publish_all, Projector};
use local_nats::LocalNats;

#[tokio::test(flavor = "multi_thread")]
async fn a_python_client_generated_from_the_proto_reads_the_case_flow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let client_dir = dir.path().join("python-client");
    let generated = Command::new(root.join("deploy/scripts/python-client.sh"))
        .arg(&client_dir)
        .output()
        .expect("running deploy/scripts/python-client.sh");
    assert!(
        generated.status.success(),
        "deploy/scripts/python-client.sh failed (it needs python3, python3-venv and the Python package index): {}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let mut projector = Projector::start(
        &nats.url(),
        &kpi_testkit::example_path("units.json"),
        &dir.path().join("views"),
        &[],
    );
    let bus = Bus::connect(&nats.url(), "python-client-test")
        .await
        .unwrap();
    bus.ensure_stream().await.unwrap();
    publish_all(&bus, example_messages()).await;
    let last = bus.last_sequence().await.unwrap();
    projector
        .wait_for("P46", last, std::time::Duration::from_secs(60))
        .await;
    let addr = projector.addr.trim_start_matches("http://").to_owned();

    let mut differences = Vec::new();
    for query in kpi_testkit::expected().case_flow {
        let output = Command::new(client_dir.join("venv/bin/python"))
            .arg(root.join("deploy/clients/python/case_flow.py"))
            .args([
                "--addr",
                &addr,
                "--unit",
                &query.unit_id,
                "--period",
                &query.period,
            ])
            .args(["--by", &query.group_by])
            .env("PYTHONPATH", client_dir.join("generated"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let columns = |value: &serde_json::Value| -> kpi_testkit::FlowColumns {
            serde_json::from_value(value.clone()).unwrap()
        };
        let rows: Vec<(String, kpi_testkit::FlowColumns)> = reply["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row["key"].as_str().unwrap().to_owned(),
                    columns(&row["flow"]),
                )
            })
            .collect();
        differences.extend(kpi_testkit::flow_differences(
            &query,
            reply["as_of"].as_str().unwrap(),
            &rows,
            &columns(&reply["total"]),
        ));
        if query.unit_id == "P46" {
            assert_eq!(reply["unit_name"], "Tỉnh Thừa Thiên Huế", "UTF-8 intact");
            assert!(reply["on_time_rate"].is_number(), "GetRates too: {reply}");
        }
    }
    assert_eq!(differences, Vec::<String>::new());
    projector.terminate();
}
