//! Generated case histories with many ties and retractions: any arrival
//! order, duplication and batching gives the same views, and the live
//! counts agree with the records.

use chrono::{DateTime, Duration, FixedOffset, TimeZone};
use kpi_domain::reference::MemoryViews;
use kpi_domain::UnitRegistry;
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
        0u8..9,
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
                _ => EventData::FeedbackResolved,
            };
            // Event ids are mostly derived from content, so that a
            // duplicate id is a duplicate event and ties on time differ by
            // id; some are reused for other content (identity conflicts).
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn views_do_not_depend_on_order_duplicates_or_batches(
        events in proptest::collection::vec(event_strategy(), 1..40),
        order in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
        batch in 1usize..8,
    ) {
        let units = units();
        let canonical: Vec<&Event> = events.iter().collect();
        let reference = fold(&units, &canonical, canonical.len());

        let mut shuffled: Vec<&Event> = events.iter().chain(events.iter().step_by(2)).collect();
        let mut seed = order | 1;
        for i in (1..shuffled.len()).rev() {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            shuffled.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        let views = fold(&units, &shuffled, batch);
        prop_assert_eq!(views.all_counters(), reference.all_counters());
        prop_assert_eq!(views.open_index(), reference.open_index());
        prop_assert_eq!(views.kept_aside(), reference.kept_aside());
    }
}
