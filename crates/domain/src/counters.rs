//! The raw counters kept per (unit, Vietnam-local day).
//!
//! Each counter is attributed to a day by the date of one event (the
//! "attributed by" column of §3); the KPIs are ratios of sums of them.

use std::ops::{Index, IndexMut};

macro_rules! counters {
    ($($variant:ident => $name:literal: $doc:literal),+ $(,)?) => {
        /// One raw counter. Its position is part of the stored format:
        /// append new counters, never reorder them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Counter { $(#[doc = $doc] $variant),+ }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant),+];

            /// The counter's name in API answers and JSON output.
            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name),+ }
            }
        }
    };
}

counters! {
    Received => "received": "Cases received (by received date).",
    ReceivedOnline => "received_online": "Received through the online channel.",
    ReceivedInPerson => "received_in_person": "Received at the desk.",
    ReceivedPostal => "received_postal": "Received by post.",
    ReceivedDossierDigitized => "received_dossier_digitized": "Received with the dossier digitized.",
    ReceivedReusedData => "received_reused_data": "Received reusing data already held.",
    ReceivedSynced => "received_synced": "Received cases that reached the national portal.",
    Withdrawn => "withdrawn": "Cases withdrawn (by withdrawal date).",
    Resolved => "resolved": "Cases resolved, withdrawn ones excluded (by resolution date).",
    ResolvedEarly => "resolved_early": "Resolved on a day before the due day (trước hạn).",
    ResolvedOnTime => "resolved_on_time": "Resolved on the due day, by the due time (đúng hạn).",
    ResolvedLate => "resolved_late": "Resolved after the due time (trễ hạn).",
    ResolvedLateWithApology => "resolved_late_with_apology": "Late cases that have an apology letter.",
    ResolvedApproved => "resolved_approved": "Resolved with result approved.",
    ResolvedRejected => "resolved_rejected": "Resolved with result rejected.",
    ResolvedElectronic => "resolved_electronic": "Resolved with an electronic result.",
    ResolvedDigitized => "resolved_digitized": "Resolved with the result digitized.",
    Payments => "payments": "Cases paid, once each however many payments (by the date of the earliest payment).",
    PaymentsOnline => "payments_online": "Of those, cases with a payment made online.",
    Rated => "rated": "Cases rated (by the date of the rating that counts).",
    RatedVerySatisfied => "rated_very_satisfied": "Rated very satisfied.",
    RatedSatisfied => "rated_satisfied": "Rated satisfied.",
    RatedUnsatisfied => "rated_unsatisfied": "Rated unsatisfied.",
    RatedLand => "rated_land": "Rated cases in land, construction or investment.",
    RatedLandSatisfied => "rated_land_satisfied": "Of those, rated satisfied or very satisfied.",
    FeedbackReceived => "feedback_received": "Feedback received (by received date).",
    FeedbackResolved => "feedback_resolved": "Feedback answered (by answer date).",
    FeedbackResolvedOnTime => "feedback_resolved_on_time": "Feedback answered by its due time.",
    HeldEvents => "held_events": "Events held because their case.received (or feedback.received) has not arrived (by their own date).",
    Closed => "closed": "Cases resolved or withdrawn, whichever came first (by that date): received minus closed up to a day is what was open at its end.",
    ClosedSynced => "closed_synced": "Of those, cases that reached the national portal.",
    BecameOverdue => "became_overdue": "Open cases that passed their due time as it stood then (by the day they did).",
    StoppedOverdue => "stopped_overdue": "Overdue cases closed, or given a later due time (by that day).",
    ResolvedLateOrUnsatisfied => "resolved_late_or_unsatisfied": "Resolved cases that were late or whose counted rating is unsatisfied (by resolution date).",
    FeedbackBecameOverdue => "feedback_became_overdue": "Open feedback that passed its due time (by that day).",
    FeedbackStoppedOverdue => "feedback_stopped_overdue": "Overdue feedback answered (by that day).",
}

/// How many counters there are.
pub const COUNTER_COUNT: usize = Counter::ALL.len();

/// A full set of counter values: for one (unit, day) or summed over days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counters([u64; COUNTER_COUNT]);

impl Default for Counters {
    fn default() -> Self {
        Counters([0; COUNTER_COUNT])
    }
}

impl Index<Counter> for Counters {
    type Output = u64;
    fn index(&self, counter: Counter) -> &u64 {
        &self.0[counter as usize]
    }
}

impl IndexMut<Counter> for Counters {
    fn index_mut(&mut self, counter: Counter) -> &mut u64 {
        &mut self.0[counter as usize]
    }
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine += theirs;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|value| *value == 0)
    }

    /// Adds a signed change; a value that would go below zero stays at zero
    /// and is reported back (it means the views were already wrong).
    pub fn apply(&mut self, delta: &CounterDelta) -> Result<(), Counter> {
        let mut underflow = None;
        for (index, change) in delta.0.iter().enumerate() {
            let value = &mut self.0[index];
            match value.checked_add_signed(*change) {
                Some(next) => *value = next,
                None => {
                    *value = 0;
                    underflow.get_or_insert(Counter::ALL[index]);
                }
            }
        }
        underflow.map_or(Ok(()), Err)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL
            .iter()
            .map(|counter| (*counter, self[*counter]))
    }

    /// Stored form: little-endian u32 per counter, in [`Counter`] order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(COUNTER_COUNT * 4);
        for value in self.0 {
            bytes.extend_from_slice(&(value.min(u32::MAX as u64) as u32).to_le_bytes());
        }
        bytes
    }

    /// Reads the stored form; counters added since it was written read 0.
    pub fn from_bytes(bytes: &[u8]) -> Counters {
        let mut counters = Counters::default();
        for (slot, chunk) in counters.0.iter_mut().zip(bytes.chunks_exact(4)) {
            *slot = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as u64;
        }
        counters
    }
}

/// A signed change to a set of counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterDelta([i64; COUNTER_COUNT]);

impl Default for CounterDelta {
    fn default() -> Self {
        CounterDelta([0; COUNTER_COUNT])
    }
}

impl CounterDelta {
    pub fn change(&mut self, counter: Counter, by: i64) {
        self.0[counter as usize] += by;
    }

    pub fn get(&self, counter: Counter) -> i64 {
        self.0[counter as usize]
    }

    /// Adds another change to this one.
    pub fn add(&mut self, other: &CounterDelta) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0.iter()) {
            *mine += theirs;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|value| *value == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips_and_tolerates_older_shorter_records() {
        let mut counters = Counters::default();
        counters[Counter::Received] = 7;
        counters[Counter::FeedbackResolvedOnTime] = 3;
        assert_eq!(Counters::from_bytes(&counters.to_bytes()), counters);
        let short = &counters.to_bytes()[..8];
        assert_eq!(Counters::from_bytes(short)[Counter::Received], 7);
        assert_eq!(
            Counters::from_bytes(short)[Counter::FeedbackResolvedOnTime],
            0
        );
    }

    #[test]
    fn applying_a_delta_reports_underflow_instead_of_wrapping() {
        let mut counters = Counters::default();
        let mut delta = CounterDelta::default();
        delta.change(Counter::Resolved, 2);
        assert_eq!(counters.apply(&delta), Ok(()));
        delta.change(Counter::Resolved, -5);
        assert_eq!(counters.apply(&delta), Err(Counter::Resolved));
        assert_eq!(counters[Counter::Resolved], 0);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNTER_COUNT);
    }
}
