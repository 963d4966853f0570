//! Reading the stream and folding it: the projector's pipeline.
//!
//! Three stages overlap, joined by short bounded queues: the reader (async)
//! groups whatever messages are ready, up to the batch size; the validation
//! thread parses and checks each message (CONTRACT §2); the fold thread
//! folds each group and commits it with its checkpoint in one atomic write.
//! A slow store slows the reader down instead of filling memory.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use kpi_bus::{Bus, StreamMessage};
use kpi_domain::UnitRegistry;
use kpi_events::{Event, EventError};
use kpi_store::{BatchReport, FoldTotals, Incoming, Store};
use tokio::sync::{mpsc, watch};

pub struct Config {
    pub nats: kpi_bus::NatsArgs,
    pub batch_size: usize,
}

/// Batches in flight between two stages.
const QUEUED_BATCHES: usize = 4;

/// How long a batch waits for more messages before it is folded.
const LINGER: Duration = Duration::from_millis(5);

/// How often progress and lag are logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Runs until `stop` turns true (then finishes the batches already read)
/// or the store fails.
pub async fn run(
    config: Config,
    store: Arc<Store>,
    units: Arc<UnitRegistry>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let first_sequence = store.checkpoint()? + 1;
    let (batches, read_queue) = mpsc::channel(QUEUED_BATCHES);
    let (validated, fold_queue) = sync_channel(QUEUED_BATCHES);
    let validation_units = units.clone();
    let reader_units = units.clone();
    let validator = std::thread::Builder::new()
        .name("validate".into())
        .spawn(move || validate_batches(&validation_units, read_queue, validated))
        .context("starting the validation thread")?;
    let fold_store = store.clone();
    let folder = std::thread::Builder::new()
        .name("fold".into())
        .spawn(move || fold_batches(&fold_store, &units, fold_queue))
        .context("starting the fold thread")?;
    let read_result = read(
        &config,
        &store,
        &reader_units,
        first_sequence,
        batches,
        stop,
    )
    .await;
    // The read queue is closed now: the other stages finish what was read.
    let (validated, folded) =
        tokio::task::spawn_blocking(move || (validator.join(), folder.join()))
            .await
            .context("joining the pipeline threads")?;
    validated.map_err(|_| anyhow::anyhow!("the validation thread panicked"))?;
    let fold_result = folded.map_err(|_| anyhow::anyhow!("the fold thread panicked"))?;
    fold_result.and(read_result)
}

/// A batch read from the stream, with each message's validation.
struct ValidatedBatch {
    messages: Vec<StreamMessage>,
    events: Vec<Result<Event, EventError>>,
}

fn validate_batches(
    units: &UnitRegistry,
    mut queue: mpsc::Receiver<Vec<StreamMessage>>,
    validated: SyncSender<ValidatedBatch>,
) {
    while let Some(messages) = queue.blocking_recv() {
        let events = messages
            .iter()
            .map(|message| {
                // As of when the stream stored it: every replay decides alike.
                let at = message.published.unwrap_or_else(chrono::Utc::now);
                let validation = kpi_events::Validation::new(units, at);
                kpi_events::parse_message(&message.subject, &message.payload, &validation)
            })
            .collect();
        if validated.send(ValidatedBatch { messages, events }).is_err() {
            return; // The fold thread stopped; it reports why.
        }
    }
}

fn fold_batches(
    store: &Store,
    units: &UnitRegistry,
    queue: Receiver<ValidatedBatch>,
) -> anyhow::Result<()> {
    let mut progress = Progress::new();
    for batch in queue.iter() {
        let batch_started = Instant::now();
        let incoming: Vec<Incoming<'_>> = batch
            .messages
            .iter()
            .zip(batch.events)
            .map(|(message, event)| Incoming {
                sequence: message.sequence,
                subject: &message.subject,
                payload: &message.payload,
                published: message.published,
                redrive_of: message.redrive_of,
                event,
            })
            .collect();
        let report = store
            .ingest(units, &incoming)
            .context("folding a batch into the views (the projector stops; restart it to resume from its checkpoint)")?;
        for (sequence, reason) in &report.parked {
            tracing::warn!(sequence, %reason, "parked an invalid event; `kpictl rejected` lists it");
        }
        progress.add(&report, batch_started.elapsed());
        if progress.since.elapsed() >= REPORT_EVERY {
            progress = progress.log();
        }
    }
    if progress.totals != FoldTotals::default() {
        progress.log();
    }
    Ok(())
}

/// What the fold did since the last progress line.
struct Progress {
    since: Instant,
    totals: FoldTotals,
    checkpoint: u64,
    busy: Duration,
    batches: u64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            since: Instant::now(),
            totals: FoldTotals::default(),
            checkpoint: 0,
            busy: Duration::ZERO,
            batches: 0,
        }
    }

    fn add(&mut self, report: &BatchReport, busy: Duration) {
        self.checkpoint = report.checkpoint;
        self.totals.folded += report.totals.folded;
        self.totals.duplicates += report.totals.duplicates;
        self.totals.parked += report.totals.parked;
        self.busy += busy;
        self.batches += 1;
    }

    /// Logs the progress line and starts a new period.
    fn log(self) -> Progress {
        let events = self.totals.folded + self.totals.duplicates + self.totals.parked;
        let seconds = self.since.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            checkpoint = self.checkpoint,
            folded = self.totals.folded,
            duplicates = self.totals.duplicates,
            parked = self.totals.parked,
            events_per_second = (events as f64 / seconds).round(),
            events_per_batch = events / self.batches.max(1),
            // Below 100, the fold waits for the reader: the bus is the limit.
            busy_percent = (100.0 * self.busy.as_secs_f64() / seconds).round(),
            "folding"
        );
        Progress::new()
    }
}

