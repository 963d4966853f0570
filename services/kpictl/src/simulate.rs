//! `kpictl simulate`: realistic synthetic traffic for a unit registry.
//!
//! First a backfill — cases over the past `--days` days, each with its
//! whole life (received, synced, paid, resolved early, on time or late,
//! apology letters, ratings, feedback). Events dated up to now are
//! published at once; later ones wait. With `--follow`, new cases keep
//! arriving at `--cases-per-minute` and waiting events are published when
//! their time comes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kpi_domain::vietnam;
use kpi_simulator::{vietnam_day, SimEvent, Simulator};

use crate::{load_units, BusArgs};
use kpi_ingest::{Outgoing, Publisher, Service, Stored, DEFAULT_DEADLINE};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Backfill this many past days (0: none).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Cases a working day at each commune during the backfill.
    #[arg(long, default_value_t = 20.0)]
    pub cases_per_day: f64,
    /// After the backfill, keep publishing live traffic until stopped.
    #[arg(long)]
    pub follow: bool,
    /// New cases a minute (all communes together) when following.
    #[arg(long, default_value_t = 30.0)]
    pub cases_per_minute: f64,
    /// Stop following after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Random seed; the same seed and options give the same backfill.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write every generated event (past and future) to this NDJSON file
    /// instead of publishing.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Send the events through the ingest services over HTTP (as the
    /// provincial system would) instead of publishing them directly.
    #[arg(long)]
    pub via_services: bool,
    /// The intake service, with --via-services.
    #[arg(long, env = "KPI_INTAKE_URL", default_value = "http://127.0.0.1:8081")]
    pub intake_url: String,
    /// The resolution service, with --via-services.
    #[arg(
        long,
        env = "KPI_RESOLUTION_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub resolution_url: String,
    /// The feedback service, with --via-services.
    #[arg(
        long,
        env = "KPI_FEEDBACK_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub feedback_url: String,
    /// A sender token (`kpictl token new --role sender`), for ingest
    /// services started with --tokens (CONTRACT §8.1); with --via-services.
    #[arg(long, env = "KPI_SENDER_TOKEN", hide_env_values = true)]
    pub sender_token: Option<String>,
    /// Trust this CA (PEM) for the ingest services' certificates
    /// (https://… URLs) instead of the system's roots.
    #[arg(long)]
    pub services_ca: Option<PathBuf>,
}

/// Where simulated events go: straight onto the bus, or through the
/// ingest services' HTTP API in NDJSON posts.
enum Sink {
    Bus(Box<Publisher<()>>),
    Services(ServiceSink),
}

/// Lines a post carries at most.
const LINES_PER_POST: usize = 500;

struct ServiceSink {
    client: reqwest::Client,
    /// `Bearer <sender token>`, when the services take tokens.
    authorization: Option<String>,
    /// Per service: its URL and the NDJSON body being filled.
    services: Vec<(Service, String, Vec<u8>, usize)>,
}

impl Sink {
    /// Sends one event; returns how many events failed meanwhile.
    async fn send(&mut self, event: SimEvent) -> anyhow::Result<usize> {
        match self {
            Sink::Bus(publisher) => Ok(count_failures(publisher.send((), outgoing(event)).await)),
            Sink::Services(sink) => sink.send(event).await,
        }
    }

    /// Sends everything still buffered; returns how many failed.
    async fn flush(&mut self) -> anyhow::Result<usize> {
        match self {
            Sink::Bus(publisher) => Ok(count_failures(publisher.drain().await)),
            Sink::Services(sink) => sink.flush_all().await,
        }
    }
}

impl ServiceSink {
    fn new(args: &SimulateArgs) -> anyhow::Result<ServiceSink> {
        let url = |base: &str| format!("{}/v1/events", base.trim_end_matches('/'));
        let services = vec![
            (Service::Intake, url(&args.intake_url), Vec::new(), 0),
            (
                Service::Resolution,
                url(&args.resolution_url),
                Vec::new(),
                0,
            ),
            (Service::Feedback, url(&args.feedback_url), Vec::new(), 0),
        ];
        if args.sender_token.is_some() {
            for (_, url, ..) in &services {
                kpi_access::token_may_travel(url, "--sender-token").map_err(anyhow::Error::msg)?;
            }
        }
        let mut client = reqwest::Client::builder();
        if let Some(ca) = &args.services_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading the CA certificate {}", ca.display()))?;
            client = client.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("the CA certificate {}", ca.display()))?,
            );
        }
        Ok(ServiceSink {
            client: client.build().context("the HTTPS client")?,
            authorization: args
                .sender_token
                .as_ref()
                .map(|token| format!("Bearer {token}")),
            services,
        })
    }

    async fn send(&mut self, event: SimEvent) -> anyhow::Result<usize> {
        let owner = Service::owner_of(event.kind);
        let index = self
            .services
            .iter()
            .position(|(service, ..)| *service == owner)
            .unwrap_or(0);
        let (_, _, body, lines) = &mut self.services[index];
        body.extend_from_slice(&event.payload);
        body.push(b'\n');
        *lines += 1;
        if *lines >= LINES_PER_POST {
            return self.flush(index).await;
        }
        Ok(0)
    }

    async fn flush_all(&mut self) -> anyhow::Result<usize> {
        let mut failed = 0;
        for index in 0..self.services.len() {
            failed += self.flush(index).await?;
        }
        Ok(failed)
    }

    /// Posts one service's buffered lines; a 503 is sent again (the same
    /// body: what was stored is not counted twice) up to three times.
    async fn flush(&mut self, index: usize) -> anyhow::Result<usize> {
        let (service, url, body, lines) = &mut self.services[index];
        if *lines == 0 {
            return Ok(0);
        }
        let body = std::mem::take(body);
        let sent = std::mem::take(lines);
        for attempt in 1..=3 {
            let mut request = self
                .client
                .post(url.as_str())
                .header("content-type", "application/x-ndjson");
            if let Some(authorization) = &self.authorization {
                request = request.header("authorization", authorization);
            }
            let response = request.body(body.clone()).send().await.with_context(|| {
                format!(
                    "posting to the {} service at {url} (is it running?)",
                    service.name()
                )
            })?;
            let status = response.status();
            let report: serde_json::Value = response.json().await.unwrap_or_default();
            if status.as_u16() == 503 && attempt < 3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let accepted = report["accepted"].as_array().map_or(0, Vec::len);
            if !status.is_success() {
                eprintln!(
                    "the {} service answered {status}: {}",
                    service.name(),
                    report
                );
            }
            return Ok(sent.saturating_sub(accepted));
        }
        Ok(sent)
    }
}

