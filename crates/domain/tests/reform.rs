//! Units over time (CONTRACT §1.1): the hand-computed reform scenario of
//! `tests/data/reform`, in any order, and generated two-year scenarios with
//! random reforms where every day's province total is the sum of the
//! communes it had that day.

use chrono::{DateTime, NaiveDate, Utc};
use kpi_domain::reference::MemoryViews;
use kpi_domain::{Counter, Counters, Day, Moment, Period, Targets, UnitIdx, UnitRegistry};
use kpi_events::{parse_event, Event, Validation};
use kpi_testkit::reform;
use proptest::prelude::*;

fn now() -> Moment {
    Moment::from(DateTime::parse_from_rfc3339(reform::NOW).unwrap())
}

/// The scenario's valid events and the reasons of the invalid ones.
fn scenario(units: &UnitRegistry) -> (Vec<Event>, Vec<String>) {
    let validation = Validation::new(units, now().to_utc());
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for line in reform::EVENTS_NDJSON
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        match parse_event(line, &validation) {
            Ok(event) => events.push(event),
            Err(err) => rejected.push(err.to_string()),
        }
    }
    (events, rejected)
}

fn differences(units: &UnitRegistry, views: &MemoryViews) -> Vec<String> {
    let targets = Targets::defaults();
    let mut found = Vec::new();
    for period_text in reform::PERIODS {
        let period = Period::parse(period_text).unwrap();
        for unit_id in reform::UNITS {
            let unit = units.find(unit_id).unwrap();
            let counters = views.counters(
                unit,
                Day::from_date(period.first_day),
                Day::from_date(period.last_day),
            );
            let rates = targets.rates_for(units, unit_id, &period, &counters);
            found.extend(reform::differences(
                unit_id,
                period_text,
                |name| {
                    let counter = Counter::ALL.iter().find(|c| c.name() == name).unwrap();
                    counters[*counter]
                },
                |kpi| {
                    let rate = rates.iter().find(|r| r.kpi.name() == kpi).unwrap();
                    (rate.numerator, rate.denominator)
                },
            ));
        }
    }
    for unit_id in reform::UNITS {
        let live = views.live(units.find(unit_id).unwrap(), now());
        let got = (live.open, live.overdue_open, live.overdue_without_apology);
        if got != reform::live(unit_id) {
            found.push(format!(
                "{unit_id} live: {got:?}, want {:?}",
                reform::live(unit_id)
            ));
        }
    }
    found
}

fn fold(units: &UnitRegistry, events: &[Event], order: &[usize], batch: usize) -> MemoryViews {
    let mut views = MemoryViews::at(now().local_day());
    for (chunk_index, chunk) in order.chunks(batch.max(1)).enumerate() {
        let events = chunk
            .iter()
            .enumerate()
            .map(|(offset, index)| ((chunk_index * batch + offset) as u64 + 1, &events[*index]));
        views.fold_batch(units, events).unwrap();
    }
    views
}

#[test]
fn the_reform_scenario_gives_the_hand_computed_figures() {
    let units = UnitRegistry::from_json(reform::UNITS_JSON).unwrap();
    let (events, rejected) = scenario(&units);
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].contains(reform::REJECTED_REASON),
        "{}",
        rejected[0]
    );
    let order: Vec<usize> = (0..events.len()).collect();
    let views = fold(&units, &events, &order, 4);
    assert_eq!(differences(&units, &views), Vec::<String>::new());
}

