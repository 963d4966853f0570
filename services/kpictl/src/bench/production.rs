//! The production settings' costs, for `kpictl bench` (issue 9):
//!
//! - **TLS and tokens**: GetRates calls/s from the same clients against
//!   copies of the same views served at once by two projectors, one plain,
//!   one with `--tls-cert/--tls-key/--tokens`, in windows plain, TLS, TLS,
//!   plain;
//! - **three copies of the log**: the fold rate (`kpictl replay`'s
//!   pipeline) of the same events from a `CASES` stream of one copy on one
//!   server and of three copies on a three-node cluster on loopback, in the
//!   order R1, R3, R3, R1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use kpi_api::pb::GetRatesRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::calls::{calls_per_window, RawCall};
use super::common::{connect_endpoint, free_port, settle_disk, Running};

/// The files a TLS server with tokens (the projector, intake) is started
/// with, and what a client needs.
pub(super) struct TlsSetup {
    pub(super) ca_pem: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) tokens: PathBuf,
    pub(super) token: String,
}

/// A CA, a certificate for localhost signed by it, and a tokens file with
/// one token of `role` for `scope`.
pub(super) fn tls_setup(dir: &Path, scope: &str, role: &str) -> anyhow::Result<TlsSetup> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kpictl bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let server_key = rcgen::KeyPair::generate()?;
    let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&server_key, &ca)?;
    let cert = dir.join(format!("bench-{role}-cert.pem"));
    let key = dir.join(format!("bench-{role}-key.pem"));
    std::fs::write(&cert, server.pem())?;
    std::fs::write(&key, server_key.serialize_pem())?;
    let token = format!("kpi_bench_{}", uuid::Uuid::new_v4().simple());
    let tokens = dir.join(format!("bench-{role}-tokens.json"));
    std::fs::write(
        &tokens,
        serde_json::to_vec(&serde_json::json!({"tokens": [{
            "name": "kpictl bench",
            "sha256": kpi_api::access::token_sha256(&token),
            "scope": scope,
            "role": role,
        }]}))?,
    )?;
    Ok(TlsSetup {
        ca_pem: ca.pem(),
        cert,
        key,
        tokens,
        token,
    })
}

/// What a measured projector is started with.
pub struct Served<'a> {
    pub projector_bin: &'a Path,
    pub nats_url: &'a str,
    pub units: &'a Path,
    /// Views already folded (the benchmark's own; copied for the TLS
    /// projector).
    pub data_dir: &'a Path,
    pub cache_mb: u64,
    pub work: &'a Path,
}

fn start(
    served: &Served<'_>,
    data_dir: &Path,
    port: u16,
    tls: Option<&TlsSetup>,
    log: &Path,
) -> anyhow::Result<Running> {
    let mut command = Command::new(served.projector_bin);
    command
        .arg("--nats-url")
        .arg(served.nats_url)
        .arg("--units")
        .arg(served.units)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--cache-mb")
        .arg(served.cache_mb.to_string());
    if let Some(tls) = tls {
        command
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .arg("--tokens")
            .arg(&tls.tokens);
    }
    let child = command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", served.projector_bin.display()))?;
    Ok(Running(child))
}

/// A channel to the projector on `port`, once it answers.
async fn channel(port: u16, tls: Option<&TlsSetup>, log: &Path) -> anyhow::Result<Channel> {
    let endpoint = match tls {
        None => Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?,
        Some(tls) => Endpoint::from_shared(format!("https://localhost:{port}"))?.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .domain_name("localhost"),
        )?,
    };
    connect_endpoint(&endpoint, log).await
}