/// Reads from `next_sequence` on, reconnecting after any bus failure.
async fn read(
    config: &Config,
    store: &Store,
    units: &UnitRegistry,
    mut next_sequence: u64,
    batches: mpsc::Sender<Vec<StreamMessage>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut retry_delay = Duration::from_millis(200);
    while !*stop.borrow() {
        let bus = match config.nats.connect("kpi-projector").await {
            Ok(bus) => bus,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?retry_delay, "NATS unavailable; serving the views as they are");
                if wait_or_stop(&mut stop, retry_delay).await {
                    return Ok(());
                }
                retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        retry_delay = Duration::from_millis(200);
        let state = match bus.ensure_stream().await {
            Ok(_) => bus.stream_state().await,
            // A stream of another storage, retention or subjects is not
            // this system's log: waiting will not fix it.
            Err(err @ kpi_bus::BusError::StreamMismatch { .. }) => return Err(err.into()),
            Err(err) => Err(err),
        };
        match state {
            Ok(state) => {
                // A recreated or truncated stream cannot continue these views.
                store
                    .adopt_stream(&state.created.to_rfc3339(), state.first_sequence)
                    .context("checking the stream against the views")?;
                if state.last_sequence + 1 < next_sequence {
                    anyhow::bail!(
                        "stream {} ends at sequence {} but the views reflect sequence {}: the stream was \
                         recreated or purged; rebuild the views: stop the projector, move its data \
                         directory aside and start it again",
                        kpi_bus::STREAM_NAME,
                        state.last_sequence,
                        next_sequence - 1
                    );
                }
                tracing::info!(
                    from = next_sequence,
                    stream_last = state.last_sequence,
                    "reading the stream"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the stream yet");
                if wait_or_stop(&mut stop, Duration::from_secs(1)).await {
                    return Ok(());
                }
                continue;
            }
        }
        let messages = match bus.read_from(next_sequence).await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start reading");
                if wait_or_stop(&mut stop, Duration::from_secs(1)).await {
                    return Ok(());
                }
                continue;
            }
        };
        // A batch closes when full or LINGER after its first message: under
        // load batches stay large (cheap per event), when quiet an event
        // still shows within milliseconds.
        let mut chunks = std::pin::pin!(tokio_stream::StreamExt::chunks_timeout(
            messages,
            config.batch_size,
            LINGER
        ));
        let mut report = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = report.tick() => check_and_report(&bus, store, units).await?,
                chunk = chunks.next() => {
                    let Some(chunk) = chunk else { break };
                    let mut batch = Vec::with_capacity(chunk.len());
                    let mut failed = None;
                    for item in chunk {
                        match item {
                            Ok(message) => batch.push(message),
                            Err(err) => { failed = Some(err); break; }
                        }
                    }
                    if let Some(last) = batch.last() {
                        next_sequence = last.sequence + 1;
                        if batches.send(batch).await.is_err() {
                            // The fold thread stopped: its error is the one to report.
                            return Ok(());
                        }
                    }
                    if let Some(err) = failed {
                        tracing::warn!(error = %err, from = next_sequence, "stream read failed; reading again");
                        break;
                    }
                }
            }
        }
        if wait_or_stop(&mut stop, Duration::from_millis(500)).await {
            return Ok(());
        }
    }
    Ok(())
}

/// Logs the lag and checks, while reading, that the stream was not
/// recreated under the views; moves the live counts to the tree of today
/// when a change dated in the units file has taken effect.
async fn check_and_report(bus: &Bus, store: &Store, units: &UnitRegistry) -> anyhow::Result<()> {
    let today = kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day();
    if tokio::task::block_in_place(|| store.follow_today(units, today))
        .context("moving the live counts to today's tree of units")?
    {
        tracing::info!(today = %today.to_date(), "a change of the units file took effect today: live counts recomputed");
    }
    let (Ok(state), Ok(checkpoint)) = (bus.stream_state().await, store.checkpoint()) else {
        return Ok(());
    };
    store
        .adopt_stream(&state.created.to_rfc3339(), state.first_sequence)
        .context("checking the stream against the views")?;
    let stream_last = state.last_sequence;
    let totals = store.totals().unwrap_or_default();
    tracing::info!(
        checkpoint,
        stream_last,
        lag = stream_last.saturating_sub(checkpoint),
        folded = totals.folded,
        duplicates = totals.duplicates,
        parked = totals.parked,
        "views"
    );
    Ok(())
}

/// Sleeps for `delay`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(delay) => *stop.borrow(),
    }
}
