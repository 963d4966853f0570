//! The example scenario of `tests/data/example` and the one comparison of
//! answers with its `expected.json`, shared by the domain, store and
//! end-to-end tests so that all of them check the same thing.

pub mod reform;

use serde::Deserialize;

/// The scenario's unit registry.
pub const UNITS_JSON: &[u8] = include_bytes!("../../../tests/data/example/units.json");
/// The 776 lines of the scenario, in arrival order.
pub const EVENTS_NDJSON: &[u8] = include_bytes!("../../../tests/data/example/events.ndjson");
const EXPECTED_JSON: &[u8] = include_bytes!("../../../tests/data/example/expected.json");

/// The 1-based numbers of the scenario's invalid lines, one of each
/// mistake of CONTRACT §2: rating level, unknown kind, unknown unit,
/// negative amount, unknown channel, malformed JSON, time without offset,
/// bad event id (and missing fields), case id too long, due before
/// received.
pub const INVALID_LINES: [usize; 10] = [50, 84, 114, 142, 281, 283, 328, 651, 652, 771];

/// Where the scenario files are on disk (for tools that take a path).
pub fn example_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/example")
        .join(name)
}

/// The non-empty lines of `events.ndjson`, with their 1-based line numbers.
pub fn event_lines() -> Vec<(usize, &'static [u8])> {
    EVENTS_NDJSON
        .split(|byte| *byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| (index + 1, line))
        .collect()
}

/// The subject a publisher would put a raw line on: `cases.<unit_id>.<kind>`
/// as the line says, or a catch-all subject for lines that do not say.
pub fn subject_of(line: &[u8]) -> String {
    let token = |value: &serde_json::Value, key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            })
            .map(str::to_owned)
    };
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|value| {
            Some(format!(
                "cases.{}.{}",
                token(&value, "unit_id")?,
                token(&value, "kind")?
            ))
        })
        .unwrap_or_else(|| "cases.unknown.unparsable".to_owned())
}

#[derive(Debug, Clone, Deserialize)]
pub struct Expected {
    pub rejected_lines: usize,
    pub live_counts_assume_now_after: String,
    pub queries: Vec<ExpectedQuery>,
    /// What `GetCaseFlow` answers (§9).
    #[serde(default)]
    pub case_flow: Vec<ExpectedCaseFlow>,
    /// What `ListLate` lists (§9).
    #[serde(default)]
    pub late: Vec<ExpectedLate>,
}

/// One `GetCaseFlow` answer of the example.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedCaseFlow {
    pub unit_id: String,
    pub period: String,
    /// `unit`, `field` or `procedure`.
    pub group_by: String,
    pub as_of: String,
    pub rows: Vec<ExpectedFlowRow>,
    pub total: FlowColumns,
}

/// A report's columns by their §9 names.
pub type FlowColumns = std::collections::BTreeMap<String, u64>;

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedFlowRow {
    pub key: String,
    pub flow: FlowColumns,
}

/// One `ListLate` answer of the example: the cases and their days late.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedLate {
    pub unit_id: String,
    pub period: String,
    pub cases: Vec<ExpectedLateCase>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct ExpectedLateCase {
    pub case_id: String,
    pub days_late: u64,
}

/// What differs between an expected late list and the (case, days late)
/// pairs answered, in any order.
pub fn late_differences(
    expected: &ExpectedLate,
    found: impl IntoIterator<Item = (String, u64)>,
) -> Vec<String> {
    let mut found: Vec<ExpectedLateCase> = found
        .into_iter()
        .map(|(case_id, days_late)| ExpectedLateCase { case_id, days_late })
        .collect();
    found.sort();
    let mut wanted = expected.cases.clone();
    wanted.sort();
    if found == wanted {
        return Vec::new();
    }
    vec![format!(
        "late {} {}: {found:?}, expected {wanted:?}",
        expected.unit_id, expected.period
    )]
}

/// A report's columns by name, as expected.json writes them.
pub fn flow_columns(flow: &kpi_domain::CaseFlow) -> FlowColumns {
    kpi_domain::CASE_FLOW_COLUMNS
        .iter()
        .zip(flow.values())
        .map(|(name, value)| ((*name).to_owned(), value))
        .collect()
}