/// GetRates calls/s served plain and with TLS and tokens: `(plain, tls)`.
/// Two projectors serve copies of the same views at once, one plain, one
/// with TLS and tokens; the clients call them in windows plain, TLS, TLS,
/// plain, so that neither a restart nor a drift of the machine falls on
/// one side only.
pub async fn tls_cost(
    served: &Served<'_>,
    request: &GetRatesRequest,
    clients: usize,
    window: Duration,
) -> anyhow::Result<(f64, f64)> {
    let setup = tls_setup(served.work, &request.unit_id, "reader")?;
    let copy = served.work.join("views-tls");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(served.data_dir)
        .arg(&copy)
        .status()
        .context("copying the views for the TLS projector")?;
    anyhow::ensure!(
        copied.success(),
        "cp -a {} failed",
        served.data_dir.display()
    );
    let calls = [
        RawCall::new("/kpi.v1.KpiService/GetRates", request.clone()),
        RawCall::new("/kpi.v1.KpiService/GetRates", request.clone()).with_token(&setup.token)?,
    ];
    let mut running = Vec::new();
    let mut channels: [Vec<Channel>; 2] = [Vec::new(), Vec::new()];
    for (kind, (data_dir, tls)) in [(served.data_dir, None), (copy.as_path(), Some(&setup))]
        .into_iter()
        .enumerate()
    {
        let port = free_port()?;
        let log = served.work.join(format!("projector-tls-{kind}.log"));
        running.push(start(served, data_dir, port, tls, &log)?);
        for _ in 0..clients {
            channels[kind].push(channel(port, tls, &log).await?);
        }
    }
    let mut totals = [(0u64, 0f64); 2];
    for kind in [0usize, 1, 1, 0] {
        let (count, seconds) =
            calls_per_window(&channels[kind], calls[kind].clone(), window).await?;
        totals[kind].0 += count;
        totals[kind].1 += seconds;
    }
    drop(channels);
    drop(running);
    let _ = std::fs::remove_dir_all(&copy);
    let rate = |(count, seconds): (u64, f64)| count as f64 / seconds;
    Ok((rate(totals[0]), rate(totals[1])))
}

/// Fold rates (events/s) of the first `events` events from a stream of one
/// copy (`r1_url`) and of three copies on a three-node loopback cluster
/// that `publish` fills with the same events: `(r1, r3)`.
pub async fn replicated_fold<F, Fut>(
    r1_url: &str,
    units: &kpi_domain::UnitRegistry,
    events: u64,
    cache_mb: u64,
    batch_size: usize,
    work: &Path,
    publish: F,
) -> anyhow::Result<(f64, f64)>
where
    F: FnOnce(kpi_bus::Bus) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let nodes = local_nats::LocalNats::start_cluster(3)?;
    let urls = nodes
        .iter()
        .map(local_nats::LocalNats::url)
        .collect::<Vec<_>>()
        .join(",");
    let r3 = kpi_bus::NatsArgs {
        replicas: 3,
        ..kpi_bus::NatsArgs::plain(urls)
    };
    let bus = wait_for_cluster(&r3).await?;
    let started = Instant::now();
    let published = publish(bus).await?;
    anyhow::ensure!(
        published >= events,
        "the cluster's stream holds {published} events, not {events}"
    );
    eprintln!(
        "published {events} events to three copies in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let r1 = kpi_bus::NatsArgs::plain(r1_url.to_owned());
    let units = std::sync::Arc::new(units.clone());
    let mut seconds = [0f64; 2];
    for (round, copies) in [1usize, 3, 3, 1].into_iter().enumerate() {
        settle_disk();
        let nats = if copies == 1 { &r1 } else { &r3 };
        let dir = work.join(format!("replicated-fold-{round}"));
        let (_, fold_seconds) = crate::audit::replay_into(
            &dir,
            units.clone(),
            nats,
            kpi_projection::Until::Sequence(events),
            kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day(),
            cache_mb,
            batch_size,
        )
        .await?;
        let _ = std::fs::remove_dir_all(&dir);
        seconds[usize::from(copies == 3)] += fold_seconds;
    }
    let rate = |seconds: f64| 2.0 * events as f64 / seconds;
    Ok((rate(seconds[0]), rate(seconds[1])))
}

/// The cluster's bus once `CASES` has three copies and a leader.
async fn wait_for_cluster(args: &kpi_bus::NatsArgs) -> anyhow::Result<kpi_bus::Bus> {
    let started = Instant::now();
    loop {
        let attempt = async {
            let bus = args.connect("kpictl-bench-cluster").await?;
            let mut stream = bus.ensure_stream().await?;
            let info = stream.info().await?;
            anyhow::ensure!(
                info.cluster
                    .as_ref()
                    .and_then(|c| c.leader.as_ref())
                    .is_some(),
                "no leader yet"
            );
            Ok(bus)
        };
        match attempt.await {
            Ok(bus) => return Ok(bus),
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(err) => anyhow::bail!("the loopback cluster has no CASES leader after 60 s: {err}"),
        }
    }
}
