//! What a newcomer reads when something is set up wrong: each message
//! names the cause and the fix, not "NATS down" or tonic's boilerplate.

use std::path::Path;

use kpi_e2e::{kpictl, nats_with_shipped_users, Projector, TestCa};
use local_nats::LocalNats;

const UNITS: &str = r#"{"units": [
  {"id": "51", "name": "Tỉnh Quảng Ngãi", "level": "province"},
  {"id": "5153105", "name": "Phường Nguyễn Nghiêm", "level": "commune", "parent": "51"}
]}"#;

const RECEIVED: &str = r#"{"event_id":"7d2c1e1a-51f4-4c39-9a61-3f0f1f8b2a01","kind":"case.received","case_id":"H31-250303-0001","unit_id":"5153105","occurred_at":"2025-03-03T08:00:00+07:00","data":{"procedure_code":"1.001234","field":"tu_phap","channel":"online","due_at":"2025-03-06T17:00:00+07:00"}}"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// kpictl's exit code and everything it printed.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = kpictl(args);
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn import_as(nats: &LocalNats, dir: &Path, user: &str, password: &str) -> (Option<i32>, String) {
    let units = write(dir, "units.json", UNITS);
    let events = write(dir, "events.ndjson", &format!("{RECEIVED}\n"));
    run(&[
        "import",
        &events,
        "--units",
        &units,
        "--nats-url",
        &nats.url(),
        "--nats-user",
        user,
        "--nats-password",
        password,
        "--publish-deadline",
        "5s",
    ])
}

#[test]
fn nats_mistakes_name_the_user_the_subject_and_the_command_that_fixes_them() {
    let nats = nats_with_shipped_users();
    let dir = tempfile::tempdir().unwrap();

    // A wrong password: the login, and whose.
    let (code, said) = import_as(&nats, dir.path(), "intake", "not-the-password");
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("refused the login of user `intake`"),
        "{said}"
    );
    assert!(!said.contains("is nats-server running"), "{said}");

    // No stream yet, and a user that may not create it: stream-init.
    let (code, said) = import_as(&nats, dir.path(), "intake", "intake-secret");
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("may not create it"), "{said}");
    assert!(said.contains("kpictl stream-init"), "{said}");

    kpi_e2e::stream_init_as_operator(&nats.url());

    // A user that may not publish the kind: the user and the subject, not
    // "NATS down or slow".
    let (code, said) = import_as(&nats, dir.path(), "resolution", "resolution-secret");
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("NATS refused user `resolution`"), "{said}");
    assert!(said.contains("cases.5153105.case.received"), "{said}");
    assert!(!said.contains("NATS down"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_mistakes_and_refusals_say_what_to_do_without_grpc_boilerplate() {
    let nats = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
    let dir = tempfile::tempdir().unwrap();
    let units = write(dir.path(), "units.json", UNITS);
    let ca = TestCa::new("KPI test CA");
    let (_, cert, key) = ca.write_server_files(dir.path());
    let other_ca = write(dir.path(), "other-ca.pem", &TestCa::new("another CA").pem);
    let projector = Projector::start(
        &nats.url(),
        Path::new(&units),
        &dir.path().join("views"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let listen = projector.addr.trim_start_matches("http://");
    let https = format!("https://{listen}");
    let http = format!("http://{listen}");
    // The projector is up once the right client gets an answer.
    let ca_path = dir.path().join("ca.pem");
    let ca_arg = ca_path.to_str().unwrap();
    let started = std::time::Instant::now();
    loop {
        let (code, said) = run(&["units", "--addr", &https, "--ca", ca_arg]);
        if code == Some(0) {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "{said}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let (code, said) = run(&["units", "--addr", &https, "--ca", &other_ca]);
    assert_ne!(code, Some(0));
    assert!(said.contains("is not trusted"), "{said}");
    assert!(said.contains("pass --ca"), "{said}");

    let (code, said) = run(&["units", "--addr", &http]);
    assert_ne!(code, Some(0));
    assert!(said.contains("use https://"), "{said}");

    // A refusal keeps the server's words, not the code's description.
    let (code, said) = run(&[
        "rates", "--addr", &https, "--ca", ca_arg, "--unit", "9999", "--period", "2025",
    ]);
    assert_ne!(code, Some(0));
    assert!(said.contains("`9999`"), "{said}");
    assert!(!said.contains("Some requested entity"), "{said}");
    assert!(!said.contains("Client specified"), "{said}");

    // `kpictl … --json | head`: the reader is gone before kpictl writes.
    let mut piped = std::process::Command::new(&kpi_e2e::binaries().kpictl)
        .args([
            "rates", "--addr", &https, "--ca", ca_arg, "--unit", "51", "--period", "2025", "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(piped.stdout.take());
    let output = piped.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