/// What differs between an expected report and one answered as `as_of`,
/// `rows` (key, columns) and `total`.
pub fn flow_differences(
    expected: &ExpectedCaseFlow,
    as_of: &str,
    rows: &[(String, FlowColumns)],
    total: &FlowColumns,
) -> Vec<String> {
    let what = format!(
        "{} {} by {}",
        expected.unit_id, expected.period, expected.group_by
    );
    let mut differences = Vec::new();
    if as_of != expected.as_of {
        differences.push(format!(
            "{what}: as_of {as_of}, expected {}",
            expected.as_of
        ));
    }
    let wanted: Vec<(String, FlowColumns)> = expected
        .rows
        .iter()
        .map(|row| (row.key.clone(), row.flow.clone()))
        .collect();
    if rows != wanted.as_slice() {
        differences.push(format!("{what}: rows {rows:?}, expected {wanted:?}"));
    }
    if *total != expected.total {
        differences.push(format!(
            "{what}: total {total:?}, expected {:?}",
            expected.total
        ));
    }
    differences
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedQuery {
    pub unit_id: String,
    pub period: String,
    pub first_day: String,
    pub last_day: String,
    pub rates: std::collections::BTreeMap<String, ExpectedRate>,
    pub live: ExpectedLive,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExpectedRate {
    pub numerator: u64,
    pub denominator: u64,
    pub percent: Option<f64>,
    pub target_percent: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ExpectedLive {
    pub open: u64,
    pub overdue_open: u64,
    pub overdue_without_apology: u64,
}

pub fn expected() -> Expected {
    serde_json::from_slice(EXPECTED_JSON).expect("tests/data/example/expected.json is valid")
}

/// An answer as any layer gives it, for comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub first_day: String,
    pub last_day: String,
    /// In catalogue order, by KPI name.
    pub rates: Vec<(String, ExpectedRate)>,
    pub live: ExpectedLive,
}

impl Answer {
    /// The answer the domain gives for a period: its rates and live counts.
    pub fn from_domain(
        period: &kpi_domain::Period,
        rates: Vec<kpi_domain::Rate>,
        live: kpi_domain::LiveCounts,
    ) -> Answer {
        Answer {
            first_day: period.first_day.to_string(),
            last_day: period.last_day.to_string(),
            rates: rates
                .into_iter()
                .map(|rate| {
                    let figures = ExpectedRate {
                        numerator: rate.numerator,
                        denominator: rate.denominator,
                        percent: rate.percent,
                        target_percent: rate.target_percent,
                        met: rate.met,
                    };
                    (rate.kpi.name().to_owned(), figures)
                })
                .collect(),
            live: ExpectedLive {
                open: live.open,
                overdue_open: live.overdue_open,
                overdue_without_apology: live.overdue_without_apology,
            },
        }
    }
}

/// Every way `answer` differs from `expected` (empty when equal).
/// Numerators, denominators, targets and met must match exactly; percents
/// within 1e-4 (expected.json rounds them to 4 decimals).
pub fn differences(expected: &ExpectedQuery, answer: &Answer) -> Vec<String> {
    let label = format!("{} {}", expected.unit_id, expected.period);
    let mut found = Vec::new();
    if (answer.first_day.as_str(), answer.last_day.as_str())
        != (expected.first_day.as_str(), expected.last_day.as_str())
    {
        found.push(format!(
            "{label}: days {}..{}, want {}..{}",
            answer.first_day, answer.last_day, expected.first_day, expected.last_day
        ));
    }
    let answered: Vec<&str> = answer.rates.iter().map(|(name, _)| name.as_str()).collect();
    for name in expected.rates.keys() {
        if !answered.contains(&name.as_str()) {
            found.push(format!("{label}: {name} missing from the answer"));
        }
    }
    for (name, got) in &answer.rates {
        let Some(want) = expected.rates.get(name) else {
            found.push(format!("{label}: unexpected KPI {name}"));
            continue;
        };
        let exact = (got.numerator, got.denominator, got.target_percent, got.met);
        let wanted = (
            want.numerator,
            want.denominator,
            want.target_percent,
            want.met,
        );
        if exact != wanted {
            found.push(format!("{label} {name}: (numerator, denominator, target, met) = {exact:?}, want {wanted:?}"));
        }
        let percent_matches = match (got.percent, want.percent) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-4,
            (None, None) => true,
            _ => false,
        };
        if !percent_matches {
            found.push(format!(
                "{label} {name}: percent {:?}, want {:?}",
                got.percent, want.percent
            ));
        }
    }
    if answer.live != expected.live {
        found.push(format!(
            "{label}: live {:?}, want {:?}",
            answer.live, expected.live
        ));
    }
    found
}
