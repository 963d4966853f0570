//! Generated case histories with many ties and retractions: any arrival
//! order, duplication and batching gives the views the contract's rules
//! give when replayed naively per case ([`kpi_domain::naive`], no code
//! shared with the fold): identity conflicts (by unit too), payments,
//! withdrawals after resolutions and held events included.

use chrono::{DateTime, Duration, FixedOffset, TimeZone};
use std::collections::{BTreeMap, BTreeSet};

use kpi_domain::naive::{naive_views, NaiveViews};
use kpi_domain::reference::MemoryViews;
use kpi_domain::{RecordKey, UnitRegistry};
use kpi_events::{CaseReceived, Channel, Event, EventData, RatingLevel, ResolutionResult};
use proptest::prelude::*;
use uuid::Uuid;

fn units() -> UnitRegistry {
    UnitRegistry::from_json(
        br#"{"units":[{"id":"P","name":"P","level":"province"},
        {"id":"D","name":"D","level":"district","parent":"P"},
        {"id":"C1","name":"C1","level":"commune","parent":"D"},
        {"id":"C2","name":"C2","level":"commune","parent":"P"}]}"#,
    )
    .unwrap()
}

fn time(hours: i64) -> DateTime<FixedOffset> {
    let vietnam = FixedOffset::east_opt(7 * 3600).unwrap();
    vietnam.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + Duration::hours(hours)
}

