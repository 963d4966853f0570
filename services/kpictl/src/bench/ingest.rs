//! The ingest comparison of `kpictl bench`: events of the intake
//! service's kinds posted to a real `intake` process in NDJSON bodies,
//! against as many published raw with acks in flight.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_ingest::{Publisher, Service, DEFAULT_DEADLINE};
use kpi_simulator::{vietnam_day, Simulator};

use super::args::BenchArgs;
use super::common::free_port;
use super::workload::working_days_of_2025;

/// Lines in each NDJSON post of the ingest comparison.
pub(super) const LINES_PER_POST: usize = 1000;

pub(super) struct IngestFigures {
    pub(super) events: usize,
    pub(super) raw_per_second: f64,
    pub(super) service_per_second: f64,
    pub(super) post_p50_ms: f64,
    pub(super) post_p99_ms: f64,
}

/// Generates `2 × args.ingest_events` distinct events of the intake
/// service's kinds (2024, another seed than the year already published):
/// the first half is published raw with acks in flight, the second posted
/// to a real `intake` process in NDJSON bodies of [`LINES_PER_POST`] lines.
pub(super) async fn ingest_bench(
    args: &BenchArgs,
    bus: &Bus,
    nats_url: &str,
    units: &UnitRegistry,
    units_path: &Path,
    intake_bin: &Path,
    work: &Path,
) -> anyhow::Result<IngestFigures> {
    let wanted = args.ingest_events * 2;
    let mut simulator = Simulator::new(units, args.seed.wrapping_add(1));
    let first_day = vietnam_day(
        Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
            .single()
            .context("date")?,
        0,
    );
    let per_commune_day =
        wanted as f64 / 2.0 / f64::from(working_days_of_2025()) / units.len().max(1) as f64;
    let mut events: Vec<kpi_simulator::SimEvent> = simulator
        .history(first_day, 365, per_commune_day.max(0.5))
        .filter(|event| Service::owner_of(event.kind) == Service::Intake)
        .take(wanted)
        .collect();
    anyhow::ensure!(
        events.len() == wanted,
        "the simulator made only {} intake events",
        events.len()
    );
    let posted = events.split_off(args.ingest_events);

    let started = Instant::now();
    let mut publisher = Publisher::new(bus.clone(), DEFAULT_DEADLINE);
    let mut failures = 0;
    for event in events {
        let acks = publisher.send((), crate::simulate::outgoing(event)).await;
        failures += acks.iter().filter(|(_, ack)| ack.is_err()).count();
    }
    failures += publisher
        .finish()
        .await
        .iter()
        .filter(|(_, ack)| ack.is_err())
        .count();
    let raw_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(failures == 0, "{failures} raw events were not stored");

    let port = free_port()?;
    let log_path = work.join("intake.log");
    let mut intake = Command::new(intake_bin)
        .args(["--nats-url", nats_url])
        .arg("--units")
        .arg(units_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("starting {}", intake_bin.display()))?;
    let outcome = post_to_intake(args, port, posted, &log_path).await;
    let _ = Command::new("kill")
        .args(["-TERM", &intake.id().to_string()])
        .status();
    let _ = intake.wait();
    let (service_seconds, latencies) = outcome?;
    Ok(IngestFigures {
        events: args.ingest_events,
        raw_per_second: args.ingest_events as f64 / raw_seconds,
        service_per_second: args.ingest_events as f64 / service_seconds,
        post_p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        post_p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// Posts the events in bodies of [`LINES_PER_POST`] lines from
/// `args.ingest_clients` clients; the seconds it took and each post's
/// latency (µs).
async fn post_to_intake(
    args: &BenchArgs,
    port: u16,
    events: Vec<kpi_simulator::SimEvent>,
    log: &Path,
) -> anyhow::Result<(f64, hdrhistogram::Histogram<u64>)> {
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = Instant::now();
    while !client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(20),
            "the intake service did not become healthy; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies: Vec<Vec<u8>> = events
        .chunks(LINES_PER_POST)
        .map(|chunk| {
            let mut body = Vec::new();
            for event in chunk {
                body.extend_from_slice(&event.payload);
                body.push(b'\n');
            }
            body
        })
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let url = format!("{base}/v1/events");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.ingest_clients.max(1) {
        let (queue, client, url) = (queue.clone(), client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
            loop {
                let body = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some(body) = body else { break };
                let call = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await?;
                let status = response.status();
                let answer = response.bytes().await?;
                anyhow::ensure!(
                    status.is_success(),
                    "the intake service answered {status}: {}",
                    String::from_utf8_lossy(&answer[..answer.len().min(500)])
                );
                latencies.record(call.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    for task in tasks {
        latencies.add(task.await??)?;
    }
    Ok((started.elapsed().as_secs_f64(), latencies))
}
