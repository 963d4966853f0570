//! The case-flow report (CONTRACT §9) of the sled views against the
//! contract's table replayed per case ([`kpi_domain::naive::naive_case_flow`],
//! no code shared with the fold), for generated cases in any order, and
//! against a hand-built table with every cell checked.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, TimeZone, Utc};
use kpi_domain::naive::naive_case_flow;
use kpi_domain::{CaseFlow, Day, Moment, UnitRegistry};
use kpi_events::{CaseReceived, Channel, Event, EventData, ResolutionResult};
use kpi_store::{FlowGroup, Incoming, Store, StoreOptions};
use proptest::prelude::*;
use uuid::Uuid;

fn units() -> UnitRegistry {
    UnitRegistry::from_json(
        r#"{"units":[{"id":"P","name":"Tỉnh P","level":"province"},
        {"id":"D","name":"Huyện D","level":"district","parent":"P"},
        {"id":"C1","name":"Xã C1","level":"commune","parent":"D"},
        {"id":"C2","name":"Phường C2","level":"commune","parent":"P"}]}"#
            .as_bytes(),
    )
    .unwrap()
}

fn vietnam() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).unwrap()
}

fn start() -> DateTime<FixedOffset> {
    vietnam().with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn day(offset: i64) -> NaiveDate {
    start().date_naive() + Duration::days(offset)
}

/// The views of `events`, folded in batches of `batch`.
fn fold(events: &[Event], batch: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let units = units();
    store.adopt_units(&units, Day::from_date(day(0))).unwrap();
    let messages: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|event| (event.subject(), event.to_canonical_json()))
        .collect();
    let log = messages.clone();
    store.set_log_reader(std::sync::Arc::new(move |sequence| {
        Ok(log
            .get(sequence as usize - 1)
            .map(|(subject, payload)| kpi_store::LoggedMessage {
                subject: subject.clone(),
                payload: payload.clone(),
                published: None,
            }))
    }));
    for (index, chunk) in messages.chunks(batch.max(1)).enumerate() {
        let incoming: Vec<Incoming<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(offset, (subject, payload))| {
                let sequence = (index * batch.max(1) + offset) as u64 + 1;
                Incoming::validate(sequence, subject, payload, None, &units)
            })
            .collect();
        store.ingest(&units, &incoming).unwrap();
    }
    (dir, store)
}

/// The row a case received at `receiving` counts in, in `unit`'s report
/// by unit: the tree written out by hand.
fn unit_row(unit: &str, receiving: &str) -> Option<&'static str> {
    match (unit, receiving) {
        ("P", "C1") => Some("D"),
        ("P", "C2") | ("C2", "C2") => Some("C2"),
        ("D", "C1") | ("C1", "C1") => Some("C1"),
        _ => None,
    }
}

