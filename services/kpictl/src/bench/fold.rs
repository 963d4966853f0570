//! The fold measurements of `kpictl bench`: the raw ordered read of the
//! stream (the ceiling of any projection), the projector's fold of it into
//! sled views with the projector's memory sampled on the way, and the
//! same fold again with WatchRates watchers connected (the slowdown they
//! cost).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use futures::StreamExt;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::GetRatesRequest;
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use tonic::transport::Channel;

use super::args::BenchArgs;
use super::common::{connect, free_port, print_warnings};
use super::watch;
use super::workload::watched_units;

/// Resident and peak memory of a process, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    pub(super) rss_mib: f64,
    pub(super) peak_mib: f64,
}

fn memory_of(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    Memory {
        rss_mib: field("VmRSS:"),
        peak_mib: field("VmHWM:"),
    }
}

/// The seconds a plain ordered consumer takes to read the stream's first
/// `last` events.
pub(super) async fn raw_read(bus: &Bus, last: u64) -> anyhow::Result<f64> {
    let stream = bus.ensure_stream().await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut count = 0u64;
    while count < last {
        match messages.next().await {
            Some(Ok(_)) => count += 1,
            Some(Err(err)) => anyhow::bail!("raw read: {err}"),
            None => anyhow::bail!("raw read ended at {count} of {last}"),
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The fold of the whole stream by the measured projector.
pub(super) struct Folded {
    /// From the projector's start until its views reflected the last event.
    pub(super) seconds: f64,
    /// Memory when the views first reflected each milestone (events).
    pub(super) memory_at: Vec<(u64, Memory)>,
    pub(super) memory_end: Memory,
}

/// Asks the projector `pid` (through `client`) until its views reflect
/// `last`; the seconds since `started`, and its memory at each milestone
/// and at the end.
pub(super) async fn time_fold(
    client: &mut KpiServiceClient<Channel>,
    pid: u32,
    last: u64,
    started: Instant,
) -> anyhow::Result<Folded> {
    let probe = GetRatesRequest {
        unit_id: "P00-D00-C00".into(),
        period: "2025-01-02".into(),
        min_stream_sequence: None,
    };
    let mut milestones: Vec<u64> = [
        100_000u64, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000,
    ]
    .into_iter()
    .filter(|events| *events <= last)
    .rev()
    .collect();
    let mut memory_at = Vec::new();
    let fold_seconds = loop {
        let sequence = client
            .get_rates(probe.clone())
            .await?
            .into_inner()
            .stream_sequence;
        while let Some(milestone) = milestones.pop_if(|milestone| sequence >= *milestone) {
            memory_at.push((milestone, memory_of(pid)));
        }
        if sequence >= last {
            break started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let memory_end = memory_of(pid);
    eprintln!("folded {last} events in {fold_seconds:.2} s");
    Ok(Folded {
        seconds: fold_seconds,
        memory_at,
        memory_end,
    })
}

/// Another projector folds the same stream, on fresh views (removed
/// after), with `watchers` watchers connected from its start; the seconds
/// until it reflects `last`. `round` names its files.
#[allow(clippy::too_many_arguments)]
pub(super) async fn watched_fold(
    args: &BenchArgs,
    watchers: usize,
    projector_bin: &Path,
    nats_url: &str,
    units: &UnitRegistry,
    units_path: &Path,
    work: &Path,
    (last, round): (u64, usize),
) -> anyhow::Result<f64> {
    let port = free_port()?;
    let addr = format!("http://127.0.0.1:{port}");
    let log_path = work.join(format!("projector-watched-{round}.log"));
    let views = work.join(format!("views-watched-{round}"));
    let started = Instant::now();
    let mut projector = Command::new(projector_bin)
        .args(["--nats-url", nats_url])
        .arg("--units")
        .arg(units_path)
        .arg("--data-dir")
        .arg(&views)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--cache-mb", &args.cache_mb.to_string()])
        .args(["--batch-size", &args.batch_size.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let outcome = async {
        let channel = connect(&addr, &log_path).await?;
        let connected = if watchers > 0 {
            Some(watch::Watchers::connect(&addr, watchers, &watched_units(units), "R2025").await?)
        } else {
            None
        };
        let mut client = KpiServiceClient::new(channel);
        let probe = GetRatesRequest {
            unit_id: "P00".into(),
            period: "2025-01-02".into(),
            min_stream_sequence: None,
        };
        let seconds = loop {
            let sequence = client
                .get_rates(probe.clone())
                .await?
                .into_inner()
                .stream_sequence;
            if sequence >= last {
                break started.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "folded {last} events with {watchers} watchers in {seconds:.2} s ({} answers sent)",
            connected.as_ref().map_or(0, |connected| connected
                .answers
                .load(std::sync::atomic::Ordering::Relaxed))
        );
        Ok::<f64, anyhow::Error>(seconds)
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &projector.id().to_string()])
        .status();
    let _ = projector.wait();
    print_warnings(&log_path);
    let _ = std::fs::remove_dir_all(&views);
    outcome
}
