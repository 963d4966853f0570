//! The read path of the folded views, measured on the projector that
//! folded them, with WatchRates watchers connected: GetRates latency from
//! one client, GetRates against the health `Check` in calls/s from many
//! (see `calls`), GetScores latency, and (the watchers gone) WatchRates
//! freshness under steady traffic.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use kpi_api::pb::kpi_service_client::KpiServiceClient;
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_simulator::{vietnam_day, Simulator};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;

use super::args::BenchArgs;
use super::calls::{alternating, calls_per_window, RawCall};
use super::common::connect;
use super::watch;
use super::workload::{province_rates_request, watched_units, PROBE_UNIT};

/// The read path's figures.
pub(super) struct Reads {
    pub(super) scores_p50_ms: f64,
    pub(super) scores_p99_ms: f64,
    /// Sorted delays (ms) from a publish's ack to the WatchRates answer.
    pub(super) freshness: Option<Vec<f64>>,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) rates_per_second: f64,
    /// GetRates calls/s with the clients decoding every reply.
    pub(super) decoded_rates_per_second: f64,
    pub(super) health_per_second: f64,
    /// GetCaseFlow for the province over R2025, 1 client, p99 (ms): by
    /// unit, by field, by procedure.
    pub(super) flow_p99_ms: [f64; 3],
    /// The same computed afresh (a period of its own each call, so no
    /// answer kept for another caller serves it), p99 (ms).
    pub(super) flow_uncached_p99_ms: [f64; 3],
    /// GetCaseFlow by unit from many clients, calls/s, and health Check in
    /// the windows alternating with it.
    pub(super) flow_per_second: f64,
    pub(super) flow_health_per_second: f64,
}

/// GetCaseFlow of the province over the reporting year, grouped so.
fn flow_request(group_by: kpi_api::pb::GroupBy) -> kpi_api::pb::GetCaseFlowRequest {
    kpi_api::pb::GetCaseFlowRequest {
        unit_id: "P00".into(),
        period: "R2025".into(),
        group_by: group_by as i32,
        min_stream_sequence: None,
    }
}

/// Measures the read path of the projector at `addr` (logging to `log`);
/// `client` is the single client, the one the fold was timed through.
pub(super) async fn measure(
    args: &BenchArgs,
    addr: &str,
    log: &Path,
    client: &mut KpiServiceClient<Channel>,
    bus: &Bus,
    units: &UnitRegistry,
) -> anyhow::Result<Reads> {
    // Watchers stay connected while the read path is measured.
    let watchers = if args.watchers > 0 {
        Some(watch::Watchers::connect(addr, args.watchers, &watched_units(units), "R2025").await?)
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
    // (see calls.rs).
    let mut channels = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        channels.push(connect(addr, log).await?);
    }
    let (health_per_second, rates_per_second) = alternating(
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
    let (calls, seconds) = calls_per_window(
        &channels,
        RawCall::new("/kpi.v1.KpiService/GetRates", request.clone())
            .decoding_as::<kpi_api::pb::RatesReply>(),
        Duration::from_secs_f64(args.seconds as f64 / 2.0),
    )
    .await?;
    let decoded_rates_per_second = calls as f64 / seconds;

    // GetCaseFlow: latency by each grouping from one client, then calls/s
    // by unit from many against health Check.
    let mut flow_p99_ms = [0.0; 3];
    let mut flow_uncached_p99_ms = [0.0; 3];
    let groups = [
        kpi_api::pb::GroupBy::Unit,
        kpi_api::pb::GroupBy::Field,
        kpi_api::pb::GroupBy::Procedure,
    ];
    for (slot, group) in flow_p99_ms.iter_mut().zip(groups) {
        let request = flow_request(group);
        for _ in 0..20 {
            client.get_case_flow(request.clone()).await?;
        }
        let mut flow = hdrhistogram::Histogram::<u64>::new(3)?;
        for _ in 0..args.calls.min(500) {
            let call = Instant::now();
            client.get_case_flow(request.clone()).await?;
            flow.record(call.elapsed().as_micros() as u64)?;
        }
        *slot = flow.value_at_quantile(0.99) as f64 / 1000.0;
    }
    // Afresh: R2025 ends on 14 December 2025; each call ends a day earlier.
    for (slot, group) in flow_uncached_p99_ms.iter_mut().zip(groups) {
        let mut flow = hdrhistogram::Histogram::<u64>::new(3)?;
        let last = chrono::NaiveDate::from_ymd_opt(2025, 12, 14).context("date")?;
        for back in 0..args.calls.min(200) {
            let mut request = flow_request(group);
            let end = last - chrono::Duration::days(back as i64);
            request.period = format!("2024-12-15..{end}");
            let call = Instant::now();
            client.get_case_flow(request).await?;
            flow.record(call.elapsed().as_micros() as u64)?;
        }
        *slot = flow.value_at_quantile(0.99) as f64 / 1000.0;
    }
    let (flow_health_per_second, flow_per_second) = alternating(
        &channels,
        RawCall::new(
            "/grpc.health.v1.Health/Check",
            HealthCheckRequest {
                service: String::new(),
            },
        ),
        RawCall::new(
            "/kpi.v1.KpiService/GetCaseFlow",
            flow_request(kpi_api::pb::GroupBy::Unit),
        ),
        Duration::from_secs_f64(args.seconds as f64 / 4.0),
    )
    .await?;
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
            watch::freshness(addr, bus, PROBE_UNIT, background, args.freshness_rate, 30).await?;
        eprintln!(
            "freshness at {} events/s: p50 {:.1} ms, p99 {:.1} ms",
            args.freshness_rate,
            watch::quantile(&delays, 0.5),
            watch::quantile(&delays, 0.99)
        );
        Some(delays)
    } else {
        None
    };

    Ok(Reads {
        scores_p50_ms: scores.value_at_quantile(0.5) as f64 / 1000.0,
        scores_p99_ms: scores.value_at_quantile(0.99) as f64 / 1000.0,
        freshness,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        rates_per_second,
        decoded_rates_per_second,
        health_per_second,
        flow_p99_ms,
        flow_uncached_p99_ms,
        flow_per_second,
        flow_health_per_second,
    })
}
