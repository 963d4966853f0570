//! `kpictl bench`: the speed and memory goals, measured in one run against
//! ceilings measured in the same run.
//!
//! 1. Starts a private `nats-server` (JetStream, temporary store, a free
//!    port on 127.0.0.1) and publishes a simulated year for a synthetic
//!    province.
//! 2. Reads the whole stream with a plain async-nats ordered consumer: the
//!    raw read rate, the ceiling of any projection.
//! 3. Starts the real `projector` binary on a fresh data directory and times
//!    its fold of the same stream into committed sled views, sampling its
//!    memory as it goes.
//! 4. Times `GetRates` for the province over the calendar year, from one
//!    client (p50/p99) and from many (calls/s), against the gRPC health
//!    `Check` of the same server from the same clients.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer;
use chrono::{Datelike, TimeZone, Utc, Weekday};
use clap::Args;
use futures::StreamExt;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::GetRatesRequest;
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_simulator::{synthetic_registry, vietnam_day, Simulator};
use local_nats::LocalNats;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use kpi_ingest::{Publisher, DEFAULT_DEADLINE};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Cases in the simulated year (each has about 4.6 events).
    #[arg(long, default_value_t = 1_000_000)]
    pub cases: u64,
    /// Districts in the synthetic province.
    #[arg(long, default_value_t = 12)]
    pub districts: usize,
    /// Communes in each district.
    #[arg(long, default_value_t = 12)]
    pub communes: usize,
    /// Sequential GetRates calls for the latency percentiles.
    #[arg(long, default_value_t = 3000)]
    pub calls: u32,
    /// Concurrent clients for the throughput comparison.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds each throughput run lasts.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// The projector's sled cache, MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,
    /// The projector binary (default: the one next to kpictl).
    #[arg(long)]
    pub projector_bin: Option<PathBuf>,
    /// Random seed of the simulated traffic.
    #[arg(long, default_value_t = 2025)]
    pub seed: u64,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Resident and peak memory of a process, in MiB.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss_mib: f64,
    peak_mib: f64,
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn working_days_of_2025() -> u32 {
    (1..=365)
        .filter_map(|ordinal| chrono::NaiveDate::from_yo_opt(2025, ordinal))
        .filter(|date| !matches!(date.weekday(), Weekday::Sat | Weekday::Sun))
        .count() as u32
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let projector_bin = match &args.projector_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("projector"),
    };
    anyhow::ensure!(
        projector_bin.is_file(),
        "projector binary not found at {} (build it with `cargo build --release -p projector` or pass --projector-bin)",
        projector_bin.display()
    );
    let nats = LocalNats::start()?;
    let work = tempfile::Builder::new().prefix("kpi-bench-").tempdir()?;
    let units_path = work.path().join("units.json");
    std::fs::write(
        &units_path,
        synthetic_registry(1, args.districts, args.communes),
    )?;
    let units = UnitRegistry::from_json(&std::fs::read(&units_path)?)?;
    let communes = args.districts * args.communes;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "nats-server {} on {}, {communes} communes, {cpus} CPUs",
        local_nats::find_nats_server()?.display(),
        nats.url()
    );

    // 1. A simulated calendar year 2025, published with acks.
    let bus = Bus::connect(&nats.url(), "kpictl-bench").await?;
    bus.ensure_stream().await?;
    let per_commune_day = args.cases as f64 / f64::from(working_days_of_2025()) / communes as f64;
    let year_start = vietnam_day(
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .context("date")?,
        0,
    );
    let mut simulator = Simulator::new(&units, args.seed);
    let mut publisher = Publisher::new(bus.clone(), DEFAULT_DEADLINE);
    let started = Instant::now();
    let mut published = 0u64;
    let mut failures = 0usize;
    let mut payload_bytes = 0u64;
    for event in simulator.history(year_start, 365, per_commune_day) {
        payload_bytes += event.payload.len() as u64;
        let acks = publisher.send((), crate::simulate::outgoing(event)).await;
        failures += acks.iter().filter(|(_, ack)| ack.is_err()).count();
        published += 1;
        if published.is_multiple_of(500_000) {
            eprintln!("published {published} events…");
        }
    }
    failures += publisher
        .finish()
        .await
        .iter()
        .filter(|(_, ack)| ack.is_err())
        .count();
    let publish_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(failures == 0, "{failures} events were not stored");
    let last = bus.last_sequence().await?;
    eprintln!("published {last} events in {publish_seconds:.1} s");

    // 2. The ceiling: a plain ordered consumer reading the whole stream.
    let raw_seconds = raw_read(&bus, last).await?;
    eprintln!("raw ordered read: {raw_seconds:.2} s");

    // 3. The projector folding the same stream into sled.
    let port = free_port()?;
    let addr = format!("http://127.0.0.1:{port}");
    let data_dir = work.path().join("views");
    let log_path = work.path().join("projector.log");
    let started = Instant::now();
    let mut projector = Command::new(&projector_bin)
        .arg("--nats-url")
        .arg(nats.url())
        .arg("--units")
        .arg(&units_path)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cache-mb")
        .arg(args.cache_mb.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("starting {}", projector_bin.display()))?;
    let pid = projector.id();
    let outcome = fold_and_query(&args, &addr, pid, last, started, &log_path).await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = projector.wait();
    let measured = outcome?;
    let disk_mib = directory_size(&data_dir) as f64 / 1024.0 / 1024.0;

    let raw_rate = last as f64 / raw_seconds;
    let fold_rate = last as f64 / measured.fold_seconds;
    let figures = json!({
        "cases": args.cases,
        "events": last,
        "average_event_bytes": payload_bytes as f64 / published.max(1) as f64,
        "communes": communes,
        "cpus": cpus,
        "publish_events_per_second": last as f64 / publish_seconds,
        "raw_read_events_per_second": raw_rate,
        "fold_events_per_second": fold_rate,
        "fold_vs_raw_read": fold_rate / raw_rate,
        "get_rates_p50_ms": measured.p50_ms,
        "get_rates_p99_ms": measured.p99_ms,
        "get_rates_max_ms": measured.max_ms,
        "get_rates_calls_per_second": measured.rates_per_second,
        "health_check_calls_per_second": measured.health_per_second,
        "get_rates_vs_health_check": measured.rates_per_second / measured.health_per_second,
        "clients": args.clients,
        "memory_mib_by_events": measured
            .memory_at
            .iter()
            .map(|(events, m)| json!({"events": events, "rss": m.rss_mib, "peak": m.peak_mib}))
            .collect::<Vec<_>>(),
        "rss_mib_at_end": measured.memory_end.rss_mib,
        "peak_rss_mib_at_end": measured.memory_end.peak_mib,
        "sled_cache_mib": args.cache_mb,
        "views_on_disk_mib": disk_mib,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(ExitCode::SUCCESS);
    }
    let memory = |m: &Memory| format!("{:.0} MiB (peak {:.0} MiB)", m.rss_mib, m.peak_mib);
    println!("kpictl bench: {} cases, {last} events (~{:.0} bytes each), {communes} communes, {cpus} CPUs", args.cases, payload_bytes as f64 / published.max(1) as f64);
    println!(
        "  publish, acked, 1024 in flight       {:>12.0} events/s",
        last as f64 / publish_seconds
    );
    println!("  raw ordered consumer read (ceiling)  {raw_rate:>12.0} events/s");
    println!("  projector fold into sled views       {fold_rate:>12.0} events/s  = {:.0}% of the raw read (goal ≥ 50%)", 100.0 * fold_rate / raw_rate);
    println!("  GetRates province, year, 1 client    p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (goal p99 < 2 ms)", measured.p50_ms, measured.p99_ms, measured.max_ms);
    println!("  GetRates, {} clients                 {:>12.0} calls/s   = {:.0}% of health Check (goal ≥ 50%)", args.clients, measured.rates_per_second, 100.0 * measured.rates_per_second / measured.health_per_second);
    println!(
        "  health Check, {} clients             {:>12.0} calls/s",
        args.clients, measured.health_per_second
    );
    for (events, at) in &measured.memory_at {
        println!("  projector memory after {events:>9} events {}", memory(at));
    }
    println!(
        "  projector memory at the end          {} with a {} MiB sled cache",
        memory(&measured.memory_end),
        args.cache_mb
    );
    println!("  views on disk                        {disk_mib:.0} MiB");
    Ok(ExitCode::SUCCESS)
}