#[test]
fn without_the_dates_the_same_events_give_other_figures() {
    // The same tree with every date removed (A under D, B and C kept, W a
    // commune of P from the start): the table cannot hold, so the test
    // above depends on the dates.
    let mut undated: serde_json::Value = serde_json::from_slice(reform::UNITS_JSON).unwrap();
    for unit in undated["units"].as_array_mut().unwrap() {
        let unit = unit.as_object_mut().unwrap();
        for key in ["valid_from", "valid_to", "successor_of"] {
            unit.remove(key);
        }
        if unit.remove("parents").is_some() {
            unit.insert("parent".into(), "D".into());
        }
    }
    let undated = undated.to_string();
    let units = UnitRegistry::from_json(undated.as_bytes()).unwrap();
    assert!(!units.is_dated());
    let (events, rejected) = scenario(&units);
    assert!(rejected.is_empty());
    let order: Vec<usize> = (0..events.len()).collect();
    let views = fold(&units, &events, &order, 4);
    assert!(!differences(&units, &views).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_reform_scenario_is_the_same_in_any_order_and_batching(
        order in Just((0..21usize).collect::<Vec<_>>()).prop_shuffle(),
        batch in 1usize..8,
    ) {
        let units = UnitRegistry::from_json(reform::UNITS_JSON).unwrap();
        let (events, _) = scenario(&units);
        prop_assert_eq!(events.len(), 21);
        let views = fold(&units, &events, &order, batch);
        prop_assert_eq!(differences(&units, &views), Vec::<String>::new());
    }
}

// ---------------------------------------------------------------------
// Generated reforms.

/// A generated registry: provinces with districts and communes on
/// 2024-01-01; then, on random days of 2024–2025, districts that end
/// (their communes moving to the province) and pairs of communes merged
/// into a new one.
#[derive(Debug, Clone)]
struct World {
    json: String,
    /// (commune id, first day, last day) for every commune.
    communes: Vec<(String, NaiveDate, Option<NaiveDate>)>,
}

fn date(days_after_2024: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Days::new(u64::from(days_after_2024))
}

fn world() -> impl Strategy<Value = World> {
    (
        1usize..3,                                  // provinces
        1usize..3,                                  // districts per province
        2usize..5,                                  // communes per district
        prop::collection::vec(30u32..700, 0..3),    // district end days
        prop::collection::vec((30u32..700, 0usize..100), 0..4), // merges
    )
        .prop_map(|(provinces, districts, communes, district_ends, merges)| {
            let mut units = Vec::new();
            let mut commune_list: Vec<(String, NaiveDate, Option<NaiveDate>)> = Vec::new();
            let mut district_index = 0;
            for p in 0..provinces {
                let province = format!("P{p}");
                units.push(serde_json::json!({"id": province, "name": province, "level": "province"}));
                for d in 0..districts {
                    let district = format!("{province}D{d}");
                    let end = district_ends.get(district_index).map(|day| date(*day));
                    district_index += 1;
                    let mut entry = serde_json::json!({"id": district, "name": district,
                        "level": "district", "parent": province});
                    if let Some(end) = end {
                        entry["valid_to"] = end.to_string().into();
                    }
                    units.push(entry);
                    for c in 0..communes {
                        let commune = format!("{district}C{c}");
                        let parents = match end {
                            None => serde_json::json!([{"id": district}]),
                            Some(end) => serde_json::json!([
                                {"id": district, "to": end.to_string()},
                                {"id": province, "from": (end + chrono::Days::new(1)).to_string()}]),
                        };
                        units.push(serde_json::json!({"id": commune, "name": commune,
                            "level": "commune", "parents": parents}));
                        commune_list.push((commune, date(0), None));
                    }
                }
            }
            // Merges: two living communes of one province end on a day and
            // a new commune of that province succeeds them the next day.
            for (index, (day, pick)) in merges.iter().enumerate() {
                let end = date(*day);
                let alive: Vec<usize> = (0..commune_list.len())
                    .filter(|i| commune_list[*i].2.is_none() && commune_list[*i].1 < end)
                    .collect();
                if alive.len() < 2 {
                    continue;
                }
                let first = alive[pick % alive.len()];
                let province = commune_list[first].0[..2].to_owned();
                let Some(second) = alive
                    .iter()
                    .copied()
                    .find(|i| *i != first && commune_list[*i].0.starts_with(&province))
                else {
                    continue;
                };
                let successor = format!("{province}M{index}");
                for old in [first, second] {
                    commune_list[old].2 = Some(end);
                    let id = commune_list[old].0.clone();
                    let entry = units.iter_mut().find(|u| u["id"] == id.as_str()).unwrap();
                    entry["valid_to"] = end.to_string().into();
                    // Parent links past the end are cut back.
                    if let Some(parents) = entry.get_mut("parents").and_then(|p| p.as_array_mut()) {
                        parents.retain(|link| link["from"].as_str().is_none_or(|from| from <= end.to_string().as_str()));
                        if let Some(last) = parents.last_mut() {
                            let cut = last["to"].as_str().is_none_or(|to| to > end.to_string().as_str());
                            if cut {
                                last["to"] = end.to_string().into();
                            }
                        }
                    }
                }
                let begins = end + chrono::Days::new(1);
                units.push(serde_json::json!({"id": successor, "name": successor, "level": "commune",
                    "parent": province, "valid_from": begins.to_string(),
                    "successor_of": [commune_list[first].0.clone(), commune_list[second].0.clone()]}));
                commune_list.push((successor, begins, None));
            }
            World {
                json: serde_json::json!({"units": units}).to_string(),
                communes: commune_list,
            }
        })
}

/// Cases received at communes alive on their day, resolved and rated some
/// days later, over 2024–2025.
fn cases(world: &World, seeds: &[(usize, u32, u32, bool)]) -> Vec<Event> {
    let mut events = Vec::new();
    for (index, (commune, day, later, rated)) in seeds.iter().enumerate() {
        let received = date(day % 720);
        let alive: Vec<&(String, NaiveDate, Option<NaiveDate>)> = world
            .communes
            .iter()
            .filter(|(_, from, to)| *from <= received && to.is_none_or(|to| received <= to))
            .collect();
        let (unit, _, _) = alive[commune % alive.len()];
        let at = |date: NaiveDate| format!("{date}T09:00:00+07:00");
        let resolved = received + chrono::Days::new(u64::from(later % 20));
        let case = format!("CASE-{index}");
        let lines = [
            serde_json::json!({"event_id": format!("00000000-0000-4000-8000-{:012}", index * 3),
                "kind": "case.received", "case_id": case, "unit_id": unit, "occurred_at": at(received),
                "data": {"procedure_code": "1.1", "field": "ho_tich", "channel": "online",
                         "due_at": at(received + chrono::Days::new(7))}}),
            serde_json::json!({"event_id": format!("00000000-0000-4000-8000-{:012}", index * 3 + 1),
                "kind": "case.resolved", "case_id": case, "unit_id": unit, "occurred_at": at(resolved),
                "data": {"result": "approved", "result_electronic": true, "result_digitized": false}}),
            serde_json::json!({"event_id": format!("00000000-0000-4000-8000-{:012}", index * 3 + 2),
                "kind": "case.rated", "case_id": case, "unit_id": unit, "occurred_at": at(resolved),
                "data": {"level": "satisfied"}}),
        ];
        let units = UnitRegistry::from_json(world.json.as_bytes()).unwrap();
        // The resolution and rating name whoever holds the case then; the
        // attribution is by the received unit all the same. Only the
        // received event is validated against its day here.
        let validation = Validation::new(&units, Utc::now());
        let take = if *rated { 3 } else { 2 };
        for line in lines.iter().take(take) {
            let bytes = line.to_string();
            let mut value: serde_json::Value = serde_json::from_str(&bytes).unwrap();
            // Later events may fall after the unit ceased: they name the
            // received unit's holder then, as a real system would.
            if value["kind"] != "case.received" {
                let day = Day::from_date(resolved);
                let idx = units.find(unit).unwrap();
                let holder = units.live_credited(idx, day)[0];
                value["unit_id"] = units.unit(holder).id.clone().into();
            }
            let event = parse_event(value.to_string().as_bytes(), &validation)
                .unwrap_or_else(|err| panic!("{err}: {value}"));
            events.push(event);
        }
    }
    events
}

fn day_counters(views: &MemoryViews, unit: UnitIdx, day: NaiveDate) -> Counters {
    let day = Day::from_date(day);
    views.counters(unit, day, day)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_day_a_province_counts_the_communes_it_has_that_day_once(
        world in world(),
        seeds in prop::collection::vec((0usize..1000, 0u32..720, 0u32..40, any::<bool>()), 1..60),
    ) {
        let units = UnitRegistry::from_json(world.json.as_bytes())
            .unwrap_or_else(|err| panic!("{err}\n{}", world.json));
        let events = cases(&world, &seeds);
        let mut views = MemoryViews::at(Day::from_date(date(800)));
        views.fold_batch(&units, events.iter().enumerate().map(|(i, e)| (i as u64 + 1, e))).unwrap();

        let mut all_provinces = Counters::default();
        for offset in 0..760u32 {
            let day = date(offset);
            let at = Day::from_date(day);
            for &province in units.children(None, at) {
                let mut communes = Counters::default();
                let mut pending = vec![province];
                while let Some(unit) = pending.pop() {
                    let children = units.children(Some(unit), at);
                    if children.is_empty() && unit != province {
                        communes.add(&day_counters(&views, unit, day));
                    }
                    pending.extend_from_slice(children);
                }
                let total = day_counters(&views, province, day);
                prop_assert_eq!(&total, &communes, "{} on {}", units.unit(province).id, day);
                all_provinces.add(&total);
            }
        }
        // Nothing counted twice nor lost: the provinces together hold
        // every case once.
        let rated = seeds.iter().filter(|seed| seed.3).count() as u64;
        prop_assert_eq!(all_provinces[Counter::Received], seeds.len() as u64);
        prop_assert_eq!(all_provinces[Counter::Resolved], seeds.len() as u64);
        prop_assert_eq!(all_provinces[Counter::Rated], rated);
        // A successor's figures, on the days before it existed, are those
        // of the units it succeeds (theirs include their own history).
        for (idx, unit) in units.iter().filter(|(_, u)| !u.successor_of.is_empty()) {
            let begins = unit.days.from.expect("successors begin on a day").to_date();
            for offset in 0..760u32 {
                let day = date(offset);
                if day >= begins {
                    break;
                }
                let mut predecessors = Counters::default();
                for &predecessor in &unit.successor_of {
                    predecessors.add(&day_counters(&views, predecessor, day));
                }
                prop_assert_eq!(&day_counters(&views, idx, day), &predecessors, "{} on {}", unit.id, day);
            }
        }
    }
}
