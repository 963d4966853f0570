//! Helpers that several bench stages share (ports, a clean disk, waiting
//! for a projector to answer, its logged warnings, the size of its views).
//! They depend on no other bench file, which is what keeps the stages'
//! dependencies one way: `production` used to reach back into the file
//! that runs it for these.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

/// Writes every dirty page to disk (`sync`), so that the next
/// measurement does not pay for the previous one's writes.
pub(super) fn settle_disk() {
    let started = Instant::now();
    match Command::new("sync").status() {
        Ok(status) if status.success() => {
            eprintln!("disk settled in {:.1} s", started.elapsed().as_secs_f64())
        }
        other => eprintln!("sync did not run ({other:?}); figures may include earlier writes"),
    }
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) async fn connect(addr: &str, log: &Path) -> anyhow::Result<Channel> {
    connect_endpoint(
        &tonic::transport::Endpoint::from_shared(addr.to_owned())?,
        log,
    )
    .await
}

/// A channel through `endpoint` once the projector answers (within 20 s);
/// otherwise an error with the projector's log.
pub(super) async fn connect_endpoint(
    endpoint: &tonic::transport::Endpoint,
    log: &Path,
) -> anyhow::Result<Channel> {
    let started = Instant::now();
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => anyhow::bail!(
                "the projector did not answer on {}: {err}; log:\n{}",
                endpoint.uri(),
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

/// The warnings a projector logged while measured (a read that stalled and
/// started again shows here), at most ten.
pub(super) fn print_warnings(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    for line in warnings.iter().take(10) {
        eprintln!("projector: {line}");
    }
    if warnings.len() > 10 {
        eprintln!("projector: … {} more warnings", warnings.len() - 10);
    }
}

pub(super) fn directory_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A process the benchmark started (a projector, intake), stopped with
/// SIGTERM on drop.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}
