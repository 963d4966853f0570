//! The gRPC API of CONTRACT §5 (`kpi.v1.KpiService`) over the store, with
//! the standard health service and server reflection.
//!
//! Handlers translate requests into store queries and domain answers into
//! replies; every refusal says what to fix (`NOT_FOUND` for an unknown unit,
//! `INVALID_ARGUMENT` with the accepted forms for a bad period).

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use kpi_domain::{Day, Moment, RecordKey, Targets, UnitIdx, UnitRegistry};
use kpi_store::{Store, StoreError};

pub mod access;
mod answers;
mod case;
mod export;
mod flow;
mod rates;
mod risk;
mod scores;

use access::{caller_of, operator_scope};
pub use access::{Access, Bearer, Caller, TokensError};
pub use answers::{Hub, DEFAULT_ANSWER_CACHE_BYTES};
pub use flow::{Catalogue, CatalogueError};
pub use scores::{FactsError, ScoreFacts};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// Generated types and client/server stubs of `proto/kpi/v1/kpi.proto`.
pub mod pb {
    tonic::include_proto!("kpi.v1");
}

use pb::kpi_service_server::{KpiService, KpiServiceServer};

/// The encoded descriptors of `kpi.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kpi_descriptor.bin"));

/// The default `--listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Where "now" comes from for the live counts (a fixed time in tests).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The most parked events one `ListRejected` call returns.
const MAX_REJECTED_PAGE: usize = 1000;

/// About the most bytes of parked events one `ListRejected` call returns
/// (a page holds at least one event): events are up to 64 KiB each, and
/// clients refuse replies over 4 MiB by default.
const MAX_REJECTED_PAGE_BYTES: usize = 1024 * 1024;

/// The largest reply the server sends (clients' default limit).
const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Limits that keep one client from taking the server: every call has a
/// deadline, connections are capped in concurrent calls and checked for
/// life. Health and reflection are outside the limits on calls in flight,
/// so that a load balancer's checks are answered however busy the API is.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A unary call (or a stream's first answer) taking longer ends with
    /// CANCELLED/DEADLINE_EXCEEDED; a client's own shorter deadline wins.
    pub call_deadline: std::time::Duration,
    /// Calls at once on one connection (HTTP/2 streams).
    pub calls_per_connection: u32,
    /// `KpiService` calls being answered at once over all connections;
    /// more wait their turn.
    pub calls_in_flight: usize,
    /// Reads waiting for a `min_stream_sequence` at once, counted apart
    /// from the calls being answered (a wait holds no call's place); more
    /// wait their turn.
    pub sequence_waits: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_deadline: std::time::Duration::from_secs(30),
            calls_per_connection: 256,
            calls_in_flight: 1024,
            sequence_waits: 1024,
        }
    }
}

/// The places of [`Limits::calls_in_flight`] and
/// [`Limits::sequence_waits`].
#[derive(Clone)]
pub(crate) struct Permits {
    calls: Arc<tokio::sync::Semaphore>,
    waits: Arc<tokio::sync::Semaphore>,
}

impl Permits {
    fn new(limits: &Limits) -> Permits {
        Permits {
            calls: Arc::new(tokio::sync::Semaphore::new(limits.calls_in_flight.max(1))),
            waits: Arc::new(tokio::sync::Semaphore::new(limits.sequence_waits.max(1))),
        }
    }

    async fn acquire(
        semaphore: &Arc<tokio::sync::Semaphore>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))
    }

    /// A place among the calls being answered (waits for one).
    pub(crate) async fn call(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Self::acquire(&self.calls).await
    }

    /// A place among the reads waiting for a stream sequence.
    pub(crate) async fn wait(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        Self::acquire(&self.waits).await
    }
}

/// The views the API answers from, switched whole by a blue/green rebuild:
/// every call reads one store from start to end. Each store tells the hub
/// of its commits.
#[derive(Clone)]
pub struct Views {
    store: Arc<std::sync::RwLock<Arc<Store>>>,
    hub: Arc<Hub>,
}

