//! The fold pipeline, in one place for every fold of the log: the live
//! projector, `kpictl replay` (a fresh store from sequence 1), `kpictl
//! verify` (a rebuild aside compared with the live views) and the
//! projector's blue/green rebuild. One copy of the fold, so a rebuild can
//! only differ from the live views where the views drifted from the log.

pub mod pipeline;

pub use pipeline::{fold_counts, run, Config, StreamLeftTheViews, Until};

/// Messages folded into one atomic write while catching up, unless told
/// otherwise. Measured with `kpictl bench` (300k cases): 4,000 folds as
/// fast as 10,000, whose resident memory is some 70 MiB higher (the
/// writes of a batch in flight and sled's dirty pages grow with it);
/// 2,000 is some 10% slower.
pub const DEFAULT_BATCH_SIZE: usize = 4_000;
