//! The live-view measurements of `kpictl bench`: watchers connected while
//! the read path is measured and while a fold runs, and the freshness of
//! `WatchRates` under steady traffic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_api::pb::GetRatesRequest;
use kpi_bus::Bus;
use kpi_ingest::{Outgoing, Publisher, DEFAULT_DEADLINE};
use serde_json::json;
use tokio::task::JoinHandle;

/// Watchers share this many HTTP/2 connections (as district dashboards
/// behind a few gateways would).
const CONNECTIONS: usize = 20;

/// Watchers connected to a projector; dropped to disconnect them.
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Answers received, all watchers together.
    pub answers: Arc<AtomicU64>,
}

impl Watchers {
    /// `count` watchers of the given units (round robin) for `period`;
    /// returns once each has its first answer (or after 30 s).
    pub async fn connect(
        addr: &str,
        count: usize,
        units: &[String],
        period: &str,
    ) -> anyhow::Result<Watchers> {
        let mut channels = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS.min(count.max(1)) {
            channels.push(
                tonic::transport::Endpoint::from_shared(addr.to_owned())?
                    .connect()
                    .await?,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicU64::new(0));
        let first = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(count);
        for index in 0..count {
            let mut client = KpiServiceClient::new(channels[index % channels.len()].clone());
            let request = GetRatesRequest {
                unit_id: units[index % units.len()].clone(),
                period: period.to_owned(),
                min_stream_sequence: None,
            };
            let (stop, answers, first) = (stop.clone(), answers.clone(), first.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(response) = client.watch_rates(request).await else {
                    return;
                };
                let mut stream = response.into_inner();
                let mut seen_first = false;
                while let Some(Ok(_)) = stream.next().await {
                    answers.fetch_add(1, Ordering::Relaxed);
                    if !seen_first {
                        seen_first = true;
                        first.fetch_add(1, Ordering::Relaxed);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }));
        }
        let started = Instant::now();
        while (first.load(Ordering::Relaxed) as usize) < count
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Watchers {
            tasks,
            stop,
            answers,
        })
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Freshness: while `per_second` simulated events a second are published
/// for other units, a case is received at `probe_unit` every 1.1 s; the
/// delay from each publish's ack to the first `WatchRates` answer that
/// counts it, in milliseconds (sorted).
pub async fn freshness(
    addr: &str,
    bus: &Bus,
    probe_unit: &str,
    background: Vec<Outgoing>,
    per_second: usize,
    probes: usize,
) -> anyhow::Result<Vec<f64>> {
    let today = kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day();
    let period = today.to_date().to_string();
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .connect()
        .await?;
    let mut client = KpiServiceClient::new(channel);
    let mut stream = client
        .watch_rates(GetRatesRequest {
            unit_id: probe_unit.to_owned(),
            period,
            min_stream_sequence: None,
        })
        .await?
        .into_inner();
    let first = stream
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("no first answer"))??;
    let base = first.counts.get("received").copied().unwrap_or(0);
    // Arrival time of the first answer counting k probes.
    let arrivals: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let watcher = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(Ok(answer)) = stream.next().await {
                let received = answer.counts.get("received").copied().unwrap_or(0);
                arrivals
                    .lock()
                    .map(|mut list| list.push((received.saturating_sub(base), Instant::now())))
                    .ok();
            }
        })
    };

    // Steady background traffic.
    let background_bus = bus.clone();
    let pacing = tokio::spawn(async move {
        let mut publisher = Publisher::new(background_bus, DEFAULT_DEADLINE);
        let chunk = (per_second / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for messages in background.chunks(chunk) {
            tick.tick().await;
            for message in messages {
                publisher.send((), message.clone()).await;
            }
        }
        publisher.finish().await;
    });

    let mut acks = Vec::with_capacity(probes);
    for number in 1..=probes {
        // Spaced wider than WatchRates coalesces (one answer a second).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = chrono::Utc::now().with_timezone(&kpi_domain::vietnam());
        let event_id = uuid::Uuid::new_v4();
        let payload = json!({
            "event_id": event_id.to_string(), "kind": "case.received",
            "case_id": format!("PROBE-{event_id}"), "unit_id": probe_unit,
            "occurred_at": now.to_rfc3339(),
            "data": {"procedure_code": "1.1", "field": "ho_tich", "channel": "online",
                     "due_at": (now + chrono::Duration::days(7)).to_rfc3339()},
        });
        let ack = bus
            .publish_event(
                kpi_events::subject_for(probe_unit, kpi_events::Kind::CaseReceived),
                payload.to_string().into(),
            )
            .await?
            .await?;
        let _ = ack;
        acks.push((number as u64, Instant::now()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pacing.abort();
    watcher.abort();
    let arrivals = arrivals.lock().map(|list| list.clone()).unwrap_or_default();
    let mut delays: Vec<f64> = acks
        .iter()
        .filter_map(|(number, acked)| {
            let (_, arrived) = arrivals.iter().find(|(count, _)| count >= number)?;
            Some(arrived.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
        })
        .collect();
    anyhow::ensure!(
        delays.len() == acks.len(),
        "only {} of {} probes were seen by the watcher",
        delays.len(),
        acks.len()
    );
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}

/// The value at a quantile of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
