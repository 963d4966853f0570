//! Periods (§4): calendar, 15th-to-14th reporting, and free day ranges.
//!
//! Every period is an inclusive range of Vietnam-local days; since counters
//! are kept per day, any period is a sum over its days.

use chrono::{Datelike, NaiveDate};

/// The accepted forms, for error messages.
pub const PERIOD_FORMS: &str =
    "2024 (year), 2024-H1 or 2024-H2 (half), 2024-Q1 to 2024-Q4 (quarter), \
2024-03 (month), 2024-03-15 (day), R2024 (reporting year, 15 Dec 2023 to 14 Dec 2024), \
R2024-Q1 to R2024-Q4 (reporting quarter), R2024-6M or R2024-9M (reporting 6 or 9 months), \
R2024-03 (reporting month, 15 Feb to 14 Mar), 2024-03-15..2024-06-14 (inclusive day range)";

/// A period that is not one of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period `{text}` is not valid: {reason}; accepted forms: {PERIOD_FORMS}")]
pub struct PeriodError {
    pub text: String,
    pub reason: String,
}

/// A named, inclusive range of Vietnam-local days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub label: String,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
}

impl Period {
    pub fn parse(text: &str) -> Result<Period, PeriodError> {
        let fail = |reason: &str| PeriodError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (first_day, last_day) = if let Some((from, to)) = text.split_once("..") {
            let first =
                parse_day(from).ok_or_else(|| fail("the range start is not a date YYYY-MM-DD"))?;
            let last =
                parse_day(to).ok_or_else(|| fail("the range end is not a date YYYY-MM-DD"))?;
            if last < first {
                return Err(fail("the range ends before it starts"));
            }
            (first, last)
        } else if let Some(reporting) = text.strip_prefix('R') {
            reporting_span(reporting).map_err(|reason| fail(&reason))?
        } else {
            calendar_span(text).map_err(|reason| fail(&reason))?
        };
        Ok(Period {
            label: text.to_owned(),
            first_day,
            last_day,
        })
    }

    /// The year whose targets apply: the year of the period's first day
    /// (so `R2025`, which starts on 15 Dec 2024, is judged by 2024's targets).
    pub fn target_year(&self) -> i32 {
        self.first_day.year()
    }
}

fn parse_year(text: &str) -> Option<i32> {
    (text.len() == 4 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
        .filter(|year| *year >= 1)
}

fn parse_number(text: &str, digits: usize) -> Option<u32> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn parse_day(text: &str) -> Option<NaiveDate> {
    let mut parts = text.split('-');
    let year = parse_year(parts.next()?)?;
    let month = parse_number(parts.next()?, 2)?;
    let day = parse_number(parts.next()?, 2)?;
    if parts.next().is_some() {
        return None;
    }
    NaiveDate::from_ymd_opt(year, month, day)
}

fn date(year: i32, month: u32, day: u32) -> Result<NaiveDate, String> {
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| "the year is out of range".to_owned())
}

fn last_of_month(year: i32, month: u32) -> Result<NaiveDate, String> {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    Ok(date(next_year, next_month, 1)?
        .pred_opt()
        .ok_or("the year is out of range")?)
}

/// The two characters after the year's dash, read as a month (`03`); a
/// quarter or half that does not exist (`Q5`, `H3`) is named as such.
fn month_number(text: &str) -> Result<u32, String> {
    if text.starts_with('Q') {
        return Err(format!("`{text}` is not a quarter: Q1 to Q4"));
    }
    if text.starts_with('H') {
        return Err(format!("`{text}` is not a half-year: H1 or H2"));
    }
    parse_number(text, 2)
        .filter(|month| (1..=12).contains(month))
        .ok_or_else(|| format!("`{text}` is not a month 01 to 12"))
}

/// `2024`, `2024-H1`, `2024-Q3`, `2024-03`, `2024-03-15`.
fn calendar_span(text: &str) -> Result<(NaiveDate, NaiveDate), String> {
    let (year_text, rest) = text.split_once('-').unwrap_or((text, ""));
    let year = parse_year(year_text).ok_or("it does not start with a four-digit year")?;
    let months = |first: u32, last: u32| Ok((date(year, first, 1)?, last_of_month(year, last)?));
    match rest {
        "" => months(1, 12),
        "H1" => months(1, 6),
        "H2" => months(7, 12),
        "Q1" => months(1, 3),
        "Q2" => months(4, 6),
        "Q3" => months(7, 9),
        "Q4" => months(10, 12),
        _ if rest.len() == 2 => {
            let month = month_number(rest)?;
            months(month, month)
        }
        _ => {
            let day = parse_day(text).ok_or("it is not a year, half, quarter, month or date")?;
            Ok((day, day))
        }
    }
}

