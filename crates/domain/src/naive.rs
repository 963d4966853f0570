//! A second, naive reference: the contract's counting rules replayed per
//! case, with no code shared with the fold.
//!
//! The fold ([`crate::fold`], [`crate::record`], [`crate::contribution`])
//! keeps per-case records, turns each into a contribution and writes
//! "new minus old" on every event. A property test that compares one fold
//! with another (say, in another arrival order) checks only that the fold
//! agrees with itself. This module answers the same questions the plain
//! way, straight from CONTRACT §1.2 and §3: take every event at once, group
//! it by case, decide identity conflicts, pick the events that count, and
//! count — day by day where the fold computes spans. It uses neither the
//! records, nor the counters' type, nor the unit registry (the caller
//! gives each unit's ancestors), nor the domain's time types: only the
//! parsed events and chrono.
//!
//! It is slow (quadratic in places) and meant for small event sets in
//! tests.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, Utc};
use kpi_events::{Channel, Event, EventData, RatingLevel, ResolutionResult};
use serde_json::json;
use uuid::Uuid;

/// A counter of one unit on one Vietnam-local day, by its API name.
pub type CountKey = (String, NaiveDate, &'static str);

/// An open case as the live counts see it: (unit, due instant, case code,
/// has an apology letter), at every unit its figures are part of.
pub type OpenEntry = (String, DateTime<Utc>, String, bool);

/// An event kept aside by an identity conflict: (feedback record?, code,
/// event id, kind, unit, instant, content hash).
pub type KeptAside = (
    bool,
    String,
    Uuid,
    &'static str,
    String,
    DateTime<Utc>,
    kpi_events::ContentHash,
);

/// What the contract says the views hold after a set of events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NaiveViews {
    /// Every non-zero counter.
    pub counts: BTreeMap<CountKey, u64>,
    pub open: BTreeSet<OpenEntry>,
    pub kept_aside: BTreeSet<KeptAside>,
}

fn vietnam() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).expect("+07:00 is a valid offset")
}

fn local_date(at: DateTime<FixedOffset>) -> NaiveDate {
    at.with_timezone(&vietnam()).date_naive()
}

