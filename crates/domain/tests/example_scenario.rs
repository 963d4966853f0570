//! The example scenario (tests/data/example) folded in memory must give
//! exactly its expected.json, whatever the order, duplication and batching
//! of its events.

use chrono::DateTime;
use kpi_domain::reference::MemoryViews;
use kpi_domain::{Day, Moment, Period, Targets, UnitRegistry};
use kpi_events::{parse_event, Event};
use kpi_testkit::Answer;
use proptest::prelude::*;

struct Scenario {
    units: UnitRegistry,
    events: Vec<Event>,
    rejected: usize,
}

fn scenario() -> Scenario {
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).expect("units");
    let mut events = Vec::new();
    let mut rejected = 0;
    for (_, line) in kpi_testkit::event_lines() {
        match parse_event(line, &kpi_events::Validation::now(&units)) {
            Ok(event) => events.push(event),
            Err(_) => rejected += 1,
        }
    }
    Scenario {
        units,
        events,
        rejected,
    }
}

/// Answers every query of expected.json from the views; returns the
/// differences.
fn differences(scenario: &Scenario, views: &MemoryViews) -> Vec<String> {
    let now = Moment::from(DateTime::parse_from_rfc3339("2025-06-02T00:00:00+07:00").unwrap());
    let targets = Targets::defaults();
    let mut differences = Vec::new();
    for query in kpi_testkit::expected().queries {
        let period = Period::parse(&query.period).unwrap();
        let unit = scenario.units.find(&query.unit_id).unwrap();
        let counters = views.counters(
            unit,
            Day::from_date(period.first_day),
            Day::from_date(period.last_day),
        );
        let rates = targets.rates_for(&scenario.units, &query.unit_id, &period, &counters);
        let answer = Answer::from_domain(&period, rates, views.live(unit, now));
        differences.extend(kpi_testkit::differences(&query, &answer));
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
    assert_eq!(scenario.rejected, kpi_testkit::expected().rejected_lines);
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
