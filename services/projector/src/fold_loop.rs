//! Reading the stream and folding it: the projector's pipeline.
//!
//! The reader (async) groups whatever messages are ready, up to the batch
//! size, and hands each group to the fold thread through a short bounded
//! queue; the fold thread commits each group with its checkpoint. Reading
//! and folding thus overlap, and a slow store slows the reader down instead
//! of filling memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use kpi_bus::{Bus, StreamMessage};
use kpi_domain::UnitRegistry;
use kpi_store::{FoldTotals, Incoming, Store};
use tokio::sync::{mpsc, watch};

pub struct Config {
    pub nats_url: String,
    pub batch_size: usize,
}

/// Batches in flight between the reader and the fold thread.
const QUEUED_BATCHES: usize = 4;

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
    let (batches, queue) = mpsc::channel(QUEUED_BATCHES);
    let fold_store = store.clone();
    let folder = std::thread::Builder::new()
        .name("fold".into())
        .spawn(move || fold_batches(&fold_store, &units, queue))
        .context("starting the fold thread")?;
    let read_result = read(&config, &store, first_sequence, batches, stop).await;
    // The queue is closed now: the fold thread finishes what was read.
    let fold_result = tokio::task::spawn_blocking(move || folder.join())
        .await
        .context("joining the fold thread")?
        .map_err(|_| anyhow::anyhow!("the fold thread panicked"))?;
    fold_result.and(read_result)
}

fn fold_batches(
    store: &Store,
    units: &UnitRegistry,
    mut queue: mpsc::Receiver<Vec<StreamMessage>>,
) -> anyhow::Result<()> {
    let mut since_report = FoldTotals::default();
    let mut last_report = Instant::now();
    while let Some(batch) = queue.blocking_recv() {
        let incoming: Vec<Incoming<'_>> = batch
            .iter()
            .map(|message| Incoming {
                sequence: message.sequence,
                subject: &message.subject,
                payload: &message.payload,
                published: message.published,
            })
            .collect();
        let report = store
            .ingest(units, &incoming)
            .context("folding a batch into the views (the projector stops; restart it to resume from its checkpoint)")?;
        for (sequence, reason) in &report.parked {
            tracing::warn!(sequence, %reason, "parked an invalid event; `kpictl rejected` lists it");
        }
        since_report.folded += report.totals.folded;
        since_report.duplicates += report.totals.duplicates;
        since_report.parked += report.totals.parked;
        if last_report.elapsed() >= REPORT_EVERY {
            let seconds = last_report.elapsed().as_secs_f64();
            tracing::info!(
                checkpoint = report.checkpoint,
                folded = since_report.folded,
                duplicates = since_report.duplicates,
                parked = since_report.parked,
                events_per_second =
                    ((since_report.folded + since_report.duplicates + since_report.parked) as f64
                        / seconds)
                        .round(),
                "folding"
            );
            since_report = FoldTotals::default();
            last_report = Instant::now();
        }
    }
    Ok(())
}

/// Reads from `next_sequence` on, reconnecting after any bus failure.
async fn read(
    config: &Config,
    store: &Store,
    mut next_sequence: u64,
    batches: mpsc::Sender<Vec<StreamMessage>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut retry_delay = Duration::from_millis(200);
    while !*stop.borrow() {
        let bus = match Bus::connect(&config.nats_url, "kpi-projector").await {
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
        let last = match bus.ensure_stream().await.and(Ok(())) {
            Ok(()) => bus.last_sequence().await,
            Err(err) => Err(err),
        };
        match last {
            Ok(last) if last + 1 < next_sequence => {
                anyhow::bail!(
                    "stream {} ends at sequence {last} but the views reflect sequence {}: the stream was \
                     recreated or purged; rebuild the views with `kpictl replay`",
                    kpi_bus::STREAM_NAME,
                    next_sequence - 1
                );
            }
            Ok(last) => tracing::info!(
                from = next_sequence,
                stream_last = last,
                "reading the stream"
            ),
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
        let mut chunks = std::pin::pin!(messages.ready_chunks(config.batch_size));
        let mut report = tokio::time::interval(REPORT_EVERY);
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = report.tick() => report_lag(&bus, store).await,
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

async fn report_lag(bus: &Bus, store: &Store) {
    let (Ok(stream_last), Ok(checkpoint)) = (bus.last_sequence().await, store.checkpoint()) else {
        return;
    };
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
}

/// Sleeps for `delay`; true if asked to stop meanwhile.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(delay) => *stop.borrow(),
    }
}
