//! What a record contributes to the views: a pure function of the record.
//!
//! A case contributes +1 to a few (day, counter) pairs at the unit of its
//! `case.received`, and, while it is open, an entry in the open-case index
//! by due time. Folding an event replaces the record's old contribution by
//! its new one, so late events, retractions (a withdrawal after a
//! resolution) and out-of-order arrivals need no special handling.

use crate::counters::Counter;
use crate::record::{Fact, Record, RecordedEvent};
use crate::time::{Day, Moment};
use kpi_events::{Channel, RatingLevel, ResolutionResult};

/// The fields whose satisfaction is also reported separately
/// (`satisfaction_rate_land`): land, construction, investment.
pub const LAND_FIELDS: &[&str] = &["dat_dai", "xay_dung", "dau_tu"];

/// How a resolution compares with the due time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeliness {
    /// Trước hạn: resolved on a local day before the due day.
    Early,
    /// Đúng hạn: not early, and not after the due time.
    OnTime,
    /// Trễ hạn: after the due time.
    Late,
}

impl Timeliness {
    pub fn of(resolved_at: Moment, due_at: Moment) -> Timeliness {
        if resolved_at.local_day() < due_at.local_day() {
            Timeliness::Early
        } else if resolved_at <= due_at {
            Timeliness::OnTime
        } else {
            Timeliness::Late
        }
    }
}

/// An open case as the live counts and the at-risk list see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCase {
    pub due_at: Moment,
    pub has_apology: bool,
}

/// The live counts of §3, not tied to a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveCounts {
    /// Received, not resolved, not withdrawn.
    pub open: u64,
    /// Open and past due now.
    pub overdue_open: u64,
    /// Overdue and no apology letter yet.
    pub overdue_without_apology: u64,
}

/// A record's contribution, at the unit of its received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution<'r> {
    pub unit_id: &'r str,
    /// Each pair adds one to that counter on that day.
    pub counts: Vec<(Day, Counter)>,
    /// Present while the case is received, not resolved and not withdrawn.
    pub open: Option<OpenCase>,
}

