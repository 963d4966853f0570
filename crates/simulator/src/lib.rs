//! Realistic synthetic traffic for a unit registry.
//!
//! Cases arrive at each commune's one-stop desk in working hours (Monday to
//! Friday, 07:30–11:30 and 13:30–17:00, Vietnam time) for a mix of
//! procedures and fields; most are resolved early or on time, some are late
//! — with or without an apology letter — some are returned for more papers,
//! withdrawn, paid for, rated, synced to the national portal; now and then a
//! citizen files feedback (phản ánh, kiến nghị). Every event is valid
//! (CONTRACT §2) and deterministic for a seed, so a benchmark or a test can
//! regenerate exactly the same traffic.

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveTime, TimeZone, Timelike, Utc, Weekday,
};
use kpi_domain::{vietnam, Day, Level, Moment, UnitIdx, UnitRegistry};
use kpi_events::{subject_for, Channel, Kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use uuid::Uuid;

/// One generated event, ready to publish.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub event_id: Uuid,
    pub kind: Kind,
    pub subject: String,
    pub occurred_at: DateTime<FixedOffset>,
    /// The JSON line.
    pub payload: Vec<u8>,
}

/// A procedure (thủ tục hành chính) as the simulator uses it.
struct Procedure {
    code: &'static str,
    field: &'static str,
    /// Statutory processing time in working days; 0 means four hours.
    working_days: u32,
    fee_vnd: u64,
    /// Relative frequency at a commune desk.
    weight: u32,
}

/// A commune desk's usual mix (synthetic codes in the national format).
const PROCEDURES: &[Procedure] = &[
    Procedure {
        code: "2.000815",
        field: "chung_thuc",
        working_days: 0,
        fee_vnd: 2_000,
        weight: 30,
    },
    Procedure {
        code: "1.001193",
        field: "ho_tich",
        working_days: 1,
        fee_vnd: 0,
        weight: 18,
    },
    Procedure {
        code: "1.000894",
        field: "ho_tich",
        working_days: 3,
        fee_vnd: 0,
        weight: 6,
    },
    Procedure {
        code: "1.004227",
        field: "dat_dai",
        working_days: 10,
        fee_vnd: 100_000,
        weight: 10,
    },
    Procedure {
        code: "1.009794",
        field: "xay_dung",
        working_days: 15,
        fee_vnd: 75_000,
        weight: 4,
    },
    Procedure {
        code: "1.001776",
        field: "lao_dong",
        working_days: 5,
        fee_vnd: 0,
        weight: 8,
    },
    Procedure {
        code: "1.001731",
        field: "bao_tro_xa_hoi",
        working_days: 7,
        fee_vnd: 0,
        weight: 8,
    },
    Procedure {
        code: "2.001009",
        field: "dau_tu",
        working_days: 15,
        fee_vnd: 50_000,
        weight: 1,
    },
];

/// Generates cases and their events.
pub struct Simulator {
    rng: StdRng,
    units: UnitRegistry,
    communes: Vec<UnitIdx>,
    run_tag: u16,
    next_case: u64,
    next_feedback: u64,
}

impl Simulator {
    /// Traffic for every commune of the registry (or every unit, if the
    /// registry has no communes), each on the days it exists (CONTRACT
    /// §1.1); a case's later events name the unit holding it then (the
    /// successor, after a merge).
    pub fn new(units: &UnitRegistry, seed: u64) -> Simulator {
        let mut communes: Vec<UnitIdx> = units
            .iter()
            .filter(|(_, unit)| unit.level == Level::Commune)
            .map(|(idx, _)| idx)
            .collect();
        if communes.is_empty() {
            communes = units.iter().map(|(idx, _)| idx).collect();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let run_tag = rng.random();
        Simulator {
            rng,
            units: units.clone(),
            communes,
            run_tag,
            next_case: 0,
            next_feedback: 0,
        }
    }

    /// How many communes get traffic (on some day).
    pub fn commune_count(&self) -> usize {
        self.communes.len()
    }

    /// The commune at `index` if it exists on the local day of `at`, else
    /// the one holding its cases then.
    fn commune_on(&self, index: usize, at: DateTime<FixedOffset>) -> UnitIdx {
        let commune = self.communes[index % self.communes.len()];
        self.units.holder_on(commune, local_day(at))
    }

    /// Whether the commune at `index` exists on the local day of `at`.
    fn exists_on(&self, index: usize, at: DateTime<FixedOffset>) -> bool {
        let commune = self.communes[index % self.communes.len()];
        self.units.unit(commune).exists_on(local_day(at))
    }

    /// A random working-hours moment on the desk's local `date`, or the
    /// next working day's.
    fn desk_time(&mut self, day: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        let mut day = day;
        while matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
            day += Duration::days(1);
        }
        // 07:30–11:30 and 13:30–17:00: 450 working minutes.
        let minute = self.rng.random_range(0..450u32);
        let minute_of_day = if minute < 240 {
            450 + minute
        } else {
            810 + minute - 240
        };
        let time = NaiveTime::from_hms_opt(
            minute_of_day / 60,
            minute_of_day % 60,
            self.rng.random_range(0..60),
        )
        .expect("within a day");
        vietnam()
            .from_local_datetime(&day.date_naive().and_time(time))
            .single()
            .expect("fixed offset")
    }

