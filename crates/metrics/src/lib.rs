//! Prometheus metrics, served on `--metrics-listen` as `GET /metrics`
//! (OpenMetrics text) by the projector and each ingest service.
//!
//! - [`Fold`]: what the projector folded, kept aside and held, its
//!   checkpoint and lag behind the stream, batch sizes and fold latency;
//! - [`Requests`]: gRPC calls (projector) or HTTP requests (ingest) by
//!   method and code, with latency, through a tower layer;
//! - [`Ingested`]: the ingest services' events by outcome.
//!
//! Every metric name starts with `kpi_`; `deploy/grafana/kpi.json` is a
//! dashboard over them.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of OpenMetrics text, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` from `registry` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { scrape(&registry) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn scrape(registry: &Registry) -> axum::response::Response {
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {err}"),
        )
            .into_response(),
    }
}

/// Binds `--metrics-listen` and serves it in the background; the task
/// ends with `shutdown`. Errors name the address.
pub async fn spawn(
    listen: std::net::SocketAddr,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("--metrics-listen {listen}: {err} (is another service using it?)"),
        )
    })?;
    tracing::info!(%listen, "metrics: GET /metrics");
    let registry = Arc::new(registry);
    Ok(tokio::spawn(async move {
        if let Err(err) = serve(listener, registry, shutdown).await {
            tracing::warn!(error = %err, "the metrics server stopped");
        }
    }))
}

/// The projector's fold. Only the live pipeline's batches count: a
/// blue/green rebuild folds the log again beside it, and takes over the
/// metrics when it takes over the views ([`Fold::follow`]).
pub struct Fold {
    /// The pipeline whose batches count ([`FoldSource`]).
    live: AtomicU64,
    folded: Counter,
    duplicates: Counter,
    parked: Counter,
    conflicts: Counter,
    redriven: Counter,
    held: Gauge,
    checkpoint: Gauge,
    stream_last: Gauge,
    lag: Gauge,
    batch_events: Histogram,
    batch_seconds: Histogram,
}

/// What one batch (or the views' totals at start) adds to the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldCounts {
    pub folded: u64,
    pub duplicates: u64,
    pub parked: u64,
    pub conflicts: u64,
    pub redriven: u64,
}