impl Views {
    /// Views of `store` for a registry of `units` units, keeping about
    /// `cache_bytes` of answers.
    pub fn new(store: Arc<Store>, units: usize, cache_bytes: u64) -> Views {
        let hub = Hub::new(units, store.checkpoint().unwrap_or(0), cache_bytes);
        Self::listen(&store, &hub);
        Views {
            store: Arc::new(std::sync::RwLock::new(store)),
            hub,
        }
    }

    fn listen(store: &Store, hub: &Arc<Hub>) {
        let hub = hub.clone();
        store.set_commit_listener(Box::new(move |committed| hub.committed(committed)));
    }

    /// The store calls read now.
    pub fn current(&self) -> Arc<Store> {
        self.store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Answers from `store` from now on; returns the one it replaces.
    pub fn switch(&self, store: Arc<Store>) -> Arc<Store> {
        Self::listen(&store, &self.hub);
        let sequence = store.checkpoint().unwrap_or(0);
        let old = {
            let mut current = self
                .store
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *current, store)
        };
        self.hub.everything_changed(sequence);
        old
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// Operations the projector offers operators through the API.
pub trait Operations: Send + Sync {
    /// Starts a blue/green rebuild, or says how far the running one is.
    fn rebuild(&self) -> Result<String, String>;
}

/// The service state: the views and the configuration they are read with.
#[derive(Clone)]
pub struct KpiApi {
    views: Views,
    units: Arc<UnitRegistry>,
    targets: Arc<Targets>,
    clock: Clock,
    /// Where case audits read events back from (GetCase).
    log: Option<case::Log>,
    operations: Option<Arc<dyn Operations>>,
    facts: Arc<ScoreFacts>,
    /// Who may call (to end the watches of revoked tokens).
    access: Access,
    permits: Permits,
    /// An audit copy that no fold moves on (`projector --frozen`): the
    /// stream sequence it reflects, for ever.
    frozen_at: Option<u64>,
    /// Names of fields and procedures for the case-flow report's rows.
    catalogue: Arc<Catalogue>,
}

impl KpiApi {
    pub fn new(store: Arc<Store>, units: Arc<UnitRegistry>, targets: Arc<Targets>) -> Self {
        KpiApi {
            views: Views::new(store, units.len(), answers::DEFAULT_ANSWER_CACHE_BYTES),
            units,
            targets,
            clock: Arc::new(Utc::now),
            log: None,
            operations: None,
            facts: Arc::new(ScoreFacts::default()),
            access: Access::open(),
            permits: Permits::new(&Limits::default()),
            frozen_at: None,
            catalogue: Arc::new(Catalogue::default()),
        }
    }

    /// Names the case-flow report's fields and procedures from `catalogue`.
    pub fn with_catalogue(mut self, catalogue: Catalogue) -> Self {
        self.catalogue = Arc::new(catalogue);
        self
    }

    /// Serves the views as they are, a frozen audit copy (`projector
    /// --frozen`): a read asking for a later stream sequence is refused at
    /// once, and every call is logged as answered from the copy.
    pub fn frozen(mut self) -> Result<Self, StoreError> {
        self.frozen_at = Some(self.views.current().checkpoint()?);
        Ok(self)
    }

    /// Keeps at most about `bytes` of answers for callers to share
    /// (default [`DEFAULT_ANSWER_CACHE_BYTES`]).
    pub fn with_answer_cache_bytes(mut self, bytes: u64) -> Self {
        self.views = Views::new(self.views.current(), self.units.len(), bytes);
        self
    }

    /// Takes the points of the QĐ 766 components the events cannot give
    /// from an operator's facts file.
    pub fn with_score_facts(mut self, facts: ScoreFacts) -> Self {
        self.facts = Arc::new(facts);
        self
    }

    /// The views, for switching them after a rebuild.
    pub fn views(&self) -> Views {
        self.views.clone()
    }

    /// Reads events back from the stream for GetCase, connecting with
    /// `nats` on first use.
    pub fn with_log(mut self, nats: kpi_bus::NatsArgs) -> Self {
        self.log = Some(case::Log::new(nats));
        self
    }

    /// Offers `operations` (Rebuild) to operators.
    pub fn with_operations(mut self, operations: Arc<dyn Operations>) -> Self {
        self.operations = Some(operations);
        self
    }

    /// Answers as if it were always `clock()` (tests, audits).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn find_unit(&self, unit_id: &str, field: &str) -> Result<UnitIdx, Status> {
        if unit_id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{field} is required; ListUnits lists the units"
            )));
        }
        self.units.find(unit_id).ok_or_else(|| {
            Status::not_found(format!(
                "unit `{unit_id}` is not in the units file; ListUnits lists the known units"
            ))
        })
    }
}

