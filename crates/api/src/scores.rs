//! `GetScores`: the QĐ 766 components (`kpi_domain::scores`) of a unit
//! for a period, with the points an operator's facts file gives the
//! components that case events cannot.

use kpi_domain::scores::{scores, totals, ScoreInputs};
use kpi_domain::{Day, Moment, UnitRegistry};
use serde::Deserialize;
use tonic::Status;

use crate::access::Caller;
use crate::{internal, pb, KpiApi};

/// Points of components from outside the events, by component, year and
/// unit (`--scores-facts`):
///
/// ```json
/// {"facts": [
///   {"component": "FULL_ONLINE", "points": 9.5},
///   {"component": "PUBLISH_ON_TIME", "year": 2025, "unit_id": "51", "points": 6}
/// ]}
/// ```
///
/// The entry of the nearest unit (the unit, then its ancestors) wins, then
/// one for every unit; an entry of the period's year over one without.
#[derive(Debug, Clone, Default)]
pub struct ScoreFacts {
    facts: Vec<Fact>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fact {
    component: String,
    points: f64,
    #[serde(default)]
    year: Option<i32>,
    #[serde(default)]
    unit_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FactsFile {
    facts: Vec<Fact>,
}

/// A facts file that cannot be used, naming the entry.
#[derive(Debug, Clone, thiserror::Error)]
#[error("scores facts file: {0}")]
pub struct FactsError(String);

/// The components a facts file may give.
const FROM_FACTS: &[&str] = &[
    "PUBLISH_ON_TIME",
    "PUBLIC_UPDATE_ON_TIME",
    "PUBLIC_CONTENT_FULL",
    "FULL_ONLINE",
    "ONLINE_PAYMENT_CATALOGUE",
    "ELECTRONIC_CERTIFIED_COPY",
    "SYNCED_WITH_DVCQG_PERSONAL_STORAGE",
    "CITIZEN_DATA_CONNECTED_DOSSIER",
    "CITIZEN_DATA_CONNECTED_FORMALITY",
    "PETITION_HANDLING_SATISFACTION",
];

impl ScoreFacts {
    pub fn from_json(bytes: &[u8], units: &UnitRegistry) -> Result<ScoreFacts, FactsError> {
        let file: FactsFile = serde_json::from_slice(bytes).map_err(|err| {
            FactsError(format!(
                "not valid JSON of the form {{\"facts\": [...]}}: {err}"
            ))
        })?;
        for (index, fact) in file.facts.iter().enumerate() {
            if !FROM_FACTS.contains(&fact.component.as_str()) {
                return Err(FactsError(format!(
                    "facts[{index}]: component `{}` is not one the events cannot give; one of {}",
                    fact.component,
                    FROM_FACTS.join(", ")
                )));
            }
            if !fact.points.is_finite() || fact.points < 0.0 {
                return Err(FactsError(format!(
                    "facts[{index}]: points must be a number ≥ 0"
                )));
            }
            if let Some(unit) = &fact.unit_id {
                if units.find(unit).is_none() {
                    return Err(FactsError(format!(
                        "facts[{index}]: unit `{unit}` is not in the units file"
                    )));
                }
            }
        }
        Ok(ScoreFacts { facts: file.facts })
    }

    fn points(&self, component: &str, year: i32, lineage: &[&str]) -> Option<f64> {
        let distance = |fact: &Fact| match &fact.unit_id {
            None => Some(lineage.len()),
            Some(unit) => lineage.iter().position(|id| id == unit),
        };
        self.facts
            .iter()
            .filter(|fact| fact.component == component && fact.year.is_none_or(|y| y == year))
            .filter_map(|fact| distance(fact).map(|d| (d, fact.year.is_none(), fact.points)))
            .min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)))
            .map(|(_, _, points)| points)
    }
}

pub fn reply(
    api: &KpiApi,
    caller: Option<&Caller>,
    request: pb::GetScoresRequest,
) -> Result<pb::ScoresReply, Status> {
    let (unit, period) =
        api.parse_request(caller, ("unit_id", &request.unit_id), &request.period)?;
    let unit = api.units.unit(unit);
    let now = Moment::from((api.clock)());
    let (first, last) = (
        Day::from_date(period.first_day),
        Day::from_date(period.last_day),
    );
    let snapshot = api
        .views
        .current()
        .score_inputs(&unit.id, first, last, now)
        .map_err(internal)?;
    let inputs = ScoreInputs {
        period: &snapshot.period,
        through_end: &snapshot.through_end,
        before_start: &snapshot.before_start,
        // A period not over yet ends now: the cases open now.
        now: (last >= now.local_day()).then_some(snapshot.live),
    };
    let lineage = api
        .units
        .lineage_ids(&unit.id, last)
        .unwrap_or_else(|| vec![unit.id.as_str()]);
    let year = period.target_year();
    let facts = |component: &str| api.facts.points(component, year, &lineage);
    let components = scores(&inputs, &facts);
    let (points, max_points) = totals(&components);
    Ok(pb::ScoresReply {
        unit_id: unit.id.clone(),
        unit_name: unit.name.clone(),
        period: period.label.clone(),
        first_day: period.first_day.to_string(),
        last_day: period.last_day.to_string(),
        components: components
            .into_iter()
            .map(|component| pb::ScoreComponent {
                code: component.code.to_owned(),
                group: component.group.to_owned(),
                numerator: component.numerator,
                denominator: component.denominator,
                rate: component.rate,
                points: component.points,
                max_points: component.max_points,
                reason: component.reason,
            })
            .collect(),
        points,
        max_points,
        stream_sequence: snapshot.sequence,
    })
}
