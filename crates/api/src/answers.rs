//! Answers shared between callers, and the news that they changed.
//!
//! Every commit tells the [`Hub`] which units' figures it changed. An answer
//! for a (unit, period) is kept with the stream sequence it was computed at
//! and served again while no later commit changed that unit (and for at
//! most a second, since live counts move with the clock). So 64 clients
//! asking for the province, or a thousand watchers of one district, cost
//! one computation per change, not one per call.
//!
//! The answers kept are bounded in bytes (a dashboard asking for rolling
//! free ranges would otherwise keep every one): the least useful go first.
//! Each unit has its own news channel, so a `WatchRates` watcher wakes
//! only for commits that touch its unit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kpi_domain::UnitIdx;
use kpi_store::Committed;
use tokio::sync::watch;

use crate::pb;

/// How long an answer's live counts may be reused.
const LIVE_FOR: Duration = Duration::from_secs(1);

/// The default bound on the answers kept, in bytes.
pub const DEFAULT_ANSWER_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Views this many messages behind the stream are catching up (a
/// rebuild, or a restart after a pause), not following it live: at a
/// steady few thousand events a second a commit leaves a few hundred.
pub const CATCHING_UP_AFTER: u64 = 20_000;

/// What the cache spends on an entry besides the answer and its key.
const ENTRY_OVERHEAD: usize = 256;

/// About the bytes an answer takes in memory (not on the wire: its counts
/// are a map of owned names).
fn memory_of(reply: &pb::RatesReply) -> usize {
    use std::mem::size_of;
    let strings = reply.unit_id.capacity()
        + reply.unit_name.capacity()
        + reply.period.capacity()
        + reply.first_day.capacity()
        + reply.last_day.capacity();
    let rates = reply.rates.capacity() * size_of::<pb::Rate>()
        + reply
            .rates
            .iter()
            .map(|rate| rate.kpi.capacity())
            .sum::<usize>();
    // A B-tree: about one node slot and a share of node overhead each.
    let counts = reply.counts.len() * (size_of::<(String, u64)>() + 16)
        + reply.counts.keys().map(String::capacity).sum::<usize>();
    size_of::<pb::RatesReply>() + strings + rates + counts
}

/// Commits, as the API sees them.
pub struct Hub {
    /// The latest committed stream sequence.
    sequence: watch::Sender<u64>,
    /// Per unit: the last sequence at which its figures changed.
    changed: Vec<watch::Sender<u64>>,
    /// Answers by (unit, period), bounded in bytes.
    answers: moka::sync::Cache<(UnitIdx, String), Cached>,
    /// Case-flow answers by (unit, period, grouping), bounded in bytes.
    flows: moka::sync::Cache<(UnitIdx, String, i32), CachedFlow>,
    /// Messages the stream held beyond the last commit.
    behind: AtomicU64,
}

/// A case-flow answer, with the receiving units whose changes end it.
#[derive(Clone)]
struct CachedFlow {
    sequence: u64,
    at: Instant,
    /// A running period's answer depends on now: it lives [`LIVE_FOR`].
    running: bool,
    receiving: Arc<[UnitIdx]>,
    reply: Arc<pb::CaseFlowReply>,
}

#[derive(Clone)]
struct Cached {
    sequence: u64,
    at: Instant,
    reply: Arc<pb::RatesReply>,
}

impl Hub {
    /// A hub for `units` units at `sequence`, keeping at most about
    /// `cache_bytes` of answers.
    pub fn new(units: usize, sequence: u64, cache_bytes: u64) -> Arc<Hub> {
        let answers = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|key: &(UnitIdx, String), cached: &Cached| {
                let bytes = memory_of(&cached.reply) + key.1.capacity() + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        let flows = moka::sync::Cache::builder()
            .max_capacity(cache_bytes / 2)
            .weigher(|key: &(UnitIdx, String, i32), cached: &CachedFlow| {
                let rows: usize = cached
                    .reply
                    .rows
                    .iter()
                    .map(|row| row.key.capacity() + row.name.capacity() + 160)
                    .sum();
                let bytes = rows + key.1.capacity() + cached.receiving.len() * 4 + ENTRY_OVERHEAD;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Arc::new(Hub {
            sequence: watch::channel(sequence).0,
            changed: (0..units).map(|_| watch::channel(sequence).0).collect(),
            answers,
            flows,
            behind: AtomicU64::new(0),
        })
    }

    /// Records a commit: its units changed at its sequence.
    pub fn committed(&self, committed: &Committed) {
        let mark = |slot: &watch::Sender<u64>| {
            slot.send_if_modified(|seen| {
                let newer = committed.sequence > *seen;
                if newer {
                    *seen = committed.sequence;
                }
                newer
            });
        };
        if committed.all {
            self.changed.iter().for_each(mark);
            self.answers.invalidate_all();
            self.flows.invalidate_all();
        } else {
            for unit in &committed.units {
                if let Some(slot) = self.changed.get(unit.index()) {
                    mark(slot);
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
            .get(unit.index())
            .map_or(u64::MAX, |slot| *slot.borrow())
    }

    /// News of commits: the latest sequence.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sequence.subscribe()
    }

    /// News of `unit`'s changes: the last sequence that changed it.
    pub fn subscribe_unit(&self, unit: UnitIdx) -> Option<watch::Receiver<u64>> {
        self.changed.get(unit.index()).map(watch::Sender::subscribe)
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
        fresh.then_some(entry.reply)
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
        usable.then_some(entry.reply)
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

    /// A kept case-flow answer still good: none of its receiving units
    /// changed since, it reflects at least `min_sequence`, and for a
    /// running period it is less than a second old.
    pub fn cached_flow(
        &self,
        key: &(UnitIdx, String, i32),
        min_sequence: u64,
    ) -> Option<Arc<pb::CaseFlowReply>> {
        let entry = self.flows.get(key)?;
        let fresh = entry.sequence >= min_sequence
            && (!entry.running || entry.at.elapsed() < LIVE_FOR)
            && entry
                .receiving
                .iter()
                .all(|unit| self.changed_at(*unit) <= entry.sequence);
        fresh.then_some(entry.reply)
    }

    /// Keeps a case-flow answer computed at its own stream sequence.
    pub fn keep_flow(
        &self,
        key: (UnitIdx, String, i32),
        running: bool,
        receiving: Arc<[UnitIdx]>,
        reply: Arc<pb::CaseFlowReply>,
    ) {
        self.flows.insert(
            key,
            CachedFlow {
                sequence: reply.stream_sequence,
                at: Instant::now(),
                running,
                receiving,
                reply,
            },
        );
    }

    /// About how many bytes of answers are kept now.
    pub fn kept_bytes(&self) -> u64 {
        self.answers.run_pending_tasks();
        self.answers.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(period: &str) -> Arc<pb::RatesReply> {
        Arc::new(pb::RatesReply {
            period: period.to_owned(),
            unit_name: "x".repeat(2000),
            ..pb::RatesReply::default()
        })
    }

    #[test]
    fn answers_kept_stay_within_their_bound() {
        let hub = Hub::new(1, 0, 256 * 1024);
        for day in 0..5_000 {
            let period = format!("2020-01-01..2020-{day}");
            hub.keep(UnitIdx::from_index(0), &period, reply(&period));
        }
        assert!(hub.kept_bytes() <= 256 * 1024, "{}", hub.kept_bytes());
        // Recent answers are still found.
        let last = "2020-01-01..2020-4999";
        hub.keep(UnitIdx::from_index(0), last, reply(last));
        assert!(hub.cached(UnitIdx::from_index(0), last, 0).is_some());
    }

    #[tokio::test]
    async fn a_unit_hears_only_of_commits_that_touch_it() {
        let hub = Hub::new(2, 0, 1024 * 1024);
        let first = hub.subscribe_unit(UnitIdx::from_index(0)).unwrap();
        let mut second = hub.subscribe_unit(UnitIdx::from_index(1)).unwrap();
        hub.committed(&Committed {
            sequence: 5,
            units: vec![UnitIdx::from_index(1)],
            all: false,
            behind: 0,
        });
        assert!(!first.has_changed().unwrap());
        assert!(second.has_changed().unwrap());
        assert_eq!(*second.borrow_and_update(), 5);
        hub.everything_changed(6);
        assert!(first.has_changed().unwrap());
        assert_eq!(hub.changed_at(UnitIdx::from_index(0)), 6);
    }
}
