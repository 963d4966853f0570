//! The unit registry (§1): provinces, districts and communes as a tree that
//! changes over time (§1.1, the 2025 reform).
//!
//! A unit exists from `valid_from` to `valid_to` (inclusive local dates,
//! unbounded when absent); its parent may change on given days
//! (`parents`); a unit formed from others names them (`successor_of`).
//!
//! Counting needs, for a count attributed to a unit `u` on a day `d`, the
//! units whose figures it is part of ([`UnitRegistry::credited`]):
//!
//! - the unit that holds `u` on `d`: `u` itself while it exists, else its
//!   successor that exists then (the case moved with the unit);
//! - that unit's ancestors **on that day**, so that a day's count of a unit
//!   is the sum over the units below it on that day, never under two
//!   parents;
//! - the successors (transitively) that do not exist yet on `d`, so that a
//!   successor's figures for a period include its predecessors' for the
//!   days before it existed.
//!
//! The tree only changes on the dates the file names, so the registry cuts
//! time into epochs between those dates and precomputes the answer per
//! epoch and unit: folding and querying stay as cheap as with a fixed
//! tree. A registry without dates has one epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use kpi_events::UnitDirectory;
use serde::{Deserialize, Serialize};

use crate::time::Day;

/// The longest unit id (it is a NATS subject token).
pub const MAX_UNIT_ID_CHARS: usize = 32;

/// A position in the registry. Only meaningful for the registry it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitIdx(u32);

impl UnitIdx {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The unit at `index` of a registry (tests, tables indexed by unit).
    pub fn from_index(index: usize) -> UnitIdx {
        UnitIdx(u32::try_from(index).unwrap_or(u32::MAX))
    }
}

/// The three levels of local government.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Level {
    /// Tỉnh / thành phố trực thuộc trung ương.
    Province,
    /// Huyện / thị xã / thành phố thuộc tỉnh.
    District,
    /// Xã / phường / thị trấn.
    Commune,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Province => "province",
            Level::District => "district",
            Level::Commune => "commune",
        }
    }

    fn parse(text: &str) -> Option<Level> {
        match text {
            "province" => Some(Level::Province),
            "district" => Some(Level::District),
            "commune" => Some(Level::Commune),
            _ => None,
        }
    }

    /// Whether a unit of this level may have a parent of `parent`'s.
    fn fits_under(self, parent: Level) -> bool {
        matches!(
            (self, parent),
            (Level::District, Level::Province)
                | (Level::Commune, Level::Province | Level::District)
        )
    }

    fn parent_rule(self) -> &'static str {
        match self {
            Level::Province => "a province has no parent",
            Level::District => "a district's parent must be a province",
            Level::Commune => "a commune's parent must be a district or a province",
        }
    }
}

/// An inclusive range of local days; `None` is unbounded on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayRange {
    pub from: Option<Day>,
    pub to: Option<Day>,
}

impl DayRange {
    pub const ALWAYS: DayRange = DayRange {
        from: None,
        to: None,
    };

    pub fn contains(&self, day: Day) -> bool {
        self.from.is_none_or(|from| from <= day) && self.to.is_none_or(|to| day <= to)
    }

    /// The days both ranges hold, if any.
    fn intersect(&self, other: &DayRange) -> Option<DayRange> {
        let from = self.from.max(other.from);
        let to = match (self.to, other.to) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let empty = matches!((from, to), (Some(from), Some(to)) if from > to);
        (!empty).then_some(DayRange { from, to })
    }

    /// Whether every day of `self` is in `other`.
    fn within(&self, other: &DayRange) -> bool {
        let starts_inside = match (other.from, self.from) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(outer), Some(inner)) => outer <= inner,
        };
        let ends_inside = match (other.to, self.to) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(outer), Some(inner)) => inner <= outer,
        };
        starts_inside && ends_inside
    }

    fn describe(&self) -> String {
        let day =
            |day: Option<Day>, open: &str| day.map_or(open.to_owned(), |d| d.to_date().to_string());
        format!("{}..{}", day(self.from, "(always)"), day(self.to, "(on)"))
    }
}

/// One parent of a unit, on the days of `days`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    pub parent: UnitIdx,
    pub days: DayRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub id: String,
    /// The Vietnamese name, e.g. "Phường Nguyễn Nghiêm".
    pub name: String,
    pub level: Level,
    /// The days the unit exists (`valid_from`..`valid_to`).
    pub days: DayRange,
    /// Its parents over time, earliest first; empty for a province.
    pub parents: Vec<ParentLink>,
    /// The units it was formed from (`successor_of`).
    pub successor_of: Vec<UnitIdx>,
    /// The agency code the national portal (DVCQG) knows the unit by,
    /// e.g. `000.00.31.H31` (CONTRACT §7.1).
    pub dvcqg_code: Option<String>,
}

impl Unit {
    pub fn exists_on(&self, day: Day) -> bool {
        self.days.contains(day)
    }

    /// The parent on `day`, if the unit has one then.
    pub fn parent_on(&self, day: Day) -> Option<UnitIdx> {
        self.parents
            .iter()
            .find(|link| link.days.contains(day))
            .map(|link| link.parent)
    }
}

/// A units file that cannot be used, with the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    #[error("units file is not valid JSON of the form {{\"units\": [...]}}: {0}")]
    Malformed(String),
    #[error("units[{index}] (`{id}`): {reason}")]
    Entry {
        index: usize,
        id: String,
        reason: String,
    },
    #[error("the units file lists no units")]
    Empty,
}