impl Fold {
    pub fn register(registry: &mut Registry) -> Arc<Fold> {
        let fold = Fold {
            live: AtomicU64::new(0),
            folded: Counter::default(),
            duplicates: Counter::default(),
            parked: Counter::default(),
            conflicts: Counter::default(),
            redriven: Counter::default(),
            held: Gauge::default(),
            checkpoint: Gauge::default(),
            stream_last: Gauge::default(),
            lag: Gauge::default(),
            // 1 to 32,768 events.
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            // 100 µs to about 6.5 s.
            batch_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 17)),
        };
        let counters = [
            (
                "kpi_events_folded",
                "Valid events applied to their case, since the views were created",
                &fold.folded,
            ),
            (
                "kpi_events_duplicate",
                "Valid events whose event id was already folded",
                &fold.duplicates,
            ),
            (
                "kpi_events_parked",
                "Invalid events kept aside (kpictl rejected)",
                &fold.parked,
            ),
            (
                "kpi_events_conflicting",
                "Events kept aside by an identity conflict (CONTRACT §1.2)",
                &fold.conflicts,
            ),
            (
                "kpi_events_redriven",
                "Parked events retired because a corrected copy was folded",
                &fold.redriven,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        let gauges = [
            (
                "kpi_held_records",
                "Cases whose events are held until their case.received comes (kpictl held)",
                &fold.held,
            ),
            (
                "kpi_checkpoint_sequence",
                "The last stream sequence the views reflect",
                &fold.checkpoint,
            ),
            (
                "kpi_stream_last_sequence",
                "The stream's last sequence, as last seen",
                &fold.stream_last,
            ),
            (
                "kpi_stream_lag",
                "Messages in the stream not folded yet",
                &fold.lag,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "kpi_fold_batch_events",
            "Messages per folded batch",
            fold.batch_events.clone(),
        );
        registry.register(
            "kpi_fold_batch_duration_seconds",
            "Time to fold and commit one batch",
            fold.batch_seconds.clone(),
        );
        Arc::new(fold)
    }

    /// Makes `source`'s batches the ones that count.
    pub fn follow(&self, source: u64) {
        self.live.store(source, Ordering::Relaxed);
    }

    /// What pipeline `source` reports through.
    pub fn source(self: &Arc<Self>, source: u64) -> FoldSource {
        FoldSource {
            fold: self.clone(),
            source,
        }
    }

    /// Adds counts (the views' totals when the projector starts).
    pub fn add(&self, counts: FoldCounts) {
        self.folded.inc_by(counts.folded);
        self.duplicates.inc_by(counts.duplicates);
        self.parked.inc_by(counts.parked);
        self.conflicts.inc_by(counts.conflicts);
        self.redriven.inc_by(counts.redriven);
    }
}

/// One pipeline's handle on [`Fold`]: it records only while its pipeline
/// is the live one.
#[derive(Clone)]
pub struct FoldSource {
    fold: Arc<Fold>,
    source: u64,
}

impl FoldSource {
    fn live(&self) -> Option<&Fold> {
        (self.fold.live.load(Ordering::Relaxed) == self.source).then_some(&*self.fold)
    }

    /// Adds a batch: its counts, size and fold time, and where it left the
    /// checkpoint and the lag (`behind`: messages the stream held after the
    /// batch's last one when it was read).
    pub fn batch(
        &self,
        counts: FoldCounts,
        messages: usize,
        seconds: f64,
        checkpoint: u64,
        behind: u64,
    ) {
        let Some(fold) = self.live() else { return };
        fold.add(counts);
        fold.batch_events.observe(messages as f64);
        fold.batch_seconds.observe(seconds);
        self.position(checkpoint, checkpoint.saturating_add(behind));
    }

    /// The checkpoint and the stream's last sequence.
    pub fn position(&self, checkpoint: u64, stream_last: u64) {
        let Some(fold) = self.live() else { return };
        fold.checkpoint.set(clamp(checkpoint));
        fold.stream_last.set(clamp(stream_last.max(checkpoint)));
        fold.lag.set(clamp(stream_last.saturating_sub(checkpoint)));
    }

    /// Records held until their `case.received` comes.
    pub fn held(&self, records: u64) {
        let Some(fold) = self.live() else { return };
        fold.held.set(clamp(records));
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The ingest services' events and DVCQG dossiers, by outcome.
#[derive(Clone)]
pub struct Ingested {
    events: Family<OutcomeLabels, Counter>,
    dossiers: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl Ingested {
    pub fn register(registry: &mut Registry) -> Ingested {
        let ingested = Ingested {
            events: Family::default(),
            dossiers: Family::default(),
        };
        registry.register(
            "kpi_ingest_events",
            "Events by outcome: accepted (stored by JetStream, or a duplicate of a stored one), rejected (invalid, with a reason), not_stored (JetStream did not store it in time; send again)",
            ingested.events.clone(),
        );
        registry.register(
            "kpi_ingest_dossiers",
            "DVCQG dossiers by outcome (their stored events count in kpi_ingest_events)",
            ingested.dossiers.clone(),
        );
        ingested
    }

    /// Events of `POST /v1/events` (and those DVCQG dossiers produced).
    pub fn count(&self, accepted: usize, rejected: usize, not_stored: usize) {
        count_outcomes(&self.events, accepted, rejected, not_stored);
    }

    /// Dossiers of `POST /v1/dvcqg`.
    pub fn count_dossiers(&self, accepted: usize, rejected: usize, not_stored: usize) {
        count_outcomes(&self.dossiers, accepted, rejected, not_stored);
    }
}

fn count_outcomes(
    family: &Family<OutcomeLabels, Counter>,
    accepted: usize,
    rejected: usize,
    not_stored: usize,
) {
    for (outcome, count) in [
        ("accepted", accepted),
        ("rejected", rejected),
        ("not_stored", not_stored),
    ] {
        if count > 0 {
            family
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(count as u64);
        }
    }
}

/// gRPC calls (codes as gRPC names them) or HTTP requests (status codes),
/// by method, with latency up to the response's headers: for a unary call
/// its whole time, for a stream its start.
#[derive(Clone)]
pub struct Requests {
    inner: Arc<RequestsInner>,
}

struct RequestsInner {
    protocol: Protocol,
    total: Family<RequestLabels, Counter>,
    seconds: Family<MethodLabels, Histogram>,
    /// Methods seen, at most [`MAX_METHODS`]: a client cannot make the
    /// label set grow without bound.
    methods: Mutex<HashSet<Arc<str>>>,
}

/// Distinct methods (paths) labelled; beyond them, `other`.
pub const MAX_METHODS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Arc<str>,
    code: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Arc<str>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(5e-5, 2.0, 20))
}

impl Requests {
    pub fn register(registry: &mut Registry, protocol: Protocol) -> Requests {
        let requests = Requests {
            inner: Arc::new(RequestsInner {
                protocol,
                total: Family::default(),
                seconds: Family::new_with_constructor(latency_histogram),
                methods: Mutex::new(HashSet::new()),
            }),
        };
        let (name, what) = match protocol {
            Protocol::Grpc => ("kpi_grpc_requests", "gRPC calls by method and code"),
            Protocol::Http => ("kpi_http_requests", "HTTP requests by path and status"),
        };
        registry.register(name, what, requests.inner.total.clone());
        registry.register(
            format!("{name}_duration_seconds"),
            "Time to the response's headers, by method",
            requests.inner.seconds.clone(),
        );
        requests
    }

    pub fn layer(&self) -> RequestsLayer {
        RequestsLayer {
            requests: self.clone(),
        }
    }

    fn record(&self, path: &str, code: &str, seconds: f64) {
        let unmatched = match self.inner.protocol {
            Protocol::Grpc => code == "Unimplemented",
            Protocol::Http => code == "404" || code == "405",
        };
        let method = if unmatched {
            Arc::from("unmatched")
        } else {
            self.method_label(path)
        };
        self.inner
            .total
            .get_or_create(&RequestLabels {
                method: method.clone(),
                code: Arc::from(code),
            })
            .inc();
        self.inner
            .seconds
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    fn method_label(&self, path: &str) -> Arc<str> {
        let mut methods = self
            .inner
            .methods
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(known) = methods.get(path) {
            return known.clone();
        }
        if methods.len() >= MAX_METHODS {
            return Arc::from("other");
        }
        let label: Arc<str> = Arc::from(path);
        methods.insert(label.clone());
        label
    }

    fn code_of<B>(&self, response: &http::Response<B>) -> String {
        match self.inner.protocol {
            Protocol::Http => response.status().as_u16().to_string(),
            // A failed call answers with its status in the headers
            // ("trailers only"); a call that answers has it in the trailers,
            // after the headers this layer sees: OK.
            Protocol::Grpc => match response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<i32>().ok())
            {
                Some(code) => format!("{:?}", tonic::Code::from_i32(code)),
                None => "Ok".to_owned(),
            },
        }
    }
}

#[derive(Clone)]
pub struct RequestsLayer {
    requests: Requests,
}

impl<S> tower::Layer<S> for RequestsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            requests: self.requests.clone(),
        }
    }
}

