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
use super::common::{free_port, Running};
use super::workload::working_days_of_2025;

/// Lines in each NDJSON post of the ingest comparison.
pub(super) const LINES_PER_POST: usize = 1000;

pub(super) struct IngestFigures {
    pub(super) events: usize,
    pub(super) raw_per_second: f64,
    pub(super) service_per_second: f64,
    /// The same, to an intake serving HTTPS with `--tokens`, each post
    /// carrying a sender token.
    pub(super) tls_per_second: f64,
    pub(super) post_p50_ms: f64,
    pub(super) post_p99_ms: f64,
}

/// Where posts go: an intake process, and how to reach it.
struct Target {
    base: String,
    client: reqwest::Client,
    /// `Bearer <sender token>` when the intake takes tokens.
    authorization: Option<String>,
}

fn start_intake(
    intake_bin: &Path,
    nats_url: &str,
    units_path: &Path,
    port: u16,
    log_path: &Path,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<Running> {
    let child = Command::new(intake_bin)
        .args(["--nats-url", nats_url])
        .arg("--units")
        .arg(units_path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log_path)?)
        .spawn()
        .with_context(|| format!("starting {}", intake_bin.display()))?;
    Ok(Running(child))
}

/// Generates `3 × args.ingest_events` distinct events of the intake
/// service's kinds (2024, another seed than the year already published):
/// the first third is published raw with acks in flight, the second
/// posted to a plain `intake` process in NDJSON bodies of
/// [`LINES_PER_POST`] lines, the third to one serving HTTPS with sender
/// tokens, in windows plain, TLS, TLS, plain.
pub(super) async fn ingest_bench(
    args: &BenchArgs,
    bus: &Bus,
    nats_url: &str,
    units: &UnitRegistry,
    units_path: &Path,
    intake_bin: &Path,
    work: &Path,
) -> anyhow::Result<IngestFigures> {
    let wanted = args.ingest_events * 3;
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
    let mut posted_tls = events.split_off(2 * args.ingest_events);
    let mut posted_plain = events.split_off(args.ingest_events);

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

    // A commune's one-stop software would hold a commune's token; the
    // province's scope makes every line walk the unit tree.
    let province = units
        .iter()
        .find(|(_, unit)| unit.level == kpi_domain::Level::Province)
        .map(|(_, unit)| unit.id.clone())
        .context("the bench's units have no province")?;
    let tls = super::production::tls_setup(work, &province, "sender")?;
    let (plain_port, tls_port) = (free_port()?, free_port()?);
    let plain_log = work.join("intake.log");
    let tls_log = work.join("intake-tls.log");
    let _plain = start_intake(
        intake_bin,
        nats_url,
        units_path,
        plain_port,
        &plain_log,
        &[],
    )?;
    let _tls = start_intake(
        intake_bin,
        nats_url,
        units_path,
        tls_port,
        &tls_log,
        &[
            "--tokens".as_ref(),
            tls.tokens.as_os_str(),
            "--tls-cert".as_ref(),
            tls.cert.as_os_str(),
            "--tls-key".as_ref(),
            tls.key.as_os_str(),
        ],
    )?;
    let plain = Target {
        base: format!("http://127.0.0.1:{plain_port}"),
        client: reqwest::Client::new(),
        authorization: None,
    };
    let secured = Target {
        base: format!("https://127.0.0.1:{tls_port}"),
        client: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes())?)
            .build()?,
        authorization: Some(format!("Bearer {}", tls.token)),
    };
    wait_healthy(&plain, &plain_log).await?;
    wait_healthy(&secured, &tls_log).await?;

    // Windows plain, TLS, TLS, plain: drift of the machine over the run
    // falls on both alike.
    let plain_second = posted_plain.split_off(posted_plain.len() / 2);
    let tls_second = posted_tls.split_off(posted_tls.len() / 2);
    let (plain_a, mut latencies) = post_to_intake(args, &plain, posted_plain).await?;
    let (tls_a, _) = post_to_intake(args, &secured, posted_tls).await?;
    let (tls_b, _) = post_to_intake(args, &secured, tls_second).await?;
    let (plain_b, more) = post_to_intake(args, &plain, plain_second).await?;
    latencies.add(more)?;
    Ok(IngestFigures {
        events: args.ingest_events,
        raw_per_second: args.ingest_events as f64 / raw_seconds,
        service_per_second: args.ingest_events as f64 / (plain_a + plain_b),
        tls_per_second: args.ingest_events as f64 / (tls_a + tls_b),
        post_p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        post_p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// Waits until the intake answers `/healthz` (20 s at most).
async fn wait_healthy(target: &Target, log: &Path) -> anyhow::Result<()> {
    let ready = Instant::now();
    while !target
        .client
        .get(format!("{}/healthz", target.base))
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
    Ok(())
}

/// Posts the events in bodies of [`LINES_PER_POST`] lines from
/// `args.ingest_clients` clients; the seconds it took and each post's
/// latency (µs).
async fn post_to_intake(
    args: &BenchArgs,
    target: &Target,
    events: Vec<kpi_simulator::SimEvent>,
) -> anyhow::Result<(f64, hdrhistogram::Histogram<u64>)> {
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
    let url = format!("{}/v1/events", target.base);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.ingest_clients.max(1) {
        let (queue, client, url) = (queue.clone(), target.client.clone(), url.clone());
        let authorization = target.authorization.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
            loop {
                let body = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some(body) = body else { break };
                let call = Instant::now();
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson");
                if let Some(authorization) = &authorization {
                    request = request.header("authorization", authorization);
                }
                let response = request.body(body).send().await?;
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
