//! What the ingest services (`intake`, `resolution`, `feedback`) and
//! `kpictl import` share: one path in, however an event comes.
//!
//! - [`batch`]: validation of each line (the `events` crate, plus the
//!   service's own kinds) and the per-line report;
//! - [`publish`]: publishing with `Nats-Msg-Id` = the hash of the body and a window of
//!   acks in flight, each retried with backoff until a deadline;
//! - [`http`]: `POST /v1/events`, `POST /v1/dvcqg` (and `/v1/dvcqg/auth`),
//!   `GET /healthz` (axum), with the limits every post is held to;
//! - [`senders`]: who may send what (CONTRACT §8.1);
//! - [`tls`]: serving HTTPS;
//! - [`dvcqg`]: national-portal dossier snapshots into contract events;
//! - [`csv`]: CSV exports into contract events;
//! - [`service`]: which service takes which kinds;
//! - [`server`]: the whole of a service binary but its name.

pub mod batch;
pub mod csv;
pub mod dvcqg;
pub mod http;
pub mod limits;
pub mod publish;
pub mod senders;
pub mod server;
pub mod service;
pub mod tls;

pub use batch::{
    ndjson_lines, validate_line, Accepted, Ingestor, Line, LineError, NotStored, Rejected, Report,
};
pub use publish::{Outgoing, Publisher, Stored, DEFAULT_DEADLINE};
pub use senders::{Sender, Senders};
pub use service::{Accepts, Service};
