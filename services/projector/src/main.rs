//! The projector: folds the `CASES` stream into sled KPI views and serves
//! them over gRPC from the same store.
//!
//! The fold pipeline (`kpi-projection`) reads an ordered consumer from the
//! views' checkpoint + 1, validates on one thread, folds and commits each
//! batch with its checkpoint in one atomic write on another. After any
//! restart — clean or `kill -9` — the views resume from their own
//! checkpoint. The supervisor owns that pipeline and, on request, rebuilds
//! the views beside the live ones and switches to them (blue/green).

mod layout;
mod supervisor;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kpi_api::KpiApi;
use kpi_domain::{Targets, UnitRegistry};
use kpi_store::{Store, StoreOptions};
use layout::Layout;
use supervisor::{Operations, Settings, Supervisor};
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
    /// Points of the QĐ 766 components that case events cannot give (the
    /// procedure catalogue's), by component, year and unit (JSON; README).
    #[arg(long, env = "KPI_SCORES_FACTS")]
    scores_facts: Option<PathBuf>,
    /// Names of fields and procedures for the case-flow report's rows
    /// (JSON `{"fields": {code: name}, "procedures": {code: name}}`;
    /// `deploy/catalogue.json` names the common fields).
    #[arg(long, env = "KPI_CATALOGUE")]
    catalogue: Option<PathBuf>,
    /// Where the sled views live.
    #[arg(long, env = "KPI_DATA_DIR", default_value = "data/projector")]
    data_dir: PathBuf,
    /// gRPC listen address. An address that is not loopback needs
    /// --tokens.
    #[arg(long, env = "KPI_LISTEN", default_value = kpi_api::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "KPI_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "KPI_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Bearer tokens (JSON, CONTRACT §8; `kpictl token new` makes the
    /// lines): every KpiService call then needs one and reads only its
    /// scope. Read again on SIGHUP.
    #[arg(long, env = "KPI_TOKENS")]
    tokens: Option<PathBuf>,
    /// sled page cache in MiB: the bound on the views' memory.
    #[arg(long, env = "KPI_CACHE_MB", default_value_t = 64)]
    cache_mb: u64,
    /// Answers kept for callers to share, at most this many MiB (the
    /// least used go first): what a dashboard asking for many distinct
    /// periods may take.
    #[arg(long, env = "KPI_ANSWER_CACHE_MB", default_value_t = 32)]
    answer_cache_mb: u64,
    /// Serve Prometheus metrics (`GET /metrics`) on this address: events
    /// folded, kept aside and held, checkpoint and lag, batch sizes and
    /// fold latency, gRPC calls by method and code.
    #[arg(long, env = "KPI_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Most messages folded into one atomic write (a projector catching up
    /// folds this many at a time; one following the stream live, what has
    /// arrived).
    #[arg(long, default_value_t = kpi_projection::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Rebuild the views from the log beside the live ones (blue/green)
    /// and switch to them when they have caught up; queries go on. Also
    /// `kpictl rebuild` on a running projector.
    #[arg(long)]
    rebuild: bool,
    /// Serve the views in --data-dir as they are, without reading the
    /// stream: a frozen audit copy (`kpictl replay --until N`), whose
    /// answers stay at its stream sequence while the log goes on. GetCase
    /// still reads events from the log.
    #[arg(long, conflicts_with = "rebuild")]
    frozen: bool,
}

