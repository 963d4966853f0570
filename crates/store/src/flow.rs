//! The case-flow report's views (CONTRACT §9): day changes per receiving
//! unit, summed by year, month and day so that the stock at any boundary
//! is a few short range scans, and the late-case index.
//!
//! | prefix | key after the prefix | value |
//! |---|---|---|
//! | `w` | unit, NUL, level (`Y`, `M`, `D`), time | [`PackedRows`]: the [`FlowRow`] of every case of the unit, then one per series (field, NUL, procedure) |
//! | `l` | unit, NUL, `r` (or `q`: its letter by then) resolution day, or `o` overdue-until day, case code | apology or overdue-from day, field, NUL, procedure |
//!
//! A unit's rows of one level and time share one value: a batch that
//! changes several series of a unit on a day writes three entries, not
//! three per series (sled's cost goes by the entries written), and a
//! report by field reads a unit's month in one entry a day.
//!
//! These depend on the log only, not on the unit registry: the report
//! groups receiving units by the tree of the period's last day when it is
//! asked, so a change of the units file needs no recomputation here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Datelike;
use kpi_domain::fold::{BatchChanges, LateKey};
use kpi_domain::{
    CaseFlow, Day, FlowRow, LateCase, LateMark, Moment, RecordKey, UnitIdx, UnitRegistry,
};

use crate::error::{corrupt, StoreError};
use crate::writes::Writes;
use crate::{keys, Store};

pub const FLOW_UNIT: u8 = b'w';
pub const LATE: u8 = b'l';

const YEAR: u8 = b'Y';
const MONTH: u8 = b'M';
const DAY: u8 = b'D';
/// Resolved late, the first letter after the resolution's day or none.
const RESOLVED_LATE: u8 = b'r';
/// Resolved late with a letter by the resolution's day: counted by the
/// rows' `ResolvedLateApologized`, read for the list only.
const RESOLVED_APOLOGIZED: u8 = b'q';
const OVERDUE_UNTIL: u8 = b'o';
/// The overdue-until day of a case still overdue.
const STILL: [u8; 4] = [0xff; 4];

fn signed_key(value: i32) -> [u8; 4] {
    ((value as u32) ^ 0x8000_0000).to_be_bytes()
}

fn year_of(day: Day) -> i32 {
    day.to_date().year()
}

fn month_of(day: Day) -> i32 {
    let date = day.to_date();
    date.year() * 12 + date.month0() as i32
}

fn first_of_month(day: Day) -> Day {
    Day::from_date(day.to_date().with_day(1).unwrap_or(day.to_date()))
}

fn next_day(day: Day) -> Day {
    Day::from_date(day.to_date().succ_opt().unwrap_or(chrono::NaiveDate::MAX))
}

/// The start of the rows of `level` at `time` of a unit.
fn row_key(prefix: u8, unit_id: &str, level: u8, time: [u8; 4]) -> Vec<u8> {
    let mut key = keys::unit_prefix(prefix, unit_id);
    key.push(level);
    key.extend_from_slice(&time);
    key
}

/// The three rows (year, month, day) a change on `day` adds to.
fn rows_of(unit_id: &str, day: Day) -> [Vec<u8>; 3] {
    [
        (YEAR, signed_key(year_of(day))),
        (MONTH, signed_key(month_of(day))),
        (DAY, day.to_key()),
    ]
    .map(|(level, time)| row_key(FLOW_UNIT, unit_id, level, time))
}

/// A series' name in the rows: its field, NUL, its procedure.
fn series_dims(field: &str, procedure_code: &str) -> String {
    let mut dims = String::with_capacity(field.len() + 1 + procedure_code.len());
    dims.push_str(field);
    dims.push('\0');
    dims.push_str(procedure_code);
    dims
}

/// A unit's rows of one level and time, as one stored value: postcard of
/// the unit's row, then of each series' name and row, in name order (a
/// count first). Every column a zigzag varint: most are small.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedRows {
    pub(crate) unit: FlowRow,
    pub(crate) series: BTreeMap<String, FlowRow>,
}

type Columns = [i64; kpi_domain::FLOW_COLUMNS];

impl PackedRows {
    /// Adds a change of one series (and so of the unit).
    fn add(&mut self, dims: &str, change: &FlowRow) {
        self.unit.add(change);
        match self.series.get_mut(dims) {
            Some(row) => row.add(change),
            None => {
                self.series.insert(dims.to_owned(), *change);
            }
        }
    }