impl Record {
    /// What the record adds to the counters. While its received event has
    /// not arrived, its other events are held: they count nowhere but as
    /// `held_events`, at the unit the earliest of them names, on their
    /// days. `None` for a record with no event that counts.
    pub fn contribution(&self) -> Option<Contribution<'_>> {
        let counted = if self.is_feedback() {
            self.feedback_contribution()
        } else {
            self.case_contribution()
        };
        counted.or_else(|| self.held_contribution())
    }

    fn held_contribution(&self) -> Option<Contribution<'_>> {
        let first = self.events.iter().min_by_key(|event| event.stamp())?;
        Some(Contribution {
            unit_id: &first.unit_id,
            counts: self
                .events
                .iter()
                .map(|event| (event.at.local_day(), Counter::HeldEvents))
                .collect(),
            open: None,
        })
    }

    fn case_contribution(&self) -> Option<Contribution<'_>> {
        let state = self.case_state();
        let received = state.received?;
        let Fact::Received {
            field,
            channel,
            dossier_digitized,
            reused_data,
            ..
        } = &received.fact
        else {
            return None;
        };
        let due_at = state.due_at()?;
        let mut counts = Vec::with_capacity(16);

        let received_day = received.at.local_day();
        let mut on_received = |counter| counts.push((received_day, counter));
        on_received(Counter::Received);
        on_received(match channel {
            Channel::Online => Counter::ReceivedOnline,
            Channel::InPerson => Counter::ReceivedInPerson,
            Channel::Postal => Counter::ReceivedPostal,
        });
        if *dossier_digitized {
            on_received(Counter::ReceivedDossierDigitized);
        }
        if *reused_data {
            on_received(Counter::ReceivedReusedData);
        }
        if state.sync.is_some() {
            on_received(Counter::ReceivedSynced);
        }

        // Closed by the first of its resolution and withdrawal: what was
        // open at the end of any day is received minus closed up to it.
        let closed_at = match (state.resolution, state.withdrawal) {
            (Some(a), Some(b)) => Some(a.at.min(b.at)),
            (a, b) => a.or(b).map(|event| event.at),
        };
        let closed_day = closed_at.map(Moment::local_day);
        if let Some(day) = closed_day {
            counts.push((day, Counter::Closed));
            if state.sync.is_some() {
                counts.push((day, Counter::ClosedSynced));
            }
        }
        for (from, to) in overdue_spans(received_day, &due_steps(received, self), closed_day) {
            counts.push((from, Counter::BecameOverdue));
            if let Some(to) = to {
                counts.push((to, Counter::StoppedOverdue));
            }
        }

        let mut open = None;
        if let Some(withdrawal) = state.withdrawal {
            // A withdrawn case leaves every resolution KPI.
            counts.push((withdrawal.at.local_day(), Counter::Withdrawn));
        } else if let Some(resolution) = state.resolution {
            let Fact::Resolved {
                result,
                result_electronic,
                result_digitized,
            } = &resolution.fact
            else {
                return None;
            };
            let day = resolution.at.local_day();
            let mut on_resolved = |counter| counts.push((day, counter));
            on_resolved(Counter::Resolved);
            let timeliness = Timeliness::of(resolution.at, due_at);
            match timeliness {
                Timeliness::Early => on_resolved(Counter::ResolvedEarly),
                Timeliness::OnTime => on_resolved(Counter::ResolvedOnTime),
                Timeliness::Late => {
                    on_resolved(Counter::ResolvedLate);
                    if state.apology.is_some() {
                        on_resolved(Counter::ResolvedLateWithApology);
                    }
                }
            }
            // QĐ 766 satisfaction: late, or rated unsatisfied (whenever).
            let unsatisfied = state.rating.is_some_and(|rating| {
                matches!(
                    rating.fact,
                    Fact::Rated {
                        level: RatingLevel::Unsatisfied
                    }
                )
            });
            if timeliness == Timeliness::Late || unsatisfied {
                on_resolved(Counter::ResolvedLateOrUnsatisfied);
            }
            on_resolved(match result {
                ResolutionResult::Approved => Counter::ResolvedApproved,
                ResolutionResult::Rejected => Counter::ResolvedRejected,
            });
            if *result_electronic {
                on_resolved(Counter::ResolvedElectronic);
            }
            if *result_digitized {
                on_resolved(Counter::ResolvedDigitized);
            }
        } else {
            open = Some(OpenCase {
                due_at,
                has_apology: state.apology.is_some(),
            });
        }

        // A case paid counts once (QĐ 766 counts dossiers), on the day of
        // its earliest payment; online when any of its payments was.
        if let Some(first) = state.payments.iter().min_by_key(|payment| payment.stamp()) {
            let day = first.at.local_day();
            counts.push((day, Counter::Payments));
            let online = state
                .payments
                .iter()
                .any(|payment| matches!(payment.fact, Fact::Paid { online: true, .. }));
            if online {
                counts.push((day, Counter::PaymentsOnline));
            }
        }

        if let Some(rating) = state.rating {
            if let Fact::Rated { level } = rating.fact {
                let day = rating.at.local_day();
                counts.push((day, Counter::Rated));
                counts.push((
                    day,
                    match level {
                        RatingLevel::VerySatisfied => Counter::RatedVerySatisfied,
                        RatingLevel::Satisfied => Counter::RatedSatisfied,
                        RatingLevel::Unsatisfied => Counter::RatedUnsatisfied,
                    },
                ));
                if LAND_FIELDS.contains(&field.as_str()) {
                    counts.push((day, Counter::RatedLand));
                    if level.is_satisfied() {
                        counts.push((day, Counter::RatedLandSatisfied));
                    }
                }
            }
        }

        Some(Contribution {
            unit_id: &received.unit_id,
            counts,
            open,
        })
    }

    fn feedback_contribution(&self) -> Option<Contribution<'_>> {
        let state = self.feedback_state();
        let received = state.received?;
        let Fact::FeedbackReceived { due_at } = received.fact else {
            return None;
        };
        let received_day = received.at.local_day();
        let mut counts = vec![(received_day, Counter::FeedbackReceived)];
        let resolved_day = state.resolution.map(|resolution| resolution.at.local_day());
        if let Some(resolution) = state.resolution {
            let day = resolution.at.local_day();
            counts.push((day, Counter::FeedbackResolved));
            if resolution.at <= due_at {
                counts.push((day, Counter::FeedbackResolvedOnTime));
            }
        }
        let steps = [(received_day, due_at.local_day())];
        for (from, to) in overdue_spans(received_day, &steps, resolved_day) {
            counts.push((from, Counter::FeedbackBecameOverdue));
            if let Some(to) = to {
                counts.push((to, Counter::FeedbackStoppedOverdue));
            }
        }
        Some(Contribution {
            unit_id: &received.unit_id,
            counts,
            open: None,
        })
    }
}