/// A few cases, few distinct times (ties are frequent), every kind.
fn event_strategy() -> impl Strategy<Value = Event> {
    (
        0u8..3,
        0u8..2,
        0u8..10,
        0i64..72,
        1i64..60,
        0u8..4,
        any::<bool>(),
        0u128..6,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(case, unit, kind, at, span, choice, flag, id, reused)| {
            let occurred_at = time(at * 6);
            let due_at = occurred_at + Duration::hours(span * 6);
            let data = match kind {
                0 => EventData::CaseReceived(CaseReceived {
                    procedure_code: "1.000".into(),
                    field: ["dat_dai", "ho_tich", "xay_dung", "dau_tu"][choice as usize].into(),
                    channel: [Channel::Online, Channel::InPerson, Channel::Postal]
                        [choice as usize % 3],
                    due_at,
                    dossier_digitized: flag,
                    reused_data: !flag,
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
                    result_digitized: choice > 1,
                },
                4 => EventData::CaseWithdrawn {
                    reason: "rút".into(),
                },
                5 => EventData::CasePaid {
                    amount_vnd: 50_000,
                    online: flag,
                },
                6 => EventData::CaseRated {
                    level: [
                        RatingLevel::VerySatisfied,
                        RatingLevel::Satisfied,
                        RatingLevel::Unsatisfied,
                    ][choice as usize % 3],
                },
                7 => EventData::FeedbackReceived { due_at },
                8 => EventData::CaseSynced {
                    portal: "national".into(),
                },
                _ => EventData::FeedbackResolved,
            };
            // Event ids are mostly derived from content, so that a
            // duplicate id is a duplicate event and ties on time differ by
            // id; some are reused for other content (identity conflicts).
            // The unit is not part of the id: the same event under the
            // other unit is a conflict too.
            let event_id = if reused {
                Uuid::from_u128((case as u128) << 100 | id)
            } else {
                Uuid::from_u128(
                    (case as u128) << 100
                        | (kind as u128) << 90
                        | (at as u128) << 40
                        | (span as u128) << 20
                        | (choice as u128) << 10
                        | (flag as u128) << 8
                        | 1 << 7
                        | id,
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

/// The same event with other data of its kind (under the same id, kind,
/// unit and time: an identity conflict only the data decide).
fn other_data(event: &Event) -> Event {
    let mut other = event.clone();
    other.data = match &event.data {
        EventData::CaseReceived(received) => EventData::CaseReceived(CaseReceived {
            channel: match received.channel {
                Channel::Online => Channel::Postal,
                _ => Channel::Online,
            },
            ..received.clone()
        }),
        EventData::CaseSupplementRequested { reason, due_at } => {
            EventData::CaseSupplementRequested {
                reason: format!("{reason} (2)"),
                due_at: *due_at + Duration::hours(6),
            }
        }
        EventData::CaseApologyIssued {
            letter_ref,
            reason,
            new_due_at,
        } => EventData::CaseApologyIssued {
            letter_ref: format!("{letter_ref}-2"),
            reason: reason.clone(),
            new_due_at: *new_due_at,
        },
        EventData::CaseResolved {
            result,
            result_electronic,
            result_digitized,
        } => EventData::CaseResolved {
            result: *result,
            result_electronic: !*result_electronic,
            result_digitized: *result_digitized,
        },
        EventData::CaseWithdrawn { reason } => EventData::CaseWithdrawn {
            reason: format!("{reason} (2)"),
        },
        EventData::CasePaid { amount_vnd, online } => EventData::CasePaid {
            amount_vnd: *amount_vnd,
            online: !*online,
        },
        EventData::CaseRated { level } => EventData::CaseRated {
            level: match level {
                RatingLevel::Unsatisfied => RatingLevel::Satisfied,
                _ => RatingLevel::Unsatisfied,
            },
        },
        EventData::CaseSynced { portal } => EventData::CaseSynced {
            portal: format!("{portal}-2"),
        },
        EventData::FeedbackReceived { due_at } => EventData::FeedbackReceived {
            due_at: *due_at + Duration::hours(6),
        },
        // No data to differ: the same event.
        EventData::FeedbackResolved => EventData::FeedbackResolved,
    };
    other
}

/// Events, some of them also sent under the other unit with the same id
/// and content otherwise (an identity conflict decided by the unit), some
/// with other data under the same id, kind, unit and time (decided by the
/// data alone).
fn events_strategy() -> impl Strategy<Value = Vec<Event>> {
    proptest::collection::vec((event_strategy(), 0u8..5), 1..40).prop_map(|drawn| {
        let mut events = Vec::with_capacity(drawn.len() * 2);
        for (event, echo) in drawn {
            match echo {
                0 => {
                    let mut other = event.clone();
                    other.unit_id = if event.unit_id == "C1" { "C2" } else { "C1" }.into();
                    events.push(other);
                }
                1 => events.push(other_data(&event)),
                _ => {}
            }
            events.push(event);
        }
        events
    })
}

fn fold(units: &UnitRegistry, events: &[&Event], batch: usize) -> MemoryViews {
    let mut views = MemoryViews::default();
    for (index, chunk) in events.chunks(batch).enumerate() {
        let numbered = chunk
            .iter()
            .enumerate()
            .map(|(offset, e)| ((index * batch + offset) as u64, *e));
        views.fold_batch(units, numbered).unwrap();
    }
    views
}

/// The fold's views in the naive reference's terms.
fn as_naive(units: &UnitRegistry, views: &MemoryViews) -> NaiveViews {
    let id = |unit| units.unit(unit).id.clone();
    let mut counts = BTreeMap::new();
    for ((unit, day), counters) in views.all_counters() {
        for (counter, value) in counters.iter().filter(|(_, value)| *value > 0) {
            counts.insert((id(*unit), day.to_date(), counter.name()), value);
        }
    }
    let open: BTreeSet<_> = views
        .open_index()
        .iter()
        .map(|(key, apology)| {
            (
                id(key.unit),
                key.due_at.to_utc(),
                key.case_id.clone(),
                *apology,
            )
        })
        .collect();
    let kept_aside = views
        .kept_aside()
        .into_iter()
        .map(|(key, event_id, kind, unit, at, data)| {
            let feedback = matches!(key, RecordKey::Feedback(_));
            (
                feedback,
                key.code().to_owned(),
                event_id,
                kind,
                unit,
                at.to_utc(),
                data,
            )
        })
        .collect();
    NaiveViews {
        counts,
        open,
        kept_aside,
    }
}

/// Each unit's ancestors in [`units`], itself first.
fn ancestors(unit: &str) -> Vec<String> {
    let chain: &[&str] = match unit {
        "C1" => &["C1", "D", "P"],
        "C2" => &["C2", "P"],
        "D" => &["D", "P"],
        _ => &["P"],
    };
    chain.iter().map(|unit| unit.to_string()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn views_are_the_contracts_in_any_order_duplicates_or_batches(
        events in events_strategy(),
        order in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
        batch in 1usize..8,
    ) {
        let units = units();
        let expected = naive_views(&events, ancestors);
        let canonical: Vec<&Event> = events.iter().collect();
        let in_order = fold(&units, &canonical, canonical.len());
        prop_assert_eq!(&as_naive(&units, &in_order), &expected);

        let mut shuffled: Vec<&Event> = events.iter().chain(events.iter().step_by(2)).collect();
        let mut seed = order | 1;
        for i in (1..shuffled.len()).rev() {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            shuffled.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let views = fold(&units, &shuffled, batch);
        prop_assert_eq!(&as_naive(&units, &views), &expected);
    }
}

/// The naive reference is not vacuous: it counts what the contract says
/// for a case paid twice, a withdrawal after a resolution, a conflict by
/// unit and a held event.
#[test]
fn the_naive_reference_counts_the_contracts_edge_cases() {
    let vietnam = FixedOffset::east_opt(7 * 3600).unwrap();
    let at = |day: u32, hour: u32| vietnam.with_ymd_and_hms(2025, 3, day, hour, 0, 0).unwrap();
    let event = |id: u128, case: &str, unit: &str, occurred_at, data| Event {
        event_id: Uuid::from_u128(id),
        case_id: case.into(),
        unit_id: String::from(unit),
        occurred_at,
        data,
    };
    let received = EventData::CaseReceived(CaseReceived {
        procedure_code: "1.000".into(),
        field: "ho_tich".into(),
        channel: Channel::Online,
        due_at: at(10, 17),
        dossier_digitized: false,
        reused_data: false,
    });
    let paid = |online| EventData::CasePaid {
        amount_vnd: 1,
        online,
    };
    let events = vec![
        event(1, "A", "C1", at(1, 8), received.clone()),
        event(2, "A", "C1", at(2, 8), paid(false)),
        event(3, "A", "C1", at(3, 8), paid(true)),
        event(
            4,
            "A",
            "C1",
            at(4, 8),
            EventData::CaseResolved {
                result: ResolutionResult::Approved,
                result_electronic: false,
                result_digitized: false,
            },
        ),
        event(
            5,
            "A",
            "C1",
            at(5, 8),
            EventData::CaseWithdrawn {
                reason: "rút".into(),
            },
        ),
        // The same case.received under C2 with another id, and under C2
        // with the id of A's (a conflict C1 wins).
        event(1, "A", "C2", at(1, 8), received.clone()),
        event(
            6,
            "B",
            "C2",
            at(6, 8),
            EventData::CaseRated {
                level: RatingLevel::Satisfied,
            },
        ),
    ];
    let views = naive_views(&events, ancestors);
    let day = |d| chrono::NaiveDate::from_ymd_opt(2025, 3, d).unwrap();
    let count = |unit: &str, d, counter| {
        views
            .counts
            .get(&(unit.to_owned(), day(d), counter))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("C1", 2, "payments"), 1);
    assert_eq!(count("C1", 2, "payments_online"), 1);
    assert_eq!(count("C1", 3, "payments"), 0);
    assert_eq!(count("P", 5, "withdrawn"), 1);
    assert_eq!(count("P", 4, "resolved"), 0);
    assert_eq!(count("C1", 4, "closed"), 1);
    assert_eq!(count("C2", 1, "received"), 0);
    assert_eq!(count("C2", 6, "held_events"), 1);
    assert_eq!(views.kept_aside.len(), 1);
    assert!(views.open.is_empty());
}
