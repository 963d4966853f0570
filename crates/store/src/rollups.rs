//! The rollups (day counters by ancestor, open cases by the live day's
//! tree) depend on the unit registry, not on the log: this is where the
//! store notices that the registry or today's tree changed and recomputes
//! them from the stored case records.

use kpi_domain::fold::BatchChanges;
use kpi_domain::units::Fingerprint;
use kpi_domain::{Day, Record, RecordKey, UnitRegistry};

use crate::error::{corrupt, StoreError};
use crate::{keys, Committed, Store};

/// The most (unit, day) counter changes, or open cases, one chunk of a
/// recomputation holds in memory (a few tens of MiB), however long the log.
const CHUNK_ENTRIES: usize = 50_000;

impl Store {
    /// Takes `units` as the registry the views are rolled up with, and
    /// `today` as their live day. New views simply record them. For
    /// existing views, when the registry changes units already counted
    /// (a move, a merge, new dates) or today falls in another epoch of the
    /// tree than the stored live day, every rollup is recomputed from the
    /// case records (no replay of the log); the reason is returned.
    pub fn adopt_units(
        &self,
        units: &UnitRegistry,
        today: Day,
    ) -> Result<Option<String>, StoreError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.settle()?;
        // What a recomputation cut short left of the generation not in use.
        self.remove_prefixes(keys::GENERATIONS[1 - self.generation() as usize].prefixes())?;
        let stored = match self.views.get(keys::ROLLUP_UNITS)? {
            None => None,
            Some(bytes) => Some(
                serde_json::from_slice::<Fingerprint>(&bytes)
                    .map_err(|err| corrupt(keys::ROLLUP_UNITS, err))?,
            ),
        };
        if let Some(stored) = &stored {
            self.check_counted_units(units, stored)?;
        }
        let live_day = self.live_day()?;
        let reason = match (&stored, live_day) {
            (None, _) | (_, None) if self.checkpoint()? == 0 => None,
            (None, _) | (_, None) => Some("the views record no unit registry".to_owned()),
            (Some(stored), Some(live_day)) => {
                let changes = units.changes_from(stored);
                if !changes.is_empty() {
                    Some(format!("the units file changed: {}", changes.join("; ")))
                } else if !units.same_tree(live_day, today) {
                    Some(format!(
                        "the tree of today ({}) differs from that of the live counts ({})",
                        today.to_date(),
                        live_day.to_date()
                    ))
                } else {
                    None
                }
            }
        };
        if reason.is_some() {
            self.rebuild_rollups(units, today)?;
        } else {
            let mut batch = sled::Batch::default();
            Self::record_rollup_basis(&mut batch, units, live_day.unwrap_or(today))?;
            self.views.apply_batch(batch)?;
        }
        Ok(reason)
    }

    /// Refuses a registry under which events already counted would be
    /// invalid (a unit's `valid_from`/`valid_to` narrowed): the views would
    /// count what a rebuild keeps aside, and no recomputation of the
    /// rollups could remove the difference.
    fn check_counted_units(
        &self,
        units: &UnitRegistry,
        stored: &Fingerprint,
    ) -> Result<(), StoreError> {
        let narrowed: Vec<(kpi_domain::UnitIdx, String)> = stored
            .iter()
            .filter_map(|(id, before)| {
                let idx = units.find(id)?;
                let now = units.unit(idx).days;
                let still_covers = now
                    .from
                    .is_none_or(|from| before.days.from.is_some_and(|b| b >= from))
                    && now
                        .to
                        .is_none_or(|to| before.days.to.is_some_and(|b| b <= to));
                (!still_covers).then(|| (idx, id.clone()))
            })
            .collect();
        if narrowed.is_empty() {
            return Ok(());
        }
        let mut events = 0u64;
        let mut named: std::collections::BTreeSet<String> = Default::default();
        for entry in self.records() {
            let (_, record) = entry?;
            for event in record.events.iter().chain(&record.kept_aside) {
                let Some((idx, id)) = narrowed.iter().find(|(_, id)| *id == event.unit_id) else {
                    continue;
                };
                if !units.unit(*idx).exists_on(event.at.local_day()) {
                    events += 1;
                    named.insert(id.clone());
                }
            }
        }
        if events == 0 {
            return Ok(());
        }
        Err(StoreError::UnitsNoLongerHold {
            units: named.into_iter().collect::<Vec<_>>().join(", "),
            events,
        })
    }

    /// Recomputes the live counts when today has entered another epoch of
    /// the tree than the one they follow (a change dated in the units file
    /// takes effect); `true` when it did.
    pub fn follow_today(&self, units: &UnitRegistry, today: Day) -> Result<bool, StoreError> {
        match self.live_day()? {
            Some(live_day) if !units.same_tree(live_day, today) => {
                let _writer = self
                    .writer
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.settle()?;
                self.rebuild_rollups(units, today)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The day whose tree the open cases are counted by.
    pub(crate) fn live_day(&self) -> Result<Option<Day>, StoreError> {
        match self.views.get(keys::LIVE_DAY)? {
            None => Ok(None),
            Some(bytes) => {
                let array: [u8; 4] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(keys::LIVE_DAY, "not 4 bytes"))?;
                Ok(Some(Day::from_key(array)))
            }
        }
    }

    fn record_rollup_basis(
        batch: &mut sled::Batch,
        units: &UnitRegistry,
        live_day: Day,
    ) -> Result<(), StoreError> {
        let fingerprint = serde_json::to_vec(&units.fingerprint())
            .map_err(|err| corrupt(keys::ROLLUP_UNITS, err))?;
        batch.insert(keys::ROLLUP_UNITS, fingerprint);
        batch.insert(keys::LIVE_DAY, &live_day.to_key()[..]);
        Ok(())
    }

    /// Every rollup (day counters, open cases) recomputed from the stored
    /// records with `units`. The caller holds the writer lock (the fold
    /// waits); queries go on reading the current generation meanwhile. The
    /// other generation is written in chunks of bounded size, then queries
    /// switch to it in one small write under the commit lock, and the old
    /// one is removed.
    fn rebuild_rollups(&self, units: &UnitRegistry, live_day: Day) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let current = self.generation();
        let target = 1 - current;
        let next = keys::GENERATIONS[target as usize];
        self.remove_prefixes(next.prefixes())?;
        let mut changes = BatchChanges::default();
        let mut records = 0u64;
        let mut chunks = 0u64;
        for prefix in [keys::CASE, keys::FEEDBACK] {
            for entry in self.views.scan_prefix([prefix]) {
                let (key, value) = entry?;
                let record: Record =
                    postcard::from_bytes(&value).map_err(|err| corrupt(&key, err))?;
                if let Some(contribution) = record.contribution() {
                    let code = String::from_utf8_lossy(&key[1..]).into_owned();
                    let record_key = match prefix {
                        keys::CASE => RecordKey::Case(code),
                        _ => RecordKey::Feedback(code),
                    };
                    changes.add(units, live_day, &record_key, &contribution, 1)?;
                }
                records += 1;
                if changes.counters.len() + changes.open_added.len() >= CHUNK_ENTRIES {
                    self.write_chunk(next, units, &mut changes)?;
                    chunks += 1;
                }
            }
        }
        self.write_chunk(next, units, &mut changes)?;
        let mut batch = sled::Batch::default();
        Self::record_rollup_basis(&mut batch, units, live_day)?;
        batch.insert(keys::ROLLUP_GENERATION, &[target][..]);
        {
            let _exclusive = self
                .commit
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.views.apply_batch(batch)?;
            self.generation
                .store(target, std::sync::atomic::Ordering::Release);
        }
        self.tell(&Committed {
            sequence: self.checkpoint()?,
            units: Vec::new(),
            all: true,
            behind: 0,
        });
        self.remove_prefixes(keys::GENERATIONS[current as usize].prefixes())?;
        tracing::info!(
            records,
            chunks = chunks + 1,
            live_day = %live_day.to_date(),
            seconds = started.elapsed().as_secs_f64(),
            "rollups recomputed from the case records"
        );
        Ok(())
    }

    /// Adds a chunk of recomputed rollups to generation `rollups` and
    /// starts the next chunk.
    fn write_chunk(
        &self,
        rollups: keys::Rollups,
        units: &UnitRegistry,
        changes: &mut BatchChanges,
    ) -> Result<(), StoreError> {
        let mut writes = crate::writes::Writes::default();
        self.write_rollups(rollups, &mut writes, units, changes)?;
        self.views.apply_batch(writes.to_batch())?;
        *changes = BatchChanges::default();
        Ok(())
    }

    /// Removes every entry under `prefixes`, a bounded batch at a time
    /// (entries no query reads: the generation of rollups not in use).
    pub(crate) fn remove_prefixes(&self, prefixes: [u8; 4]) -> Result<(), StoreError> {
        for prefix in prefixes {
            loop {
                let mut batch = sled::Batch::default();
                let mut removed = 0;
                for key in self.views.scan_prefix([prefix]).keys().take(CHUNK_ENTRIES) {
                    batch.remove(key?);
                    removed += 1;
                }
                if removed == 0 {
                    break;
                }
                self.views.apply_batch(batch)?;
            }
        }
        Ok(())
    }
}
