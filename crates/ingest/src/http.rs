//! The HTTP face of an ingest service (CONTRACT §7):
//!
//! - `POST /v1/events`: one JSON event (`application/json`) or NDJSON
//!   (`application/x-ndjson`), at most 10,000 lines and 16 MiB;
//! - `POST /v1/dvcqg` (intake only): a DVCQG snapshot or progress payload,
//!   and `POST /v1/dvcqg/auth`, the login of existing DVCQG senders (§7.2);
//! - `GET /healthz`: 200 when JetStream answers, else 503.
//!
//! With `--tokens` every post needs a sender token (§8.1; a DVCQG body may
//! carry it as its `session`), and every post is held to the limits of
//! [`crate::limits`].
//!
//! Status: 200 when every line was stored; 400 when any was rejected (the
//! others are stored and listed all the same); 413 for a body too large;
//! 415 for another content type; 503 with `Retry-After` when the bus did not
//! store an event in time, listing what it did store. Never a 2xx for an
//! event that is not stored. Payloads are never logged: DVCQG snapshots
//! carry personal data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::batch::{ndjson_lines, Ingestor, Line, LineError};
use crate::dvcqg::{self, FieldMap};
use crate::limits;
use crate::publish::Outgoing;
use crate::senders::{Refused, Sender, Senders};

/// The largest body (CONTRACT §7).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The most lines in one NDJSON body (CONTRACT §7).
pub const MAX_LINES: usize = 10_000;

/// What the client should wait before sending again after a 503, seconds.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// The state every handler shares.
pub struct App {
    pub name: &'static str,
    pub ingestor: Ingestor,
    /// Present on the service that takes DVCQG payloads (intake).
    pub dvcqg: Option<FieldMap>,
    /// Events by outcome, for the metrics (`--metrics-listen`).
    pub ingested: Option<kpi_metrics::Ingested>,
    /// Who may send (`--tokens`).
    pub senders: Senders,
    /// Places of the posts answered at once ([`limits::POSTS_IN_FLIGHT`]).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

impl App {
    pub fn new(
        name: &'static str,
        ingestor: Ingestor,
        dvcqg: Option<FieldMap>,
        ingested: Option<kpi_metrics::Ingested>,
        senders: Senders,
    ) -> App {
        App {
            name,
            ingestor,
            dvcqg,
            ingested,
            senders,
            in_flight: Arc::new(tokio::sync::Semaphore::new(limits::POSTS_IN_FLIGHT)),
        }
    }
}

/// The service's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/dvcqg", post(post_dvcqg))
        .route("/v1/dvcqg/auth", post(post_dvcqg_auth))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// Whether a path answers as the DVCQG portal does (`error_code`).
fn speaks_dvcqg(path: &str) -> bool {
    path.starts_with("/v1/dvcqg")
}

/// A refusal in the form the path answers in.
fn refused(path: &str, status: StatusCode, message: String) -> Response {
    if speaks_dvcqg(path) {
        (
            status,
            Json(json!({"error_code": -1, "message": message, "error": message})),
        )
            .into_response()
    } else {
        error(status, message)
    }
}

/// 401 for no sender, 403 for one that may not send.
fn sender_refused(path: &str, refusal: Refused) -> Response {
    match refusal {
        Refused::Unauthenticated(message) => refused(path, StatusCode::UNAUTHORIZED, message),
        Refused::Forbidden(message) => refused(path, StatusCode::FORBIDDEN, message),
    }
}

/// What every post goes through: a place among the posts in flight (503
/// when there is none), its body read under the deadlines, and its
/// sender known (401/403; a DVCQG body without the header may name its
/// sender in its `session`).
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let Ok(_place) = app.in_flight.clone().try_acquire_owned() else {
        let mut response = refused(
            &path,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the {} service is answering {} posts already: send again in {RETRY_AFTER_SECONDS} s",
                app.name,
                limits::POSTS_IN_FLIGHT
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        return response;
    };
    let mut request = limits::with_deadlines(request, limits::BODY_DEADLINE, limits::BODY_IDLE);
    if path != "/v1/dvcqg/auth" {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let may_say_in_body = path == "/v1/dvcqg" && authorization.is_none();
        if !may_say_in_body {
            match app.senders.authenticate(authorization.as_deref()) {
                Ok(sender) => {
                    request.extensions_mut().insert(sender);
                }
                Err(refusal) => return sender_refused(&path, refusal),
            }
        }
    }
    next.run(request).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    Refusal(status, message.into()).into_response()
}

/// A request refused as a whole: its status and what to do about it.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The body, or why it cannot be read.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Refusal> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes (16 MiB); split it into several requests"),
            )
        } else if limits::timed_out(&rejection) {
            Refusal(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive in time ({}): a post is read within {} s, with at most {} s between two pieces",
                    rejection.body_text(),
                    limits::BODY_DEADLINE.as_secs(),
                    limits::BODY_IDLE.as_secs()
                ),
            )
        } else {
            Refusal(rejection.status(), rejection.body_text())
        }
    })
}