fn time_text(at: DateTime<FixedOffset>) -> String {
    at.with_timezone(&vietnam())
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// The `data` of an event as JSON with keys sorted and no spaces, every
/// time in Vietnam time (§1.2's last tie-break).
fn canonical_data(data: &EventData) -> String {
    let value = match data {
        EventData::CaseReceived(received) => json!({
            "procedure_code": received.procedure_code,
            "field": received.field,
            "channel": received.channel.as_str(),
            "due_at": time_text(received.due_at),
            "dossier_digitized": received.dossier_digitized,
            "reused_data": received.reused_data,
        }),
        EventData::CaseSupplementRequested { reason, due_at } => {
            json!({"reason": reason, "due_at": time_text(*due_at)})
        }
        EventData::CaseApologyIssued {
            letter_ref,
            reason,
            new_due_at,
        } => {
            json!({"letter_ref": letter_ref, "reason": reason, "new_due_at": time_text(*new_due_at)})
        }
        EventData::CaseResolved {
            result,
            result_electronic,
            result_digitized,
        } => json!({"result": result.as_str(), "result_electronic": result_electronic,
                    "result_digitized": result_digitized}),
        EventData::CaseWithdrawn { reason } => json!({ "reason": reason }),
        EventData::CasePaid { amount_vnd, online } => {
            json!({"amount_vnd": amount_vnd, "online": online})
        }
        EventData::CaseRated { level } => json!({"level": level.as_str()}),
        EventData::CaseSynced { portal } => json!({ "portal": portal }),
        EventData::FeedbackReceived { due_at } => json!({"due_at": time_text(*due_at)}),
        EventData::FeedbackResolved => json!({}),
    };
    // serde_json's maps keep keys sorted.
    value.to_string()
}

/// Two events under one key are the same event when kind, unit, instant
/// and data are equal (times compared as instants).
fn same_content(a: &Event, b: &Event) -> bool {
    a.unit_id == b.unit_id && a.occurred_at == b.occurred_at && a.data == b.data
}

/// §1.2: the earliest counts; ties: the smaller kind, unit, canonical data.
fn counts_before(a: &Event, b: &Event) -> bool {
    let key = |e: &Event| {
        (
            e.occurred_at.with_timezone(&Utc),
            e.kind().as_str().to_owned(),
            e.unit_id.clone().into_bytes(),
            canonical_data(&e.data).into_bytes(),
        )
    };
    key(a) < key(b)
}

/// The views the contract gives for `events` (in any order, duplicates
/// included), with `ancestors(unit)` the units a count at `unit` is part
/// of, the unit itself first (a tree that does not change over time).
pub fn naive_views(events: &[Event], ancestors: impl Fn(&str) -> Vec<String>) -> NaiveViews {
    let mut views = NaiveViews::default();
    for ((feedback, code), counting, losers) in naive_records(events) {
        for loser in losers {
            views.kept_aside.insert((
                feedback,
                code.clone(),
                loser.event_id,
                loser.kind().as_str(),
                loser.unit_id.clone(),
                loser.occurred_at.with_timezone(&Utc),
                loser.content_hash(),
            ));
        }
        let mut case = NaiveCase {
            events: counting,
            counts: Vec::new(),
            open: None,
        };
        let unit = if feedback {
            case.count_feedback()
        } else {
            case.count_case()
        };
        let Some(unit) = unit.or_else(|| case.count_held()) else {
            continue;
        };
        for credited in ancestors(&unit) {
            for (day, counter) in &case.counts {
                *views
                    .counts
                    .entry((credited.clone(), *day, counter))
                    .or_default() += 1;
            }
            if let Some((due, apology)) = case.open {
                views
                    .open
                    .insert((credited.clone(), due, code.clone(), apology));
            }
        }
    }
    views
}

/// A record's key (feedback?, code), the events that count in it and the
/// ones identity conflicts kept aside.
type NaiveRecord<'e> = ((bool, String), Vec<&'e Event>, Vec<&'e Event>);

/// Every record of `events`: §1.2's identity, decided per event id.
fn naive_records(events: &[Event]) -> Vec<NaiveRecord<'_>> {
    // Records: (feedback?, code) → events.
    let mut records: BTreeMap<(bool, String), Vec<&Event>> = BTreeMap::new();
    for event in events {
        records
            .entry((event.kind().is_feedback(), event.case_id.clone()))
            .or_default()
            .push(event);
    }
    let mut decided = Vec::new();
    for (key, all) in records {
        // Distinct contents per event id; the winner counts.
        let mut by_id: BTreeMap<Uuid, Vec<&Event>> = BTreeMap::new();
        for event in all {
            let contents = by_id.entry(event.event_id).or_default();
            if !contents.iter().any(|seen| same_content(seen, event)) {
                contents.push(event);
            }
        }
        let (mut counting, mut losers) = (Vec::new(), Vec::new());
        for contents in by_id.values() {
            let mut winner = contents[0];
            for candidate in contents {
                if counts_before(candidate, winner) {
                    winner = candidate;
                }
            }
            counting.push(winner);
            losers.extend(
                contents
                    .iter()
                    .copied()
                    .filter(|loser| !std::ptr::eq(*loser, winner)),
            );
        }
        decided.push((key, counting, losers));
    }
    decided
}

