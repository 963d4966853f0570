//! `deploy/scripts/demo.sh` as a newcomer runs it: a second demo started
//! while one runs is refused, and the running one's data and figures are
//! left intact; a demo whose ports are taken stops before it touches data/.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_e2e::{binaries, free_port, Projector};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/scripts/demo.sh");

/// The five ports a demo takes, free now.
fn free_ports() -> Vec<(&'static str, String)> {
    [
        "NATS_PORT",
        "API_PORT",
        "INTAKE_PORT",
        "RESOLUTION_PORT",
        "FEEDBACK_PORT",
    ]
    .into_iter()
    .map(|name| (name, free_port().to_string()))
    .collect()
}

fn demo(dir: &Path, ports: &[(&'static str, String)]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(DEMO)
        .envs(ports.iter().map(|(name, port)| (*name, port.as_str())))
        .env("DEMO_DIR", dir)
        .env("DEMO_BIN", binaries().dir())
        .env("DEMO_DAYS", "2")
        .env("DEMO_SECONDS", "300")
        .stdin(Stdio::null());
    command
}

/// Runs a demo that must be refused: its exit code and stderr.
fn refused(dir: &Path, ports: &[(&'static str, String)]) -> (Option<i32>, String) {
    let output = demo(dir, ports).output().expect("running demo.sh");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The running demo, stopped (with everything it started) on drop.
struct RunningDemo(Child);

impl Drop for RunningDemo {
    fn drop(&mut self) {
        // Its own process group: bash, nats-server, the services.
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        std::thread::sleep(Duration::from_secs(1));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
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
    let mut first = demo(dir.path(), &ports);
    first.stdout(Stdio::piped()).stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut first, 0);
    let mut child = first.spawn().expect("starting demo.sh");
    let first_pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let running = RunningDemo(child);

    // The first demo is up once it prints live rates.
    let (lines, printed) = mpsc::channel();
    let stderr_lines = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = stderr_lines.send(format!("stderr: {line}"));
        }
    });
    let mut seen = Vec::new();
    loop {
        match printed.recv_timeout(Duration::from_secs(180)) {
            Ok(line) if line.contains("live rates from") => break,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "the first demo printed no rates; it said:\n{}",
                seen.join("\n")
            ),
        }
    }
    let api = ports.iter().find(|(name, _)| *name == "API_PORT").unwrap();
    let mut client = KpiServiceClient::connect(format!("http://127.0.0.1:{}", api.1))
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