    /// Adds another value's rows; series left at zero are dropped.
    fn merge(&mut self, other: PackedRows) {
        self.unit.add(&other.unit);
        for (dims, change) in other.series {
            match self.series.get_mut(&dims) {
                Some(row) => row.add(&change),
                None => {
                    self.series.insert(dims, change);
                }
            }
        }
        self.series.retain(|_, row| !row.is_zero());
    }

    fn is_zero(&self) -> bool {
        self.unit.is_zero() && self.series.is_empty()
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let series: Vec<(&str, Columns)> = self
            .series
            .iter()
            .map(|(dims, row)| (dims.as_str(), row.0))
            .collect();
        postcard::to_stdvec(&(self.unit.0, series))
    }

    /// The unit's row alone (what a report by unit reads).
    pub(crate) fn unit_of(bytes: &[u8]) -> Result<FlowRow, postcard::Error> {
        postcard::take_from_bytes::<Columns>(bytes).map(|(columns, _)| FlowRow(columns))
    }

    /// Calls `visit` with each series' name and row, without keeping them.
    pub(crate) fn visit_series(
        bytes: &[u8],
        mut visit: impl FnMut(&str, FlowRow),
    ) -> Result<(), postcard::Error> {
        let (_, rest) = postcard::take_from_bytes::<Columns>(bytes)?;
        let (count, mut rest) = postcard::take_from_bytes::<usize>(rest)?;
        for _ in 0..count {
            let ((dims, columns), after) = postcard::take_from_bytes::<(&str, Columns)>(rest)?;
            visit(dims, FlowRow(columns));
            rest = after;
        }
        if !rest.is_empty() {
            return Err(postcard::Error::DeserializeBadEncoding);
        }
        Ok(())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<PackedRows, postcard::Error> {
        let mut rows = PackedRows {
            unit: PackedRows::unit_of(bytes)?,
            series: BTreeMap::new(),
        };
        PackedRows::visit_series(bytes, |dims, row| {
            rows.series.insert(dims.to_owned(), row);
        })?;
        Ok(rows)
    }
}

fn late_key(units: &UnitRegistry, entry: &LateKey) -> Vec<u8> {
    let mut key = keys::unit_prefix(LATE, &units.unit(entry.unit).id);
    match entry.mark {
        LateMark::Resolved { day, apology } => {
            key.push(if apology.is_some_and(|apology| apology <= day) {
                RESOLVED_APOLOGIZED
            } else {
                RESOLVED_LATE
            });
            key.extend_from_slice(&day.to_key());
        }
        LateMark::Overdue { to, .. } => {
            key.push(OVERDUE_UNTIL);
            key.extend_from_slice(&to.map_or(STILL, Day::to_key));
        }
    }
    key.extend_from_slice(entry.case_id.as_bytes());
    key
}

fn late_value(entry: &LateKey) -> Vec<u8> {
    let day = match entry.mark {
        LateMark::Resolved { apology, .. } => apology,
        LateMark::Overdue { from, .. } => Some(from),
    };
    let mut value = day.map_or(STILL, Day::to_key).to_vec();
    value.extend_from_slice(series_dims(&entry.field, &entry.procedure_code).as_bytes());
    value
}

/// How the rows of a report are keyed (§9 `group_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowGroup {
    Unit,
    Field,
    Procedure,
}

/// A report as the views give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTable {
    /// The stream sequence the views reflected.
    pub sequence: u64,
    /// E: the end of the period, or now while it runs.
    pub as_of: Moment,
    /// By key (a unit id, field or procedure code), rows with a count only.
    pub rows: BTreeMap<String, CaseFlow>,
    pub total: CaseFlow,
    /// The receiving units whose cases the report holds: a change to any
    /// of them changes it.
    pub receiving: Vec<UnitIdx>,
}

/// The late cases of a report, ordered by due time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateList {
    pub sequence: u64,
    pub as_of: Moment,
    pub cases: Vec<(String, LateCase)>,
}

/// One late-index entry read back.
struct LateEntry {
    case_id: String,
    /// The apology day, or the overdue-from day.
    other: Option<Day>,
    /// The field, NUL, the procedure: as the `v` series' keys end.
    dims: Vec<u8>,
}

/// S and E of a period as day boundaries, E as an instant, and whether
/// the period still runs at `now` (then its rows are read to the end of
/// today and corrected for cases due later today).
struct Bounds {
    start: Day,
    end: Day,
    as_of: Moment,
    running: bool,
}

