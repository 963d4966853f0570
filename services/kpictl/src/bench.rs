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
use kpi_simulator::{synthetic_registry, synthetic_registry_reformed, vietnam_day, Simulator};
use local_nats::LocalNats;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;

use kpi_ingest::{Publisher, Service, DEFAULT_DEADLINE};

use crate::bench_calls::{self, RawCall};
use crate::bench_watch;

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
    /// Simulate a province whose tree never changes (by default it goes
    /// through the 2025 reform: districts end on 2025-06-30, communes move
    /// to the province, two communes of each district merge).
    #[arg(long)]
    pub no_reform: bool,
    /// Sequential GetRates calls for the latency percentiles.
    #[arg(long, default_value_t = 3000)]
    pub calls: u32,
    /// Concurrent clients for the throughput comparison.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds the calls/s of health Check and of GetRates are each counted
    /// (in two windows, Check, GetRates, GetRates, Check).
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
    /// Events posted to the intake service (and, as many others, published
    /// raw) for the ingest comparison; 0 skips it.
    #[arg(long, default_value_t = 200_000)]
    pub ingest_events: usize,
    /// Concurrent HTTP clients posting to the intake service.
    #[arg(long, default_value_t = 4)]
    pub ingest_clients: usize,
    /// WatchRates watchers connected while GetRates is measured, and while
    /// a second fold runs (its slowdown against the first); 0: none.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Events a second of background traffic while WatchRates freshness is
    /// measured.
    #[arg(long, default_value_t = 5000)]
    pub freshness_rate: usize,
    /// Events (of the same simulated year) also published to a three-node
    /// JetStream cluster on loopback with three copies, whose fold rate is
    /// compared with the single server's; 0 skips it.
    #[arg(long, default_value_t = 500_000)]
    pub cluster_events: u64,
    /// Run the whole benchmark this many times, printing each run and
    /// then the worst and median of each goal's figure.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Print the figures of each run as JSON.
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

/// Writes every dirty page to disk (`sync`), so that the next
/// measurement does not pay for the previous one's writes.
pub(crate) fn settle_disk() {
    let started = Instant::now();
    match Command::new("sync").status() {
        Ok(status) if status.success() => {
            eprintln!("disk settled in {:.1} s", started.elapsed().as_secs_f64())
        }
        other => eprintln!("sync did not run ({other:?}); figures may include earlier writes"),
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
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
    let repeat = args.repeat.max(1);
    let mut runs = Vec::with_capacity(repeat);
    for index in 1..=repeat {
        if repeat > 1 {
            eprintln!("kpictl bench: run {index} of {repeat}");
        }
        let figures = run_once(&args).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&figures)?);
        } else {
            print_run(&figures, index, repeat);
        }
        runs.push(figures);
    }
    if repeat > 1 && !args.json {
        print_summary(&runs);
    }
    Ok(ExitCode::SUCCESS)
}