    fn event_id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    /// An event of a case received at `received_by`, naming the unit that
    /// holds the case on the event's day.
    fn event(
        &mut self,
        kind: Kind,
        case_id: &str,
        received_by: UnitIdx,
        at: DateTime<FixedOffset>,
        data: Value,
    ) -> SimEvent {
        let unit_id = &self
            .units
            .unit(self.units.holder_on(received_by, local_day(at)))
            .id
            .clone();
        let event_id = self.event_id();
        let payload = json!({
            "event_id": event_id.to_string(),
            "kind": kind.as_str(),
            "case_id": case_id,
            "unit_id": unit_id,
            "occurred_at": at.to_rfc3339(),
            "data": data,
        });
        SimEvent {
            event_id,
            kind,
            subject: subject_for(unit_id, kind),
            occurred_at: at,
            payload: serde_json::to_vec(&payload).expect("JSON"),
        }
    }

    fn pick_procedure(&mut self) -> &'static Procedure {
        let total: u32 = PROCEDURES.iter().map(|p| p.weight).sum();
        let mut ticket = self.rng.random_range(0..total);
        for procedure in PROCEDURES {
            if ticket < procedure.weight {
                return procedure;
            }
            ticket -= procedure.weight;
        }
        &PROCEDURES[0]
    }

    /// All events of one case received at a commune on the working day of
    /// `day` (or the next one), in the order they happen. Some lie in the
    /// future of `day`: a caller publishing live holds them until then.
    pub fn case(&mut self, commune_index: usize, day: DateTime<FixedOffset>) -> Vec<SimEvent> {
        let received_at = self.desk_time(day);
        self.case_at(commune_index, received_at)
    }

    /// All events of one case received at exactly `received_at` (live
    /// traffic: online applications arrive at any hour).
    pub fn case_at(
        &mut self,
        commune_index: usize,
        received_at: DateTime<FixedOffset>,
    ) -> Vec<SimEvent> {
        let unit = self.commune_on(commune_index, received_at);
        let unit_id = self.units.unit(unit).id.clone();
        self.next_case += 1;
        let case_id = format!(
            "{unit_id}-{}-{:04x}-{:06}",
            received_at.format("%y%m%d"),
            self.run_tag,
            self.next_case
        );
        let procedure = self.pick_procedure();
        let channel = match self.rng.random_range(0..100) {
            0..55 => Channel::Online,
            55..97 => Channel::InPerson,
            _ => Channel::Postal,
        };
        let mut due_at = add_working_time(received_at, procedure.working_days);
        let data = json!({
            "procedure_code": procedure.code,
            "field": procedure.field,
            "channel": channel.as_str(),
            "due_at": due_at.to_rfc3339(),
            "dossier_digitized": self.rng.random_bool(0.85),
            "reused_data": self.rng.random_bool(0.4),
        });
        let mut events = vec![self.event(Kind::CaseReceived, &case_id, unit, received_at, data)];

        if self.rng.random_bool(0.95) {
            let at = received_at + Duration::minutes(self.rng.random_range(1..90));
            events.push(self.event(
                Kind::CaseSynced,
                &case_id,
                unit,
                at,
                json!({"portal": "national"}),
            ));
        }
        if procedure.fee_vnd > 0 {
            let online = self.rng.random_bool(if channel == Channel::Online {
                0.7
            } else {
                0.25
            });
            let at = received_at + Duration::minutes(self.rng.random_range(1..30));
            let data = json!({"amount_vnd": procedure.fee_vnd, "online": online});
            events.push(self.event(Kind::CasePaid, &case_id, unit, at, data));
        }
        if procedure.working_days >= 3 && self.rng.random_bool(0.06) {
            let at = received_at + Duration::days(1);
            due_at = add_working_time(at, procedure.working_days);
            let data =
                json!({"reason": "Bổ sung giấy tờ còn thiếu", "due_at": due_at.to_rfc3339()});
            events.push(self.event(Kind::CaseSupplementRequested, &case_id, unit, at, data));
        }
        if self.rng.random_bool(0.01) {
            let at = received_at + Duration::hours(self.rng.random_range(2..48));
            let data = json!({"reason": "Công dân rút hồ sơ"});
            events.push(self.event(Kind::CaseWithdrawn, &case_id, unit, at, data));
            return sorted(events);
        }

        // Outcome: mostly early or on time; some late, some stuck.
        let span = due_at - received_at;
        let roll = self.rng.random_range(0..1000);
        let resolved_at = match roll {
            0..700 => Some(received_at + span * self.rng.random_range(20..80) / 100),
            700..940 => Some(due_at - Duration::minutes(self.rng.random_range(0..120))),
            940..995 => Some(due_at + Duration::hours(self.rng.random_range(2..96))),
            _ => None,
        };
        let late = resolved_at.is_none_or(|at| at > due_at);
        if late && self.rng.random_bool(0.7) {
            let at = due_at - Duration::hours(self.rng.random_range(1..6));
            let number = self.rng.random_range(1..999);
            let data = json!({
                "letter_ref": format!("{number:03}/TXL-UBND"),
                "reason": "Hồ sơ cần xác minh thêm",
                "new_due_at": (due_at + Duration::days(3)).to_rfc3339(),
            });
            events.push(self.event(
                Kind::CaseApologyIssued,
                &case_id,
                unit,
                at.max(received_at),
                data,
            ));
        }
        let Some(resolved_at) = resolved_at else {
            return sorted(events);
        };
        let resolved_at = resolved_at.max(received_at + Duration::minutes(5));
        let data = json!({
            "result": if self.rng.random_bool(0.97) { "approved" } else { "rejected" },
            "result_electronic": self.rng.random_bool(0.9),
            "result_digitized": self.rng.random_bool(0.85),
        });
        events.push(self.event(Kind::CaseResolved, &case_id, unit, resolved_at, data));

        if self.rng.random_bool(0.6) {
            let at = resolved_at + Duration::minutes(self.rng.random_range(5..2880));
            let unhappy = if late {
                0.35
            } else if matches!(procedure.field, "dat_dai" | "xay_dung" | "dau_tu") {
                0.12
            } else {
                0.05
            };
            let level = if self.rng.random_bool(unhappy) {
                "unsatisfied"
            } else if self.rng.random_bool(0.75) {
                "very_satisfied"
            } else {
                "satisfied"
            };
            events.push(self.event(Kind::CaseRated, &case_id, unit, at, json!({"level": level})));
        }
        sorted(events)
    }

    /// A case at a random commune received at `at`, now and then with a
    /// complaint or recommendation too (live traffic).
    pub fn live_traffic_at(&mut self, at: DateTime<FixedOffset>) -> Vec<SimEvent> {
        let alive: Vec<usize> = (0..self.communes.len())
            .filter(|index| self.exists_on(*index, at))
            .collect();
        let commune = match alive.len() {
            0 => self.rng.random_range(0..self.communes.len()),
            count => alive[self.rng.random_range(0..count)],
        };
        let mut events = self.case_at(commune, at);
        if self.rng.random_bool(0.03) {
            events.extend(self.feedback(commune, at));
        }
        events
    }

    /// A complaint or recommendation received at a commune, and usually its
    /// answer (ten days allowed).
    pub fn feedback(&mut self, commune_index: usize, day: DateTime<FixedOffset>) -> Vec<SimEvent> {
        let received_at = self.desk_time(day);
        let unit = self.commune_on(commune_index, received_at);
        let unit_id = self.units.unit(unit).id.clone();
        self.next_feedback += 1;
        let code = format!(
            "PAKN-{unit_id}-{:04x}-{:05}",
            self.run_tag, self.next_feedback
        );
        let due_at = received_at + Duration::days(10);
        let mut events = vec![self.event(
            Kind::FeedbackReceived,
            &code,
            unit,
            received_at,
            json!({"due_at": due_at.to_rfc3339()}),
        )];
        if self.rng.random_bool(0.9) {
            let hours = if self.rng.random_bool(0.88) {
                self.rng.random_range(4..230)
            } else {
                self.rng.random_range(241..400)
            };
            let at = received_at + Duration::hours(hours);
            events.push(self.event(Kind::FeedbackResolved, &code, unit, at, json!({})));
        }
        events
    }

    /// Traffic for `days` working days from `first_day`: about
    /// `cases_per_commune_day` cases per commune and day, and a little
    /// feedback. Events come case by case (each case's in time order).
    pub fn history(
        &mut self,
        first_day: DateTime<FixedOffset>,
        days: u32,
        cases_per_commune_day: f64,
    ) -> impl Iterator<Item = SimEvent> + '_ {
        let communes = self.communes.len();
        (0..days)
            .map(move |offset| first_day + Duration::days(i64::from(offset)))
            .filter(|day| !matches!(day.weekday(), Weekday::Sat | Weekday::Sun))
            .flat_map(move |day| (0..communes).map(move |commune| (day, commune)))
            .flat_map(move |(day, commune)| {
                // A commune gets cases only on the days it exists.
                if !self.exists_on(commune, day) {
                    return Vec::new();
                }
                let count = self.poisson(cases_per_commune_day);
                let mut events = Vec::new();
                for _ in 0..count {
                    events.extend(self.case(commune, day));
                }
                if self
                    .rng
                    .random_bool((cases_per_commune_day / 40.0).min(1.0))
                {
                    events.extend(self.feedback(commune, day));
                }
                events
            })
    }

    /// A count with mean `mean` (Knuth's method; means here are small).
    fn poisson(&mut self, mean: f64) -> u32 {
        if mean > 30.0 {
            let spread = mean.sqrt();
            return (mean + spread * (self.rng.random::<f64>() - 0.5) * 3.4)
                .max(0.0)
                .round() as u32;
        }
        let limit = (-mean).exp();
        let mut product: f64 = self.rng.random();
        let mut count = 0;
        while product > limit {
            count += 1;
            product *= self.rng.random::<f64>();
        }
        count
    }
}

