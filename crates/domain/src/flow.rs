//! The case-flow report (Biểu 06, CONTRACT §9): what a case contributes to
//! it, as a pure function of its record, and the report's columns.
//!
//! Every condition of §9 is "instant < E" (or "< S") with E and S at 00:00
//! of a Vietnam day, so a case's part in the report is a few signed
//! changes on days: +1 received on its receipt day, +1 open on its receipt
//! day and −1 on its finish day, +1/−1 overdue where it became and stopped
//! being overdue at the end of a day, and so on. Summing the changes of
//! the days before a boundary gives the stock at that boundary, and the
//! difference of two boundaries the flow between them. Who was late, and
//! whether a late resolution had an apology letter by E, is read from a
//! small per-case index ([`LateMark`]), not from the sums.

use crate::contribution::{due_steps, overdue_spans, Timeliness};
use crate::record::{Fact, Record, RecordedEvent};
use crate::time::{Day, Moment};
use kpi_events::{Channel, ResolutionResult};

/// One column of the day changes a case makes. Its position is part of
/// the stored format: append, never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowColumn {
    ReceivedOnline,
    ReceivedInPerson,
    ReceivedPostal,
    ResolvedEarly,
    ResolvedOnTime,
    ResolvedLate,
    ResolvedRejected,
    Withdrawn,
    /// +1 on the receipt day, −1 on the finish day: received and not
    /// finished before a boundary.
    Open,
    /// Open and past due at the end of a day (due as it stood then).
    Overdue,
    /// Of those, with an apology letter by then.
    OverdueApologized,
    /// Resolved late, with an apology letter by the day of its
    /// resolution: it has one at any E after that day. (Those whose
    /// letter came later, or never, are counted from the late-case index.)
    ResolvedLateApologized,
}

impl FlowColumn {
    pub const ALL: &'static [FlowColumn] = &[
        FlowColumn::ReceivedOnline,
        FlowColumn::ReceivedInPerson,
        FlowColumn::ReceivedPostal,
        FlowColumn::ResolvedEarly,
        FlowColumn::ResolvedOnTime,
        FlowColumn::ResolvedLate,
        FlowColumn::ResolvedRejected,
        FlowColumn::Withdrawn,
        FlowColumn::Open,
        FlowColumn::Overdue,
        FlowColumn::OverdueApologized,
        FlowColumn::ResolvedLateApologized,
    ];
}

/// How many columns a [`FlowRow`] has.
pub const FLOW_COLUMNS: usize = FlowColumn::ALL.len();

/// Signed changes (or their sums) of every [`FlowColumn`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowRow(pub [i64; FLOW_COLUMNS]);

impl FlowRow {
    pub fn get(&self, column: FlowColumn) -> i64 {
        self.0[column as usize]
    }

    pub fn change(&mut self, column: FlowColumn, by: i64) {
        self.0[column as usize] += by;
    }

    pub fn add(&mut self, other: &FlowRow) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|value| *value == 0)
    }

    /// Stored form: a little-endian i32 per column.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(FLOW_COLUMNS * 4);
        for value in self.0 {
            let value = value.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// Reads the stored form; anything but [`FLOW_COLUMNS`] values is
    /// damage.
    pub fn from_bytes(bytes: &[u8]) -> Result<FlowRow, String> {
        if bytes.len() != FLOW_COLUMNS * 4 {
            return Err(format!(
                "a case-flow row of {} bytes, not {}",
                bytes.len(),
                FLOW_COLUMNS * 4
            ));
        }
        let mut row = FlowRow::default();
        for (slot, chunk) in row.0.iter_mut().zip(bytes.chunks_exact(4)) {
            *slot = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as i64;
        }
        Ok(row)
    }
}

/// Where a case appears in the list of late cases: the index the report
/// reads to find them, and whether a late resolution had its letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LateMark {
    /// Resolved late on `day`; the day of its first apology letter.
    Resolved { day: Day, apology: Option<Day> },
    /// Open and past due at the end of each day of `[from, to)`.
    Overdue { from: Day, to: Option<Day> },
}

/// A case's part in the report, at its receiving unit, in the series of
/// its field and procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowContribution<'r> {
    pub unit_id: &'r str,
    pub field: &'r str,
    pub procedure_code: &'r str,
    pub changes: Vec<(Day, FlowColumn, i64)>,
    pub late: Vec<LateMark>,
}

/// Where an open case stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Its due time as it stood then, D(t).
    pub due_at: Moment,
    pub overdue: bool,
    pub apology: bool,
}