/// The due day of a case as it stood over time: from each day on (the
/// received day, then each supplement request's day, earliest first), the
/// day its due time falls on. Requests on one day: the last one stands.
pub(crate) fn due_steps(received: &RecordedEvent, record: &Record) -> Vec<(Day, Day)> {
    let Fact::Received { due_at, .. } = received.fact else {
        return Vec::new();
    };
    let mut requests: Vec<&RecordedEvent> = record
        .events
        .iter()
        .filter(|event| matches!(event.fact, Fact::SupplementRequested { .. }))
        .collect();
    requests.sort_by_key(|event| event.stamp());
    let mut steps = vec![(received.at.local_day(), due_at.local_day())];
    for request in requests {
        if let Fact::SupplementRequested { due_at, .. } = request.fact {
            let from = request.at.local_day().max(received.at.local_day());
            match steps.last_mut() {
                Some(last) if last.0 == from => last.1 = due_at.local_day(),
                _ => steps.push((from, due_at.local_day())),
            }
        }
    }
    steps
}

/// The days a case (or feedback) was open and past due at their end, as
/// spans `[from, to)` (`to` absent while it still is): open from `opened`
/// until `closed` (exclusive), past due from the day its due time (as it
/// stood then, `steps`) falls on.
pub(crate) fn overdue_spans(
    opened: Day,
    steps: &[(Day, Day)],
    closed: Option<Day>,
) -> Vec<(Day, Option<Day>)> {
    let mut spans: Vec<(Day, Option<Day>)> = Vec::new();
    for (index, &(from, due_day)) in steps.iter().enumerate() {
        let until = steps.get(index + 1).map(|next| next.0);
        let end = match (until, closed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let start = from.max(due_day).max(opened);
        if end.is_some_and(|end| end <= start) {
            continue;
        }
        match spans.last_mut() {
            // Adjacent spans are one: no stop and start on the same day.
            Some(last) if last.1 == Some(start) => last.1 = end,
            _ => spans.push((start, end)),
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(text: &str) -> Moment {
        Moment::from(DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn timeliness_compares_local_days_then_instants() {
        let due = at("2024-03-15T17:00:00+07:00");
        assert_eq!(
            Timeliness::of(at("2024-03-14T23:59:59+07:00"), due),
            Timeliness::Early
        );
        assert_eq!(
            Timeliness::of(at("2024-03-15T00:00:00+07:00"), due),
            Timeliness::OnTime
        );
        assert_eq!(Timeliness::of(due, due), Timeliness::OnTime);
        assert_eq!(
            Timeliness::of(at("2024-03-15T17:00:01+07:00"), due),
            Timeliness::Late
        );
        // 16:30 UTC on the 14th is 23:30 on the 14th in Vietnam: a day early.
        assert_eq!(
            Timeliness::of(at("2024-03-14T16:30:00Z"), due),
            Timeliness::Early
        );
        // 17:30 UTC on the 14th is 00:30 on the 15th in Vietnam: same day.
        assert_eq!(
            Timeliness::of(at("2024-03-14T17:30:00Z"), due),
            Timeliness::OnTime
        );
    }
}
