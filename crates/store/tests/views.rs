//! The sled views against the example scenario and the in-memory reference.

use chrono::DateTime;
use kpi_domain::reference::MemoryViews;
use kpi_domain::{Day, Moment, Period, Targets, UnitRegistry};
use kpi_store::{Incoming, Store, StoreOptions};
use kpi_testkit::Answer;

struct Line {
    sequence: u64,
    subject: String,
    payload: &'static [u8],
}

fn lines() -> Vec<Line> {
    kpi_testkit::event_lines()
        .into_iter()
        .enumerate()
        .map(|(index, (_, payload))| Line {
            sequence: index as u64 + 1,
            subject: kpi_testkit::subject_of(payload),
            payload,
        })
        .collect()
}

fn ingest(store: &Store, units: &UnitRegistry, lines: &[Line], batch: usize) {
    for chunk in lines.chunks(batch) {
        let incoming: Vec<Incoming<'_>> = chunk
            .iter()
            .map(|line| Incoming::validate(line.sequence, &line.subject, line.payload, None, units))
            .collect();
        store.ingest(units, &incoming).expect("ingest");
    }
}

/// Views reading back from a log of the example's lines (sequence N is
/// line N), as the projector reads back from the stream.
fn open(dir: &std::path::Path) -> Store {
    let store = Store::open(dir, &StoreOptions::default()).expect("open");
    let lines = lines();
    store.set_log_reader(std::sync::Arc::new(move |sequence| {
        Ok(lines
            .iter()
            .find(|line| line.sequence == sequence)
            .map(|line| kpi_store::LoggedMessage {
                subject: line.subject.clone(),
                payload: line.payload.to_vec(),
                published: None,
            }))
    }));
    store
}

/// Views reading back from `log`: (sequence, subject, payload).
fn open_with_log(dir: &std::path::Path, log: Vec<(u64, String, Vec<u8>)>) -> Store {
    let store = Store::open(dir, &StoreOptions::default()).expect("open");
    store.set_log_reader(std::sync::Arc::new(move |sequence| {
        Ok(log
            .iter()
            .find(|(at, ..)| *at == sequence)
            .map(|(_, subject, payload)| kpi_store::LoggedMessage {
                subject: subject.clone(),
                payload: payload.clone(),
                published: None,
            }))
    }));
    store
}

fn answer(
    store: &Store,
    units: &UnitRegistry,
    unit_id: &str,
    period: &str,
    now: Moment,
) -> (u64, Answer) {
    let period = Period::parse(period).unwrap();
    let snapshot = store
        .snapshot(
            unit_id,
            Day::from_date(period.first_day),
            Day::from_date(period.last_day),
            now,
        )
        .unwrap();
    let rates = Targets::defaults().rates_for(units, unit_id, &period, &snapshot.counters);
    let answer = Answer::from_domain(&period, rates, snapshot.live);
    (snapshot.sequence, answer)
}

fn at(text: &str) -> Moment {
    Moment::from(DateTime::parse_from_rfc3339(text).unwrap())
}

#[test]
fn the_example_scenario_gives_expected_json_and_parks_the_invalid_lines() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    store.adopt_units(&units, today()).unwrap();
    let lines = lines();
    ingest(&store, &units, &lines, 64);

    let now = at("2025-06-02T00:00:00+07:00");
    let mut differences = Vec::new();
    for query in kpi_testkit::expected().queries {
        let (sequence, answer) = answer(&store, &units, &query.unit_id, &query.period, now);
        assert_eq!(sequence, lines.len() as u64);
        differences.extend(kpi_testkit::differences(&query, &answer));
    }
    assert_eq!(differences, Vec::<String>::new());

    // The invalid lines; the example's conflict loser is kept aside too.
    let (parked, conflicts): (Vec<_>, Vec<_>) = store
        .parked(0, 100)
        .unwrap()
        .into_iter()
        .partition(|p| p.cause == kpi_store::ParkCause::Invalid);
    assert_eq!(parked.len(), kpi_testkit::expected().rejected_lines);
    assert_eq!(
        conflicts
            .iter()
            .map(|p| (p.cause, p.unit_id()))
            .collect::<Vec<_>>(),
        [(kpi_store::ParkCause::Conflict, "C46-1-0")],
        "the same event under C46-0-2 counts: the smaller unit id"
    );
    let fields: Vec<Option<&str>> = parked.iter().map(|p| p.field.as_deref()).collect();
    assert!(fields.contains(&Some("data.level")), "{fields:?}");
    assert!(fields.contains(&Some("unit_id")), "{fields:?}");
    assert!(
        fields.contains(&None),
        "the malformed line has no field: {fields:?}"
    );
    let not_json = parked
        .iter()
        .find(|p| p.payload == b"{this is not json")
        .expect("kept verbatim");
    assert!(
        not_json.reason.starts_with("not valid JSON"),
        "{}",
        not_json.reason
    );

    let totals = store.totals().unwrap();
    assert_eq!((totals.parked, totals.conflicts), (10, 1));
    assert_eq!(
        totals.folded + totals.duplicates + totals.parked + totals.conflicts,
        lines.len() as u64
    );
    assert!(
        totals.duplicates > 0,
        "the scenario sends some events twice"
    );
}