pub(crate) fn internal(error: StoreError) -> Status {
    tracing::error!(%error, "store query failed");
    Status::internal(format!("the views could not be read: {error}"))
}

#[tonic::async_trait]
impl KpiService for KpiApi {
    async fn get_rates(
        &self,
        request: Request<pb::GetRatesRequest>,
    ) -> Result<Response<pb::RatesReply>, Status> {
        let deadline = rates::deadline_of(request.metadata());
        let caller = caller_of(&request);
        let request = request.into_inner();
        // Refuses what the caller may not read (answers are shared by all).
        self.parse_request(
            caller.as_ref(),
            ("unit_id", &request.unit_id),
            &request.period,
        )?;
        // A read of its own writes waits apart from the calls answered.
        if let Some(sequence) = request.min_stream_sequence {
            self.wait_for_sequence(sequence, deadline).await?;
        }
        let _permit = self.permits.call().await?;
        let reply = self
            .rates_reply(
                &request.unit_id,
                &request.period,
                request.min_stream_sequence,
                deadline,
            )
            .await?;
        Ok(Response::new(Arc::unwrap_or_clone(reply)))
    }

    type WatchRatesStream = rates::WatchStream;

    async fn watch_rates(
        &self,
        request: Request<pb::GetRatesRequest>,
    ) -> Result<Response<Self::WatchRatesStream>, Status> {
        let deadline = rates::deadline_of(request.metadata());
        let caller = caller_of(&request);
        let stream = rates::watch(self.clone(), caller, request.into_inner(), deadline).await?;
        Ok(Response::new(stream))
    }

    async fn rank_units(
        &self,
        request: Request<pb::RankUnitsRequest>,
    ) -> Result<Response<pb::RankUnitsReply>, Status> {
        let caller = caller_of(&request);
        let _permit = self.permits.call().await?;
        Ok(Response::new(
            rates::rank(self, caller.as_ref(), request.into_inner()).await?,
        ))
    }

    async fn get_case_flow(
        &self,
        request: Request<pb::GetCaseFlowRequest>,
    ) -> Result<Response<pb::CaseFlowReply>, Status> {
        let deadline = rates::deadline_of(request.metadata());
        let caller = caller_of(&request);
        let reply = self
            .case_flow(caller.as_ref(), request.into_inner(), deadline)
            .await?;
        Ok(Response::new(reply))
    }

    async fn list_late(
        &self,
        request: Request<pb::ListLateRequest>,
    ) -> Result<Response<pb::ListLateReply>, Status> {
        let deadline = rates::deadline_of(request.metadata());
        let caller = caller_of(&request);
        let reply = self
            .late_list(caller.as_ref(), request.into_inner(), deadline)
            .await?;
        Ok(Response::new(reply))
    }

    async fn list_at_risk(
        &self,
        request: Request<pb::ListAtRiskRequest>,
    ) -> Result<Response<pb::ListAtRiskReply>, Status> {
        let caller = caller_of(&request);
        let _permit = self.permits.call().await?;
        Ok(Response::new(risk::list(
            self,
            caller.as_ref(),
            request.into_inner(),
        )?))
    }

    async fn get_scores(
        &self,
        request: Request<pb::GetScoresRequest>,
    ) -> Result<Response<pb::ScoresReply>, Status> {
        let caller = caller_of(&request);
        let _permit = self.permits.call().await?;
        Ok(Response::new(scores::reply(
            self,
            caller.as_ref(),
            request.into_inner(),
        )?))
    }