fn naive(
    events: &[Event],
    unit: &str,
    group: FlowGroup,
    first: NaiveDate,
    last: NaiveDate,
    now: DateTime<Utc>,
) -> BTreeMap<String, CaseFlow> {
    let midnight = |date: NaiveDate| {
        vietnam()
            .from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    let today = now.with_timezone(&vietnam()).date_naive();
    let end = if last >= today {
        now
    } else {
        midnight(last.succ_opt().unwrap())
    };
    naive_case_flow(events, midnight(first), end, |received| {
        let row = unit_row(unit, &received.unit_id)?;
        let EventData::CaseReceived(data) = &received.data else {
            return None;
        };
        Some(match group {
            FlowGroup::Unit => row.to_owned(),
            FlowGroup::Field => data.field.clone(),
            FlowGroup::Procedure => data.procedure_code.clone(),
        })
    })
    .into_iter()
    .map(|(key, values)| (key, CaseFlow::from_values(values)))
    .collect()
}

fn table(
    store: &Store,
    unit: &str,
    group: FlowGroup,
    first: NaiveDate,
    last: NaiveDate,
    now: DateTime<Utc>,
) -> kpi_store::FlowTable {
    let units = units();
    store
        .case_flow(
            &units,
            units.find(unit).unwrap(),
            Day::from_date(first),
            Day::from_date(last),
            Moment::from(now),
            group,
        )
        .unwrap()
}

/// Case events only, few cases and times, every kind that moves a case
/// through the report; ids mostly from content, some reused (conflicts).
/// Over 20 days from `origin`.
fn event_strategy_from(origin: DateTime<FixedOffset>) -> impl Strategy<Value = Event> {
    (
        0u8..5,
        0u8..2,
        0u8..5,
        0i64..80,
        1i64..24,
        0u8..3,
        any::<bool>(),
        prop::bool::weighted(0.15),
    )
        .prop_map(move |(case, unit, kind, at, span, choice, flag, reused)| {
            let occurred_at = origin + Duration::hours(at * 6);
            let due_at = occurred_at + Duration::hours(span * 6);
            let data = match kind {
                0 => EventData::CaseReceived(CaseReceived {
                    procedure_code: ["1.001", "1.002", "2.001"][choice as usize].into(),
                    field: ["dat_dai", "ho_tich", "dat_dai"][choice as usize].into(),
                    channel: [Channel::Online, Channel::InPerson, Channel::Postal][choice as usize],
                    due_at,
                    dossier_digitized: flag,
                    reused_data: false,
                }),
                1 => EventData::CaseSupplementRequested {
                    reason: "thiếu giấy tờ".into(),
                    due_at,
                },
                2 => EventData::CaseApologyIssued {
                    letter_ref: "01/TXL".into(),
                    reason: "trễ".into(),
                    new_due_at: due_at,
                },
                3 => EventData::CaseResolved {
                    result: if flag {
                        ResolutionResult::Approved
                    } else {
                        ResolutionResult::Rejected
                    },
                    result_electronic: flag,
                    result_digitized: false,
                },
                _ => EventData::CaseWithdrawn {
                    reason: "rút".into(),
                },
            };
            let event_id = if reused {
                Uuid::from_u128((case as u128) << 100 | kind as u128)
            } else {
                Uuid::from_u128(
                    (case as u128) << 100
                        | (kind as u128) << 90
                        | (at as u128) << 40
                        | (span as u128) << 20
                        | (choice as u128) << 10
                        | (flag as u128) << 8
                        | (unit as u128) << 4
                        | 1,
                )
            };
            Event {
                event_id,
                case_id: format!("K-{case}"),
                unit_id: ["C1", "C2"][unit as usize].into(),
                occurred_at,
                data,
            }
        })
}

/// Events in an arrival order, some sent twice.
fn arrivals() -> impl Strategy<Value = Vec<Event>> {
    arrivals_from(start())
}

/// [`arrivals`] of events from `origin`.
fn arrivals_from(origin: DateTime<FixedOffset>) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (event_strategy_from(origin), prop::bool::weighted(0.2)),
        1..40,
    )
    .prop_map(|events| {
        events
            .into_iter()
            .flat_map(|(event, twice)| {
                let copies = if twice { 2 } else { 1 };
                std::iter::repeat_n(event, copies)
            })
            .collect::<Vec<_>>()
    })
    .prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_table_is_the_contracts_count_per_case_and_balances(
        events in arrivals(),
        batch in 1usize..12,
        queries in prop::collection::vec((0usize..4, 0usize..3, 0i64..24, 0i64..16), 6),
        now_hours in 0i64..30,
    ) {
        let (_dir, store) = fold(&events, batch);
        // After every event (the last is at 19 days 18 hours: the views count a running day's events whatever their hour); a running
        // period sees cases due later on its day.
        let now = (start() + Duration::hours(475 + now_hours)).with_timezone(&Utc);
        tables_are_the_naive_count(&store, &events, start(), &queries, now)?;
    }
}

