//! Answers shared between callers, and the news that they changed.
//!
//! Every commit tells the [`Hub`] which units' figures it changed. An answer
//! for a (unit, period) is kept with the stream sequence it was computed at
//! and served again while no later commit changed that unit (and for at
//! most a second, since live counts move with the clock). So 64 clients
//! asking for the province, or a thousand watchers of one district, cost
//! one computation per change, not one per call; and `WatchRates` wakes a
//! watcher only for its own unit's changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use kpi_domain::UnitIdx;
use kpi_store::Committed;
use tokio::sync::watch;

use crate::pb;

/// How long an answer's live counts may be reused.
const LIVE_FOR: Duration = Duration::from_secs(1);

/// Views this many messages behind the stream are catching up (a
/// rebuild, or a restart after a pause), not following it live: at a
/// steady few thousand events a second a commit leaves a few hundred.
pub const CATCHING_UP_AFTER: u64 = 20_000;

/// Commits, as the API sees them.
pub struct Hub {
    /// The latest committed stream sequence.
    sequence: watch::Sender<u64>,
    /// Per unit: the last sequence at which its figures changed.
    changed: Vec<AtomicU64>,
    /// Answers by (unit, period).
    answers: DashMap<(UnitIdx, String), Cached>,
    /// Messages the stream held beyond the last commit.
    behind: AtomicU64,
}

struct Cached {
    sequence: u64,
    at: Instant,
    reply: Arc<pb::RatesReply>,
}

impl Hub {
    pub fn new(units: usize, sequence: u64) -> Arc<Hub> {
        Arc::new(Hub {
            sequence: watch::channel(sequence).0,
            changed: (0..units).map(|_| AtomicU64::new(sequence)).collect(),
            answers: DashMap::new(),
            behind: AtomicU64::new(0),
        })
    }

    /// Records a commit: its units changed at its sequence.
    pub fn committed(&self, committed: &Committed) {
        if committed.all {
            for slot in &self.changed {
                slot.fetch_max(committed.sequence, Ordering::AcqRel);
            }
            self.answers.clear();
        } else {
            for unit in &committed.units {
                if let Some(slot) = self.changed.get(index_of(*unit)) {
                    slot.fetch_max(committed.sequence, Ordering::AcqRel);
                }
            }
        }
        self.behind.store(committed.behind, Ordering::Release);
        self.sequence.send_replace(committed.sequence);
    }

    /// Whether the views are catching up with the log (more than
    /// [`CATCHING_UP_AFTER`] messages behind at the last commit).
    pub fn catching_up(&self) -> bool {
        self.behind.load(Ordering::Acquire) > CATCHING_UP_AFTER
    }

    /// Everything changed (the views were switched).
    pub fn everything_changed(&self, sequence: u64) {
        self.committed(&Committed {
            sequence,
            units: Vec::new(),
            all: true,
            behind: 0,
        });
    }

    /// The last sequence at which `unit`'s figures changed.
    pub fn changed_at(&self, unit: UnitIdx) -> u64 {
        self.changed
            .get(index_of(unit))
            .map_or(u64::MAX, |slot| slot.load(Ordering::Acquire))
    }

    /// News of commits: the latest sequence.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sequence.subscribe()
    }

    /// A kept answer still good, reflecting at least `min_sequence`.
    pub fn cached(
        &self,
        unit: UnitIdx,
        period: &str,
        min_sequence: u64,
    ) -> Option<Arc<pb::RatesReply>> {
        let entry = self.answers.get(&(unit, period.to_owned()))?;
        let fresh = entry.sequence >= self.changed_at(unit)
            && entry.sequence >= min_sequence
            && entry.at.elapsed() < LIVE_FOR;
        fresh.then(|| entry.reply.clone())
    }

    /// A kept answer newer than `after_sequence` and computed within
    /// `max_age`, even if the unit changed since: what watchers of one unit
    /// share, so that a busy unit is computed once an interval, not once
    /// per watcher. (A watcher that got a slightly older answer sees the
    /// unit's later change and asks again at its next interval.)
    pub fn recent(
        &self,
        unit: UnitIdx,
        period: &str,
        after_sequence: u64,
        max_age: Duration,
    ) -> Option<Arc<pb::RatesReply>> {
        let entry = self.answers.get(&(unit, period.to_owned()))?;
        let usable = entry.sequence > after_sequence && entry.at.elapsed() < max_age;
        usable.then(|| entry.reply.clone())
    }

    /// Keeps an answer computed at its own stream sequence.
    pub fn keep(&self, unit: UnitIdx, period: &str, reply: Arc<pb::RatesReply>) {
        self.answers.insert(
            (unit, period.to_owned()),
            Cached {
                sequence: reply.stream_sequence,
                at: Instant::now(),
                reply,
            },
        );
    }
}

/// A unit's position, for the per-unit table.
fn index_of(unit: UnitIdx) -> usize {
    unit.index()
}
