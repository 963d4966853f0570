//! The layout of the single sled tree that holds every view.
//!
//! One tree, so that a batch of changes and the checkpoint it reflects are
//! written by one atomic `apply_batch`. Each kind of entry has a one-byte
//! prefix; unit ids never contain a NUL byte, so `unit + NUL` bounds a
//! unit's range.
//!
//! | prefix | key after the prefix | value |
//! |---|---|---|
//! | `c` | case code | postcard [`Record`](kpi_domain::Record) |
//! | `f` | feedback code | postcard [`Record`](kpi_domain::Record) |
//! | `e` | event id (16 bytes) | stream sequence, u64 BE |
//! | `d` | unit, NUL, local day | counters, u32 LE each |
//! | `o` | unit, NUL, local due day | open, open without apology: u32 LE |
//! | `x` | unit, NUL, due instant, case code | 1 if an apology letter exists |
//! | `p` | stream sequence, u64 BE | postcard [`ParkedEvent`](crate::ParkedEvent) |
//! | `m` | name | metadata (checkpoint, units, statistics, format) |

use kpi_domain::{Day, Moment, RecordKey};
use uuid::Uuid;

pub const CASE: u8 = b'c';
pub const FEEDBACK: u8 = b'f';
pub const EVENT: u8 = b'e';
pub const DAY_COUNTERS: u8 = b'd';
pub const OPEN_BY_DUE_DAY: u8 = b'o';
pub const OPEN_INDEX: u8 = b'x';
pub const PARKED: u8 = b'p';

pub const CHECKPOINT: &[u8] = b"m/checkpoint";
pub const UNITS: &[u8] = b"m/units";
pub const STATS: &[u8] = b"m/stats";
pub const FORMAT: &[u8] = b"m/format";

/// Prefixes of the entries that make up the views (everything but
/// metadata and parked events): what `verify` compares.
pub const VIEW_PREFIXES: &[u8] = &[
    CASE,
    FEEDBACK,
    EVENT,
    DAY_COUNTERS,
    OPEN_BY_DUE_DAY,
    OPEN_INDEX,
];

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

pub fn event(event_id: &Uuid) -> [u8; 17] {
    let mut bytes = [EVENT; 17];
    bytes[1..].copy_from_slice(event_id.as_bytes());
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

/// The day at the end of a `unit_day` key.
pub fn day_of(key: &[u8]) -> Option<Day> {
    let tail: [u8; 4] = key.get(key.len().checked_sub(4)?..)?.try_into().ok()?;
    Some(Day::from_key(tail))
}

/// Twelve bytes that sort like the instants they encode.
pub fn moment(at: Moment) -> [u8; 12] {
    let mut bytes = [0; 12];
    bytes[..8].copy_from_slice(&((at.unix_seconds() as u64) ^ (1 << 63)).to_be_bytes());
    bytes[8..].copy_from_slice(&at.subsec_nanos().to_be_bytes());
    bytes
}

pub fn open_index(unit_id: &str, due_at: Moment, case_id: &str) -> Vec<u8> {
    let mut bytes = open_index_at(unit_id, due_at);
    bytes.extend_from_slice(case_id.as_bytes());
    bytes
}

/// The open-index position of a unit at an instant, before any case code.
pub fn open_index_at(unit_id: &str, at: Moment) -> Vec<u8> {
    let mut bytes = unit_prefix(OPEN_INDEX, unit_id);
    bytes.extend_from_slice(&moment(at));
    bytes
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
    }

    #[test]
    fn a_unit_range_does_not_reach_units_with_longer_ids() {
        let a = unit_prefix(DAY_COUNTERS, "C1");
        let b = unit_prefix(DAY_COUNTERS, "C10");
        assert!(!b.starts_with(&a));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
    }
}