/// Whether an error needs an operator rather than a restart
/// ([`kpi_bus::EXIT_NEEDS_OPERATOR`]): a units, targets, facts or catalogue file that
/// does not load, a stream that is not this system's, views of another
/// format or counting rule or that no longer match the stream, an
/// unreadable or underflowing stored value. The message says what to do.
fn needs_operator(err: &anyhow::Error) -> bool {
    use kpi_store::StoreError;
    err.chain().any(|cause| {
        cause.is::<kpi_domain::units::UnitsError>()
            || cause.is::<kpi_domain::targets::TargetsError>()
            || cause.is::<kpi_api::TokensError>()
            || cause.is::<TlsFilesError>()
            || cause.is::<kpi_api::FactsError>()
            || cause.is::<kpi_api::CatalogueError>()
            || cause.is::<kpi_projection::StreamLeftTheViews>()
            || matches!(
                cause.downcast_ref::<kpi_bus::BusError>(),
                Some(
                    kpi_bus::BusError::StreamMismatch { .. }
                        | kpi_bus::BusError::LoginRefused { .. }
                        | kpi_bus::BusError::Violation { .. }
                )
            )
            || matches!(
                cause.downcast_ref::<StoreError>(),
                Some(
                    StoreError::Corrupt { .. }
                        | StoreError::Format { .. }
                        | StoreError::Rules { .. }
                        | StoreError::UnknownUnit(_)
                        | StoreError::Underflow { .. }
                        | StoreError::StreamChanged { .. }
                        | StoreError::StreamGap { .. }
                        | StoreError::UnitsNoLongerHold { .. }
                )
            )
    })
}

/// Whether the disk holding the views filled up: a restart fixes it once
/// there is space again, so the status stays 1 (systemd retries).
fn disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<kpi_store::StoreError>()
            .is_some_and(kpi_store::StoreError::is_disk_full)
    })
}

fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let status = if needs_operator(&err) {
                kpi_bus::EXIT_NEEDS_OPERATOR
            } else {
                1
            };
            tracing::error!(exit_status = status, "{err:#}");
            if disk_full(&err) {
                tracing::error!(
                    exit_status = status,
                    "the disk holding --data-dir is full: nothing of the last batch was committed. \
                     Free space there (or move the data directory to a larger disk) and start the \
                     projector again: it resumes from its last commit, nothing lost or counted twice \
                     (under systemd it is restarted every 2 s until it can write)"
                );
            }
            ExitCode::from(status)
        }
    }
}

fn start() -> anyhow::Result<()> {
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

    let mut serving = serving(&args, &units)?;

    let layout = Layout::open(&args.data_dir)?;
    let views_dir = layout.current()?;
    let store_options = StoreOptions {
        cache_bytes: args.cache_mb * 1024 * 1024,
        ..StoreOptions::default()
    };
    let store = Arc::new(
        Store::open(&views_dir, &store_options)
            .with_context(|| format!("opening the views in {}", views_dir.display()))?,
    );
    let today = kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day();
    if let Some(reason) = store
        .adopt_units(&units, today)
        .context("checking the units file against the views")?
    {
        tracing::info!(%reason, "the rollups were recomputed from the case records (no replay of the log)");
    }
    let checkpoint = store.checkpoint()?;
    tracing::info!(views = %views_dir.display(), checkpoint, units = units.len(), "views opened");
    if args.frozen {
        tracing::warn!(
            checkpoint,
            "frozen (--frozen): serving the views as they were at stream sequence {checkpoint}; \
             the stream is not read, nothing will change them"
        );
    }

    let (stop_metrics, metrics_stopped) = watch::channel(false);
    let fold_metrics = match args.metrics_listen {
        None => None,
        Some(listen) => {
            let mut registry = prometheus_client::registry::Registry::default();
            let fold = kpi_metrics::Fold::register(&mut registry);
            fold.add(kpi_projection::fold_counts(&store.totals()?));
            serving.requests = Some(kpi_metrics::Requests::register(
                &mut registry,
                kpi_metrics::Protocol::Grpc,
            ));
            let mut stopped = metrics_stopped;
            kpi_metrics::spawn(listen, registry, async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            })
            .await?;
            Some(fold)
        }
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "listening on {} (is another projector running?)",
                args.listen
            )
        })?;
    tracing::info!(
        listen = %args.listen,
        tls = serving.tls.is_some(),
        tokens = serving.access.needs_tokens(),
        "serving kpi.v1.KpiService, grpc.health.v1 and reflection"
    );
    reload_tokens_on_sighup(serving.access.clone());

    let mut api = KpiApi::new(store, units.clone(), targets)
        .with_log(args.nats.clone())
        .with_answer_cache_bytes(args.answer_cache_mb * 1024 * 1024);
    if let Some(path) = &args.scores_facts {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the scores facts file {}", path.display()))?;
        let facts = kpi_api::ScoreFacts::from_json(&bytes, &units)
            .with_context(|| format!("scores facts file {}", path.display()))?;
        api = api.with_score_facts(facts);
    }
    if let Some(path) = &args.catalogue {
        let catalogue = kpi_api::Catalogue::from_file(path)?;
        api = api.with_catalogue(catalogue);
    }
    let (supervisor, mut failures) = Supervisor::new(
        Settings {
            nats: args.nats,
            batch_size: args.batch_size.max(1),
            store_options,
            metrics: fold_metrics,
        },
        units,
        layout,
        api.views(),
    );
    let api = if args.frozen {
        api.frozen()?
    } else {
        api.with_operations(Arc::new(Operations(supervisor.clone())))
    };
    let (stop_server, server_stopped) = watch::channel(false);
    let mut server_stopped = server_stopped;
    let server = tokio::spawn(kpi_api::serve(listener, api, serving, async move {
        let _ = server_stopped.wait_for(|stopped| *stopped).await;
    }));

    if !args.frozen {
        supervisor.start_live();
    }
    if args.rebuild {
        match supervisor.request_rebuild() {
            Ok(message) => tracing::info!("{message}"),
            Err(message) => tracing::warn!("{message}"),
        }
    }

    let outcome = loop {
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("stopping: finishing the current batch");
                break Ok(());
            }
            failure = failures.recv() => match failure {
                // Only the live fold's failure stops the projector: a failed
                // rebuild leaves the live views as they are.
                Some((generation, err)) if generation == supervisor.live_generation() => break Err(err),
                Some(_) => {}
                None => break Ok(()),
            },
        }
    };
    let stopped = supervisor.stop().await;
    let _ = stop_server.send(true);
    let _ = stop_metrics.send(true);
    // Calls in flight get a moment to finish; connections clients keep
    // open (a dashboard's, a WatchRates stream) are then closed.
    match tokio::time::timeout(SERVER_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::error!(error = %err, "gRPC server"),
        Ok(Err(err)) => tracing::error!(error = %err, "gRPC server task"),
        Err(_) => tracing::info!(
            "clients still connected {} s after the stop: closing their connections",
            SERVER_GRACE.as_secs()
        ),
    }
    tracing::info!("stopped");
    outcome.and(stopped)
}