/// Each query (unit, grouping, first day from `origin`, length in days)
/// answered by the views equals the naive per-case count, its rows
/// balance and sum to its total.
fn tables_are_the_naive_count(
    store: &Store,
    events: &[Event],
    origin: DateTime<FixedOffset>,
    queries: &[(usize, usize, i64, i64)],
    now: DateTime<Utc>,
) -> Result<(), TestCaseError> {
    for &(unit, group, first, length) in queries {
        let unit = ["P", "D", "C1", "C2"][unit];
        let group = [FlowGroup::Unit, FlowGroup::Field, FlowGroup::Procedure][group];
        let first = origin.date_naive() + Duration::days(first);
        let last = first + Duration::days(length);
        let answer = table(store, unit, group, first, last, now);
        let expected = naive(events, unit, group, first, last, now);
        prop_assert_eq!(
            &answer.rows,
            &expected,
            "{} by {:?} for {}..{}",
            unit,
            group,
            first,
            last
        );
        let mut total = CaseFlow::default();
        for (key, row) in &answer.rows {
            prop_assert!(row.balances(), "{}: {:?}", key, row);
            total.add(row);
        }
        prop_assert_eq!(total, answer.total);
        prop_assert!(answer.total.balances());
    }
    Ok(())
}

/// Where the second property's events start: 20 days across a new year,
/// so that its tables add years, months and a month's days.
fn new_year() -> DateTime<FixedOffset> {
    vietnam().with_ymd_and_hms(2024, 12, 22, 0, 0, 0).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tables_across_a_new_year_and_its_months_are_the_contracts_count(
        events in arrivals_from(new_year()),
        batch in 1usize..12,
        queries in prop::collection::vec((0usize..4, 0usize..3, 0i64..30, 0i64..45), 6),
        now_hours in 0i64..1800,
    ) {
        let (_dir, store) = fold(&events, batch);
        // Now from the last event to 75 days later: most periods are over.
        let now = (new_year() + Duration::hours(475 + now_hours)).with_timezone(&Utc);
        tables_are_the_naive_count(&store, &events, new_year(), &queries, now)?;
    }
}

/// An instant of Vietnam time, `2025-01-10 09:00` style.
fn at(text: &str) -> DateTime<FixedOffset> {
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
    vietnam().from_local_datetime(&naive).unwrap()
}

struct CaseBuilder {
    case_id: String,
    events: Vec<Event>,
}

impl CaseBuilder {
    fn event(mut self, when: &str, data: EventData) -> Self {
        self.events.push(Event {
            event_id: Uuid::new_v4(),
            case_id: self.case_id.clone(),
            unit_id: "C1".into(),
            occurred_at: at(when),
            data,
        });
        self
    }

    fn received(case_id: &str, when: &str, channel: Channel, due: &str) -> Self {
        CaseBuilder {
            case_id: case_id.into(),
            events: Vec::new(),
        }
        .event(
            when,
            EventData::CaseReceived(CaseReceived {
                procedure_code: "1.001".into(),
                field: "ho_tich".into(),
                channel,
                due_at: at(due),
                dossier_digitized: false,
                reused_data: false,
            }),
        )
    }

    fn resolved(self, when: &str, result: ResolutionResult) -> Self {
        self.event(
            when,
            EventData::CaseResolved {
                result,
                result_electronic: false,
                result_digitized: false,
            },
        )
    }

    fn apology(self, when: &str) -> Self {
        self.event(
            when,
            EventData::CaseApologyIssued {
                letter_ref: "15/UBND-VP".into(),
                reason: "trễ hạn".into(),
                new_due_at: at("2025-06-30 17:00"),
            },
        )
    }
}

