//! Instants and Vietnam-local days.
//!
//! Every day boundary of the contract is in Vietnam time (UTC+07:00, no
//! daylight saving), whatever offset an event was sent with.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// UTC+07:00.
pub use kpi_events::vietnam;

/// An exact instant, compact in stored records and totally ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Moment {
    secs: i64,
    nanos: u32,
}

impl<Tz: TimeZone> From<DateTime<Tz>> for Moment {
    fn from(time: DateTime<Tz>) -> Self {
        Moment {
            secs: time.timestamp(),
            nanos: time.timestamp_subsec_nanos(),
        }
    }
}

impl Moment {
    pub fn to_utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.secs, self.nanos).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The Vietnam-local date of this instant.
    pub fn local_day(self) -> Day {
        Day::from_date(self.to_utc().with_timezone(&vietnam()).date_naive())
    }

    /// Seconds since the Unix epoch, for ordered storage keys.
    pub fn unix_seconds(self) -> i64 {
        self.secs
    }

    pub fn subsec_nanos(self) -> u32 {
        self.nanos
    }

    pub fn from_parts(secs: i64, nanos: u32) -> Self {
        Moment { secs, nanos }
    }

    /// The first instant of a Vietnam-local day.
    pub fn start_of(day: Day) -> Moment {
        let midnight = day.to_date().and_hms_opt(0, 0, 0).expect("midnight exists");
        let local = vietnam()
            .from_local_datetime(&midnight)
            .single()
            .expect("a fixed offset has no gaps");
        Moment::from(local)
    }
}

/// A Vietnam-local calendar day, as days since 1 January of year 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Day(i32);

impl Day {
    pub fn from_date(date: NaiveDate) -> Day {
        Day(date.num_days_from_ce())
    }

    pub fn to_date(self) -> NaiveDate {
        NaiveDate::from_num_days_from_ce_opt(self.0).unwrap_or(NaiveDate::MIN)
    }

    /// Four bytes that sort like the days they encode.
    pub fn to_key(self) -> [u8; 4] {
        ((self.0 as u32) ^ 0x8000_0000).to_be_bytes()
    }

    pub fn from_key(bytes: [u8; 4]) -> Day {
        Day((u32::from_be_bytes(bytes) ^ 0x8000_0000) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Moment {
        Moment::from(DateTime::parse_from_rfc3339(text).unwrap())
    }

    #[test]
    fn local_day_is_taken_in_vietnam_time() {
        // 18:30 UTC on 14 March is 01:30 on 15 March in Vietnam.
        let day = at("2024-03-14T18:30:00Z").local_day();
        assert_eq!(day.to_date(), NaiveDate::from_ymd_opt(2024, 3, 15).unwrap());
        let day = at("2024-03-15T23:59:59.999+07:00").local_day();
        assert_eq!(day.to_date(), NaiveDate::from_ymd_opt(2024, 3, 15).unwrap());
    }

    #[test]
    fn moments_compare_as_instants_across_offsets() {
        assert_eq!(at("2024-03-15T08:30:00+07:00"), at("2024-03-15T01:30:00Z"));
        assert!(at("2024-03-15T08:30:00.000001+07:00") > at("2024-03-15T01:30:00Z"));
    }

    #[test]
    fn day_keys_sort_like_days() {
        let a = Day::from_date(NaiveDate::from_ymd_opt(2024, 12, 31).unwrap());
        let b = Day::from_date(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        assert!(a.to_key() < b.to_key());
        assert_eq!(Day::from_key(b.to_key()), b);
    }

    #[test]
    fn start_of_day_is_local_midnight() {
        let day = Day::from_date(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        assert_eq!(Moment::start_of(day), at("2024-12-31T17:00:00Z"));
    }
}
