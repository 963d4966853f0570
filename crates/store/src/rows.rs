//! How a set of counters is stored: a unit's month, its total and its days
//! in one value ([`MonthRows`]).
//!
//! A day of a commune moves a dozen of the counters, by small numbers, so
//! a row is written compactly: the number of counters it covers, a bitmap
//! of those that are not zero, then each of those as a LEB128 varint — a
//! few dozen bytes. A month's value is its total's row, then, for each day
//! with a counter, the day of the month (one byte, ascending) and its row:
//! a batch that changes a unit on several days of a month writes one entry
//! (sled's cost goes by the entries written, not their bytes). Rows
//! written before counters were added read them as zero; anything else
//! that does not decode is damage, never read as zeros.

use std::collections::BTreeMap;

use kpi_domain::counters::COUNTER_COUNT;
use kpi_domain::{Counter, CounterDelta, Counters};

const BITMAP_BYTES: usize = COUNTER_COUNT.div_ceil(8);

/// The stored form of `counters`.
fn encode(counters: &Counters) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + BITMAP_BYTES + 16);
    bytes.push(COUNTER_COUNT as u8);
    bytes.resize(1 + BITMAP_BYTES, 0);
    for (index, (_, value)) in counters.iter().enumerate() {
        if value == 0 {
            continue;
        }
        bytes[1 + index / 8] |= 1 << (index % 8);
        let mut rest = value;
        loop {
            let byte = (rest & 0x7f) as u8;
            rest >>= 7;
            if rest == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
    }
    bytes
}

/// Reads the stored form of one row alone (what the tests of the row
/// format read back).
#[cfg(test)]
fn decode(bytes: &[u8]) -> Result<Counters, String> {
    let (counters, rest) = decode_from(bytes)?;
    if !rest.is_empty() {
        return Err(format!("{} bytes left over", rest.len()));
    }
    Ok(counters)
}

/// The total of a stored month, without its days.
pub fn decode_total(bytes: &[u8]) -> Result<Counters, String> {
    decode_from(bytes).map(|(total, _)| total)
}

/// Reads one row from the start of `bytes`: the row, and what follows it.
fn decode_from(bytes: &[u8]) -> Result<(Counters, &[u8]), String> {
    let Some((&width, rest)) = bytes.split_first() else {
        return Err("an empty value".to_owned());
    };
    let width = width as usize;
    if width == 0 || width > COUNTER_COUNT {
        return Err(format!(
            "a row of {width} counters (this build keeps {COUNTER_COUNT})"
        ));
    }
    let bitmap_bytes = width.div_ceil(8);
    let (bitmap, mut values) = rest
        .split_at_checked(bitmap_bytes)
        .ok_or_else(|| format!("{} bytes: no room for the bitmap", bytes.len()))?;
    let mut counters = Counters::default();
    for (index, counter) in Counter::ALL.iter().enumerate().take(width) {
        if bitmap[index / 8] & (1 << (index % 8)) == 0 {
            continue;
        }
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let (&byte, rest) = values
                .split_first()
                .ok_or_else(|| format!("{} bytes: a value is cut short", bytes.len()))?;
            values = rest;
            if shift > 63 {
                return Err("a value longer than 64 bits".to_owned());
            }
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        counters[*counter] = value;
    }
    Ok((counters, values))
}

/// A unit's month as stored: its total, and its days that have a counter
/// (by day of the month, 1 to 31).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonthRows {
    pub total: Counters,
    pub days: BTreeMap<u8, Counters>,
}

/// Where a change to a month stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Underflow {
    /// A counter of this day of the month would go below zero.
    Day(u8, Counter),
    /// A counter of the month's total would.
    Total(Counter),
}

