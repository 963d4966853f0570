//! The read side: consistent answers (sums over periods, live counts,
//! pages of open, held and parked cases, whole-store exports), each taken
//! under the shared commit lock where it must not mix two batches.

use kpi_domain::{Counters, Day, LiveCounts, Moment, Record, RecordKey};

use crate::error::{corrupt, StoreError};
use crate::ingest::decode_pair;
use crate::{
    keys, rows, ExportPart, HeldPage, OpenPage, ParkedEvent, ScoreSnapshot, Snapshot, Store,
    ViewsExport, VIEW_PREFIXES,
};

impl Store {
    /// The counters of `unit_id` summed over `first..=last` and its live
    /// counts at `now`, as of one checkpoint.
    pub fn snapshot(
        &self,
        unit_id: &str,
        first: Day,
        last: Day,
        now: Moment,
    ) -> Result<Snapshot, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sequence = self.checkpoint()?;
        let counters = self.sum_counters(unit_id, first, last)?;
        let live = self.live_counts(unit_id, now)?;
        Ok(Snapshot {
            sequence,
            counters,
            live,
        })
    }

    /// One range scan over the unit's months: whole months add their
    /// total, the first and last months (when only partly in the range)
    /// the days of theirs that are.
    fn sum_counters(&self, unit_id: &str, first: Day, last: Day) -> Result<Counters, StoreError> {
        let mut sum = Counters::default();
        if last < first {
            return Ok(sum);
        }
        let rollups = self.rollups();
        let (first_month, last_month) = (keys::Month::of(first), keys::Month::of(last));
        let start = rollups.unit_month(unit_id, first_month);
        let end = rollups.unit_month(unit_id, last_month);
        for entry in self.views.range(start..=end) {
            let (key, value) = entry?;
            let month = keys::month_of(&key).ok_or_else(|| corrupt(&key, "no month in key"))?;
            let (month_first, month_last) = month.days();
            if first <= month_first && month_last <= last {
                sum.add(&rows::decode_total(&value).map_err(|detail| corrupt(&key, detail))?);
            } else {
                let month =
                    rows::MonthRows::decode(&value).map_err(|detail| corrupt(&key, detail))?;
                let from = keys::day_of_month(first.max(month_first));
                let to = keys::day_of_month(last.min(month_last));
                for counters in month.days.range(from..=to).map(|(_, counters)| counters) {
                    sum.add(counters);
                }
            }
        }
        Ok(sum)
    }

    /// Live counts from the open cases' due days. Every open case is in the
    /// unit's total; those not yet overdue are the ones due on later days
    /// (a short scan: cases fall due within weeks) and those due later
    /// today, counted exactly from the open index.
    fn live_counts(&self, unit_id: &str, now: Moment) -> Result<LiveCounts, StoreError> {
        let rollups = self.rollups();
        let total_key = keys::unit_prefix(rollups.open_total, unit_id);
        let (open, open_without_apology) = match self.views.get(&total_key)? {
            None => (0, 0),
            Some(bytes) => decode_pair(&bytes).map_err(|detail| corrupt(&total_key, detail))?,
        };
        let (open, open_without_apology) = (u64::from(open), u64::from(open_without_apology));
        let today = now.local_day();
        let tomorrow = Day::from_date(today.to_date().succ_opt().unwrap_or(chrono::NaiveDate::MAX));
        let (mut not_due, mut not_due_without_apology) = (0u64, 0u64);
        let later_days = keys::unit_day(rollups.open_by_due_day, unit_id, tomorrow);
        let unit_end = keys::prefix_end(&keys::unit_prefix(rollups.open_by_due_day, unit_id));
        for entry in self.views.range(later_days..unit_end) {
            let (key, value) = entry?;
            let (open, without_apology) =
                decode_pair(&value).map_err(|detail| corrupt(&key, detail))?;
            not_due += u64::from(open);
            not_due_without_apology += u64::from(without_apology);
        }
        let from_now = rollups.open_index_at(unit_id, now);
        let until_tomorrow = rollups.open_index_at(unit_id, Moment::start_of(tomorrow));
        for entry in self.views.range(from_now..until_tomorrow) {
            let (_, has_apology) = entry?;
            not_due += 1;
            if has_apology.first() != Some(&1) {
                not_due_without_apology += 1;
            }
        }
        Ok(LiveCounts {
            open,
            overdue_open: open.saturating_sub(not_due),
            overdue_without_apology: open_without_apology.saturating_sub(not_due_without_apology),
        })
    }

    /// A record and the stream sequence the views reflect, read together.
    pub fn record_at_checkpoint(
        &self,
        key: &RecordKey,
    ) -> Result<(Option<Record>, u64), StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok((self.load_record(key)?, self.checkpoint()?))
    }

    /// How many records have events held (their `case.received` has not
    /// come): a key scan, for the metrics every few seconds.
    pub fn held_count(&self) -> Result<u64, StoreError> {
        let mut count = 0;
        for key in self.views.scan_prefix([keys::HELD]).keys() {
            key?;
            count += 1;
        }
        Ok(count)
    }

    /// Records whose events are held, in key order, after `after` (a
    /// previous page's last [`HeldPage::next`]), at most `limit`.
    pub fn held(&self, after: Option<&str>, limit: usize) -> Result<HeldPage, StoreError> {
        let start = match after {
            Some(after) => {
                let mut key = vec![keys::HELD];
                key.extend_from_slice(after.as_bytes());
                key.push(0);
                key
            }
            None => vec![keys::HELD],
        };
        let end = keys::prefix_end(&[keys::HELD]);
        let mut records = Vec::new();
        let mut next = None;
        for entry in self.views.range(start..end) {
            let (key, value) = entry?;
            if records.len() == limit {
                break;
            }
            let entry: kpi_domain::HeldEntry =
                postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))?;
            let code = String::from_utf8_lossy(&key[2..]).into_owned();
            let record_key = match key.get(1) {
                Some(&keys::FEEDBACK) => RecordKey::Feedback(code),
                _ => RecordKey::Case(code),
            };
            next = Some(String::from_utf8_lossy(&key[1..]).into_owned());
            records.push((record_key, entry));
        }
        if records.len() < limit {
            next = None;
        }
        Ok(HeldPage { records, next })
    }

    /// Every day counter of every unit and the open-case totals, as of one
    /// checkpoint: what `kpictl verify` compares with a rebuild. All in
    /// memory: for a store of this process's own (a rebuild aside);
    /// [`Store::export_each`] streams.
    pub fn export(&self) -> Result<ViewsExport, StoreError> {
        let mut export = ViewsExport::default();
        self.export_each(10_000, |part| {
            match part {
                ExportPart::Head {
                    checkpoint,
                    live_day,
                    open,
                } => {
                    export.checkpoint = checkpoint;
                    export.live_day = live_day;
                    export.open = open;
                }
                ExportPart::Days(days) => export.days.extend(days),
            }
            Ok::<(), StoreError>(())
        })?;
        Ok(export)
    }

    /// The export of [`Store::export`] handed to `sink` part by part: the
    /// head (checkpoint, live day, open cases per unit), then day rows at
    /// most `rows` at a time. The fold waits meanwhile (the writer lock),
    /// so every part reflects one checkpoint; queries go on.
    pub fn export_each<E: From<StoreError>>(
        &self,
        rows: usize,
        mut sink: impl FnMut(ExportPart) -> Result<(), E>,
    ) -> Result<(), E> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.settle()?;
        let rollups = self.rollups();
        let mut open = Vec::new();
        for entry in self.views.scan_prefix([rollups.open_total]) {
            let (key, value) = entry.map_err(StoreError::from)?;
            let unit = keys::unit_of(&key).ok_or_else(|| corrupt(&key, "no unit in key"))?;
            let (open_cases, without_apology) =
                decode_pair(&value).map_err(|detail| corrupt(&key, detail))?;
            open.push((unit, open_cases, without_apology));
        }
        sink(ExportPart::Head {
            checkpoint: self.checkpoint()?,
            live_day: self.live_day()?,
            open,
        })?;
        let mut days = Vec::with_capacity(rows.min(10_000));
        for entry in self.views.scan_prefix([rollups.month]) {
            let (key, value) = entry.map_err(StoreError::from)?;
            let unit = keys::unit_of(&key).ok_or_else(|| corrupt(&key, "no unit in key"))?;
            let month = keys::month_of(&key).ok_or_else(|| corrupt(&key, "no month in key"))?;
            let stored = rows::MonthRows::decode(&value).map_err(|detail| corrupt(&key, detail))?;
            for (day, counters) in stored.days {
                let day = month.day(day).ok_or_else(|| {
                    corrupt(
                        &key,
                        format!("no day {day} in {}'s month", month.days().0.to_date()),
                    )
                })?;
                days.push((unit.clone(), day, counters));
            }
            if days.len() >= rows {
                sink(ExportPart::Days(std::mem::take(&mut days)))?;
            }
        }
        if !days.is_empty() {
            sink(ExportPart::Days(days))?;
        }
        Ok(())
    }

    /// Every record, in key order (audits of the whole store).
    pub fn records(&self) -> impl Iterator<Item = Result<(RecordKey, Record), StoreError>> + '_ {
        [keys::CASE, keys::FEEDBACK]
            .into_iter()
            .flat_map(move |prefix| {
                self.views.scan_prefix([prefix]).map(move |entry| {
                    let (key, value) = entry?;
                    let record: Record =
                        postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))?;
                    let code = String::from_utf8_lossy(&key[1..]).into_owned();
                    let record_key = if prefix == keys::CASE {
                        RecordKey::Case(code)
                    } else {
                        RecordKey::Feedback(code)
                    };
                    Ok((record_key, record))
                })
            })
    }

    /// Open cases of `unit_id` due before `until` (every overdue one
    /// included), by due time then case code, after the position `after`
    /// (a previous page's [`OpenPage::next`]), at most `limit`.
    pub fn open_cases(
        &self,
        unit_id: &str,
        until: Moment,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<OpenPage, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let rollups = self.rollups();
        let prefix = keys::unit_prefix(rollups.open_index, unit_id);
        let start = match after {
            Some(position) => {
                let mut key = prefix.clone();
                key.extend_from_slice(position);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let end = rollups.open_index_at(unit_id, until);
        let mut page = OpenPage {
            sequence: self.checkpoint()?,
            ..OpenPage::default()
        };
        for entry in self.views.range(start..end) {
            let (key, value) = entry?;
            if page.cases.len() == limit {
                page.next = page.cases.last().map(|(due, case, _)| {
                    let mut position = keys::moment(*due).to_vec();
                    position.extend_from_slice(case.as_bytes());
                    position
                });
                break;
            }
            let rest = &key[prefix.len()..];
            let due = keys::moment_from(rest).ok_or_else(|| corrupt(&key, "no due time"))?;
            let case = String::from_utf8_lossy(&rest[12..]).into_owned();
            page.cases.push((due, case, value.first() == Some(&1)));
        }
        Ok(page)
    }

    /// The counters a QĐ 766 score needs, at one checkpoint: over the
    /// period, over every day up to its last, over every day before its
    /// first; and the live counts at `now`.
    pub fn score_inputs(
        &self,
        unit_id: &str,
        first: Day,
        last: Day,
        now: Moment,
    ) -> Result<ScoreSnapshot, StoreError> {
        let _shared = self
            .commit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let beginning =
            Day::from_date(chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default());
        let day_before = Day::from_date(first.to_date().pred_opt().unwrap_or(first.to_date()));
        Ok(ScoreSnapshot {
            sequence: self.checkpoint()?,
            period: self.sum_counters(unit_id, first, last)?,
            through_end: self.sum_counters(unit_id, beginning, last)?,
            before_start: self.sum_counters(unit_id, beginning, day_before)?,
            live: self.live_counts(unit_id, now)?,
        })
    }

    /// Parked events after `after_sequence`, oldest first, at most `limit`.
    pub fn parked(
        &self,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let start = keys::parked(after_sequence.saturating_add(1));
        let end = keys::prefix_end(&[keys::PARKED]);
        self.views
            .range(&start[..]..&end[..])
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))
            })
            .collect()
    }

    /// Every parked event after `after_sequence`, oldest first, read as
    /// the iteration goes (an operator's scoped listing).
    pub fn parked_iter(
        &self,
        after_sequence: u64,
    ) -> impl Iterator<Item = Result<ParkedEvent, StoreError>> + '_ {
        let start = keys::parked(after_sequence.saturating_add(1));
        let end = keys::prefix_end(&[keys::PARKED]);
        self.views.range(start.to_vec()..end).map(|entry| {
            let (key, value) = entry?;
            postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))
        })
    }

    /// The parked event at `sequence`, if one is kept there.
    pub fn parked_at(&self, sequence: u64) -> Result<Option<ParkedEvent>, StoreError> {
        let key = keys::parked(sequence);
        match self.views.get(key)? {
            None => Ok(None),
            Some(value) => postcard::from_bytes(&value)
                .map(Some)
                .map_err(|err| corrupt(&key, err)),
        }
    }

    /// Every entry of the views proper (records, event ids, counters, open
    /// cases), in key order, the rollups' keys under their first
    /// generation's prefixes: what two folds of the same log must share.
    pub fn view_entries(
        &self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        let rollups = self.rollups();
        VIEW_PREFIXES.iter().flat_map(move |prefix| {
            // The rollup prefix of the generation read now.
            let stored = keys::GENERATIONS[0]
                .prefixes()
                .iter()
                .position(|p| p == prefix)
                .map_or(*prefix, |index| rollups.prefixes()[index]);
            self.views.scan_prefix([stored]).map(move |entry| {
                entry
                    .map(|(k, v)| (rollups.canonical(&k), v.to_vec()))
                    .map_err(StoreError::from)
            })
        })
    }
}
