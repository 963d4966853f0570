//! The fold pipeline, in one place for every fold of the log: the live
//! projector, `kpictl replay` (a fresh store from sequence 1), `kpictl
//! verify` (a rebuild aside compared with the live views) and the
//! projector's blue/green rebuild. One copy of the fold, so a rebuild can
//! only differ from the live views where the views drifted from the log.

pub mod pipeline;

pub use pipeline::{fold_counts, run, Config, StreamLeftTheViews, Until};
