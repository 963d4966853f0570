//! `deploy/scripts/demo.sh` as a newcomer runs it: a second demo started
//! while one runs is refused, and the running one's data and figures are
//! left intact; a demo whose ports are taken stops before it touches data/.

use std::path::Path;

use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_e2e::demo::{demo, free_ports, port, RunningDemo};
use kpi_e2e::Projector;

/// Runs a demo that must be refused: its exit code and stderr.
fn refused(dir: &Path, ports: &[(&'static str, String)]) -> (Option<i32>, String) {
    let output = demo(dir, ports).output().expect("running demo.sh");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    if entry.path().is_dir() {
                        files_under(&entry.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_demo_is_refused_and_the_first_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports();
    let running = RunningDemo::start(dir.path(), &ports);
    let first_pid = running.pid();
    let api = port(&ports, "API_PORT");
    let mut client = KpiServiceClient::connect(format!("http://127.0.0.1:{api}"))
        .await
        .expect("the first demo's API");
    let before = Projector::sequence(&mut client, "51").await;
    assert!(before > 0, "the first demo's figures are empty");
    let data = dir.path().join("data");
    let files_before = files_under(&data);

    // Same directory, other ports: refused on the lock, naming the PID.
    let (code, message) = refused(dir.path(), &free_ports());
    assert_ne!(code, Some(0), "a second demo ran: {message}");
    assert!(message.contains("another demo is running"), "{message}");
    assert!(message.contains(&format!("PID {first_pid}")), "{message}");

    // Another directory, the first demo's ports: refused before anything
    // there is touched.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("data")).unwrap();
    std::fs::write(other.path().join("data/keep"), "an earlier demo's data").unwrap();
    let (code, message) = refused(other.path(), &ports);
    assert_ne!(code, Some(0), "a demo ran on busy ports: {message}");
    assert!(message.contains("is in use"), "{message}");
    assert!(message.contains("NATS_PORT"), "{message}");
    assert!(other.path().join("data/keep").exists(), "{message}");
    assert!(!other.path().join("data.old").exists(), "{message}");

    // The first demo goes on, its data where it was, its figures moving on
    // from where they were.
    assert!(
        !dir.path().join("data.old").exists(),
        "the running demo's data was moved"
    );
    assert!(
        files_under(&data) >= files_before,
        "the running demo lost files"
    );
    let after = Projector::sequence(&mut client, "51").await;
    assert!(after >= before, "the figures went back: {before} → {after}");
    drop(running);
}