/// The worst and the median of a figure over the runs (`higher_is_better`
/// picks which end is the worst).
fn spread(runs: &[serde_json::Value], path: &[&str], higher_is_better: bool) -> Option<(f64, f64)> {
    let mut values: Vec<f64> = runs
        .iter()
        .filter_map(|run| {
            path.iter()
                .try_fold(run, |value, key| value.get(*key))
                .and_then(serde_json::Value::as_f64)
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let worst = if higher_is_better {
        values[0]
    } else {
        values[values.len() - 1]
    };
    Some((worst, values[values.len() / 2]))
}

fn print_summary(runs: &[serde_json::Value]) {
    println!(
        "kpictl bench: {} runs; each goal must hold on every run",
        runs.len()
    );
    let ratio = |path: &[&str], label: &str, goal: &str| {
        if let Some((worst, median)) = spread(runs, path, true) {
            println!(
                "  {label:<44} worst {:>5.1}%, median {:>5.1}% ({goal})",
                100.0 * worst,
                100.0 * median
            );
        }
    };
    ratio(
        &["fold_vs_raw_read"],
        "fold / raw ordered read",
        "goals: worst ≥ 50%, median ≥ 60%",
    );
    ratio(
        &["replay_vs_raw_read"],
        "kpictl replay / raw ordered read",
        "goal ≥ 50%",
    );
    ratio(
        &["get_rates_vs_health_check"],
        "GetRates / health Check, 64 clients",
        "goal ≥ 60% with watchers connected",
    );
    ratio(
        &["tls_vs_plain_get_rates"],
        "GetRates with TLS and a token / plain",
        "goal ≥ 75%",
    );
    ratio(
        &["r3_vs_r1_fold"],
        "fold from 3 copies / from 1",
        "goal ≥ 70%",
    );
    ratio(
        &["ingest", "service_vs_raw_publish"],
        "intake service / raw publish",
        "goal ≥ 40%",
    );
    if let Some((worst, median)) = spread(runs, &["get_scores_p99_ms"], false) {
        println!(
            "  {:<44} worst {worst:>6.3} ms, median {median:>6.3} ms (goal < 5 ms)",
            "GetScores p99, 1 client"
        );
    }
    if let Some((worst, median)) = spread(runs, &["freshness_p99_ms"], false) {
        println!(
            "  {:<44} worst {worst:>6.1} ms, median {median:>6.1} ms (goal < 100 ms)",
            "WatchRates freshness p99"
        );
    }
    if let Some((worst, median)) = spread(runs, &["fold_with_watchers_slowdown"], false) {
        println!(
            "  {:<44} worst {:>5.1}%, median {:>5.1}% (goal ≤ 20%)",
            "fold slowdown with watchers",
            100.0 * worst,
            100.0 * median
        );
    }
    if let Some((worst, median)) = spread(runs, &["get_rates_p99_ms"], false) {
        println!(
            "  {:<44} worst {worst:>6.3} ms, median {median:>6.3} ms (goal < 2 ms)",
            "GetRates p99, 1 client"
        );
    }
    if let Some((worst, median)) = spread(runs, &["ingest", "service_events_per_second"], true) {
        println!(
            "  {:<44} worst {worst:>7.0}/s, median {median:>7.0}/s (goal ≥ 20000/s)",
            "intake service events/s"
        );
    }
}

async fn run_once(args: &BenchArgs) -> anyhow::Result<serde_json::Value> {
    let projector_bin = match &args.projector_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("projector"),
    };
    anyhow::ensure!(
        projector_bin.is_file(),
        "projector binary not found at {} (build it with `cargo build --release -p projector` or pass --projector-bin)",
        projector_bin.display()
    );
    let intake_bin = projector_bin.with_file_name("intake");
    anyhow::ensure!(
        args.ingest_events == 0 || intake_bin.is_file(),
        "intake binary not found at {} (build it with `cargo build --release -p intake`, or pass --ingest-events 0)",
        intake_bin.display()
    );
    let nats = LocalNats::start()?;
    let work = tempfile::Builder::new().prefix("kpi-bench-").tempdir()?;
    let units_path = work.path().join("units.json");
    let registry = if args.no_reform {
        synthetic_registry(1, args.districts, args.communes)
    } else {
        synthetic_registry_reformed(1, args.districts, args.communes)
    };
    // A commune that only the freshness probes use.
    let mut registry: serde_json::Value = serde_json::from_str(&registry)?;
    if let Some(list) = registry["units"].as_array_mut() {
        list.push(
            json!({"id": PROBE_UNIT, "name": "Xã Thăm Dò", "level": "commune", "parent": "P00"}),
        );
    }
    std::fs::write(&units_path, serde_json::to_vec_pretty(&registry)?)?;
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
    let started = Instant::now();
    let (published, payload_bytes) = publish_year(args, &units, &bus, u64::MAX).await?;
    let publish_seconds = started.elapsed().as_secs_f64();
    let last = bus.last_sequence().await?;
    eprintln!("published {last} events in {publish_seconds:.1} s");

    // Every measurement starts with the disk clean: nats-server writes its
    // file store lazily and fsyncs it every two minutes, and 1 GB of dirty
    // stream pages written back in the middle of a fold made one run in
    // three fold at a third of the others' rate.
    settle_disk();

    // 2. The ceiling: a plain ordered consumer reading the whole stream.
    let raw_seconds = raw_read(&bus, last).await?;
    eprintln!("raw ordered read: {raw_seconds:.2} s");

    settle_disk();

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
    let outcome = fold_and_query(args, &addr, pid, last, started, &log_path, &bus, &units).await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = projector.wait();
    print_warnings(&log_path);
    let measured = outcome?;
    let disk_mib = directory_size(&data_dir) as f64 / 1024.0 / 1024.0;

    // 4b. The same views served with TLS and tokens, against plain.
    settle_disk();
    let (plain_per_second, tls_per_second) = crate::bench_production::tls_cost(
        &crate::bench_production::Served {
            projector_bin: &projector_bin,
            nats_url: &nats.url(),
            units: &units_path,
            data_dir: &data_dir,
            cache_mb: args.cache_mb,
            work: work.path(),
        },
        &province_rates_request(),
        args.clients,
        Duration::from_secs_f64(args.seconds as f64 / 2.0),
    )
    .await?;
    eprintln!(
        "GetRates calls/s plain {plain_per_second:.0}, with TLS and a token {tls_per_second:.0}"
    );

    settle_disk();

    // 5. kpictl replay of the same stream into fresh views.
    let replay_dir = work.path().join("replay");
    let (_, replay_seconds) = crate::audit::replay_into(
        &replay_dir,
        std::sync::Arc::new(units.clone()),
        &kpi_bus::NatsArgs::plain(nats.url()),
        kpi_projection::Until::Sequence(last),
        kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day(),
        args.cache_mb,
    )
    .await?;
    eprintln!("replayed {last} events in {replay_seconds:.2} s");

    // 6. The same fold four more times on fresh views: without watchers,
    //    with, with, without (an ABBA order, so that a drift of the
    //    machine over the four, e.g. the disk filling, falls on both
    //    sides alike); the watchers connect at the projector's start.
    let watched_folds = if args.watchers > 0 {
        let mut seconds = [0.0; 2];
        for (index, watchers) in [0, args.watchers, args.watchers, 0].into_iter().enumerate() {
            settle_disk();
            let fold_seconds = watched_fold(
                args,
                watchers,
                &projector_bin,
                &nats.url(),
                &units,
                &units_path,
                work.path(),
                (last, index),
            )
            .await?;
            seconds[usize::from(watchers > 0)] += fold_seconds / 2.0;
        }
        Some(seconds)
    } else {
        None
    };

    // 7. The intake service against a raw pipelined publish of as many
    //    events of the same kinds.
    let ingest = if args.ingest_events > 0 {
        Some(
            ingest_bench(
                args,
                &bus,
                &nats.url(),
                &units,
                &units_path,
                &intake_bin,
                work.path(),
            )
            .await?,
        )
    } else {
        None
    };

    // 8. The fold of a stream of three copies on a loopback cluster,
    //    against one copy on one server.
    let cluster_events = args.cluster_events.min(last);
    let simulated_units = &units;
    let replicated = if cluster_events > 0 {
        Some(
            crate::bench_production::replicated_fold(
                &nats.url(),
                &units,
                cluster_events,
                args.cache_mb,
                work.path(),
                |cluster| async move {
                    publish_year(args, simulated_units, &cluster, cluster_events).await?;
                    Ok(cluster.last_sequence().await?)
                },
            )
            .await?,
        )
    } else {
        None
    };

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
        "replay_events_per_second": last as f64 / replay_seconds,
        "replay_vs_raw_read": (last as f64 / replay_seconds) / raw_rate,
        "watchers": args.watchers,
        "fold_without_watchers_events_per_second": watched_folds.map(|[without, _]| last as f64 / without),
        "fold_with_watchers_events_per_second": watched_folds.map(|[_, with]| last as f64 / with),
        "fold_with_watchers_slowdown": watched_folds.map(|[without, with]| with / without - 1.0),
        "get_scores_p50_ms": measured.scores_p50_ms,
        "get_scores_p99_ms": measured.scores_p99_ms,
        "freshness_p50_ms": measured.freshness.as_ref().map(|d| bench_watch::quantile(d, 0.5)),
        "freshness_p99_ms": measured.freshness.as_ref().map(|d| bench_watch::quantile(d, 0.99)),
        "freshness_events_per_second": args.freshness_rate,
        "get_rates_p50_ms": measured.p50_ms,
        "get_rates_p99_ms": measured.p99_ms,
        "get_rates_max_ms": measured.max_ms,
        "get_rates_calls_per_second": measured.rates_per_second,
        "health_check_calls_per_second": measured.health_per_second,
        "get_rates_vs_health_check": measured.rates_per_second / measured.health_per_second,
        "get_rates_decoded_calls_per_second": measured.decoded_rates_per_second,
        "get_rates_decoded_vs_health_check": measured.decoded_rates_per_second / measured.health_per_second,
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
        "plain_get_rates_calls_per_second": plain_per_second,
        "tls_get_rates_calls_per_second": tls_per_second,
        "tls_vs_plain_get_rates": tls_per_second / plain_per_second,
        "cluster_events": cluster_events,
        "r1_fold_events_per_second": replicated.map(|(r1, _)| r1),
        "r3_fold_events_per_second": replicated.map(|(_, r3)| r3),
        "r3_vs_r1_fold": replicated.map(|(r1, r3)| r3 / r1),
        "ingest": ingest.as_ref().map(|ingest| json!({
            "events": ingest.events,
            "lines_per_post": LINES_PER_POST,
            "clients": args.ingest_clients,
            "raw_publish_events_per_second": ingest.raw_per_second,
            "service_events_per_second": ingest.service_per_second,
            "service_vs_raw_publish": ingest.service_per_second / ingest.raw_per_second,
            "post_p50_ms": ingest.post_p50_ms,
            "post_p99_ms": ingest.post_p99_ms,
        })),
    });
    Ok(figures)
}

