//! The simulated workload every stage measures with: the calendar year
//! 2025 published to the stream, the probe commune kept out of it for the
//! freshness probes, and the GetRates call the goals are stated for.

use anyhow::Context;
use chrono::{Datelike, TimeZone, Utc, Weekday};
use kpi_api::pb::GetRatesRequest;
use kpi_bus::Bus;
use kpi_domain::UnitRegistry;
use kpi_ingest::{Publisher, DEFAULT_DEADLINE};
use kpi_simulator::{vietnam_day, Simulator};

use super::args::BenchArgs;

/// The commune the freshness probes are received at.
pub(super) const PROBE_UNIT: &str = "P00-PROBE";

/// Every unit of the registry but the probe (what watchers watch).
pub(super) fn watched_units(units: &UnitRegistry) -> Vec<String> {
    units
        .iter()
        .map(|(_, unit)| unit.id.clone())
        .filter(|id| id != PROBE_UNIT)
        .collect()
}

/// The call the GetRates goals are measured with: the province over the
/// reporting year (whose tree changed mid-year).
pub(super) fn province_rates_request() -> GetRatesRequest {
    GetRatesRequest {
        unit_id: "P00".into(),
        period: "R2025".into(),
        min_stream_sequence: None,
    }
}

pub(super) fn working_days_of_2025() -> u32 {
    (1..=365)
        .filter_map(|ordinal| chrono::NaiveDate::from_yo_opt(2025, ordinal))
        .filter(|date| !matches!(date.weekday(), Weekday::Sat | Weekday::Sun))
        .count() as u32
}

/// Publishes the simulated year (at most `limit` events) with acks; the
/// events published and their payload bytes.
pub(super) async fn publish_year(
    args: &BenchArgs,
    units: &UnitRegistry,
    bus: &Bus,
    limit: u64,
) -> anyhow::Result<(u64, u64)> {
    let communes = args.districts * args.communes;
    let per_commune_day = args.cases as f64 / f64::from(working_days_of_2025()) / communes as f64;
    let year_start = vietnam_day(
        Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0)
            .single()
            .context("date")?,
        0,
    );
    let mut simulator = Simulator::new(units, args.seed);
    let mut publisher = Publisher::new(bus.clone(), DEFAULT_DEADLINE);
    let mut published = 0u64;
    let mut failures = 0usize;
    let mut payload_bytes = 0u64;
    let traffic = simulator
        .history(year_start, 365, per_commune_day)
        .filter(|event| !event.subject.contains(PROBE_UNIT));
    for event in traffic {
        if published >= limit {
            break;
        }
        payload_bytes += event.payload.len() as u64;
        let acks = publisher.send((), crate::simulate::outgoing(event)).await;
        failures += acks.iter().filter(|(_, ack)| ack.is_err()).count();
        published += 1;
        if published.is_multiple_of(500_000) {
            eprintln!("published {published} events…");
        }
    }
    failures += publisher
        .finish()
        .await
        .iter()
        .filter(|(_, ack)| ack.is_err())
        .count();
    anyhow::ensure!(failures == 0, "{failures} events were not stored");
    Ok((published, payload_bytes))
}