impl MonthRows {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = encode(&self.total);
        for (day, counters) in &self.days {
            bytes.push(*day);
            bytes.extend_from_slice(&encode(counters));
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<MonthRows, String> {
        let (total, mut rest) = decode_from(bytes)?;
        let mut days = BTreeMap::new();
        let mut previous = 0;
        while let Some((&day, after)) = rest.split_first() {
            if day <= previous || day > 31 {
                return Err(format!("day {day} of the month after day {previous}"));
            }
            let (counters, after) = decode_from(after)?;
            days.insert(day, counters);
            previous = day;
            rest = after;
        }
        Ok(MonthRows { total, days })
    }

    /// Adds the changes of some days of the month, and their sum to the
    /// total (once: a batch may move a count from one day to another); a
    /// day back at zero goes.
    pub fn change(
        &mut self,
        days: &[(u8, &CounterDelta)],
        total: &CounterDelta,
    ) -> Result<(), Underflow> {
        for (day, delta) in days {
            let counters = self.days.entry(*day).or_default();
            counters
                .apply(delta)
                .map_err(|counter| Underflow::Day(*day, counter))?;
            if counters.is_zero() {
                self.days.remove(day);
            }
        }
        self.total.apply(total).map_err(Underflow::Total)
    }

    pub fn is_zero(&self) -> bool {
        self.total.is_zero() && self.days.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_compactly() {
        let mut counters = Counters::default();
        counters[Counter::Received] = 7;
        counters[Counter::ResolvedOnTime] = 300;
        counters[Counter::FeedbackStoppedOverdue] = u32::MAX as u64 + 5;
        let bytes = encode(&counters);
        assert_eq!(decode(&bytes).unwrap(), counters);
        assert!(bytes.len() < 1 + BITMAP_BYTES + 10, "{} bytes", bytes.len());
        assert_eq!(encode(&Counters::default()).len(), 1 + BITMAP_BYTES);
    }

    #[test]
    fn a_row_of_fewer_counters_reads_the_others_as_zero() {
        // Two counters wide: received = 3, received_online = 1.
        let bytes = [2u8, 0b11, 3, 1];
        let counters = decode(&bytes).unwrap();
        assert_eq!(counters[Counter::Received], 3);
        assert_eq!(counters[Counter::ReceivedOnline], 1);
        assert_eq!(counters[Counter::ReceivedPostal], 0);
    }

    #[test]
    fn a_damaged_value_is_an_error_not_zeros() {
        let mut counters = Counters::default();
        counters[Counter::Received] = 200;
        let bytes = encode(&counters);
        for damaged in [
            &bytes[..bytes.len() - 1],
            &bytes[..1],
            &[][..],
            &[COUNTER_COUNT as u8 + 1][..],
        ] {
            assert!(decode(damaged).is_err(), "{damaged:?}");
        }
        let mut longer = bytes.clone();
        longer.push(1);
        assert!(decode(&longer).is_err());
    }

    fn delta(counter: Counter, by: i64) -> CounterDelta {
        let mut delta = CounterDelta::default();
        delta.change(counter, by);
        delta
    }

    #[test]
    fn a_change_reports_underflow_and_clears_zero_rows() {
        let two = delta(Counter::Received, 2);
        let mut month = MonthRows::default();
        month.change(&[(3, &two)], &two).unwrap();
        let stored = MonthRows::decode(&month.encode()).unwrap();
        assert_eq!(stored, month);
        let too_much = delta(Counter::Received, -3);
        assert_eq!(
            stored.clone().change(&[(3, &too_much)], &too_much),
            Err(Underflow::Day(3, Counter::Received))
        );
        assert_eq!(
            stored.clone().change(&[(4, &two)], &too_much),
            Err(Underflow::Total(Counter::Received))
        );
        let mut back = stored;
        let minus_two = delta(Counter::Received, -2);
        back.change(&[(3, &minus_two)], &minus_two).unwrap();
        assert!(back.is_zero());
        assert_eq!(back.encode().len(), 1 + BITMAP_BYTES);
    }

    #[test]
    fn a_count_moved_between_days_of_a_batch_is_no_underflow_of_the_total() {
        let one = delta(Counter::Received, 1);
        let mut month = MonthRows::default();
        month.change(&[(1, &one)], &one).unwrap();
        let minus_one = delta(Counter::Received, -1);
        // Day 1 loses the count, day 9 gains it: the total does not move.
        month
            .change(&[(1, &minus_one), (9, &one)], &CounterDelta::default())
            .unwrap();
        assert_eq!(month.days.keys().copied().collect::<Vec<_>>(), [9]);
        assert_eq!(month.total[Counter::Received], 1);
    }

    #[test]
    fn a_damaged_month_is_an_error_not_zeros() {
        let one = delta(Counter::Received, 1);
        let mut month = MonthRows::default();
        month.change(&[(2, &one), (5, &one)], &one).unwrap();
        let bytes = month.encode();
        for cut in 0..bytes.len() {
            let read = MonthRows::decode(&bytes[..cut]);
            assert!(
                read.is_err() || read.as_ref() != Ok(&month),
                "cut at {cut}: {read:?}"
            );
        }
        let (total, days) = bytes.split_at(encode(&month.total).len());
        // Days out of order, or past the 31st.
        let mut swapped = total.to_vec();
        let day_len = (days.len()) / 2;
        swapped.extend_from_slice(&days[day_len..]);
        swapped.extend_from_slice(&days[..day_len]);
        assert!(MonthRows::decode(&swapped).is_err());
        let mut late = total.to_vec();
        late.push(32);
        late.extend_from_slice(&days[1..day_len]);
        assert!(MonthRows::decode(&late).is_err());
    }
}
