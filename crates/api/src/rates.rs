//! `GetRates`, `WatchRates` and `RankUnits`: a unit's rates for a period.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use kpi_domain::{Day, Kpi, Moment, Period, Rate, UnitIdx};
use kpi_store::Snapshot;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::access::Caller;
use crate::{internal, pb, KpiApi};

/// The longest `min_stream_sequence` wait when the call has no deadline:
/// under the server's own deadline on every call ([`crate::Limits`]), so
/// that the answer still names the sequence reached.
const LONGEST_WAIT: Duration = Duration::from_secs(25);

/// A watcher gets at most four answers a second: the first change after a
/// quiet spell goes out at once, a burst of changes is coalesced.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// While the views catch up with the log (a rebuild, a restart after a
/// pause) their figures are history being replayed: a watcher gets one
/// answer every 2 s, leaving the machine to the fold.
const CATCH_UP_INTERVAL: Duration = Duration::from_secs(2);

/// A watcher's answer is recomputed at least this often: live counts move
/// with the clock (a case falls overdue without any event).
const WATCH_REFRESH: Duration = Duration::from_secs(15);

/// When the call must be answered: a little before its `grpc-timeout`, if
/// the client gave one, so that the client hears why (a tenth of it, at
/// most 200 ms, is left for the answer to travel). A timeout is at most 8
/// digits (the gRPC wire format) and never longer than [`LONGEST_WAIT`],
/// under the server's own deadline; anything else is no deadline.
pub fn deadline_of(metadata: &MetadataMap) -> Option<Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (value, unit) = text.split_at(text.len().checked_sub(1)?);
    if value.is_empty() || value.len() > 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = value.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    }
    .min(LONGEST_WAIT);
    let margin = (timeout / 10).min(Duration::from_millis(200));
    Instant::now().checked_add(timeout - margin)
}

impl KpiApi {
    /// The unit and period asked for, if `caller` may read the unit
    /// (named by the request's `field`) on the period's last day.
    pub(crate) fn parse_request(
        &self,
        caller: Option<&Caller>,
        (field, unit_id): (&str, &str),
        period: &str,
    ) -> Result<(UnitIdx, Period), Status> {
        let period =
            Period::parse(period).map_err(|err| Status::invalid_argument(err.to_string()))?;
        let unit = self.permitted_unit(caller, unit_id, field, Day::from_date(period.last_day))?;
        Ok((unit, period))
    }

    /// Waits until the views reflect `sequence`, or the deadline passes,
    /// in a place of its own ([`crate::Limits::sequence_waits`]): waiting
    /// reads do not hold the places of the calls being answered.
    pub(crate) async fn wait_for_sequence(
        &self,
        sequence: u64,
        deadline: Option<Instant>,
    ) -> Result<(), Status> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + LONGEST_WAIT);
        if self.views.current().checkpoint().map_err(internal)? >= sequence {
            return Ok(());
        }
        if let Some(frozen_at) = self.frozen_at {
            return Err(Status::failed_precondition(format!(
                "this server is a frozen audit copy of the views at stream sequence {frozen_at} \
                 (projector --frozen): it never reflects {sequence}; ask the live projector"
            )));
        }
        let _place = tokio::time::timeout_at(deadline, self.permits.wait())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "too many reads are waiting for a stream sequence; not yet {sequence}: try again"
                ))
            })??;
        let mut news = self.views.hub().subscribe();
        loop {
            let reached = self.views.current().checkpoint().map_err(internal)?;
            if reached >= sequence {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, news.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let reached = self.views.current().checkpoint().map_err(internal)?;
                    if reached >= sequence {
                        return Ok(());
                    }
                    return Err(Status::deadline_exceeded(format!(
                        "the views reflect stream sequence {reached}, not yet {sequence}: try again, with a longer deadline if the projector is catching up"
                    )));
                }
            }
        }
    }

    /// The full answer for a unit and period, from the answers kept since
    /// the unit last changed or computed now.
    pub async fn rates_reply(
        &self,
        unit_id: &str,
        period_text: &str,
        min_sequence: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Arc<pb::RatesReply>, Status> {
        let (unit, period) = self.parse_request(None, ("unit_id", unit_id), period_text)?;
        if let Some(sequence) = min_sequence {
            self.wait_for_sequence(sequence, deadline).await?;
        }
        let hub = self.views.hub();
        if let Some(reply) = hub.cached(unit, &period.label, min_sequence.unwrap_or(0)) {
            return Ok(reply);
        }
        let reply = Arc::new(self.compute(unit, &period)?);
        hub.keep(unit, &period.label, reply.clone());
        Ok(reply)
    }

    fn compute(&self, unit: UnitIdx, period: &Period) -> Result<pb::RatesReply, Status> {
        let unit = self.units.unit(unit);
        let now = Moment::from((self.clock)());
        let snapshot = self
            .views
            .current()
            .snapshot(
                &unit.id,
                Day::from_date(period.first_day),
                Day::from_date(period.last_day),
                now,
            )
            .map_err(internal)?;
        let rates = self
            .targets
            .rates_for(&self.units, &unit.id, period, &snapshot.counters);
        Ok(reply(
            unit.id.clone(),
            unit.name.clone(),
            period,
            snapshot,
            rates,
        ))
    }
}