#[derive(Deserialize)]
struct UnitsFile {
    units: Vec<UnitEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitEntry {
    id: String,
    name: String,
    level: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    parents: Option<Vec<ParentEntry>>,
    #[serde(default)]
    valid_from: Option<String>,
    #[serde(default)]
    valid_to: Option<String>,
    #[serde(default)]
    successor_of: Vec<String>,
    #[serde(default)]
    dvcqg_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParentEntry {
    id: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// What the registry precomputes for the days between two dates of change.
#[derive(Debug, Clone, Default)]
struct Epoch {
    /// Per unit: the units a count attributed to it on these days is part
    /// of (see the module documentation).
    credited: Vec<Vec<UnitIdx>>,
    /// Per unit: the units an open case of it counts under on these days
    /// (the live counts): its holder and the holder's ancestors.
    live: Vec<Vec<UnitIdx>>,
    /// Per unit: its children on these days; and the roots.
    children: Vec<Vec<UnitIdx>>,
    roots: Vec<UnitIdx>,
}

/// The dated unit tree with each epoch's rollups precomputed.
#[derive(Debug, Clone)]
pub struct UnitRegistry {
    units: Vec<Unit>,
    by_id: HashMap<String, UnitIdx>,
    by_dvcqg_code: HashMap<String, UnitIdx>,
    /// Per unit: the units formed from it, in file order.
    successors: Vec<Vec<UnitIdx>>,
    /// The days on which the tree changes, ascending: epoch `i + 1` starts
    /// on `changes[i]`; epoch 0 is every day before the first change.
    changes: Vec<Day>,
    epochs: Vec<Epoch>,
}

/// What stored rollups depend on, per unit: compared between the registry
/// the views were rolled up with and the one given now.
pub type Fingerprint = BTreeMap<String, UnitFingerprint>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFingerprint {
    pub level: Level,
    pub days: DayRange,
    /// Parent ids with their days.
    pub parents: Vec<(String, DayRange)>,
    /// Successor ids, in the order the first one is picked.
    pub successors: Vec<String>,
}

fn parse_day(text: &str) -> Option<Day> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(Day::from_date)
}

impl UnitRegistry {
    /// Reads a units file (§1, §1.1) and checks every entry, naming the
    /// unit and the rule it breaks.
    pub fn from_json(bytes: &[u8]) -> Result<Self, UnitsError> {
        let file: UnitsFile =
            serde_json::from_slice(bytes).map_err(|err| UnitsError::Malformed(err.to_string()))?;
        if file.units.is_empty() {
            return Err(UnitsError::Empty);
        }
        let error = |index: usize, reason: String| UnitsError::Entry {
            index,
            id: file.units[index].id.clone(),
            reason,
        };

        // Ids, names, levels, codes, validity.
        let mut by_id = HashMap::with_capacity(file.units.len());
        let mut by_dvcqg_code = HashMap::new();
        let mut units = Vec::with_capacity(file.units.len());
        for (index, entry) in file.units.iter().enumerate() {
            if !is_valid_unit_id(&entry.id) {
                return Err(error(
                    index,
                    format!(
                        "id must be 1 to {MAX_UNIT_ID_CHARS} characters of A-Z, a-z, 0-9, _ and -"
                    ),
                ));
            }
            if entry.name.trim().is_empty() {
                return Err(error(index, "name is empty".into()));
            }
            let level = Level::parse(&entry.level).ok_or_else(|| {
                error(
                    index,
                    format!(
                        "level `{}` is not one of province, district, commune",
                        entry.level
                    ),
                )
            })?;
            if by_id
                .insert(entry.id.clone(), UnitIdx(index as u32))
                .is_some()
            {
                return Err(error(index, "id appears more than once".into()));
            }
            if let Some(code) = &entry.dvcqg_code {
                if code.trim().is_empty() || code.trim() != code {
                    return Err(error(
                        index,
                        "dvcqg_code must be a code without surrounding spaces, e.g. 000.00.31.H31"
                            .into(),
                    ));
                }
                if let Some(other) = by_dvcqg_code.insert(code.clone(), UnitIdx(index as u32)) {
                    return Err(error(
                        index,
                        format!(
                            "dvcqg_code `{code}` is also the code of `{}`",
                            file.units[other.index()].id
                        ),
                    ));
                }
            }
            let date = |field: &str, text: &Option<String>| match text {
                None => Ok(None),
                Some(text) => parse_day(text).map(Some).ok_or_else(|| {
                    error(
                        index,
                        format!("{field} `{text}` is not a date of the form YYYY-MM-DD"),
                    )
                }),
            };
            let days = DayRange {
                from: date("valid_from", &entry.valid_from)?,
                to: date("valid_to", &entry.valid_to)?,
            };
            if let (Some(from), Some(to)) = (days.from, days.to) {
                if from > to {
                    return Err(error(
                        index,
                        format!(
                            "valid_from {} is after valid_to {}",
                            from.to_date(),
                            to.to_date()
                        ),
                    ));
                }
            }
            units.push(Unit {
                id: entry.id.clone(),
                name: entry.name.clone(),
                level,
                days,
                parents: Vec::new(),
                successor_of: Vec::new(),
                dvcqg_code: entry.dvcqg_code.clone(),
            });
        }

        // Parents: known, of a level that fits, existing on the days of the
        // link, never two at once, covering every day the unit exists.
        let find = |index: usize, what: &str, id: &str| {
            by_id
                .get(id)
                .copied()
                .ok_or_else(|| error(index, format!("{what} `{id}` is not in the file")))
        };
        for (index, entry) in file.units.iter().enumerate() {
            let mut links = Vec::new();
            match (&entry.parent, &entry.parents) {
                (Some(_), Some(_)) => {
                    return Err(error(
                        index,
                        "give either parent or parents, not both".into(),
                    ))
                }
                (Some(parent), None) => links.push(ParentLink {
                    parent: find(index, "parent", parent)?,
                    days: DayRange::ALWAYS,
                }),
                (None, Some(parents)) => {
                    for link in parents {
                        let date = |field: &str, text: &Option<String>| {
                            match text {
                            None => Ok(None),
                            Some(text) => parse_day(text).map(Some).ok_or_else(|| {
                                error(
                                    index,
                                    format!(
                                        "parents: {field} `{text}` of parent `{}` is not a date of the form YYYY-MM-DD",
                                        link.id
                                    ),
                                )
                            }),
                        }
                        };
                        links.push(ParentLink {
                            parent: find(index, "parent", &link.id)?,
                            days: DayRange {
                                from: date("from", &link.from)?,
                                to: date("to", &link.to)?,
                            },
                        });
                    }
                }
                (None, None) => {}
            }
            let unit_days = units[index].days;
            let level = units[index].level;
            let mut effective = Vec::with_capacity(links.len());
            for link in &links {
                let parent = &units[link.parent.index()];
                if !level.fits_under(parent.level) {
                    return Err(error(
                        index,
                        format!(
                            "{} (`{}` is a {})",
                            level.parent_rule(),
                            parent.id,
                            parent.level.as_str()
                        ),
                    ));
                }
                let Some(days) = link.days.intersect(&unit_days) else {
                    return Err(error(
                        index,
                        format!(
                            "parent `{}` for {} is outside the days the unit exists ({})",
                            parent.id,
                            link.days.describe(),
                            unit_days.describe()
                        ),
                    ));
                };
                if !days.within(&parent.days) {
                    return Err(error(
                        index,
                        format!(
                            "parent `{}` does not exist on all of {} (it exists {})",
                            parent.id,
                            days.describe(),
                            parent.days.describe()
                        ),
                    ));
                }
                effective.push(ParentLink {
                    parent: link.parent,
                    days,
                });
            }
            effective.sort_by_key(|link| link.days.from);
            for pair in effective.windows(2) {
                let earlier_ends = pair[0].days.to;
                if earlier_ends.is_none_or(|to| pair[1].days.from.is_none_or(|from| from <= to)) {
                    return Err(error(
                        index,
                        format!(
                            "parents overlap: `{}` for {} and `{}` for {}",
                            units[pair[0].parent.index()].id,
                            pair[0].days.describe(),
                            units[pair[1].parent.index()].id,
                            pair[1].days.describe()
                        ),
                    ));
                }
            }
            if level != Level::Province {
                if let Some(day) = first_uncovered_day(&unit_days, &effective) {
                    return Err(error(
                        index,
                        format!(
                            "{}, and it has none on {}",
                            level.parent_rule(),
                            day.map_or("its first days".to_owned(), |day| day
                                .to_date()
                                .to_string())
                        ),
                    ));
                }
            }
            units[index].parents = effective;
        }

        // Successors: known, of the same level, no unit its own successor,
        // formed after their predecessors ended.
        let mut successors = vec![Vec::new(); units.len()];
        for (index, entry) in file.units.iter().enumerate() {
            let mut predecessors = Vec::new();
            for id in &entry.successor_of {
                let predecessor = find(index, "successor_of: unit", id)?;
                let (unit, before) = (&units[index], &units[predecessor.index()]);
                if before.level != unit.level {
                    return Err(error(
                        index,
                        format!(
                            "successor_of: `{id}` is a {}, this unit a {}: a successor has its predecessors' level",
                            before.level.as_str(),
                            unit.level.as_str()
                        ),
                    ));
                }
                predecessors.push(predecessor);
                successors[predecessor.index()].push(UnitIdx(index as u32));
            }
            units[index].successor_of = predecessors;
        }
        if let Some((index, cycle)) = successor_cycle(&successors) {
            let names: Vec<&str> = cycle.iter().map(|u| units[u.index()].id.as_str()).collect();
            return Err(error(
                index,
                format!("successor_of forms a cycle: {}", names.join(" → ")),
            ));
        }
        for (index, unit) in units.iter().enumerate() {
            for predecessor in &unit.successor_of {
                let before = &units[predecessor.index()];
                match (before.days.to, unit.days.from) {
                    (Some(ended), Some(begins)) if ended < begins => {}
                    _ => {
                        return Err(error(
                            index,
                            format!(
                                "successor_of: `{}` must end (valid_to) before this unit begins (valid_from); they exist {} and {}",
                                before.id,
                                before.days.describe(),
                                unit.days.describe()
                            ),
                        ))
                    }
                }
            }
        }

        let mut registry = UnitRegistry {
            units,
            by_id,
            by_dvcqg_code,
            successors,
            changes: Vec::new(),
            epochs: Vec::new(),
        };
        registry.changes = registry.change_days();
        registry.epochs = (0..=registry.changes.len())
            .map(|epoch| registry.compute_epoch(registry.representative_day(epoch)))
            .collect();
        Ok(registry)
    }

    /// Every day on which some unit or parent link starts or stops.
    fn change_days(&self) -> Vec<Day> {
        let mut days = BTreeSet::new();
        let mut add = |range: &DayRange| {
            days.extend(range.from);
            days.extend(
                range
                    .to
                    .map(|to| Day::from_date(to.to_date().succ_opt().unwrap_or(NaiveDate::MAX))),
            );
        };
        for unit in &self.units {
            add(&unit.days);
            for link in &unit.parents {
                add(&link.days);
            }
        }
        days.into_iter().collect()
    }

    /// A day inside epoch `epoch`.
    fn representative_day(&self, epoch: usize) -> Day {
        match epoch {
            0 => self.changes.first().map_or(
                Day::from_date(NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date")),
                |first| Day::from_date(first.to_date().pred_opt().unwrap_or(NaiveDate::MIN)),
            ),
            epoch => self.changes[epoch - 1],
        }
    }

    /// The epoch a day falls in.
    fn epoch_of(&self, day: Day) -> usize {
        self.changes.partition_point(|change| *change <= day)
    }

    /// Whether two days fall in the same epoch (the tree is the same).
    pub fn same_tree(&self, a: Day, b: Day) -> bool {
        self.epoch_of(a) == self.epoch_of(b)
    }

    /// Whether the tree ever changes (the file has dates).
    pub fn is_dated(&self) -> bool {
        !self.changes.is_empty()
    }

    fn compute_epoch(&self, day: Day) -> Epoch {
        let count = self.units.len();
        let mut epoch = Epoch {
            credited: Vec::with_capacity(count),
            live: Vec::with_capacity(count),
            children: vec![Vec::new(); count],
            roots: Vec::new(),
        };
        for (index, unit) in self.units.iter().enumerate() {
            let idx = UnitIdx(index as u32);
            if unit.exists_on(day) {
                match unit.parent_on(day) {
                    Some(parent) => epoch.children[parent.index()].push(idx),
                    None => epoch.roots.push(idx),
                }
            }
            let base = self.counted_under(idx, day);
            epoch.live.push(base.clone());
            let mut credited = base;
            let mut next = 0;
            while next < credited.len() {
                for &successor in &self.successors[credited[next].index()] {
                    let not_yet = self.units[successor.index()]
                        .days
                        .from
                        .is_some_and(|from| day < from);
                    if not_yet && !credited.contains(&successor) {
                        credited.push(successor);
                    }
                }
                next += 1;
            }
            epoch.credited.push(credited);
        }
        epoch
    }

    /// The unit that holds `unit`'s cases on `day` and its ancestors then.
    fn counted_under(&self, unit: UnitIdx, day: Day) -> Vec<UnitIdx> {
        if let Some(holder) = self.holder(unit, day) {
            return self.lineage_on(holder, day);
        }
        // Nobody holds it that day: a count dated before the unit existed
        // goes where the unit was on its first day; one after it ceased
        // without a successor stays with it and those of its ancestors
        // that still exist.
        let info = &self.units[unit.index()];
        match (info.days.from, info.days.to) {
            (Some(from), _) if day < from => self.lineage_on(unit, from),
            (_, Some(to)) => {
                let mut lineage = self.lineage_on(unit, to);
                lineage.retain(|&u| u == unit || self.units[u.index()].exists_on(day));
                lineage
            }
            _ => vec![unit],
        }
    }

    /// `unit` while it exists on `day`; after it ceased, its successor
    /// (the first in file order) that exists then.
    fn holder(&self, unit: UnitIdx, day: Day) -> Option<UnitIdx> {
        let mut current = unit;
        let mut steps = 0;
        loop {
            let info = &self.units[current.index()];
            if info.exists_on(day) {
                return Some(current);
            }
            let ceased = info.days.to.is_some_and(|to| to < day);
            let next = self.successors[current.index()].first().copied();
            match next {
                Some(next) if ceased && steps < self.units.len() => {
                    current = next;
                    steps += 1;
                }
                _ => return None,
            }
        }
    }

    /// `unit` and its ancestors on `day`.
    fn lineage_on(&self, unit: UnitIdx, day: Day) -> Vec<UnitIdx> {
        let mut lineage = vec![unit];
        let mut next = self.units[unit.index()].parent_on(day);
        while let Some(parent) = next {
            if lineage.contains(&parent) {
                break;
            }
            lineage.push(parent);
            next = self.units[parent.index()].parent_on(day);
        }
        lineage
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The unit with this id, if the registry has it.
    pub fn find(&self, id: &str) -> Option<UnitIdx> {
        self.by_id.get(id).copied()
    }

    /// The unit the national portal knows by this agency code (`madonvi`).
    pub fn find_by_dvcqg_code(&self, code: &str) -> Option<UnitIdx> {
        self.by_dvcqg_code.get(code).copied()
    }

    pub fn unit(&self, idx: UnitIdx) -> &Unit {
        &self.units[idx.index()]
    }

    /// The units whose figures a count attributed to `unit` on `day` is
    /// part of: its holder on that day, the holder's ancestors then, and
    /// the successors not formed yet (module documentation).
    pub fn credited(&self, unit: UnitIdx, day: Day) -> &[UnitIdx] {
        &self.epochs[self.epoch_of(day)].credited[unit.index()]
    }

    /// The units an open case received at `unit` counts under on `day`:
    /// the unit holding it then and that unit's ancestors.
    pub fn live_credited(&self, unit: UnitIdx, day: Day) -> &[UnitIdx] {
        &self.epochs[self.epoch_of(day)].live[unit.index()]
    }

    /// The unit holding `unit`'s cases on `day`: itself while it exists,
    /// its successor that exists then after it ceased (itself when there
    /// is none). Events of a case after a merge name this unit.
    pub fn holder_on(&self, unit: UnitIdx, day: Day) -> UnitIdx {
        self.holder(unit, day).unwrap_or(unit)
    }

    /// The units `unit` succeeds (`successor_of`, followed back) that
    /// existed on `day`, for a day before `unit` was formed: where a case
    /// received then by "the new ward" really was received. Sorted by id.
    pub fn predecessors_on(&self, unit: UnitIdx, day: Day) -> Vec<UnitIdx> {
        let mut found = Vec::new();
        let mut to_visit = self.unit(unit).successor_of.clone();
        let mut seen = vec![unit];
        while let Some(candidate) = to_visit.pop() {
            if seen.contains(&candidate) {
                continue;
            }
            seen.push(candidate);
            let predecessor = self.unit(candidate);
            if predecessor.exists_on(day) {
                found.push(candidate);
            } else if predecessor.days.from.is_some_and(|from| day < from) {
                to_visit.extend(predecessor.successor_of.iter().copied());
            }
        }
        found.sort_by(|a, b| self.unit(*a).id.cmp(&self.unit(*b).id));
        found
    }

    /// The units whose cases are in `unit`'s case-flow report for a period
    /// ending on `last` (CONTRACT §9: the unit holding a unit's cases on
    /// the last day is `unit` or under it in that day's tree), each with
    /// the row it counts in when the report is by unit: the child of
    /// `unit` on `last` that holds it, or `unit` itself.
    pub fn report_rows(&self, unit: UnitIdx, last: Day) -> Vec<(UnitIdx, UnitIdx)> {
        let mut rows = Vec::new();
        for index in 0..self.units.len() {
            let receiving = UnitIdx(index as u32);
            let Some(holder) = self.holder(receiving, last) else {
                continue;
            };
            let lineage = self.lineage_on(holder, last);
            if let Some(position) = lineage.iter().position(|u| *u == unit) {
                let row = match position {
                    0 => unit,
                    _ => lineage[position - 1],
                };
                rows.push((receiving, row));
            }
        }
        rows
    }

    /// The unit itself, then each ancestor up to the root, on `day`.
    pub fn lineage(&self, idx: UnitIdx, day: Day) -> Vec<UnitIdx> {
        self.lineage_on(idx, day)
    }

    /// The lineage as ids, for a unit id, on the day the unit is looked at:
    /// `day` if it exists then, else its nearest day of existence.
    pub fn lineage_ids(&self, id: &str, day: Day) -> Option<Vec<&str>> {
        let idx = self.find(id)?;
        let days = self.unit(idx).days;
        let day = days.to.map_or(day, |to| day.min(to));
        let day = days.from.map_or(day, |from| day.max(from));
        Some(
            self.lineage_on(idx, day)
                .iter()
                .map(|u| self.unit(*u).id.as_str())
                .collect(),
        )
    }

    /// The children of a unit on `day`, or the roots for `None`, in file
    /// order.
    pub fn children(&self, parent: Option<UnitIdx>, day: Day) -> &[UnitIdx] {
        let epoch = &self.epochs[self.epoch_of(day)];
        match parent {
            Some(parent) => &epoch.children[parent.index()],
            None => &epoch.roots,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (UnitIdx, &Unit)> {
        self.units
            .iter()
            .enumerate()
            .map(|(index, unit)| (UnitIdx(index as u32), unit))
    }

    /// The units formed from `unit`, in file order.
    pub fn successors(&self, unit: UnitIdx) -> &[UnitIdx] {
        &self.successors[unit.index()]
    }

    /// What stored rollups depend on.
    pub fn fingerprint(&self) -> Fingerprint {
        self.units
            .iter()
            .enumerate()
            .map(|(index, unit)| {
                let id = |u: &UnitIdx| self.unit(*u).id.clone();
                (
                    unit.id.clone(),
                    UnitFingerprint {
                        level: unit.level,
                        days: unit.days,
                        parents: unit
                            .parents
                            .iter()
                            .map(|link| (id(&link.parent), link.days))
                            .collect(),
                        successors: self.successors[index].iter().map(id).collect(),
                    },
                )
            })
            .collect()
    }

    /// How the stored rollups' registry differs from this one for the
    /// units it had (new units change nothing already counted); empty when
    /// the rollups stand as they are.
    pub fn changes_from(&self, stored: &Fingerprint) -> Vec<String> {
        let current = self.fingerprint();
        stored
            .iter()
            .filter_map(|(id, before)| match current.get(id) {
                None => Some(format!("unit `{id}` was removed")),
                Some(now) if now != before => Some(format!("unit `{id}` changed")),
                Some(_) => None,
            })
            .collect()
    }
}

/// A unit that is its own successor, through the units of the cycle (the
/// unit first and last).
fn successor_cycle(successors: &[Vec<UnitIdx>]) -> Option<(usize, Vec<UnitIdx>)> {
    for start in 0..successors.len() {
        // Depth-first, keeping the path to report it.
        let mut path = vec![(UnitIdx(start as u32), 0usize)];
        let mut seen = BTreeSet::new();
        while let Some((unit, next_child)) = path.last().copied() {
            let children = &successors[unit.index()];
            if next_child >= children.len() {
                path.pop();
                continue;
            }
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            let child = children[next_child];
            if child.index() == start {
                let mut cycle: Vec<UnitIdx> = path.iter().map(|(u, _)| *u).collect();
                cycle.push(child);
                return Some((start, cycle));
            }
            if seen.insert(child) {
                path.push((child, 0));
            }
        }
    }
    None
}

/// The first day of `days` that no link covers (`Some(None)`: the
/// unbounded start), if any.
fn first_uncovered_day(days: &DayRange, links: &[ParentLink]) -> Option<Option<Day>> {
    // `links` are sorted, non-overlapping and within `days`.
    let mut next: Option<Option<Day>> = Some(days.from);
    for link in links {
        let wanted = next?;
        if link.days.from != wanted {
            return Some(wanted);
        }
        next = link.days.to.map(|to| {
            Some(Day::from_date(
                to.to_date().succ_opt().unwrap_or(NaiveDate::MAX),
            ))
        });
        if link.days.to.is_none() {
            next = None;
        }
    }
    match (next, days.to) {
        (None, _) => None,
        (Some(wanted), Some(to)) if wanted.is_some_and(|wanted| wanted > to) => None,
        (Some(wanted), _) => Some(wanted),
    }
}

impl UnitDirectory for UnitRegistry {
    fn check_unit(&self, unit_id: &str, on: NaiveDate) -> Result<(), String> {
        let Some(idx) = self.find(unit_id) else {
            return Err(format!("unit `{unit_id}` is not in the unit registry"));
        };
        let unit = self.unit(idx);
        let day = Day::from_date(on);
        if unit.exists_on(day) {
            return Ok(());
        }
        match (unit.days.from, unit.days.to) {
            (Some(from), _) if day < from => Err(format!(
                "unit {unit_id} begins on {} and did not exist on {on}",
                from.to_date()
            )),
            (_, Some(to)) => match self.holder(idx, day) {
                Some(successor) => Err(format!(
                    "unit {unit_id} ceased on {}; its successor is {}",
                    to.to_date(),
                    self.unit(successor).id
                )),
                None => Err(format!(
                    "unit {unit_id} ceased on {} and has no successor in the registry on {on}",
                    to.to_date()
                )),
            },
            _ => Err(format!("unit {unit_id} did not exist on {on}")),
        }
    }
}

fn is_valid_unit_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_UNIT_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"units": [
      {"id": "51",    "name": "Tỉnh Quảng Ngãi",      "level": "province"},
      {"id": "51531", "name": "Thị xã Đức Phổ",       "level": "district", "parent": "51"},
      {"id": "5153105","name": "Phường Nguyễn Nghiêm", "level": "commune",  "parent": "51531"},
      {"id": "31",    "name": "Thành phố Hải Phòng",  "level": "province"},
      {"id": "31_VT", "name": "Xã Vĩnh Thuận",        "level": "commune",  "parent": "31"}
    ]}"#;

    /// The reform of CONTRACT §1.1 in small: on 2025-07-01 district D
    /// ends, commune A moves to the province, B and C merge into W.
    pub const REFORM: &str = r#"{"units": [
      {"id": "P", "name": "Tỉnh P", "level": "province"},
      {"id": "D", "name": "Huyện D", "level": "district", "parent": "P", "valid_to": "2025-06-30"},
      {"id": "A", "name": "Xã A", "level": "commune",
       "parents": [{"id": "D", "to": "2025-06-30"}, {"id": "P", "from": "2025-07-01"}]},
      {"id": "B", "name": "Xã B", "level": "commune", "parent": "D", "valid_to": "2025-06-30"},
      {"id": "C", "name": "Xã C", "level": "commune", "parent": "D", "valid_to": "2025-06-30"},
      {"id": "W", "name": "Phường W", "level": "commune", "parent": "P",
       "valid_from": "2025-07-01", "successor_of": ["B", "C"]}
    ]}"#;

    fn registry() -> UnitRegistry {
        UnitRegistry::from_json(SAMPLE.as_bytes()).expect("valid")
    }

    fn day(text: &str) -> Day {
        parse_day(text).unwrap()
    }

    fn ids<'a>(units: &'a UnitRegistry, list: &[UnitIdx]) -> Vec<&'a str> {
        list.iter().map(|u| units.unit(*u).id.as_str()).collect()
    }