#[test]
fn the_store_agrees_with_the_reference_views_at_any_time_of_day() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    let lines = lines();
    ingest(&store, &units, &lines, 500);

    let mut reference = MemoryViews::default();
    let events: Vec<_> = lines
        .iter()
        .filter_map(|line| {
            kpi_events::parse_event(line.payload, &kpi_events::Validation::now(&units))
                .ok()
                .map(|e| (line.sequence, e))
        })
        .collect();
    reference
        .fold_batch(&units, events.iter().map(|(s, e)| (*s, e)))
        .unwrap();

    // Moments spread over the days when the scenario's open cases fall due,
    // so that "due today" is split at many times of day.
    let mut nows = vec![
        at("2024-11-01T00:00:00+07:00"),
        at("2026-01-01T00:00:00+07:00"),
    ];
    for day in 0..200 {
        for hour in [0, 7, 9, 13, 17, 23] {
            let seconds = 1_733_000_000 + day * 86_400 + hour * 3_600 + 1_234;
            nows.push(Moment::from_parts(seconds, 0));
        }
    }
    for (idx, unit) in units.iter() {
        for now in &nows {
            let snapshot = store
                .snapshot(
                    &unit.id,
                    Day::from_date(chrono::NaiveDate::MIN),
                    Day::from_date(chrono::NaiveDate::MAX),
                    *now,
                )
                .unwrap();
            assert_eq!(
                snapshot.live,
                reference.live(idx, *now),
                "{} at {:?}",
                unit.id,
                now.to_utc()
            );
        }
        // Every kind of range: within a month, across months, whole months
        // (read from the month pre-sums) and ragged ends.
        for start in (0..240).step_by(7) {
            for length in [0, 1, 13, 30, 31, 45, 59, 90, 200, 400] {
                let first = chrono::NaiveDate::from_ymd_opt(2024, 11, 1).unwrap()
                    + chrono::Duration::days(start);
                let last = first + chrono::Duration::days(length);
                let (first, last) = (Day::from_date(first), Day::from_date(last));
                let sums = store
                    .snapshot(&unit.id, first, last, nows[0])
                    .unwrap()
                    .counters;
                assert_eq!(
                    sums,
                    reference.counters(idx, first, last),
                    "{} {:?}..{:?}",
                    unit.id,
                    first.to_date(),
                    last.to_date()
                );
            }
        }
        let all = store
            .snapshot(
                &unit.id,
                Day::from_date(chrono::NaiveDate::MIN),
                Day::from_date(chrono::NaiveDate::MAX),
                nows[0],
            )
            .unwrap();
        assert_eq!(
            all.counters,
            reference.counters(
                idx,
                Day::from_date(chrono::NaiveDate::MIN),
                Day::from_date(chrono::NaiveDate::MAX)
            )
        );
    }
}

#[test]
fn reopening_resumes_at_the_checkpoint_and_skips_what_was_folded() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let lines = lines();
    {
        let store = open(dir.path());
        ingest(&store, &units, &lines[..300], 100);
        assert_eq!(store.checkpoint().unwrap(), 300);
        store.flush().unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.checkpoint().unwrap(), 300);
    // Re-delivering from the start must not count anything twice.
    ingest(&store, &units, &lines, 128);
    let totals = store.totals().unwrap();
    assert_eq!(
        totals.folded + totals.duplicates + totals.parked + totals.conflicts,
        lines.len() as u64
    );

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = open(fresh_dir.path());
    ingest(&fresh, &units, &lines, 1000);
    let a: Vec<_> = store.view_entries().collect::<Result<_, _>>().unwrap();
    let b: Vec<_> = fresh.view_entries().collect::<Result<_, _>>().unwrap();
    assert_eq!(a, b);
}

