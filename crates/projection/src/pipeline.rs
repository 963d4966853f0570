//! Reading the stream and folding it.
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
    /// The NATS client name (`kpi-projector`, `kpictl-replay`, ...).
    pub client_name: String,
    pub batch_size: usize,
    /// Where to stop: `None` follows the stream for ever (the projector).
    pub until: Option<Until>,
    /// Where the projector's metrics go (`--metrics-listen`).
    pub metrics: Option<kpi_metrics::FoldSource>,
}

/// Where a fold stops (`kpictl replay --until`, `kpictl verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// After folding this stream sequence.
    Sequence(u64),
    /// After the last message the stream stored at or before this time.
    Time(chrono::DateTime<chrono::Utc>),
    /// At the stream's last sequence when reading starts.
    StreamEnd,
}

/// Batches in flight between two stages.
const QUEUED_BATCHES: usize = 4;

/// How long a batch waits for more messages before it is folded.
const LINGER: Duration = Duration::from_millis(5);

/// How often progress and lag are logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Runs until `stop` turns true (then finishes the batches already read),
/// `config.until` is reached, or the store or the stream fails.
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
    let fold_metrics = config.metrics.clone();
    // The reader stops when told to, or when the fold thread ends (an
    // error): a reader waiting for news of a quiet stream would not notice.
    let (reader_stop, reader_stopped) = watch::channel(false);
    let folder = std::thread::Builder::new()
        .name("fold".into())
        .spawn(move || {
            let folded = fold_batches(&fold_store, &units, fold_queue, fold_metrics.as_ref());
            let _ = reader_stop.send(true);
            folded
        })
        .context("starting the fold thread")?;
    let read_result = read(
        &config,
        &store,
        &reader_units,
        first_sequence,
        batches,
        either(stop, reader_stopped),
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

/// Turns true when either does.
fn either(
    mut first: watch::Receiver<bool>,
    mut second: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(*first.borrow() || *second.borrow());
    tokio::spawn(async move {
        let (mut first_open, mut second_open) = (true, true);
        loop {
            if *first.borrow_and_update() || *second.borrow_and_update() {
                let _ = sender.send(true);
                return;
            }
            tokio::select! {
                changed = first.changed(), if first_open => first_open = changed.is_ok(),
                changed = second.changed(), if second_open => second_open = changed.is_ok(),
                _ = sender.closed() => return,
            }
        }
    });
    receiver
}

/// A batch read from the stream, with each message's validation and the
/// hash of each valid event's content.
struct ValidatedBatch {
    messages: Vec<StreamMessage>,
    events: Vec<(Result<Event, EventError>, kpi_events::ContentHash)>,
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
                let event =
                    kpi_events::parse_message(&message.subject, &message.payload, &validation);
                let content = kpi_store::content_of(&event);
                (event, content)
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
    metrics: Option<&kpi_metrics::FoldSource>,
) -> anyhow::Result<()> {
    let mut progress = Progress::new();
    loop {
        let batch = match queue.recv_timeout(Duration::from_secs(1)) {
            Ok(batch) => batch,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Quiet: a commit that could not be written (a disk that
                // filled up) is noticed all the same.
                store.check_written().context(
                    "writing a batch into the views (the projector stops; restart it to resume from its checkpoint)",
                )?;
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let batch_started = Instant::now();
        let incoming: Vec<Incoming<'_>> = batch
            .messages
            .iter()
            .zip(batch.events)
            .map(|(message, (event, content))| Incoming {
                sequence: message.sequence,
                subject: &message.subject,
                payload: &message.payload,
                published: message.published,
                redrive_of: message.redrive_of,
                behind: message.pending,
                event,
                content,
            })
            .collect();
        // Applied by the store's writer thread while the next batch folds.
        let report = store
            .ingest_pipelined(units, &incoming)
            .context("folding a batch into the views (the projector stops; restart it to resume from its checkpoint)")?;
        for (sequence, reason) in &report.parked {
            let reason = kpi_events::cut_reason(reason);
            tracing::warn!(sequence, %reason, "parked an invalid event; `kpictl rejected` lists it");
        }
        let busy = batch_started.elapsed();
        if let Some(metrics) = metrics {
            let behind = batch.messages.last().map_or(0, |message| message.pending);
            metrics.batch(
                fold_counts(&report.totals),
                batch.messages.len(),
                busy.as_secs_f64(),
                report.checkpoint,
                behind,
            );
        }
        progress.add(&report, busy);
        if progress.since.elapsed() >= REPORT_EVERY {
            progress = progress.log();
        }
    }
    if progress.totals != FoldTotals::default() {
        progress.log();
    }
    // The last batch applied before the pipeline says it is done.
    store
        .settle()
        .context("writing the last batch into the views (restart to resume from its checkpoint)")?;
    Ok(())
}

/// The metrics' view of fold totals.
pub fn fold_counts(totals: &FoldTotals) -> kpi_metrics::FoldCounts {
    kpi_metrics::FoldCounts {
        folded: totals.folded,
        duplicates: totals.duplicates,
        parked: totals.parked,
        conflicts: totals.conflicts,
        redriven: totals.redriven,
    }
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

/// How long the fold waits for a message read back from the log.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads messages back from the stream for the fold thread (which is not
/// one of the runtime's): the rare decisions a record cannot make alone.
fn log_reader(bus: Bus, runtime: tokio::runtime::Handle) -> kpi_store::LogReader {
    Arc::new(move |sequence| {
        runtime.block_on(async {
            match tokio::time::timeout(READ_BACK_TIMEOUT, bus.message_at(sequence)).await {
                Err(_) => Err(format!("no answer within {READ_BACK_TIMEOUT:?}")),
                Ok(Err(err)) => Err(err.to_string()),
                Ok(Ok(message)) => Ok(message.map(|message| kpi_store::LoggedMessage {
                    subject: message.subject,
                    payload: message.payload.to_vec(),
                    published: message.published,
                })),
            }
        })
    })
}

/// Reads from `next_sequence` on, reconnecting after any bus failure, until
/// `stop`, `config.until` or a stream that no longer matches the views.
async fn read(
    config: &Config,
    store: &Store,
    units: &UnitRegistry,
    mut next_sequence: u64,
    batches: mpsc::Sender<Vec<StreamMessage>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut retry_delay = Duration::from_millis(200);
    let mut until_sequence = match config.until {
        Some(Until::Sequence(sequence)) => Some(sequence),
        _ => None,
    };
    while !*stop.borrow() {
        if until_sequence.is_some_and(|until| next_sequence > until) {
            return Ok(());
        }
        let bus = match config.nats.connect(&config.client_name).await {
            Ok(bus) => bus,
            // A refused login: a restart cannot fix a password.
            Err(err @ kpi_bus::BusError::LoginRefused { .. }) => return Err(err.into()),
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
        store.set_log_reader(log_reader(bus.clone(), tokio::runtime::Handle::current()));
        let state = match bus.ensure_stream().await {
            Ok(_) => bus.stream_state().await,
            // A stream of another storage, retention or subjects is not
            // this system's log: waiting will not fix it.
            Err(err @ kpi_bus::BusError::StreamMismatch { .. }) => return Err(err.into()),
            Err(err) => Err(err),
        };
        match state {
            Ok(state) => {
                check_stream(&bus, store, &state).await?;
                if config.until == Some(Until::StreamEnd) && until_sequence.is_none() {
                    until_sequence = Some(state.last_sequence);
                    if next_sequence > state.last_sequence {
                        return Ok(());
                    }
                }
                tracing::info!(
                    from = next_sequence,
                    stream_last = state.last_sequence,
                    "reading the stream"
                );
            }
            Err(err) => {
                if let Some(refused) = bus.violated() {
                    return Err(refused.into());
                }
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
                if let Some(refused) = bus.violated() {
                    return Err(refused.into());
                }
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
        // While the views catch up (the stream holds more than a batch
        // beyond what was read), chunks are joined into full batches: a
        // large batch costs less per event. Following live, each chunk
        // goes at once.
        let mut carried: Vec<StreamMessage> = Vec::new();
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.tick().await;
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                // The server refused this user something: the projector
                // stops rather than serve figures that no longer move.
                refused = bus.violation() => return Err(refused.into()),
                _ = check.tick(), if config.until.is_none() => {
                    check_while_reading(&bus, store, units).await?;
                }
                _ = report.tick() => report_lag(&bus, store, config.metrics.as_ref()).await,
                chunk = chunks.next() => {
                    let Some(chunk) = chunk else { break };
                    let mut batch = Vec::with_capacity(chunk.len());
                    let mut failed = None;
                    let mut reached_until = false;
                    for item in chunk {
                        match item {
                            Ok(message) => {
                                let past_time = matches!(config.until, Some(Until::Time(until))
                                    if message.published.is_some_and(|at| at > until));
                                if past_time {
                                    reached_until = true;
                                    break;
                                }
                                let last = until_sequence.is_some_and(|until| message.sequence >= until);
                                batch.push(message);
                                if last {
                                    reached_until = true;
                                    break;
                                }
                            }
                            Err(err) => { failed = Some(err); break; }
                        }
                    }
                    let catching_up = batch
                        .last()
                        .is_some_and(|last| last.pending as usize >= config.batch_size);
                    carried.extend(batch);
                    let full = carried.len() >= config.batch_size;
                    let hold = catching_up && !full && !reached_until && failed.is_none();
                    if let (Some(last), false) = (carried.last(), hold) {
                        next_sequence = last.sequence + 1;
                        if batches.send(std::mem::take(&mut carried)).await.is_err() {
                            // The fold thread stopped: its error is the one to report.
                            return Ok(());
                        }
                    }
                    if reached_until {
                        return Ok(());
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

/// How often the stream is checked against the views while reading.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The stream must be the one the views were folded from: the same
/// creation, nothing unfolded removed from its start, and still holding
/// the very message the views last folded at its sequence. A stream that
/// lost acknowledged messages (a single node's power loss) and took new
/// ones under the same sequences fails the last test.
async fn check_stream(
    bus: &Bus,
    store: &Store,
    state: &kpi_bus::StreamState,
) -> anyhow::Result<()> {
    store
        .adopt_stream(&state.created.to_rfc3339(), state.first_sequence)
        .context("checking the stream against the views")?;
    let checkpoint = store.checkpoint()?;
    if state.last_sequence < checkpoint {
        return Err(StreamLeftTheViews(format!(
            "stream {} ends at sequence {} but the views reflect sequence {checkpoint}: the stream lost \
             messages the views counted (or was recreated or purged). Stopping instead of mixing two logs: \
             run `kpictl verify` to compare, then rebuild the views: once NATS holds the right log, move the \
             projector's data directory aside and start it again (README, Rebuilding the views)",
            kpi_bus::STREAM_NAME,
            state.last_sequence,
        ))
        .into());
    }
    if let Some((sequence, published_nanos)) = store.last_message()? {
        let stored = bus
            .published_at(sequence)
            .await
            .context("reading back the last message the views folded")?;
        let same = stored.and_then(|at| at.timestamp_nanos_opt()) == Some(published_nanos);
        if published_nanos != 0 && !same {
            return Err(StreamLeftTheViews(format!(
                "stream {} no longer holds, at sequence {sequence}, the message the views folded there \
                 (stored at {}): it lost acknowledged messages and reused their sequences, or was \
                 recreated. Stopping instead of counting a different log: run `kpictl verify`, then rebuild \
                 the views: move the projector's data directory aside and start it again (README, Rebuilding \
                 the views)",
                kpi_bus::STREAM_NAME,
                chrono::DateTime::from_timestamp_nanos(published_nanos).to_rfc3339(),
            ))
            .into());
        }
    }
    Ok(())
}

/// The stream no longer holds the log the views were folded from: an
/// operator must compare (`kpictl verify`) and rebuild.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamLeftTheViews(String);

/// The periodic checks of a live fold: the stream still matches the views,
/// and the live counts follow today's tree of units.
async fn check_while_reading(bus: &Bus, store: &Store, units: &UnitRegistry) -> anyhow::Result<()> {
    let today = kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day();
    if tokio::task::block_in_place(|| store.follow_today(units, today))
        .context("moving the live counts to today's tree of units")?
    {
        tracing::info!(today = %today.to_date(), "a change of the units file took effect today: live counts recomputed");
    }
    // A NATS outage is not a mismatch: the read loop reconnects.
    if let Ok(state) = bus.stream_state().await {
        check_stream(bus, store, &state).await?;
    }
    Ok(())
}

/// Logs the lag (stream last sequence minus checkpoint) and totals, and
/// gives the metrics the lag and the held records.
async fn report_lag(bus: &Bus, store: &Store, metrics: Option<&kpi_metrics::FoldSource>) {
    let (Ok(state), Ok(checkpoint)) = (bus.stream_state().await, store.checkpoint()) else {
        return;
    };
    let stream_last = state.last_sequence;
    let totals = store.totals().unwrap_or_default();
    if let Some(metrics) = metrics {
        metrics.position(checkpoint, stream_last);
        if let Ok(held) = tokio::task::block_in_place(|| store.held_count()) {
            metrics.held(held);
        }
    }
    tracing::info!(
        checkpoint,
        stream_last,
        lag = stream_last.saturating_sub(checkpoint),
        folded = totals.folded,
        duplicates = totals.duplicates,
        parked = totals.parked,
        conflicts = totals.conflicts,
        "views"
    );
}

/// Sleeps for `delay`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(delay) => *stop.borrow(),
    }
}
