//! Operations: errors a restart cannot fix stop every binary with exit
//! status 78, which the systemd units do not restart on; any other
//! failure exits with 1 and is restarted.

use std::path::Path;

use kpi_bus::EXIT_NEEDS_OPERATOR;
use kpi_e2e::{binaries, free_port, run_to_end};
use local_nats::LocalNats;

/// A units file with a mistake (a district whose parent does not exist).
const BROKEN_UNITS: &str = r#"{"units": [
  {"id": "P1", "name": "Tỉnh Một", "level": "province"},
  {"id": "D1", "name": "Huyện Một", "level": "district", "parent": "P-NONE"}
]}"#;

#[test]
fn a_units_file_that_does_not_load_stops_every_service_with_status_78() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, BROKEN_UNITS).unwrap();
    let units = units.to_str().unwrap();
    let url = nats.url();

    let data_dir = dir.path().join("views");
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, stderr) = run_to_end(
        &binaries().projector,
        &[
            "--nats-url",
            &url,
            "--units",
            units,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &listen,
        ],
    );
    assert_eq!(status, Some(EXIT_NEEDS_OPERATOR as i32), "{stderr}");
    assert!(stderr.contains("P-NONE"), "names the mistake: {stderr}");

    for service in ["intake", "resolution", "feedback"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let (status, stderr) = run_to_end(
            &binaries().service(service),
            &["--nats-url", &url, "--units", units, "--listen", &listen],
        );
        assert_eq!(
            status,
            Some(EXIT_NEEDS_OPERATOR as i32),
            "{service}: {stderr}"
        );
        assert!(
            stderr.contains("P-NONE"),
            "{service} names the mistake: {stderr}"
        );
    }
}

#[test]
fn nats_unreachable_at_start_is_an_ordinary_failure_that_systemd_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units.json");
    std::fs::write(&units, kpi_testkit::UNITS_JSON).unwrap();
    let dead_nats = format!("nats://127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let (status, stderr) = run_to_end(
        &binaries().service("intake"),
        &[
            "--nats-url",
            &dead_nats,
            "--units",
            units.to_str().unwrap(),
            "--listen",
            &listen,
        ],
    );
    assert_eq!(status, Some(1), "{stderr}");
}

#[test]
fn every_service_has_a_systemd_unit_that_does_not_restart_on_status_78() {
    let systemd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    for service in ["projector", "intake", "resolution", "feedback"] {
        let path = systemd.join(format!("kpi-{service}.service"));
        let unit = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        assert!(
            unit.contains(&format!("ExecStart=/usr/local/bin/{service}")),
            "{}",
            path.display()
        );
        assert!(unit.contains("Restart=always"), "{}", path.display());
        assert!(
            unit.lines()
                .any(|line| line == format!("RestartPreventExitStatus={EXIT_NEEDS_OPERATOR}")),
            "{} restarts on status {EXIT_NEEDS_OPERATOR}",
            path.display()
        );
    }
}