    #[test]
    fn lineage_runs_from_the_unit_to_its_root() {
        let units = registry();
        let any = day("2025-01-01");
        assert_eq!(
            units.lineage_ids("5153105", any).unwrap(),
            ["5153105", "51531", "51"]
        );
        assert_eq!(units.lineage_ids("31_VT", any).unwrap(), ["31_VT", "31"]);
        assert_eq!(units.lineage_ids("51", any).unwrap(), ["51"]);
        assert!(units.lineage_ids("nope", any).is_none());
        assert!(!units.is_dated());
    }

    #[test]
    fn children_and_roots_keep_file_order() {
        let units = registry();
        let any = day("2025-01-01");
        assert_eq!(ids(&units, units.children(None, any)), ["51", "31"]);
        let hp = units.find("31").unwrap();
        assert_eq!(units.children(Some(hp), any).len(), 1);
    }

    #[test]
    fn vietnamese_names_are_kept_exactly() {
        let units = registry();
        let idx = units.find("5153105").unwrap();
        assert_eq!(units.unit(idx).name, "Phường Nguyễn Nghiêm");
    }

    #[test]
    fn counts_go_to_the_tree_of_their_day() {
        let units = UnitRegistry::from_json(REFORM.as_bytes()).unwrap();
        let at =
            |id: &str, date: &str| ids(&units, units.credited(units.find(id).unwrap(), day(date)));
        // A: under D until June, under P from July.
        assert_eq!(at("A", "2025-06-30"), ["A", "D", "P"]);
        assert_eq!(at("A", "2025-07-01"), ["A", "P"]);
        // B before the merge: B, D, P, and W (its successor's history).
        assert_eq!(at("B", "2025-06-30"), ["B", "D", "P", "W"]);
        // B after the merge: W holds its cases.
        assert_eq!(at("B", "2025-07-01"), ["W", "P"]);
        assert_eq!(at("W", "2025-07-05"), ["W", "P"]);
        // Live counts: today's holder and its ancestors, no history.
        let b = units.find("B").unwrap();
        assert_eq!(
            ids(&units, units.live_credited(b, day("2026-01-01"))),
            ["W", "P"]
        );
        assert_eq!(
            ids(&units, units.live_credited(b, day("2025-05-01"))),
            ["B", "D", "P"]
        );
        assert!(units.is_dated());
        assert!(units.same_tree(day("2025-07-01"), day("2026-11-29")));
        assert!(!units.same_tree(day("2025-06-30"), day("2025-07-01")));
    }

