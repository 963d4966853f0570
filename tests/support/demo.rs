//! `deploy/scripts/demo.sh` run by a test: on free ports, in a directory
//! of its own, with the binaries the tests built, stopped (with every
//! process it started) on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{binaries, free_port};

pub const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/scripts/demo.sh");

/// The five ports a demo takes, by their variable, free now.
pub fn free_ports() -> Vec<(&'static str, String)> {
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

/// The port `name` of `ports`.
pub fn port(ports: &[(&'static str, String)], name: &str) -> String {
    ports
        .iter()
        .find(|(variable, _)| *variable == name)
        .map(|(_, port)| port.clone())
        .unwrap_or_else(|| panic!("no {name} among the demo's ports"))
}

/// demo.sh with `ports`, its data and logs in `dir`, two days of history.
pub fn demo(dir: &Path, ports: &[(&'static str, String)]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(DEMO)
        .envs(ports.iter().map(|(name, port)| (*name, port.as_str())))
        .env("DEMO_DIR", dir)
        .env("DEMO_BIN", binaries().dir())
        .env("DEMO_DAYS", "2")
        .env("DEMO_SECONDS", "600")
        .stdin(Stdio::null());
    command
}

/// A running demo, stopped (with everything it started) on drop.
pub struct RunningDemo {
    child: Child,
}

impl RunningDemo {
    /// Starts demo.sh and waits until it prints live rates (at most
    /// 3 minutes, then panics with what it said).
    pub fn start(dir: &Path, ports: &[(&'static str, String)]) -> RunningDemo {
        let mut command = demo(dir, ports);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().expect("starting demo.sh");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let running = RunningDemo { child };
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
                Err(_) => panic!("the demo printed no rates; it said:\n{}", seen.join("\n")),
            }
        }
        running
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningDemo {
    fn drop(&mut self) {
        // Its own process group: bash, nats-server, the services.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        std::thread::sleep(Duration::from_secs(1));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}