pub fn reply(
    unit_id: String,
    unit_name: String,
    period: &Period,
    snapshot: Snapshot,
    rates: Vec<Rate>,
) -> pb::RatesReply {
    pb::RatesReply {
        unit_id,
        unit_name,
        period: period.label.clone(),
        first_day: period.first_day.to_string(),
        last_day: period.last_day.to_string(),
        target_year: period.target_year(),
        rates: rates.into_iter().map(rate_reply).collect(),
        counts: snapshot
            .counters
            .iter()
            .map(|(counter, value)| (counter.name().to_owned(), value))
            .collect(),
        live: Some(pb::Live {
            open: snapshot.live.open,
            overdue_open: snapshot.live.overdue_open,
            overdue_without_apology: snapshot.live.overdue_without_apology,
        }),
        stream_sequence: snapshot.sequence,
    }
}

fn rate_reply(rate: Rate) -> pb::Rate {
    pb::Rate {
        kpi: rate.kpi.name().to_owned(),
        numerator: rate.numerator,
        denominator: rate.denominator,
        percent: rate.percent,
        target_percent: rate.target_percent,
        met: rate.met,
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RatesReply, Status>> + Send>>;

/// Whether two answers differ in their figures (not only in the stream
/// sequence they reflect).
fn same_figures(a: &pb::RatesReply, b: &pb::RatesReply) -> bool {
    let mut b = b.clone();
    b.stream_sequence = a.stream_sequence;
    *a == b
}

/// The first answer at once, then one whenever the unit's figures change,
/// at most every [`WATCH_INTERVAL`]. The stream is pulled: an answer is
/// computed only when the client can take it, so a slow client gets the
/// latest figures and nothing piles up.
pub async fn watch(
    api: KpiApi,
    caller: Option<Caller>,
    request: pb::GetRatesRequest,
    deadline: Option<Instant>,
) -> Result<WatchStream, Status> {
    let (unit, period) = api.parse_request(
        caller.as_ref(),
        ("unit_id", &request.unit_id),
        &request.period,
    )?;
    if let Some(sequence) = request.min_stream_sequence {
        api.wait_for_sequence(sequence, deadline).await?;
    }
    let first = {
        let _permit = api.permits.call().await?;
        api.rates_reply(
            &request.unit_id,
            &request.period,
            request.min_stream_sequence,
            deadline,
        )
        .await?
    };
    struct Watch {
        api: KpiApi,
        caller: Option<Caller>,
        request: pb::GetRatesRequest,
        unit: UnitIdx,
        period_label: String,
        /// News of the unit's changes.
        news: tokio::sync::watch::Receiver<u64>,
        /// News of the tokens file being read again.
        reloads: Option<tokio::sync::watch::Receiver<u64>>,
        last: Option<Arc<pb::RatesReply>>,
        sent_at: Instant,
        pending_first: Option<Arc<pb::RatesReply>>,
    }
    let news = api
        .views
        .hub()
        .subscribe_unit(unit)
        .ok_or_else(|| Status::internal("the unit has no news channel"))?;
    let reloads = caller.as_ref().and_then(|_| api.access.reloads());
    let state = Watch {
        api,
        caller,
        request,
        unit,
        period_label: period.label,
        news,
        reloads,
        last: None,
        sent_at: Instant::now(),
        pending_first: Some(first),
    };
    /// The token left the file: the stream ends.
    fn revoked(state: &Watch) -> Option<Status> {
        let caller = state.caller.as_ref()?;
        (!state.api.access.still_holds(caller)).then(|| {
            Status::unauthenticated(format!(
                "the token `{}` is no longer in this server's tokens file: the watch ends",
                caller.name
            ))
        })
    }
    /// Waits for news of the tokens file (for ever without one).
    async fn reloaded(reloads: &mut Option<tokio::sync::watch::Receiver<u64>>) {
        match reloads {
            Some(reloads) => {
                if reloads.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
    let stream = futures::stream::unfold(state, |mut state| async move {
        if let Some(first) = state.pending_first.take() {
            state.last = Some(first.clone());
            state.sent_at = Instant::now();
            return Some((Ok(Arc::unwrap_or_clone(first)), state));
        }
        loop {
            // Never more than one answer an interval; a watcher that just
            // answered sleeps through the commits of that interval instead
            // of waking on each.
            let hub = state.api.views.hub();
            let interval = if hub.catching_up() {
                CATCH_UP_INTERVAL
            } else {
                WATCH_INTERVAL
            };
            tokio::select! {
                _ = tokio::time::sleep_until(state.sent_at + interval) => {}
                _ = reloaded(&mut state.reloads) => {}
            }
            if let Some(status) = revoked(&state) {
                return Some((Err(status), state));
            }
            let last_seen = state.last.as_ref().map_or(0, |last| last.stream_sequence);
            // Wait for a commit that touches the unit, or refresh the live
            // counts now and then; a watcher hears only of its own unit.
            let refresh = state.sent_at + WATCH_REFRESH;
            while *state.news.borrow_and_update() <= last_seen {
                tokio::select! {
                    changed = tokio::time::timeout_at(refresh, state.news.changed()) => match changed {
                        Ok(Err(_)) => return None,
                        Ok(Ok(())) => {}
                        Err(_) => break,
                    },
                    _ = reloaded(&mut state.reloads) => {
                        if let Some(status) = revoked(&state) {
                            return Some((Err(status), state));
                        }
                    }
                }
            }
            let shared =
                state
                    .api
                    .views
                    .hub()
                    .recent(state.unit, &state.period_label, last_seen, interval);
            let reply = match shared {
                Some(reply) => reply,
                None => match state
                    .api
                    .rates_reply(&state.request.unit_id, &state.request.period, None, None)
                    .await
                {
                    Ok(reply) => reply,
                    Err(status) => return Some((Err(status), state)),
                },
            };
            let unchanged = state
                .last
                .as_ref()
                .is_some_and(|last| same_figures(last, &reply));
            state.sent_at = Instant::now();
            if unchanged {
                // Remember how far the figures are known to be the same.
                state.last = Some(reply);
                continue;
            }
            state.last = Some(reply.clone());
            return Some((Ok(Arc::unwrap_or_clone(reply)), state));
        }
    });
    Ok(Box::pin(stream))
}

/// Whether a higher rate is better for a KPI (only `late_rate` is not).
pub fn higher_is_better(kpi: Kpi) -> bool {
    kpi != Kpi::LateRate
}

/// The children of a unit on the period's last day, by one KPI.
pub async fn rank(
    api: &KpiApi,
    caller: Option<&Caller>,
    request: pb::RankUnitsRequest,
) -> Result<pb::RankUnitsReply, Status> {
    let (parent, period) =
        api.parse_request(caller, ("parent_id", &request.parent_id), &request.period)?;
    let kpi = Kpi::parse(&request.kpi).ok_or_else(|| {
        Status::invalid_argument(format!(
            "kpi `{}` is not a KPI; one of: {}",
            request.kpi,
            Kpi::accepted()
        ))
    })?;
    let children = api
        .units
        .children(Some(parent), Day::from_date(period.last_day))
        .to_vec();
    let mut ranked = Vec::with_capacity(children.len());
    let mut sequence = u64::MAX;
    for child in children {
        let unit = api.units.unit(child);
        let reply = api.rates_reply(&unit.id, &period.label, None, None).await?;
        sequence = sequence.min(reply.stream_sequence);
        let rate = reply
            .rates
            .iter()
            .find(|rate| rate.kpi == kpi.name())
            .cloned();
        ranked.push((unit.id.clone(), unit.name.clone(), rate));
    }
    let better = higher_is_better(kpi);
    ranked.sort_by(|a, b| {
        let value = |entry: &(String, String, Option<pb::Rate>)| {
            entry.2.as_ref().and_then(|rate| rate.percent)
        };
        match (value(a), value(b)) {
            (Some(x), Some(y)) => {
                let order = if better {
                    y.total_cmp(&x)
                } else {
                    x.total_cmp(&y)
                };
                order.then_with(|| a.0.cmp(&b.0))
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.0.cmp(&b.0),
        }
    });
    let valued = ranked
        .iter()
        .filter(|entry| entry.2.as_ref().is_some_and(|rate| rate.percent.is_some()))
        .count();
    let units = ranked
        .into_iter()
        .enumerate()
        .map(|(index, (unit_id, unit_name, rate))| pb::RankedUnit {
            rank: (index.min(valued) + 1) as u32,
            unit_id,
            unit_name,
            rate,
        })
        .collect();
    Ok(pb::RankUnitsReply {
        parent_id: request.parent_id,
        period: period.label,
        kpi: kpi.name().to_owned(),
        higher_is_better: better,
        units,
        stream_sequence: if sequence == u64::MAX { 0 } else { sequence },
    })
}