    async fn list_units(
        &self,
        request: Request<pb::ListUnitsRequest>,
    ) -> Result<Response<pb::ListUnitsReply>, Status> {
        let caller = caller_of(&request);
        let _permit = self.permits.call().await?;
        let request = request.into_inner();
        let as_of = if request.as_of.is_empty() {
            Moment::from((self.clock)()).local_day()
        } else {
            chrono::NaiveDate::parse_from_str(&request.as_of, "%Y-%m-%d")
                .map(Day::from_date)
                .map_err(|_| {
                    Status::invalid_argument(format!(
                        "as_of `{}` is not a date of the form YYYY-MM-DD (empty for today)",
                        request.as_of
                    ))
                })?
        };
        let parent = if request.parent_id.is_empty() {
            None
        } else {
            Some(self.permitted_unit(caller.as_ref(), &request.parent_id, "parent_id", as_of)?)
        };
        // A caller scoped to a unit sees it as the only root.
        let scoped_root = match caller.as_ref().map(|caller| caller.scope) {
            Some(access::Scope::Unit(scope)) if parent.is_none() => Some(scope),
            _ => None,
        };
        let listed: Vec<UnitIdx> = match scoped_root {
            Some(scope) => self
                .units
                .unit(scope)
                .exists_on(as_of)
                .then_some(scope)
                .into_iter()
                .collect(),
            None => self.units.children(parent, as_of).to_vec(),
        };
        let date = |day: Option<Day>| day.map(|day| day.to_date().to_string()).unwrap_or_default();
        let units = listed
            .iter()
            .map(|idx| {
                let unit = self.units.unit(*idx);
                pb::Unit {
                    id: unit.id.clone(),
                    name: unit.name.clone(),
                    level: unit.level.as_str().to_owned(),
                    parent_id: unit
                        .parent_on(as_of)
                        .map(|p| self.units.unit(p).id.clone())
                        .unwrap_or_default(),
                    valid_from: date(unit.days.from),
                    valid_to: date(unit.days.to),
                    successor_of: unit
                        .successor_of
                        .iter()
                        .map(|p| self.units.unit(*p).id.clone())
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListUnitsReply {
            units,
            as_of: as_of.to_date().to_string(),
        }))
    }

    async fn list_rejected(
        &self,
        request: Request<pb::ListRejectedRequest>,
    ) -> Result<Response<pb::ListRejectedReply>, Status> {
        let scope = operator_scope(caller_of(&request).as_ref(), "ListRejected")?;
        let _permit = self.permits.call().await?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => 100,
            limit => limit.min(MAX_REJECTED_PAGE),
        };
        let store = self.views.current();
        let today = Moment::from((self.clock)()).local_day();
        // An operator of a unit sees the events of its units only; one
        // whose unit is unknown, only scope `*`.
        let visible = |event: &kpi_store::ParkedEvent| {
            let day = event
                .published_unix
                .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
                .map_or(today, |at| Moment::from(at).local_day());
            self.in_scope(scope, event.unit_id(), day)
        };
        let (parked, total_rejected) = match scope {
            None => (
                store
                    .parked(request.after_sequence, limit)
                    .map_err(internal)?,
                store.totals().map_err(internal)?.kept_aside(),
            ),
            Some(_) => {
                let mut total = 0;
                let mut page = Vec::new();
                for event in store.parked_iter(0) {
                    let event = event.map_err(internal)?;
                    if !visible(&event) {
                        continue;
                    }
                    total += 1;
                    if event.sequence > request.after_sequence && page.len() < limit {
                        page.push(event);
                    }
                }
                (page, total)
            }
        };
        // Pages are bounded in bytes too: the next page starts after the
        // last event of this one.
        let mut page_bytes = 0;
        let events = parked
            .into_iter()
            .enumerate()
            .take_while(|(index, event)| {
                page_bytes += event.payload.len() + event.subject.len() + event.reason.len() + 64;
                *index == 0 || page_bytes <= MAX_REJECTED_PAGE_BYTES
            })
            .map(|(_, event)| pb::RejectedEvent {
                stream_sequence: event.sequence,
                subject: event.subject,
                payload: event.payload,
                field: event.field.unwrap_or_default(),
                reason: event.reason,
                published_at: event
                    .published_unix
                    .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
                    .map(|at| at.to_rfc3339())
                    .unwrap_or_default(),
                cause: event.cause.as_str().to_owned(),
            })
            .collect();
        Ok(Response::new(pb::ListRejectedReply {
            events,
            total_rejected,
        }))
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::CaseReply>, Status> {
        let scope = operator_scope(caller_of(&request).as_ref(), "GetCase")?;
        let _permit = self.permits.call().await?;
        let case_id = request.into_inner().case_id;
        if case_id.is_empty() {
            return Err(Status::invalid_argument(
                "case_id is required: the case code (mã hồ sơ) or feedback code",
            ));
        }
        let store = self.views.current();
        let now = Moment::from((self.clock)());
        for key in [
            RecordKey::Case(case_id.clone()),
            RecordKey::Feedback(case_id.clone()),
        ] {
            let (record, sequence) = store.record_at_checkpoint(&key).map_err(internal)?;
            if let Some(record) = record {
                if !self.record_in_scope(scope, &record) {
                    return Err(Status::permission_denied(format!(
                        "case `{case_id}` is not of a unit in the token's scope"
                    )));
                }
                let mut reply = case::reply(&key, &record, sequence, now, self.log.as_ref()).await;
                if let Some(state) = &mut reply.state {
                    state.field_name = self.catalogue.known_field(&state.field).to_owned();
                    state.procedure_name = self
                        .catalogue
                        .known_procedure(&state.procedure_code)
                        .to_owned();
                }
                return Ok(Response::new(reply));
            }
        }
        Err(Status::not_found(format!(
            "no event of case or feedback `{case_id}` has been folded (as of stream sequence {}); \
             check the code, or `kpictl rejected` for events kept aside",
            store.checkpoint().map_err(internal)?
        )))
    }

    async fn list_held(
        &self,
        request: Request<pb::ListHeldRequest>,
    ) -> Result<Response<pb::ListHeldReply>, Status> {
        let scope = operator_scope(caller_of(&request).as_ref(), "ListHeld")?;
        let _permit = self.permits.call().await?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => 100,
            limit => limit.min(MAX_REJECTED_PAGE),
        };
        let after = (!request.after.is_empty()).then_some(request.after.as_str());
        let page = self.views.current().held(after, limit).map_err(internal)?;
        let records = page
            .records
            .into_iter()
            .filter(|(_, held)| self.in_scope(scope, &held.unit_id, held.first_at.local_day()))
            .map(|(key, held)| pb::HeldRecord {
                case_id: key.code().to_owned(),
                feedback: matches!(key, RecordKey::Feedback(_)),
                unit_id: held.unit_id,
                first_at: case::rfc3339(held.first_at),
                events: held.events as u32,
            })
            .collect();
        Ok(Response::new(pb::ListHeldReply {
            records,
            next: page.next.unwrap_or_default(),
        }))
    }