fn local_day(at: DateTime<FixedOffset>) -> Day {
    Moment::from(at).local_day()
}

fn sorted(mut events: Vec<SimEvent>) -> Vec<SimEvent> {
    events.sort_by_key(|event| event.occurred_at);
    events
}

/// The due time: `working_days` working days later at the same time of
/// day, or four hours later within office hours for same-day procedures.
fn add_working_time(from: DateTime<FixedOffset>, working_days: u32) -> DateTime<FixedOffset> {
    if working_days == 0 {
        let due = from + Duration::hours(4);
        return if due.hour() >= 17 {
            from + Duration::hours(16)
        } else {
            due
        };
    }
    let mut due = from;
    let mut left = working_days;
    while left > 0 {
        due += Duration::days(1);
        if !matches!(due.weekday(), Weekday::Sat | Weekday::Sun) {
            left -= 1;
        }
    }
    due
}

/// A registry of `provinces` provinces, each with `districts` districts of
/// `communes` communes (for benchmarks and load tests).
pub fn synthetic_registry(provinces: usize, districts: usize, communes: usize) -> String {
    synthetic(provinces, districts, communes, false)
}

/// [`synthetic_registry`] through the 2025 reform: every district ends on
/// 2025-06-30, its communes move to the province on 2025-07-01, and in each
/// district the first two communes merge into a new ward (`-M`).
pub fn synthetic_registry_reformed(provinces: usize, districts: usize, communes: usize) -> String {
    synthetic(provinces, districts, communes, true)
}