    #[test]
    fn the_tree_of_a_day_lists_the_units_of_that_day() {
        let units = UnitRegistry::from_json(REFORM.as_bytes()).unwrap();
        let p = units.find("P");
        assert_eq!(ids(&units, units.children(p, day("2025-06-30"))), ["D"]);
        assert_eq!(
            ids(&units, units.children(p, day("2025-07-01"))),
            ["A", "W"]
        );
        let d = units.find("D");
        assert_eq!(
            ids(&units, units.children(d, day("2025-06-30"))),
            ["A", "B", "C"]
        );
        assert!(units.children(d, day("2025-07-01")).is_empty());
        assert_eq!(
            units.lineage_ids("B", day("2026-01-01")).unwrap(),
            ["B", "D", "P"]
        );
    }

    #[test]
    fn an_event_for_a_ceased_unit_names_its_successor() {
        let units = UnitRegistry::from_json(REFORM.as_bytes()).unwrap();
        let on = |text: &str| NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
        assert!(units.check_unit("B", on("2025-06-30")).is_ok());
        assert_eq!(
            units.check_unit("B", on("2025-07-02")).unwrap_err(),
            "unit B ceased on 2025-06-30; its successor is W"
        );
        assert_eq!(
            units.check_unit("W", on("2025-06-30")).unwrap_err(),
            "unit W begins on 2025-07-01 and did not exist on 2025-06-30"
        );
        assert_eq!(
            units.check_unit("D", on("2025-07-01")).unwrap_err(),
            "unit D ceased on 2025-06-30 and has no successor in the registry on 2025-07-01"
        );
        assert!(units.check_unit("A", on("2025-07-02")).is_ok());
    }