async fn raw_read(bus: &Bus, last: u64) -> anyhow::Result<f64> {
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

struct Measured {
    fold_seconds: f64,
    /// Memory when the views first reflected each milestone (events).
    memory_at: Vec<(u64, Memory)>,
    memory_end: Memory,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rates_per_second: f64,
    health_per_second: f64,
}

async fn connect(addr: &str, log: &Path) -> anyhow::Result<Channel> {
    let started = Instant::now();
    loop {
        match tonic::transport::Endpoint::from_shared(addr.to_owned())?
            .connect()
            .await
        {
            Ok(channel) => return Ok(channel),
            Err(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => anyhow::bail!(
                "the projector did not answer on {addr}: {err}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

async fn fold_and_query(
    args: &BenchArgs,
    addr: &str,
    pid: u32,
    last: u64,
    started: Instant,
    log: &Path,
) -> anyhow::Result<Measured> {
    let channel = connect(addr, log).await?;
    let mut client = KpiServiceClient::new(channel.clone());
    let probe = GetRatesRequest {
        unit_id: "P00-D00-C00".into(),
        period: "2025-01-02".into(),
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

    // One client, sequential calls: latency percentiles.
    let request = GetRatesRequest {
        unit_id: "P00".into(),
        period: "2025".into(),
    };
    for _ in 0..200 {
        client.get_rates(request.clone()).await?;
    }
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    for _ in 0..args.calls {
        let call = Instant::now();
        client.get_rates(request.clone()).await?;
        histogram.record(call.elapsed().as_micros() as u64)?;
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;

    // Many clients, each on its own connection: calls/s.
    let health_per_second = throughput(addr, args, log, |channel| {
        let mut health = HealthClient::new(channel);
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
        }
    })
    .await?;
    let rates_request = request.clone();
    let rates_per_second = throughput(addr, args, log, move |channel| {
        let mut client = KpiServiceClient::new(channel);
        let request = rates_request.clone();
        async move { client.get_rates(request).await.map(|_| ()) }
    })
    .await?;

    Ok(Measured {
        fold_seconds,
        memory_at,
        memory_end,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        rates_per_second,
        health_per_second,
    })
}

/// Calls/s of `call` from `args.clients` clients for `args.seconds`.
async fn throughput<F, Fut>(
    addr: &str,
    args: &BenchArgs,
    log: &Path,
    call: F,
) -> anyhow::Result<f64>
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let mut channels = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        channels.push(connect(addr, log).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for channel in channels {
        let (stop, calls, call) = (stop.clone(), calls.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                call(channel.clone()).await?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    // Warm up for a second, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = calls.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let counted = calls.load(Ordering::Relaxed) - before;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(counted as f64 / seconds)
}

fn directory_size(dir: &Path) -> u64 {
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
