//! The live fold and the blue/green rebuild.
//!
//! One pipeline folds the stream into the views the API serves. A rebuild
//! opens new views beside them and folds the stream into them from
//! sequence 1 while the live pipeline goes on; when the new views have
//! caught up, the live pipeline is stopped (it finishes its batch), the new
//! one catches up to the very same sequence, the API switches to the new
//! views and the `current` link follows. Queries never stop.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use kpi_api::Views;
use kpi_domain::UnitRegistry;
use kpi_store::{Store, StoreOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::layout::Layout;

/// What every pipeline is started with.
pub struct Settings {
    pub nats: kpi_bus::NatsArgs,
    pub batch_size: usize,
    pub store_options: StoreOptions,
    /// The fold's metrics (`--metrics-listen`): the live pipeline's.
    pub metrics: Option<Arc<kpi_metrics::Fold>>,
}

/// A running pipeline.
struct Running {
    store: Arc<Store>,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    generation: u64,
}

/// The rebuild in progress, if any.
#[derive(Default)]
struct RebuildState {
    running: bool,
    /// The views being built and the last outcome, for the status message.
    store: Option<Arc<Store>>,
    dir: Option<PathBuf>,
    last_outcome: Option<String>,
}

/// Owns the live pipeline; swaps it for a rebuilt one.
pub struct Supervisor {
    settings: Settings,
    units: Arc<UnitRegistry>,
    layout: Layout,
    views: Views,
    live: Mutex<Option<Running>>,
    rebuild: Mutex<RebuildState>,
    /// A pipeline that ended with an error, by generation.
    failures: mpsc::UnboundedSender<(u64, anyhow::Error)>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        units: Arc<UnitRegistry>,
        layout: Layout,
        views: Views,
    ) -> (
        Arc<Supervisor>,
        mpsc::UnboundedReceiver<(u64, anyhow::Error)>,
    ) {
        let (failures, failed) = mpsc::unbounded_channel();
        let supervisor = Arc::new(Supervisor {
            settings,
            units,
            layout,
            views,
            live: Mutex::new(None),
            rebuild: Mutex::new(RebuildState::default()),
            failures,
            next_generation: std::sync::atomic::AtomicU64::new(1),
        });
        (supervisor, failed)
    }

    /// Starts a pipeline folding into `store`.
    fn start_pipeline(&self, store: Arc<Store>, client_name: &str) -> Running {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let config = kpi_projection::Config {
            nats: self.settings.nats.clone(),
            client_name: client_name.to_owned(),
            batch_size: self.settings.batch_size,
            until: None,
            metrics: self
                .settings
                .metrics
                .as_ref()
                .map(|metrics| metrics.source(generation)),
        };
        let failures = self.failures.clone();
        let units = self.units.clone();
        let pipeline_store = store.clone();
        let task = tokio::spawn(async move {
            let result = kpi_projection::run(config, pipeline_store, units, stopped).await;
            // The error itself goes to whoever decides the exit status
            // (its type says whether a restart can fix it); the task keeps
            // its text.
            result.map_err(|err| {
                let text = anyhow::anyhow!("{err:#}");
                let _ = failures.send((generation, err));
                text
            })
        });
        Running {
            store,
            stop,
            task,
            generation,
        }
    }

    /// Starts folding into the views the API serves.
    pub fn start_live(&self) {
        let running = self.start_pipeline(self.views.current(), "kpi-projector");
        self.follow_with_metrics(&running);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
    }

    /// Makes `running`'s batches the ones the metrics count.
    fn follow_with_metrics(&self, running: &Running) {
        if let Some(metrics) = &self.settings.metrics {
            metrics.follow(running.generation);
        }
    }

    /// The generation of the live pipeline.
    pub fn live_generation(&self) -> u64 {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |running| running.generation)
    }

    /// Stops the live pipeline (it finishes the batch in flight) and waits.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let running = self.live.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(running) = running {
            let _ = running.stop.send(true);
            running.task.await.context("the fold task")??;
            running.store.flush()?;
        }
        Ok(())
    }

    /// Starts a blue/green rebuild; says so, or how far the running one is.
    pub fn request_rebuild(self: &Arc<Self>) -> Result<String, String> {
        let mut state = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        if state.running {
            let progress = state
                .store
                .as_ref()
                .and_then(|store| store.checkpoint().ok())
                .unwrap_or(0);
            let live = self.views.current().checkpoint().unwrap_or(0);
            return Err(format!(
                "a rebuild is already running in {}: at sequence {progress} of the live views' {live}",
                state
                    .dir
                    .as_ref()
                    .map(|dir| dir.display().to_string())
                    .unwrap_or_default()
            ));
        }
        let dir = self.layout.next().map_err(|err| format!("{err:#}"))?;
        state.running = true;
        state.dir = Some(dir.clone());
        state.store = None;
        drop(state);
        let supervisor = self.clone();
        tokio::spawn(async move {
            let outcome = supervisor.rebuild_into(dir.clone()).await;
            let mut state = supervisor.rebuild.lock().unwrap_or_else(|p| p.into_inner());
            state.running = false;
            state.store = None;
            state.last_outcome = Some(match outcome {
                Ok(message) => {
                    tracing::info!("{message}");
                    message
                }
                Err(err) => {
                    let message = format!(
                        "the rebuild into {} failed: {err:#}; the live views are unchanged",
                        dir.display()
                    );
                    tracing::error!("{message}");
                    message
                }
            });
        });
        let previous = self
            .rebuild
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_outcome
            .clone()
            .map(|outcome| format!(" (the last rebuild: {outcome})"))
            .unwrap_or_default();
        Ok(format!(
            "rebuilding the views from the log into {}; the projector switches to them when they have caught up{previous}",
            dir_name(&self.rebuild)
        ))
    }

    async fn rebuild_into(&self, dir: PathBuf) -> anyhow::Result<String> {
        let started = std::time::Instant::now();
        let store = Arc::new(
            Store::open(&dir, &self.settings.store_options)
                .with_context(|| format!("opening new views in {}", dir.display()))?,
        );
        let today = kpi_domain::Moment::from(chrono::Utc::now().fixed_offset()).local_day();
        store.adopt_units(&self.units, today)?;
        self.rebuild.lock().unwrap_or_else(|p| p.into_inner()).store = Some(store.clone());
        tracing::info!(dir = %dir.display(), "rebuilding the views from the log beside the live ones");
        let candidate = self.start_pipeline(store.clone(), "kpi-projector-rebuild");

        // Caught up with the live views?
        loop {
            if candidate.task.is_finished() {
                let outcome = candidate.task.await.context("the rebuild's fold task")?;
                outcome.context("folding the log into the new views")?;
                anyhow::bail!("the rebuild's fold stopped before catching up");
            }
            if store.checkpoint()? >= self.views.current().checkpoint()? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Stop the live fold, then let the new one reach its very sequence.
        let old = self.live.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(old) = old else {
            anyhow::bail!("the projector is stopping");
        };
        let _ = old.stop.send(true);
        match old.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %format!("{err:#}"), "the old live fold ended with an error; switching all the same")
            }
            Err(err) => {
                tracing::warn!(error = %err, "the old live fold task failed; switching all the same")
            }
        }
        let target = old.store.checkpoint()?;
        while store.checkpoint()? < target {
            if candidate.task.is_finished() {
                // Put the old fold back: nothing is switched.
                let restarted = self.start_pipeline(old.store.clone(), "kpi-projector");
                self.follow_with_metrics(&restarted);
                *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(restarted);
                anyhow::bail!("the rebuild's fold stopped before reaching sequence {target}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reached = store.checkpoint()?;
        let old_dir = self.layout.current()?;
        self.views.switch(store.clone());
        self.follow_with_metrics(&candidate);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(candidate);
        self.layout.point_current_to(&dir)?;
        old.store.flush()?;
        Ok(format!(
            "switched to the rebuilt views in {} at stream sequence {reached} after {:.0} s; the previous views stay in {} until you delete them",
            dir.display(),
            started.elapsed().as_secs_f64(),
            old_dir.display()
        ))
    }
}

fn dir_name(state: &Mutex<RebuildState>) -> String {
    state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dir
        .as_ref()
        .map(|dir| dir.display().to_string())
        .unwrap_or_default()
}

/// The API's door to the rebuild.
pub struct Operations(pub Arc<Supervisor>);

impl kpi_api::Operations for Operations {
    fn rebuild(&self) -> Result<String, String> {
        self.0.request_rebuild()
    }
}