/// A service whose requests are counted and timed.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    requests: Requests,
}

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>> for Measured<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let requests = self.requests.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => requests.code_of(response),
                Err(_) => "error".to_owned(),
            };
            requests.record(&path, &code, started.elapsed().as_secs_f64());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn the_live_pipelines_batches_move_the_counters_checkpoint_and_lag() {
        let mut registry = Registry::default();
        let fold = Fold::register(&mut registry);
        fold.add(FoldCounts {
            folded: 10,
            ..FoldCounts::default()
        });
        fold.follow(1);
        let (live, rebuild) = (fold.source(1), fold.source(2));
        rebuild.batch(
            FoldCounts {
                folded: 100,
                ..FoldCounts::default()
            },
            100,
            0.5,
            100,
            0,
        );
        live.batch(
            FoldCounts {
                folded: 3,
                duplicates: 1,
                parked: 1,
                ..FoldCounts::default()
            },
            5,
            0.002,
            15,
            40,
        );
        let text = encoded(&registry);
        for line in [
            "kpi_events_folded_total 13",
            "kpi_events_duplicate_total 1",
            "kpi_events_parked_total 1",
            "kpi_checkpoint_sequence 15",
            "kpi_stream_last_sequence 55",
            "kpi_stream_lag 40",
            "kpi_fold_batch_events_count 1",
            "kpi_fold_batch_events_sum 5.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // The rebuild takes over: its batches count from then on.
        fold.follow(2);
        rebuild.position(120, 120);
        live.position(16, 55);
        let text = encoded(&registry);
        assert!(
            text.lines().any(|l| l == "kpi_checkpoint_sequence 120"),
            "{text}"
        );
        assert!(text.lines().any(|l| l == "kpi_stream_lag 0"), "{text}");
    }

    #[test]
    fn methods_beyond_the_cap_are_labelled_other() {
        let mut registry = Registry::default();
        let requests = Requests::register(&mut registry, Protocol::Http);
        for index in 0..MAX_METHODS + 10 {
            requests.record(&format!("/path/{index}"), "200", 0.001);
        }
        requests.record("/anything", "404", 0.001);
        let text = encoded(&registry);
        let labelled = text
            .lines()
            .filter(|line| line.starts_with("kpi_http_requests_total{"))
            .count();
        assert_eq!(labelled, MAX_METHODS + 2, "{text}");
        assert!(
            text.contains(r#"kpi_http_requests_total{method="other",code="200"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kpi_http_requests_total{method="unmatched",code="404"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn grpc_codes_come_from_the_headers_of_a_failed_call() {
        let mut registry = Registry::default();
        let requests = Requests::register(&mut registry, Protocol::Grpc);
        let denied = http::Response::builder()
            .header("grpc-status", "7")
            .body(())
            .unwrap();
        assert_eq!(requests.code_of(&denied), "PermissionDenied");
        assert_eq!(requests.code_of(&http::Response::new(())), "Ok");
    }
}