#[test]
fn a_hand_built_quarter_has_every_cell_as_the_contract_says() {
    use Channel::{InPerson, Online, Postal};
    use ResolutionResult::{Approved, Rejected};
    let cases = [
        // Carried over and finished in the period (early).
        CaseBuilder::received("A", "2024-12-20 09:00", Online, "2025-01-15 17:00")
            .resolved("2025-01-10 10:00", Approved),
        // Carried over and still open, overdue, no letter.
        CaseBuilder::received("B", "2024-12-10 09:00", InPerson, "2024-12-30 17:00"),
        // Received, pending in time.
        CaseBuilder::received("C", "2025-03-20 09:00", Online, "2025-04-10 17:00"),
        // Overdue at E: the supplement that moves its due comes after E.
        CaseBuilder::received("D", "2025-02-01 09:00", Online, "2025-02-20 17:00")
            .apology("2025-02-25 08:00")
            .event(
                "2025-04-05 08:00",
                EventData::CaseSupplementRequested {
                    reason: "bổ sung".into(),
                    due_at: at("2025-05-01 17:00"),
                },
            ),
        // Withdrawn.
        CaseBuilder::received("E", "2025-01-05 09:00", Postal, "2025-01-30 17:00").event(
            "2025-01-20 09:00",
            EventData::CaseWithdrawn {
                reason: "công dân rút".into(),
            },
        ),
        // Refused, on its due day before the due time.
        CaseBuilder::received("F", "2025-01-06 09:00", InPerson, "2025-01-25 17:00")
            .resolved("2025-01-25 10:00", Rejected),
        // Resolved an hour before its receipt: taken as at the receipt.
        CaseBuilder::received("G", "2025-02-10 10:00", Online, "2025-02-20 17:00")
            .resolved("2025-02-10 09:00", Approved),
        // Due exactly at E: not overdue at E.
        CaseBuilder::received("H", "2025-03-01 09:00", InPerson, "2025-04-01 00:00"),
        // Resolved late; its letter came after E.
        CaseBuilder::received("I", "2025-01-10 09:00", Postal, "2025-02-01 17:00")
            .resolved("2025-02-05 09:00", Approved)
            .apology("2025-04-10 08:00"),
    ];
    let events: Vec<Event> = cases.into_iter().flat_map(|case| case.events).collect();
    let (_dir, store) = fold(&events, 3);
    let now = at("2025-06-01 12:00").with_timezone(&Utc);
    let (first, last) = (day(0), NaiveDate::from_ymd_opt(2025, 3, 31).unwrap());
    let answer = table(&store, "P", FlowGroup::Unit, first, last, now);
    let expected = CaseFlow {
        carried_over: 2,
        received_online: 3,
        received_in_person: 2,
        received_postal: 2,
        to_handle: 9,
        resolved_early: 2,
        resolved_on_time: 1,
        resolved_late: 1,
        resolved: 4,
        resolved_rejected: 1,
        withdrawn: 1,
        pending_not_due: 2,
        pending_overdue: 2,
        pending: 4,
        late_total: 3,
        late_with_apology: 1,
    };
    assert_eq!(answer.rows.keys().collect::<Vec<_>>(), ["D"]);
    assert_eq!(answer.rows["D"], expected);
    assert_eq!(answer.total, expected);
    assert_eq!(Moment::from(at("2025-04-01 00:00")), answer.as_of);
    assert_eq!(
        naive(&events, "P", FlowGroup::Unit, first, last, now)["D"],
        expected
    );

    let units = units();
    let late = store
        .late_cases(
            &units,
            units.find("D").unwrap(),
            Day::from_date(first),
            Day::from_date(last),
            Moment::from(now),
        )
        .unwrap();
    let listed: Vec<(&str, u64, bool, usize)> = late
        .cases
        .iter()
        .map(|(code, case)| {
            (
                code.as_str(),
                case.days_late,
                case.resolved_at.is_some(),
                case.apologies.len(),
            )
        })
        .collect();
    // By due time: B (30 Dec), I (1 Feb), D (20 Feb); D's letter is before
    // E, I's after it.
    assert_eq!(
        listed,
        [("B", 92, false, 0), ("I", 4, true, 0), ("D", 40, false, 1)]
    );
}