/// A case of the public list of late cases (§9 `ListLate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateCase {
    /// The unit that received it.
    pub unit_id: String,
    pub procedure_code: String,
    pub field: String,
    pub received_at: Moment,
    /// The due time the lateness is measured against.
    pub due_at: Moment,
    /// When it was resolved, for a case resolved in the period.
    pub resolved_at: Option<Moment>,
    pub days_late: u64,
    /// Its apology letters issued before E, in time order: stream
    /// sequence (their texts are in the log), when, the new due time.
    pub apologies: Vec<(u64, Moment, Moment)>,
}

/// The finishing event of a case for §9: its withdrawal if it has one,
/// else its resolution.
struct Finish<'r> {
    event: &'r RecordedEvent,
    withdrawn: bool,
    /// When it counts: not before the receipt.
    at: Moment,
}

impl Record {
    fn finish(&self, received: &RecordedEvent) -> Option<Finish<'_>> {
        let state = self.case_state();
        let (event, withdrawn) = match (state.withdrawal, state.resolution) {
            (Some(withdrawal), _) => (withdrawal, true),
            (None, Some(resolution)) => (resolution, false),
            (None, None) => return None,
        };
        Some(Finish {
            event,
            withdrawn,
            at: event.at.max(received.at),
        })
    }

    fn first_apology(&self) -> Option<&RecordedEvent> {
        self.case_state().apology
    }

    /// What the case adds to the report's day changes; `None` for
    /// feedback and for a case whose `case.received` has not arrived.
    pub fn flow_contribution(&self) -> Option<FlowContribution<'_>> {
        if self.is_feedback() {
            return None;
        }
        let state = self.case_state();
        let received = state.received?;
        let Fact::Received {
            procedure_code,
            field,
            channel,
            ..
        } = &received.fact
        else {
            return None;
        };
        let due_at = state.due_at()?;
        let received_day = received.at.local_day();
        let mut changes = vec![
            (
                received_day,
                match channel {
                    Channel::Online => FlowColumn::ReceivedOnline,
                    Channel::InPerson => FlowColumn::ReceivedInPerson,
                    Channel::Postal => FlowColumn::ReceivedPostal,
                },
                1,
            ),
            (received_day, FlowColumn::Open, 1),
        ];
        let mut late = Vec::new();
        let apology_day = self.first_apology().map(|apology| apology.at.local_day());
        let finish = self.finish(received);
        let finish_day = finish.as_ref().map(|finish| finish.at.local_day());
        if let Some(finish) = &finish {
            let day = finish.at.local_day();
            changes.push((day, FlowColumn::Open, -1));
            if finish.withdrawn {
                changes.push((day, FlowColumn::Withdrawn, 1));
            } else {
                match Timeliness::of(finish.event.at, due_at) {
                    Timeliness::Early => changes.push((day, FlowColumn::ResolvedEarly, 1)),
                    Timeliness::OnTime => changes.push((day, FlowColumn::ResolvedOnTime, 1)),
                    Timeliness::Late => {
                        changes.push((day, FlowColumn::ResolvedLate, 1));
                        if apology_day.is_some_and(|apology| apology <= day) {
                            changes.push((day, FlowColumn::ResolvedLateApologized, 1));
                        }
                        late.push(LateMark::Resolved {
                            day,
                            apology: apology_day,
                        });
                    }
                }
                if let Fact::Resolved {
                    result: ResolutionResult::Rejected,
                    ..
                } = finish.event.fact
                {
                    changes.push((day, FlowColumn::ResolvedRejected, 1));
                }
            }
        }
        for (from, to) in overdue_spans(received_day, &due_steps(received, self), finish_day) {
            changes.push((from, FlowColumn::Overdue, 1));
            changes.extend(to.map(|to| (to, FlowColumn::Overdue, -1)));
            late.push(LateMark::Overdue { from, to });
            if let Some(apology_day) = apology_day {
                let start = from.max(apology_day);
                if to.is_none_or(|to| start < to) {
                    changes.push((start, FlowColumn::OverdueApologized, 1));
                    changes.extend(to.map(|to| (to, FlowColumn::OverdueApologized, -1)));
                }
            }
        }
        Some(FlowContribution {
            unit_id: &received.unit_id,
            field,
            procedure_code,
            changes,
            late,
        })
    }

    /// The case at instant `at` when it was received before and not
    /// finished before it (§9: R < t, F ≥ t or none).
    pub fn pending_at(&self, at: Moment) -> Option<Pending> {
        let received = self.case_state().received?;
        let Fact::Received { due_at, .. } = received.fact else {
            return None;
        };
        if received.at >= at || self.finish(received).is_some_and(|finish| finish.at < at) {
            return None;
        }
        let latest_request = self
            .events
            .iter()
            .filter(|event| matches!(event.fact, Fact::SupplementRequested { .. }) && event.at < at)
            .max_by_key(|event| event.stamp());
        let due_at = match latest_request.map(|event| &event.fact) {
            Some(Fact::SupplementRequested { due_at }) => *due_at,
            _ => due_at,
        };
        Some(Pending {
            due_at,
            overdue: due_at < at,
            apology: self.first_apology().is_some_and(|apology| apology.at < at),
        })
    }

    /// The case as the list of late cases of a period `[start, end)` shows
    /// it: resolved late in the period, or open and overdue at its end.
    pub fn late_case(&self, start: Moment, end: Moment) -> Option<LateCase> {
        let state = self.case_state();
        let received = state.received?;
        let Fact::Received {
            procedure_code,
            field,
            ..
        } = &received.fact
        else {
            return None;
        };
        let finish = self.finish(received);
        let resolved_late = finish.as_ref().and_then(|finish| {
            let due_at = state.due_at()?;
            let late = !finish.withdrawn
                && start <= finish.at
                && finish.at < end
                && Timeliness::of(finish.event.at, due_at) == Timeliness::Late;
            late.then_some((due_at, finish.event.at))
        });
        let (due_at, resolved_at, late_at) = match resolved_late {
            Some((due_at, resolved_at)) => (due_at, Some(resolved_at), resolved_at),
            None => {
                let pending = self.pending_at(end).filter(|pending| pending.overdue)?;
                (pending.due_at, None, end)
            }
        };
        let mut apologies: Vec<&RecordedEvent> = self
            .events
            .iter()
            .filter(|event| matches!(event.fact, Fact::ApologyIssued { .. }) && event.at < end)
            .collect();
        apologies.sort_by_key(|event| event.stamp());
        Some(LateCase {
            unit_id: received.unit_id.clone(),
            procedure_code: procedure_code.clone(),
            field: field.clone(),
            received_at: received.at,
            due_at,
            resolved_at,
            days_late: days_late(due_at, late_at),
            apologies: apologies
                .iter()
                .filter_map(|event| match event.fact {
                    Fact::ApologyIssued { new_due_at } => {
                        Some((event.sequence, event.at, new_due_at))
                    }
                    _ => None,
                })
                .collect(),
        })
    }
}