/// The reporting forms after the `R`: `2024`, `2024-Q1`, `2024-6M`,
/// `2024-9M`, `2024-03`. Each runs from the 15th of a month to the 14th.
fn reporting_span(text: &str) -> Result<(NaiveDate, NaiveDate), String> {
    let (year_text, rest) = text.split_once('-').unwrap_or((text, ""));
    let year = parse_year(year_text).ok_or("R must be followed by a four-digit year")?;
    // From the 15th of the month before `first` to the 14th of `last`.
    let months = |first: u32, last: u32| {
        let start = if first == 1 {
            date(year - 1, 12, 15)?
        } else {
            date(year, first - 1, 15)?
        };
        Ok((start, date(year, last, 14)?))
    };
    match rest {
        "" => months(1, 12),
        "Q1" => months(1, 3),
        "Q2" => months(4, 6),
        "Q3" => months(7, 9),
        "Q4" => months(10, 12),
        "6M" => months(1, 6),
        "9M" => months(1, 9),
        _ if rest.starts_with('H') => Err(format!(
            "`{rest}`: a reporting year has no halves; its first six months are R{year_text}-6M"
        )),
        _ if rest.len() == 2 => {
            let month = month_number(rest)?;
            months(month, month)
        }
        _ => Err(
            "a reporting period is R2024, R2024-Q1..Q4, R2024-6M, R2024-9M or R2024-01..12".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(text: &str) -> (String, String) {
        let period = Period::parse(text).unwrap_or_else(|err| panic!("{err}"));
        (period.first_day.to_string(), period.last_day.to_string())
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn calendar_periods() {
        assert_eq!(span("2024"), pair("2024-01-01", "2024-12-31"));
        assert_eq!(span("2024-H1"), pair("2024-01-01", "2024-06-30"));
        assert_eq!(span("2024-H2"), pair("2024-07-01", "2024-12-31"));
        assert_eq!(span("2024-Q1"), pair("2024-01-01", "2024-03-31"));
        assert_eq!(span("2024-Q4"), pair("2024-10-01", "2024-12-31"));
        assert_eq!(span("2024-02"), pair("2024-02-01", "2024-02-29"));
        assert_eq!(span("2025-02"), pair("2025-02-01", "2025-02-28"));
        assert_eq!(span("2024-12"), pair("2024-12-01", "2024-12-31"));
        assert_eq!(span("2024-03-15"), pair("2024-03-15", "2024-03-15"));
    }

    #[test]
    fn reporting_periods_run_from_the_15th_to_the_14th() {
        assert_eq!(span("R2024"), pair("2023-12-15", "2024-12-14"));
        assert_eq!(span("R2024-Q1"), pair("2023-12-15", "2024-03-14"));
        assert_eq!(span("R2024-Q2"), pair("2024-03-15", "2024-06-14"));
        assert_eq!(span("R2024-Q3"), pair("2024-06-15", "2024-09-14"));
        assert_eq!(span("R2024-Q4"), pair("2024-09-15", "2024-12-14"));
        assert_eq!(span("R2024-6M"), pair("2023-12-15", "2024-06-14"));
        assert_eq!(span("R2024-9M"), pair("2023-12-15", "2024-09-14"));
        assert_eq!(span("R2024-03"), pair("2024-02-15", "2024-03-14"));
        assert_eq!(span("R2024-01"), pair("2023-12-15", "2024-01-14"));
    }

    #[test]
    fn day_ranges_are_inclusive() {
        assert_eq!(
            span("2024-03-15..2024-06-14"),
            pair("2024-03-15", "2024-06-14")
        );
        assert_eq!(
            span("2024-03-15..2024-03-15"),
            pair("2024-03-15", "2024-03-15")
        );
    }

    #[test]
    fn a_quarter_or_half_that_does_not_exist_is_not_called_a_month() {
        for (bad, reason) in [
            ("R2025-Q5", "`Q5` is not a quarter: Q1 to Q4"),
            ("2025-Q0", "`Q0` is not a quarter: Q1 to Q4"),
            ("2025-H3", "`H3` is not a half-year: H1 or H2"),
            ("R2025-13", "`13` is not a month 01 to 12"),
            ("R2025-H1", "its first six months are R2025-6M"),
        ] {
            let err = Period::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(reason), "{bad}: {err}");
            assert!(
                !err.contains("is not a month") || reason.contains("is not a month"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn targets_follow_the_year_of_the_first_day() {
        assert_eq!(Period::parse("R2025").unwrap().target_year(), 2024);
        assert_eq!(Period::parse("2025-Q1").unwrap().target_year(), 2025);
    }

    #[test]
    fn anything_else_is_rejected_with_the_accepted_forms() {
        for bad in [
            "",
            "24",
            "2024-Q5",
            "2024-H3",
            "2024-13",
            "2024-00",
            "2024-02-30",
            "R2024-Q0",
            "R2024-7M",
            "R24",
            "2024-06-14..2024-03-15",
            "2024-03-15..",
            "last month",
            "2024-3",
            "R2024-H1",
            "2024-03-15..2024-06",
            "+2024",
        ] {
            let err = Period::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("accepted forms: 2024 (year)"), "{bad}: {err}");
            assert!(err.contains("R2024-6M"), "{bad}: {err}");
        }
    }
}