/// Events whose time has not come yet, earliest first (ties in the order
/// they were generated).
#[derive(Default)]
struct Waiting {
    events: BTreeMap<(DateTime<FixedOffset>, u64), SimEvent>,
    next: u64,
}

impl Waiting {
    fn push(&mut self, event: SimEvent) {
        self.next += 1;
        self.events.insert((event.occurred_at, self.next), event);
    }

    fn pop_due(&mut self, now: DateTime<FixedOffset>) -> Option<SimEvent> {
        let entry = self.events.first_entry()?;
        (entry.key().0 <= now).then(|| entry.remove())
    }

    fn len(&self) -> usize {
        self.events.len()
    }
}

fn now() -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&vietnam())
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let units = load_units(&args.bus.units)?;
    let seed = args
        .seed
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64);
    let mut simulator = Simulator::new(&units, seed);
    let start = vietnam_day(Utc::now(), i64::from(args.days));
    let backfill: Vec<SimEvent> = if args.days > 0 {
        simulator
            .history(start, args.days + 1, args.cases_per_day)
            .collect()
    } else {
        Vec::new()
    };

    if let Some(path) = &args.out {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for event in &backfill {
            out.write_all(&event.payload)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        eprintln!(
            "wrote {} events for {} communes to {} (seed {seed})",
            backfill.len(),
            simulator.commune_count(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let mut sink = if args.via_services {
        Sink::Services(ServiceSink::new(&args)?)
    } else {
        let bus = args.bus.nats.connect("kpictl-simulate").await?;
        bus.ensure_stream().await?;
        Sink::Bus(Box::new(Publisher::new(bus, DEFAULT_DEADLINE)))
    };
    let mut waiting = Waiting::default();
    let current = now();
    let (due, later): (Vec<SimEvent>, Vec<SimEvent>) =
        backfill.into_iter().partition(|e| e.occurred_at <= current);
    later.into_iter().for_each(|event| waiting.push(event));

    let progress = ProgressBar::new(due.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(format!(
        "backfill of {} days, {} communes",
        args.days,
        simulator.commune_count()
    ));
    let mut failures = 0usize;
    let published = due.len();
    for event in due {
        failures += sink.send(event).await?;
        progress.inc(1);
    }
    failures += sink.flush().await?;
    progress.finish_and_clear();
    eprintln!(
        "published {published} backfill events ({} waiting for their time), seed {seed}",
        waiting.len()
    );
    if failures > 0 {
        anyhow::bail!("{failures} events were not stored by JetStream");
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }

    let deadline = args
        .duration
        .map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut cases_owed = 0.0;
    let mut live_published = 0u64;
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            break;
        }
        cases_owed += args.cases_per_minute / 240.0;
        while cases_owed >= 1.0 {
            cases_owed -= 1.0;
            for event in simulator.live_traffic_at(now()) {
                waiting.push(event);
            }
        }
        let current = now();
        while let Some(event) = waiting.pop_due(current) {
            failures += sink.send(event).await?;
            live_published += 1;
        }
        failures += sink.flush().await?;
        if last_status.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "live: {live_published} events published, {} waiting",
                waiting.len()
            );
            last_status = tokio::time::Instant::now();
        }
    }
    failures += sink.flush().await?;
    eprintln!("live: {live_published} events published; stopped");
    if failures > 0 {
        anyhow::bail!("{failures} events were not stored by JetStream");
    }
    Ok(ExitCode::SUCCESS)
}

/// A simulated event as a message to publish.
pub fn outgoing(event: SimEvent) -> Outgoing {
    Outgoing {
        subject: event.subject,
        payload: Bytes::from(event.payload),
        sender: std::sync::Arc::from("kpictl simulate"),
    }
}

fn count_failures<T>(acks: Vec<(T, Result<Stored, String>)>) -> usize {
    acks.iter().filter(|(_, ack)| ack.is_err()).count()
}