/// §9: the hours past due, divided by 24, rounded up.
pub fn days_late(due_at: Moment, at: Moment) -> u64 {
    let seconds = (at.unix_seconds() - due_at.unix_seconds()).max(0) as u64
        + u64::from(at.subsec_nanos() > due_at.subsec_nanos());
    seconds.div_ceil(24 * 3600)
}

/// The columns of Biểu 06 for one row, as CONTRACT §9 names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CaseFlow {
    pub carried_over: u64,
    pub received_online: u64,
    pub received_in_person: u64,
    pub received_postal: u64,
    pub to_handle: u64,
    pub resolved_early: u64,
    pub resolved_on_time: u64,
    pub resolved_late: u64,
    pub resolved: u64,
    pub resolved_rejected: u64,
    pub withdrawn: u64,
    pub pending_not_due: u64,
    pub pending_overdue: u64,
    pub pending: u64,
    pub late_total: u64,
    pub late_with_apology: u64,
}

/// The column names of §9, in the order of [`CaseFlow::values`].
pub const CASE_FLOW_COLUMNS: [&str; 16] = [
    "carried_over",
    "received_online",
    "received_in_person",
    "received_postal",
    "to_handle",
    "resolved_early",
    "resolved_on_time",
    "resolved_late",
    "resolved",
    "resolved_rejected",
    "withdrawn",
    "pending_not_due",
    "pending_overdue",
    "pending",
    "late_total",
    "late_with_apology",
];

impl CaseFlow {
    /// The row from the sums of day changes before S (`at_start`) and
    /// before E (`at_end`), and the late resolutions of the period whose
    /// apology letter came after their resolution's day and before E
    /// (counted from the [`LateMark`]s).
    /// Sums that would be negative mean damaged views; they read 0.
    pub fn from_sums(
        at_start: &FlowRow,
        at_end: &FlowRow,
        late_resolved_with_apology: u64,
    ) -> Self {
        let count = |value: i64| value.max(0) as u64;
        let flow = |column| count(at_end.get(column) - at_start.get(column));
        let pending = count(at_end.get(FlowColumn::Open));
        let pending_overdue = count(at_end.get(FlowColumn::Overdue)).min(pending);
        let mut row = CaseFlow {
            carried_over: count(at_start.get(FlowColumn::Open)),
            received_online: flow(FlowColumn::ReceivedOnline),
            received_in_person: flow(FlowColumn::ReceivedInPerson),
            received_postal: flow(FlowColumn::ReceivedPostal),
            resolved_early: flow(FlowColumn::ResolvedEarly),
            resolved_on_time: flow(FlowColumn::ResolvedOnTime),
            resolved_late: flow(FlowColumn::ResolvedLate),
            resolved_rejected: flow(FlowColumn::ResolvedRejected),
            withdrawn: flow(FlowColumn::Withdrawn),
            pending_not_due: pending - pending_overdue,
            pending_overdue,
            late_with_apology: flow(FlowColumn::ResolvedLateApologized)
                + late_resolved_with_apology
                + count(at_end.get(FlowColumn::OverdueApologized)).min(pending_overdue),
            ..CaseFlow::default()
        };
        row.complete();
        row
    }