impl Bounds {
    fn of(first: Day, last: Day, now: Moment) -> Bounds {
        let today = now.local_day();
        if last >= today {
            Bounds {
                start: first,
                end: next_day(today),
                as_of: now,
                running: true,
            }
        } else {
            let end = next_day(last);
            Bounds {
                start: first,
                end,
                as_of: Moment::start_of(end),
                running: false,
            }
        }
    }
}

/// The name of the row a series of `row_unit` adds to, in a report
/// grouped by `group`: borrowed from its dims where it can be.
fn row_name<'a>(
    units: &UnitRegistry,
    group: FlowGroup,
    dims: &'a [u8],
    row_unit: UnitIdx,
) -> std::borrow::Cow<'a, str> {
    let split = dims
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(dims.len());
    match group {
        FlowGroup::Unit => std::borrow::Cow::Owned(units.unit(row_unit).id.clone()),
        FlowGroup::Field => String::from_utf8_lossy(&dims[..split]),
        FlowGroup::Procedure => String::from_utf8_lossy(dims.get(split + 1..).unwrap_or_default()),
    }
}

impl Store {
    /// Adds the case-flow changes of a batch to `batch`.
    pub(crate) fn write_flow(
        &self,
        batch: &mut Writes,
        units: &UnitRegistry,
        changes: &BatchChanges,
    ) -> Result<(), StoreError> {
        let mut rows: BTreeMap<Vec<u8>, PackedRows> = BTreeMap::new();
        for (series, change) in &changes.flow {
            if change.is_zero() {
                continue;
            }
            let unit_id = &units.unit(series.unit).id;
            let dims = series_dims(&series.field, &series.procedure_code);
            for key in rows_of(unit_id, series.day) {
                rows.entry(key).or_default().add(&dims, change);
            }
        }
        for (key, change) in rows {
            let mut stored = match self.stored(&key)? {
                None => PackedRows::default(),
                Some(bytes) => {
                    PackedRows::decode(&bytes).map_err(|detail| corrupt(&key, detail))?
                }
            };
            stored.merge(change);
            if stored.is_zero() {
                batch.remove(key);
            } else {
                let bytes = stored.encode().map_err(|detail| corrupt(&key, detail))?;
                batch.insert(key, bytes);
            }
        }
        for entry in &changes.late_removed {
            batch.remove(late_key(units, entry));
        }
        for entry in &changes.late_added {
            batch.insert(late_key(units, entry), late_value(entry));
        }
        Ok(())
    }

    /// The sums of a unit's rows before the boundary `before` (00:00 of
    /// that day): the unit's own under the empty name when `by_unit`, else
    /// by series (field, NUL, procedure).
    fn sums_before(
        &self,
        by_unit: bool,
        unit_id: &str,
        before: Day,
        sums: &mut BTreeMap<Vec<u8>, FlowRow>,
    ) -> Result<(), StoreError> {
        let year = year_of(before);
        let month = month_of(before);
        let ranges = [
            (YEAR, signed_key(i32::MIN), signed_key(year)),
            (MONTH, signed_key(year * 12), signed_key(month)),
            (DAY, first_of_month(before).to_key(), before.to_key()),
        ];
        let mut add = |dims: &[u8], row: &FlowRow| match sums.get_mut(dims) {
            Some(sum) => sum.add(row),
            None => {
                sums.insert(dims.to_vec(), *row);
            }
        };
        for (level, from, to) in ranges {
            let start = row_key(FLOW_UNIT, unit_id, level, from);
            let end = row_key(FLOW_UNIT, unit_id, level, to);
            for entry in self.views.range(start..end) {
                let (key, value) = entry?;
                if by_unit {
                    let row =
                        PackedRows::unit_of(&value).map_err(|detail| corrupt(&key, detail))?;
                    add(&[], &row);
                } else {
                    PackedRows::visit_series(&value, |dims, row| add(dims.as_bytes(), &row))
                        .map_err(|detail| corrupt(&key, detail))?;
                }
            }
        }
        Ok(())
    }

