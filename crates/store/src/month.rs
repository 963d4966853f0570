//! One unit's counters for one calendar month, in one stored value.
//!
//! Row 0 holds the month's total, rows 1 to 31 the days. A batch touching
//! many days of a month writes one key instead of one per day, and a period
//! of whole months reads one row per month: a year is one scan of twelve
//! values. The value starts with the row width (counters per row, u16 LE),
//! so rows written before counters were added still read, as zeros.

use kpi_domain::{Counter, CounterDelta, Counters};

/// Row 0: the month's total; rows 1..=31: the days of the month.
pub const ROWS: usize = 32;
const WIDTH: usize = kpi_domain::counters::COUNTER_COUNT;
const HEADER: usize = 2;

/// The row width of a stored month, checked against its length: a value
/// that is not what was written is damage, never read as zeros.
fn width_of(bytes: &[u8]) -> Result<usize, String> {
    let [low, high, ..] = bytes else {
        return Err(format!("{} bytes: no row width", bytes.len()));
    };
    let width = u16::from_le_bytes([*low, *high]) as usize;
    if width == 0 || width > WIDTH || bytes.len() != HEADER + ROWS * width * 4 {
        return Err(format!(
            "{} bytes for rows of {width} counters (this build writes {WIDTH})",
            bytes.len()
        ));
    }
    Ok(width)
}

/// One row of a stored month (0 for the total, else the day of the month).
/// Counters added after the value was written read 0.
pub fn row(bytes: &[u8], row: usize) -> Result<Counters, String> {
    let width = width_of(bytes)?;
    let start = HEADER + row.min(ROWS - 1) * width * 4;
    Ok(Counters::from_bytes(&bytes[start..start + width * 4]))
}

/// The sum of days `first..=last` (days of the month, 1-based).
pub fn days(bytes: &[u8], first: usize, last: usize) -> Result<Counters, String> {
    let mut sum = Counters::default();
    for day in first.max(1)..=last.min(ROWS - 1) {
        sum.add(&row(bytes, day)?);
    }
    Ok(sum)
}

/// A month being changed.
pub struct MonthCounters {
    rows: Vec<Counters>,
}

impl MonthCounters {
    pub fn decode(bytes: Option<&[u8]>) -> Result<MonthCounters, String> {
        let rows = (0..ROWS)
            .map(|index| bytes.map_or_else(|| Ok(Counters::default()), |bytes| row(bytes, index)))
            .collect::<Result<_, _>>()?;
        Ok(MonthCounters { rows })
    }

    /// Applies a day's change to that day and to the total. Returns the
    /// first counter that would have gone below zero, if any.
    pub fn apply(&mut self, day_of_month: usize, delta: &CounterDelta) -> Result<(), Counter> {
        let day = self.rows[day_of_month.clamp(1, ROWS - 1)].apply(delta);
        let total = self.rows[0].apply(delta);
        day.and(total)
    }

    pub fn is_zero(&self) -> bool {
        self.rows.iter().all(Counters::is_zero)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER + ROWS * WIDTH * 4);
        bytes.extend_from_slice(&(WIDTH as u16).to_le_bytes());
        for row in &self.rows {
            bytes.extend_from_slice(&row.to_bytes());
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_total_round_trip() {
        let mut month = MonthCounters::decode(None).unwrap();
        let mut delta = CounterDelta::default();
        delta.change(Counter::Received, 2);
        month.apply(3, &delta).unwrap();
        month.apply(31, &delta).unwrap();
        let bytes = month.encode();
        assert_eq!(row(&bytes, 0).unwrap()[Counter::Received], 4);
        assert_eq!(days(&bytes, 1, 3).unwrap()[Counter::Received], 2);
        assert_eq!(days(&bytes, 4, 30).unwrap()[Counter::Received], 0);
        assert_eq!(days(&bytes, 1, 31).unwrap()[Counter::Received], 4);
        let mut again = MonthCounters::decode(Some(&bytes)).unwrap();
        delta.change(Counter::Received, -4);
        again.apply(3, &delta).unwrap();
        again.apply(31, &delta).unwrap();
        assert!(again.is_zero());
    }

    #[test]
    fn a_value_with_narrower_rows_reads_as_zeros_beyond_them() {
        let mut bytes = 1u16.to_le_bytes().to_vec();
        for value in 0..ROWS as u32 {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        assert_eq!(row(&bytes, 5).unwrap()[Counter::Received], 5);
        assert_eq!(row(&bytes, 5).unwrap()[Counter::ReceivedOnline], 0);
    }

    #[test]
    fn a_damaged_value_is_an_error_not_zeros() {
        let month = MonthCounters::decode(None).unwrap().encode();
        for damaged in [&month[..1], &month[..month.len() - 1], &[0, 0][..]] {
            assert!(row(damaged, 0).is_err());
            assert!(MonthCounters::decode(Some(damaged)).is_err());
        }
        let mut wider = month.clone();
        wider[..2].copy_from_slice(&((WIDTH + 1) as u16).to_le_bytes());
        assert!(row(&wider, 0).is_err());
    }
}
