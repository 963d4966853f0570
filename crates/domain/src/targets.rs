//! Targets by year and unit (§3).
//!
//! Built-in defaults come from the seed plans (seeds 000, 001, 002, 004) for
//! 2024 and 2025. An operator's targets file overrides them for a year, for
//! everyone or for a unit and everything below it:
//!
//! ```json
//! {"targets": [
//!   {"year": 2025, "rates": {"on_time_rate": 98}},
//!   {"year": 2025, "unit_id": "51", "rates": {"online_application_rate": 60}}
//! ]}
//! ```
//!
//! A unit's target is, in order: the file's entry for the unit itself or its
//! nearest ancestor, the file's entry for the whole year, the default.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::counters::Counters;
use crate::kpi::{rates, Kpi, Rate};
use crate::period::Period;
use crate::units::UnitRegistry;

/// The default target of a KPI for a year. Years before 2024 use 2024's
/// figures and years after 2025 use 2025's, until a targets file says
/// otherwise.
pub fn default_target(kpi: Kpi, year: i32) -> Option<f64> {
    let from_2025 = year >= 2025;
    let by_year = |y2024: f64, y2025: f64| Some(if from_2025 { y2025 } else { y2024 });
    match kpi {
        Kpi::OnTimeRate => by_year(97.0, 100.0),
        Kpi::LateRate => None,
        Kpi::ApologyRate => Some(100.0),
        Kpi::ElectronicResultRate => Some(100.0),
        Kpi::ResultDigitizationRate => by_year(80.0, 100.0),
        Kpi::OnlineApplicationRate => Some(50.0),
        Kpi::DossierDigitizationRate => by_year(80.0, 100.0),
        Kpi::DataReuseRate => Some(50.0),
        Kpi::PortalSyncRate => Some(100.0),
        Kpi::OnlinePaymentRate => by_year(45.0, 60.0),
        Kpi::SatisfactionRate => Some(90.0),
        Kpi::SatisfactionRateLand => Some(85.0),
        Kpi::FeedbackOnTimeRate => Some(100.0),
    }
}

/// Next year's target for a unit (seed 001, appendix 1): the central target
/// where this year's result is below it (or there is none); otherwise the
/// result plus 10 points, capped at 100, never below the central target.
pub fn next_year_target(central: f64, result: Option<f64>) -> f64 {
    match result {
        Some(result) if result >= central => (result + 10.0).min(100.0).max(central),
        _ => central,
    }
}

/// A targets file that cannot be used, naming the entry at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetsError {
    #[error("targets file is not valid JSON of the form {{\"targets\": [...]}}: {0}")]
    Malformed(String),
    #[error("targets[{index}]: {reason}")]
    Entry { index: usize, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    targets: Vec<TargetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetEntry {
    year: i32,
    #[serde(default)]
    unit_id: Option<String>,
    rates: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default)]
struct YearTargets {
    everywhere: HashMap<Kpi, f64>,
    by_unit: HashMap<String, HashMap<Kpi, f64>>,
}

/// The targets in force: defaults plus any file overrides.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    by_year: HashMap<i32, YearTargets>,
}

impl Targets {
    /// The built-in defaults only.
    pub fn defaults() -> Targets {
        Targets::default()
    }

    /// Reads a targets file, checking KPI names, percents and unit ids.
    pub fn from_json(bytes: &[u8], units: &UnitRegistry) -> Result<Targets, TargetsError> {
        let file: TargetsFile = serde_json::from_slice(bytes)
            .map_err(|err| TargetsError::Malformed(err.to_string()))?;
        let mut targets = Targets::default();
        for (index, entry) in file.targets.into_iter().enumerate() {
            let fail = |reason: String| TargetsError::Entry { index, reason };
            if !(1..=9999).contains(&entry.year) {
                return Err(fail(format!(
                    "year {} is not a four-digit year",
                    entry.year
                )));
            }
            if let Some(unit_id) = &entry.unit_id {
                if units.find(unit_id).is_none() {
                    return Err(fail(format!("unit `{unit_id}` is not in the units file")));
                }
            }
            let year = targets.by_year.entry(entry.year).or_default();
            let slot = match entry.unit_id {
                Some(unit_id) => year.by_unit.entry(unit_id).or_default(),
                None => &mut year.everywhere,
            };
            for (name, percent) in entry.rates {
                let kpi = Kpi::parse(&name).ok_or_else(|| {
                    fail(format!(
                        "`{name}` is not a KPI; known KPIs: {}",
                        Kpi::accepted()
                    ))
                })?;
                if !kpi.takes_target() {
                    return Err(fail(format!("{name} is informational and takes no target")));
                }
                if !(0.0..=100.0).contains(&percent) {
                    return Err(fail(format!(
                        "{name}: {percent} is not a percent from 0 to 100"
                    )));
                }
                if slot.insert(kpi, percent).is_some() {
                    return Err(fail(format!("{name} is set twice for this year and unit")));
                }
            }
        }
        Ok(targets)
    }

