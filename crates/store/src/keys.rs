//! The layout of the single sled tree that holds every view.
//!
//! One tree, so that a batch of changes and the checkpoint it reflects are
//! written by one atomic `apply_batch`. Each kind of entry has a one-byte
//! prefix; unit ids never contain a NUL byte, so `unit + NUL` bounds a
//! unit's range.
//!
//! | prefix | key after the prefix | value |
//! |---|---|---|
//! | `c` | case code | postcard [`Record`](kpi_domain::Record), with its event ids |
//! | `f` | feedback code | postcard [`Record`](kpi_domain::Record) |
//! | `M` (`K`) | unit, NUL, month | the month's total counters, then its days' (see `rows.rs`) |
//! | `o` (`O`) | unit, NUL, local due day | open, open without apology: u32 LE |
//! | `t` (`T`) | unit, NUL | open, open without apology, over every due day |
//! | `x` (`X`) | unit, NUL, due instant, case code | 1 if an apology letter exists |
//! | `p` | stream sequence, u64 BE | postcard [`ParkedEvent`](crate::ParkedEvent) |
//! | `h` | `c` or `f`, case code | postcard [`HeldEntry`](kpi_domain::HeldEntry): a record whose received event has not arrived |
//! | `m` | name | metadata (checkpoint, units, statistics, format) |
//! | `w`, `l` | see `flow.rs` | the case-flow report's rows and late-case index |
//!
//! The rollups (`M`, `o`, `t`, `x`) come in two generations of prefixes
//! ([`GENERATIONS`]): a recomputation from the case records writes the
//! generation queries do not read, in bounded chunks, then switches to it
//! in one small write ([`ROLLUP_GENERATION`]) and removes the other.

use chrono::{Datelike, NaiveDate};
use kpi_domain::{Day, Moment, RecordKey};

pub const CASE: u8 = b'c';
pub const FEEDBACK: u8 = b'f';
pub const MONTH_COUNTERS: u8 = b'M';
pub const OPEN_BY_DUE_DAY: u8 = b'o';
pub const OPEN_TOTAL: u8 = b't';
pub const OPEN_INDEX: u8 = b'x';
pub const PARKED: u8 = b'p';
pub const HELD: u8 = b'h';

pub const CHECKPOINT: &[u8] = b"m/checkpoint";
/// The unit registry the rollups were computed with (its fingerprint).
pub const ROLLUP_UNITS: &[u8] = b"m/rollup-units";
/// The day whose tree the open cases are counted by.
pub const LIVE_DAY: &[u8] = b"m/live-day";
pub const STATS: &[u8] = b"m/stats";
pub const FORMAT: &[u8] = b"m/format";
/// The counting rules the views were folded with.
pub const RULES: &[u8] = b"m/rules";
/// The stream sequence and store time (Unix nanoseconds) of the last
/// message folded: compared with the stream to notice it changed.
pub const LAST_MESSAGE: &[u8] = b"m/last-message";
pub const STREAM: &[u8] = b"m/stream";
/// Which of the [`GENERATIONS`] of rollups queries read (one byte; absent:
/// the first).
pub const ROLLUP_GENERATION: &[u8] = b"m/rollup-generation";

/// The prefixes of one generation of the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollups {
    pub month: u8,
    pub open_by_due_day: u8,
    pub open_total: u8,
    pub open_index: u8,
}

/// The two generations; the first is the layout's plain prefixes.
pub const GENERATIONS: [Rollups; 2] = [
    Rollups {
        month: MONTH_COUNTERS,
        open_by_due_day: OPEN_BY_DUE_DAY,
        open_total: OPEN_TOTAL,
        open_index: OPEN_INDEX,
    },
    Rollups {
        month: b'K',
        open_by_due_day: b'O',
        open_total: b'T',
        open_index: b'X',
    },
];

impl Rollups {
    pub fn prefixes(self) -> [u8; 4] {
        [
            self.month,
            self.open_by_due_day,
            self.open_total,
            self.open_index,
        ]
    }

    pub fn unit_month(self, unit_id: &str, month: Month) -> Vec<u8> {
        let mut bytes = unit_prefix(self.month, unit_id);
        bytes.extend_from_slice(&((month.0 as u32) ^ 0x8000_0000).to_be_bytes());
        bytes
    }

    pub fn open_index(self, unit_id: &str, due_at: Moment, case_id: &str) -> Vec<u8> {
        let mut bytes = self.open_index_at(unit_id, due_at);
        bytes.extend_from_slice(case_id.as_bytes());
        bytes
    }

    /// The open-index position of a unit at an instant, before any case
    /// code.
    pub fn open_index_at(self, unit_id: &str, at: Moment) -> Vec<u8> {
        let mut bytes = unit_prefix(self.open_index, unit_id);
        bytes.extend_from_slice(&moment(at));
        bytes
    }

    /// A key of this generation under the first generation's prefix: two
    /// stores compare alike whichever generation each reads.
    pub fn canonical(self, key: &[u8]) -> Vec<u8> {
        let mut key = key.to_vec();
        if let Some(first) = key.first_mut() {
            if let Some(position) = self.prefixes().iter().position(|p| p == first) {
                *first = GENERATIONS[0].prefixes()[position];
            }
        }
        key
    }
}

/// Prefixes of the entries that make up the views (everything but
/// metadata and parked events), the rollups in their first generation:
/// what two folds of the same log must share.
pub const VIEW_PREFIXES: &[u8] = &[
    CASE,
    FEEDBACK,
    MONTH_COUNTERS,
    OPEN_BY_DUE_DAY,
    OPEN_TOTAL,
    OPEN_INDEX,
    crate::flow::FLOW_UNIT,
    crate::flow::LATE,
];

