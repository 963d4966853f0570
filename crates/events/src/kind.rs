//! The closed vocabularies of §2: event kinds and the enumerated data values.

use std::fmt;

/// Declares a closed set of wire names with `ALL`, `as_str`, `parse` and a
/// list of the accepted names for error messages.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        ///
        /// Stored records serialize it by variant position: append new
        /// variants, never reorder them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// The value for a wire name, if it is one.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($wire => Some($name::$variant),)+ _ => None }
            }

            /// The accepted names, comma-separated, for error messages.
            pub fn accepted() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// The kind of an event (the `kind` field and the subject's tail).
    Kind {
        CaseReceived => "case.received",
        CaseSupplementRequested => "case.supplement_requested",
        CaseApologyIssued => "case.apology_issued",
        CaseResolved => "case.resolved",
        CaseWithdrawn => "case.withdrawn",
        CasePaid => "case.paid",
        CaseRated => "case.rated",
        CaseSynced => "case.synced",
        FeedbackReceived => "feedback.received",
        FeedbackResolved => "feedback.resolved",
    }
);

impl Kind {
    /// `feedback.*` events concern a complaint or recommendation (phản ánh,
    /// kiến nghị), whose `case_id` is its own code.
    pub fn is_feedback(self) -> bool {
        matches!(self, Kind::FeedbackReceived | Kind::FeedbackResolved)
    }
}

wire_enum!(
    /// How the application reached the desk.
    Channel {
        Online => "online",
        InPerson => "in_person",
        Postal => "postal",
    }
);

wire_enum!(
    /// The result handed back.
    ResolutionResult {
        Approved => "approved",
        Rejected => "rejected",
    }
);

wire_enum!(
    /// The applicant's satisfaction rating.
    RatingLevel {
        VerySatisfied => "very_satisfied",
        Satisfied => "satisfied",
        Unsatisfied => "unsatisfied",
    }
);

impl RatingLevel {
    /// Counts toward the satisfaction rate's numerator.
    pub fn is_satisfied(self) -> bool {
        !matches!(self, RatingLevel::Unsatisfied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_wire_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(*kind));
        }
        assert_eq!(Kind::ALL.len(), 10);
        assert_eq!(Kind::parse("case.exploded"), None);
    }

    #[test]
    fn accepted_lists_every_name() {
        assert_eq!(Channel::accepted(), "online, in_person, postal");
    }
}