    type ExportViewsStream = export::ChunkStream;

    async fn export_views(
        &self,
        request: Request<pb::ExportViewsRequest>,
    ) -> Result<Response<Self::ExportViewsStream>, Status> {
        let scope = operator_scope(caller_of(&request).as_ref(), "ExportViews")?;
        let _permit = self.permits.call().await?;
        let api = self.clone();
        let today = Moment::from((self.clock)()).local_day();
        // Open cases follow the tree of today.
        let visible: export::Visible =
            Box::new(move |unit, day| api.in_scope(scope, unit, day.unwrap_or(today)));
        Ok(Response::new(export::chunks(self.views.current(), visible)))
    }

    async fn rebuild(
        &self,
        request: Request<pb::RebuildRequest>,
    ) -> Result<Response<pb::RebuildReply>, Status> {
        let caller = caller_of(&request);
        if operator_scope(caller.as_ref(), "Rebuild")?.is_some() {
            return Err(Status::permission_denied(
                "Rebuild rebuilds every unit's views: it needs an operator token of scope `*`",
            ));
        }
        let Some(operations) = &self.operations else {
            return Err(Status::unimplemented(
                "this server cannot rebuild its views (only the projector can)",
            ));
        };
        operations
            .rebuild()
            .map(|message| Response::new(pb::RebuildReply { message }))
            .map_err(Status::failed_precondition)
    }
}

/// How the API is served: who may call (CONTRACT §8) and, with an
/// identity (certificate and key), over TLS; with `requests`, every call
/// counted and timed for the metrics.
#[derive(Clone, Default)]
pub struct Serving {
    pub access: Access,
    pub tls: Option<tonic::transport::Identity>,
    pub limits: Limits,
    pub requests: Option<kpi_metrics::Requests>,
}