/// How a body's events are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    One,
    Ndjson,
}

fn framing(headers: &HeaderMap) -> Result<Framing, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Framing::One),
        "application/x-ndjson" => Ok(Framing::Ndjson),
        _ => Err(Refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type `{content_type}` is not accepted: send one event as application/json or several, one a line, as application/x-ndjson"
            ),
        )),
    }
}

fn too_many_lines(body: &[u8]) -> bool {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    body.iter().filter(|byte| **byte == b'\n').count() + 1 > MAX_LINES
}

/// 200, 400 or 503 (with `Retry-After`) for a report.
fn answer<T: Serialize>(report: &T, rejected: bool, not_stored: bool) -> Response {
    let status = if not_stored {
        StatusCode::SERVICE_UNAVAILABLE
    } else if rejected {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(report)).into_response();
    if not_stored {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    response
}

async fn post_events(
    State(app): State<Arc<App>>,
    Extension(sender): Extension<Sender>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let framing = match framing(&headers) {
        Ok(framing) => framing,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match read_body(body) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let started = Instant::now();
    let report = match framing {
        Framing::One => {
            let trimmed = body.trim_ascii();
            app.ingestor
                .ingest(
                    [Line {
                        number: 1,
                        bytes: trimmed,
                    }],
                    &sender,
                )
                .await
        }
        Framing::Ndjson => {
            if too_many_lines(&body) {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the body has more than {MAX_LINES} lines; split it into several requests"
                    ),
                );
            }
            app.ingestor.ingest(ndjson_lines(&body), &sender).await
        }
    };
    if let Some(ingested) = &app.ingested {
        ingested.count(
            report.accepted.len(),
            report.rejected.len(),
            report.not_stored.len(),
        );
    }
    tracing::info!(
        service = app.name,
        accepted = report.accepted.len(),
        rejected = report.rejected.len(),
        not_stored = report.not_stored.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "POST /v1/events"
    );
    answer(
        &report,
        !report.rejected.is_empty(),
        !report.not_stored.is_empty(),
    )
}

#[derive(Debug, Deserialize)]
struct DvcqgQuery {
    madonvi: Option<String>,
}

/// One event a dossier produced, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct DossierEvent {
    pub event_id: Uuid,
    pub kind: String,
    pub stream_sequence: u64,
    pub duplicate: bool,
}

/// A dossier whose events were all stored.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedDossier {
    /// The dossier's position in `data`, from 1.
    pub line: usize,
    pub case_id: Option<String>,
    pub events: Vec<DossierEvent>,
}

/// A valid dossier some of whose events were not stored in time: send it
/// again (the events already stored are not counted twice).
#[derive(Debug, Clone, Serialize)]
pub struct UnstoredDossier {
    pub line: usize,
    pub case_id: Option<String>,
    /// Why the first event that was not stored was not.
    pub reason: String,
    /// The events that were stored all the same.
    pub stored: Vec<DossierEvent>,
}

/// A dossier refused: nothing of it was published.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedDossier {
    pub line: usize,
    pub case_id: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

/// The answer to a DVCQG payload: CONTRACT §7's, one entry per dossier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DossierReport {
    pub accepted: Vec<AcceptedDossier>,
    pub rejected: Vec<RejectedDossier>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_stored: Vec<UnstoredDossier>,
}