/// A fixed live day for the views of these tests.
fn today() -> Day {
    Day::from_date(chrono::NaiveDate::from_ymd_opt(2026, 11, 29).unwrap())
}

#[test]
fn a_units_file_that_moves_a_unit_recomputes_the_rollups_without_the_log() {
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let moved = String::from_utf8(kpi_testkit::UNITS_JSON.to_vec())
        .unwrap()
        .replacen("\"parent\": \"D46-0\"", "\"parent\": \"D46-1\"", 1);
    let moved = UnitRegistry::from_json(moved.as_bytes()).unwrap();
    let lines = lines();

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.adopt_units(&units, today()).unwrap(),
        None,
        "new views"
    );
    ingest(&store, &units, &lines, 100);
    assert_eq!(
        store.adopt_units(&units, today()).unwrap(),
        None,
        "the same registry"
    );
    let reason = store
        .adopt_units(&moved, today())
        .unwrap()
        .expect("recomputed");
    assert!(reason.contains("unit `C46-0-0` changed"), "{reason}");

    // Equal to views folded with the new registry from the start.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = open(fresh_dir.path());
    fresh.adopt_units(&moved, today()).unwrap();
    ingest(&fresh, &moved, &lines, 100);
    let a: Vec<_> = store.view_entries().collect::<Result<_, _>>().unwrap();
    let b: Vec<_> = fresh.view_entries().collect::<Result<_, _>>().unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the recomputed rollups differ from a fresh fold");
    // ...and different from before the move, so the test can fail.
    let before_dir = tempfile::tempdir().unwrap();
    let before = open(before_dir.path());
    before.adopt_units(&units, today()).unwrap();
    ingest(&before, &units, &lines, 100);
    let c: Vec<_> = before.view_entries().collect::<Result<_, _>>().unwrap();
    assert!(a != c);

    // Back to the first registry (the rollups switch generation again),
    // then more events: equal to the views that never moved, after a
    // reopening too.
    store
        .adopt_units(&units, today())
        .unwrap()
        .expect("recomputed");
    let back: Vec<_> = store.view_entries().collect::<Result<_, _>>().unwrap();
    assert!(back == c, "recomputed twice, the rollups differ");
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.adopt_units(&units, today()).unwrap(), None);
    let answer_now = |store: &Store| {
        answer(
            store,
            &units,
            "P46",
            "2025",
            at("2025-06-02T00:00:00+07:00"),
        )
    };
    assert_eq!(answer_now(&store), answer_now(&before));
}

#[test]
fn views_refuse_a_recreated_or_truncated_stream() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    // New views take whatever stream they are given.
    store.adopt_stream("2025-01-01T00:00:00+00:00", 1).unwrap();
    store.adopt_stream("2025-02-01T00:00:00+00:00", 1).unwrap();
    ingest(&store, &units, &lines()[..100], 50);
    // Once folded, the same stream is fine, a recreated one is not.
    store.adopt_stream("2025-02-01T00:00:00+00:00", 1).unwrap();
    store
        .adopt_stream("2025-02-01T00:00:00+00:00", 101)
        .unwrap();
    let err = store
        .adopt_stream("2025-03-01T00:00:00+00:00", 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("it was recreated"), "{err}");
    // Events removed from the start before they were folded are a gap.
    let err = store
        .adopt_stream("2025-02-01T00:00:00+00:00", 102)
        .unwrap_err()
        .to_string();
    assert!(err.contains("removed before they were folded"), "{err}");
}