fn synthetic(provinces: usize, districts: usize, communes: usize, reform: bool) -> String {
    const LAST_DAY: &str = "2025-06-30";
    const FIRST_DAY: &str = "2025-07-01";
    let mut units = Vec::new();
    for p in 0..provinces {
        let province = format!("P{p:02}");
        units.push(
            json!({"id": province, "name": format!("Tỉnh Thử Nghiệm {p}"), "level": "province"}),
        );
        for d in 0..districts {
            let district = format!("{province}-D{d:02}");
            let mut entry = json!({"id": district, "name": format!("Huyện Thử Nghiệm {p}.{d}"), "level": "district", "parent": province});
            if reform {
                entry["valid_to"] = LAST_DAY.into();
            }
            units.push(entry);
            for c in 0..communes {
                let id = format!("{district}-C{c:02}");
                let name = format!("Xã Thử Nghiệm {p}.{d}.{c}");
                let merged = reform && c < 2 && communes >= 2;
                let entry = if !reform {
                    json!({"id": id, "name": name, "level": "commune", "parent": district})
                } else if merged {
                    json!({"id": id, "name": name, "level": "commune", "parent": district, "valid_to": LAST_DAY})
                } else {
                    json!({"id": id, "name": name, "level": "commune", "parents": [
                        {"id": district, "to": LAST_DAY}, {"id": province, "from": FIRST_DAY}]})
                };
                units.push(entry);
            }
            if reform && communes >= 2 {
                units.push(json!({"id": format!("{district}-M"), "name": format!("Phường Hợp Nhất {p}.{d}"),
                    "level": "commune", "parent": province, "valid_from": FIRST_DAY,
                    "successor_of": [format!("{district}-C00"), format!("{district}-C01")]}));
            }
        }
    }
    serde_json::to_string_pretty(&json!({"units": units})).expect("JSON")
}