    /// Calls `visit` with each of a unit's late-index entries of one kind
    /// with days in `from..to`: its case code, its other day (the apology
    /// day, or the overdue-from day) and its dims (field, NUL, procedure).
    fn visit_late(
        &self,
        unit_id: &str,
        kind: u8,
        from: [u8; 4],
        to: Option<Day>,
        mut visit: impl FnMut(&[u8], Option<Day>, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut start = keys::unit_prefix(LATE, unit_id);
        start.push(kind);
        let mut end = start.clone();
        start.extend_from_slice(&from);
        match to {
            Some(to) => end.extend_from_slice(&to.to_key()),
            None => end = keys::prefix_end(&end),
        }
        let day_at = start.len() - 4;
        for entry in self.views.range(start..end) {
            let (key, value) = entry?;
            let other: [u8; 4] = value
                .get(..4)
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| corrupt(&key, "short late-case entry"))?;
            let dims = &value[4..];
            if !dims.contains(&0) {
                return Err(corrupt(&key, "no procedure in late-case entry"));
            }
            let other = (other != STILL).then(|| Day::from_key(other));
            visit(&key[day_at + 4..], other, dims)?;
        }
        Ok(())
    }

    /// [`Store::visit_late`]'s entries, kept.
    fn late_entries(
        &self,
        unit_id: &str,
        kind: u8,
        from: [u8; 4],
        to: Option<Day>,
    ) -> Result<Vec<LateEntry>, StoreError> {
        let mut found = Vec::new();
        self.visit_late(unit_id, kind, from, to, |case_id, other, dims| {
            found.push(LateEntry {
                case_id: String::from_utf8(case_id.to_vec())
                    .map_err(|_| corrupt(case_id, "a case code not in UTF-8"))?,
                other,
                dims: dims.to_vec(),
            });
            Ok(())
        })?;
        Ok(found)
    }

    /// The entries of cases overdue at the end of the day before `end`.
    fn overdue_at_end(&self, unit_id: &str, bounds: &Bounds) -> Result<Vec<LateEntry>, StoreError> {
        let mut overdue = self.late_entries(unit_id, OVERDUE_UNTIL, bounds.end.to_key(), None)?;
        overdue.retain(|entry| entry.other.is_some_and(|from| from < bounds.end));
        Ok(overdue)
    }