/// One case code flooded with distinct events: the record stops growing at
/// the limit, and every event beyond it is kept aside with the reason.
#[test]
fn a_flooded_case_keeps_the_events_beyond_the_limit_aside() {
    const OVER: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    store.adopt_units(&units, today()).unwrap();
    let line = |n: usize, kind: &str, data: &str| {
        format!(
            r#"{{"event_id":"00000000-0000-4000-8000-{n:012}","kind":"{kind}","case_id":"FLOOD-1","unit_id":"C31_2","occurred_at":"2025-03-03T08:00:00+07:00","data":{data}}}"#
        )
    };
    let mut payloads = vec![(
        "cases.C31_2.case.received".to_owned(),
        line(
            0,
            "case.received",
            r#"{"procedure_code":"1.001193","field":"ho_tich","channel":"online","due_at":"2025-03-05T17:00:00+07:00"}"#,
        ),
    )];
    for n in 1..kpi_domain::MAX_EVENTS_PER_RECORD + OVER {
        payloads.push((
            "cases.C31_2.case.rated".to_owned(),
            line(n, "case.rated", r#"{"level":"satisfied"}"#),
        ));
    }
    for (chunk_index, chunk) in payloads.chunks(300).enumerate() {
        let incoming: Vec<Incoming<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(index, (subject, payload))| {
                let sequence = (chunk_index * 300 + index + 1) as u64;
                Incoming::validate(sequence, subject, payload.as_bytes(), None, &units)
            })
            .collect();
        store.ingest(&units, &incoming).expect("ingest");
    }

    let totals = store.totals().unwrap();
    assert_eq!(totals.folded, kpi_domain::MAX_EVENTS_PER_RECORD as u64);
    assert_eq!(totals.parked, OVER as u64);
    let parked = store.parked(0, 1000).unwrap();
    assert_eq!(parked.len(), OVER);
    let first_over = kpi_domain::MAX_EVENTS_PER_RECORD as u64 + 1;
    assert_eq!(
        parked[0].sequence, first_over,
        "the first event beyond the limit"
    );
    for event in &parked {
        assert_eq!(event.field.as_deref(), Some("case_id"));
        assert!(
            event
                .reason
                .contains("case FLOOD-1 already holds 1000 distinct events"),
            "{}",
            event.reason
        );
    }
    // Re-sending an event the case holds is still a plain duplicate.
    let again = &payloads[3];
    let incoming = [Incoming::validate(
        payloads.len() as u64 + 1,
        &again.0,
        again.1.as_bytes(),
        None,
        &units,
    )];
    let report = store.ingest(&units, &incoming).unwrap();
    assert_eq!((report.totals.duplicates, report.totals.parked), (1, 0));
}

/// `Kpi-Redrive-Of` is a header any publisher can set: a counted event
/// that names another event's parked entry does not retire it; the event
/// parked there does.
#[test]
fn a_redrive_header_retires_only_the_entry_of_the_same_event() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    store.adopt_units(&units, today()).unwrap();
    let event = |id: u32, case: &str, unit: &str| {
        format!(
            r#"{{"event_id":"00000000-0000-4000-8000-{id:012}","kind":"case.received","case_id":"{case}","unit_id":"{unit}","occurred_at":"2025-03-03T08:00:00+07:00","data":{{"procedure_code":"1.001193","field":"ho_tich","channel":"online","due_at":"2025-03-05T17:00:00+07:00"}}}}"#
        )
    };
    // Parked at 1: an unknown unit. Then at 2 an unrelated valid event
    // claiming to redrive 1, and at 3 the parked event itself, fixed.
    let parked = event(1, "R-1", "C99");
    let unrelated = event(2, "R-2", "C31_2");
    let fixed = event(1, "R-1", "C31_2");
    let mut incoming = vec![Incoming::validate(
        1,
        "cases.C99.case.received",
        parked.as_bytes(),
        None,
        &units,
    )];
    let mut claim = Incoming::validate(
        2,
        "cases.C31_2.case.received",
        unrelated.as_bytes(),
        None,
        &units,
    );
    claim.redrive_of = Some(1);
    incoming.push(claim);
    store.ingest(&units, &incoming).unwrap();
    let listed: Vec<u64> = store
        .parked(0, 10)
        .unwrap()
        .iter()
        .map(|p| p.sequence)
        .collect();
    assert_eq!(listed, [1], "another event's header retires nothing");
    assert_eq!(store.totals().unwrap().redriven, 0);

    let mut redriven = Incoming::validate(
        3,
        "cases.C31_2.case.received",
        fixed.as_bytes(),
        None,
        &units,
    );
    redriven.redrive_of = Some(1);
    store.ingest(&units, &[redriven]).unwrap();
    assert!(store.parked(0, 10).unwrap().is_empty());
    assert_eq!(store.totals().unwrap().redriven, 1);
}