    /// Every KPI of a unit (given by id) for a period, from its counters,
    /// judged by the targets of the period's year for that unit where it
    /// stands at the end of the period.
    pub fn rates_for(
        &self,
        units: &UnitRegistry,
        unit_id: &str,
        period: &Period,
        counters: &Counters,
    ) -> Vec<Rate> {
        let lineage = units
            .lineage_ids(unit_id, crate::time::Day::from_date(period.last_day))
            .unwrap_or_else(|| vec![unit_id]);
        let year = period.target_year();
        rates(counters, |kpi| self.target(kpi, year, &lineage))
    }

    /// The target of `kpi` in `year` for the unit whose lineage (the unit,
    /// then its ancestors) is given.
    pub fn target<S: AsRef<str>>(&self, kpi: Kpi, year: i32, lineage: &[S]) -> Option<f64> {
        if !kpi.takes_target() {
            return None;
        }
        let overridden = self.by_year.get(&year).and_then(|year_targets| {
            lineage
                .iter()
                .find_map(|unit| {
                    year_targets
                        .by_unit
                        .get(unit.as_ref())
                        .and_then(|by_kpi| by_kpi.get(&kpi))
                })
                .or_else(|| year_targets.everywhere.get(&kpi))
                .copied()
        });
        overridden.or_else(|| default_target(kpi, year))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units() -> UnitRegistry {
        UnitRegistry::from_json(
            r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
            {"id":"51531","name":"Thị xã Đức Phổ","level":"district","parent":"51"},
            {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51531"}]}"#
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn defaults_follow_the_seed_plans() {
        let targets = Targets::defaults();
        let commune = ["5153105"];
        assert_eq!(targets.target(Kpi::OnTimeRate, 2024, &commune), Some(97.0));
        assert_eq!(targets.target(Kpi::OnTimeRate, 2025, &commune), Some(100.0));
        assert_eq!(
            targets.target(Kpi::OnlinePaymentRate, 2024, &commune),
            Some(45.0)
        );
        assert_eq!(
            targets.target(Kpi::OnlinePaymentRate, 2025, &commune),
            Some(60.0)
        );
        assert_eq!(
            targets.target(Kpi::SatisfactionRateLand, 2025, &commune),
            Some(85.0)
        );
        assert_eq!(targets.target(Kpi::LateRate, 2025, &commune), None);
        assert_eq!(targets.target(Kpi::OnTimeRate, 2026, &commune), Some(100.0));
        assert_eq!(targets.target(Kpi::OnTimeRate, 2023, &commune), Some(97.0));
    }

    #[test]
    fn the_nearest_override_wins() {
        let units = units();
        let targets = Targets::from_json(
            br#"{"targets":[
              {"year":2025,"rates":{"on_time_rate":98,"online_application_rate":55}},
              {"year":2025,"unit_id":"51531","rates":{"on_time_rate":99.5}},
              {"year":2025,"unit_id":"51","rates":{"on_time_rate":96}}
            ]}"#,
            &units,
        )
        .unwrap();
        let any_day =
            crate::time::Day::from_date(chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        let lineage = units.lineage_ids("5153105", any_day).unwrap();
        assert_eq!(targets.target(Kpi::OnTimeRate, 2025, &lineage), Some(99.5));
        assert_eq!(targets.target(Kpi::OnTimeRate, 2025, &["51"]), Some(96.0));
        assert_eq!(
            targets.target(Kpi::OnlineApplicationRate, 2025, &lineage),
            Some(55.0)
        );
        assert_eq!(
            targets.target(Kpi::ApologyRate, 2025, &lineage),
            Some(100.0)
        );
        assert_eq!(
            targets.target(Kpi::OnTimeRate, 2024, &lineage),
            Some(97.0),
            "other years keep defaults"
        );
    }

    #[test]
    fn bad_files_name_the_entry() {
        let units = units();
        let error = |json: &str| {
            Targets::from_json(json.as_bytes(), &units)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error(r#"{"targets":[{"year":2025,"unit_id":"99","rates":{}}]}"#),
            "targets[0]: unit `99` is not in the units file"
        );
        assert!(error(r#"{"targets":[{"year":2025,"rates":{"speed":1}}]}"#)
            .contains("`speed` is not a KPI"));
        assert_eq!(
            error(r#"{"targets":[{"year":2025,"rates":{"late_rate":3}}]}"#),
            "targets[0]: late_rate is informational and takes no target"
        );
        assert_eq!(
            error(r#"{"targets":[{"year":2025,"rates":{"on_time_rate":120}}]}"#),
            "targets[0]: on_time_rate: 120 is not a percent from 0 to 100"
        );
        assert!(
            error(r#"{"targets":[{"year":2025,"rates":{}, "unit":"51"}]}"#)
                .starts_with("targets file is not valid JSON")
        );
    }

    #[test]
    fn next_year_targets_follow_appendix_one() {
        assert_eq!(next_year_target(90.0, Some(80.0)), 90.0);
        assert_eq!(next_year_target(90.0, Some(92.0)), 100.0);
        assert_eq!(next_year_target(50.0, Some(60.0)), 70.0);
        assert_eq!(next_year_target(50.0, None), 50.0);
        assert_eq!(next_year_target(100.0, Some(100.0)), 100.0);
    }
}