    fn error_for(json: &str) -> String {
        UnitRegistry::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(
            error_for(r#"{"units":[{"id":"a.b","name":"X","level":"province"}]}"#),
            "units[0] (`a.b`): id must be 1 to 32 characters of A-Z, a-z, 0-9, _ and -"
        );
        assert_eq!(
            error_for(
                r#"{"units":[{"id":"P","name":"X","level":"province"},{"id":"C","name":"Y","level":"commune","parent":"D"}]}"#
            ),
            "units[1] (`C`): parent `D` is not in the file"
        );
        assert_eq!(
            error_for(
                r#"{"units":[{"id":"P","name":"X","level":"province"},{"id":"P","name":"Y","level":"province"}]}"#
            ),
            "units[1] (`P`): id appears more than once"
        );
        assert_eq!(
            error_for(r#"{"units":[{"id":"C","name":"X","level":"commune"}]}"#),
            "units[0] (`C`): a commune's parent must be a district or a province, and it has none on its first days"
        );
        assert!(
            error_for(r#"{"units":[{"id":"C","name":"X","level":"village"}]}"#)
                .contains("level `village`")
        );
        assert_eq!(
            error_for(r#"{"units":[]}"#),
            "the units file lists no units"
        );
        assert!(error_for("[]").starts_with("units file is not valid JSON"));
        assert!(
            error_for(r#"{"units":[{"id":"P","name":"X","level":"province","parnet":"Q"}]}"#)
                .contains("unknown field `parnet`")
        );
    }

    /// The reform file with one entry replaced.
    fn reform_with(id: &str, entry: &str) -> String {
        let mut value: serde_json::Value = serde_json::from_str(REFORM).unwrap();
        let units = value["units"].as_array_mut().unwrap();
        let position = units.iter().position(|unit| unit["id"] == id).unwrap();
        units[position] = serde_json::from_str(entry).unwrap();
        value.to_string()
    }

    #[test]
    fn each_kind_of_dated_mistake_is_named() {
        // A parent that does not exist on those days.
        assert_eq!(
            error_for(&reform_with(
                "A",
                r#"{"id":"A","name":"Xã A","level":"commune","parents":[{"id":"D"}]}"#
            )),
            "units[2] (`A`): parent `D` does not exist on all of (always)..(on) (it exists (always)..2025-06-30)"
        );
        // Overlapping parent ranges.
        assert_eq!(
            error_for(&reform_with(
                "A",
                r#"{"id":"A","name":"Xã A","level":"commune","parents":[{"id":"D","to":"2025-06-30"},{"id":"P","from":"2025-06-30"}]}"#
            )),
            "units[2] (`A`): parents overlap: `D` for (always)..2025-06-30 and `P` for 2025-06-30..(on)"
        );
        // A day without a parent.
        assert_eq!(
            error_for(&reform_with(
                "A",
                r#"{"id":"A","name":"Xã A","level":"commune","parents":[{"id":"D","to":"2025-06-30"},{"id":"P","from":"2025-07-02"}]}"#
            )),
            "units[2] (`A`): a commune's parent must be a district or a province, and it has none on 2025-07-01"
        );
        // A successor cycle.
        let cycle = REFORM.replace(
            r#""parent": "D", "valid_to": "2025-06-30"},
      {"id": "C""#,
            r#""parent": "D", "valid_to": "2025-06-30", "successor_of": ["W"]},
      {"id": "C""#,
        );
        assert_eq!(
            error_for(&cycle),
            "units[3] (`B`): successor_of forms a cycle: B → W → B"
        );
        // A successor formed before its predecessor ended.
        let early = REFORM.replace(
            r#""valid_from": "2025-07-01", "successor_of""#,
            r#""valid_from": "2025-06-15", "successor_of""#,
        );
        assert_eq!(
            error_for(&early),
            "units[5] (`W`): successor_of: `B` must end (valid_to) before this unit begins (valid_from); they exist (always)..2025-06-30 and 2025-06-15..(on)"
        );
        // A level that does not fit: a commune as a parent, a district
        // succeeding communes.
        assert_eq!(
            error_for(&reform_with(
                "A",
                r#"{"id":"A","name":"Xã A","level":"commune","parent":"B"}"#
            )),
            "units[2] (`A`): a commune's parent must be a district or a province (`B` is a commune)"
        );
        assert!(error_for(&reform_with(
            "W",
            r#"{"id":"W","name":"W","level":"district","parent":"P","valid_from":"2025-07-01","successor_of":["B","C"]}"#
        ))
        .contains("a successor has its predecessors' level"));
        // Dates that are not dates, or backwards.
        assert!(error_for(&reform_with(
            "W",
            r#"{"id":"W","name":"W","level":"commune","parent":"P","valid_from":"1/7/2025"}"#
        ))
        .contains("valid_from `1/7/2025` is not a date of the form YYYY-MM-DD"));
        assert!(error_for(&reform_with(
            "W",
            r#"{"id":"W","name":"W","level":"commune","parent":"P","valid_from":"2025-07-01","valid_to":"2025-06-01"}"#
        ))
        .contains("valid_from 2025-07-01 is after valid_to 2025-06-01"));
    }

    #[test]
    fn units_are_found_by_their_dvcqg_code() {
        let units = UnitRegistry::from_json(
            r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
            {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51","dvcqg_code":"000.00.31.H31"}]}"#
                .as_bytes(),
        )
        .unwrap();
        let idx = units.find_by_dvcqg_code("000.00.31.H31").unwrap();
        assert_eq!(units.unit(idx).id, "5153105");
        assert!(units.find_by_dvcqg_code("000.00.31.H32").is_none());
        assert_eq!(
            error_for(
                r#"{"units":[{"id":"A","name":"X","level":"province","dvcqg_code":"C"},{"id":"B","name":"Y","level":"province","dvcqg_code":"C"}]}"#
            ),
            "units[1] (`B`): dvcqg_code `C` is also the code of `A`"
        );
    }

    #[test]
    fn new_units_leave_the_rollups_as_they_are_but_changed_ones_do_not() {
        let units = registry();
        let mut stored = units.fingerprint();
        assert!(units.changes_from(&stored).is_empty());
        stored.remove("31_VT");
        assert!(units.changes_from(&stored).is_empty(), "a new unit is fine");
        let mut moved = stored.clone();
        moved.get_mut("5153105").unwrap().parents = vec![("51".into(), DayRange::ALWAYS)];
        moved.insert("gone".into(), moved["51"].clone());
        let changes = units.changes_from(&moved);
        assert_eq!(
            changes,
            ["unit `5153105` changed", "unit `gone` was removed"]
        );
        // A new successor of a stored unit changes where its counts go.
        let reform = UnitRegistry::from_json(REFORM.as_bytes()).unwrap();
        let mut before_w = reform.fingerprint();
        before_w.remove("W");
        for id in ["B", "C"] {
            before_w.get_mut(id).unwrap().successors.clear();
        }
        assert_eq!(
            reform.changes_from(&before_w),
            ["unit `B` changed", "unit `C` changed"]
        );
    }
}