/// A units file that ends a unit earlier than the views counted it: the
/// counted events would be invalid now, and no recomputation of the
/// rollups removes the difference from a rebuild. The store refuses it,
/// naming the unit; a change that leaves every counted event valid is
/// taken.
#[test]
fn a_units_file_that_invalidates_counted_events_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    store.adopt_units(&units, today()).unwrap();
    ingest(&store, &units, &lines(), 200);
    let with_valid_to = |valid_to: &str| {
        let mut file: serde_json::Value = serde_json::from_slice(kpi_testkit::UNITS_JSON).unwrap();
        for unit in file["units"].as_array_mut().unwrap() {
            if unit["id"] == "C31_2" {
                unit["valid_to"] = serde_json::json!(valid_to);
            }
        }
        UnitRegistry::from_json(file.to_string().as_bytes()).unwrap()
    };
    let error = store
        .adopt_units(&with_valid_to("2025-01-31"), today())
        .expect_err("C31_2 has events after January");
    let message = error.to_string();
    assert!(
        matches!(error, kpi_store::StoreError::UnitsNoLongerHold { .. }),
        "{message}"
    );
    assert!(message.contains("C31_2"), "{message}");
    assert!(
        message.contains("move its data directory aside"),
        "{message}"
    );
    // Ending it after its last event changes nothing counted: taken.
    assert!(store
        .adopt_units(&with_valid_to("2030-12-31"), today())
        .is_ok());
}

/// A record keeps what identity and the counters need, not the events'
/// data: a supplement request with a 60 KiB reason leaves a record of
/// under 1 KiB.
#[test]
fn a_record_does_not_grow_with_an_events_data() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let reason = "Bổ sung giấy tờ ".repeat(2800);
    assert!(reason.len() >= 60 * 1024);
    let received = r#"{"event_id":"00000000-0000-4000-8000-000000000001","kind":"case.received","case_id":"BIG-1","unit_id":"C31_2","occurred_at":"2025-03-03T08:00:00+07:00","data":{"procedure_code":"1.001193","field":"ho_tich","channel":"online","due_at":"2025-03-05T17:00:00+07:00"}}"#.to_owned();
    let supplement = format!(
        r#"{{"event_id":"00000000-0000-4000-8000-000000000002","kind":"case.supplement_requested","case_id":"BIG-1","unit_id":"C31_2","occurred_at":"2025-03-04T08:00:00+07:00","data":{{"reason":"{reason}","due_at":"2025-03-09T17:00:00+07:00"}}}}"#
    );
    let store = open(dir.path());
    store.adopt_units(&units, today()).unwrap();
    let incoming = [
        Incoming::validate(
            1,
            "cases.C31_2.case.received",
            received.as_bytes(),
            None,
            &units,
        ),
        Incoming::validate(
            2,
            "cases.C31_2.case.supplement_requested",
            supplement.as_bytes(),
            None,
            &units,
        ),
    ];
    assert!(incoming[1].event.is_ok(), "{:?}", incoming[1].event);
    store.ingest(&units, &incoming).unwrap();
    let (key, record) = store
        .view_entries()
        .map(Result::unwrap)
        .find(|(key, _)| key.as_slice() == b"cBIG-1")
        .expect("the record");
    assert!(
        record.len() < 1024,
        "{} bytes for {}",
        record.len(),
        String::from_utf8_lossy(&key)
    );
}

