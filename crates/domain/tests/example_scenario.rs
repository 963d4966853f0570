//! The example scenario (tests/data/example) folded in memory must give
//! exactly its expected.json, whatever the order, duplication and batching
//! of its events.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate};
use kpi_domain::reference::MemoryViews;
use kpi_domain::{rates, Day, Moment, Period, Targets, UnitRegistry};
use kpi_events::{parse_event, Event};
use proptest::prelude::*;
use serde_json::Value;

fn example_file(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/example")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

struct Scenario {
    units: UnitRegistry,
    events: Vec<Event>,
    rejected: usize,
    expected: Value,
}

fn scenario() -> Scenario {
    let units = UnitRegistry::from_json(&example_file("units.json")).expect("units");
    let mut events = Vec::new();
    let mut rejected = 0;
    for line in example_file("events.ndjson").split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match parse_event(line, &units) {
            Ok(event) => events.push(event),
            Err(_) => rejected += 1,
        }
    }
    let expected = serde_json::from_slice(&example_file("expected.json")).expect("expected.json");
    Scenario {
        units,
        events,
        rejected,
        expected,
    }
}

fn day(text: &str) -> Day {
    Day::from_date(NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap())
}

/// Compares every query of expected.json; returns the differences.
fn differences(scenario: &Scenario, views: &MemoryViews) -> Vec<String> {
    let now = Moment::from(DateTime::parse_from_rfc3339("2025-06-02T00:00:00+07:00").unwrap());
    let targets = Targets::defaults();
    let mut differences = Vec::new();
    for query in scenario.expected["queries"].as_array().unwrap() {
        let unit_id = query["unit_id"].as_str().unwrap();
        let period = Period::parse(query["period"].as_str().unwrap()).unwrap();
        let label = format!("{unit_id} {}", period.label);
        assert_eq!(
            period.first_day.to_string(),
            query["first_day"].as_str().unwrap(),
            "{label}"
        );
        assert_eq!(
            period.last_day.to_string(),
            query["last_day"].as_str().unwrap(),
            "{label}"
        );
        let unit = scenario.units.find(unit_id).unwrap();
        let counters = views.counters(
            unit,
            day(query["first_day"].as_str().unwrap()),
            day(query["last_day"].as_str().unwrap()),
        );
        let lineage = scenario.units.lineage_ids(unit_id).unwrap();
        for rate in rates(&counters, |kpi| {
            targets.target(kpi, period.target_year(), &lineage)
        }) {
            let want = &query["rates"][rate.kpi.name()];
            let got = (
                rate.numerator,
                rate.denominator,
                rate.target_percent,
                rate.met,
            );
            let wanted = (
                want["numerator"].as_u64().unwrap(),
                want["denominator"].as_u64().unwrap(),
                want["target_percent"].as_f64(),
                want["met"].as_bool(),
            );
            if got != wanted {
                differences.push(format!(
                    "{label} {}: got {got:?}, want {wanted:?}",
                    rate.kpi
                ));
            }
            match (rate.percent, want["percent"].as_f64()) {
                (Some(a), Some(b)) if (a - b).abs() < 1e-4 => {}
                (None, None) => {}
                (a, b) => differences.push(format!(
                    "{label} {} percent: got {a:?}, want {b:?}",
                    rate.kpi
                )),
            }
        }
        let live = views.live(unit, now);
        let got = (live.open, live.overdue_open, live.overdue_without_apology);
        let wanted = (
            query["live"]["open"].as_u64().unwrap(),
            query["live"]["overdue_open"].as_u64().unwrap(),
            query["live"]["overdue_without_apology"].as_u64().unwrap(),
        );
        if got != wanted {
            differences.push(format!("{label} live: got {got:?}, want {wanted:?}"));
        }
    }
    differences
}

fn fold_in_batches(scenario: &Scenario, order: &[usize], batch: usize) -> MemoryViews {
    let mut views = MemoryViews::default();
    for (chunk_index, chunk) in order.chunks(batch.max(1)).enumerate() {
        let events = chunk.iter().enumerate().map(|(offset, index)| {
            (
                (chunk_index * batch + offset) as u64 + 1,
                &scenario.events[*index],
            )
        });
        views.fold_batch(&scenario.units, events).unwrap();
    }
    views
}

#[test]
fn ten_lines_are_rejected() {
    let scenario = scenario();
    assert_eq!(
        scenario.rejected as u64,
        scenario.expected["rejected_lines"].as_u64().unwrap()
    );
}

#[test]
fn arrival_order_gives_expected_json() {
    let scenario = scenario();
    let order: Vec<usize> = (0..scenario.events.len()).collect();
    let views = fold_in_batches(&scenario, &order, order.len());
    assert_eq!(differences(&scenario, &views), Vec::<String>::new());
}

#[test]
fn one_event_per_batch_gives_expected_json() {
    let scenario = scenario();
    let order: Vec<usize> = (0..scenario.events.len()).collect();
    let views = fold_in_batches(&scenario, &order, 1);
    assert_eq!(differences(&scenario, &views), Vec::<String>::new());
}

#[test]
fn reverse_order_and_every_event_twice_give_the_same_views() {
    let scenario = scenario();
    let forward: Vec<usize> = (0..scenario.events.len()).collect();
    let reference = fold_in_batches(&scenario, &forward, 50);
    let mut twice: Vec<usize> = forward.iter().rev().copied().collect();
    twice.extend(forward.iter().rev());
    let views = fold_in_batches(&scenario, &twice, 37);
    assert_eq!(views.all_counters(), reference.all_counters());
    assert_eq!(views.open_index(), reference.open_index());
    assert_eq!(differences(&scenario, &views), Vec::<String>::new());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_order_duplication_and_batching_gives_the_same_views(
        seed in any::<u64>(),
        batch in 1usize..400,
        duplicate_every in 1usize..20,
    ) {
        let scenario = scenario();
        let forward: Vec<usize> = (0..scenario.events.len()).collect();
        let reference = fold_in_batches(&scenario, &forward, forward.len());
        let mut order = forward.clone();
        order.extend(forward.iter().copied().filter(|i| i % duplicate_every == 0));
        shuffle(&mut order, seed);
        let views = fold_in_batches(&scenario, &order, batch);
        prop_assert_eq!(views.all_counters(), reference.all_counters());
        prop_assert_eq!(views.open_index(), reference.open_index());
    }
}

/// A small deterministic Fisher–Yates shuffle (xorshift), so that a failing
/// seed reproduces.
fn shuffle(items: &mut [usize], mut seed: u64) {
    seed |= 1;
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}