/// A held record: `h`, then the record's own key.
pub fn held(key: &RecordKey) -> Vec<u8> {
    let mut bytes = vec![HELD];
    bytes.extend_from_slice(&record(key));
    bytes
}

pub fn record(key: &RecordKey) -> Vec<u8> {
    let (prefix, code) = match key {
        RecordKey::Case(code) => (CASE, code),
        RecordKey::Feedback(code) => (FEEDBACK, code),
    };
    let mut bytes = Vec::with_capacity(1 + code.len());
    bytes.push(prefix);
    bytes.extend_from_slice(code.as_bytes());
    bytes
}

/// `prefix`, unit, NUL: the start of a unit's range.
pub fn unit_prefix(prefix: u8, unit_id: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(unit_id.len() + 18);
    bytes.push(prefix);
    bytes.extend_from_slice(unit_id.as_bytes());
    bytes.push(0);
    bytes
}

pub fn unit_day(prefix: u8, unit_id: &str, day: Day) -> Vec<u8> {
    let mut bytes = unit_prefix(prefix, unit_id);
    bytes.extend_from_slice(&day.to_key());
    bytes
}

/// A calendar month, as months since January of year 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(i32);

impl Month {
    pub fn of(day: Day) -> Month {
        let date = day.to_date();
        Month(date.year() * 12 + date.month0() as i32)
    }

    /// The month's first and last days.
    pub fn days(self) -> (Day, Day) {
        let (year, month0) = (self.0.div_euclid(12), self.0.rem_euclid(12) as u32);
        let first = NaiveDate::from_ymd_opt(year, month0 + 1, 1).unwrap_or(NaiveDate::MIN);
        let next = Month(self.0 + 1);
        let next_first =
            NaiveDate::from_ymd_opt(next.0.div_euclid(12), next.0.rem_euclid(12) as u32 + 1, 1)
                .unwrap_or(NaiveDate::MAX);
        let last = next_first.pred_opt().unwrap_or(NaiveDate::MAX);
        (Day::from_date(first), Day::from_date(last))
    }

    /// The month's day `day_of_month` (1 to 31), if it has one.
    pub fn day(self, day_of_month: u8) -> Option<Day> {
        let first = self.days().0.to_date();
        first.with_day(u32::from(day_of_month)).map(Day::from_date)
    }
}

/// A day's place in its month (1 to 31), as a month's value keeps its days.
pub fn day_of_month(day: Day) -> u8 {
    day.to_date().day() as u8
}

/// The unit of a `unit_prefix`-based key (up to the NUL after the prefix).
pub fn unit_of(key: &[u8]) -> Option<String> {
    let rest = key.get(1..)?;
    let end = rest.iter().position(|byte| *byte == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// The month at the end of a `unit_month` key.
pub fn month_of(key: &[u8]) -> Option<Month> {
    let tail: [u8; 4] = key.get(key.len().checked_sub(4)?..)?.try_into().ok()?;
    Some(Month((u32::from_be_bytes(tail) ^ 0x8000_0000) as i32))
}

/// Twelve bytes that sort like the instants they encode.
pub fn moment(at: Moment) -> [u8; 12] {
    let mut bytes = [0; 12];
    bytes[..8].copy_from_slice(&((at.unix_seconds() as u64) ^ (1 << 63)).to_be_bytes());
    bytes[8..].copy_from_slice(&at.subsec_nanos().to_be_bytes());
    bytes
}

/// The instant encoded by [`moment`].
pub fn moment_from(bytes: &[u8]) -> Option<Moment> {
    let seconds: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let nanos: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    Some(Moment::from_parts(
        (u64::from_be_bytes(seconds) ^ (1 << 63)) as i64,
        u32::from_be_bytes(nanos),
    ))
}

pub fn parked(sequence: u64) -> [u8; 9] {
    let mut bytes = [PARKED; 9];
    bytes[1..].copy_from_slice(&sequence.to_be_bytes());
    bytes
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(text: &str) -> Moment {
        Moment::from(DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn moments_sort_like_instants_including_before_1970() {
        let times = [
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "2024-03-15T08:30:00.5+07:00",
            "2024-03-15T08:30:00.6+07:00",
        ];
        let keys: Vec<_> = times.iter().map(|t| moment(at(t))).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        for (text, key) in times.iter().zip(&keys) {
            assert_eq!(moment_from(key), Some(at(text)));
        }
    }

    #[test]
    fn a_unit_range_does_not_reach_units_with_longer_ids() {
        let a = unit_prefix(MONTH_COUNTERS, "C1");
        let b = unit_prefix(MONTH_COUNTERS, "C10");
        assert!(!b.starts_with(&a));
    }

    #[test]
    fn months_know_their_days() {
        let day = Day::from_date(NaiveDate::from_ymd_opt(2024, 2, 17).unwrap());
        let (first, last) = Month::of(day).days();
        assert_eq!(first.to_date().to_string(), "2024-02-01");
        assert_eq!(last.to_date().to_string(), "2024-02-29");
        let december = Day::from_date(NaiveDate::from_ymd_opt(2024, 12, 31).unwrap());
        assert_eq!(Month::of(december).days().1, december);
        let rollups = GENERATIONS[0];
        assert!(
            rollups.unit_month("C1", Month::of(day))
                < rollups.unit_month("C1", Month::of(december))
        );
        let other = GENERATIONS[1].unit_month("C1", Month::of(day));
        assert_eq!(
            GENERATIONS[1].canonical(&other),
            rollups.unit_month("C1", Month::of(day))
        );
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
    }
}