/// Publishes the simulated year (at most `limit` events) with acks; the
/// events published and their payload bytes.
async fn publish_year(
    args: &BenchArgs,
    units: &UnitRegistry,
    bus: &Bus,
    limit: u64,
) -> anyhow::Result<(u64, u64)> {
    let communes = args.districts * args.communes;
    let per_commune_day = args.cases as f64 / f64::from(working_days_of_2025()) / communes as f64;
    let year_start = vietnam_day(
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .context("date")?,
        0,
    );
    let mut simulator = Simulator::new(units, args.seed);
    let mut publisher = Publisher::new(bus.clone(), DEFAULT_DEADLINE);
    let mut published = 0u64;
    let mut failures = 0usize;
    let mut payload_bytes = 0u64;
    let traffic = simulator
        .history(year_start, 365, per_commune_day)
        .filter(|event| !event.subject.contains(PROBE_UNIT));
    for event in traffic {
        if published >= limit {
            break;
        }
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
    anyhow::ensure!(failures == 0, "{failures} events were not stored");
    Ok((published, payload_bytes))
}

/// One run's figures, for people.
fn print_run(figures: &serde_json::Value, index: usize, repeat: usize) {
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(figures, |value, key| value.get(*key))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let run = if repeat > 1 {
        format!(" (run {index} of {repeat})")
    } else {
        String::new()
    };
    println!(
        "kpictl bench{run}: {} cases, {} events (~{:.0} bytes each), {} communes, {} CPUs",
        number(&["cases"]),
        number(&["events"]),
        number(&["average_event_bytes"]),
        number(&["communes"]),
        number(&["cpus"])
    );
    println!(
        "  publish, acked, 1024 in flight       {:>12.0} events/s",
        number(&["publish_events_per_second"])
    );
    println!(
        "  raw ordered consumer read (ceiling)  {:>12.0} events/s",
        number(&["raw_read_events_per_second"])
    );
    println!(
        "  projector fold into sled views       {:>12.0} events/s  = {:.0}% of the raw read (goal ≥ 50%)",
        number(&["fold_events_per_second"]),
        100.0 * number(&["fold_vs_raw_read"])
    );
    println!(
        "  kpictl replay into fresh views       {:>12.0} events/s  = {:.0}% of the raw read (goal ≥ 50%)",
        number(&["replay_events_per_second"]),
        100.0 * number(&["replay_vs_raw_read"])
    );
    println!(
        "  GetRates province, R2025, 1 client   p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (goal p99 < 2 ms)",
        number(&["get_rates_p50_ms"]),
        number(&["get_rates_p99_ms"]),
        number(&["get_rates_max_ms"])
    );
    println!(
        "  GetRates, {} clients                 {:>12.0} calls/s   = {:.0}% of health Check (goal ≥ 60%)",
        number(&["clients"]),
        number(&["get_rates_calls_per_second"]),
        100.0 * number(&["get_rates_vs_health_check"])
    );
    println!(
        "  health Check, {} clients             {:>12.0} calls/s",
        number(&["clients"]),
        number(&["health_check_calls_per_second"])
    );
    println!(
        "  GetRates, clients decoding replies   {:>12.0} calls/s   = {:.0}% of health Check (for comparison)",
        number(&["get_rates_decoded_calls_per_second"]),
        100.0 * number(&["get_rates_decoded_vs_health_check"])
    );
    println!(
        "  (GetRates measured with {} WatchRates watchers connected; goals: p99 < 2 ms, ≥ 60% of Check)",
        number(&["watchers"])
    );
    println!(
        "  GetScores province, R2025, 1 client  p50 {:.3} ms, p99 {:.3} ms (goal p99 < 5 ms)",
        number(&["get_scores_p50_ms"]),
        number(&["get_scores_p99_ms"])
    );
    if figures["freshness_p99_ms"].is_number() {
        println!(
            "  WatchRates freshness at {} events/s  p50 {:.1} ms, p99 {:.1} ms from ack to update (goal p99 < 100 ms)",
            number(&["freshness_events_per_second"]),
            number(&["freshness_p50_ms"]),
            number(&["freshness_p99_ms"])
        );
    }
    if figures["fold_with_watchers_slowdown"].is_number() {
        println!(
            "  fold with {} watchers               {:>12.0} events/s  = {:.0}% slower than without ({:.0} events/s; mean of 2 folds each, same run; goal ≤ 20%)",
            number(&["watchers"]),
            number(&["fold_with_watchers_events_per_second"]),
            100.0 * number(&["fold_with_watchers_slowdown"]),
            number(&["fold_without_watchers_events_per_second"])
        );
    }
    for sample in figures["memory_mib_by_events"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  projector memory after {:>9} events {:.0} MiB (peak {:.0} MiB)",
            sample["events"],
            sample["rss"].as_f64().unwrap_or(f64::NAN),
            sample["peak"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "  projector memory at the end          {:.0} MiB (peak {:.0} MiB) with a {} MiB sled cache",
        number(&["rss_mib_at_end"]),
        number(&["peak_rss_mib_at_end"]),
        number(&["sled_cache_mib"])
    );
    println!(
        "  views on disk                        {:.0} MiB",
        number(&["views_on_disk_mib"])
    );
    println!(
        "  GetRates, {} clients, TLS and a token {:>9.0} calls/s = {:.0}% of the same served plain, {:.0}/s (goal: costs ≤ 25%, so ≥ 75%)",
        number(&["clients"]),
        number(&["tls_get_rates_calls_per_second"]),
        100.0 * number(&["tls_vs_plain_get_rates"]),
        number(&["plain_get_rates_calls_per_second"])
    );
    if figures["r3_vs_r1_fold"].is_number() {
        println!(
            "  fold of {} events, 3 copies (cluster) {:>9.0} events/s = {:.0}% of 1 copy, {:.0}/s (goal ≥ 70%)",
            number(&["cluster_events"]),
            number(&["r3_fold_events_per_second"]),
            100.0 * number(&["r3_vs_r1_fold"]),
            number(&["r1_fold_events_per_second"])
        );
    }
    if figures["ingest"].is_object() {
        println!(
            "  raw publish, {} intake events, 1024 in flight {:>9.0} events/s",
            number(&["ingest", "events"]),
            number(&["ingest", "raw_publish_events_per_second"])
        );
        println!(
            "  intake service, posts of {LINES_PER_POST} lines, {} clients {:>9.0} events/s = {:.0}% of the raw publish (goals ≥ 20000/s, ≥ 40%)",
            number(&["ingest", "clients"]),
            number(&["ingest", "service_events_per_second"]),
            100.0 * number(&["ingest", "service_vs_raw_publish"])
        );
        println!(
            "  intake post of {LINES_PER_POST} lines              p50 {:.1} ms, p99 {:.1} ms",
            number(&["ingest", "post_p50_ms"]),
            number(&["ingest", "post_p99_ms"])
        );
    }
}

/// The call the GetRates goals are measured with: the province over the
/// reporting year (whose tree changed mid-year).
fn province_rates_request() -> GetRatesRequest {
    GetRatesRequest {
        unit_id: "P00".into(),
        period: "R2025".into(),
        min_stream_sequence: None,
    }
}

/// Lines in each NDJSON post of the ingest comparison.
const LINES_PER_POST: usize = 1000;

struct IngestFigures {
    events: usize,
    raw_per_second: f64,
    service_per_second: f64,
    post_p50_ms: f64,
    post_p99_ms: f64,
}

/// Generates `2 × args.ingest_events` distinct events of the intake
/// service's kinds (2024, another seed than the year already published):
/// the first half is published raw with acks in flight, the second posted
/// to a real `intake` process in NDJSON bodies of [`LINES_PER_POST`] lines.
async fn ingest_bench(
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
    scores_p50_ms: f64,
    scores_p99_ms: f64,
    /// Sorted delays (ms) from a publish's ack to the WatchRates answer.
    freshness: Option<Vec<f64>>,
    /// Memory when the views first reflected each milestone (events).
    memory_at: Vec<(u64, Memory)>,
    memory_end: Memory,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rates_per_second: f64,
    /// GetRates calls/s with the clients decoding every reply.
    decoded_rates_per_second: f64,
    health_per_second: f64,
}

async fn connect(addr: &str, log: &Path) -> anyhow::Result<Channel> {
    connect_endpoint(
        &tonic::transport::Endpoint::from_shared(addr.to_owned())?,
        log,
    )
    .await
}

/// A channel through `endpoint` once the projector answers (within 20 s);
/// otherwise an error with the projector's log.
pub(crate) async fn connect_endpoint(
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

/// The commune the freshness probes are received at.
const PROBE_UNIT: &str = "P00-PROBE";

/// Every unit of the registry but the probe (what watchers watch).
fn watched_units(units: &UnitRegistry) -> Vec<String> {
    units
        .iter()
        .map(|(_, unit)| unit.id.clone())
        .filter(|id| id != PROBE_UNIT)
        .collect()
}

/// Another projector folds the same stream, on fresh views (removed
/// after), with `watchers` watchers connected from its start; the seconds
/// until it reflects `last`. `round` names its files.
#[allow(clippy::too_many_arguments)]
async fn watched_fold(
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
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let outcome = async {
        let channel = connect(&addr, &log_path).await?;
        let connected = if watchers > 0 {
            Some(
                bench_watch::Watchers::connect(&addr, watchers, &watched_units(units), "R2025")
                    .await?,
            )
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

#[allow(clippy::too_many_arguments)]
async fn fold_and_query(
    args: &BenchArgs,
    addr: &str,
    pid: u32,
    last: u64,
    started: Instant,
    log: &Path,
    bus: &Bus,
    units: &UnitRegistry,
) -> anyhow::Result<Measured> {
    let channel = connect(addr, log).await?;
    let mut client = KpiServiceClient::new(channel.clone());
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

    // Watchers stay connected while the read path is measured.
    let watchers = if args.watchers > 0 {
        Some(
            bench_watch::Watchers::connect(addr, args.watchers, &watched_units(units), "R2025")
                .await?,
        )
    } else {
        None
    };

    // One client, sequential calls: latency percentiles. R2025 crosses
    // the reform of the simulated province (unless --no-reform).
    let request = province_rates_request();
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

    // Many clients, each on its own connection: calls/s of health Check
    // and of GetRates, in alternating windows, replies kept as bytes
    // (see bench_calls).
    let mut channels = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        channels.push(connect(addr, log).await?);
    }
    let (health_per_second, rates_per_second) = bench_calls::alternating(
        &channels,
        RawCall::new(
            "/grpc.health.v1.Health/Check",
            HealthCheckRequest {
                service: String::new(),
            },
        ),
        RawCall::new("/kpi.v1.KpiService/GetRates", request.clone()),
        Duration::from_secs_f64(args.seconds as f64 / 2.0),
    )
    .await?;
    // For comparison: the same calls with the clients decoding each reply.
    let (calls, seconds) = bench_calls::calls_per_window(
        &channels,
        RawCall::new("/kpi.v1.KpiService/GetRates", request.clone())
            .decoding_as::<kpi_api::pb::RatesReply>(),
        Duration::from_secs_f64(args.seconds as f64 / 2.0),
    )
    .await?;
    let decoded_rates_per_second = calls as f64 / seconds;
    drop(channels);

    // GetScores for the province over the reporting year.
    let scores_request = kpi_api::pb::GetScoresRequest {
        unit_id: "P00".into(),
        period: "R2025".into(),
    };
    for _ in 0..100 {
        client.get_scores(scores_request.clone()).await?;
    }
    let mut scores = hdrhistogram::Histogram::<u64>::new(3)?;
    for _ in 0..args.calls.min(2000) {
        let call = Instant::now();
        client.get_scores(scores_request.clone()).await?;
        scores.record(call.elapsed().as_micros() as u64)?;
    }
    drop(watchers);

    // Freshness under steady traffic for other units.
    let freshness = if args.freshness_rate > 0 {
        let mut simulator = Simulator::new(units, args.seed.wrapping_add(2));
        let start = vietnam_day(
            Utc.with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
                .single()
                .context("date")?,
            0,
        );
        let background: Vec<kpi_ingest::Outgoing> = simulator
            .history(start, 365, 2.0)
            .filter(|event| !event.subject.contains(PROBE_UNIT))
            .take(args.freshness_rate * 25)
            .map(crate::simulate::outgoing)
            .collect();
        let delays =
            bench_watch::freshness(addr, bus, PROBE_UNIT, background, args.freshness_rate, 30)
                .await?;
        eprintln!(
            "freshness at {} events/s: p50 {:.1} ms, p99 {:.1} ms",
            args.freshness_rate,
            bench_watch::quantile(&delays, 0.5),
            bench_watch::quantile(&delays, 0.99)
        );
        Some(delays)
    } else {
        None
    };

    Ok(Measured {
        fold_seconds,
        scores_p50_ms: scores.value_at_quantile(0.5) as f64 / 1000.0,
        scores_p99_ms: scores.value_at_quantile(0.99) as f64 / 1000.0,
        freshness,
        memory_at,
        memory_end,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        rates_per_second,
        decoded_rates_per_second,
        health_per_second,
    })
}

/// The warnings a projector logged while measured (a read that stalled and
/// started again shows here), at most ten.
fn print_warnings(log: &Path) {
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