/// Same id, same kind, unit and time, other data: the smaller data counts
/// (CONTRACT §1.2), whichever arrives first, and the views read the held
/// event's data back from the log to decide. The loser is listed as the
/// log holds it.
#[test]
fn a_conflict_decided_by_data_is_the_same_in_both_orders() {
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let event = |level: &str| {
        format!(
            r#"{{"event_id":"00000000-0000-4000-8000-000000000007","kind":"case.rated","case_id":"TIE-1","unit_id":"C31_2","occurred_at":"2025-03-04T08:00:00+07:00","data":{{"level":"{level}"}}}}"#
        )
    };
    let received = r#"{"event_id":"00000000-0000-4000-8000-000000000001","kind":"case.received","case_id":"TIE-1","unit_id":"C31_2","occurred_at":"2025-03-03T08:00:00+07:00","data":{"procedure_code":"1.001193","field":"ho_tich","channel":"online","due_at":"2025-03-05T17:00:00+07:00"}}"#.to_owned();
    let mut outcomes = Vec::new();
    for order in [["satisfied", "unsatisfied"], ["unsatisfied", "satisfied"]] {
        let log: Vec<(u64, String, Vec<u8>)> = vec![
            (
                1,
                "cases.C31_2.case.received".into(),
                received.clone().into_bytes(),
            ),
            (
                2,
                "cases.C31_2.case.rated".into(),
                event(order[0]).into_bytes(),
            ),
            (
                3,
                "cases.C31_2.case.rated".into(),
                event(order[1]).into_bytes(),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = open_with_log(dir.path(), log.clone());
        store.adopt_units(&units, today()).unwrap();
        // One message a batch: the held event is read back from the log.
        for (sequence, subject, payload) in &log {
            let incoming = [Incoming::validate(
                *sequence, subject, payload, None, &units,
            )];
            store.ingest(&units, &incoming).unwrap();
        }
        let (_, answer) = answer(
            &store,
            &units,
            "C31_2",
            "2025",
            at("2025-06-02T00:00:00+07:00"),
        );
        let parked = store.parked(0, 10).unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].cause, kpi_store::ParkCause::Conflict);
        let loser = String::from_utf8(parked[0].payload.clone()).unwrap();
        assert!(loser.contains(r#""level":"unsatisfied""#), "{loser}");
        outcomes.push((answer, loser));
    }
    assert_eq!(outcomes[0], outcomes[1]);
    let satisfaction = outcomes[0]
        .0
        .rates
        .iter()
        .find(|(kpi, _)| kpi == "satisfaction_rate")
        .map(|(_, rate)| (rate.numerator, rate.denominator));
    assert_eq!(satisfaction, Some((1, 1)), "satisfied < unsatisfied");
}

#[test]
fn the_example_scenario_gives_the_expected_case_flow_and_late_cases() {
    let dir = tempfile::tempdir().unwrap();
    let units = UnitRegistry::from_json(kpi_testkit::UNITS_JSON).unwrap();
    let store = open(dir.path());
    store.adopt_units(&units, today()).unwrap();
    ingest(&store, &units, &lines(), 64);
    let now = at("2025-06-02T00:00:00+07:00");
    let expected = kpi_testkit::expected();
    assert!(!expected.case_flow.is_empty() && !expected.late.is_empty());
    let mut differences = Vec::new();
    for query in &expected.case_flow {
        let period = Period::parse(&query.period).unwrap();
        let group = match query.group_by.as_str() {
            "unit" => kpi_store::FlowGroup::Unit,
            "field" => kpi_store::FlowGroup::Field,
            _ => kpi_store::FlowGroup::Procedure,
        };
        let table = store
            .case_flow(
                &units,
                units.find(&query.unit_id).unwrap(),
                Day::from_date(period.first_day),
                Day::from_date(period.last_day),
                now,
                group,
            )
            .unwrap();
        let rows: Vec<(String, kpi_testkit::FlowColumns)> = table
            .rows
            .iter()
            .map(|(key, flow)| (key.clone(), kpi_testkit::flow_columns(flow)))
            .collect();
        for (key, flow) in table
            .rows
            .iter()
            .chain([(&"total".to_owned(), &table.total)])
        {
            assert!(flow.balances(), "{key}: {flow:?}");
        }
        let as_of = table
            .as_of
            .to_utc()
            .with_timezone(&kpi_domain::vietnam())
            .to_rfc3339();
        differences.extend(kpi_testkit::flow_differences(
            query,
            &as_of,
            &rows,
            &kpi_testkit::flow_columns(&table.total),
        ));
    }
    for query in &expected.late {
        let period = Period::parse(&query.period).unwrap();
        let list = store
            .late_cases(
                &units,
                units.find(&query.unit_id).unwrap(),
                Day::from_date(period.first_day),
                Day::from_date(period.last_day),
                now,
            )
            .unwrap();
        differences.extend(kpi_testkit::late_differences(
            query,
            list.cases
                .iter()
                .map(|(case_id, late)| (case_id.clone(), late.days_late)),
        ));
    }
    assert_eq!(differences, Vec::<String>::new());
}
