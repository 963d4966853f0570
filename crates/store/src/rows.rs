//! How a set of counters is stored: a unit's day, or a unit's month total.
//!
//! A day of a commune moves a dozen of the counters, by small numbers, so
//! a row is written compactly: the number of counters it covers, a bitmap
//! of those that are not zero, then each of those as a LEB128 varint. A
//! batch rewrites only the days and month totals it changed, each a few
//! dozen bytes, instead of a month of rows. Rows written before counters
//! were added read them as zero; anything else that does not decode is
//! damage, never read as zeros.

use kpi_domain::counters::COUNTER_COUNT;
use kpi_domain::{Counter, CounterDelta, Counters};

const BITMAP_BYTES: usize = COUNTER_COUNT.div_ceil(8);

/// The stored form of `counters`.
pub fn encode(counters: &Counters) -> Vec<u8> {
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

/// Reads the stored form.
pub fn decode(bytes: &[u8]) -> Result<Counters, String> {
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
    if !values.is_empty() {
        return Err(format!("{} bytes left over", values.len()));
    }
    Ok(counters)
}

/// The stored row at `stored` (none: zeros) with `delta` added: the new
/// stored form, `None` when every counter is zero again, or the first
/// counter that would go below zero.
pub fn changed(stored: Option<&[u8]>, delta: &CounterDelta) -> Result<Option<Vec<u8>>, Change> {
    let mut counters = match stored {
        None => Counters::default(),
        Some(bytes) => decode(bytes).map_err(Change::Damaged)?,
    };
    counters.apply(delta).map_err(Change::Underflow)?;
    Ok((!counters.is_zero()).then(|| encode(&counters)))
}

/// Why a row could not be changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The stored value does not decode.
    Damaged(String),
    /// This counter would go below zero.
    Underflow(Counter),
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

    #[test]
    fn a_change_reports_underflow_and_clears_zero_rows() {
        let mut delta = CounterDelta::default();
        delta.change(Counter::Received, 2);
        let stored = changed(None, &delta).unwrap().unwrap();
        let mut too_much = CounterDelta::default();
        too_much.change(Counter::Received, -3);
        assert_eq!(
            changed(Some(&stored), &too_much),
            Err(Change::Underflow(Counter::Received))
        );
        let mut back = CounterDelta::default();
        back.change(Counter::Received, -2);
        assert_eq!(changed(Some(&stored), &back), Ok(None));
    }
}
