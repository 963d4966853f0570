//! The fold alone, without the bus: the simulated year of `kpictl bench`
//! (a reformed province of 12 districts × 12 communes) validated in
//! memory, then folded into a fresh store in batches of 2,000, timed.
//! For comparing changes to the fold and the store (`kpictl bench`
//! measures the whole pipeline against the raw read).
//!
//! cargo run --release -p kpi-store --example fold_speed -- [CASES]
//!
//! `BATCH=N` folds in batches of N; `REPORTS=N` times N reports a grouping;
//! `BREAKDOWN=1` prints the live entries and bytes of the views by prefix
//! instead of timing reports.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use kpi_domain::UnitRegistry;
use kpi_simulator::{synthetic_registry_reformed, vietnam_day, Simulator};
use kpi_store::{Incoming, Store, StoreOptions};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--units") {
        // The registry, for `kpictl simulate --units` and `replay`.
        println!("{}", synthetic_registry_reformed(1, 12, 12));
        return;
    }
    let cases: f64 = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(200_000.0);
    let units = UnitRegistry::from_json(synthetic_registry_reformed(1, 12, 12).as_bytes())
        .expect("the synthetic registry");
    let start = vietnam_day(Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap(), 0);
    let messages: Vec<(String, Vec<u8>)> = Simulator::new(&units, 2025)
        .history(start, 365, cases / 250.0 / 144.0)
        .map(|event| (event.subject, event.payload))
        .collect();
    let validating = Instant::now();
    let incoming: Vec<Incoming<'_>> = messages
        .iter()
        .enumerate()
        .map(|(index, (subject, payload))| {
            Incoming::validate(index as u64 + 1, subject, payload, None, &units)
        })
        .collect();
    let validated = validating.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    store
        .adopt_units(
            &units,
            kpi_domain::Moment::from(Utc::now().fixed_offset()).local_day(),
        )
        .unwrap();
    let folding = Instant::now();
    let batch_size: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(2000);
    for batch in incoming.chunks(batch_size) {
        store.ingest(&units, batch).unwrap();
    }
    let folded = folding.elapsed().as_secs_f64();
    store.flush().unwrap();
    let size: u64 = walk(dir.path());
    let events = incoming.len() as f64;
    println!(
        "{} events: validated {:.0}/s, folded {:.0}/s ({:.2} µs each), views {} MiB ({:.0} bytes an event)",
        incoming.len(),
        events / validated,
        events / folded,
        folded * 1e6 / events,
        size / (1024 * 1024),
        size as f64 / events
    );
    if std::env::var("BREAKDOWN").is_ok() {
        drop(store);
        breakdown(dir.path());
        return;
    }
    // The case-flow report of the province for R2025, computed afresh
    // (a day shorter each time, as the bench asks), by each grouping.
    let province = units.find("P00").expect("the synthetic province");
    let now = kpi_domain::Moment::from(Utc::now().fixed_offset());
    let period = kpi_domain::Period::parse("R2025").unwrap();
    for group in [
        kpi_store::FlowGroup::Unit,
        kpi_store::FlowGroup::Field,
        kpi_store::FlowGroup::Procedure,
    ] {
        let calls: i64 = std::env::var("REPORTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20);
        let started = Instant::now();
        for call in 0..calls {
            let last = period.last_day - chrono::Duration::days(call % 30);
            store
                .case_flow(
                    &units,
                    province,
                    kpi_domain::Day::from_date(period.first_day),
                    kpi_domain::Day::from_date(last),
                    now,
                    group,
                )
                .unwrap();
        }
        println!(
            "GetCaseFlow {group:?} for P00, R2025, afresh: {:.1} ms a report",
            started.elapsed().as_secs_f64() * 1e3 / calls as f64
        );
    }
}

/// Live keys and bytes of the views by prefix (`BREAKDOWN=1`).
fn breakdown(dir: &std::path::Path) {
    let db = sled::open(dir).expect("the views");
    let views = db.open_tree("views").expect("the views tree");
    let mut by_prefix: std::collections::BTreeMap<u8, (u64, u64, u64)> = Default::default();
    for entry in views.iter() {
        let (key, value) = entry.expect("an entry");
        let tally = by_prefix.entry(key[0]).or_default();
        tally.0 += 1;
        tally.1 += key.len() as u64;
        tally.2 += value.len() as u64;
    }
    for (prefix, (count, keys, values)) in by_prefix {
        println!(
            "{}: {count} entries, keys {} KiB, values {} KiB",
            prefix as char,
            keys / 1024,
            values / 1024
        );
    }
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