/// Converts a DVCQG payload and publishes, as sent by `sender`, the
/// events of every valid dossier; a dossier counts as stored when all its
/// events are. A dossier of a unit (the one `madonvi` picks) outside the
/// sender's scope on its day is refused.
pub async fn ingest_dvcqg(
    ingestor: &Ingestor,
    field_map: &FieldMap,
    body: &[u8],
    madonvi: Option<&str>,
    sender: &Sender,
) -> Result<DossierReport, LineError> {
    let units = ingestor.units().clone();
    let validation = kpi_events::Validation::now(&*units);
    let (named, mut dossiers) = dvcqg::convert_from(body, madonvi, &units, field_map, &validation)?;
    for dossier in &mut dossiers {
        let (Some(unit), Ok(events)) = (named, &dossier.outcome) else {
            continue;
        };
        let day = events
            .first()
            .map(|first| kpi_domain::Moment::from(first.event.occurred_at).local_day());
        if let Some(day) = day {
            if let Err(outside) = sender.check_unit(&units, &units.unit(unit).id, day, "madonvi") {
                dossier.outcome = Err(outside);
            }
        }
    }
    let mut report = DossierReport::default();
    let mut publisher = ingestor.publisher();
    let mut outcomes = HashMap::new();
    let mut valid = Vec::new();
    for dossier in dossiers {
        match dossier.outcome {
            Err(error) => report.rejected.push(RejectedDossier {
                line: dossier.index,
                case_id: dossier.case_id,
                field: error.field,
                reason: kpi_events::cut_reason(&error.reason),
            }),
            Ok(events) => {
                for (position, produced) in events.iter().enumerate() {
                    let message = Outgoing {
                        subject: produced.event.subject(),
                        payload: Bytes::from(produced.payload.clone()),
                        sender: sender.name().clone(),
                    };
                    let tag = (dossier.index, position);
                    outcomes.extend(publisher.send(tag, message).await);
                }
                valid.push((dossier.index, dossier.case_id, events));
            }
        }
    }
    outcomes.extend(publisher.finish().await);
    for (line, case_id, events) in valid {
        let mut stored = Vec::with_capacity(events.len());
        let mut failure = None;
        for (position, produced) in events.iter().enumerate() {
            match outcomes.remove(&(line, position)) {
                Some(Ok(outcome)) => stored.push(DossierEvent {
                    event_id: produced.event.event_id,
                    kind: produced.event.kind().to_string(),
                    stream_sequence: outcome.sequence,
                    duplicate: outcome.duplicate,
                }),
                Some(Err(reason)) => {
                    failure.get_or_insert(reason);
                }
                None => {
                    failure.get_or_insert_with(|| "not published".to_owned());
                }
            }
        }
        match failure {
            None => report.accepted.push(AcceptedDossier {
                line,
                case_id,
                events: stored,
            }),
            Some(reason) => report.not_stored.push(UnstoredDossier {
                line,
                case_id,
                reason,
                stored,
            }),
        }
    }
    Ok(report)
}

/// The answer to a DVCQG post: §7's report with `error_code` (0 when
/// every dossier was stored) and `message` (Vietnamese, what to do).
fn dvcqg_answer(report: &DossierReport) -> Response {
    let rejected = !report.rejected.is_empty();
    let not_stored = !report.not_stored.is_empty();
    let message = if not_stored {
        format!(
            "{} hồ sơ chưa được lưu (hệ thống đang bận hoặc mất kết nối): gửi lại sau {RETRY_AFTER_SECONDS} giây",
            report.not_stored.len()
        )
    } else if rejected {
        format!(
            "{} hồ sơ bị từ chối: xem lý do từng hồ sơ trong \"rejected\", sửa rồi gửi lại",
            report.rejected.len()
        )
    } else {
        format!("Đã nhận {} hồ sơ", report.accepted.len())
    };
    let mut body = serde_json::to_value(report).unwrap_or_else(|_| json!({}));
    if let Some(members) = body.as_object_mut() {
        members.insert(
            "error_code".to_owned(),
            json!(if rejected || not_stored { -1 } else { 0 }),
        );
        members.insert("message".to_owned(), json!(message));
    }
    answer(&body, rejected, not_stored)
}

#[derive(Debug, Deserialize)]
struct DvcqgLogin {
    #[serde(default)]
    password: Option<String>,
}

/// `POST /v1/dvcqg/auth` (§7.2): the login of an existing DVCQG sender.
/// A sender token as `password` is the `session`; `username` is not read.
async fn post_dvcqg_auth(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = "/v1/dvcqg/auth";
    let body = match read_body(body) {
        Ok(body) => body,
        Err(Refusal(status, message)) => return refused(path, status, message),
    };
    let password = serde_json::from_slice::<DvcqgLogin>(&body)
        .ok()
        .and_then(|login| login.password)
        .filter(|password| !password.is_empty());
    let Some(password) = password else {
        return refused(
            path,
            StatusCode::UNAUTHORIZED,
            "đăng nhập cần {\"username\", \"password\"}, với password là mã truy cập (token) của hệ thống gửi".to_owned(),
        );
    };
    match app.senders.token(&password) {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({"error_code": 0, "session": password, "message": "Đăng nhập thành công"})),
        )
            .into_response(),
        Err(Refused::Unauthenticated(_)) | Err(Refused::Forbidden(_)) => refused(
            path,
            StatusCode::UNAUTHORIZED,
            "sai tên đăng nhập hoặc mật khẩu: password phải là mã truy cập (token) gửi dữ liệu do Sở cấp".to_owned(),
        ),
    }
}

