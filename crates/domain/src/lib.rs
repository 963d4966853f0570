//! The KPI domain, pure and without I/O.
//!
//! - [`units`]: the unit tree and each unit's lineage for rollups;
//! - [`period`]: calendar, reporting (15th to 14th) and free periods;
//! - [`record`] and [`contribution`]: what each case keeps and what it
//!   contributes to the day-bucketed counters, as a pure function;
//! - [`fold`]: a batch of events turned into changes to write at once;
//! - [`kpi`] and [`targets`]: the 13 rates of §3 and their targets;
//! - [`scores`]: the QĐ 766 components that follow from case events;
//! - [`reference`]: the same views in memory, folded by the same fold but
//!   queried the plain way; [`naive`]: the contract's rules replayed per
//!   case with no code shared with the fold, the oracle of the property
//!   tests.
//!
//! NATS, sled and tonic stay outside: see the `kpi-bus`, `kpi-store` and
//! `kpi-api` crates.

pub mod contribution;
pub mod counters;
pub mod flow;
pub mod fold;
pub mod kpi;
pub mod naive;
pub mod period;
pub mod record;
pub mod reference;
pub mod scores;
pub mod targets;
pub mod time;
pub mod units;

pub use contribution::{LiveCounts, Timeliness};
pub use counters::{Counter, CounterDelta, Counters};
pub use flow::{
    CaseFlow, FlowColumn, FlowRow, LateCase, LateMark, CASE_FLOW_COLUMNS, FLOW_COLUMNS,
};
pub use fold::{
    BatchChanges, BatchFold, FlowKey, FoldError, HeldEntry, LateKey, OpenDelta, OpenKey,
    RecordSource, UnknownUnit,
};
pub use kpi::{rates, Kpi, Rate};
pub use period::{Period, PeriodError, PERIOD_FORMS};
pub use record::{
    Fact, Folded, Record, RecordKey, RecordLimit, RecordedEvent, CONFLICT_REASON,
    MAX_EVENTS_PER_RECORD, MAX_RECORD_BYTES,
};
pub use targets::Targets;
pub use time::{vietnam, Day, Moment};
pub use units::{Level, Unit, UnitIdx, UnitRegistry, UnitsError};