/// The case-flow report of CONTRACT §9 for the period `[start, end)`,
/// straight from its table: per case, each column's condition on
/// instants, no day buckets. `row_of` gives the row a case counts in
/// from its counting `case.received` (`None`: not in the report). The
/// columns are in the order of `kpi_domain::CASE_FLOW_COLUMNS`.
pub fn naive_case_flow(
    events: &[Event],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    row_of: impl Fn(&Event) -> Option<String>,
) -> BTreeMap<String, [u64; 16]> {
    let mut rows: BTreeMap<String, [u64; 16]> = BTreeMap::new();
    for ((feedback, _), counting, _) in naive_records(events) {
        if feedback {
            continue;
        }
        let case = NaiveCase {
            events: counting,
            counts: Vec::new(),
            open: None,
        };
        let Some(received) = case.first("case.received") else {
            continue;
        };
        let Some(row) = row_of(received) else {
            continue;
        };
        let EventData::CaseReceived(data) = &received.data else {
            continue;
        };
        let r = received.occurred_at.with_timezone(&Utc);
        let supplements = case.of_kind("case.supplement_requested");
        let due_of = |supplement: &Event| match supplement.data {
            EventData::CaseSupplementRequested { due_at, .. } => due_at.with_timezone(&Utc),
            _ => data.due_at.with_timezone(&Utc),
        };
        // D(t): the latest request made before t.
        let due_before = |t: DateTime<Utc>| {
            supplements
                .iter()
                .rfind(|s| s.occurred_at.with_timezone(&Utc) < t)
                .map_or(data.due_at.with_timezone(&Utc), |s| due_of(s))
        };
        let due = supplements
            .last()
            .map_or(data.due_at.with_timezone(&Utc), |s| due_of(s));
        let apology_before = |t: DateTime<Utc>| {
            case.of_kind("case.apology_issued")
                .iter()
                .any(|a| a.occurred_at.with_timezone(&Utc) < t)
        };
        let withdrawal = case.first("case.withdrawn");
        let resolution = case.first("case.resolved");
        let finish = withdrawal
            .or(resolution)
            .map(|event| event.occurred_at.with_timezone(&Utc).max(r));
        let open_at = |t: DateTime<Utc>| r < t && finish.is_none_or(|f| f >= t);
        let in_period = |t: DateTime<Utc>| start <= t && t < end;

        let mut c = [0u64; 16];
        if open_at(start) && r < start {
            c[0] = 1;
        }
        if in_period(r) {
            match data.channel {
                Channel::Online => c[1] = 1,
                Channel::InPerson => c[2] = 1,
                Channel::Postal => c[3] = 1,
            }
        }
        c[4] = c[0] + c[1] + c[2] + c[3];
        let mut late_resolved = false;
        if let (None, Some(resolution), Some(f)) = (withdrawal, resolution, finish) {
            if in_period(f) {
                let at = resolution.occurred_at;
                if local_date(at) < local_date(due.fixed_offset()) {
                    c[5] = 1;
                } else if at.with_timezone(&Utc) <= due {
                    c[6] = 1;
                } else {
                    c[7] = 1;
                    late_resolved = true;
                }
                c[8] = 1;
                if matches!(
                    resolution.data,
                    EventData::CaseResolved {
                        result: ResolutionResult::Rejected,
                        ..
                    }
                ) {
                    c[9] = 1;
                }
            }
        }
        if withdrawal.is_some() && finish.is_some_and(in_period) {
            c[10] = 1;
        }
        if open_at(end) {
            if due_before(end) < end {
                c[12] = 1;
            } else {
                c[11] = 1;
            }
        }
        c[13] = c[11] + c[12];
        c[14] = c[7] + c[12];
        if (late_resolved || c[12] == 1) && apology_before(end) {
            c[15] = 1;
        }
        let sums = rows.entry(row).or_default();
        for (sum, value) in sums.iter_mut().zip(c) {
            *sum += value;
        }
    }
    rows.retain(|_, columns| columns.iter().any(|value| *value > 0));
    rows
}

/// One case's (or feedback's) counting events and what it counts.
struct NaiveCase<'e> {
    events: Vec<&'e Event>,
    counts: Vec<(NaiveDate, &'static str)>,
    open: Option<(DateTime<Utc>, bool)>,
}

/// The stamp that orders several events of one kind: time, then event id.
fn stamp(event: &Event) -> (DateTime<Utc>, Uuid) {
    (event.occurred_at.with_timezone(&Utc), event.event_id)
}