async fn post_dvcqg(
    State(app): State<Arc<App>>,
    Query(query): Query<DvcqgQuery>,
    sender: Option<Extension<Sender>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = "/v1/dvcqg";
    let Some(field_map) = &app.dvcqg else {
        return refused(
            path,
            StatusCode::NOT_FOUND,
            format!(
                "the {} service does not take DVCQG payloads: send them to the intake service (POST /v1/dvcqg, default 127.0.0.1:8081)",
                app.name
            ),
        );
    };
    if framing(&headers).map_or(true, |framing| framing != Framing::One) {
        return refused(
            path,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send a DVCQG payload as application/json".to_owned(),
        );
    }
    let body = match read_body(body) {
        Ok(body) => body,
        Err(Refusal(status, message)) => return refused(path, status, message),
    };
    let header = match dvcqg::header(&body) {
        Ok(header) => header,
        Err(refusal) => return dvcqg_refusal(&app, refusal),
    };
    // The sender: the Authorization header's, else the body's `session`.
    let sender = match sender {
        Some(Extension(sender)) => sender,
        None => {
            let found = match header.session.as_deref() {
                Some(session) => app.senders.token(session),
                None => app.senders.authenticate(None).map_err(|_| {
                    Refused::Unauthenticated(
                        "cần mã truy cập: gửi header `Authorization: Bearer <token>` hoặc `session` trong thân (lấy từ POST /v1/dvcqg/auth)".to_owned(),
                    )
                }),
            };
            match found {
                Ok(sender) => sender,
                Err(refusal) => return sender_refused(path, refusal),
            }
        }
    };
    if header.asked == dvcqg::Asked::Lookup {
        return (
            StatusCode::OK,
            Json(json!({"error_code": 0, "result": [], "message": "Không cần tra cứu: hệ thống nhận lại toàn bộ hồ sơ"})),
        )
            .into_response();
    }
    let started = Instant::now();
    match ingest_dvcqg(
        &app.ingestor,
        field_map,
        &body,
        query.madonvi.as_deref(),
        &sender,
    )
    .await
    {
        Ok(report) => {
            if let Some(ingested) = &app.ingested {
                ingested.count_dossiers(
                    report.accepted.len(),
                    report.rejected.len(),
                    report.not_stored.len(),
                );
                let stored = report.accepted.iter().map(|dossier| dossier.events.len());
                let partly = report.not_stored.iter().map(|dossier| dossier.stored.len());
                ingested.count(stored.chain(partly).sum(), 0, 0);
            }
            tracing::info!(
                service = app.name,
                sender = %sender.name(),
                dossiers_accepted = report.accepted.len(),
                dossiers_rejected = report.rejected.len(),
                dossiers_not_stored = report.not_stored.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "POST /v1/dvcqg"
            );
            dvcqg_answer(&report)
        }
        Err(refusal) => dvcqg_refusal(&app, refusal),
    }
}

/// A DVCQG body refused as a whole: 400, nothing stored.
fn dvcqg_refusal(app: &App, refusal: LineError) -> Response {
    tracing::info!(service = app.name, "POST /v1/dvcqg: payload refused");
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error_code": -1,
            "message": format!("dữ liệu không hợp lệ, không hồ sơ nào được lưu: {}", refusal.reason),
            "error": refusal.reason,
            "field": refusal.field,
        })),
    )
        .into_response()
}

/// How long `/healthz` waits for JetStream.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let bus = app.ingestor.bus().with_timeout(HEALTH_TIMEOUT);
    match tokio::time::timeout(HEALTH_TIMEOUT, bus.stream_state()).await {
        Ok(Ok(state)) => (
            StatusCode::OK,
            Json(json!({
                "status": "ok",
                "service": app.name,
                "stream": kpi_bus::STREAM_NAME,
                "last_sequence": state.last_sequence,
            })),
        )
            .into_response(),
        Ok(Err(err)) => unavailable(app.name, err.to_string()),
        Err(_) => unavailable(app.name, "JetStream did not answer within 2 s".to_owned()),
    }
}

fn unavailable(name: &str, reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "service": name, "reason": reason})),
    )
        .into_response()
}
