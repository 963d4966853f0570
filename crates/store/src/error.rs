//! Why a store operation failed: the one error type of the crate, with
//! the words an operator needs to act on each case.

use crate::{FORMAT_VERSION, RULES_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored entry {key:?} cannot be read: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("the data directory holds views of format {found}, this build reads format {FORMAT_VERSION}; rebuild the views: move the directory aside and start the projector again (it re-reads the stream from the start)")]
    Format { found: String },
    #[error(transparent)]
    UnknownUnit(#[from] kpi_domain::UnknownUnit),
    #[error(
        "the views were folded with counting rules {found}; this build counts with rules {RULES_VERSION}: \
         rebuild them with the rules of this build: stop the projector, move its data directory aside and \
         start it again (it folds the whole log anew; README, Rebuilding the views)"
    )]
    Rules { found: String },
    #[error(
        "counter {counter} of unit {unit} on {day} would go below zero: the views disagree with the log. \
         Nothing of this batch was written. Rebuild the views: stop the projector, move its data directory \
         aside and start it again (it folds the whole log anew; README, Rebuilding the views)"
    )]
    Underflow {
        unit: String,
        day: String,
        counter: &'static str,
    },
    #[error(
        "the stream was created at {now} but the views were folded from a stream created at {folded_from}: \
         it was recreated, and its sequences are not the ones the checkpoint counts; rebuild the views: \
         stop the projector, move its data directory aside and start it again"
    )]
    StreamChanged { folded_from: String, now: String },
    #[error(
        "the stream starts at sequence {first} but the views reflect only up to {checkpoint}: the events \
         after {checkpoint} and before {first} were removed before they were folded; restore the stream \
         or rebuild the views from what is left (move the data directory aside)"
    )]
    StreamGap { first: u64, checkpoint: u64 },
    #[error(
        "the units file no longer lets units {units} exist on days the views counted events of \
         theirs: {events} counted events would now be invalid, and a rebuild would keep them aside. \
         Either give those units their former valid_from/valid_to again, or rebuild the views under \
         this units file: stop the projector, move its data directory aside and start it again (it \
         folds the whole log anew; README, Rebuilding the views)"
    )]
    UnitsNoLongerHold { units: String, events: u64 },
    #[error(
        "deciding an identity conflict needs the event at stream sequence {sequence} read back from \
         the log, and these views were opened without access to it"
    )]
    NoLog { sequence: u64 },
    #[error("reading stream sequence {sequence} back from the log: {detail}")]
    Log { sequence: u64, detail: String },
    #[error(
        "event {event_id} of case {case_id} conflicts with the event at stream sequence {sequence}, \
         which the log no longer holds as a valid event: the views and the log disagree. Rebuild \
         the views: stop the projector, move its data directory aside and start it again"
    )]
    LostEvent {
        case_id: String,
        event_id: String,
        sequence: u64,
    },
    #[error(
        "the views in {dir} are in use by another process (a running projector?); stop it first"
    )]
    Locked { dir: String },
}

impl From<kpi_domain::FoldError<StoreError>> for StoreError {
    fn from(error: kpi_domain::FoldError<StoreError>) -> Self {
        match error {
            kpi_domain::FoldError::Source(error) => error,
            kpi_domain::FoldError::LostEvent {
                case_id,
                event_id,
                sequence,
            } => StoreError::LostEvent {
                case_id,
                event_id: event_id.to_string(),
                sequence,
            },
        }
    }
}

impl StoreError {
    /// The disk holding the views is full: nothing was committed, and the
    /// views resume from their checkpoint once there is space again.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sled(sled::Error::Io(err)) => {
                err.kind() == std::io::ErrorKind::StorageFull
                    || err.raw_os_error() == Some(28)
                    || err.to_string().contains("No space left on device")
            }
            _ => false,
        }
    }
}

pub(crate) fn corrupt(key: &[u8], detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}
