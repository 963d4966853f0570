//! Everything an ingest service binary does, but choosing its name: flags,
//! the units file, the NATS connection and stream check, the HTTP server,
//! and a graceful stop on SIGTERM or Ctrl-C (requests in flight finish).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kpi_bus::NatsArgs;
use kpi_domain::UnitRegistry;

use crate::batch::Ingestor;
use crate::dvcqg::FieldMap;
use crate::http::{router, App};
use crate::service::{Accepts, Service};

/// The flags every ingest service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Where to listen for HTTP (default: intake 127.0.0.1:8081, resolution
    /// 127.0.0.1:8082, feedback 127.0.0.1:8083).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The unit registry (JSON, CONTRACT §1).
    #[arg(long, env = "KPI_UNITS")]
    pub units: PathBuf,
    /// How long an event may take to be stored by JetStream (retried with
    /// backoff meanwhile) before the answer is 503, e.g. 5s or 1500ms.
    #[arg(long, env = "KPI_PUBLISH_DEADLINE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_deadline: Duration,
    /// Serve Prometheus metrics (`GET /metrics`) on this address: events
    /// and dossiers by outcome, HTTP requests by path and status.
    #[arg(long, env = "KPI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Logs to stderr; `RUST_LOG` overrides the level.
pub fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Reads a units file, naming it in any error.
pub fn load_units(path: &Path) -> anyhow::Result<UnitRegistry> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the units file {}", path.display()))?;
    UnitRegistry::from_json(&bytes).with_context(|| format!("units file {}", path.display()))
}

/// Reads a `--field-map` file, or the empty map.
pub fn load_field_map(path: Option<&Path>) -> anyhow::Result<FieldMap> {
    match path {
        None => Ok(FieldMap::default()),
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the field map {}", path.display()))?;
            FieldMap::from_json(&bytes).map_err(|reason| {
                FieldMapError {
                    path: path.display().to_string(),
                    reason,
                }
                .into()
            })
        }
    }
}

/// A `--field-map` file that does not load.
#[derive(Debug, thiserror::Error)]
#[error("field map {path}: {reason}")]
pub struct FieldMapError {
    path: String,
    reason: String,
}

/// Whether an error needs an operator rather than a restart
/// ([`kpi_bus::EXIT_NEEDS_OPERATOR`]): a units file or field map that does
/// not load, a `CASES` stream that is not this system's.
fn needs_operator(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<kpi_domain::UnitsError>()
            || cause.is::<FieldMapError>()
            || matches!(
                cause.downcast_ref::<kpi_bus::BusError>(),
                Some(kpi_bus::BusError::StreamMismatch { .. })
            )
    })
}

/// Runs `service` until SIGTERM or Ctrl-C. `dvcqg` is the field map of the
/// service that takes DVCQG payloads (intake).
pub fn main(service: Service, args: ServiceArgs, dvcqg: Option<PathBuf>) -> ExitCode {
    init_tracing("info,async_nats=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(service, args, dvcqg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            if needs_operator(&err) {
                ExitCode::from(kpi_bus::EXIT_NEEDS_OPERATOR)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(service: Service, args: ServiceArgs, dvcqg: Option<PathBuf>) -> anyhow::Result<()> {
    let units = Arc::new(load_units(&args.units)?);
    let field_map = match service {
        Service::Intake => Some(load_field_map(dvcqg.as_deref())?),
        _ => None,
    };
    let listen = match args.listen {
        Some(listen) => listen,
        None => service
            .default_listen()
            .parse()
            .context("the default listen address")?,
    };
    let bus = args
        .nats
        .connect(&format!("kpi-{}", service.name()))
        .await?;
    bus.ensure_stream()
        .await
        .context("checking the CASES stream")?;
    let (ingested, requests) = match args.metrics_listen {
        None => (None, None),
        Some(listen) => {
            let mut registry = prometheus_client::registry::Registry::default();
            let ingested = kpi_metrics::Ingested::register(&mut registry);
            let requests =
                kpi_metrics::Requests::register(&mut registry, kpi_metrics::Protocol::Http);
            kpi_metrics::spawn(listen, registry, shutdown_signal()).await?;
            (Some(ingested), Some(requests))
        }
    };
    let app = Arc::new(App {
        name: service.name(),
        ingestor: Ingestor::new(
            bus,
            units.clone(),
            Accepts::Service(service),
            args.publish_deadline,
        ),
        dvcqg: field_map,
        ingested,
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "listening on {listen} (is another {} running?)",
                service.name()
            )
        })?;
    tracing::info!(
        service = service.name(),
        %listen,
        units = units.len(),
        kinds = ?service.kinds().iter().map(|kind| kind.as_str()).collect::<Vec<_>>(),
        "accepting events: POST /v1/events{}, GET /healthz",
        if service == Service::Intake { ", POST /v1/dvcqg" } else { "" }
    );
    let router = match requests {
        Some(requests) => router(app).layer(requests.layer()),
        None => router(app),
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!(service = service.name(), "stopped");
    Ok(())
}

/// SIGTERM (systemd, kill) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
