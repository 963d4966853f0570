//! The unit registry (§1): provinces, districts and communes as a tree.
//!
//! Counts are rolled up at fold time to every ancestor, so the registry
//! precomputes each unit's lineage (itself, then its ancestors up to the
//! root). Since July 2025 most provinces have no district level, so a
//! commune's parent may be a district or the province itself.

use std::collections::{BTreeMap, HashMap};

use kpi_events::UnitDirectory;
use serde::Deserialize;

/// The longest unit id (it is a NATS subject token).
pub const MAX_UNIT_ID_CHARS: usize = 32;

/// A position in the registry. Only meaningful for the registry it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitIdx(u32);

/// The three levels of local government.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub id: String,
    /// The Vietnamese name, e.g. "Phường Nguyễn Nghiêm".
    pub name: String,
    pub level: Level,
    pub parent: Option<UnitIdx>,
    /// The agency code the national portal (DVCQG) knows the unit by,
    /// e.g. `000.00.31.H31` (CONTRACT §7.1).
    pub dvcqg_code: Option<String>,
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

/// Why a data store built with one registry cannot be used with another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the units file changes units the stored views were rolled up with: {}; rebuild the views: stop the projector, move its data directory aside and start it again (it re-reads the stream from the start)",
    changes.join("; ")
)]
pub struct IncompatibleUnits {
    pub changes: Vec<String>,
}

#[derive(Deserialize)]
struct UnitsFile {
    units: Vec<UnitEntry>,
}

#[derive(Deserialize)]
struct UnitEntry {
    id: String,
    name: String,
    level: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    dvcqg_code: Option<String>,
}

/// The unit tree with each unit's lineage precomputed.
#[derive(Debug, Clone)]
pub struct UnitRegistry {
    units: Vec<Unit>,
    by_id: HashMap<String, UnitIdx>,
    by_dvcqg_code: HashMap<String, UnitIdx>,
    lineages: Vec<Vec<UnitIdx>>,
    children: Vec<Vec<UnitIdx>>,
    roots: Vec<UnitIdx>,
}

impl UnitRegistry {
    /// Reads a units file (§1) and checks every entry.
    pub fn from_json(bytes: &[u8]) -> Result<Self, UnitsError> {
        let file: UnitsFile =
            serde_json::from_slice(bytes).map_err(|err| UnitsError::Malformed(err.to_string()))?;
        if file.units.is_empty() {
            return Err(UnitsError::Empty);
        }
        let entry_error = |index: usize, entry: &UnitEntry, reason: String| UnitsError::Entry {
            index,
            id: entry.id.clone(),
            reason,
        };

        let mut by_id = HashMap::with_capacity(file.units.len());
        let mut by_dvcqg_code = HashMap::new();
        let mut levels = Vec::with_capacity(file.units.len());
        for (index, entry) in file.units.iter().enumerate() {
            if !is_valid_unit_id(&entry.id) {
                return Err(entry_error(
                    index,
                    entry,
                    format!(
                        "id must be 1 to {MAX_UNIT_ID_CHARS} characters of A-Z, a-z, 0-9, _ and -"
                    ),
                ));
            }
            if entry.name.trim().is_empty() {
                return Err(entry_error(index, entry, "name is empty".into()));
            }
            let level = Level::parse(&entry.level).ok_or_else(|| {
                entry_error(
                    index,
                    entry,
                    format!(
                        "level `{}` is not one of province, district, commune",
                        entry.level
                    ),
                )
            })?;
            levels.push(level);
            if by_id
                .insert(entry.id.clone(), UnitIdx(index as u32))
                .is_some()
            {
                return Err(entry_error(
                    index,
                    entry,
                    "id appears more than once".into(),
                ));
            }
            if let Some(code) = &entry.dvcqg_code {
                if code.trim().is_empty() || code.trim() != code {
                    return Err(entry_error(
                        index,
                        entry,
                        "dvcqg_code must be a code without surrounding spaces, e.g. 000.00.31.H31"
                            .into(),
                    ));
                }
                if let Some(other) = by_dvcqg_code.insert(code.clone(), UnitIdx(index as u32)) {
                    return Err(entry_error(
                        index,
                        entry,
                        format!(
                            "dvcqg_code `{code}` is also the code of `{}`",
                            file.units[other.0 as usize].id
                        ),
                    ));
                }
            }
        }

        let mut units = Vec::with_capacity(file.units.len());
        for (index, entry) in file.units.iter().enumerate() {
            let level = levels[index];
            let parent = match &entry.parent {
                None => None,
                Some(parent_id) => Some(*by_id.get(parent_id).ok_or_else(|| {
                    entry_error(
                        index,
                        entry,
                        format!("parent `{parent_id}` is not in the file"),
                    )
                })?),
            };
            let parent_level = parent.map(|p| levels[p.0 as usize]);
            let allowed = matches!(
                (level, parent_level),
                (Level::Province, None)
                    | (Level::District, Some(Level::Province))
                    | (Level::Commune, Some(Level::Province | Level::District))
            );
            if !allowed {
                let rule = match level {
                    Level::Province => "a province has no parent",
                    Level::District => "a district's parent must be a province",
                    Level::Commune => "a commune's parent must be a district or a province",
                };
                return Err(entry_error(index, entry, rule.into()));
            }
            units.push(Unit {
                id: entry.id.clone(),
                name: entry.name.clone(),
                level,
                parent,
                dvcqg_code: entry.dvcqg_code.clone(),
            });
        }

        // The level rules make the tree acyclic and at most three deep.
        let mut lineages = Vec::with_capacity(units.len());
        let mut children = vec![Vec::new(); units.len()];
        let mut roots = Vec::new();
        for (index, unit) in units.iter().enumerate() {
            let mut lineage = vec![UnitIdx(index as u32)];
            let mut next = unit.parent;
            while let Some(parent) = next {
                lineage.push(parent);
                next = units[parent.0 as usize].parent;
            }
            lineages.push(lineage);
            match unit.parent {
                Some(parent) => children[parent.0 as usize].push(UnitIdx(index as u32)),
                None => roots.push(UnitIdx(index as u32)),
            }
        }

        Ok(UnitRegistry {
            units,
            by_id,
            by_dvcqg_code,
            lineages,
            children,
            roots,
        })
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
        &self.units[idx.0 as usize]
    }

