//! The projector: folds the `CASES` stream into sled KPI views and serves
//! them over gRPC from the same store.
//!
//! Two stages run side by side: an async reader pulls messages from an
//! ordered consumer starting at the store's checkpoint + 1 and groups them
//! into batches; a fold thread validates, folds and commits each batch with
//! its checkpoint in one atomic write. After any restart — clean or
//! `kill -9` — the views resume from their own checkpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kpi_api::KpiApi;
use kpi_domain::{Targets, UnitRegistry};
use kpi_store::{Store, StoreOptions};
use tokio::sync::watch;

/// Folds case events from NATS JetStream into sled KPI views and serves
/// them over gRPC (kpi.v1.KpiService, health, reflection).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The NATS server to read the CASES stream from, and the projector's
    /// own NATS user (read-only on CASES, deploy/nats/users.conf).
    #[command(flatten)]
    nats: kpi_bus::NatsArgs,
    /// The unit registry (JSON, CONTRACT §1).
    #[arg(long, env = "KPI_UNITS")]
    units: PathBuf,
    /// Targets by year and unit (JSON); the seed plans' defaults otherwise.
    #[arg(long, env = "KPI_TARGETS")]
    targets: Option<PathBuf>,
    /// Where the sled views live.
    #[arg(long, env = "KPI_DATA_DIR", default_value = "data/projector")]
    data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, env = "KPI_LISTEN", default_value = kpi_api::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// sled page cache in MiB: the bound on the views' memory.
    #[arg(long, env = "KPI_CACHE_MB", default_value_t = 64)]
    cache_mb: u64,
    /// Most messages folded into one atomic write.
    #[arg(long, default_value_t = 2000)]
    batch_size: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let units_bytes = std::fs::read(&args.units)
        .with_context(|| format!("reading the units file {}", args.units.display()))?;
    let units = Arc::new(
        UnitRegistry::from_json(&units_bytes)
            .with_context(|| format!("units file {}", args.units.display()))?,
    );
    let targets = Arc::new(match &args.targets {
        None => Targets::defaults(),
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the targets file {}", path.display()))?;
            Targets::from_json(&bytes, &units)
                .with_context(|| format!("targets file {}", path.display()))?
        }
    });

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let options = StoreOptions {
        cache_bytes: args.cache_mb * 1024 * 1024,
        ..StoreOptions::default()
    };
    let store = Arc::new(
        Store::open(&args.data_dir, &options)
            .with_context(|| format!("opening the views in {}", args.data_dir.display()))?,
    );
    let today = kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day();
    if let Some(reason) = store
        .adopt_units(&units, today)
        .context("checking the units file against the views")?
    {
        tracing::info!(%reason, "the rollups were recomputed from the case records (no replay of the log)");
    }
    let checkpoint = store.checkpoint()?;
    tracing::info!(data_dir = %args.data_dir.display(), checkpoint, units = units.len(), "views opened");

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (is another projector running?)",
                args.listen
            )
        })?;
    tracing::info!(listen = %args.listen, "serving kpi.v1.KpiService, grpc.health.v1 and reflection");

    let (stop_sender, stop) = watch::channel(false);
    let api = KpiApi::new(store.clone(), units.clone(), targets);
    let mut server_stop = stop.clone();
    let server = tokio::spawn(kpi_api::serve(listener, api, async move {
        let _ = server_stop.wait_for(|stopped| *stopped).await;
    }));

    let mut folding = tokio::spawn(kpi_projection::run(
        kpi_projection::Config {
            nats: args.nats,
            client_name: "kpi-projector".to_owned(),
            batch_size: args.batch_size.max(1),
            until: None,
        },
        store.clone(),
        units,
        stop.clone(),
    ));

    let fold_result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("stopping: finishing the current batch");
            let _ = stop_sender.send(true);
            (&mut folding).await
        }
        // Only a fatal error (the store cannot be written) ends it early.
        ended = &mut folding => ended,
    };
    let _ = stop_sender.send(true);
    let fold_result = fold_result.context("fold task")?;
    store.flush().context("flushing the views")?;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(error = %err, "gRPC server"),
        Err(err) => tracing::error!(error = %err, "gRPC server task"),
    }
    tracing::info!(checkpoint = store.checkpoint()?, "stopped");
    fold_result
}

/// SIGTERM (systemd, kill) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
