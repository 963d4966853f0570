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
use kpi_bus::Bus;
use kpi_domain::vietnam;
use kpi_simulator::{vietnam_day, SimEvent, Simulator};

use crate::publish::Publisher;
use crate::{load_units, BusArgs};

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
            simulator.communes().len(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let bus = Bus::connect(&args.bus.nats_url, "kpictl-simulate").await?;
    bus.ensure_stream().await?;
    let mut publisher = Publisher::new(bus);
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
        simulator.communes().len()
    ));
    let mut failures = 0usize;
    let published = due.len();
    for event in due {
        failures += count_failures(send(&mut publisher, event).await?);
        progress.inc(1);
    }
    failures += count_failures(publisher.finish().await);
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

    let bus = Bus::connect(&args.bus.nats_url, "kpictl-simulate").await?;
    let mut publisher = Publisher::new(bus);
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
            failures += count_failures(send(&mut publisher, event).await?);
            live_published += 1;
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "live: {live_published} events published, {} waiting",
                waiting.len()
            );
            last_status = tokio::time::Instant::now();
        }
    }
    failures += count_failures(publisher.finish().await);
    eprintln!("live: {live_published} events published; stopped");
    if failures > 0 {
        anyhow::bail!("{failures} events were not stored by JetStream");
    }
    Ok(ExitCode::SUCCESS)
}

async fn send(
    publisher: &mut Publisher<()>,
    event: SimEvent,
) -> anyhow::Result<
    Vec<(
        (),
        Result<async_nats::jetstream::publish::PublishAck, String>,
    )>,
> {
    Ok(publisher
        .send(
            (),
            event.subject,
            &event.event_id.to_string(),
            Bytes::from(event.payload),
        )
        .await?)
}

fn count_failures<T>(
    acks: Vec<(
        T,
        Result<async_nats::jetstream::publish::PublishAck, String>,
    )>,
) -> usize {
    acks.iter().filter(|(_, ack)| ack.is_err()).count()
}