    /// The case-flow report of `unit` for the days `first..=last`, at
    /// `now` (CONTRACT §9), rows grouped by `group`.
    pub fn case_flow(
        &self,
        units: &UnitRegistry,
        unit: UnitIdx,
        first: Day,
        last: Day,
        now: Moment,
        group: FlowGroup,
    ) -> Result<FlowTable, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = self.checkpoint()?;
        let bounds = Bounds::of(first, last, now);
        let by_unit = group == FlowGroup::Unit;
        let mut rows: BTreeMap<String, CaseFlow> = BTreeMap::new();
        let report_rows = units.report_rows(unit, last);
        for &(receiving, row_unit) in &report_rows {
            let unit_id = &units.unit(receiving).id;
            let (mut at_start, mut at_end) = (BTreeMap::new(), BTreeMap::new());
            self.sums_before(by_unit, unit_id, bounds.end, &mut at_end)?;
            if bounds.end < bounds.start {
                // A period not begun: nothing flowed yet, its stock is now's.
                at_start = at_end.clone();
            } else {
                self.sums_before(by_unit, unit_id, bounds.start, &mut at_start)?;
            }
            // Late resolutions of the period with a letter by E, by series.
            let mut apologized: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            self.visit_late(
                unit_id,
                RESOLVED_LATE,
                bounds.start.to_key(),
                Some(bounds.end),
                |_, apology, dims| {
                    if apology.is_some_and(|apology| apology < bounds.end) {
                        let dims = if by_unit { &[][..] } else { dims };
                        match apologized.get_mut(dims) {
                            Some(count) => *count += 1,
                            None => {
                                apologized.insert(dims.to_vec(), 1);
                            }
                        }
                    }
                    Ok(())
                },
            )?;
            let series: BTreeSet<&Vec<u8>> = at_start.keys().chain(at_end.keys()).collect();
            let none = FlowRow::default();
            for dims in series {
                let flow = CaseFlow::from_sums(
                    at_start.get(dims).unwrap_or(&none),
                    at_end.get(dims).unwrap_or(&none),
                    apologized.get(dims).copied().unwrap_or(0),
                );
                let name = row_name(units, group, dims, row_unit);
                match rows.get_mut(name.as_ref()) {
                    Some(row) => row.add(&flow),
                    None => {
                        rows.insert(name.into_owned(), flow);
                    }
                }
            }
            if bounds.running {
                // Counted overdue at the end of today, yet due later today.
                let today = now.local_day();
                let overdue = self.overdue_at_end(unit_id, &bounds)?;
                for entry in overdue.iter().filter(|entry| entry.other == Some(today)) {
                    let key = RecordKey::Case(entry.case_id.clone());
                    let Some(record) = self.load_record(&key)? else {
                        continue;
                    };
                    if let Some(pending) = record.pending_at(now).filter(|p| !p.overdue) {
                        if let Some(row) =
                            rows.get_mut(row_name(units, group, &entry.dims, row_unit).as_ref())
                        {
                            row.not_due_yet(pending.apology);
                        }
                    }
                }
            }
        }
        rows.retain(|_, row| !row.is_zero());
        let mut total = CaseFlow::default();
        for row in rows.values() {
            total.add(row);
        }
        Ok(FlowTable {
            sequence,
            as_of: bounds.as_of,
            rows,
            total,
            receiving: report_rows
                .into_iter()
                .map(|(receiving, _)| receiving)
                .collect(),
        })
    }

    /// The late cases of `unit`'s report for `first..=last` at `now`
    /// (§9 `ListLate`), ordered by due time, then case code.
    pub fn late_cases(
        &self,
        units: &UnitRegistry,
        unit: UnitIdx,
        first: Day,
        last: Day,
        now: Moment,
    ) -> Result<LateList, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = self.checkpoint()?;
        let bounds = Bounds::of(first, last, now);
        let start = Moment::start_of(first);
        let mut codes = BTreeSet::new();
        for (receiving, _) in units.report_rows(unit, last) {
            let unit_id = &units.unit(receiving).id;
            for kind in [RESOLVED_LATE, RESOLVED_APOLOGIZED] {
                let resolved =
                    self.late_entries(unit_id, kind, bounds.start.to_key(), Some(bounds.end))?;
                codes.extend(resolved.into_iter().map(|entry| entry.case_id));
            }
            let overdue = self.overdue_at_end(unit_id, &bounds)?;
            codes.extend(overdue.into_iter().map(|entry| entry.case_id));
        }
        let mut cases = Vec::new();
        for code in codes {
            let key = RecordKey::Case(code.clone());
            let Some(record) = self.load_record(&key)? else {
                continue;
            };
            if let Some(late) = record.late_case(start, bounds.as_of) {
                cases.push((code, late));
            }
        }
        cases.sort_by(|a, b| (a.1.due_at, &a.0).cmp(&(b.1.due_at, &b.0)));
        Ok(LateList {
            sequence,
            as_of: bounds.as_of,
            cases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpi_domain::FlowColumn;

    fn row(column: FlowColumn, by: i64) -> FlowRow {
        let mut row = FlowRow::default();
        row.change(column, by);
        row
    }

    #[test]
    fn packed_rows_read_back_as_written_and_drop_series_that_cancel() {
        let mut rows = PackedRows::default();
        rows.add("ho_tich\0p1.001", &row(FlowColumn::ReceivedOnline, 3));
        rows.add("dat_dai\0p2.002", &row(FlowColumn::ReceivedOnline, -70_000));
        rows.add("ho_tich\0p1.001", &row(FlowColumn::ResolvedLate, 1));
        let bytes = rows.encode().unwrap();
        assert_eq!(PackedRows::decode(&bytes).unwrap(), rows);
        let unit = PackedRows::unit_of(&bytes).unwrap();
        assert_eq!(unit.get(FlowColumn::ReceivedOnline), -69_997);
        assert_eq!(unit.get(FlowColumn::ResolvedLate), 1);

        // A case moved from one series to another on the same day: the
        // unit's row is unchanged, the emptied series goes.
        let mut moved = PackedRows::default();
        moved.add("dat_dai\0p2.002", &row(FlowColumn::ReceivedOnline, 70_000));
        moved.add("ho_tich\0p1.001", &row(FlowColumn::ReceivedOnline, -70_000));
        let mut stored = PackedRows::decode(&bytes).unwrap();
        stored.merge(moved);
        assert_eq!(stored.series.len(), 1);
        assert_eq!(
            stored.series["ho_tich\0p1.001"].get(FlowColumn::ReceivedOnline),
            -69_997
        );
        assert!(!stored.is_zero());
    }

    #[test]
    fn damaged_packed_rows_are_errors_not_panics() {
        let mut rows = PackedRows::default();
        rows.add("ho_tich\0p1.001", &row(FlowColumn::ReceivedOnline, 3));
        let bytes = rows.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(PackedRows::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(PackedRows::decode(&longer).is_err());
    }
}
