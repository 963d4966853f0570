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
//!
//! This file runs the stages in order and gathers their figures; the
//! stages and what they share live beside it:
//!
//! - `args`: the command line;
//! - `workload`: the simulated year, the probe commune, the measured call;
//! - `common`: ports, a clean disk, waiting for a projector, its warnings;
//! - `fold`: the raw read, the projector's fold and memory, watched folds;
//! - `reads`: GetRates and GetScores latency, GetRates against `Check`,
//!   WatchRates freshness;
//! - `calls`: calls/s from many clients (for `reads` and `production`);
//! - `watch`: WatchRates watchers and the freshness probes;
//! - `ingest`: the intake service against a raw publish;
//! - `production`: TLS and tokens, and three copies of the log;
//! - `print`: the figures for people.
//!
//! Dependencies go one way: this file uses the others and none of them
//! uses it; `args`, `common`, `calls` and `watch` use no other bench file.

mod args;
mod calls;
mod common;
mod fold;
mod ingest;
mod print;
mod production;
mod reads;
mod watch;
mod workload;

pub use args::BenchArgs;

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_simulator::{synthetic_registry, synthetic_registry_reformed};
use local_nats::LocalNats;
use serde_json::json;

use common::{connect, directory_size, free_port, print_warnings, settle_disk};
use fold::Folded;
use ingest::LINES_PER_POST;
use reads::Reads;
use workload::{province_rates_request, publish_year, PROBE_UNIT};

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
            print::print_run(&figures, index, repeat);
        }
        runs.push(figures);
    }
    if repeat > 1 && !args.json {
        print::print_summary(&runs);
    }
    Ok(ExitCode::SUCCESS)
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
    let raw_seconds = fold::raw_read(&bus, last).await?;
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
        .arg("--batch-size")
        .arg(args.batch_size.to_string())
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
    let (folded, read_path) = outcome?;
    let disk_mib = directory_size(&data_dir) as f64 / 1024.0 / 1024.0;

    // 4b. The same views served with TLS and tokens, against plain.
    settle_disk();
    let (plain_per_second, tls_per_second) = production::tls_cost(
        &production::Served {
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
        args.batch_size,
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
            let fold_seconds = fold::watched_fold(
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
            ingest::ingest_bench(
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
            production::replicated_fold(
                &nats.url(),
                &units,
                cluster_events,
                args.cache_mb,
                args.batch_size,
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
    let fold_rate = last as f64 / folded.seconds;
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
        "get_case_flow_by_unit_p99_ms": read_path.flow_p99_ms[0],
        "get_case_flow_by_field_p99_ms": read_path.flow_p99_ms[1],
        "get_case_flow_by_procedure_p99_ms": read_path.flow_p99_ms[2],
        "get_case_flow_uncached_by_unit_p99_ms": read_path.flow_uncached_p99_ms[0],
        "get_case_flow_uncached_by_field_p99_ms": read_path.flow_uncached_p99_ms[1],
        "get_case_flow_uncached_by_procedure_p99_ms": read_path.flow_uncached_p99_ms[2],
        "get_case_flow_calls_per_second": read_path.flow_per_second,
        "get_case_flow_vs_health_check": read_path.flow_per_second / read_path.flow_health_per_second,
        "get_scores_p50_ms": read_path.scores_p50_ms,
        "get_scores_p99_ms": read_path.scores_p99_ms,
        "freshness_p50_ms": read_path.freshness.as_ref().map(|d| watch::quantile(d, 0.5)),
        "freshness_p99_ms": read_path.freshness.as_ref().map(|d| watch::quantile(d, 0.99)),
        "freshness_events_per_second": args.freshness_rate,
        "get_rates_p50_ms": read_path.p50_ms,
        "get_rates_p99_ms": read_path.p99_ms,
        "get_rates_max_ms": read_path.max_ms,
        "get_rates_calls_per_second": read_path.rates_per_second,
        "health_check_calls_per_second": read_path.health_per_second,
        "get_rates_vs_health_check": read_path.rates_per_second / read_path.health_per_second,
        "get_rates_decoded_calls_per_second": read_path.decoded_rates_per_second,
        "get_rates_decoded_vs_health_check": read_path.decoded_rates_per_second / read_path.health_per_second,
        "clients": args.clients,
        "memory_mib_by_events": folded
            .memory_at
            .iter()
            .map(|(events, m)| json!({"events": events, "rss": m.rss_mib, "peak": m.peak_mib}))
            .collect::<Vec<_>>(),
        "rss_mib_at_end": folded.memory_end.rss_mib,
        "peak_rss_mib_at_end": folded.memory_end.peak_mib,
        "sled_cache_mib": args.cache_mb,
        "batch_size": args.batch_size,
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
            "tls_service_events_per_second": ingest.tls_per_second,
            "tls_vs_plain_service": ingest.tls_per_second / ingest.service_per_second,
            "post_p50_ms": ingest.post_p50_ms,
            "post_p99_ms": ingest.post_p99_ms,
        })),
    });
    Ok(figures)
}

/// The projector at `addr` (process `pid`, started at `started`, logging
/// to `log`): its fold of the stream up to `last`, then its read path.
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
) -> anyhow::Result<(Folded, Reads)> {
    let mut client = KpiServiceClient::new(connect(addr, log).await?);
    let folded = fold::time_fold(&mut client, pid, last, started).await?;
    let read_path = reads::measure(args, addr, log, &mut client, bus, units).await?;
    Ok((folded, read_path))
}