/// How long a stopping projector waits for its clients' calls.
const SERVER_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A TLS certificate or key that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the TLS {what} {path}: {source}")]
struct TlsFilesError {
    what: &'static str,
    path: String,
    source: std::io::Error,
}

/// TLS and tokens as the flags say; refuses to serve every unit to the
/// network without tokens.
fn serving(args: &Args, units: &Arc<UnitRegistry>) -> anyhow::Result<kpi_api::Serving> {
    // No open port on the network, no token in clear (CONTRACT §8).
    kpi_access::check_listen(
        args.listen,
        args.tokens.is_some(),
        args.tls_cert.is_some(),
        "reads every unit",
    )?;
    let access = match &args.tokens {
        Some(path) => kpi_api::Access::from_file(path, units.clone())?,
        None => kpi_api::Access::open(),
    };
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|source| TlsFilesError {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tonic::transport::Identity::from_pem(
            read("certificate", cert)?,
            read("key", key)?,
        )),
        _ => None,
    };
    Ok(kpi_api::Serving {
        access,
        tls,
        limits: kpi_api::Limits::default(),
        requests: None,
    })
}

/// Reads the tokens file again on each SIGHUP; one that does not load
/// leaves the tokens in force as they were. (Without --tokens a SIGHUP
/// is logged and ignored, rather than ending the process.)
fn reload_tokens_on_sighup(access: kpi_api::Access) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP: the tokens file is read at start only");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                if !access.needs_tokens() {
                    tracing::info!("SIGHUP: no tokens file to read again (no --tokens)");
                    continue;
                }
                match access.reload() {
                    Ok(count) => tracing::info!(tokens = count, "tokens file read again"),
                    Err(err) => tracing::error!(
                        error = %err,
                        "tokens file not taken: the tokens in force stay as they were"
                    ),
                }
            }
        });
    }
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