impl<'e> NaiveCase<'e> {
    fn of_kind(&self, kind: &str) -> Vec<&'e Event> {
        let mut found: Vec<&'e Event> = self
            .events
            .iter()
            .copied()
            .filter(|event| event.kind().as_str() == kind)
            .collect();
        found.sort_by_key(|event| stamp(event));
        found
    }

    fn first(&self, kind: &str) -> Option<&'e Event> {
        self.of_kind(kind).first().copied()
    }

    fn last(&self, kind: &str) -> Option<&'e Event> {
        self.of_kind(kind).last().copied()
    }

    fn count(&mut self, at: DateTime<FixedOffset>, counter: &'static str) {
        self.counts.push((local_date(at), counter));
    }

    /// A case: counted at the unit of its earliest `case.received`.
    fn count_case(&mut self) -> Option<String> {
        let received = self.first("case.received")?;
        let EventData::CaseReceived(data) = &received.data else {
            return None;
        };
        let received_due = data.due_at;
        let supplements = self.of_kind("case.supplement_requested");
        let due_of = |supplement: &Event| match supplement.data {
            EventData::CaseSupplementRequested { due_at, .. } => due_at,
            _ => received_due,
        };
        let due = supplements.last().map_or(received_due, |s| due_of(s));
        let synced = self.first("case.synced").is_some();
        let apology = self.first("case.apology_issued").is_some();
        let resolution = self.first("case.resolved");
        let withdrawal = self.first("case.withdrawn");
        let rating = self.last("case.rated");

        let at = received.occurred_at;
        self.count(at, "received");
        self.count(
            at,
            match data.channel {
                Channel::Online => "received_online",
                Channel::InPerson => "received_in_person",
                Channel::Postal => "received_postal",
            },
        );
        if data.dossier_digitized {
            self.count(at, "received_dossier_digitized");
        }
        if data.reused_data {
            self.count(at, "received_reused_data");
        }
        if synced {
            self.count(at, "received_synced");
        }

        let closed = match (resolution, withdrawal) {
            (Some(r), Some(w)) => Some(r.occurred_at.min(w.occurred_at)),
            (r, w) => r.or(w).map(|event| event.occurred_at),
        };
        if let Some(closed) = closed {
            self.count(closed, "closed");
            if synced {
                self.count(closed, "closed_synced");
            }
        }
        // Overdue at the end of a day: open then, and its due time as it
        // stood that day (the latest request made by then) fell on or
        // before it.
        let due_day_on = |day: NaiveDate| {
            supplements
                .iter()
                .rev()
                .find(|s| local_date(s.occurred_at) <= day)
                .map_or(received_due, |s| due_of(s))
                .with_timezone(&vietnam())
                .date_naive()
        };
        let mut horizon = local_date(at).max(local_date(received_due));
        for s in &supplements {
            horizon = horizon
                .max(local_date(s.occurred_at))
                .max(local_date(due_of(s)));
        }
        if let Some(closed) = closed {
            horizon = horizon.max(local_date(closed));
        }
        self.count_overdue_days(
            local_date(at),
            closed.map(local_date),
            horizon,
            due_day_on,
            ("became_overdue", "stopped_overdue"),
        );

        if let Some(withdrawal) = withdrawal {
            self.count(withdrawal.occurred_at, "withdrawn");
        } else if let Some(resolution) = resolution {
            let EventData::CaseResolved {
                result,
                result_electronic,
                result_digitized,
            } = resolution.data
            else {
                return None;
            };
            let r = resolution.occurred_at;
            self.count(r, "resolved");
            let late = r > due;
            if local_date(r) < local_date(due) {
                self.count(r, "resolved_early");
            } else if !late {
                self.count(r, "resolved_on_time");
            } else {
                self.count(r, "resolved_late");
                if apology {
                    self.count(r, "resolved_late_with_apology");
                }
            }
            let unsatisfied = rating.is_some_and(|rating| {
                rating.data
                    == EventData::CaseRated {
                        level: RatingLevel::Unsatisfied,
                    }
            });
            if late || unsatisfied {
                self.count(r, "resolved_late_or_unsatisfied");
            }
            self.count(
                r,
                match result {
                    ResolutionResult::Approved => "resolved_approved",
                    ResolutionResult::Rejected => "resolved_rejected",
                },
            );
            if result_electronic {
                self.count(r, "resolved_electronic");
            }
            if result_digitized {
                self.count(r, "resolved_digitized");
            }
        } else {
            self.open = Some((due.with_timezone(&Utc), apology));
        }

        let payments = self.of_kind("case.paid");
        if let Some(first) = payments.first() {
            self.count(first.occurred_at, "payments");
            if payments
                .iter()
                .any(|p| matches!(p.data, EventData::CasePaid { online: true, .. }))
            {
                self.count(first.occurred_at, "payments_online");
            }
        }

        if let Some(rating) = rating {
            let EventData::CaseRated { level } = rating.data else {
                return None;
            };
            let r = rating.occurred_at;
            self.count(r, "rated");
            self.count(
                r,
                match level {
                    RatingLevel::VerySatisfied => "rated_very_satisfied",
                    RatingLevel::Satisfied => "rated_satisfied",
                    RatingLevel::Unsatisfied => "rated_unsatisfied",
                },
            );
            if ["dat_dai", "xay_dung", "dau_tu"].contains(&data.field.as_str()) {
                self.count(r, "rated_land");
                if level != RatingLevel::Unsatisfied {
                    self.count(r, "rated_land_satisfied");
                }
            }
        }
        Some(received.unit_id.clone())
    }

    /// A feedback: counted at the unit of its earliest `feedback.received`.
    fn count_feedback(&mut self) -> Option<String> {
        let received = self.first("feedback.received")?;
        let EventData::FeedbackReceived { due_at } = received.data else {
            return None;
        };
        let resolution = self.first("feedback.resolved");
        self.count(received.occurred_at, "feedback_received");
        if let Some(resolution) = resolution {
            self.count(resolution.occurred_at, "feedback_resolved");
            if resolution.occurred_at <= due_at {
                self.count(resolution.occurred_at, "feedback_resolved_on_time");
            }
        }
        let closed = resolution.map(|r| local_date(r.occurred_at));
        let horizon = local_date(received.occurred_at)
            .max(local_date(due_at))
            .max(closed.unwrap_or(NaiveDate::MIN));
        self.count_overdue_days(
            local_date(received.occurred_at),
            closed,
            horizon,
            |_| local_date(due_at),
            ("feedback_became_overdue", "feedback_stopped_overdue"),
        );
        Some(received.unit_id.clone())
    }

    /// Walks the days from `opened` to past `horizon` (after which nothing
    /// changes), counting each day the case starts and stops being
    /// overdue at the day's end.
    fn count_overdue_days(
        &mut self,
        opened: NaiveDate,
        closed: Option<NaiveDate>,
        horizon: NaiveDate,
        due_day_on: impl Fn(NaiveDate) -> NaiveDate,
        (became, stopped): (&'static str, &'static str),
    ) {
        let overdue = |day: NaiveDate| {
            day >= opened && closed.is_none_or(|closed| day < closed) && due_day_on(day) <= day
        };
        let mut day = opened;
        let mut was = false;
        while day <= horizon.succ_opt().unwrap_or(horizon) {
            let is = overdue(day);
            if is && !was {
                self.counts.push((day, became));
            }
            if was && !is {
                self.counts.push((day, stopped));
            }
            was = is;
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
    }

    /// A record without its received event: each of its events is held,
    /// on its own day, at the unit the earliest of them names.
    fn count_held(&mut self) -> Option<String> {
        let earliest = self.events.iter().min_by_key(|event| stamp(event))?;
        let unit = earliest.unit_id.clone();
        let days: Vec<NaiveDate> = self
            .events
            .iter()
            .map(|event| local_date(event.occurred_at))
            .collect();
        for day in days {
            self.counts.push((day, "held_events"));
        }
        Some(unit)
    }
}