/// Serves `KpiService`, health and reflection on `listener` until
/// `shutdown` completes. Health and reflection answer without a token.
pub async fn serve(
    listener: TcpListener,
    api: KpiApi,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KpiServiceServer<KpiApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Small replies must leave at once: without TCP_NODELAY, Nagle's
    // algorithm and delayed acks add ~40 ms to a unary call.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok::<_, std::io::Error>(stream)
    });
    let access = serving.access;
    let limits = serving.limits;
    let frozen_at = api.frozen_at;
    let api = KpiApi {
        access: access.clone(),
        permits: Permits::new(&limits),
        ..api
    };
    let kpi = tonic::service::interceptor::InterceptedService::new(
        KpiServiceServer::new(api)
            .max_encoding_message_size(MAX_REPLY_BYTES)
            .max_decoding_message_size(64 * 1024),
        move |request| {
            if let Some(frozen_at) = frozen_at {
                tracing::info!(
                    frozen_at,
                    "a call answered from a frozen audit copy: the views as they were at stream sequence {frozen_at}"
                );
            }
            access.intercept(request)
        },
    );
    let mut server = tonic::transport::Server::builder()
        .timeout(limits.call_deadline)
        .concurrency_limit_per_connection(limits.calls_per_connection as usize)
        .max_concurrent_streams(Some(limits.calls_per_connection))
        .layer(tower::util::option_layer(
            serving.requests.as_ref().map(kpi_metrics::Requests::layer),
        ))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)));
    if let Some(identity) = serving.tls {
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(kpi)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const UNITS: &str = r#"{"units":[{"id":"51","name":"Tỉnh Quảng Ngãi","level":"province"},
        {"id":"51531","name":"Thị xã Đức Phổ","level":"district","parent":"51"},
        {"id":"5153105","name":"Phường Nguyễn Nghiêm","level":"commune","parent":"51531"}]}"#;

    fn api(dir: &std::path::Path) -> KpiApi {
        let store = Store::open(dir, &kpi_store::StoreOptions::default()).unwrap();
        let units = UnitRegistry::from_json(UNITS.as_bytes()).unwrap();
        KpiApi::new(
            Arc::new(store),
            Arc::new(units),
            Arc::new(Targets::defaults()),
        )
    }

    fn rates_request(unit_id: &str, period: &str) -> Request<pb::GetRatesRequest> {
        Request::new(pb::GetRatesRequest {
            unit_id: unit_id.into(),
            period: period.into(),
            min_stream_sequence: None,
        })
    }

    #[tokio::test]
    async fn an_unknown_unit_is_not_found_and_says_where_to_look() {
        let dir = tempfile::tempdir().unwrap();
        let status = api(dir.path())
            .get_rates(rates_request("99", "2025"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status
                .message()
                .contains("unit `99` is not in the units file"),
            "{}",
            status.message()
        );
        let status = api(dir.path())
            .get_rates(rates_request("", "2025"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    /// Events of up to 64 KiB kept aside: a page stops at about 1 MiB, and
    /// paging on from its last sequence gives every one exactly once.
    #[tokio::test]
    async fn list_rejected_pages_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let units = UnitRegistry::from_json(UNITS.as_bytes()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..40)
            .map(|n| format!(r#"{{"note": "{n} {}"}}"#, "x".repeat(60_000)).into_bytes())
            .collect();
        let subject = "cases.5153105.case.received";
        let incoming: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(n, payload)| {
                kpi_store::Incoming::validate(n as u64 + 1, subject, payload, None, &units)
            })
            .collect();
        api.views.current().ingest(&units, &incoming).unwrap();
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = api
                .list_rejected(Request::new(pb::ListRejectedRequest {
                    after_sequence: after,
                    limit: 1000,
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.total_rejected, 40);
            let Some(last) = page.events.last() else {
                break;
            };
            let bytes: usize = page.events.iter().map(|event| event.payload.len()).sum();
            assert!(
                bytes <= MAX_REJECTED_PAGE_BYTES,
                "{bytes} bytes in one page"
            );
            after = last.stream_sequence;
            seen.extend(page.events.iter().map(|event| event.stream_sequence));
        }
        assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_bad_period_is_invalid_and_lists_the_forms() {
        let dir = tempfile::tempdir().unwrap();
        let status = api(dir.path())
            .get_rates(rates_request("51", "2025-Q5"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("R2024-6M"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("2024-03-15..2024-06-14"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn empty_views_answer_every_kpi_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let reply = api(dir.path())
            .get_rates(rates_request("5153105", "R2025"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.unit_name, "Phường Nguyễn Nghiêm");
        assert_eq!(
            (reply.first_day.as_str(), reply.last_day.as_str()),
            ("2024-12-15", "2025-12-14")
        );
        assert_eq!(reply.rates.len(), 13);
        let on_time = &reply.rates[0];
        assert_eq!(
            (on_time.kpi.as_str(), on_time.percent, on_time.met),
            ("on_time_rate", None, None)
        );
        assert_eq!(on_time.target_percent, Some(97.0));
        assert_eq!(
            reply.rates[1].target_percent, None,
            "late_rate has no target"
        );
        assert_eq!(reply.counts.get("received"), Some(&0));
        assert_eq!(reply.stream_sequence, 0);
    }

    #[tokio::test]
    async fn list_units_walks_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(dir.path());
        let list = |parent: &str| pb::ListUnitsRequest {
            parent_id: parent.into(),
            as_of: String::new(),
        };
        let roots = api
            .list_units(Request::new(list("")))
            .await
            .unwrap()
            .into_inner()
            .units;
        assert_eq!(roots.len(), 1);
        assert_eq!(
            (roots[0].id.as_str(), roots[0].level.as_str()),
            ("51", "province")
        );
        let communes = api
            .list_units(Request::new(list("51531")))
            .await
            .unwrap()
            .into_inner()
            .units;
        assert_eq!(communes[0].name, "Phường Nguyễn Nghiêm");
        assert_eq!(communes[0].parent_id, "51531");
        let status = api
            .list_units(Request::new(list("nope")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn list_units_gives_the_tree_of_the_day_asked() {
        const REFORM: &str = r#"{"units": [
          {"id": "P", "name": "Tỉnh P", "level": "province"},
          {"id": "D", "name": "Huyện D", "level": "district", "parent": "P", "valid_to": "2025-06-30"},
          {"id": "A", "name": "Xã A", "level": "commune",
           "parents": [{"id": "D", "to": "2025-06-30"}, {"id": "P", "from": "2025-07-01"}]},
          {"id": "B", "name": "Xã B", "level": "commune", "parent": "D", "valid_to": "2025-06-30"},
          {"id": "W", "name": "Phường W", "level": "commune", "parent": "P",
           "valid_from": "2025-07-01", "successor_of": ["B"]}]}"#;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &kpi_store::StoreOptions::default()).unwrap();
        let api = KpiApi::new(
            Arc::new(store),
            Arc::new(UnitRegistry::from_json(REFORM.as_bytes()).unwrap()),
            Arc::new(Targets::defaults()),
        )
        .with_clock(Arc::new(|| "2026-11-29T03:00:00Z".parse().unwrap()));
        let list = |parent: &str, as_of: &str| {
            let api = api.clone();
            let request = pb::ListUnitsRequest {
                parent_id: parent.into(),
                as_of: as_of.into(),
            };
            async move { api.list_units(Request::new(request)).await }
        };
        let ids = |reply: pb::ListUnitsReply| {
            reply
                .units
                .iter()
                .map(|unit| format!("{}<{}", unit.id, unit.parent_id))
                .collect::<Vec<_>>()
        };
        let before = list("P", "2025-06-30").await.unwrap().into_inner();
        assert_eq!(ids(before), ["D<P"]);
        let in_d = list("D", "2025-06-30").await.unwrap().into_inner();
        assert_eq!(ids(in_d), ["A<D", "B<D"]);
        let today = list("P", "").await.unwrap().into_inner();
        assert_eq!(today.as_of, "2026-11-29");
        assert_eq!(today.units[1].successor_of, ["B"]);
        assert_eq!(today.units[1].valid_from, "2025-07-01");
        assert_eq!(ids(today), ["A<P", "W<P"]);
        let status = list("P", "30/06/2025").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