    /// Recomputes the sum columns from the others.
    pub fn complete(&mut self) {
        self.to_handle = self.carried_over
            + self.received_online
            + self.received_in_person
            + self.received_postal;
        self.resolved = self.resolved_early + self.resolved_on_time + self.resolved_late;
        self.pending = self.pending_not_due + self.pending_overdue;
        self.late_total = self.resolved_late + self.pending_overdue;
    }

    /// A case counted overdue at the end of today that is not due yet
    /// now (due later today): what a running period corrects.
    pub fn not_due_yet(&mut self, apology: bool) {
        if self.pending_overdue > 0 {
            self.pending_overdue -= 1;
            self.pending_not_due += 1;
            if apology {
                self.late_with_apology = self.late_with_apology.saturating_sub(1);
            }
            self.complete();
        }
    }

    pub fn values(&self) -> [u64; 16] {
        [
            self.carried_over,
            self.received_online,
            self.received_in_person,
            self.received_postal,
            self.to_handle,
            self.resolved_early,
            self.resolved_on_time,
            self.resolved_late,
            self.resolved,
            self.resolved_rejected,
            self.withdrawn,
            self.pending_not_due,
            self.pending_overdue,
            self.pending,
            self.late_total,
            self.late_with_apology,
        ]
    }

    pub fn from_values(values: [u64; 16]) -> CaseFlow {
        let [carried_over, received_online, received_in_person, received_postal, to_handle, resolved_early, resolved_on_time, resolved_late, resolved, resolved_rejected, withdrawn, pending_not_due, pending_overdue, pending, late_total, late_with_apology] =
            values;
        CaseFlow {
            carried_over,
            received_online,
            received_in_person,
            received_postal,
            to_handle,
            resolved_early,
            resolved_on_time,
            resolved_late,
            resolved,
            resolved_rejected,
            withdrawn,
            pending_not_due,
            pending_overdue,
            pending,
            late_total,
            late_with_apology,
        }
    }

    pub fn add(&mut self, other: &CaseFlow) {
        let mut values = self.values();
        for (mine, theirs) in values.iter_mut().zip(other.values()) {
            *mine += theirs;
        }
        *self = CaseFlow::from_values(values);
    }

    pub fn is_zero(&self) -> bool {
        self.values().iter().all(|value| *value == 0)
    }

    /// §9's identity: `to_handle` = `resolved` + `withdrawn` + `pending`.
    pub fn balances(&self) -> bool {
        self.to_handle == self.resolved + self.withdrawn + self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(text: &str) -> Moment {
        Moment::from(DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn days_late_rounds_the_time_past_due_up_to_whole_days() {
        let due = at("2025-03-10T17:00:00+07:00");
        assert_eq!(days_late(due, due), 0);
        assert_eq!(days_late(due, at("2025-03-10T17:00:01+07:00")), 1);
        assert_eq!(days_late(due, at("2025-03-11T17:00:00+07:00")), 1);
        assert_eq!(days_late(due, at("2025-03-11T17:30:00+07:00")), 2);
    }

    #[test]
    fn a_row_balances_and_clamps_damaged_sums() {
        let mut start = FlowRow::default();
        start.change(FlowColumn::Open, 2);
        let mut end = FlowRow::default();
        end.change(FlowColumn::ReceivedOnline, 3);
        end.change(FlowColumn::ResolvedLate, 1);
        end.change(FlowColumn::ResolvedEarly, 1);
        end.change(FlowColumn::Open, 3);
        end.change(FlowColumn::Overdue, 1);
        end.change(FlowColumn::OverdueApologized, 5);
        let row = CaseFlow::from_sums(&start, &end, 1);
        assert_eq!(row.carried_over, 2);
        assert_eq!(row.to_handle, 5);
        assert_eq!(row.pending, 3);
        assert_eq!(row.pending_overdue, 1);
        assert_eq!(row.late_total, 2);
        assert_eq!(row.late_with_apology, 2);
        assert!(row.balances());
        let bytes = end.to_bytes();
        assert_eq!(FlowRow::from_bytes(&bytes).unwrap(), end);
        assert!(FlowRow::from_bytes(&bytes[1..]).is_err());
    }
}
