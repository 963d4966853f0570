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
use crate::senders::Senders;
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
    /// Sender tokens (JSON, CONTRACT §8.1; `kpictl token new --role
    /// sender` makes the lines): every post then needs one, and stores
    /// only events of units in its scope. Read again on SIGHUP.
    #[arg(long, env = "KPI_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "KPI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "KPI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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
            || cause.is::<kpi_access::TokensError>()
            || cause.is::<crate::tls::TlsFilesError>()
            || matches!(
                cause.downcast_ref::<kpi_bus::BusError>(),
                Some(
                    kpi_bus::BusError::StreamMismatch { .. }
                        | kpi_bus::BusError::LoginRefused { .. }
                        | kpi_bus::BusError::Violation { .. }
                )
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
    // No open port on the network, no token in clear (CONTRACT §8, §8.1).
    kpi_access::check_listen(
        listen,
        args.tokens.is_some(),
        args.tls_cert.is_some(),
        "sends events for every unit",
    )?;
    let senders = match &args.tokens {
        Some(path) => Senders::from_file(path, units.clone())?,
        None => Senders::open(),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let bus = args
        .nats
        .connect(&format!("kpi-{}", service.name()))
        .await?;
    if let Err(err) = bus.ensure_stream().await {
        // Refused by the server's permissions, the cause to name is those.
        return Err(match bus.violated() {
            Some(refused) => refused.into(),
            None => anyhow::Error::from(err).context("checking the CASES stream"),
        });
    }
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
    let violations = bus.clone();
    let app = Arc::new(App::new(
        service.name(),
        Ingestor::new(
            bus,
            units.clone(),
            Accepts::Service(service),
            args.publish_deadline,
        ),
        field_map,
        ingested,
        senders.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "listening on {listen} (is another {} running?)",
                service.name()
            )
        })?;
    spawn_reload_on_hangup(senders.clone());
    tracing::info!(
        service = service.name(),
        %listen,
        tls = tls.is_some(),
        tokens = senders.needs_tokens(),
        units = units.len(),
        kinds = ?service.kinds().iter().map(|kind| kind.as_str()).collect::<Vec<_>>(),
        "accepting events: POST /v1/events{}, GET /healthz",
        if service == Service::Intake { ", POST /v1/dvcqg" } else { "" }
    );
    let router = match requests {
        Some(requests) => router(app).layer(requests.layer()),
        None => router(app),
    };
    // A user the bus refuses what it must do cannot serve: the service
    // stops, naming the user (status 78).
    let watched = violations.clone();
    let stopped = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = watched.violation() => {}
        }
    };
    let served = match tls {
        Some(config) => {
            let listener =
                crate::tls::TlsListener::new(listener, config).context("serving HTTPS")?;
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
        }
    };
    served.context("serving HTTP")?;
    if let Some(refused) = violations.violated() {
        return Err(refused.into());
    }
    tracing::info!(service = service.name(), "stopped");
    Ok(())
}

/// Reads the tokens file again on each SIGHUP; a file that does not load
/// leaves the tokens in force as they were.
fn spawn_reload_on_hangup(senders: Senders) {
    if !senders.needs_tokens() {
        return;
    }
    #[cfg(unix)]
    tokio::spawn(async move {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(hangups) => hangups,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP: the tokens file is read at start only");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match senders.reload() {
                Ok(count) => tracing::info!(tokens = count, "tokens file read again"),
                Err(err) => {
                    tracing::error!(error = %err, "tokens file not read again; the tokens in force stay")
                }
            }
        }
    });
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