    /// The unit itself, then each ancestor up to the root.
    pub fn lineage(&self, idx: UnitIdx) -> &[UnitIdx] {
        &self.lineages[idx.0 as usize]
    }

    /// The lineage as ids, for a unit id.
    pub fn lineage_ids(&self, id: &str) -> Option<Vec<&str>> {
        let idx = self.find(id)?;
        Some(
            self.lineage(idx)
                .iter()
                .map(|u| self.unit(*u).id.as_str())
                .collect(),
        )
    }

    /// The children of a unit, or the roots for `None`, in file order.
    pub fn children(&self, parent: Option<UnitIdx>) -> &[UnitIdx] {
        match parent {
            Some(parent) => &self.children[parent.0 as usize],
            None => &self.roots,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (UnitIdx, &Unit)> {
        self.units
            .iter()
            .enumerate()
            .map(|(index, unit)| (UnitIdx(index as u32), unit))
    }

    /// Each unit's parent id: what stored views depend on.
    pub fn parent_map(&self) -> BTreeMap<String, Option<String>> {
        self.units
            .iter()
            .map(|unit| {
                let parent = unit.parent.map(|p| self.unit(p).id.clone());
                (unit.id.clone(), parent)
            })
            .collect()
    }

    /// Views rolled up with `stored` stay right with this registry when no
    /// unit was removed and none moved to another parent; new units are fine.
    pub fn check_compatible(
        &self,
        stored: &BTreeMap<String, Option<String>>,
    ) -> Result<(), IncompatibleUnits> {
        let current = self.parent_map();
        let changes: Vec<String> = stored
            .iter()
            .filter_map(|(id, parent)| match current.get(id) {
                None => Some(format!("unit `{id}` was removed")),
                Some(now) if now != parent => Some(format!(
                    "unit `{id}` moved from parent {} to {}",
                    parent.as_deref().unwrap_or("(none)"),
                    now.as_deref().unwrap_or("(none)")
                )),
                Some(_) => None,
            })
            .collect();
        if changes.is_empty() {
            Ok(())
        } else {
            Err(IncompatibleUnits { changes })
        }
    }
}

impl UnitDirectory for UnitRegistry {
    fn check_unit(&self, unit_id: &str, _on: chrono::NaiveDate) -> Result<(), String> {
        if self.by_id.contains_key(unit_id) {
            Ok(())
        } else {
            Err(format!("unit `{unit_id}` is not in the unit registry"))
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

    fn registry() -> UnitRegistry {
        UnitRegistry::from_json(SAMPLE.as_bytes()).expect("valid")
    }

    #[test]
    fn lineage_runs_from_the_unit_to_its_root() {
        let units = registry();
        assert_eq!(
            units.lineage_ids("5153105").unwrap(),
            ["5153105", "51531", "51"]
        );
        assert_eq!(units.lineage_ids("31_VT").unwrap(), ["31_VT", "31"]);
        assert_eq!(units.lineage_ids("51").unwrap(), ["51"]);
        assert!(units.lineage_ids("nope").is_none());
    }

    #[test]
    fn children_and_roots_keep_file_order() {
        let units = registry();
        let roots: Vec<_> = units
            .children(None)
            .iter()
            .map(|u| units.unit(*u).id.as_str())
            .collect();
        assert_eq!(roots, ["51", "31"]);
        let hp = units.find("31").unwrap();
        assert_eq!(units.children(Some(hp)).len(), 1);
    }

    #[test]
    fn vietnamese_names_are_kept_exactly() {
        let units = registry();
        let idx = units.find("5153105").unwrap();
        assert_eq!(units.unit(idx).name, "Phường Nguyễn Nghiêm");
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
            "units[0] (`C`): a commune's parent must be a district or a province"
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
    fn adding_units_is_compatible_but_moving_or_removing_is_not() {
        let units = registry();
        let mut stored = units.parent_map();
        assert!(units.check_compatible(&stored).is_ok());
        stored.remove("31_VT");
        assert!(
            units.check_compatible(&stored).is_ok(),
            "a new unit is fine"
        );
        stored.insert("gone".into(), None);
        stored.insert("5153105".into(), Some("51".into()));
        let err = units.check_compatible(&stored).unwrap_err().to_string();
        assert!(err.contains("unit `gone` was removed"), "{err}");
        assert!(
            err.contains("unit `5153105` moved from parent 51 to 51531"),
            "{err}"
        );
    }
}
