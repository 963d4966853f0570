//! Folds simulated events straight into a store, without NATS: the store's
//! share of the projector's cost. `cargo run --release -p kpi-store
//! --example ingest_only -- [EVENTS] [BATCH]`.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use kpi_domain::UnitRegistry;
use kpi_simulator::{synthetic_registry, vietnam_day, Simulator};
use kpi_store::{Incoming, Store, StoreOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let units = UnitRegistry::from_json(synthetic_registry(1, 12, 12).as_bytes()).unwrap();
    let start = vietnam_day(Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap(), 0);
    let generated: Vec<_> = Simulator::new(&units, 7)
        .history(start, 365, 8.0)
        .take(events)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let started = Instant::now();
    for (index, chunk) in generated.chunks(batch).enumerate() {
        let incoming: Vec<Incoming<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(offset, event)| {
                let sequence = (index * batch + offset + 1) as u64;
                Incoming::validate(sequence, &event.subject, &event.payload, None, &units)
            })
            .collect();
        store.ingest(&units, &incoming).unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} events in {seconds:.2} s: {:.0} events/s",
        generated.len(),
        generated.len() as f64 / seconds
    );
}