/// Today's date at midnight in Vietnam, `days_back` days ago.
pub fn vietnam_day(now: DateTime<Utc>, days_back: i64) -> DateTime<FixedOffset> {
    let local = now.with_timezone(&vietnam()) - Duration::days(days_back);
    vietnam()
        .from_local_datetime(&local.date_naive().and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .expect("fixed offset")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_events::parse_event;

    fn units() -> UnitRegistry {
        UnitRegistry::from_json(synthetic_registry(1, 2, 3).as_bytes()).unwrap()
    }

    #[test]
    fn every_generated_event_is_valid_and_on_its_subject() {
        let units = units();
        let mut simulator = Simulator::new(&units, 7);
        let start = vietnam_day(Utc::now(), 60);
        let events: Vec<SimEvent> = simulator.history(start, 60, 8.0).collect();
        assert!(events.len() > 1000, "{}", events.len());
        for event in &events {
            // Validated as of its own time, as the bus would when it is published.
            let at = event.occurred_at.with_timezone(&Utc);
            let parsed = parse_event(&event.payload, &kpi_events::Validation::new(&units, at))
                .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&event.payload)));
            assert_eq!(parsed.subject(), event.subject);
            assert_eq!(parsed.event_id, event.event_id);
        }
        let count = |kind: Kind| events.iter().filter(|e| e.kind == kind).count();
        for kind in Kind::ALL {
            assert!(count(*kind) > 0, "no {kind} generated");
        }
        assert!(count(Kind::CaseApologyIssued) < count(Kind::CaseResolved) / 10);
    }

    #[test]
    fn traffic_through_the_reform_names_units_of_its_day() {
        let units =
            UnitRegistry::from_json(synthetic_registry_reformed(1, 2, 3).as_bytes()).unwrap();
        let mut simulator = Simulator::new(&units, 11);
        let start = vietnam_day(
            Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).single().unwrap(),
            0,
        );
        let events: Vec<SimEvent> = simulator.history(start, 60, 4.0).collect();
        let mut merged_ward_after = 0;
        for event in &events {
            let at = event.occurred_at.with_timezone(&Utc);
            parse_event(&event.payload, &kpi_events::Validation::new(&units, at))
                .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&event.payload)));
            if event.subject.starts_with("cases.P00-D00-M.") {
                merged_ward_after += 1;
            }
        }
        assert!(merged_ward_after > 0, "the new ward gets traffic");
        assert_eq!(simulator.commune_count(), 8);
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let units = units();
        let start = vietnam_day(Utc::now(), 10);
        let a: Vec<_> = Simulator::new(&units, 42)
            .history(start, 10, 5.0)
            .map(|e| e.payload)
            .collect();
        let b: Vec<_> = Simulator::new(&units, 42)
            .history(start, 10, 5.0)
            .map(|e| e.payload)
            .collect();
        let c: Vec<_> = Simulator::new(&units, 43)
            .history(start, 10, 5.0)
            .map(|e| e.payload)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn cases_arrive_in_working_hours() {
        let units = units();
        let mut simulator = Simulator::new(&units, 1);
        for day in 0..30 {
            let events = simulator.case(0, vietnam_day(Utc::now(), day));
            let received = &events
                .iter()
                .find(|e| e.kind == Kind::CaseReceived)
                .unwrap()
                .occurred_at;
            assert!(!matches!(received.weekday(), Weekday::Sat | Weekday::Sun));
            let minutes = received.hour() * 60 + received.minute();
            assert!(
                (450..690).contains(&minutes) || (810..1020).contains(&minutes),
                "{received}"
            );
        }
    }
}
